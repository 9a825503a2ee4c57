"""The in-process event bus: what happens to streams, for whoever wants to know
(docs/listeners.md "Events"; wire form: docs/protocol.md §11.4).

Publishers: the registry (sessions.py) publishes `opened`, `resumed`, `disconnected`,
`finalized` and `storage_failed`; a stream (stream.py) publishes `gap` when a gap record
becomes *durable* (so nothing announced can later be cut back). Subscribers: the discovery
endpoint (`GET /v1/events`), each live listener (listen.py) for its stream's connection
state, the connection history behind the web view (history.py) and the webhook outbox
(webhooks.py).

`resumed` and `disconnected` carry `duplicates`, the stream's count of replayed items the
server dropped so far (§4): the difference between a `disconnected` and the `resumed`
before it is what that connection replayed. `disconnected` carries the connection's
`close_code` (§7; 1006 when it simply vanished).

Publishing never blocks and never waits on a subscriber: each subscription has a bounded
queue (`limit` events); one that falls that far behind is marked `overflowed` and gets no
more events, and its owner closes it (the discovery endpoint with 4429, docs/protocol.md
§11). With nobody subscribed, `publish` is one dict lookup and one empty-set check.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass
from enum import StrEnum

from .storage.interface import Gap

DEFAULT_LIMIT = 1024  # events a subscriber may fall behind before it is cut off


class EventKind(StrEnum):
    """The `event` field of §11.4 (values are the wire format)."""

    OPENED = "opened"  # a new stream: its uplink connected for the first time
    RESUMED = "resumed"  # an uplink connected again (resume, takeover, or an expired reopen)
    DISCONNECTED = "disconnected"  # the uplink's connection is gone (the stream stays open)
    GAP = "gap"  # a gap record became durable
    FINALIZED = "finalized"  # ended by the uplink, or expired
    STORAGE_FAILED = "storage_failed"  # a write or sync failed; the uplink was closed with 1013


@dataclass(frozen=True, slots=True)
class StreamEvent:
    kind: EventKind
    stream_id: str
    at_sample: int  # the stream's durable next_sample when it happened
    wall_time: float  # POSIX seconds (the registry's wall clock)
    gap: Gap | None = None  # GAP only: the range as recorded
    end_reason: str | None = None  # FINALIZED only: "ended" or "expired"
    duplicates: int | None = None  # RESUMED / DISCONNECTED: replayed items dropped so far
    close_code: int | None = None  # DISCONNECTED: how the connection ended (§7)
    detail: str | None = None  # STORAGE_FAILED: the operation that failed

    def to_json(self) -> dict[str, object]:
        body: dict[str, object] = {"type": "stream", "event": self.kind.value,
                                   "stream_id": self.stream_id, "at_sample": self.at_sample,
                                   "time": round(self.wall_time, 3)}
        if self.gap is not None:
            body.update(start_sample=self.gap.start_sample, end_sample=self.gap.end_sample,
                        first_seq=self.gap.first_seq, end_seq=self.gap.end_seq)
        if self.end_reason is not None:
            body["end_reason"] = self.end_reason
        if self.duplicates is not None:
            body["duplicates"] = self.duplicates
        if self.close_code is not None:
            body["close_code"] = self.close_code
        if self.detail is not None:
            body["detail"] = self.detail
        return body


class Subscription:
    """One subscriber's queue. `get()` waits for the next event; `overflowed` says events
    were lost because it fell `limit` behind (it then receives nothing more)."""

    def __init__(self, bus: EventBus, stream_id: str | None, limit: int) -> None:
        self.stream_id = stream_id
        self.overflowed = False
        self.ended = False  # the bus closed (server shutdown): nothing more will come
        self._bus = bus
        self._limit = limit
        self._queue: deque[StreamEvent] = deque()
        self._waiter: asyncio.Future[None] | None = None

    def deliver(self, event: StreamEvent) -> None:
        if self.overflowed:
            return
        if len(self._queue) >= self._limit:
            self.overflowed = True
        else:
            self._queue.append(event)
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def end(self) -> None:
        self.ended = True
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def pending(self) -> list[StreamEvent]:
        """Every queued event, without waiting."""
        events = list(self._queue)
        self._queue.clear()
        return events

    def changed(self) -> asyncio.Future[None]:
        """Resolved at the next delivery (done at once if events are queued)."""
        if self._waiter is None or self._waiter.done():
            self._waiter = asyncio.get_running_loop().create_future()
        if self._queue or self.overflowed or self.ended:
            self._waiter.set_result(None)
        return self._waiter

    async def get(self) -> StreamEvent | None:
        """The next event; None once overflowed (or ended) and drained."""
        while not self._queue:
            if self.overflowed or self.ended:
                return None
            await self.changed()
        return self._queue.popleft()

    def close(self) -> None:
        self._bus.unsubscribe(self)

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class EventBus:
    def __init__(self) -> None:
        self._all: set[Subscription] = set()
        self._by_stream: dict[str, set[Subscription]] = {}
        self.published = 0

    def subscribe(self, stream_id: str | None = None, limit: int = DEFAULT_LIMIT) -> Subscription:
        """Events of one stream, or of every stream (None)."""
        sub = Subscription(self, stream_id, limit)
        if stream_id is None:
            self._all.add(sub)
        else:
            self._by_stream.setdefault(stream_id, set()).add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        if sub.stream_id is None:
            self._all.discard(sub)
            return
        subs = self._by_stream.get(sub.stream_id)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del self._by_stream[sub.stream_id]

    def close(self) -> None:
        """Server shutdown: every subscription ends (its owner closes its response)."""
        for sub in [*self._all, *(s for subs in self._by_stream.values() for s in subs)]:
            sub.end()

    @property
    def subscribers(self) -> int:
        return len(self._all) + sum(len(s) for s in self._by_stream.values())

    def publish(self, event: StreamEvent) -> None:
        self.published += 1
        for sub in self._all:
            sub.deliver(event)
        for sub in self._by_stream.get(event.stream_id, ()):
            sub.deliver(event)

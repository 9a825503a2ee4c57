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

With a shared store (docs/scale-out.md "Events across nodes") every node relays its own
events to the others, and delivers theirs to the subscriptions that asked for remote events
(`subscribe(remote=True)`: discovery and listeners). The webhook outbox and the connection
history take only this node's events, so a cluster sends each webhook once, from the node
where it happened.

Publishing never blocks and never waits on a subscriber: each subscription has a bounded
queue (`limit` events); one that falls that far behind is marked `overflowed` and gets no
more events, and its owner closes it (the discovery endpoint with 4429, docs/protocol.md
§11). With nobody subscribed, `publish` is one dict lookup and one empty-set check.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import TypeVar

from .storage.interface import Gap

T = TypeVar("T")

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

    @classmethod
    def from_json(cls, body: dict[str, object]) -> StreamEvent:
        """The inverse of `to_json` (events relayed from another node). ValueError if a
        field is missing or of the wrong type."""
        try:
            gap = None
            if "start_sample" in body:
                gap = Gap(_int(body["first_seq"]), _int(body["end_seq"]),
                          _int(body["start_sample"]), _int(body["end_sample"]))
            return cls(EventKind(_str(body["event"])), _str(body["stream_id"]),
                       _int(body["at_sample"]), _number(body["time"]), gap,
                       _optional(body.get("end_reason"), _str),
                       _optional(body.get("duplicates"), _int),
                       _optional(body.get("close_code"), _int),
                       _optional(body.get("detail"), _str))
        except (KeyError, TypeError) as e:
            raise ValueError(f"not a stream event: {e!r}") from e


def _int(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"expected an integer, got {type(value).__name__}")
    return value


def _number(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) \
            or not math.isfinite(value):
        raise TypeError(f"expected a finite number, got {value!r:.20}")
    return float(value)


def _str(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {type(value).__name__}")
    return value


def _optional(value: object, convert: Callable[[object], T]) -> T | None:
    return None if value is None else convert(value)


class Subscription:
    """One subscriber's queue. `get()` waits for the next event; `overflowed` says events
    were lost because it fell `limit` behind (it then receives nothing more)."""

    def __init__(self, bus: EventBus, stream_id: str | None, limit: int, remote: bool) -> None:
        self.stream_id = stream_id
        self.remote = remote  # also other nodes' events (shared store)
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
        # Shared store: hands each event published here to the other nodes (service.py)
        self.relay: Callable[[StreamEvent], None] | None = None

    def subscribe(self, stream_id: str | None = None, limit: int = DEFAULT_LIMIT, *,
                  remote: bool = False) -> Subscription:
        """Events of one stream, or of every stream (None); with `remote`, those other
        nodes relay too."""
        sub = Subscription(self, stream_id, limit, remote)
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

    def publish(self, event: StreamEvent, *, share: bool = True) -> None:
        """An event of this node: every subscriber, and (`share`) the other nodes."""
        self.published += 1
        for sub in self._all:
            sub.deliver(event)
        for sub in self._by_stream.get(event.stream_id, ()):
            sub.deliver(event)
        if share and self.relay is not None:
            self.relay(event)

    def publish_remote(self, event: StreamEvent) -> None:
        """An event another node relayed: only the subscribers that asked for them."""
        for sub in self._all:
            if sub.remote:
                sub.deliver(event)
        for sub in self._by_stream.get(event.stream_id, ()):
            if sub.remote:
                sub.deliver(event)

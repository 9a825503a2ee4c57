"""Per-stream connection history: what the web view's continuity timeline draws (docs/ui.md).

One subscription to every stream's events (events.py) turns them into `Entry`s, kept per
stream in a deque of at most `limit` entries (oldest dropped first, and counted):

- CONNECTED: `opened` (first=True) or `resumed`; `duplicates_before` is the stream's count
  of dropped replays at that moment.
- DISCONNECTED: with the connection's `close_code` (§7) and `replayed`, the replayed items
  that connection sent and the server dropped (§4): the difference between the
  `duplicates` of this event and of the CONNECTED before it (events.py).
- GAP: the durable gap record, exact in samples (§3).
- FINALIZED: `end_reason` "ended" or "expired" (§6, §2).
- STORAGE_FAILED: the operation that failed (§7 1013).

Memory, the arithmetic: an entry is a small slotted object, about 230 bytes with its numbers
(measured with tracemalloc), so a stream's history costs at most `limit` × 230 B (500 × 230 B
= 115 kB by default). A
history exists for a stream the registry holds: the registry holds at most `max_streams`
open streams plus the finalized ones retention has not deleted yet, and a stream's history
is dropped once retention deleted it (the registry no longer has it): `prune` runs at each
`opened` event, the only way a stream id new to the registry appears, so the histories never
outnumber the streams the registry held at the last `opened` plus those opened since.
1000 open + 1000 finalized streams at the default limit: 2000 × 115 kB = 230 MB at worst,
reached only if every stream reconnected 250 times; a stream that connected once holds 2-3
entries (under 1 kB).

In memory only: a restart starts a new history (`since` says when). What the timeline needs
across restarts — the gaps, the state, the end — comes from the stream's meta (the REST
detail), so persisting the history would only add the pre-restart connection intervals, at
the cost of a write per event.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Container
from dataclasses import dataclass
from enum import StrEnum

from .events import EventBus, EventKind, StreamEvent, Subscription

log = logging.getLogger(__name__)

# Bus events the history may fall behind by before it is cut off (events.py): far more than
# a burst of reconnects of every stream produces between two turns of the event loop.
SUBSCRIPTION_LIMIT = 65536


class EntryKind(StrEnum):
    """The `kind` of a history entry (values are the JSON form, docs/ui.md)."""

    CONNECTED = "connected"
    DISCONNECTED = "disconnected"
    GAP = "gap"
    FINALIZED = "finalized"
    STORAGE_FAILED = "storage_failed"


@dataclass(frozen=True, slots=True)
class Entry:
    kind: EntryKind
    time: float  # POSIX seconds (the registry's wall clock)
    at_sample: int  # the stream's durable next_sample then
    first: bool = False  # CONNECTED: the stream's first connection (`opened`)
    duplicates_before: int | None = None  # CONNECTED: the stream's dropped replays so far
    close_code: int | None = None  # DISCONNECTED
    replayed: int | None = None  # DISCONNECTED: items this connection replayed (§4)
    start_sample: int | None = None  # GAP: samples [start_sample, end_sample) are silence
    end_sample: int | None = None
    first_seq: int | None = None  # GAP: seqs [first_seq, end_seq) carry no audio
    end_seq: int | None = None
    end_reason: str | None = None  # FINALIZED
    detail: str | None = None  # STORAGE_FAILED

    def to_json(self) -> dict[str, object]:
        body: dict[str, object] = {"kind": self.kind.value, "time": round(self.time, 3),
                                   "at_sample": self.at_sample}
        if self.kind is EntryKind.CONNECTED:
            body.update(first=self.first, duplicates_before=self.duplicates_before)
        elif self.kind is EntryKind.DISCONNECTED:
            body.update(close_code=self.close_code, replayed=self.replayed)
        elif self.kind is EntryKind.GAP:
            assert self.start_sample is not None and self.end_sample is not None
            body.update(start_sample=self.start_sample, end_sample=self.end_sample,
                        samples=self.end_sample - self.start_sample,
                        first_seq=self.first_seq, end_seq=self.end_seq)
        elif self.kind is EntryKind.FINALIZED:
            body["end_reason"] = self.end_reason
        else:
            body["detail"] = self.detail
        return body


class StreamHistory:
    """One stream's entries, oldest first, at most `limit` of them."""

    def __init__(self, limit: int) -> None:
        self.entries: deque[Entry] = deque(maxlen=limit)
        self.dropped = 0  # entries pushed out by the bound

    def add(self, entry: Entry) -> None:
        if len(self.entries) == self.entries.maxlen:
            self.dropped += 1
        self.entries.append(entry)

    def last_connected(self) -> Entry | None:
        for entry in reversed(self.entries):
            if entry.kind is EntryKind.CONNECTED:
                return entry
            if entry.kind is EntryKind.DISCONNECTED:
                return None
        return None


def entry_for(event: StreamEvent, history: StreamHistory) -> Entry:
    """The history entry of one bus event (`history`: the stream's, for replay counts)."""
    t, at = event.wall_time, event.at_sample
    match event.kind:
        case EventKind.OPENED | EventKind.RESUMED:
            return Entry(EntryKind.CONNECTED, t, at, first=event.kind is EventKind.OPENED,
                         duplicates_before=event.duplicates or 0)
        case EventKind.DISCONNECTED:
            connected = history.last_connected()
            replayed = None  # unknown when the history missed the connection's start
            if connected is not None and event.duplicates is not None:
                replayed = event.duplicates - (connected.duplicates_before or 0)
            return Entry(EntryKind.DISCONNECTED, t, at, close_code=event.close_code,
                         replayed=replayed)
        case EventKind.GAP:
            gap = event.gap
            assert gap is not None
            return Entry(EntryKind.GAP, t, at, start_sample=gap.start_sample,
                         end_sample=gap.end_sample, first_seq=gap.first_seq,
                         end_seq=gap.end_seq)
        case EventKind.FINALIZED:
            return Entry(EntryKind.FINALIZED, t, at, end_reason=event.end_reason)
        case EventKind.STORAGE_FAILED:
            return Entry(EntryKind.STORAGE_FAILED, t, at, detail=event.detail)


class ConnectionHistory:
    """Every stream's history (see the module docstring), fed by the event bus."""

    def __init__(self, events: EventBus, limit: int, *,
                 streams: Container[str] | None = None,
                 wall: Callable[[], float] = time.time) -> None:
        self.events = events
        self.limit = limit
        # The registry's streams (ids still held): a history of a stream retention deleted
        # is dropped. None: nothing is dropped (tests; app.py binds it, docs/ui.md).
        self.streams = streams
        self.since = wall()  # when this history began (the server's start)
        self._histories: dict[str, StreamHistory] = {}
        self._sub: Subscription | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Subscribe to every stream's events (called before the first connection)."""
        self._sub = self.events.subscribe(None, SUBSCRIPTION_LIMIT)
        self._task = asyncio.get_running_loop().create_task(self._consume(self._sub))

    async def stop(self) -> None:
        """Unsubscribe and end the consuming task."""
        if self._sub is not None:
            self._sub.close()
            self._sub.end()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._sub = self._task = None

    async def _consume(self, sub: Subscription) -> None:
        while (event := await sub.get()) is not None:
            self.record(event)
        if sub.overflowed:
            # Cannot happen short of a stalled event loop; the timeline then misses events,
            # the stream's own state (REST) stays right.
            log.error("connection history fell %d events behind; it records no more",
                      SUBSCRIPTION_LIMIT)

    def record(self, event: StreamEvent) -> None:
        if event.kind is EventKind.OPENED and self.streams is not None:
            self.prune(self.streams)
        history = self._histories.get(event.stream_id)
        if history is None:
            history = self._histories[event.stream_id] = StreamHistory(self.limit)
        history.add(entry_for(event, history))

    def prune(self, keep: Container[str]) -> None:
        """Drop the histories of streams no longer in `keep` (deleted by retention)."""
        for stream_id in [s for s in self._histories if s not in keep]:
            del self._histories[stream_id]

    def of(self, stream_id: str) -> StreamHistory | None:
        """The stream's history; None if nothing happened to it since `since`."""
        return self._histories.get(stream_id)

    def __len__(self) -> int:
        return len(self._histories)

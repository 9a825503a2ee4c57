"""One connection's group-commit task: on request, make the stream durable and report it.

Group commit itself is explained once, in commit.py. This task is its per-connection end:
the connection core asks for a sync (core.RequestSync) when an item is written and none is
in flight; the flusher runs `Stream.sync()` (which hands the journal to the committer and
waits for its future) and reports the durable position through `on_synced`, which the
adapter feeds to the core, which sends the one cumulative ack (docs/protocol.md §4). A
failed sync is reported through `on_failed` as StorageUnavailable (1013): nothing it covered
is acked, the stream already cut its journal back (stream.Stream.sync, docs/storage.md
"Disk faults"), and the client resumes and replays.

The flusher owns its batch state: whether a sync is wanted, and the receive time of the
oldest item it covers (the ack-latency histogram).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from .errors import ClosingError, StorageGuard
from .metrics import Metrics
from .storage.interface import Position
from .stream import Stream

log = logging.getLogger(__name__)

OnSynced = Callable[[Position], Awaitable[None]]
OnFailed = Callable[[ClosingError | None], Awaitable[None]]  # None: a bug (1011)


class Flusher:
    def __init__(self, stream: Stream, metrics: Metrics, on_synced: OnSynced,
                 on_failed: OnFailed) -> None:
        self._stream = stream
        self._metrics = metrics
        self._on_synced = on_synced
        self._on_failed = on_failed
        self._guard = StorageGuard("fsync", stream_id=stream.stream_id)  # counted by Stream
        self._wake = asyncio.Event()
        self._since: float | None = None  # receive time of the oldest item not yet synced
        self._stopping = False
        self._task = asyncio.create_task(self._run())

    def request(self, since: float | None) -> None:
        """Sync soon; `since` is the receive time of the oldest item the sync is for."""
        if self._since is None:
            self._since = since
        self._wake.set()

    async def stop(self) -> None:
        """One last sync covering everything written so far, then end the task."""
        self._stopping = True
        self._wake.set()
        if not self._task.done():
            await asyncio.wait([self._task])  # a cancelled task ends the wait, not the caller

    def cancel(self) -> None:
        """The peer stopped reading: give up on sending (the next sync covers the data)."""
        self._task.cancel()

    async def _run(self) -> None:
        stream, loop = self._stream, asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            self._wake.clear()
            since, self._since = self._since, None
            try:
                with self._guard:
                    await stream.sync()
            except ClosingError as e:
                await self._on_failed(e)
                return
            except Exception:
                log.exception("stream %s: flusher failed", stream.stream_id)
                await self._on_failed(None)
                return
            await self._on_synced(stream.durable)
            if since is not None:
                self._metrics.ack_latency.observe(loop.time() - since)
            if self._stopping and not self._wake.is_set():
                return

"""Group commit for one connection's stream (docs/protocol.md §4): fsync, then one cumulative
ack for exactly what that fsync covered. Items arriving during an fsync ride the next one.

A failed fsync (EIO, ENOSPC on some filesystems) is never acked: the stream has already cut
its journal back to the last durable position (stream.Stream.sync) and the connection closes
with 1013, so the client backs off, resumes and replays (docs/storage.md "Disk faults").
"""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

from uplink.wire import CloseCode

from .metrics import Metrics
from .stream import Stream

log = logging.getLogger(__name__)


class AckSink(Protocol):
    """What the flusher needs from its connection."""

    def take_batch_start(self) -> float | None:
        """Receive time of the oldest item not yet covered by an fsync (and forget it)."""

    async def send_ack(self, stream: Stream) -> None: ...

    def spawn_close(self, code: int, reason: str) -> None: ...


class Flusher:
    def __init__(self, conn: AckSink, stream: Stream, metrics: Metrics) -> None:
        self._conn = conn
        self._stream = stream
        self._metrics = metrics
        self._wake = asyncio.Event()
        self._stopping = False
        self.busy = False
        self._task = asyncio.create_task(self._run())

    def kick(self) -> None:
        self._wake.set()

    async def stop(self) -> None:
        """One last fsync covering everything written so far, then end the task."""
        self._stopping = True
        self._wake.set()
        if not self._task.done():
            await asyncio.wait([self._task])  # a cancelled task ends the wait, not the caller

    def cancel(self) -> None:
        """The peer stopped reading: give up on sending (the next sync covers the data)."""
        self._task.cancel()

    async def _run(self) -> None:
        stream, conn = self._stream, self._conn
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            self._wake.clear()
            self.busy = True
            batch_start = conn.take_batch_start()
            try:
                if await stream.sync():
                    await conn.send_ack(stream)
                    if batch_start is not None:
                        self._metrics.ack_latency.observe(loop.time() - batch_start)
            except OSError:
                conn.spawn_close(CloseCode.TRY_AGAIN_LATER, "storage failure")
                return
            except Exception:
                log.exception("stream %s: flusher failed", stream.stream_id)
                conn.spawn_close(CloseCode.INTERNAL_ERROR, "internal server error")
                return
            finally:
                self.busy = False
            if self._stopping and not self._wake.is_set():
                return

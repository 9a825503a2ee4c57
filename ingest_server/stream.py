"""One stream in memory: its metadata, its journal while open, and what is durable.

`durable` is the journal position the last successful sync covered: the only thing an ack
or a welcome may promise (docs/protocol.md §2, §4). `sync()` hands the journal to the
committer (group commit: commit.py explains it) and moves `durable` when it succeeds. After
a failed sync the journal is cut back to `durable` (docs/storage.md "Disk faults") before
anyone can append again.

Readers of durable audio (live listeners, listen.py) learn that `durable` moved through
`durable_changed()`, a future resolved by the next change; `on_durable`, set by the
registry, publishes gap records once they are durable (events.py). Both cost one check per
sync when nobody listens, and neither can delay the ack that follows (docs/listeners.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Protocol

from .metrics import Metrics
from .storage.interface import (
    Committer,
    Gap,
    Position,
    StreamFenced,
    StreamMeta,
    StreamState,
    StreamWriter,
)

log = logging.getLogger(__name__)


class Owner(Protocol):
    """What the registry needs from a connection that owns a stream."""

    async def supersede(self) -> None:
        """Close with 4411 and return once this connection has finished its writes (§2)."""


class Stream:
    def __init__(self, meta: StreamMeta, journal: StreamWriter | None, committer: Committer,
                 idle_since: float, metrics: Metrics) -> None:
        self.meta = meta
        self.journal = journal  # None once finalized (or while being created)
        self._durable = journal.position if journal else _final_position(meta)
        self._durable_waiters: list[asyncio.Future[None]] = []
        # (stream, before, after) on every change of `durable`; the registry's gap events
        self.on_durable: Callable[[Stream, Position, Position], None] | None = None
        self.owner: Owner | None = None
        self.idle_since = idle_since
        self.expiry_retry_at = 0.0  # after a failed expiry (disk full): not before this
        self.duplicates = 0
        # Shared store (JetStream): listeners on this node following a stream that may be
        # written on another node, and how to stop watching its subject (Registry.follow).
        self.watchers = 0
        self.unwatch: Callable[[], None] | None = None
        self.lock = asyncio.Lock()  # state transitions: attach, end, expire, delete
        self._sync_lock = asyncio.Lock()  # one fsync at a time; finalize closes the fd under it
        self._committer = committer
        self._metrics = metrics

    @property
    def durable(self) -> Position:
        return self._durable

    @durable.setter
    def durable(self, position: Position) -> None:
        before, self._durable = self._durable, position
        if self._durable_waiters:
            waiters, self._durable_waiters = self._durable_waiters, []
            _wake(waiters)
        if self.on_durable is not None:
            self.on_durable(self, before, position)

    def durable_changed(self) -> asyncio.Future[None]:
        """Resolved at the next change of `durable` (a sync, a finalization, a reopen)."""
        waiter = asyncio.get_running_loop().create_future()
        self._durable_waiters.append(waiter)
        return waiter

    @property
    def stream_id(self) -> str:
        return self.meta.stream_id

    @property
    def finalized(self) -> bool:
        return self.meta.state is StreamState.FINALIZED

    @property
    def next_seq(self) -> int:
        return self.journal.next_seq if self.journal else self.meta.next_seq

    @property
    def next_sample(self) -> int:
        return self.journal.next_sample if self.journal else self.meta.next_sample

    @property
    def frames(self) -> int:
        return self.journal.frames if self.journal else self.meta.frames

    @property
    def gaps(self) -> list[Gap]:
        return self.journal.gaps if self.journal else self.meta.gaps

    @property
    def pending(self) -> bool:
        """Written but not yet covered by an fsync."""
        return self.journal is not None and self.journal.position.size != self.durable.size

    async def sync(self) -> bool:
        """Make everything written before this call durable (commit.py, §4).

        Returns True if the durable position advanced (the caller then acks it). Raises
        OSError if the fsync failed; the journal is then back at `durable`.
        """
        async with self._sync_lock:
            return await self.sync_locked()

    async def sync_locked(self) -> bool:
        """`sync()` for a caller that holds the sync lock (see `sync_lock`)."""
        journal = self.journal
        if journal is None:
            return False
        target = journal.position
        if target.size == self.durable.size:
            return False
        pending = self._committer.submit(journal)
        try:
            await asyncio.shield(pending)
        except asyncio.CancelledError:
            # A worker thread may still be using the journal's descriptor: keep the sync lock
            # (nobody closes or cuts the journal) until it is done, however often we are
            # cancelled meanwhile; then act on the outcome as if we had waited.
            while not pending.done():
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.wait([pending])
            error = None if pending.cancelled() else pending.exception()
            if error is None and not pending.cancelled():
                self.durable = target
            elif isinstance(error, OSError):
                # Never retry a failed sync: the kernel reports a writeback error once, so the
                # next fsync would "succeed" over lost pages. Cut back now (docs/storage.md);
                # a failed cut marks the journal broken, and the cancellation goes on.
                with contextlib.suppress(OSError):
                    self._sync_failed(journal, error)
            raise
        except OSError as e:
            self._sync_failed(journal, e)
            raise
        self.durable = target
        return True

    def _sync_failed(self, journal: StreamWriter, error: OSError) -> None:
        if isinstance(error, StreamFenced):  # another node owns the stream now: no fault
            journal.rollback(self.durable)
            return
        self._metrics.storage_errors["fsync"] += 1
        # No await between here and the caller's reaction (the owner closes with 1013), so
        # nothing is appended on top of the cut: the client replays from `durable`.
        log.error("stream %s: fsync failed (%s); cutting the journal back to seq %d",
                  self.stream_id, error, self.durable.next_seq,
                  extra={"ctx": {"stream_id": self.stream_id, "error": str(error)}})
        journal.rollback(self.durable)  # raises (and marks it broken) if the cut fails

    @property
    def sync_lock(self) -> asyncio.Lock:
        """Held while the journal fd may not change hands (finalize, shutdown)."""
        return self._sync_lock


WAKE_BATCH = 8  # listeners woken per event-loop iteration (docs/listeners.md "Cost")


def _wake(waiters: list[asyncio.Future[None]]) -> None:
    """Wake readers of durable audio a few per loop iteration, not all at once: between two
    batches the loop polls its sockets, so a capture's next frame (and its ack) never waits
    behind a hundred listeners' sends."""
    for waiter in waiters[:WAKE_BATCH]:
        if not waiter.done():
            waiter.set_result(None)
    if len(waiters) > WAKE_BATCH:
        asyncio.get_running_loop().call_soon(_wake, waiters[WAKE_BATCH:])


def _final_position(meta: StreamMeta) -> Position:
    return Position(0, meta.next_seq, meta.next_sample, meta.frames, len(meta.gaps))

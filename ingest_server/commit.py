"""Group commit: how appended items become durable and acked (docs/protocol.md §4).

This is the one explanation of group commit; the other modules link here.

Appending an item never waits for the disk: the journal gets one `writev` (storage/
journal.py) and the connection core asks for a sync (core.RequestSync) unless one is in
flight already. The connection's flusher (flusher.py) runs `Stream.sync()`, which submits
the journal here and awaits the future; the sync covers everything appended before it
started, and items arriving meanwhile ride the next one. When it succeeds the stream's
`durable` position moves and the core sends ONE cumulative ack for exactly that position.
Under load many items share one sync (a 60 s backlog is acked by a handful), and when live
each frame's ack waits for one disk flush, no more (docs/performance.md). A failed sync
acks nothing: the stream cuts its journal back to `durable` and the connection closes with
1013 (docs/storage.md "Disk faults").

Committers implement `storage.interface.Committer.submit(journal)`: a future that
completes once everything appended to the journal before the call is durable, or fails
with the OSError that made it fail. A future, not a coroutine: no task per sync (this runs
once per live stream per batch). The journal is the caller's: it holds the stream's sync
lock, so no other coroutine syncs, cuts or closes that journal meanwhile; it must not
cancel the future (a worker thread may be using the journal).

`SharedCommit` (default on Linux >= 5.17, `--sync-mode syncfs`): requests from all streams
wait in a set; one worker thread runs one `sync_many` (below: one syncfs per file system,
on the devices of storage/syncfs.py) for all of them; requests that arrive meanwhile ride
the next batch. With N live streams that is one disk flush per batch instead of N
(docs/performance.md "Capacity").

`PerJournalCommit` (`--sync-mode fsync`): each journal's fsync in the IO thread pool. For
file systems where syncfs is slow (it flushes every file on the file system, other
programs' too) or unavailable.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from .config import ConfigError
from .metrics import Metrics
from .storage import Journal
from .storage.interface import Committer
from .storage.syncfs import MIN_KERNEL, Device, syncfs_trustworthy

log = logging.getLogger(__name__)


# -- one batch: syncfs per file system, fsync where it must (runs in a worker thread) -----


@dataclass(slots=True)
class SyncOutcome:
    """One journal's part in `sync_many`: durable if `error` is None; seconds it took."""

    seconds: float
    error: OSError | None = None


def sync_many(journals: Sequence[Journal],
              fsync_all: Callable[[Sequence[Journal]], list[SyncOutcome]] | None = None
              ) -> list[SyncOutcome]:
    """Make every journal durable; one outcome per journal, in order. Runs in a worker thread.

    `fsync_all` runs the per-journal fsyncs (default: one after another in this thread); the
    committer passes one that runs them in parallel in its IO pool, so a failed syncfs over
    hundreds of journals does not stall every stream's ack for long.
    """
    fsync_all = fsync_all or fsync_each
    outcomes: list[SyncOutcome | None] = [None] * len(journals)
    alone: list[int] = []
    groups: dict[Device, list[int]] = {}
    for i, j in enumerate(journals):
        if (j.broken or not j.fsync_enabled or not j.syncfs_capable
                or j.error_generation != j.device.error_generation):
            # broken/disabled: Journal.sync raises / returns at once; stale generation: an
            # earlier syncfs error may have been on this journal's pages.
            alone.append(i)
        else:
            groups.setdefault(j.device, []).append(i)
    for device, members in groups.items():
        with device.lock:
            start = time.perf_counter()
            try:
                journals[members[0]].sync_filesystem()
            except OSError as e:
                device.error_generation += 1
                log.warning("syncfs on %s failed (%s); fsyncing %d journals one by one",
                            device.fstype, e, len(members))
                for i, outcome in zip(members, fsync_all([journals[i] for i in members]),
                                      strict=True):
                    outcomes[i] = outcome
                continue
            seconds = time.perf_counter() - start
        for i in members:
            outcomes[i] = SyncOutcome(seconds)
    if alone:
        for i, outcome in zip(alone, fsync_all([journals[i] for i in alone]), strict=True):
            outcomes[i] = outcome
    missing = [i for i, o in enumerate(outcomes) if o is None]
    assert not missing, f"sync_many: no outcome for journals {missing}"
    return [o for o in outcomes if o is not None]


def fsync_each(journals: Sequence[Journal]) -> list[SyncOutcome]:
    return [fsync_one(j) for j in journals]


def fsync_one(journal: Journal) -> SyncOutcome:
    """The journal's own fsync; a success brings it up to its device's error generation."""
    generation = journal.device.error_generation
    try:
        seconds = journal.sync()
    except OSError as e:
        return SyncOutcome(0.0, e)
    journal.error_generation = generation
    return SyncOutcome(seconds)


# -- committers --------------------------------------------------------------------------


class PerJournalCommit:
    def __init__(self, executor: Executor | None, metrics: Metrics) -> None:
        self._executor = executor
        self._metrics = metrics

    def submit(self, journal: Journal) -> asyncio.Future[Any]:
        fut = asyncio.get_running_loop().run_in_executor(self._executor, journal.sync)
        fut.add_done_callback(self._observe)
        return fut

    def _observe(self, fut: asyncio.Future[float]) -> None:
        if not fut.cancelled() and fut.exception() is None:
            self._metrics.fsync_latency.observe(fut.result())
            self._metrics.commit_batch.observe(1)

    def close(self) -> None:
        pass  # the executor belongs to the service


class SharedCommit:
    def __init__(self, metrics: Metrics, fsync_pool: Executor | None = None) -> None:
        self._metrics = metrics
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="ingest-commit")
        self._fsync_pool = fsync_pool
        self._waiting: dict[Journal, asyncio.Future[None]] = {}
        self._runner: asyncio.Task[None] | None = None

    def submit(self, journal: Journal) -> asyncio.Future[Any]:
        fut = self._waiting.get(journal)
        if fut is None or fut.done():
            fut = self._waiting[journal] = asyncio.get_running_loop().create_future()
        if self._runner is None:
            self._runner = asyncio.create_task(self._run())
        return fut

    def _fsync_all(self, journals: Sequence[Journal]) -> list[SyncOutcome]:
        """After a failed syncfs: the journals' own fsyncs, in parallel in the IO pool."""
        if self._fsync_pool is None or len(journals) < 2:
            return fsync_each(journals)
        return list(self._fsync_pool.map(fsync_one, journals))

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._waiting:
                batch, self._waiting = self._waiting, {}
                journals = list(batch)
                work = loop.run_in_executor(self._thread, sync_many, journals, self._fsync_all)
                try:
                    outcomes = await asyncio.shield(work)
                except asyncio.CancelledError:
                    # The worker thread is still using these journals: their streams keep
                    # their sync locks (nobody closes a descriptor under it) until it is done
                    # and they have the real outcome.
                    self._deliver(batch, journals, await _finished(work))
                    raise
                except Exception as e:  # a bug in sync_many: acknowledge nothing
                    log.exception("group commit failed")
                    err = OSError(f"group commit failed: {e!r}")
                    self._deliver(batch, journals, [SyncOutcome(0.0, err)] * len(journals))
                    continue
                self._metrics.commit_batch.observe(len(journals))
                self._metrics.fsync_latency.observe(max(o.seconds for o in outcomes))
                self._deliver(batch, journals, outcomes)
        finally:
            self._runner = None
            # Stopped (cancelled): requests no thread has touched yet fail cleanly.
            leftover, self._waiting = self._waiting, {}
            for fut in leftover.values():
                if not fut.done():
                    fut.set_exception(OSError("group commit stopped"))

    @staticmethod
    def _deliver(batch: dict[Journal, asyncio.Future[None]], journals: Sequence[Journal],
                 outcomes: Sequence[SyncOutcome]) -> None:
        for journal, outcome in zip(journals, outcomes, strict=True):
            fut = batch[journal]
            if fut.done():
                continue
            if outcome.error is None:
                fut.set_result(None)
            else:
                fut.set_exception(outcome.error)

    def close(self) -> None:
        self._thread.shutdown(wait=True)


async def _finished(work: asyncio.Future[list[SyncOutcome]]) -> list[SyncOutcome]:
    """The result of `work`, however often the waiting task is cancelled meanwhile."""
    while not work.done():
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait([work])
    return work.result()


def make_committer(mode: str, executor: Executor | None, metrics: Metrics) -> Committer:
    """`mode` is ServerConfig.sync_mode: auto, syncfs or fsync (docs/storage.md)."""
    if mode == "syncfs" and not syncfs_trustworthy():
        raise ConfigError(f"--sync-mode syncfs needs Linux >= {MIN_KERNEL[0]}.{MIN_KERNEL[1]} "
                      "(earlier kernels do not report every error from syncfs); "
                      "use --sync-mode fsync or auto")
    if mode == "fsync" or (mode == "auto" and not syncfs_trustworthy()):
        return PerJournalCommit(executor, metrics)
    return SharedCommit(metrics, executor)

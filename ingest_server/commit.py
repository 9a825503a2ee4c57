"""How journals become durable: per-stream fsync, or group commit across streams (syncfs).

Both implement `Committer.submit(journal)`: a future that completes once everything appended
to the journal before the call is durable (docs/protocol.md §4: the ack promises exactly
that), or fails with the OSError that made it fail. A future, not a coroutine: no task per
sync (this runs once per live stream per batch). The journal is the caller's: it holds the
stream's sync lock, so no other coroutine syncs, cuts or closes that journal meanwhile; it
must not cancel the future (a worker thread may be using the journal).

`SharedCommit` (default on Linux, `--sync-mode syncfs`): requests wait in a set; one worker
thread runs one `sync_many` (one syncfs per file system, storage/syncfs.py) for all of them;
requests that arrive meanwhile ride the next batch. With N live streams that is one disk
flush per batch instead of N (docs/performance.md "Capacity").

`PerJournalCommit` (`--sync-mode fsync`): each journal's fsync in the IO thread pool, as
before. For file systems where syncfs is slow (it flushes every file on the file system,
other programs' too) or unavailable.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import Executor, ThreadPoolExecutor
from typing import Any, Protocol

from .metrics import Metrics
from .storage import Journal
from .storage.syncfs import SYNCFS_AVAILABLE, sync_many


class Committer(Protocol):
    def submit(self, journal: Journal) -> asyncio.Future[Any]: ...

    def close(self) -> None: ...


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
    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="ingest-commit")
        self._waiting: dict[Journal, asyncio.Future[None]] = {}
        self._runner: asyncio.Task[None] | None = None

    def submit(self, journal: Journal) -> asyncio.Future[Any]:
        fut = self._waiting.get(journal)
        if fut is None or fut.done():
            fut = self._waiting[journal] = asyncio.get_running_loop().create_future()
        if self._runner is None:
            self._runner = asyncio.create_task(self._run())
        return fut

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._waiting:
                batch, self._waiting = self._waiting, {}
                journals = list(batch)
                try:
                    outcomes = await loop.run_in_executor(self._thread, sync_many, journals)
                except BaseException as e:  # cancelled at shutdown, or a bug: nobody is acked
                    for fut in batch.values():
                        if not fut.done():
                            fut.set_exception(e if isinstance(e, Exception) else
                                              OSError("group commit stopped"))
                    raise
                self._metrics.commit_batch.observe(len(journals))
                self._metrics.fsync_latency.observe(max(o.seconds for o in outcomes))
                for journal, outcome in zip(journals, outcomes, strict=True):
                    fut = batch[journal]
                    if fut.done():  # cancelled after all (shutdown)
                        continue
                    if outcome.error is None:
                        fut.set_result(None)
                    else:
                        fut.set_exception(outcome.error)
        finally:
            self._runner = None

    def close(self) -> None:
        self._thread.shutdown(wait=True)


def make_committer(mode: str, executor: Executor | None, metrics: Metrics) -> Committer:
    """`mode` is ServerConfig.sync_mode: auto, syncfs or fsync."""
    if mode == "syncfs" and not SYNCFS_AVAILABLE:
        raise OSError("--sync-mode syncfs: this platform has no syncfs(2)")
    if mode == "fsync" or (mode == "auto" and not SYNCFS_AVAILABLE):
        return PerJournalCommit(executor, metrics)
    return SharedCommit(metrics)

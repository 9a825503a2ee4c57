"""Cross-stream group commit (storage/syncfs.py, commit.py): one syncfs for many journals,
exact attribution of a failure to the journals it belongs to, and cancellation that never
lets a journal go while a worker thread uses it (docs/storage.md "Group commit")."""

from __future__ import annotations

import asyncio
import errno
import os
import threading
from pathlib import Path

import pytest

from ingest_server.commit import SharedCommit, sync_many
from ingest_server.metrics import Metrics
from ingest_server.storage import Journal
from ingest_server.storage.syncfs import Devices, filesystem_type, kernel_version
from ingest_server.wsprotocol import MESSAGE_OVERHEAD, QUEUE_HIGH_BYTES, IngestWebSocketProtocol
from tests.support.clock import FakeClock

from .test_sessions import attach, make_registry, write

WAIT = 10.0


def journals(tmp_path: Path, n: int) -> list[Journal]:
    out = []
    for i in range(n):
        d = tmp_path / f"s{i}"
        d.mkdir()
        out.append(Journal.create(d / "journal.bin"))
    return out


def append(j: Journal, frames: int = 1) -> None:
    start = j.next_seq
    for seq in range(start, start + frames):
        j.append_audio(seq, 1, seq * 320, 320, b"\x01\x02" * 320)


class Calls:
    """Count syncfs / fsync calls and fail the chosen ones (the storage boundary)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.syncfs = 0
        self.fsynced: list[Path] = []
        self.fail_syncfs = 0
        self.fail_fsync: set[Path] = set()
        real_syncfs, real_fsync = Journal._syncfs, Journal._fsync

        def syncfs(j: Journal) -> None:
            self.syncfs += 1
            if self.fail_syncfs > 0:
                self.fail_syncfs -= 1
                raise OSError(errno.EIO, "injected")
            real_syncfs(j)

        def fsync(j: Journal) -> None:
            self.fsynced.append(j.path)
            if j.path in self.fail_fsync:
                self.fail_fsync.discard(j.path)
                raise OSError(errno.EIO, "injected")
            real_fsync(j)

        monkeypatch.setattr(Journal, "_syncfs", syncfs)
        monkeypatch.setattr(Journal, "_fsync", fsync)


def test_one_syncfs_makes_a_whole_batch_durable(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    js = journals(tmp_path, 5)
    calls = Calls(monkeypatch)
    for j in js:
        append(j)
    outcomes = sync_many(js)
    assert [o.error for o in outcomes] == [None] * 5
    assert (calls.syncfs, calls.fsynced) == (1, [])


def test_a_failed_syncfs_is_attributed_by_fsyncing_each_journal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b, c, outside = journals(tmp_path, 4)
    calls = Calls(monkeypatch)
    calls.fail_syncfs = 1
    calls.fail_fsync = {b.path}
    outcomes = sync_many([a, b, c])
    assert [o.error is None for o in outcomes] == [True, False, True]
    assert calls.fsynced == [a.path, b.path, c.path]
    # The error syncfs consumed may have been on any journal of that file system: one that
    # was not in the batch gets its own fsync at its next sync, then syncfs again.
    calls.fsynced.clear()
    assert [o.error for o in sync_many([outside, a])] == [None, None]
    assert calls.fsynced == [outside.path]
    assert calls.syncfs == 2
    calls.fsynced.clear()
    assert [o.error for o in sync_many([outside, a])] == [None, None]
    assert (calls.fsynced, calls.syncfs) == ([], 3)
    # b never had a successful fsync since: it keeps getting its own.
    assert sync_many([b])[0].error is None
    assert calls.fsynced == [b.path]


def test_the_device_descriptor_lives_exactly_as_long_as_its_journals(tmp_path: Path) -> None:
    devices = Devices()
    (tmp_path / "a").mkdir()
    first = devices.acquire(tmp_path)
    assert devices.acquire(tmp_path / "a") is first  # one descriptor per file system
    assert (first.refs, len(devices)) == (2, 1)
    devices.release(first)
    os.fstat(first.fd)  # still open: one journal left
    devices.release(first)
    assert len(devices) == 0
    with pytest.raises(OSError):
        os.fstat(first.fd)  # closed: an unmount is not blocked


def test_syncfs_is_used_only_where_it_reports_errors(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    assert kernel_version("5.16.20-generic") < (5, 17) <= kernel_version("6.18.44-fc")
    assert kernel_version("nonsense") == (0, 0)
    assert filesystem_type(os.stat(tmp_path).st_dev) in ("ext4", "xfs", "btrfs", "tmpfs",
                                                         "overlay")
    a, b = journals(tmp_path, 2)
    calls = Calls(monkeypatch)
    b.syncfs_capable = False  # e.g. on FUSE, or reached through a symlink to another fs
    assert [o.error for o in sync_many([a, b])] == [None, None]
    assert (calls.syncfs, calls.fsynced) == (1, [b.path])


def test_requests_during_a_batch_ride_the_next_one(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    js = journals(tmp_path, 6)
    calls = Calls(monkeypatch)
    metrics = Metrics()

    async def main() -> None:
        commit = SharedCommit(metrics)
        try:
            for j in js:
                append(j)
            # Six requests at once: the first starts a batch alone or with others; all six
            # are durable after at most two syncfs calls.
            await asyncio.gather(*(commit.submit(j) for j in js))
            assert 1 <= calls.syncfs <= 2
            calls.fail_fsync = {js[2].path}
            calls.fail_syncfs = 1
            for j in js:
                append(j)
            results = await asyncio.gather(*(commit.submit(j) for j in js),
                                           return_exceptions=True)
            failed = [i for i, r in enumerate(results) if isinstance(r, OSError)]
            assert failed == [2]
        finally:
            commit.close()

    asyncio.run(main())
    assert metrics.commit_batch.collect()[0].samples  # observed per batch


class GatedSyncfs:
    """Hold every syncfs until released (a slow disk), optionally failing it."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, fail: bool) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        real = Journal._syncfs

        def syncfs(j: Journal) -> None:
            self.entered.set()
            assert self.release.wait(WAIT)
            if fail:
                raise OSError(errno.EIO, "injected")
            real(j)

        monkeypatch.setattr(Journal, "_syncfs", syncfs)


@pytest.mark.parametrize("fails", [False, True])
def test_a_cancelled_sync_keeps_the_journal_until_the_thread_is_done_then_acts_on_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fails: bool
) -> None:
    gate = GatedSyncfs(monkeypatch, fail=fails)
    if fails:
        Calls(monkeypatch).fail_fsync = {tmp_path / "streams" / "s" / "journal.bin"}

    async def scenario() -> None:
        reg = make_registry(tmp_path, FakeClock())
        commit = reg.committer = SharedCommit(reg.metrics)
        try:
            a, _ = await attach(reg, "s")
            stream = a.stream
            stream._committer = commit
            write(stream, 3, seed=5)
            target = stream.journal.position if stream.journal else None
            task = asyncio.create_task(stream.sync())
            while not gate.entered.is_set():
                await asyncio.sleep(0)  # no timing: just let the task reach the thread
            task.cancel()
            await asyncio.sleep(0)
            task.cancel()  # twice: the lock must still be held
            for _ in range(5):
                await asyncio.sleep(0)
            assert stream.sync_lock.locked() and not task.done()
            gate.release.set()
            with pytest.raises(asyncio.CancelledError):
                await asyncio.wait_for(task, WAIT)
            assert not stream.sync_lock.locked()
            assert stream.journal is not None
            if fails:
                # Never retried (the kernel reports a writeback error once): cut back at once.
                assert stream.durable.next_seq == 0
                assert stream.journal.position.size == stream.durable.size
                assert reg.metrics.storage_errors["fsync"] == 1
            else:
                assert stream.durable == target
        finally:
            commit.close()

    asyncio.run(scenario())


def test_stopping_the_committer_mid_batch_delivers_the_real_outcome(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gate = GatedSyncfs(monkeypatch, fail=False)
    a, b = journals(tmp_path, 2)

    async def scenario() -> None:
        commit = SharedCommit(Metrics())
        try:
            append(a)
            first = commit.submit(a)
            while not gate.entered.is_set():
                await asyncio.sleep(0)
            append(b)
            second = commit.submit(b)  # waits for the next batch, which never comes
            runner = commit._runner
            assert runner is not None
            runner.cancel()
            await asyncio.sleep(0)
            assert not first.done()  # the thread still has `a`
            gate.release.set()
            await asyncio.wait_for(asyncio.wait([runner]), WAIT)
            assert first.result() is None  # durable, and said so
            with pytest.raises(OSError, match="group commit stopped"):
                second.result()
        finally:
            commit.close()

    asyncio.run(scenario())


class FakeTransport:
    def __init__(self) -> None:
        self.paused = False
        self.pauses = 0

    def pause_reading(self) -> None:
        self.paused, self.pauses = True, self.pauses + 1

    def resume_reading(self) -> None:
        self.paused = False


def test_read_flow_control_pauses_on_queued_bytes_and_on_tiny_message_floods() -> None:
    async def scenario() -> None:
        proto = IngestWebSocketProtocol.__new__(IngestWebSocketProtocol)  # the queue logic only
        transport = FakeTransport()
        proto.transport = transport  # type: ignore[assignment]
        proto.queue = asyncio.Queue()
        proto.read_paused, proto.close_sent, proto.frames = False, False, []

        def message(payload: bytes) -> None:
            proto.curr_msg_data_type = "bytes"
            proto.frames = [payload]
            proto.send_receive_event_to_app()

        for _ in range(50):  # live traffic: 20 ms frames, taken as they come
            message(b"x" * 640)
            await proto.receive()
        assert transport.pauses == 0
        big = b"x" * 65536  # a replay burst the app is slow to take
        n = 0
        while not transport.paused:
            message(big)
            n += 1
        assert n == QUEUE_HIGH_BYTES // (len(big) + MESSAGE_OVERHEAD) + 1
        for _ in range(n - 1):
            await proto.receive()
        assert transport.paused  # one message left: still paused
        await proto.receive()
        assert not transport.paused and proto.queued_bytes == 0
        n = 0
        while not transport.paused:  # a flood of empty messages is bounded too
            message(b"")
            n += 1
        assert n == QUEUE_HIGH_BYTES // MESSAGE_OVERHEAD + 1

    asyncio.run(scenario())

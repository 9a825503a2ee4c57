"""Cross-stream group commit (storage/syncfs.py, commit.py): one syncfs for many journals,
and exact attribution of a failure to the journals it belongs to."""

from __future__ import annotations

import asyncio
import errno
import os
from pathlib import Path

import pytest

from ingest_server.commit import SharedCommit
from ingest_server.metrics import Metrics
from ingest_server.storage import Journal
from ingest_server.storage.syncfs import DEVICES, sync_many


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
    before = len(DEVICES)
    js = journals(tmp_path, 3)
    device = js[0].device
    assert all(j.device is device for j in js)
    assert device.refs >= 3
    fd = device.fd
    for j in js:
        j.close()
    if before == 0:  # nothing else in this process holds a journal on this file system
        assert len(DEVICES) == 0
        with pytest.raises(OSError):
            os.fstat(fd)


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

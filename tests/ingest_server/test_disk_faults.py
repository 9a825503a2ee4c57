"""Disk faults (docs/storage.md "Disk faults"): a failed write or fsync is never acked, the
stream closes with 1013, nothing stored is damaged, and once space returns the client
resumes and finishes sample-exactly.

Two ways in: faults injected at the storage boundary (Journal._write / _fsync / _syncfs /
_truncate, Store.write_meta, the WAV export), and a real, full tmpfs (needs root; CI runs as
root).
"""

from __future__ import annotations

import asyncio
import errno
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from capture.frames import FrameCutter
from capture.wav_source import WavFileSource
from capture.wavfile import read_wav
from ingest_server.storage import Journal, Store
from ingest_server.storage.journal import FILE_MAGIC, RECORD_HEADER_SIZE
from ingest_server.storage.wav import JournalWav
from tests.support.clock import FakeClock
from tests.support.server import IngestServer
from tools.chaos_run import make_recording
from uplink.client import UplinkClient
from uplink.config import UplinkConfig
from uplink.core import ConnectionState
from uplink.policy import BackoffConfig, BreakerConfig, RetryBudgetConfig
from uplink.ring import OverflowPolicy, RingBuffer
from uplink.wire import CloseCode

from .client import FRAME, Client, Closed, frames
from .harness import WAIT, Bystander, in_process, scrape, value
from .test_sessions import attach, make_registry, write

RECORD = RECORD_HEADER_SIZE + FRAME * 2


def enospc() -> OSError:
    return OSError(errno.ENOSPC, "No space left on device (injected)")


class Faults:
    """Fail the next N writes / fsyncs / truncates of a given stream's journal."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.writes: dict[str, int] = {}
        self.fsyncs: dict[str, int] = {}
        self.truncates: dict[str, int] = {}
        real_write, real_fsync, real_truncate = Journal._write, Journal._fsync, Journal._truncate
        real_syncfs = Journal._syncfs

        def write(j: Journal, parts: list[Any]) -> int:
            if self._take(self.writes, j):
                # What a filling disk does: part of the record lands, then the write stops.
                return real_write(j, [bytes(parts[0])[:7]])
            return real_write(j, parts)

        def fsync(j: Journal) -> None:
            if self._take(self.fsyncs, j):
                raise OSError(errno.EIO, "Input/output error (injected)")
            real_fsync(j)

        def truncate(j: Journal, size: int) -> None:
            if self._take(self.truncates, j):
                raise OSError(errno.EIO, "Input/output error (injected)")
            real_truncate(j, size)

        def syncfs(j: Journal) -> None:
            # syncfs cannot tell which file failed (storage/syncfs.py): it fails if any
            # stream has an fsync fault pending; the per-journal fsyncs that follow find it.
            if any(n > 0 for n in self.fsyncs.values()):
                raise OSError(errno.EIO, "Input/output error (injected, syncfs)")
            real_syncfs(j)

        monkeypatch.setattr(Journal, "_syncfs", syncfs)
        monkeypatch.setattr(Journal, "_write", write)
        monkeypatch.setattr(Journal, "_fsync", fsync)
        monkeypatch.setattr(Journal, "_truncate", truncate)

    @staticmethod
    def _take(table: dict[str, int], j: Journal) -> bool:
        sid = j.path.parent.name
        if table.get(sid, 0) > 0:
            table[sid] -= 1
            return True
        return False


def journal_size(data: Path, sid: str) -> int:
    return (data / "streams" / sid / "journal.bin").stat().st_size


def test_disk_full_on_write_is_never_acked_and_the_stream_completes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    faults = Faults(monkeypatch)
    f = frames(10, seed=70)
    with in_process(tmp_path / "data") as srv, Bystander(srv.url, "calm") as calm:
        with Client(srv.url) as c:
            w = c.hello("full")
            c.stream(0, f[:3])
        faults.writes["full"] = 2
        for attempt in range(2):  # the disk stays full for two attempts
            with Client(srv.url) as c:
                assert c.hello("full", resume=w).next_seq == 3
                c.audio(3, 3 * FRAME, [f[3]])
                closed = c.expect_close()
                assert (closed.code, closed.reason) == (CloseCode.TRY_AGAIN_LATER,
                                                        "storage failure")
                assert c.acked[0] == 3, attempt
            # The torn bytes were cut off at once: the journal holds whole records only.
            assert journal_size(srv.data, "full") == len(FILE_MAGIC) + 3 * RECORD
        with Client(srv.url) as c:  # space is back
            assert c.hello("full", resume=w).next_seq == 3
            c.stream(3, f[3:])
            c.end(10, 10 * FRAME)
        stored = calm.finish()
        m = scrape(srv.http)
        assert value(m, "echopanel_storage_errors_total", op="write") == 2
        assert value(m, "echopanel_closes_total", code="1013") == 2
        wav = httpx.get(f"{srv.http}/v1/streams/full/audio.wav", timeout=WAIT).content
        assert wav.endswith(b"".join(f))
        calm_wav = httpx.get(f"{srv.http}/v1/streams/calm/audio.wav", timeout=WAIT).content
        assert calm_wav.endswith(b"".join(stored))


@pytest.mark.parametrize("sync_mode", ["syncfs", "fsync"])
def test_failed_fsync_cuts_back_to_the_durable_position_and_resume_replays(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sync_mode: str
) -> None:
    faults = Faults(monkeypatch)
    f = frames(8, seed=71)
    # The bystander streams all along and must finish intact whichever batch its syncs share
    # with the failing one (attribution inside one batch is pinned down in test_syncfs.py).
    with in_process(tmp_path / "data", sync_mode=sync_mode) as srv, \
            Bystander(srv.url, "calm") as calm:
        with Client(srv.url) as c:
            w = c.hello("eio")
            c.stream(0, f[:3])
            faults.fsyncs["eio"] = 1
            c.audio(3, 3 * FRAME, [f[3]])
            c.audio(4, 4 * FRAME, [f[4]])
            closed = c.expect_close()
            assert (closed.code, closed.reason) == (CloseCode.TRY_AGAIN_LATER, "storage failure")
            assert c.acked[0] == 3  # seq 3 and 4 were written, never made durable, never acked
        srv.connections_finished("eio")
        # Everything after the last good fsync is gone from the file, not just from memory.
        assert journal_size(srv.data, "eio") == len(FILE_MAGIC) + 3 * RECORD
        with Client(srv.url) as c:  # the same server, no restart: the journal is usable
            assert c.hello("eio", resume=w).next_seq == 3
            c.stream(3, f[3:])
            c.end(8, 8 * FRAME)
        assert value(scrape(srv.http), "echopanel_storage_errors_total", op="fsync") == 1
        wav = httpx.get(f"{srv.http}/v1/streams/eio/audio.wav", timeout=WAIT).content
        assert wav.endswith(b"".join(f))
        stored = calm.finish()
        calm_wav = httpx.get(f"{srv.http}/v1/streams/calm/audio.wav", timeout=WAIT).content
        assert calm_wav.endswith(b"".join(stored))


def test_when_even_the_cut_fails_the_stream_waits_for_a_restart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    faults = Faults(monkeypatch)
    f = frames(6, seed=72)
    with in_process(tmp_path / "data") as srv:
        with Client(srv.url) as c:
            w = c.hello("broken")
            c.stream(0, f[:3])
            faults.fsyncs["broken"] = 1
            faults.truncates["broken"] = 1
            c.audio(3, 3 * FRAME, [f[3]])
            assert c.expect_close().code == CloseCode.TRY_AGAIN_LATER
        srv.connections_finished()
        with Client(srv.url) as c, pytest.raises(Closed) as e:
            c.hello("broken", resume=w)
        assert e.value.code == CloseCode.TRY_AGAIN_LATER
    with in_process(tmp_path / "data") as srv:  # recovery re-reads and re-verifies the file
        with Client(srv.url) as c:
            welcome = c.hello("broken", resume=w)
            assert welcome.next_seq >= 3
            c.stream(welcome.next_seq, f[welcome.next_seq:])
            c.end(6, 6 * FRAME)
        wav = httpx.get(f"{srv.http}/v1/streams/broken/audio.wav", timeout=WAIT).content
        assert wav.endswith(b"".join(f))


def test_disk_full_at_creation_leaves_nothing_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = Store.write_meta
    failures = [1]

    def write_meta(store: Store, meta: Any) -> None:
        if failures[0]:
            failures[0] -= 1
            raise enospc()
        real(store, meta)

    monkeypatch.setattr(Store, "write_meta", write_meta)
    with in_process(tmp_path / "data") as srv:
        with Client(srv.url) as c, pytest.raises(Closed) as e:
            c.hello("newborn")
        assert e.value.code == CloseCode.TRY_AGAIN_LATER
        assert not (srv.data / "streams" / "newborn").exists()
        with Client(srv.url) as c:  # the retry creates it (the id was not left taken)
            c.hello("newborn")
            c.stream(0, frames(2, seed=73))
            c.end(2, 2 * FRAME)
        assert value(scrape(srv.http), "echopanel_storage_errors_total", op="create") == 1


def test_disk_full_at_finalization_keeps_the_stream_open_and_retries(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_iter = JournalWav.__iter__
    failures = [1]

    def iterate(wav: JournalWav) -> Iterator[bytes]:
        chunks = real_iter(wav)
        yield next(chunks)  # the header lands in audio.wav.tmp, then the disk is full
        if failures[0]:
            failures[0] -= 1
            chunks.close()
            raise enospc()
        yield from chunks

    monkeypatch.setattr(JournalWav, "__iter__", iterate)
    f = frames(5, seed=74)
    with in_process(tmp_path / "data") as srv:
        with Client(srv.url) as c:
            w = c.hello("last-step")
            c.stream(0, f)
            c.send('{"type": "end", "next_seq": 5, "next_sample": 1600}')
            assert c.expect_close().code == CloseCode.TRY_AGAIN_LATER
        d = srv.data / "streams" / "last-step"
        assert sorted(p.name for p in d.iterdir()) == ["journal.bin", "meta.json"]  # no .tmp
        with Client(srv.url) as c:
            w2 = c.hello("last-step", resume=w)
            assert (w2.next_seq, w2.finalized) == (5, False)
            c.end(5, 5 * FRAME)
        assert sorted(p.name for p in d.iterdir()) == ["audio.wav", "meta.json"]
        wav = httpx.get(f"{srv.http}/v1/streams/last-step/audio.wav", timeout=WAIT).content
        assert wav.endswith(b"".join(f))
        assert value(scrape(srv.http), "echopanel_storage_errors_total", op="finalize") == 1


def test_expiry_on_a_full_disk_is_retried_later(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = Store.finalize
    failures = [1]

    def finalize(store: Store, meta: Any, journal: Journal) -> None:
        if failures[0]:
            failures[0] -= 1
            raise enospc()
        real(store, meta, journal)

    monkeypatch.setattr(Store, "finalize", finalize)

    async def scenario() -> None:
        clock = FakeClock(0.0)
        reg = make_registry(tmp_path, clock)
        a, owner = await attach(reg, "sleepy")
        write(a.stream, 2, seed=75)
        reg.detach(a.stream, owner)
        assert await reg.expire(60.0) == []  # failed: still open, not retried at once
        assert not a.stream.finalized
        assert await reg.expire(61.0) == []
        assert await reg.expire(90.0) == ["sleepy"]
        assert a.stream.meta.frames == 2

    asyncio.run(scenario())


# -- a real full disk ------------------------------------------------------------------------


@contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A small tmpfs at `path`. Needs root; outside CI a non-root run skips, in CI it fails."""
    path.mkdir(parents=True, exist_ok=True)
    why = None
    if os.geteuid() != 0:
        why = "mounting a tmpfs needs root"
    else:
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs",
                               str(path)], capture_output=True, text=True)
        if proc.returncode != 0:
            why = f"mount failed: {proc.stderr.strip()}"
    if why is not None:
        if os.environ.get("CI"):
            pytest.fail(f"the disk-full test must run in CI: {why}")
        pytest.skip(why)
    try:
        yield path
    finally:
        if subprocess.run(["umount", str(path)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(path)], check=False)


def fill(path: Path) -> int:
    """Write until the filesystem says ENOSPC, down to the last byte; returns bytes written."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    total = 0
    try:
        for size in (1 << 16, 4096, 512, 1):
            chunk = bytes(size)
            while True:
                try:
                    total += os.write(fd, chunk)
                except OSError as e:
                    if e.errno != errno.ENOSPC:
                        raise
                    break
    finally:
        os.close(fd)
    return total


UPLINK = UplinkConfig(ack_timeout=2.0, backoff=BackoffConfig(base=0.05, cap=0.3),
                      breaker=BreakerConfig(failure_threshold=1000),
                      budget=RetryBudgetConfig(max_initial_attempts=0, max_outage=None))


def test_a_real_full_disk_mid_stream_then_space_returns(tmp_path: Path) -> None:
    """The uplink streams a recording; the disk fills up under it (a 2 MiB tmpfs holds the
    streams); the server closes with 1013, acks nothing it has not stored, and reports not
    ready; a filler file is deleted; the uplink resumes and the stored audio is exact."""
    source = make_recording(tmp_path / "source.wav", 6.0)
    fmt, pcm = read_wav(source)
    data = tmp_path / "data"
    with tmpfs(data / "streams", "2m") as streams, IngestServer(data) as server:
        filler = streams / "filler"

        async def scenario() -> None:
            refused = asyncio.Event()
            refusals = 0

            def on_state(state: ConnectionState) -> None:
                nonlocal refusals
                if state.name == "reconnecting" and "1013" in state.reason:
                    refusals += 1
                    if refusals == 2:  # a resumed connection failed on the full disk too
                        refused.set()

            ring = RingBuffer(fmt, 320, 30.0, OverflowPolicy.BLOCK)
            client = UplinkClient(server.url, ring, "disk-full", UPLINK)
            client.on_state(on_state)
            WavFileSource(source, speed=2.0).start(FrameCutter(ring))
            run = asyncio.create_task(client.run())
            while client.stats().counters.acked_sample < fmt.sample_rate:  # 1 s stored
                assert not run.done(), run
                await asyncio.sleep(0.02)
            assert await asyncio.to_thread(fill, filler) > 0
            await asyncio.wait_for(refused.wait(), WAIT)

            acked = client.stats().counters.acked_seq
            detail = (await asyncio.to_thread(
                httpx.get, f"{server.http}/v1/streams/disk-full", timeout=WAIT)).json()
            assert detail["next_seq"] >= acked  # every ack is on disk
            ready = await asyncio.to_thread(httpx.get, f"{server.http}/readyz", timeout=WAIT)
            assert ready.status_code == 503 and ready.json()["checks"]["storage"] is False

            filler.unlink()  # space returns
            result = await asyncio.wait_for(run, 60)
            assert result.ok, result.error

        asyncio.run(scenario())
        assert httpx.get(f"{server.http}/readyz", timeout=WAIT).status_code == 200
        _, stored = read_wav(streams / "disk-full" / "audio.wav")
        assert stored == pcm  # sample-exact
        m = scrape(server.http)
        assert value(m, "echopanel_storage_errors_total", op="write") >= 2
        assert value(m, "echopanel_closes_total", code="1013") >= 2


def test_a_real_full_disk_refuses_new_streams_cleanly(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with tmpfs(data / "streams", "1m") as streams, IngestServer(data) as server:
        fill(streams / "filler")
        with Client(server.url) as c, pytest.raises(Closed) as e:
            c.hello("born-full")
        assert e.value.code == CloseCode.TRY_AGAIN_LATER
        assert not (streams / "born-full").exists()
        (streams / "filler").unlink()
        with Client(server.url) as c:
            c.hello("born-full")
            c.stream(0, frames(3, seed=76))
            c.end(3, 3 * FRAME)

"""Write-ahead spool (uplink/spool.py): what a crashed process leaves is recovered exactly,
torn and corrupt records become explicit gaps, the ring sends nothing the spool lacks."""

from __future__ import annotations

import asyncio
import os
import stat
import subprocess
import threading
from pathlib import Path

import pytest

from uplink.audio import AudioFormat, SampleType
from uplink.ring import SLOT_AUDIO, SLOT_GAP, AudioRun, GapRun, OverflowPolicy, RingBuffer
from uplink.spool import (
    DATA_NAME,
    DATA_OFFSET,
    META_NAME,
    RECORD_BYTES,
    Spool,
    SpoolError,
    SyncMode,
    SyncPolicy,
    data_size,
)

MONO16 = AudioFormat(16_000, 1, SampleType.INT16)
FS = 320  # 20 ms frames
FB = FS * 2


def frame(i: int, n: int = FB) -> bytes:
    return bytes([i % 251 + 1]) * n


def new_spooled(tmp: Path, slots_seconds: float = 1.0,
                policy: OverflowPolicy = OverflowPolicy.DROP_OLDEST) -> tuple[Spool, RingBuffer]:
    spool = Spool.open(tmp, SyncPolicy(SyncMode.NONE))
    ring = RingBuffer(MONO16, FS, slots_seconds, policy, wall_clock=lambda: 1000.0)
    spool.create("spool-test", MONO16, FS, ring.slots, "test")
    spool.attach(ring)
    return spool, ring


def crash(spool: Spool) -> None:
    """Like SIGKILL after the writer caught up: the files stay as they are."""
    spool.stop()
    spool.close()


def reopen(tmp: Path) -> tuple[Spool, RingBuffer]:
    spool = Spool.open(tmp, SyncPolicy(SyncMode.NONE))
    assert spool.meta is not None
    ring = RingBuffer(MONO16, FS, (spool.meta.slots - 0.5) * FS / 16_000)
    spool.attach(ring)
    return spool, ring


def drain(ring: RingBuffer, server_next: tuple[int, int]) -> list[AudioRun | GapRun]:
    """What the uplink sends after a welcome with `server_next` (docs/protocol.md §8)."""
    ring.ack(*server_next)
    runs: list[AudioRun | GapRun] = []
    seq = ring.first_seq()
    while (run := ring.read(seq, 1, 1 << 20)) is not None:
        runs.append(run)
        seq = run.seq + run.count
    return runs


def test_the_ring_sends_only_what_the_spool_wrote(tmp_path: Path) -> None:
    spool, ring = new_spooled(tmp_path)
    ring.on_push = None  # hold the writer back: nothing spooled yet
    ring.push(frame(0))
    assert ring.read(0, 10, 1 << 20) is None
    spool.wake()
    ring.on_push = spool.wake
    ring.push(frame(1))
    spool.stop()
    run = ring.read(0, 10, 1 << 20)
    assert isinstance(run, AudioRun) and run.count == 2
    spool.close()


def test_crash_and_restore_gives_back_exactly_the_unacked_items(tmp_path: Path) -> None:
    spool, ring = new_spooled(tmp_path)
    for i in range(20):
        ring.push(frame(i))
    ring.push(frame(20, 100))  # a short frame before a gap
    ring.push_gap(480)
    ring.push(frame(22))
    ring.ack(5, 5 * FS)
    spool.wake()  # record the ack in the header
    crash(spool)
    assert stat.S_IMODE(os.stat(tmp_path / META_NAME).st_mode) == 0o600

    spool2, ring2 = reopen(tmp_path)
    rec = spool2.recovered
    assert rec is not None and rec.torn_tail == 0 and rec.corrupt == 0
    assert rec.span.acked_seq == 5 and rec.span.first_seq == 5
    assert ring2.wall_time == ring.wall_time
    runs = drain(ring2, (7, 7 * FS))  # the server had two more than the header knew
    assert [r.seq for r in runs][:2] == [7, 8]
    audio = b"".join(r.payload for r in runs if isinstance(r, AudioRun))
    assert audio == b"".join(frame(i) for i in range(7, 20)) + frame(20, 100) + frame(22)
    gap = next(r for r in runs if isinstance(r, GapRun))
    assert (gap.seq, gap.sample_pos, gap.end_sample) == (21, 20 * FS + 50, 20 * FS + 50 + 480)
    assert ring2.tail_seq == 23 and ring2.next_sample == 20 * FS + 50 + 480 + FS
    spool2.finish()
    assert not (tmp_path / DATA_NAME).exists() and not (tmp_path / META_NAME).exists()


def test_torn_tail_is_cut_and_counted(tmp_path: Path) -> None:
    spool, ring = new_spooled(tmp_path)
    for i in range(10):
        ring.push(frame(i))
    crash(spool)
    slot_bytes = RECORD_BYTES + FB
    os.truncate(tmp_path / DATA_NAME, DATA_OFFSET + 9 * slot_bytes + 100)  # mid-record 9
    spool2, ring2 = reopen(tmp_path)
    rec = spool2.recovered
    assert rec is not None and rec.torn_tail == 1 and rec.span.end_seq == 9
    assert os.path.getsize(tmp_path / DATA_NAME) == data_size(ring2.slots, FB)
    runs = drain(ring2, (0, 0))
    assert b"".join(r.payload for r in runs if isinstance(r, AudioRun)) == b"".join(
        frame(i) for i in range(9))
    spool2.close()


def test_a_bit_flip_becomes_a_gap_of_exactly_its_samples(tmp_path: Path) -> None:
    spool, ring = new_spooled(tmp_path)
    for i in range(10):
        ring.push(frame(i))
    crash(spool)
    with open(tmp_path / DATA_NAME, "r+b") as f:
        where = DATA_OFFSET + 4 * (RECORD_BYTES + FB) + RECORD_BYTES + 17
        f.seek(where)
        byte = f.read(1)
        f.seek(where)
        f.write(bytes([byte[0] ^ 0x10]))
    spool2, ring2 = reopen(tmp_path)
    rec = spool2.recovered
    assert rec is not None and rec.corrupt == 1 and rec.torn_tail == 0
    assert any("corrupt" in p for p in rec.problems())
    runs = drain(ring2, (0, 0))
    gaps = [r for r in runs if isinstance(r, GapRun)]
    assert [(g.seq, g.sample_pos, g.end_sample) for g in gaps] == [(4, 4 * FS, 5 * FS)]
    audio = [r for r in runs if isinstance(r, AudioRun)]
    assert all(r.payload == frame(r.seq) for r in audio) and len(audio) == 9
    spool2.close()


def test_drop_oldest_overflow_is_one_gap_after_restore(tmp_path: Path) -> None:
    spool, ring = new_spooled(tmp_path, slots_seconds=0.2)  # 10 slots
    for i in range(25):
        ring.push(frame(i))
        spool.wake()
    crash(spool)
    spool2, ring2 = reopen(tmp_path)
    rec = spool2.recovered
    assert rec is not None and rec.lost_front == 15
    runs = drain(ring2, (3, 3 * FS))  # the server had 3 frames before the outage
    first = runs[0]
    assert isinstance(first, GapRun)
    assert (first.seq, first.count, first.sample_pos, first.end_sample) == (3, 12, 3 * FS, 15 * FS)
    ring2.confirm_gap(3, 15)
    assert ring2.samples_dropped == 12 * FS
    assert [r.seq for r in runs[1:]] == list(range(15, 25))
    spool2.close()


def test_an_opaque_gap_longer_than_max_count_splits_exactly() -> None:
    from uplink.ring import RestoredSpan, SlotCopy

    ring = RingBuffer(MONO16, FS, 1.0)
    items = [SlotCopy(70_000, SLOT_AUDIO, 70_000 * FS, FS, frame(1))]
    ring.restore(RestoredSpan(0, 0, 70_000, items, 70_001, 70_001 * FS, None))
    first = ring.read(0, 1, 1 << 20)
    assert isinstance(first, GapRun) and first.count == 0xFFFF
    second = ring.read(first.seq + first.count, 1, 1 << 20)
    assert isinstance(second, GapRun) and second.sample_pos == first.end_sample
    assert second.end_sample == 70_000 * FS
    assert SLOT_GAP != SLOT_AUDIO


def test_one_process_per_spool(tmp_path: Path) -> None:
    spool, _ = new_spooled(tmp_path)
    with pytest.raises(SpoolError, match="in use"):
        Spool.open(tmp_path)
    spool.close()


def test_a_full_filesystem_is_a_clear_error_not_a_crash(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        if os.environ.get("CI") == "true":
            pytest.fail("mounting a tmpfs needs root under CI")
        pytest.skip("mounting a tmpfs needs root")
    mount = tmp_path / "small"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)], check=True)
    try:
        spool = Spool.open(mount / "spool", SyncPolicy(SyncMode.NONE))
        with pytest.raises(SpoolError, match=r"cannot allocate the spool \(.* MB\) in .*MB free"):
            spool.create("spool-test", MONO16, FS, 3000, "test")  # 2 MB > 256 KB
        assert spool.meta is None and not (mount / "spool" / DATA_NAME).exists()
        assert spool.low_disk_warning() is not None
        spool.close()
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def test_sync_policy_parsing() -> None:
    assert SyncPolicy.parse("always").mode is SyncMode.ALWAYS
    assert SyncPolicy.parse("none").mode is SyncMode.NONE
    assert SyncPolicy.parse("interval") == SyncPolicy(SyncMode.INTERVAL, 1.0)
    assert SyncPolicy.parse("0.5") == SyncPolicy(SyncMode.INTERVAL, 0.5)
    with pytest.raises(ValueError):
        SyncPolicy.parse("sometimes")
    with pytest.raises(ValueError):
        SyncPolicy.parse("0")


def test_a_failing_spool_turns_itself_off_and_says_so(tmp_path: Path) -> None:
    problems: list[str] = []
    spool = Spool.open(tmp_path, SyncPolicy(SyncMode.ALWAYS), on_problem=problems.append)
    ring = RingBuffer(MONO16, FS, 1.0)
    spool.create("spool-test", MONO16, FS, ring.slots)
    spool.attach(ring)
    ring.push(frame(0))
    fd = spool._fd  # noqa: SLF001 - break the disk under the writer
    assert fd is not None
    os.close(fd)
    ring.push(frame(1))
    spool.stop()
    assert spool.error is not None and "spool write failed" in spool.error
    assert problems and "kept in memory only" in problems[0]
    assert ring.spooled_seq is None  # the uplink reads everything again
    run = ring.read(0, 10, 1 << 20)
    assert isinstance(run, AudioRun) and run.count == 2
    spool._fd = None  # noqa: SLF001 - already closed above
    spool.close()


def test_a_front_gap_is_sent_only_once_the_writer_passed_it() -> None:
    ring = RingBuffer(MONO16, FS, 0.1)  # 5 slots
    ring.enable_write_ahead(lambda: None)
    for i in range(8):
        ring.push(frame(i))  # 3 evicted, nothing spooled
    assert ring.read(0, 10, 1 << 20) is None
    ring.mark_spooled(2)
    gap = ring.read(0, 10, 1 << 20)
    assert isinstance(gap, GapRun) and (gap.seq, gap.count) == (0, 2)
    ring.mark_spooled(8)
    rest = ring.read(2, 10, 1 << 20)
    assert isinstance(rest, GapRun) and (rest.seq, rest.count) == (2, 1)


def _written_by(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The name of the thread doing each record write (the header's pwrite is not counted)."""
    names: list[str] = []
    real = os.pwritev

    def pwritev(fd: int, buffers: list[bytes], offset: int) -> int:
        names.append(threading.current_thread().name)
        return real(fd, buffers, offset)

    monkeypatch.setattr("uplink.spool.os.pwritev", pwritev)
    # the thread's catch-up pass must not race the loop in this test: only stop() wakes it
    monkeypatch.setattr("uplink.spool.WRITER_IDLE_WAKE", 60.0)
    return names


@pytest.mark.parametrize(("sync", "writer"), [(SyncMode.NONE, "loop"),
                                              (SyncMode.INTERVAL, "loop"),
                                              (SyncMode.ALWAYS, "spool-writer")])
def test_attached_on_a_loop_the_push_is_written_there_before_it_is_released(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sync: SyncMode, writer: str) -> None:
    # docs/spool.md "How it works": on the uplink's loop, no thread wake-up per frame; a
    # sync before sending (always) needs the thread, which may block on the disk
    names = _written_by(monkeypatch)
    spool = Spool.open(tmp_path, SyncPolicy(sync, 60.0))
    ring = RingBuffer(MONO16, FS, 1.0, wall_clock=lambda: 1000.0)
    spool.create("spool-test", MONO16, FS, ring.slots, "test")

    async def stream() -> None:
        threading.current_thread().name = "loop"
        released = asyncio.Event()
        loop = asyncio.get_running_loop()
        ring.on_data = lambda: loop.call_soon_threadsafe(released.set)
        spool.attach(ring)
        producer = threading.Thread(target=lambda: [ring.push(frame(i)) for i in range(3)])
        producer.start()
        producer.join(5.0)
        while ring.spooled_seq != 3:
            await asyncio.wait_for(released.wait(), 5.0)
            released.clear()

    previous = threading.current_thread().name
    try:
        asyncio.run(stream())
    finally:
        threading.current_thread().name = previous
    assert names and set(names) == {writer}
    run = ring.read(0, 10, 1 << 20)
    assert isinstance(run, AudioRun) and run.payload == frame(0) + frame(1) + frame(2)
    crash(spool)
    spool2, _ = reopen(tmp_path)
    assert spool2.recovered is not None
    assert [i.payload for i in spool2.recovered.span.items] == [frame(i) for i in range(3)]
    spool2.close()


def test_once_the_loop_is_closed_the_thread_writes(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    names = _written_by(monkeypatch)
    spool = Spool.open(tmp_path, SyncPolicy(SyncMode.NONE))
    ring = RingBuffer(MONO16, FS, 1.0, wall_clock=lambda: 1000.0)
    spool.create("spool-test", MONO16, FS, ring.slots, "test")

    async def attach() -> None:
        spool.attach(ring)

    asyncio.run(attach())  # the loop it was attached on is gone now
    released = threading.Event()
    ring.on_data = released.set
    ring.push(frame(0))
    assert released.wait(5.0) and ring.spooled_seq == 1
    assert names == ["spool-writer"]
    crash(spool)

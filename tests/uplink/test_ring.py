"""Ring buffer: capacity arithmetic, wrap-around, overflow policies, concurrency."""

from __future__ import annotations

import threading
import time

import pytest

from uplink.audio import AudioFormat, SampleType
from uplink.ring import AudioRun, GapReason, GapRun, OverflowPolicy, RingBuffer, RingClosed

MONO16 = AudioFormat(16_000, 1, SampleType.INT16)


def frame(i: int, nbytes: int = 640) -> bytes:
    return bytes([i % 256]) * nbytes


def test_capacity_arithmetic_is_stated_in_bytes_and_seconds() -> None:
    ring = RingBuffer(MONO16, 320, 60.0)
    assert ring.slots == 3000
    assert ring.frame_bytes == 640
    assert ring.memory_bytes == 3000 * 640 + 3000 * 17
    assert ring.capacity_seconds == pytest.approx(60.0)
    stereo = RingBuffer(AudioFormat(48_000, 2, SampleType.FLOAT32), 960, 60.0)
    assert stereo.memory_bytes == 3000 * 960 * 8 + 3000 * 17


def test_push_read_ack_and_coalescing() -> None:
    ring = RingBuffer(MONO16, 320, 1.0)
    for i in range(5):
        ring.push(frame(i))
    run = ring.read(0, 100, 1 << 20)
    assert isinstance(run, AudioRun)
    assert (run.seq, run.count, run.sample_pos) == (0, 5, 0)
    assert run.payload == b"".join(frame(i) for i in range(5))
    limited = ring.read(1, 2, 1 << 20)
    assert isinstance(limited, AudioRun) and (limited.seq, limited.count) == (1, 2)
    assert ring.read(5, 10, 1 << 20) is None
    ring.ack(3, 960)
    assert ring.first_seq() == 3
    with pytest.raises(ValueError):
        ring.read(2, 1, 1 << 20)


def test_short_last_frame_is_its_own_run() -> None:
    ring = RingBuffer(MONO16, 320, 1.0)
    ring.push(frame(0))
    ring.push(frame(1, 100))
    first = ring.read(0, 10, 1 << 20)
    assert isinstance(first, AudioRun) and first.count == 1
    short = ring.read(1, 10, 1 << 20)
    assert isinstance(short, AudioRun) and short.payload == frame(1, 100)
    assert short.sample_pos == 320
    assert ring.next_sample == 370


def test_wrap_around_preserves_order_and_splits_at_the_wrap() -> None:
    ring = RingBuffer(MONO16, 320, 0.1)  # 5 slots
    assert ring.slots == 5
    got = b""
    seq = 0
    for i in range(23):
        ring.push(frame(i))
        if i % 3 == 2:
            while (run := ring.read(seq, 10, 1 << 20)) is not None:
                assert isinstance(run, AudioRun)
                got += run.payload
                seq += run.count
            ring.ack(seq, seq * 320)
    while (run := ring.read(seq, 10, 1 << 20)) is not None:
        assert isinstance(run, AudioRun)
        got += run.payload
        seq += run.count
    assert got == b"".join(frame(i) for i in range(23))


def test_drop_oldest_turns_dropped_frames_into_one_front_gap() -> None:
    ring = RingBuffer(MONO16, 320, 0.1, OverflowPolicy.DROP_OLDEST)  # 5 slots
    for i in range(8):
        ring.push(frame(i))
    assert ring.frames_evicted == 3 and ring.frames_dropped == 0  # lost only once confirmed
    gap = ring.read(0, 10, 1 << 20)
    assert gap == GapRun(seq=0, count=3, sample_pos=0, end_sample=960)
    rest = ring.read(3, 10, 1 << 20)
    assert isinstance(rest, AudioRun) and rest.seq == 3 and rest.count == 2  # stops at the wrap
    # the server turns out to hold frame 0 already (it was in flight): the gap shrinks
    ring.ack(1, 320)
    assert ring.read(1, 10, 1 << 20) == GapRun(seq=1, count=2, sample_pos=320, end_sample=960)
    # a gap may start anywhere inside the front gap, with its exact sample position
    assert ring.read(2, 10, 1 << 20) == GapRun(seq=2, count=1, sample_pos=640, end_sample=960)
    ring.confirm_gap(1, 3)
    assert (ring.frames_dropped, ring.samples_dropped) == (2, 640)
    ring.ack(3, 960)
    assert ring.first_seq() == 3


def test_evicted_source_gaps_are_not_counted_as_dropped_frames() -> None:
    ring = RingBuffer(MONO16, 320, 0.1, OverflowPolicy.DROP_OLDEST)  # 5 slots
    ring.push(frame(0))
    ring.push_gap(100)
    ring.push(frame(1))
    for i in range(5):
        ring.push(frame(i))
    assert ring.read(0, 10, 1 << 20) == GapRun(seq=0, count=3, sample_pos=0, end_sample=740)
    ring.confirm_gap(0, 3)
    assert (ring.frames_dropped, ring.samples_dropped) == (2, 640)


def test_source_gap_slot() -> None:
    ring = RingBuffer(MONO16, 320, 1.0)
    ring.push(frame(0))
    ring.push_gap(1000)
    ring.push(frame(1))
    assert ring.read(1, 10, 1 << 20) == GapRun(1, 1, 320, 1320, GapReason.SOURCE)
    after = ring.read(2, 10, 1 << 20)
    assert isinstance(after, AudioRun) and after.sample_pos == 1320


def wait_until_blocked(ring: RingBuffer, timeout: float = 5.0) -> None:
    """Wait (bounded) until a producer is parked on the ring's space condition."""
    deadline = time.monotonic() + timeout
    while not ring._space._waiters:  # type: ignore[attr-defined]
        assert time.monotonic() < deadline, "producer never blocked"
        time.sleep(0.001)


def test_block_policy_waits_for_acks_and_abort_wakes_it() -> None:
    ring = RingBuffer(MONO16, 320, 0.04, OverflowPolicy.BLOCK)  # 2 slots
    ring.push(frame(0))
    ring.push(frame(1))
    pushed = threading.Event()

    def producer() -> None:
        ring.push(frame(2))
        pushed.set()

    t = threading.Thread(target=producer)
    t.start()
    wait_until_blocked(ring)
    assert not pushed.is_set()  # blocked: the ring is full
    ring.ack(1, 320)
    assert pushed.wait(5)
    t.join(5)
    errors: list[BaseException] = []

    def blocked() -> None:
        try:
            ring.push(frame(3))
        except RingClosed as e:
            errors.append(e)

    t2 = threading.Thread(target=blocked)
    t2.start()
    wait_until_blocked(ring)
    ring.abort()
    t2.join(5)
    assert errors and not t2.is_alive()


def test_rejects_bad_frames_and_push_after_close() -> None:
    ring = RingBuffer(MONO16, 320, 1.0)
    with pytest.raises(ValueError):
        ring.push(b"")
    with pytest.raises(ValueError):
        ring.push(b"\x00" * 641)
    with pytest.raises(ValueError):
        ring.push(b"\x00" * 3)
    ring.close()
    with pytest.raises(RingClosed):
        ring.push(frame(0))


def test_concurrent_producer_thread_and_consumer_lose_nothing() -> None:
    ring = RingBuffer(MONO16, 320, 0.2, OverflowPolicy.BLOCK)
    n = 5000
    expected = b"".join(frame(i) for i in range(n))

    def producer() -> None:
        for i in range(n):
            ring.push(frame(i))
        ring.close()

    t = threading.Thread(target=producer)
    t.start()
    chunks: list[bytes] = []
    seq = 0
    data_ready = threading.Event()
    ring.on_data = data_ready.set
    while True:
        run = ring.read(seq, 7, 1 << 20)
        if run is None:
            if ring.closed and seq == ring.tail_seq:
                break
            data_ready.wait(1.0)
            data_ready.clear()
            continue
        assert isinstance(run, AudioRun)
        chunks.append(run.payload)
        seq += run.count
        ring.ack(seq, seq * 320)
    t.join(5)
    assert b"".join(chunks) == expected


def test_latest_audio_for_level_meters() -> None:
    ring = RingBuffer(MONO16, 320, 1.0)
    assert ring.latest_audio() == b""
    ring.push(frame(1))
    ring.push(frame(2, 64))
    assert ring.latest_audio() == frame(2, 64)
    ring.push_gap(100)
    assert ring.latest_audio() == frame(2, 64)
    ring.ack(3, 484)
    assert ring.latest_audio() == frame(2, 64)  # acked, but still the newest audio


def test_wall_time_of_sample_zero_is_stamped_by_the_first_push() -> None:
    times = iter([1000.0, 2000.0])
    ring = RingBuffer(MONO16, 320, 1.0, wall_clock=lambda: next(times))
    assert ring.wall_time is None
    ring.push(frame(0))  # 320 samples at 16 kHz: captured 20 ms before the push
    ring.push(frame(1))
    assert ring.wall_time == 1000.0 - 0.02

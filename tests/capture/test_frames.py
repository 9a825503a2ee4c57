"""FrameCutter: blocks of any size become exact fixed frames in the ring, gaps in place."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from uplink.audio import AudioFormat, SampleType
from uplink.frames import FrameCutter
from uplink.ring import AudioRun, OverflowPolicy, RingBuffer, RingClosed

# ("audio", sample_pos, payload) or ("gap", sample_pos, end_sample)
Item = tuple[str, int, bytes | int]


def drain(ring: RingBuffer) -> list[Item]:
    """Every item in the ring, one seq at a time, in order."""
    items: list[Item] = []
    seq = 0
    while (run := ring.read(seq, 1, 1 << 30)) is not None:
        if isinstance(run, AudioRun):
            items.append(("audio", run.sample_pos, run.payload))
        else:
            items.append(("gap", run.sample_pos, run.end_sample))
        seq += run.count
    return items


def payloads(items: list[Item]) -> list[bytes]:
    out = [p for _, _, p in items if isinstance(p, bytes)]
    assert len(out) == len(items), "unexpected gap"
    return out


def make_ring(fmt: AudioFormat, frame_samples: int, max_items: int) -> RingBuffer:
    """A ring that holds `max_items` items without dropping (the test drains at the end)."""
    seconds = (max_items + 2) * frame_samples / fmt.sample_rate
    return RingBuffer(fmt, frame_samples, seconds, OverflowPolicy.DROP_OLDEST)


def reference(ops: list[tuple[str, bytes | int]], frame_bytes: int, align: int) -> list[Item]:
    """The obvious, slow model: a byte string cut into frames, flushed short before gaps."""
    items: list[Item] = []
    pending = b""
    pos = 0

    def emit(payload: bytes) -> None:
        nonlocal pos
        items.append(("audio", pos, payload))
        pos += len(payload) // align

    for kind, arg in ops:
        if kind == "write":
            assert isinstance(arg, bytes)
            pending += arg
            while len(pending) >= frame_bytes:
                emit(pending[:frame_bytes])
                pending = pending[frame_bytes:]
        else:
            assert isinstance(arg, int)
            if arg <= 0:
                continue
            if pending:
                emit(pending)
                pending = b""
            items.append(("gap", pos, pos + arg))
            pos += arg
    if pending:
        emit(pending)
    return items


formats = st.sampled_from(
    [
        AudioFormat(8000, 1, SampleType.INT16),
        AudioFormat(48000, 2, SampleType.INT24),
        AudioFormat(16000, 3, SampleType.FLOAT32),
    ]
)


@settings(max_examples=200, deadline=None)
@given(
    fmt=formats,
    frame_samples=st.integers(1, 50),
    block_sizes=st.lists(st.integers(0, 180), max_size=40),
    seed=st.integers(0, 2**32 - 1),
)
def test_blocks_of_any_size_become_exact_frames(
    fmt: AudioFormat, frame_samples: int, block_sizes: list[int], seed: int
) -> None:
    rng = random.Random(seed)
    blocks = [rng.randbytes(n * fmt.block_align) for n in block_sizes]
    total = sum(block_sizes)
    ring = make_ring(fmt, frame_samples, total // frame_samples + 1)
    cutter = FrameCutter(ring)

    for block in blocks:
        cutter.write(block)
    cutter.close()

    items = drain(ring)
    assert ring.closed
    assert cutter.samples_written == total
    assert b"".join(payloads(items)) == b"".join(blocks)
    lengths = [len(payload) // fmt.block_align for payload in payloads(items)]
    assert all(n == frame_samples for n in lengths[:-1])
    assert all(0 < n <= frame_samples for n in lengths[-1:])
    assert [pos for _, pos, _ in items] == [sum(lengths[:i]) for i in range(len(lengths))]


@settings(max_examples=200, deadline=None)
@given(
    frame_samples=st.integers(1, 40),
    ops=st.lists(
        st.one_of(
            st.tuples(st.just("write"), st.integers(0, 130)),
            st.tuples(st.just("gap"), st.integers(0, 500)),
        ),
        max_size=30,
    ),
    seed=st.integers(0, 2**32 - 1),
)
def test_gaps_flush_the_partial_frame_then_record_the_loss(
    frame_samples: int, ops: list[tuple[str, int]], seed: int
) -> None:
    fmt = AudioFormat(16000, 2, SampleType.INT16)
    rng = random.Random(seed)
    concrete: list[tuple[str, bytes | int]] = [
        (kind, rng.randbytes(n * fmt.block_align) if kind == "write" else n) for kind, n in ops
    ]
    ring = make_ring(fmt, frame_samples, sum(n for _, n in ops) + len(ops))
    cutter = FrameCutter(ring)

    for kind, arg in concrete:
        if kind == "write":
            assert isinstance(arg, bytes)
            cutter.write(arg)
        else:
            assert isinstance(arg, int)
            cutter.gap(arg)
    cutter.close()

    assert drain(ring) == reference(concrete, frame_samples * fmt.block_align, fmt.block_align)
    assert cutter.samples_written == sum(n for kind, n in ops if kind == "write")
    assert cutter.samples_gapped == sum(n for kind, n in ops if kind == "gap")


@dataclass
class RecordingRing:
    """Records what the cutter hands over, without copying, to check it is zero-copy."""

    format: AudioFormat
    frame_samples: int
    pushed: list[memoryview | bytes | bytearray] = field(default_factory=list)
    closed: bool = False

    def push(self, data: bytes | bytearray | memoryview) -> None:
        self.pushed.append(data)

    def push_gap(self, nsamples: int) -> None:
        raise AssertionError("no gaps here")

    def close(self) -> None:
        self.closed = True


def test_aligned_frames_are_pushed_as_views_of_the_block() -> None:
    ring = RecordingRing(AudioFormat(16000, 1, SampleType.INT16), frame_samples=4)
    cutter = FrameCutter(ring)
    block = bytes(range(20))  # 10 samples: two whole frames and 2 samples pending
    cutter.write(block)
    assert len(ring.pushed) == 2
    for view in ring.pushed:
        assert isinstance(view, memoryview)
        assert view.obj is block  # a slice of the caller's block, not a copy
    assert cutter.pending_samples == 2


def test_partial_frames_reuse_one_preallocated_buffer() -> None:
    ring = RecordingRing(AudioFormat(16000, 1, SampleType.INT16), frame_samples=4)
    cutter = FrameCutter(ring)
    for _ in range(6):
        cutter.write(bytes(6))  # 3 samples: every frame straddles two blocks
    owners = {id(view.obj) for view in ring.pushed if isinstance(view, memoryview)}
    assert len(ring.pushed) == 4
    assert len(owners) == 1  # always the same bytearray


def test_accepts_numpy_blocks_like_sounddevice_delivers() -> None:
    fmt = AudioFormat(48000, 2, SampleType.INT16)
    ring = make_ring(fmt, 480, 10)
    cutter = FrameCutter(ring)
    block = np.arange(2 * 1000, dtype=np.int16).reshape(1000, 2)  # (frames, channels)
    cutter.write(block.data)
    cutter.close()
    frames = payloads(drain(ring))
    assert [len(p) // 4 for p in frames] == [480, 480, 40]
    assert b"".join(frames) == block.tobytes()


def test_tee_sees_every_block_in_order() -> None:
    fmt = AudioFormat(16000, 1, SampleType.INT16)
    copies: list[bytes] = []
    ring = make_ring(fmt, 160, 20)
    cutter = FrameCutter(ring, tee=lambda view: copies.append(bytes(view)))
    blocks = [bytes([i]) * (2 * n) for i, n in enumerate([100, 300, 7, 0, 160])]
    for block in blocks:
        cutter.write(block)
    assert copies == blocks


def test_rejects_partial_sample_frames_and_use_after_close() -> None:
    fmt = AudioFormat(16000, 2, SampleType.INT24)
    ring = make_ring(fmt, 160, 4)
    cutter = FrameCutter(ring)
    with pytest.raises(ValueError, match="whole"):
        cutter.write(bytes(7))
    cutter.write(bytes(12))
    cutter.close()
    cutter.close()  # idempotent
    assert ring.closed
    assert payloads(drain(ring)) == [bytes(12)]
    with pytest.raises(RingClosed):
        cutter.write(bytes(6))
    with pytest.raises(RingClosed):
        cutter.gap(10)


def test_close_still_closes_the_ring_when_the_last_push_fails() -> None:
    fmt = AudioFormat(16000, 1, SampleType.INT16)
    ring = RingBuffer(fmt, 4, 8 / 16000, OverflowPolicy.BLOCK)  # two slots
    cutter = FrameCutter(ring)
    cutter.write(bytes(2 * 8))  # fills both slots
    cutter.write(bytes(2))  # pending
    ring.abort()  # the uplink gave up: a blocked push raises instead of waiting
    with pytest.raises(RingClosed):
        cutter.close()
    assert ring.closed

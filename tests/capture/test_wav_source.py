"""WavFileSource: exact delivery through a real ring, pacing on a fake clock, clean endings."""

from __future__ import annotations

import struct
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from capture.source import SourceError
from capture.wav_source import WavFileSource, bundled_recording
from capture.wavfile import read_wav, read_wav_info
from tests.capture.wavgen import chunk, make_samples, raw_bytes, riff, split_chunks
from uplink.audio import AudioFormat, SampleType
from uplink.frames import FrameCutter
from uplink.ring import AudioRun, OverflowPolicy, RingBuffer

# -- the bundled recording ---------------------------------------------------------------------


def test_bundled_recording_is_small_plain_16k_mono_speech() -> None:
    path = bundled_recording()
    assert path.is_file()
    assert path.stat().st_size < 500_000
    info = read_wav_info(path)
    assert info.format == AudioFormat(16000, 1, SampleType.INT16)
    assert 8.0 <= info.duration_seconds <= 12.0
    header = path.read_bytes()[:44]
    assert struct.unpack_from("<H", header, 20)[0] == 1  # plain PCM, not EXTENSIBLE
    assert info.data_offset == 44
    samples, rate = sf.read(path, dtype="int16")
    assert rate == 16000
    assert read_wav(path)[1] == samples.tobytes()
    assert np.abs(samples).max() > 10_000  # real signal, not silence


def test_description() -> None:
    source = WavFileSource(bundled_recording())
    assert source.description == "file speech_16k_mono.wav (16000 Hz, 1 ch, int16, 11.3 s)"
    assert source.format == AudioFormat(16000, 1, SampleType.INT16)


# -- exact delivery at full speed through a blocking ring ------------------------------------


def consume(ring: RingBuffer, done: threading.Event, out: bytearray) -> None:
    """The uplink's role: read coalesced runs in order, check positions, ack them."""
    wake = threading.Event()
    ring.on_data = wake.set
    seq = 0
    next_sample = 0
    align = ring.format.block_align
    while True:
        wake.clear()
        run = ring.read(seq, 16, 1 << 20)
        if isinstance(run, AudioRun):
            assert run.sample_pos == next_sample
            out += run.payload
            seq += run.count
            next_sample += len(run.payload) // align
            ring.ack(seq, next_sample)
        elif run is not None:
            raise AssertionError(f"unexpected gap {run}")
        elif ring.closed and seq >= ring.tail_seq:
            break
        else:
            wake.wait(1.0)
    done.set()


def _float_6ch_with_list(tmp_path: Path) -> Path:
    samples = make_samples(11, 30_001, 6, SampleType.FLOAT32)
    path = tmp_path / "f32.wav"
    sf.write(path, samples, 48000, subtype="FLOAT", format="WAVEX")
    parts = [chunk(cid, body) for cid, body in split_chunks(path.read_bytes())]
    parts.insert(1, chunk(b"LIST", b"INFOISFT" + struct.pack("<I", 3) + b"ab\0"))
    path.write_bytes(riff(parts))
    return path


def _int24_stereo(tmp_path: Path) -> Path:
    samples = make_samples(5, 44_100 * 2 + 17, 2, SampleType.INT24)
    path = tmp_path / "i24.wav"
    sf.write(path, samples, 44100, subtype="PCM_24")
    assert read_wav(path)[1] == raw_bytes(samples, SampleType.INT24)
    return path


@pytest.mark.parametrize("which", ["bundled", "int24_stereo", "float32_6ch_list"])
def test_full_speed_into_blocking_ring_reproduces_the_file(tmp_path: Path, which: str) -> None:
    path = {
        "bundled": bundled_recording,
        "int24_stereo": lambda: _int24_stereo(tmp_path),
        "float32_6ch_list": lambda: _float_6ch_with_list(tmp_path),
    }[which]()
    source = WavFileSource(path, speed=0, block_seconds=0.037)
    frame_samples = source.format.samples_for(0.02)
    ring = RingBuffer(source.format, frame_samples, 0.25, OverflowPolicy.BLOCK)  # << file
    received = bytearray()
    done = threading.Event()
    consumer = threading.Thread(target=consume, args=(ring, done, received), daemon=True)
    consumer.start()

    source.start(FrameCutter(ring))
    assert source.wait(15)
    assert done.wait(15)

    assert source.error is None
    assert bytes(received) == read_wav(path)[1]
    assert source.samples_emitted == read_wav_info(path).n_sample_frames
    assert ring.stats().frames_dropped == 0


# -- pacing on a fake clock ----------------------------------------------------------------------


@dataclass
class FakeClock:
    now: float = 100.0
    sleeps: list[float] = field(default_factory=list)

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


@dataclass
class RecordingSink:
    """Notes the (fake) time of each write; can stall the clock or fail on a given write."""

    clock: FakeClock
    stall: dict[int, float] = field(default_factory=dict)  # write index -> seconds stuck
    fail_on: int | None = None
    writes: list[tuple[float, int]] = field(default_factory=list)
    data: bytearray = field(default_factory=bytearray)
    closed: int = 0

    def write(self, block: bytes | bytearray | memoryview) -> None:
        if self.fail_on == len(self.writes):
            raise ValueError("sink broke")
        self.writes.append((self.clock.now, len(block)))
        self.data += block
        self.clock.now += self.stall.get(len(self.writes) - 1, 0.0)

    def gap(self, nsamples: int) -> None:
        raise AssertionError("files have no gaps")

    def close(self) -> None:
        self.closed += 1


def _mono_8k(tmp_path: Path, frames: int) -> Path:
    path = tmp_path / "mono.wav"
    sf.write(path, make_samples(1, frames, 1, SampleType.INT16), 8000, subtype="PCM_16")
    return path


def _run(source: WavFileSource, sink: RecordingSink) -> None:
    source.start(sink)
    assert source.wait(10)
    assert sink.closed == 1


@pytest.mark.parametrize("speed", [1.0, 2.0, 0.5])
def test_each_block_is_written_when_it_has_been_recorded(tmp_path: Path, speed: float) -> None:
    clock = FakeClock()
    path = _mono_8k(tmp_path, 8500)  # ten 100 ms blocks and one of 62.5 ms
    source = WavFileSource(path, speed=speed, clock=clock, sleep=clock.sleep)
    sink = RecordingSink(clock)
    _run(source, sink)

    ends = [800 * k for k in range(1, 11)] + [8500]
    assert [n for _, n in sink.writes] == [1600] * 10 + [1000]
    assert [t for t, _ in sink.writes] == pytest.approx([100 + e / 8000 / speed for e in ends])
    assert clock.now == pytest.approx(100 + 8500 / 8000 / speed)
    assert bytes(sink.data) == read_wav(path)[1]
    assert source.error is None


def test_speed_zero_never_sleeps(tmp_path: Path) -> None:
    clock = FakeClock()
    source = WavFileSource(_mono_8k(tmp_path, 8500), speed=0, clock=clock, sleep=clock.sleep)
    sink = RecordingSink(clock)
    _run(source, sink)
    assert clock.sleeps == []
    assert len(sink.writes) == 11


def test_a_stalled_sink_is_caught_up_without_shifting_the_schedule(tmp_path: Path) -> None:
    clock = FakeClock(now=0.0)
    source = WavFileSource(_mono_8k(tmp_path, 8000), speed=1, clock=clock, sleep=clock.sleep)
    sink = RecordingSink(clock, stall={2: 0.25})  # the third write blocks for 250 ms
    _run(source, sink)

    times = [t for t, _ in sink.writes]
    # 0.4 and 0.5 are overdue at 0.55: written at once; then back on the original schedule.
    assert times == pytest.approx([0.1, 0.2, 0.3, 0.55, 0.55, 0.6, 0.7, 0.8, 0.9, 1.0])
    assert all(s > 0 for s in clock.sleeps)


def test_stop_during_pacing_ends_early_and_closes_the_sink(tmp_path: Path) -> None:
    clock = FakeClock()
    source: WavFileSource

    def sleep(seconds: float) -> None:
        clock.sleep(seconds)
        if len(clock.sleeps) == 3:
            source.stop()

    source = WavFileSource(_mono_8k(tmp_path, 8000), speed=1, clock=clock, sleep=sleep)
    sink = RecordingSink(clock)
    _run(source, sink)
    assert len(sink.writes) == 2
    assert source.samples_emitted == 1600
    assert source.error is None


def test_stop_interrupts_a_real_pacing_sleep() -> None:
    # At 1 % speed the first block is due in 10 s; stop() must not wait for it.
    source = WavFileSource(bundled_recording(), speed=0.01)
    sink = RecordingSink(FakeClock())
    source.start(sink)
    source.stop()
    assert source.wait(5)
    assert sink.writes == []
    assert sink.closed == 1


def test_an_aborted_ring_ends_the_thread_cleanly() -> None:
    source = WavFileSource(bundled_recording(), speed=0)
    ring = RingBuffer(source.format, 320, 0.2, OverflowPolicy.BLOCK)  # nobody drains it
    ring.abort()  # the uplink gave up: the push that would wait for space raises RingClosed
    source.start(FrameCutter(ring))
    assert source.wait(10)
    assert source.error is None
    assert ring.closed
    assert ring.tail_seq == ring.slots


def test_a_failing_sink_is_reported_through_error(tmp_path: Path) -> None:
    clock = FakeClock()
    source = WavFileSource(_mono_8k(tmp_path, 8000), speed=0, clock=clock, sleep=clock.sleep)
    sink = RecordingSink(clock, fail_on=3)
    _run(source, sink)
    assert isinstance(source.error, ValueError)
    assert len(sink.writes) == 3


def test_a_file_truncated_after_opening_is_reported(tmp_path: Path) -> None:
    path = _mono_8k(tmp_path, 8000)
    clock = FakeClock()
    source = WavFileSource(path, speed=0, clock=clock, sleep=clock.sleep)
    path.write_bytes(path.read_bytes()[:44 + 3000])
    sink = RecordingSink(clock)
    _run(source, sink)
    assert isinstance(source.error, SourceError)
    assert "shrank" in str(source.error)
    assert len(sink.data) == 1600  # the whole blocks that were still there


# -- construction ------------------------------------------------------------------------------


def test_unusable_files_raise_source_error_with_the_reason(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="cannot open"):
        WavFileSource(tmp_path / "missing.wav")
    path = tmp_path / "u8.wav"
    sf.write(path, np.zeros(100, np.int16), 8000, subtype="PCM_U8")
    with pytest.raises(SourceError, match="8-bit.*sox"):
        WavFileSource(path)


@pytest.mark.parametrize("speed", [-1.0, float("nan"), float("inf")])
def test_rejects_bad_speed(speed: float) -> None:
    with pytest.raises(ValueError, match="speed"):
        WavFileSource(bundled_recording(), speed=speed)


def test_lifecycle_edges(tmp_path: Path) -> None:
    clock = FakeClock()
    source = WavFileSource(_mono_8k(tmp_path, 100), speed=0, clock=clock, sleep=clock.sleep)
    assert source.wait(0) is False  # not started
    sink = RecordingSink(clock)
    _run(source, sink)
    with pytest.raises(RuntimeError, match="already started"):
        source.start(sink)
    assert source.wait(0) is True


@pytest.mark.parametrize("speed", [0.0, 1.0])
def test_max_samples_stops_after_that_much_audio_at_any_speed(tmp_path: Path, speed: float) -> None:
    """`--duration` for a file: audio seconds, so `--speed 0` sends exactly that much."""
    clock = FakeClock()
    path = _mono_8k(tmp_path, 8500)
    source = WavFileSource(path, speed=speed, clock=clock, sleep=clock.sleep, max_samples=1234)
    sink = RecordingSink(clock)
    _run(source, sink)
    assert bytes(sink.data) == read_wav(path)[1][: 1234 * 2]
    assert source.samples_emitted == 1234
    assert source.error is None


def test_max_samples_beyond_the_file_sends_the_file(tmp_path: Path) -> None:
    clock = FakeClock()
    path = _mono_8k(tmp_path, 800)
    source = WavFileSource(path, speed=0, clock=clock, sleep=clock.sleep, max_samples=10**9)
    sink = RecordingSink(clock)
    _run(source, sink)
    assert bytes(sink.data) == read_wav(path)[1]
    with pytest.raises(ValueError, match="max_samples"):
        WavFileSource(path, max_samples=-1)

"""TeeSink: an exact copy off the audio path, readable at every moment (crash safety)."""

from __future__ import annotations

import time
import wave
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf

from capture.tee import TeeSink
from capture.wavfile import read_wav
from tests.capture.wavgen import make_samples, raw_bytes
from uplink.audio import AudioFormat, SampleType

MONO16 = AudioFormat(8000, 1, SampleType.INT16)


@dataclass
class Inner:
    data: bytearray = field(default_factory=bytearray)
    gaps: list[int] = field(default_factory=list)
    closed: int = 0

    def write(self, block: bytes | bytearray | memoryview) -> None:
        self.data += block

    def gap(self, nsamples: int) -> None:
        self.gaps.append(nsamples)

    def close(self) -> None:
        self.closed += 1


def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    """The writer thread is asynchronous by design: wait for it, with a deadline."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the tee writer did not catch up"
        time.sleep(0.005)


def test_the_header_covers_what_was_written_while_the_file_is_still_open(tmp_path: Path) -> None:
    samples = make_samples(1, 3000, 1, SampleType.INT16)
    pcm = raw_bytes(samples, SampleType.INT16)
    path = tmp_path / "tee.wav"
    inner = Inner()
    tee = TeeSink(inner, path, MONO16, header_interval=0.01)  # patch about every block
    tee.write(pcm[:2000])
    tee.gap(100)
    tee.write(pcm[2000:])
    wait_until(lambda: tee.frames_in_header == 3100)
    # still open, never closed: what a reader finds after a SIGKILL right now
    got, rate = sf.read(path, dtype="int16")
    assert rate == 8000
    assert got.tobytes() == pcm[:2000] + bytes(200) + pcm[2000:]
    with wave.open(str(path)) as w:
        assert w.getnframes() == 3100
    tee.close()
    assert tee.wait(5)
    assert inner.closed == 1 and inner.gaps == [100] and bytes(inner.data) == pcm
    assert read_wav(path)[1] == pcm[:2000] + bytes(200) + pcm[2000:]
    assert tee.error is None


def test_headers_are_patched_at_most_once_per_interval(tmp_path: Path) -> None:
    now = [0.0]
    path = tmp_path / "tee.wav"
    tee = TeeSink(Inner(), path, MONO16, header_interval=1.0, clock=lambda: now[0])
    tee.write(bytes(400))
    wait_until(lambda: tee.bytes_written == 400)
    assert tee.frames_in_header == 0  # within the interval: the header is not touched
    with wave.open(str(path)) as w:
        assert w.getnframes() == 0  # valid, just behind
    now[0] = 1.0
    tee.write(bytes(200))
    wait_until(lambda: tee.frames_in_header == 300)
    tee.close()
    assert tee.wait(5)
    assert tee.frames_in_header == 300


def test_a_paused_source_still_gets_its_header_patched(tmp_path: Path) -> None:
    """No new block for a while (a stalled device): the writer wakes on its own."""
    path = tmp_path / "tee.wav"
    tee = TeeSink(Inner(), path, MONO16, header_interval=0.05)
    tee.write(bytes(1000))
    wait_until(lambda: tee.frames_in_header == 500)
    tee.close()
    assert tee.wait(5)


def test_odd_length_data_gets_a_pad_byte_and_an_exact_header(tmp_path: Path) -> None:
    fmt = AudioFormat(8000, 1, SampleType.INT24)
    samples = make_samples(2, 5, 1, SampleType.INT24)
    pcm = raw_bytes(samples, SampleType.INT24)  # 15 bytes
    path = tmp_path / "tee.wav"
    tee = TeeSink(Inner(), path, fmt)
    tee.write(pcm)
    tee.close()
    assert tee.wait(5)
    assert path.stat().st_size % 2 == 0
    assert read_wav(path)[1] == pcm
    got, _ = sf.read(path, dtype="int32")
    assert np.array_equal(got, samples[:, 0])

"""Audio, configuration and small async helpers shared by the benchmarks."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from capture.wavfile import read_wav
from uplink.audio import AudioFormat, SampleType
from uplink.config import UplinkConfig, build_config
from uplink.ring import OverflowPolicy, RingBuffer

SPEECH = AudioFormat(16_000, 1, SampleType.INT16)  # the stream: 16 kHz mono int16
STUDIO = AudioFormat(48_000, 2, SampleType.FLOAT32)  # footprint: 48 kHz stereo float32
FRAME_MS = 20.0
FRAME_PERIOD = FRAME_MS / 1000


def frame_samples(fmt: AudioFormat, frame_ms: float = FRAME_MS) -> int:
    return round(fmt.sample_rate * frame_ms / 1000)


def pcm(fmt: AudioFormat, seconds: float, seed: int = 1) -> bytes:
    """Deterministic noise-like audio (PCM does not compress; nothing may shortcut it)."""
    n = round(seconds * fmt.sample_rate) * fmt.channels
    rng = np.random.default_rng(seed)
    if fmt.sample_type is SampleType.FLOAT32:
        return rng.uniform(-0.5, 0.5, n).astype("<f4").tobytes()
    if fmt.sample_type is SampleType.INT16:
        return rng.integers(-12_000, 12_000, n, dtype=np.int16).astype("<i2").tobytes()
    raise ValueError(f"benchmarks generate int16 or float32, not {fmt.sample_type}")


def uplink_config(**overrides: object) -> UplinkConfig:
    """The shipped `live` profile, untouched by ECHOPANEL_* variables of the caller's shell."""
    return build_config("live", {k: v for k, v in overrides.items()}, environ={})


def preloaded_ring(fmt: AudioFormat, payload: bytes, capacity_seconds: float) -> RingBuffer:
    """A ring holding `payload` as consecutive full frames (the backlog of an outage)."""
    fs = frame_samples(fmt)
    ring = RingBuffer(fmt, fs, capacity_seconds, OverflowPolicy.BLOCK)
    step = fs * fmt.block_align
    view = memoryview(payload)
    for off in range(0, len(payload), step):
        ring.push(view[off : off + step])
    return ring


def stored_audio(data_dir: Path, stream_id: str) -> bytes | None:
    """The WAV data the ingest server finalized for a stream, or None."""
    path = data_dir / "streams" / stream_id / "audio.wav"
    if not path.exists():
        return None
    return read_wav(path)[1]


def sleep_until(deadline: float) -> None:
    """Block the calling thread until perf_counter() reaches `deadline`."""
    delay = deadline - time.perf_counter()
    if delay > 0:
        time.sleep(delay)

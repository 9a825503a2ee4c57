"""Capture what is played into the virtual mic and find it again, sample-accurately aligned."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from capture.microphone import MicrophoneSource
from tools.virtual_mic import ALSA_DEVICE, VirtualMic, VirtualMicError, rescan_portaudio
from uplink.audio import SampleType

from .conftest import RecordingSink
from .signals import best_alignment, chirp, decode, write_wav

#: Normalized cross-correlation the captured copy must reach (1.0 = exact scaled copy).
#: With the 48 kHz sink PulseAudio resamples 16 kHz -> 48 kHz -> 16 kHz, and the capture
#: lands on one of three 48 kHz phases: measured 1.000 or 0.953 (a 1/3-sample delay costs
#: cos(2*pi*f/48000) at the chirp's 4 kHz top). No audio is lost either way.
MIN_CORRELATION = 0.9
TAIL_SECONDS = 0.4  # capture this much after paplay has drained (capture latency ~0.1 s)


@pytest.mark.parametrize(
    ("sample_type", "rate", "channels"),
    [
        (SampleType.INT16, 16_000, 1),
        (SampleType.INT24, 16_000, 1),
        (SampleType.INT32, 16_000, 1),
        (SampleType.FLOAT32, 16_000, 1),
        (SampleType.INT16, 48_000, 2),
    ],
    ids=lambda v: str(v),
)
def test_captures_the_played_signal(
    mic: VirtualMic, tmp_path: Path, sample_type: SampleType, rate: int, channels: int
) -> None:
    ref = chirp(rate, seconds=1.0)
    wav = write_wav(tmp_path / "chirp.wav", ref, rate)
    events: list[str] = []
    src = MicrophoneSource(
        device=ALSA_DEVICE,
        sample_rate=rate,
        channels=channels,
        sample_type=sample_type,
        on_event=events.append,
    )
    assert src.blocksize == rate // 50  # 20 ms blocks by default
    sink = RecordingSink(src.format.block_align)
    src.start(sink)
    try:
        sink.wait_samples(rate // 10, timeout=5)  # capture is running
        mic.play(wav, wait=True, timeout=10)
        played_until = sink.samples
        sink.wait_samples(played_until + int(TAIL_SECONDS * rate), timeout=5)
    finally:
        src.stop()
    assert sink.closed and not sink.errors
    assert sink.gaps() == [] and events == []
    stats = src.stats()
    assert stats.samples_captured * src.format.block_align == len(sink.audio)
    assert stats.callbacks > 0 and stats.overflows == 0 and stats.device_errors == 0

    captured = decode(bytes(sink.audio), sample_type, channels)
    for ch in range(channels):  # PulseAudio copies the mono sink to every channel
        lag, corr = best_alignment(ref, captured[:, ch])
        assert corr > MIN_CORRELATION, f"channel {ch}: correlation {corr:.4f} at lag {lag}"
        seg = captured[lag : lag + len(ref), ch]
        gain = float(np.sqrt(np.mean(seg**2)) / np.sqrt(np.mean(ref**2)))
        assert 0.8 < gain < 1.25, f"channel {ch}: level changed by x{gain:.3f}"


def test_bit_exact_when_no_resampling(virtual_mic: VirtualMic, tmp_path: Path) -> None:
    """Sink, source and capture all at 16 kHz int16 mono: the mic path changes no sample."""
    rate = 16_000
    wav = write_wav(tmp_path / "chirp.wav", chirp(rate, seconds=1.0), rate)
    played = sf.read(wav, dtype="int16")[0]
    try:
        with VirtualMic(rate=rate) as vm16:
            vm16.activate()  # this process now talks to the 16 kHz server
            src = MicrophoneSource(device=ALSA_DEVICE, sample_rate=rate)
            sink = RecordingSink(2)
            src.start(sink)
            try:
                sink.wait_samples(rate // 10, timeout=5)
                vm16.play(wav, wait=True, timeout=10)
                sink.wait_samples(sink.samples + int(TAIL_SECONDS * rate), timeout=5)
            finally:
                src.stop()
    except VirtualMicError as e:
        pytest.fail(f"second virtual mic failed: {e}")
    finally:
        rescan_portaudio()  # back to the session's server (its env was restored)
    captured = np.frombuffer(bytes(sink.audio), "<i2")
    lag, corr = best_alignment(played.astype(np.float64), captured.astype(np.float64))
    assert corr > 0.999, corr
    assert np.array_equal(captured[lag : lag + len(played)], played)

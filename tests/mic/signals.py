"""Test signals and the alignment measure used by the capture tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf

from uplink.audio import SampleType


def chirp(rate: int, seconds: float = 1.0, f0: float = 200.0, f1: float = 4000.0) -> np.ndarray:
    """A linear chirp at half scale with 10 ms fades (deterministic; sharp autocorrelation)."""
    n = int(rate * seconds)
    t = np.arange(n) / rate
    x = 0.5 * np.sin(2 * np.pi * (f0 * t + (f1 - f0) / (2 * seconds) * t**2))
    fade = int(0.01 * rate)
    ramp = np.linspace(0.0, 1.0, fade)
    x[:fade] *= ramp
    x[-fade:] *= ramp[::-1]
    return x


def write_wav(path: Path, x: np.ndarray, rate: int) -> Path:
    sf.write(path, x, rate, subtype="PCM_16")
    return path


def decode(raw: bytes, sample_type: SampleType, channels: int) -> np.ndarray:
    """Interleaved little-endian PCM -> float64 array (frames, channels) in [-1, 1)."""
    if sample_type is SampleType.INT16:
        x = np.frombuffer(raw, "<i2").astype(np.float64) / 2**15
    elif sample_type is SampleType.INT32:
        x = np.frombuffer(raw, "<i4").astype(np.float64) / 2**31
    elif sample_type is SampleType.FLOAT32:
        x = np.frombuffer(raw, "<f4").astype(np.float64)
    else:  # packed 3-byte little-endian
        b = np.frombuffer(raw, np.uint8).reshape(-1, 3).astype(np.int32)
        v = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)
        v = np.where(v & 0x800000, v - (1 << 24), v)
        x = v.astype(np.float64) / 2**23
    return x.reshape(-1, channels)


def best_alignment(ref: np.ndarray, captured: np.ndarray) -> tuple[int, float]:
    """(lag, normalized cross-correlation) of `ref` inside `captured`, best lag.

    At each lag k: sum(captured[k:k+m] * ref) / (|ref| * |captured[k:k+m]|), so 1.0 means
    the captured window is an exact scaled copy of the reference.
    """
    m, n = len(ref), len(captured)
    if n < m:
        raise AssertionError(f"captured {n} samples, fewer than the {m} played")
    nfft = 1 << int(np.ceil(np.log2(n + m)))
    num = np.fft.irfft(np.fft.rfft(captured, nfft) * np.conj(np.fft.rfft(ref, nfft)), nfft)
    num = num[: n - m + 1]
    cs = np.concatenate([[0.0], np.cumsum(captured**2)])
    window_energy = np.maximum(cs[m:] - cs[:-m], 0.0)
    norm = num / (np.linalg.norm(ref) * np.sqrt(window_energy) + 1e-12)
    k = int(np.argmax(norm))
    return k, float(norm[k])

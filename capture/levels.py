"""Input level of a block of PCM, in dBFS, for the status meter (never on the audio path)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from uplink.audio import AudioFormat, SampleType

SILENCE_DBFS = -96.0
_FULL_SCALE = {
    SampleType.INT16: 32768.0,
    SampleType.INT24: 8388608.0,
    SampleType.INT32: 2147483648.0,
    SampleType.FLOAT32: 1.0,
}


@dataclass(frozen=True, slots=True)
class Level:
    peak_dbfs: float
    rms_dbfs: float
    clipped: bool  # a sample at (or beyond) full scale


def _to_float(data: bytes, fmt: AudioFormat) -> np.ndarray:
    st = fmt.sample_type
    if st is SampleType.INT16:
        return np.frombuffer(data, "<i2").astype(np.float64)
    if st is SampleType.INT32:
        return np.frombuffer(data, "<i4").astype(np.float64)
    if st is SampleType.FLOAT32:
        return np.frombuffer(data, "<f4").astype(np.float64)
    raw = np.frombuffer(data, np.uint8).reshape(-1, 3).astype(np.int32)
    ints = raw[:, 0] | (raw[:, 1] << 8) | (raw[:, 2] << 16)
    return np.where(ints & 0x800000, ints - 0x1000000, ints).astype(np.float64)


def _db(x: float) -> float:
    return max(SILENCE_DBFS, 20.0 * math.log10(x)) if x > 0 else SILENCE_DBFS


def measure(data: bytes, fmt: AudioFormat) -> Level:
    usable = len(data) - len(data) % fmt.block_align
    if usable <= 0:
        return Level(SILENCE_DBFS, SILENCE_DBFS, False)
    full = _FULL_SCALE[fmt.sample_type]
    x = _to_float(data[:usable], fmt) / full
    if not np.all(np.isfinite(x)):
        return Level(0.0, 0.0, True)
    peak = float(np.max(np.abs(x)))
    rms = float(np.sqrt(np.mean(x * x)))
    clip_at = 1.0 if fmt.sample_type is SampleType.FLOAT32 else (full - 1) / full
    return Level(_db(peak), _db(rms), peak >= clip_at)

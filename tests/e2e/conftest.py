"""End-to-end fixtures: the real ingest server on 127.0.0.1 with a temporary data dir."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf

from tests.support.server import server as server  # the one server fixture (tests/support)


def write_clip(path: Path, rate: int, channels: int, subtype: str, seconds: float, seed: int = 0) -> Path:
    """A deterministic test clip written by libsndfile (an implementation independent of ours)."""
    rng = np.random.default_rng(seed)
    n = int(rate * seconds)
    t = np.arange(n) / rate
    tones = np.stack([0.4 * np.sin(2 * np.pi * (220 + 110 * c) * t) for c in range(channels)], axis=1)
    signal = np.clip(tones + 0.05 * rng.standard_normal((n, channels)), -1.0, 0.999)
    sf.write(path, signal.astype(np.float32), rate, subtype=subtype)
    return path


def stored_equals_source(stored: Path, source: Path) -> None:
    """Compare sample arrays exactly (not just lengths), read by libsndfile."""
    dtype = "float32" if sf.info(source).subtype == "FLOAT" else "int32"
    got, got_rate = sf.read(stored, dtype=dtype, always_2d=True)
    want, want_rate = sf.read(source, dtype=dtype, always_2d=True)
    assert got_rate == want_rate
    assert sf.info(stored).subtype == sf.info(source).subtype
    assert got.shape == want.shape
    assert np.array_equal(got, want)

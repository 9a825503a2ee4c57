"""Deterministic test audio, written and decoded with soundfile (libsndfile) as an oracle.

The capture code never converts audio, so every check compares raw bytes; libsndfile is an
independent implementation of the WAV format on the other side of each comparison.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import soundfile as sf

from uplink.audio import SampleType

SUBTYPE = {
    SampleType.INT16: "PCM_16",
    SampleType.INT24: "PCM_24",
    SampleType.INT32: "PCM_32",
    SampleType.FLOAT32: "FLOAT",
}

# dtype soundfile decodes each sample type to (int24 comes back left-justified in int32)
SF_DTYPE = {
    SampleType.INT16: "int16",
    SampleType.INT24: "int32",
    SampleType.INT32: "int32",
    SampleType.FLOAT32: "float32",
}


def make_samples(seed: int, frames: int, channels: int, sample_type: SampleType) -> np.ndarray:
    """Full-scale noise shaped (frames, channels) that libsndfile stores without rounding."""
    rng = np.random.default_rng(seed)
    shape = (frames, channels)
    if sample_type is SampleType.INT16:
        return rng.integers(-(2**15), 2**15, shape, dtype=np.int16)
    if sample_type is SampleType.INT24:  # int32 with the low byte clear: exactly 24 bits
        return (rng.integers(-(2**23), 2**23, shape, dtype=np.int32) << 8).astype(np.int32)
    if sample_type is SampleType.INT32:
        return rng.integers(-(2**31), 2**31, shape, dtype=np.int32)
    return rng.uniform(-1.0, 1.0, shape).astype(np.float32)


def raw_bytes(samples: np.ndarray, sample_type: SampleType) -> bytes:
    """The little-endian interleaved bytes a WAV data chunk holds for `samples`."""
    if sample_type is SampleType.INT24:
        as_bytes = samples.astype("<i4").reshape(-1, 1).view(np.uint8)
        return as_bytes[:, 1:].tobytes()  # drop the clear low byte
    return samples.astype(samples.dtype.newbyteorder("<")).tobytes()


def decode_raw(data: bytes, channels: int, sample_type: SampleType) -> np.ndarray:
    """Raw WAV bytes as the array soundfile.read(dtype=SF_DTYPE[...]) would return."""
    if sample_type is SampleType.INT24:
        b = np.frombuffer(data, np.uint8).reshape(-1, 3).astype(np.uint32)
        joined = (b[:, 0] << 8) | (b[:, 1] << 16) | (b[:, 2] << 24)
        return joined.view(np.int32).reshape(-1, channels)
    dtype = np.dtype(SF_DTYPE[sample_type]).newbyteorder("<")
    return np.frombuffer(data, dtype).reshape(-1, channels)


def write_with_soundfile(
    path: Path,
    samples: np.ndarray,
    rate: int,
    sample_type: SampleType,
    container: str = "WAV",
) -> Path:
    sf.write(path, samples, rate, subtype=SUBTYPE[sample_type], format=container)
    return path


def chunk(chunk_id: bytes, body: bytes) -> bytes:
    """One RIFF chunk, padded to even length."""
    return chunk_id + struct.pack("<I", len(body)) + body + b"\0" * (len(body) & 1)


def split_chunks(blob: bytes) -> list[tuple[bytes, bytes]]:
    """(id, body) of every chunk in a well-formed RIFF/WAVE file."""
    out = []
    pos = 12
    while pos + 8 <= len(blob):
        cid, size = struct.unpack_from("<4sI", blob, pos)
        out.append((cid, blob[pos + 8 : pos + 8 + size]))
        pos += 8 + size + (size & 1)
    return out


def riff(chunks: list[bytes]) -> bytes:
    body = b"WAVE" + b"".join(chunks)
    return b"RIFF" + struct.pack("<I", len(body)) + body

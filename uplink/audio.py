"""Audio format description shared by capture, uplink and the ingest server.

This module and uplink/wire.py are the protocol contract of both ends: the ingest server
may import them (and nothing else from uplink/ or capture/). `wav_header` lives here so the
server's WAV export and the capture's WAV writer produce the same header.

A *sample frame* (or just "sample" in sample positions) is one sample per channel; sample
positions on the stream timeline count sample frames, never bytes (docs/protocol.md §4).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

MIN_SAMPLE_RATE = 8_000
MAX_SAMPLE_RATE = 192_000
MAX_CHANNELS = 8


class SampleType(StrEnum):
    """Sample encodings carried unchanged end to end (little-endian, interleaved)."""

    INT16 = "int16"
    INT24 = "int24"
    INT32 = "int32"
    FLOAT32 = "float32"

    @property
    def bytes_per_sample(self) -> int:
        return _BYTES[self]


_BYTES = {
    SampleType.INT16: 2,
    SampleType.INT24: 3,
    SampleType.INT32: 4,
    SampleType.FLOAT32: 4,
}


class AudioFormatError(ValueError):
    """The audio format is outside what protocol v1 supports."""


@dataclass(frozen=True, slots=True)
class AudioFormat:
    sample_rate: int
    channels: int
    sample_type: SampleType

    def __post_init__(self) -> None:
        if not isinstance(self.sample_rate, int) or not (
            MIN_SAMPLE_RATE <= self.sample_rate <= MAX_SAMPLE_RATE
        ):
            raise AudioFormatError(
                f"sample rate {self.sample_rate!r} outside {MIN_SAMPLE_RATE}..{MAX_SAMPLE_RATE} Hz"
            )
        if not isinstance(self.channels, int) or not (1 <= self.channels <= MAX_CHANNELS):
            raise AudioFormatError(f"channels {self.channels!r} outside 1..{MAX_CHANNELS}")
        if not isinstance(self.sample_type, SampleType):
            try:
                object.__setattr__(self, "sample_type", SampleType(self.sample_type))
            except ValueError as e:
                raise AudioFormatError(f"unsupported sample type {self.sample_type!r}") from e

    @property
    def block_align(self) -> int:
        """Bytes per sample frame (all channels)."""
        return self.channels * self.sample_type.bytes_per_sample

    @property
    def bytes_per_second(self) -> int:
        return self.sample_rate * self.block_align

    def samples_for(self, seconds: float) -> int:
        return round(seconds * self.sample_rate)

    def to_json(self) -> dict[str, Any]:
        return {
            "sample_rate": self.sample_rate,
            "channels": self.channels,
            "sample_type": str(self.sample_type),
        }

    @classmethod
    def from_json(cls, obj: Any) -> AudioFormat:
        if not isinstance(obj, dict):
            raise AudioFormatError("format must be an object")
        try:
            return cls(
                sample_rate=obj["sample_rate"],
                channels=obj["channels"],
                sample_type=SampleType(obj["sample_type"]),
            )
        except KeyError as e:
            raise AudioFormatError(f"format lacks {e.args[0]!r}") from e
        except (ValueError, TypeError) as e:
            raise AudioFormatError(str(e)) from e

    def __str__(self) -> str:
        return f"{self.sample_rate} Hz, {self.channels} ch, {self.sample_type}"


# -- WAV header (shared by capture/wavfile.py and ingest_server/storage/wav.py) ---------

WAVE_FORMAT_PCM = 0x0001
WAVE_FORMAT_IEEE_FLOAT = 0x0003
WAVE_FORMAT_EXTENSIBLE = 0xFFFE
WAVE_GUID_TAIL = b"\x00\x00\x00\x00\x10\x00\x80\x00\x00\xaa\x00\x38\x9b\x71"


def wav_header(fmt: AudioFormat, n_sample_frames: int) -> bytes:
    """Header for a standard WAV holding `n_sample_frames` of `fmt`, data chunk last.

    int16 mono/stereo uses plain PCM; float32 uses IEEE float (with a `fact` chunk); int24,
    int32 and more than two channels use WAVE_FORMAT_EXTENSIBLE, as the format requires.
    """
    bits = fmt.sample_type.bytes_per_sample * 8
    data_bytes = n_sample_frames * fmt.block_align
    is_float = fmt.sample_type is SampleType.FLOAT32
    extensible = not is_float and (bits > 16 or fmt.channels > 2)
    if is_float and fmt.channels > 2:
        extensible = True
    base = struct.pack(
        "<HHIIHH",
        WAVE_FORMAT_EXTENSIBLE
        if extensible
        else (WAVE_FORMAT_IEEE_FLOAT if is_float else WAVE_FORMAT_PCM),
        fmt.channels,
        fmt.sample_rate,
        fmt.bytes_per_second,
        fmt.block_align,
        bits,
    )
    if extensible:
        sub = WAVE_FORMAT_IEEE_FLOAT if is_float else WAVE_FORMAT_PCM
        mask = (1 << fmt.channels) - 1 if fmt.channels <= 18 else 0
        fmt_body = base + struct.pack("<HHI", 22, bits, mask) + struct.pack("<H", sub) + WAVE_GUID_TAIL
    elif is_float:
        fmt_body = base + struct.pack("<H", 0)
    else:
        fmt_body = base
    chunks = b"fmt " + struct.pack("<I", len(fmt_body)) + fmt_body
    if is_float or extensible:
        chunks += b"fact" + struct.pack("<II", 4, n_sample_frames & 0xFFFFFFFF)
    chunks += b"data" + struct.pack("<I", min(data_bytes, 0xFFFFFFFF))
    riff_size = 4 + len(chunks) + data_bytes + (data_bytes & 1)
    return b"RIFF" + struct.pack("<I", min(riff_size, 0xFFFFFFFF)) + b"WAVE" + chunks

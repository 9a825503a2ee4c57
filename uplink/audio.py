"""Audio format description shared by capture, uplink and the ingest server.

A *sample frame* (or just "sample" in sample positions) is one sample per channel; sample
positions on the stream timeline count sample frames, never bytes (docs/protocol.md §4).
"""

from __future__ import annotations

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

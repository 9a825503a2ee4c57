"""The audio source interface: anything that produces PCM blocks into a FrameSink.

A source runs on its own thread (a file reader) or in the PortAudio callback (a microphone).
It only ever calls the sink, which cuts frames and copies them into the ring; it never
touches the network or the disk on the audio path (docs/protocol.md §8, README guarantees).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Protocol

from uplink.audio import AudioFormat


class FrameSink(Protocol):
    """Where sources deliver audio. Implemented by uplink.frames.FrameCutter."""

    def write(self, block: bytes | bytearray | memoryview) -> None:
        """Whole sample frames, any length."""

    def gap(self, nsamples: int) -> None:
        """`nsamples` sample frames were lost at the source (overflow, device loss)."""

    def close(self) -> None:
        """End of input."""


class SourceError(Exception):
    """A source cannot be opened or read; the message says what to do about it."""


class Source(ABC):
    """A producer of audio in one fixed AudioFormat."""

    format: AudioFormat
    description: str

    @abstractmethod
    def start(self, sink: FrameSink) -> None:
        """Begin producing into `sink` (returns at once; production runs in the background)."""

    @abstractmethod
    def stop(self) -> None:
        """Stop producing as soon as possible; the sink is closed either way."""

    @abstractmethod
    def wait(self, timeout: float | None = None) -> bool:
        """Block until the source finished (end of file, or stopped); True if it did."""

    @property
    def error(self) -> BaseException | None:
        """The exception that ended production, if any."""
        return None

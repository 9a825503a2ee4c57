"""Bounded, preallocated ring of audio frames between a capture thread and the uplink.

Memory arithmetic (the whole cost, allocated once in ``__init__``)::

    slots      = ceil(capacity_seconds * sample_rate / frame_samples)
    audio      = slots * frame_samples * block_align          bytes
    metadata   = slots * 17                                   bytes (2 x int64 + 1 kind byte)

    16 kHz mono int16, 20 ms frames, 60 s   ->  3,000 slots, 1.92 MB audio + 51 KB metadata
    48 kHz stereo float32, 20 ms, 60 s      ->  3,000 slots, 23.0 MB audio + 51 KB metadata

The ring holds every item from the oldest unacked (``head_seq``) to the newest
(``tail_seq - 1``); acks free slots. Each slot has one seq. When the ring is full:

- ``OverflowPolicy.BLOCK`` (sources that can wait, e.g. a file read at full speed): the
  producer waits until an ack frees a slot.
- ``OverflowPolicy.DROP_OLDEST`` (live sources: a microphone cannot wait): the oldest
  unacked slot is discarded and folded into a single *front gap*, which the uplink sends as
  a GAP item before anything newer (docs/protocol.md §8). Drops are counted.

Thread safety: one producer thread (or the PortAudio callback) and one consumer (the asyncio
uplink). A single lock guards the indices; it is held only for O(1) bookkeeping and one
``memcpy`` of at most one frame (producer) or one coalesced run (consumer) — never across
I/O — so the audio callback never waits on the network or the disk.
"""

from __future__ import annotations

import math
import threading
from array import array
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

from uplink.audio import AudioFormat

KIND_AUDIO = 0
KIND_GAP = 1


class OverflowPolicy(Enum):
    BLOCK = "block"
    DROP_OLDEST = "drop-oldest"


class RingClosed(Exception):
    """Pushing after close(), or a blocked push interrupted by abort()."""


@dataclass(frozen=True, slots=True)
class AudioRun:
    """`count` consecutive frames of equal length, contiguous on the timeline."""

    seq: int
    count: int
    sample_pos: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class GapRun:
    """Seqs [seq, seq+count) carry no audio; samples [sample_pos, end_sample) are lost."""

    seq: int
    count: int
    sample_pos: int
    end_sample: int


Run = AudioRun | GapRun


@dataclass(frozen=True, slots=True)
class RingStats:
    head_seq: int
    tail_seq: int
    held_frames: int
    capacity_frames: int
    buffered_seconds: float
    frames_dropped: int
    samples_dropped: int
    closed: bool


class RingBuffer:
    def __init__(
        self,
        fmt: AudioFormat,
        frame_samples: int,
        capacity_seconds: float,
        overflow: OverflowPolicy = OverflowPolicy.DROP_OLDEST,
    ) -> None:
        if frame_samples <= 0:
            raise ValueError("frame_samples must be positive")
        if capacity_seconds <= 0:
            raise ValueError("capacity_seconds must be positive")
        self.format = fmt
        self.frame_samples = frame_samples
        self.frame_bytes = frame_samples * fmt.block_align
        self.overflow = overflow
        self.slots = max(2, math.ceil(capacity_seconds * fmt.sample_rate / frame_samples))
        self._buf = bytearray(self.slots * self.frame_bytes)
        self._view = memoryview(self._buf)
        self._nsamples = array("q", bytes(8 * self.slots))
        self._sample_pos = array("q", bytes(8 * self.slots))
        self._kind = bytearray(self.slots)
        self._lock = threading.Lock()
        self._space = threading.Condition(self._lock)
        self._head = 0  # oldest seq held (== acked next_seq unless a front gap is pending)
        self._tail = 0  # next seq to assign
        self._next_sample = 0
        self._gap_first: int | None = None  # front gap covers [gap_first, head)
        self._gap_first_sample = 0
        self._closed = False
        self._aborted = False
        self.frames_dropped = 0
        self.samples_dropped = 0
        self.on_data: Callable[[], None] | None = None

    # -- capacity ------------------------------------------------------------------------

    @property
    def memory_bytes(self) -> int:
        return len(self._buf) + 17 * self.slots

    @property
    def capacity_seconds(self) -> float:
        return self.slots * self.frame_samples / self.format.sample_rate

    # -- producer side -------------------------------------------------------------------

    def push(self, data: bytes | bytearray | memoryview) -> None:
        """Append one frame (whole sample frames, at most frame_samples of them)."""
        n = len(data)
        if n == 0 or n > self.frame_bytes or n % self.format.block_align:
            raise ValueError(f"frame of {n} bytes is not 1..{self.frame_samples} sample frames")
        with self._lock:
            slot = self._reserve_slot()
            start = slot * self.frame_bytes
            self._view[start : start + n] = data
            self._commit_slot(slot, KIND_AUDIO, n // self.format.block_align)
        if self.on_data is not None:
            self.on_data()

    def push_gap(self, nsamples: int) -> None:
        """Record that `nsamples` sample frames were lost at the source (e.g. input overflow)."""
        if nsamples <= 0:
            return
        with self._lock:
            slot = self._reserve_slot()
            self._commit_slot(slot, KIND_GAP, nsamples)
        if self.on_data is not None:
            self.on_data()

    def close(self) -> None:
        """No more input: the uplink ends the stream once everything is acked."""
        with self._lock:
            self._closed = True
            self._space.notify_all()
        if self.on_data is not None:
            self.on_data()

    def abort(self) -> None:
        """Wake a producer blocked on a full ring (the uplink failed or was cancelled)."""
        with self._lock:
            self._aborted = True
            self._space.notify_all()

    def _reserve_slot(self) -> int:
        if self._closed:
            raise RingClosed("ring is closed")
        while self._tail - self._head >= self.slots:
            if self.overflow is OverflowPolicy.BLOCK:
                if self._aborted:
                    raise RingClosed("uplink stopped while the producer waited for space")
                self._space.wait()
            else:
                self._drop_oldest()
        return self._tail % self.slots

    def _drop_oldest(self) -> None:
        slot = self._head % self.slots
        if self._gap_first is None:
            self._gap_first = self._head
            self._gap_first_sample = self._sample_pos[slot]
        if self._kind[slot] == KIND_AUDIO:
            self.frames_dropped += 1
            self.samples_dropped += self._nsamples[slot]
        self._head += 1

    def _commit_slot(self, slot: int, kind: int, nsamples: int) -> None:
        self._kind[slot] = kind
        self._nsamples[slot] = nsamples
        self._sample_pos[slot] = self._next_sample
        self._next_sample += nsamples
        self._tail += 1

    # -- consumer side -------------------------------------------------------------------

    @property
    def tail_seq(self) -> int:
        return self._tail

    @property
    def next_sample(self) -> int:
        return self._next_sample

    @property
    def closed(self) -> bool:
        return self._closed

    def first_seq(self) -> int:
        """The oldest seq the uplink still has to get acked (a pending gap counts)."""
        with self._lock:
            return self._gap_first if self._gap_first is not None else self._head

    def ack(self, next_seq: int, next_sample: int) -> None:
        """The server holds everything below next_seq durably: free those slots.

        If the server turns out to hold part of a pending front gap (frames that were in
        flight when they were dropped), the gap shrinks and the drop counters are corrected.
        """
        with self._lock:
            if self._gap_first is not None and next_seq > self._gap_first:
                if next_seq >= self._head:
                    self._gap_first = None
                else:
                    self.frames_dropped -= next_seq - self._gap_first
                    self.samples_dropped -= next_sample - self._gap_first_sample
                    self._gap_first = next_seq
                    self._gap_first_sample = next_sample
            target = min(next_seq, self._tail)
            if target > self._head:
                self._head = target
                self._space.notify_all()

    def read(self, from_seq: int, max_frames: int, max_bytes: int) -> Run | None:
        """Copy out the run starting at from_seq (None if nothing is there yet).

        Coalesces consecutive full-length audio frames that are adjacent in memory, up to
        max_frames and max_bytes of payload.
        """
        with self._lock:
            if from_seq < self._head:
                if self._gap_first is None or from_seq < self._gap_first:
                    raise ValueError(f"seq {from_seq} was already released (head {self._head})")
                end_sample = (
                    self._sample_pos[self._head % self.slots]
                    if self._head < self._tail
                    else self._next_sample
                )
                return GapRun(from_seq, self._head - from_seq, self._gap_first_sample, end_sample)
            if from_seq >= self._tail:
                return None
            slot = from_seq % self.slots
            pos = self._sample_pos[slot]
            if self._kind[slot] == KIND_GAP:
                return GapRun(from_seq, 1, pos, pos + self._nsamples[slot])
            nsamples = self._nsamples[slot]
            count = 1
            if nsamples == self.frame_samples:
                limit = min(
                    max_frames,
                    self._tail - from_seq,
                    self.slots - slot,  # stop at the wrap: one contiguous copy
                    max(1, max_bytes // self.frame_bytes),
                )
                while (
                    count < limit
                    and self._kind[slot + count] == KIND_AUDIO
                    and self._nsamples[slot + count] == nsamples
                ):
                    count += 1
            start = slot * self.frame_bytes
            length = (
                count * self.frame_bytes
                if count > 1
                else nsamples * self.format.block_align
            )
            payload = bytes(self._view[start : start + length])
            return AudioRun(from_seq, count, pos, payload)

    def latest_audio(self) -> bytes:
        """A copy of the newest audio frame (for level meters: read off the audio path).

        Acked slots keep their bytes until the ring wraps onto them, so this works whether
        or not the newest frame was acked already.
        """
        with self._lock:
            for seq in range(self._tail - 1, max(0, self._tail - 4) - 1, -1):
                slot = seq % self.slots
                if self._kind[slot] == KIND_AUDIO:
                    start = slot * self.frame_bytes
                    n = self._nsamples[slot] * self.format.block_align
                    return bytes(self._view[start : start + n])
            return b""

    def stats(self) -> RingStats:
        with self._lock:
            held = self._tail - self._head
            samples = 0
            if held:
                first = self._sample_pos[self._head % self.slots]
                samples = self._next_sample - first
            return RingStats(
                head_seq=self._head,
                tail_seq=self._tail,
                held_frames=held,
                capacity_frames=self.slots,
                buffered_seconds=samples / self.format.sample_rate,
                frames_dropped=self.frames_dropped,
                samples_dropped=self.samples_dropped,
                closed=self._closed,
            )

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
  unacked slot is evicted and folded into a single *front gap*, which the uplink sends as
  a GAP item before anything newer (docs/protocol.md §8). The front gap remembers its
  evicted slots as runs (seq, count, samples each), so a GAP can start at any seq with its
  exact sample position, and so loss is counted exactly: ``frames_dropped`` /
  ``samples_dropped`` grow only when the server acknowledges a GAP (``confirm_gap``) — an
  evicted frame that had reached the server before the outage is not counted as lost.

Write-ahead (an attached spool, uplink/spool.py): ``enable_write_ahead`` makes the ring
hand nothing to the uplink that the spool's writer thread has not written yet — ``read``
stops at ``spooled_seq`` — so whatever the server acknowledges is always in the spool too
and a restarted capture never finds the server ahead of its spool. A push then wakes the
spool writer (``on_push``) instead of the uplink; the writer wakes the uplink
(``mark_spooled``) once the frame is on disk. ``restore`` rebuilds the ring a crashed
process left in its spool; the part of its front that the spool no longer has (evicted or
overwritten, positions of the individual frames unknown) is one *opaque* front-gap run,
whose start moves to wherever the server's ack says (``ack`` uses its ``next_sample``).

Thread safety: one producer thread (or the PortAudio callback) and one consumer (the asyncio
uplink). A single lock guards the indices; it is held only for O(1) bookkeeping and one
``memcpy`` of at most one frame (producer) or one coalesced run (consumer) — never across
I/O — so the audio callback never waits on the network or the disk.
"""

from __future__ import annotations

import math
import threading
import time
from array import array
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum, StrEnum

from uplink.audio import AudioFormat
from uplink.wire import MAX_COUNT

SLOT_AUDIO = 0
SLOT_GAP = 1


class OverflowPolicy(Enum):
    BLOCK = "block"
    DROP_OLDEST = "drop-oldest"


class GapReason(StrEnum):
    """Why samples are missing (reported to the application with each acknowledged GAP)."""

    BUFFER_OVERFLOW = "buffer-overflow"  # evicted by drop-oldest during an outage
    SOURCE = "source"  # lost before the ring (push_gap: e.g. an input overflow)


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
    reason: GapReason = GapReason.BUFFER_OVERFLOW


Run = AudioRun | GapRun


@dataclass(slots=True)
class _Evicted:
    """`count` consecutive evicted slots of one kind and length, contiguous in samples.

    An opaque run (``end_sample`` set, restored from a spool) knows only where it starts and
    ends: its frames' individual lengths are gone. Every position inside it is lost audio
    either way, so a GAP may split it anywhere (`_opaque_position`); the split is
    deterministic, so a replay sends the same items, and an ack inside the run moves its
    start to the server's next_sample.
    """

    seq: int
    count: int
    nsamples: int
    sample_pos: int
    audio: bool
    end_sample: int | None = None

    @property
    def opaque(self) -> bool:
        return self.end_sample is not None


def _opaque_position(run: _Evicted, seq: int) -> int:
    """A sample position for `seq` in [run.seq, run.seq + run.count] of an opaque run:
    exact at both ends, evenly spread between (a GAP of more than MAX_COUNT seqs must be
    split, and each part must cover at least one sample when the run has enough)."""
    assert run.end_sample is not None
    span = run.end_sample - run.sample_pos
    return run.sample_pos + span * (seq - run.seq) // run.count


@dataclass(frozen=True, slots=True)
class SlotCopy:
    """One held item as the spool writer stores it."""

    seq: int
    kind: int  # SLOT_AUDIO or SLOT_GAP
    sample_pos: int
    nsamples: int
    payload: bytes  # empty for a gap


@dataclass(frozen=True, slots=True)
class RestoredSpan:
    """What a spool held for the uplink after a crash (uplink/spool.py `recover`).

    `items` are consecutive seqs from `first_seq`; everything below `acked_seq` is on the
    server; seqs [acked_seq, first_seq) are lost (their audio was evicted or overwritten),
    samples [acked_sample, first item's sample_pos).
    """

    acked_seq: int
    acked_sample: int
    first_seq: int
    items: list[SlotCopy]
    end_seq: int
    end_sample: int
    wall_time: float | None


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
        wall_clock: Callable[[], float] = time.time,
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
        self._evicted: deque[_Evicted] = deque()  # the front gap: exactly [first, head)
        self._closed = False
        self._aborted = False
        self.frames_dropped = 0  # lost: evicted and recorded by the server as a gap
        self.samples_dropped = 0
        self.frames_evicted = 0  # evicted before being acked (some may have reached the server)
        self.on_data: Callable[[], None] | None = None
        # wall-clock time of sample 0 (§2 hello wall_time): stamped by the first push, which
        # arrives when its last sample was captured, so its own duration is subtracted
        self._wall_clock = wall_clock
        self._wall_time: float | None = None
        self._acked_seq = 0  # the server's latest ack (next_seq, next_sample)
        self._acked_sample = 0
        # write-ahead: read() stops at _spooled; None = no spool attached
        self._spooled: int | None = None
        self.on_push: Callable[[], None] | None = None

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
        if self._wall_time is None:
            self._stamp_wall_time(n // self.format.block_align)
        with self._lock:
            slot = self._reserve_slot()
            start = slot * self.frame_bytes
            self._view[start : start + n] = data
            self._commit_slot(slot, SLOT_AUDIO, n // self.format.block_align)
        self._wake_after_push()

    def push_gap(self, nsamples: int) -> None:
        """Record that `nsamples` sample frames were lost at the source (e.g. input overflow)."""
        if nsamples <= 0:
            return
        if self._wall_time is None:
            self._stamp_wall_time(nsamples)
        with self._lock:
            slot = self._reserve_slot()
            self._commit_slot(slot, SLOT_GAP, nsamples)
        self._wake_after_push()

    def close(self) -> None:
        """No more input: the uplink ends the stream once everything is acked."""
        with self._lock:
            self._closed = True
            self._space.notify_all()
        self._wake_after_push()
        self._wake_uplink()

    def _wake_after_push(self) -> None:
        # with a spool the writer goes first: it wakes the uplink once the item is on disk
        spool = self.on_push  # read once: the spool may detach concurrently
        if spool is not None:
            spool()
        else:
            self._wake_uplink()

    def _wake_uplink(self) -> None:
        wake = self.on_data  # read once: the uplink may clear it concurrently
        if wake is not None:
            wake()

    def abort(self) -> None:
        """Wake a producer blocked on a full ring (the uplink failed or was cancelled)."""
        with self._lock:
            self._aborted = True
            self._space.notify_all()

    def clear_abort(self) -> None:
        """The uplink runs again (an application retry): a full ring blocks again."""
        with self._lock:
            self._aborted = False

    def stamp_wall_time(self, nsamples: int) -> None:
        """The producer's first block of `nsamples` just arrived (FrameCutter): sample 0 was
        captured that long ago. No effect once stamped. Producer thread only."""
        if self._wall_time is None:
            self._stamp_wall_time(nsamples)

    def _stamp_wall_time(self, nsamples: int) -> None:
        # only the producer thread pushes, so only it writes this, once
        self._wall_time = self._wall_clock() - nsamples / self.format.sample_rate

    @property
    def wall_time(self) -> float | None:
        """POSIX time at which sample 0 was captured (None until the first push)."""
        return self._wall_time

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
        audio = self._kind[slot] == SLOT_AUDIO
        nsamples = self._nsamples[slot]
        last = self._evicted[-1] if self._evicted else None
        if (last is not None and not last.opaque and last.audio == audio
                and last.nsamples == nsamples):
            last.count += 1
        else:
            self._evicted.append(_Evicted(self._head, 1, nsamples, self._sample_pos[slot], audio))
        self.frames_evicted += audio
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
            return self._evicted[0].seq if self._evicted else self._head

    def ack(self, next_seq: int, next_sample: int) -> None:
        """The server holds everything below next_seq durably: free those slots.

        `next_sample` is the server's sample position at `next_seq`: the evicted runs know
        every position except inside an opaque run restored from a spool.
        """
        with self._lock:
            if next_seq > self._acked_seq:
                self._acked_seq, self._acked_sample = next_seq, next_sample
            while self._evicted and self._evicted[0].seq < next_seq:
                run = self._evicted[0]
                done = min(run.count, next_seq - run.seq)
                if done == run.count:
                    self._evicted.popleft()
                elif run.opaque:
                    # the server had part of it: its ack says where the rest starts
                    run.seq += done
                    run.count -= done
                    run.sample_pos = next_sample
                else:
                    run.seq += done
                    run.count -= done
                    run.sample_pos += done * run.nsamples
            target = min(next_seq, self._tail)
            if target > self._head:
                self._head = target
                self._space.notify_all()

    def confirm_gap(self, first_seq: int, end_seq: int) -> None:
        """The server acknowledged a GAP over [first_seq, end_seq): count what it lost.

        Call before `ack` frees those seqs.
        """
        with self._lock:
            for run in self._evicted:
                lo, hi = max(first_seq, run.seq), min(end_seq, run.seq + run.count)
                if lo < hi and run.opaque:
                    self.frames_dropped += hi - lo
                    self.samples_dropped += _opaque_position(run, hi) - _opaque_position(run, lo)
                elif lo < hi and run.audio:
                    self.frames_dropped += hi - lo
                    self.samples_dropped += (hi - lo) * run.nsamples

    def _sample_at(self, seq: int) -> int:
        """Sample position of `seq` in [front gap start, tail] (lock held)."""
        for run in self._evicted:
            if run.seq <= seq < run.seq + run.count:
                if run.opaque:
                    return _opaque_position(run, seq)
                return run.sample_pos + (seq - run.seq) * run.nsamples
            if run.opaque and seq == run.seq + run.count:
                assert run.end_sample is not None
                return run.end_sample
        if seq < self._tail:
            return self._sample_pos[seq % self.slots]
        return self._next_sample

    def read(self, from_seq: int, max_frames: int, max_bytes: int) -> Run | None:
        """Copy out the run starting at from_seq (None if nothing is there yet).

        Coalesces consecutive full-length audio frames that are adjacent in memory, up to
        max_frames and max_bytes of payload.
        """
        with self._lock:
            if from_seq < self._head:
                if not self._evicted or from_seq < self._evicted[0].seq:
                    raise ValueError(f"seq {from_seq} was already released (head {self._head})")
                count = min(self._head - from_seq, MAX_COUNT)
                if self._spooled is not None:
                    # a GAP is write-ahead too: once the server acks it, a restarted capture
                    # must find a spooled record at or past its end (uplink/spool.py)
                    count = min(count, self._spooled - from_seq)
                    if count <= 0:
                        return None
                return GapRun(
                    from_seq, count, self._sample_at(from_seq), self._sample_at(from_seq + count)
                )
            limit_seq = self._tail if self._spooled is None else min(self._tail, self._spooled)
            if from_seq >= limit_seq:
                return None
            slot = from_seq % self.slots
            pos = self._sample_pos[slot]
            if self._kind[slot] == SLOT_GAP:
                return GapRun(from_seq, 1, pos, pos + self._nsamples[slot], GapReason.SOURCE)
            nsamples = self._nsamples[slot]
            count = 1
            if nsamples == self.frame_samples:
                limit = min(
                    max_frames,
                    limit_seq - from_seq,
                    self.slots - slot,  # stop at the wrap: one contiguous copy
                    max(1, max_bytes // self.frame_bytes),
                )
                while (
                    count < limit
                    and self._kind[slot + count] == SLOT_AUDIO
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

    # -- write-ahead spool (uplink/spool.py) ---------------------------------------------

    @property
    def acked_point(self) -> tuple[int, int]:
        """The server's latest ack: (next_seq, next_sample)."""
        with self._lock:
            return self._acked_seq, self._acked_sample

    @property
    def spooled_seq(self) -> int | None:
        return self._spooled

    def enable_write_ahead(self, on_push: Callable[[], None]) -> None:
        """From now on the uplink reads only what `mark_spooled` released."""
        with self._lock:
            self._spooled = self._tail
        self.on_push = on_push

    def disable_write_ahead(self) -> None:
        """The spool failed or was closed: the uplink reads everything again."""
        self.on_push = None
        with self._lock:
            self._spooled = None
        self._wake_uplink()

    def mark_spooled(self, end_seq: int) -> None:
        """Items below `end_seq` are in the spool: the uplink may send them."""
        with self._lock:
            if self._spooled is None or end_seq <= self._spooled:
                return
            self._spooled = min(end_seq, self._tail)
        self._wake_uplink()

    def copy_item(self, seq: int) -> SlotCopy | None:
        """A copy of item `seq` for the spool writer; None if it was already released
        (acked, or evicted by drop-oldest before the writer got to it)."""
        with self._lock:
            if seq >= self._tail:
                raise ValueError(f"seq {seq} was not pushed yet (tail {self._tail})")
            if seq < self._head:
                return None
            slot = seq % self.slots
            n = self._nsamples[slot]
            kind = self._kind[slot]
            payload = b""
            if kind == SLOT_AUDIO:
                start = slot * self.frame_bytes
                payload = bytes(self._view[start : start + n * self.format.block_align])
            return SlotCopy(seq, kind, self._sample_pos[slot], n, payload)

    def restore(self, span: RestoredSpan) -> None:
        """Continue from a spool: the ring must be new, with room for all of `span`."""
        with self._lock:
            if self._tail or self._wall_time is not None:
                raise ValueError("restore() needs a ring nothing was pushed into")
            if len(span.items) > self.slots:
                raise ValueError(f"spool holds {len(span.items)} items, the ring {self.slots}")
            self._head = span.first_seq
            self._tail = span.first_seq
            self._next_sample = (span.items[0].sample_pos if span.items else span.end_sample)
            if span.first_seq > span.acked_seq:
                self._evicted.append(_Evicted(
                    span.acked_seq, span.first_seq - span.acked_seq, 0, span.acked_sample,
                    True, end_sample=self._next_sample))
            for item in span.items:
                slot = item.seq % self.slots
                if item.kind == SLOT_AUDIO:
                    start = slot * self.frame_bytes
                    self._view[start : start + len(item.payload)] = item.payload
                self._commit_slot(slot, item.kind, item.nsamples)
            self._acked_seq, self._acked_sample = span.acked_seq, span.acked_sample
            self._wall_time = span.wall_time
            if self._spooled is not None:
                self._spooled = self._tail  # it came from the spool: already on disk

    def latest_audio(self) -> bytes:
        """A copy of the newest audio frame (for level meters: read off the audio path).

        Acked slots keep their bytes until the ring wraps onto them, so this works whether
        or not the newest frame was acked already.
        """
        with self._lock:
            for seq in range(self._tail - 1, max(0, self._tail - 4) - 1, -1):
                slot = seq % self.slots
                if self._kind[slot] == SLOT_AUDIO:
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

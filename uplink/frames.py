"""Cut source blocks of any length into the fixed-length frames the ring and protocol use.

Sources deliver whatever block size the device or file reader produces; the protocol keys
every frame by (seq, sample_pos) with frames of `frame_samples` sample frames (only the
last may be shorter, docs/protocol.md §1). The cutter bridges the two without changing a
byte and without losing or duplicating one.

It runs inside the PortAudio callback, so it allocates no audio-sized buffers per call:
one frame-sized bytearray is allocated up front for the partial frame carried between
blocks, whole frames are pushed to the ring as memoryview slices of the block itself (the
ring copies them under its lock), and only the partial remainder is copied.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from uplink.audio import AudioFormat
from uplink.ring import RingClosed

Tee = Callable[[memoryview], None]


class FrameRing(Protocol):
    """What the cutter needs of uplink.ring.RingBuffer (a protocol so tests can record)."""

    format: AudioFormat
    frame_samples: int

    def push(self, data: bytes | bytearray | memoryview) -> None: ...

    def push_gap(self, nsamples: int) -> None: ...

    def close(self) -> None: ...


class FrameCutter:
    """A FrameSink that pushes every `ring.frame_samples` sample frames as one ring frame.

    Single producer: call it from one thread (or the audio callback) at a time.

    `tee`, if given, sees every block before it is cut (e.g. to keep a local recording).
    It runs on the audio path and gets a view that is only valid during the call, so it must
    copy the bytes into a queue and return at once: no disk I/O, no locks held for long.
    """

    def __init__(self, ring: FrameRing, tee: Tee | None = None) -> None:
        self._ring = ring
        self._tee = tee
        self._align = ring.format.block_align
        self._frame_bytes = ring.frame_samples * self._align
        self._pending = memoryview(bytearray(self._frame_bytes))
        self._fill = 0  # bytes of the partial frame held in _pending
        self._closed = False
        # the ring stamps the wall-clock time of sample 0 at its first push (§2 wall_time);
        # a block longer than a frame began that much earlier, so the cutter stamps it
        # with the whole block's length first (once; None for rings without a clock)
        self._stamp: Callable[[int], None] | None = getattr(ring, "stamp_wall_time", None)
        self.samples_written = 0  # sample frames accepted by write()
        self.samples_gapped = 0  # sample frames reported lost by gap()
        self.gaps = 0  # gap() calls that lost at least one sample (one GAP slot each)

    @property
    def pending_samples(self) -> int:
        """Sample frames held back until the current frame is full (or close/gap)."""
        return self._fill // self._align

    def write(self, block: bytes | bytearray | memoryview) -> None:
        """Append whole sample frames; pushes every frame that becomes complete."""
        if self._closed:
            raise RingClosed("frame cutter is closed")
        view = memoryview(block)
        if view.format != "B" or view.ndim != 1:
            view = view.cast("B")  # e.g. a 2-D int16 array from sounddevice
        n = view.nbytes
        if n % self._align:
            raise ValueError(f"block of {n} bytes is not whole {self._align}-byte sample frames")
        if self._tee is not None:
            self._tee(view)
        if self._stamp is not None:
            self._stamp(self._fill // self._align + n // self._align)
            self._stamp = None
        self.samples_written += n // self._align
        pos = 0
        frame = self._frame_bytes
        if self._fill:
            pos = min(frame - self._fill, n)
            self._pending[self._fill : self._fill + pos] = view[:pos]
            self._fill += pos
            if self._fill < frame:
                return
            self._fill = 0
            self._ring.push(self._pending)
        while n - pos >= frame:
            self._ring.push(view[pos : pos + frame])
            pos += frame
        rest = n - pos
        if rest:
            self._pending[:rest] = view[pos:]
            self._fill = rest

    def gap(self, nsamples: int) -> None:
        """Record lost input: the partial frame goes out as a short frame, then the gap.

        A short frame before a gap is exact (its sample_pos and length say where it ends);
        padding it or holding it across the gap would misplace audio on the timeline.
        """
        if self._closed:
            raise RingClosed("frame cutter is closed")
        if nsamples <= 0:
            return
        self._flush()
        self.samples_gapped += nsamples
        self.gaps += 1
        self._ring.push_gap(nsamples)

    def close(self) -> None:
        """Push the final (possibly short) frame and close the ring. Idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            self._flush()
        finally:
            self._ring.close()

    def _flush(self) -> None:
        if self._fill:
            n, self._fill = self._fill, 0
            self._ring.push(self._pending[:n])

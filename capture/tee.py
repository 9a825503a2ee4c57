"""`--tee FILE.wav`: a local copy of exactly what was captured, written off the audio path.

`TeeSink` wraps the real sink. On the audio path it only copies the block into a queue
(`bytes(block)`: one small allocation, no lock held, no I/O); a writer thread appends to the
file. Gaps reported by the source (device loss, measured overflows) are written as silence,
exactly as the server stores them, so the tee and the server's WAV line up sample for
sample — except where the ring itself dropped audio during a long outage: the tee has that
audio, the server has the reported gap.

Crash safety: the header is written with a zero length at open and then, at most
`header_interval` seconds apart, the writer thread patches it to cover everything written so
far and flushes the file to disk (`fdatasync`). So a capture that is SIGKILLed (or a machine
that loses power) leaves a valid WAV that every reader (libsndfile, Python's `wave`) opens,
short by at most about one interval of audio; a clean close patches the exact final length.
All of it happens in the writer thread, never on the audio path.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path

from capture.source import FrameSink
from capture.wavfile import wav_header
from uplink.audio import AudioFormat

_END = None
_ZEROS = bytes(64 * 1024)
HEADER_INTERVAL = 1.0  # seconds of wall time between header patches (the crash-loss bound)


class TeeSink:
    def __init__(
        self,
        inner: FrameSink,
        path: str | os.PathLike[str],
        fmt: AudioFormat,
        *,
        header_interval: float = HEADER_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.inner = inner
        self.path = Path(path)
        self.format = fmt
        self.error: BaseException | None = None
        self.bytes_written = 0
        #: sample frames the on-disk header covers (what a reader sees after a crash)
        self.frames_in_header = 0
        self.header_interval = header_interval
        self._clock = clock
        self._queue: queue.SimpleQueue[bytes | int | None] = queue.SimpleQueue()
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.write(self._fd, wav_header(fmt, 0))
        self._thread = threading.Thread(target=self._writer, name="tee-writer", daemon=True)
        self._thread.start()

    # -- FrameSink (audio path) ----------------------------------------------------------

    def write(self, block: bytes | bytearray | memoryview) -> None:
        self._queue.put(bytes(block))
        self.inner.write(block)

    def gap(self, nsamples: int) -> None:
        self._queue.put(nsamples)
        self.inner.gap(nsamples)

    def close(self) -> None:
        try:
            self.inner.close()
        finally:
            self._queue.put(_END)

    # -- writer thread -------------------------------------------------------------------

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until the file is complete (header patched, fsynced)."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _writer(self) -> None:
        # keep draining the queue after a write error, so the audio path never backs up
        next_patch = self._clock() + self.header_interval
        while True:
            try:
                # wake at least once per interval, so a paused source still gets its header
                item = self._queue.get(timeout=max(0.0, next_patch - self._clock()))
            except queue.Empty:
                item = b""
            if item is _END:
                break
            if self.error is None:
                try:
                    self._append(item)
                    if self._clock() >= next_patch:
                        self._patch_header()
                        next_patch = self._clock() + self.header_interval
                except OSError as e:
                    self.error = e
        try:
            if self.error is None:
                if self.bytes_written % 2:
                    os.write(self._fd, b"\x00")  # RIFF pad byte
                self._patch_header(final=True)
        except OSError as e:
            self.error = e
        finally:
            os.close(self._fd)

    def _append(self, item: bytes | int) -> None:
        if isinstance(item, int):
            remaining = item * self.format.block_align
            while remaining:
                chunk = _ZEROS[: min(remaining, len(_ZEROS))]
                self._write_all(chunk)
                remaining -= len(chunk)
        elif item:
            self._write_all(item)

    def _patch_header(self, *, final: bool = False) -> None:
        """Make the header cover every whole sample frame written so far.

        The data is flushed first, then the header: after a crash the header never claims
        bytes that did not reach the disk (a reader would see garbage or a short read).
        """
        frames = self.bytes_written // self.format.block_align
        if frames == self.frames_in_header and not final:
            return  # nothing new: an idle tee costs no disk flushes
        _datasync(self._fd)
        os.pwrite(self._fd, wav_header(self.format, frames), 0)
        _datasync(self._fd)
        self.frames_in_header = frames

    def _write_all(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            n = os.write(self._fd, view)
            view = view[n:]
        self.bytes_written += len(data)


def _datasync(fd: int) -> None:
    # fdatasync where the platform has it (Linux); macOS only has fsync
    getattr(os, "fdatasync", os.fsync)(fd)

"""`--tee FILE.wav`: a local copy of exactly what was captured, written off the audio path.

`TeeSink` wraps the real sink. On the audio path it only copies the block into a queue
(`bytes(block)`: one small allocation, no lock held, no I/O); a writer thread appends to the
file. Gaps reported by the source (device loss, measured overflows) are written as silence,
exactly as the server stores them, so the tee and the server's WAV line up sample for
sample — except where the ring itself dropped audio during a long outage: the tee has that
audio, the server has the reported gap.
"""

from __future__ import annotations

import os
import queue
import threading
from pathlib import Path

from capture.source import FrameSink
from capture.wavfile import wav_header
from uplink.audio import AudioFormat

_END = None
_ZEROS = bytes(64 * 1024)


class TeeSink:
    def __init__(self, inner: FrameSink, path: str | os.PathLike[str], fmt: AudioFormat) -> None:
        self.inner = inner
        self.path = Path(path)
        self.format = fmt
        self.error: BaseException | None = None
        self.bytes_written = 0
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
        while (item := self._queue.get()) is not _END:
            if self.error is not None:
                continue
            try:
                if isinstance(item, int):
                    remaining = item * self.format.block_align
                    while remaining:
                        chunk = _ZEROS[: min(remaining, len(_ZEROS))]
                        self._write_all(chunk)
                        remaining -= len(chunk)
                else:
                    self._write_all(item)
            except OSError as e:
                self.error = e
        try:
            if self.error is None:
                frames = self.bytes_written // self.format.block_align
                if self.bytes_written % 2:
                    os.write(self._fd, b"\x00")  # RIFF pad byte
                os.pwrite(self._fd, wav_header(self.format, frames), 0)
                os.fsync(self._fd)
        except OSError as e:
            self.error = e
        finally:
            os.close(self._fd)

    def _write_all(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            n = os.write(self._fd, view)
            view = view[n:]
        self.bytes_written += len(data)

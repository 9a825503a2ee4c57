"""Stream a WAV file into a FrameSink as if it were being captured live (or faster).

The file is read in short blocks from an open handle, never loaded whole, so a multi-hour
recording costs one block of memory. Pacing follows a deadline schedule on a monotonic
clock: block k is written once the source has "recorded" it, at
``start + samples_through_block_k / rate / speed``. Deadlines come from the start time, not
from the previous sleep, so oversleeping never accumulates drift, and a sink that stalls
(a full BLOCK ring) is caught up afterwards in a burst, like a device buffer draining.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from pathlib import Path

from capture.source import FrameSink, Source, SourceError
from capture.wavfile import StrPath, WavError, WavInfo, read_wav_info
from uplink.ring import RingClosed

Clock = Callable[[], float]
Sleep = Callable[[float], object]

BUNDLED_RECORDING = "speech_16k_mono.wav"


def bundled_recording() -> Path:
    """Path of the bundled 11 s speech recording (16 kHz mono int16; see data/README.md)."""
    return Path(__file__).with_name("data") / BUNDLED_RECORDING


class WavFileSource(Source):
    """A Source reading a PCM WAV file on a daemon thread.

    speed: 1.0 = real time, 2.0 = twice as fast, 0 = as fast as the sink accepts (use a ring
    with OverflowPolicy.BLOCK, or frames are dropped).
    max_samples: stop after this many sample frames (`--duration` counts audio, not wall
    time, so `--speed 0 --duration 5` sends exactly 5 s of the file); None = the whole file.
    clock/sleep: injectable for tests; the default sleep is interruptible by stop().
    """

    def __init__(
        self,
        path: StrPath,
        speed: float = 1.0,
        *,
        block_seconds: float = 0.1,
        max_samples: int | None = None,
        clock: Clock = time.monotonic,
        sleep: Sleep | None = None,
    ) -> None:
        if not (math.isfinite(speed) and speed >= 0):
            raise ValueError(f"speed must be a finite number >= 0, got {speed!r}")
        if not (math.isfinite(block_seconds) and block_seconds > 0):
            raise ValueError(f"block_seconds must be positive, got {block_seconds!r}")
        self.path = Path(path)
        try:
            self.info: WavInfo = read_wav_info(self.path)
        except OSError as e:
            raise SourceError(f"cannot open {self.path}: {e.strerror or e}") from e
        except WavError as e:
            raise SourceError(f"cannot stream {self.path}: {e}") from e
        self.format = self.info.format
        self.description = (
            f"file {self.path.name} ({self.format}, {self.info.duration_seconds:.1f} s)"
        )
        if max_samples is not None and max_samples < 0:
            raise ValueError(f"max_samples must be >= 0, got {max_samples!r}")
        self.speed = speed
        self.max_samples = max_samples
        self.block_samples = max(1, round(block_seconds * self.format.sample_rate))
        self.samples_emitted = 0
        #: begin at this sample frame of the file (a capture resumed from its spool)
        self.start_sample = 0
        self._clock = clock
        self._stopping = threading.Event()
        self._sleep: Sleep = sleep if sleep is not None else self._stopping.wait
        self._done = threading.Event()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def start(self, sink: FrameSink) -> None:
        if self._thread is not None:
            raise RuntimeError("source already started")
        self._thread = threading.Thread(
            target=self._run, args=(sink,), name=f"wav-source {self.path.name}", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Ends between blocks, or at once during a pacing sleep.

        A write blocked on a full BLOCK ring returns only when the ring frees space or is
        aborted (RingBuffer.abort); the uplink owns that.
        """
        self._stopping.set()

    def wait(self, timeout: float | None = None) -> bool:
        if self._thread is None:
            return self._done.is_set()
        return self._done.wait(timeout)

    @property
    def error(self) -> BaseException | None:
        return self._error

    def _run(self, sink: FrameSink) -> None:
        try:
            self._stream(sink)
        except RingClosed:
            pass  # the uplink aborted while we waited for ring space: a clean end
        except BaseException as e:  # reported through .error; the thread must not die noisily
            self._error = e
        finally:
            try:
                sink.close()
            except RingClosed:
                pass
            except BaseException as e:
                if self._error is None:
                    self._error = e
            self._done.set()

    def _stream(self, sink: FrameSink) -> None:
        align = self.format.block_align
        rate = self.format.sample_rate
        buf = memoryview(bytearray(self.block_samples * align))
        skip = min(self.start_sample * align, self.info.data_bytes)
        remaining = self.info.data_bytes - skip
        if self.max_samples is not None:
            remaining = max(0, min(remaining, self.max_samples * align - skip))
        with open(self.path, "rb") as f:
            f.seek(self.info.data_offset + skip)
            start = self._clock()
            while remaining and not self._stopping.is_set():
                n = min(len(buf), remaining)
                got = f.readinto(buf[:n])
                if got != n:
                    raise SourceError(
                        f"{self.path} shrank while streaming: {remaining} bytes missing"
                    )
                if self.speed > 0:
                    deadline = start + (self.samples_emitted + n // align) / rate / self.speed
                    delay = deadline - self._clock()
                    if delay > 0:
                        self._sleep(delay)
                        if self._stopping.is_set():
                            break
                sink.write(buf[:n])
                self.samples_emitted += n // align
                remaining -= n

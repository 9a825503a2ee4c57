"""Microphone capture on PortAudio (sounddevice), imported lazily.

Importing this module needs neither sounddevice nor PortAudio; they are imported by the
functions that talk to a device, and a missing PortAudio becomes a SourceError that says
which system package to install.

The audio path
--------------
PortAudio calls ``_callback`` on its own thread with raw bytes (``RawInputStream``: no
numpy). The callback does only this: count, note the time, and hand the block to the sink
(``sink.write(memoryview(indata))``, which copies it into the ring). It never blocks, never
does I/O, never logs, allocates nothing beyond the few small objects every Python call
creates. The microphone's sink must therefore never wait: use the ring's DROP_OLDEST
policy, never BLOCK.

Defaults and why
----------------
- ``blocksize``: the frame size (20 ms unless told otherwise, 320 samples at 16 kHz), so one
  callback delivers one frame and the frame cutter never carries a partial frame.
- ``latency``: 0.1 s. PortAudio sizes the host buffer from it; the callback still runs every
  block, so steady-state delay stays one block, but a callback delayed by the GIL (the
  uplink thread parsing, a garbage collection) has ~100 ms of headroom before samples are
  lost. PortAudio's 'high' is no safer: on the ALSA pulse plugin 'low' and 'high' are both
  0.04 s.

Overflows
---------
PortAudio sets ``status.input_overflow`` when input was discarded but never says how much.
We count every overflow. We record a gap only when the loss is measurable: when the
overflowed block's ``time_info.inputBufferAdcTime`` is later than the previous block's ADC
time plus its duration by at least one block; the gap is that difference in samples. If
PortAudio gives no ADC times (0.0), the overflow is counted but the timeline is not
changed (a conservative under-count rather than an invented gap). Note that on the ALSA
pulse plugin an overrun raises no flag at all (verified; see tools/virtual_mic.py), so
``max_callback_interval`` is reported as well: an interval above the buffer latency means
the callback was starved and audio was probably lost.

Device loss
-----------
A monitor thread watches the stream: PortAudio's finished callback (the stream ended
without ``stop()``), ``stream.active`` turning false, or no callback for ``stall_timeout``
seconds (``startup_timeout`` before the first one) mean the device is gone. It reports
through ``on_event``, closes the stream, and reopens the same device (by name, after a
PortAudio re-scan) with exponential backoff until it succeeds or ``stop()`` is called. On
success it records the time the device was away as ``sink.gap(round(seconds * rate))``
(monotonic clock, from the last callback of the old stream to the start of the new one;
accurate to about one host buffer), before the new stream's first block.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from capture.devices import (
    COMMON_RATES,
    NO_INPUT_DEVICE,
    PORTAUDIO_DTYPES,
    PORTAUDIO_LOCK,
    PORTAUDIO_MISSING,
    DeviceInfo,
    describe_supported,
    import_sounddevice,
    input_devices,
    list_input_devices,
    pick_device,
    rescan_devices,
    supported_formats,
)
from capture.source import FrameSink, Source, SourceError
from uplink.audio import AudioFormat, SampleType
from uplink.policy import Backoff, BackoffConfig

# re-exported: the device functions were defined here before capture/devices.py existed
__all__ = [
    "COMMON_RATES",
    "NO_INPUT_DEVICE",
    "PORTAUDIO_MISSING",
    "DeviceInfo",
    "MicrophoneSource",
    "MicrophoneStats",
    "describe_supported",
    "list_input_devices",
    "rescan_devices",
    "supported_formats",
]

log = logging.getLogger(__name__)

DEFAULT_LATENCY = 0.1
DEFAULT_FRAME_SECONDS = 0.020


@dataclass(frozen=True, slots=True)
class MicrophoneStats:
    callbacks: int
    samples_captured: int
    overflows: int
    overflow_gaps: int
    gap_samples: int
    device_errors: int
    reopen_attempts: int
    reopens: int
    max_callback_interval: float
    active: bool


class MicrophoneSource(Source):
    """Live capture from a PortAudio input device into a FrameSink."""

    def __init__(
        self,
        *,
        device: int | str | None = None,
        sample_rate: int = 16_000,
        channels: int = 1,
        sample_type: SampleType | str = SampleType.INT16,
        blocksize: int | None = None,
        latency: float | str = DEFAULT_LATENCY,
        on_event: Callable[[str], None] | None = None,
        reopen: bool = True,
        backoff_initial: float = 0.25,
        backoff_max: float = 5.0,
        stall_timeout: float = 2.0,
        startup_timeout: float = 5.0,
        rescan_on_reopen: bool = True,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] | None = None,
    ) -> None:
        self.format = AudioFormat(sample_rate, channels, SampleType(sample_type))
        self.device = device
        self.blocksize = blocksize or self.format.samples_for(DEFAULT_FRAME_SECONDS)
        if self.blocksize <= 0:
            raise ValueError("blocksize must be positive")
        if isinstance(latency, str) and latency not in ("low", "high"):
            raise ValueError("latency must be 'low', 'high' or seconds")
        self.latency = latency
        self.on_event = on_event
        self.reopen = reopen
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.stall_timeout = stall_timeout
        self.startup_timeout = startup_timeout
        self.rescan_on_reopen = rescan_on_reopen
        self._clock = clock
        self._sleep = sleep
        self.description = f"microphone {device!r}" if device is not None else "microphone"
        self.device_info: DeviceInfo | None = None

        self._sd: ModuleType | None = None
        self._sink: FrameSink | None = None
        self._stream: Any = None
        self._monitor: threading.Thread | None = None
        self._stopping = threading.Event()
        self._wake = threading.Event()
        self._done = threading.Event()
        self._finished = threading.Event()  # PortAudio's finished callback for _stream
        self._error: BaseException | None = None
        self._callback_error: BaseException | None = None
        self._abort_exc: type[BaseException] = Exception
        self._lock = threading.Lock()

        # Written by the callback thread (and by the monitor only while no stream runs);
        # plain ints/floats, read elsewhere as stats.
        self._callbacks = 0
        self._samples = 0
        self._overflows = 0
        self._overflow_gaps = 0
        self._gap_samples = 0
        self._last_cb = 0.0  # clock() at the last callback (0: none yet on this stream)
        self._next_adc = 0.0  # expected inputBufferAdcTime of the next block (0: unknown)
        self._max_interval = 0.0
        # Written by the monitor thread.
        self._device_errors = 0
        self._reopen_attempts = 0
        self._reopens = 0
        self._stream_started_at = 0.0
        self._accounted_until = 0.0

    # -- counters ------------------------------------------------------------------------
    @property
    def overflows(self) -> int:
        return self._overflows

    @property
    def callbacks(self) -> int:
        return self._callbacks

    @property
    def samples_captured(self) -> int:
        return self._samples

    @property
    def device_errors(self) -> int:
        return self._device_errors

    @property
    def reopen_attempts(self) -> int:
        return self._reopen_attempts

    def stats(self) -> MicrophoneStats:
        s = self._stream
        return MicrophoneStats(
            callbacks=self._callbacks,
            samples_captured=self._samples,
            overflows=self._overflows,
            overflow_gaps=self._overflow_gaps,
            gap_samples=self._gap_samples,
            device_errors=self._device_errors,
            reopen_attempts=self._reopen_attempts,
            reopens=self._reopens,
            max_callback_interval=self._max_interval,
            active=bool(s is not None and _stream_active(s)),
        )

    @property
    def error(self) -> BaseException | None:
        return self._error

    # -- Source --------------------------------------------------------------------------
    def start(self, sink: FrameSink) -> None:
        """Open the device (raising SourceError with advice if it cannot), start capture."""
        with self._lock:
            if self._sink is not None:
                raise RuntimeError("MicrophoneSource already started")
            self._sink = sink
        try:
            self._sd = import_sounddevice()
            self._abort_exc = self._sd.CallbackAbort
            info = self._resolve(self.device)
            self._check_format(info)
            self.device_info = info
            self.description = f"microphone {info.name!r} ({info.hostapi}), {self.format}"
            self._open_and_start(info)
        except BaseException:
            self._sink = None
            raise
        self._monitor = threading.Thread(
            target=self._monitor_loop, name="mic-monitor", daemon=True
        )
        self._monitor.start()

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()
        m = self._monitor
        if m is None:
            self._finish()
        elif m is not threading.current_thread():
            m.join()

    def wait(self, timeout: float | None = None) -> bool:
        return self._done.wait(timeout)

    # -- the PortAudio callback ----------------------------------------------------------
    def _callback(self, indata: Any, frames: int, time_info: Any, status: Any) -> None:
        now = self._clock()
        try:
            if status:
                self._on_status(frames, time_info, status)
            else:
                adc = time_info.inputBufferAdcTime
                self._next_adc = adc + frames / self.format.sample_rate if adc > 0 else 0.0
            self._sink.write(memoryview(indata))  # type: ignore[union-attr]
        except Exception as e:  # the sink failed (e.g. ring closed): end capture
            self._callback_error = e
            self._wake.set()
            raise self._abort_exc from e
        self._callbacks += 1
        self._samples += frames
        if self._last_cb:
            interval = now - self._last_cb
            if interval > self._max_interval:
                self._max_interval = interval
        self._last_cb = now

    def _on_status(self, frames: int, time_info: Any, status: Any) -> None:
        adc = time_info.inputBufferAdcTime
        rate = self.format.sample_rate
        if status.input_overflow:
            self._overflows += 1
            if adc > 0 and self._next_adc > 0:
                missing = round((adc - self._next_adc) * rate)
                if missing >= frames:
                    self._overflow_gaps += 1
                    self._gap_samples += missing
                    self._sink.gap(missing)  # type: ignore[union-attr]
        self._next_adc = adc + frames / rate if adc > 0 else 0.0

    def _on_finished(self) -> None:
        self._finished.set()
        self._wake.set()

    # -- opening -------------------------------------------------------------------------
    def _resolve(self, spec: int | str | None) -> DeviceInfo:
        assert self._sd is not None
        with PORTAUDIO_LOCK:
            return pick_device(input_devices(self._sd), spec)

    def _check_format(self, info: DeviceInfo) -> None:
        sd = self._sd
        assert sd is not None
        fmt = self.format
        try:
            with PORTAUDIO_LOCK:
                sd.check_input_settings(
                    device=info.index,
                    samplerate=fmt.sample_rate,
                    channels=fmt.channels,
                    dtype=PORTAUDIO_DTYPES[fmt.sample_type],
                )
            return
        except (sd.PortAudioError, ValueError) as e:
            reason = str(e)
        channels = min(fmt.channels, max(1, info.max_input_channels))

        def ok(rate: int, dtype: str) -> bool:
            try:
                sd.check_input_settings(
                    device=info.index, samplerate=rate, channels=channels, dtype=dtype
                )
            except (sd.PortAudioError, ValueError):
                return False
            return True

        with PORTAUDIO_LOCK:
            table = supported_formats(ok)
        limit = ""
        if fmt.channels > info.max_input_channels:
            limit = f" It has at most {info.max_input_channels} input channel(s)."
        raise SourceError(
            f"audio input device {info.name!r} (index {info.index}, {info.hostapi}) cannot "
            f"capture {fmt}: {reason}.{limit} {describe_supported(table, channels)}. Request "
            "one of these formats, or choose another device."
        )

    def _open(self, info: DeviceInfo) -> Any:
        sd = self._sd
        assert sd is not None
        self._finished.clear()
        with PORTAUDIO_LOCK:
            return sd.RawInputStream(
                device=info.index,
                samplerate=self.format.sample_rate,
                channels=self.format.channels,
                dtype=PORTAUDIO_DTYPES[self.format.sample_type],
                blocksize=self.blocksize,
                latency=self.latency,
                callback=self._callback,
                finished_callback=self._on_finished,
            )

    def _open_and_start(self, info: DeviceInfo) -> None:
        sd = self._sd
        assert sd is not None
        try:
            stream = self._open(info)
        except (sd.PortAudioError, ValueError) as e:
            raise SourceError(f"cannot open audio input device {info.name!r}: {e}") from e
        self._start_stream(stream)

    def _start_stream(self, stream: Any) -> None:
        self._last_cb = 0.0
        self._next_adc = 0.0
        self._stream = stream
        self._stream_started_at = self._clock()
        if not self._accounted_until:
            self._accounted_until = self._stream_started_at
        stream.start()

    # -- the monitor thread --------------------------------------------------------------
    def _event(self, msg: str) -> None:
        log.warning("%s", msg)
        if self.on_event is not None:
            try:
                self.on_event(msg)
            except Exception:  # a reporting hook must not kill capture
                log.exception("on_event hook failed")

    def _lost_reason(self) -> str | None:
        s = self._stream
        if s is None:
            return "no stream"
        if self._finished.is_set():
            return "the stream stopped unexpectedly"
        if not _stream_active(s):
            return "the stream is no longer active"
        now = self._clock()
        if self._last_cb:
            if now - self._last_cb > self.stall_timeout:
                return f"no audio for {now - self._last_cb:.1f} s"
        elif now - self._stream_started_at > self.startup_timeout:
            return f"no audio within {self.startup_timeout:g} s of opening"
        return None

    def _monitor_loop(self) -> None:
        poll = max(0.01, min(0.25, self.stall_timeout / 4))
        try:
            while not self._stopping.is_set():
                self._wake.wait(poll)
                self._wake.clear()
                if self._stopping.is_set():
                    break
                if self._callback_error is not None:
                    self._error = self._callback_error
                    self._event(f"microphone capture ended: sink failed: {self._error!r}")
                    break
                reason = self._lost_reason()
                if reason is not None and not self._recover(reason):
                    break
        except BaseException as e:  # pragma: no cover - defensive
            self._error = e
            log.exception("microphone monitor failed")
        finally:
            self._finish()

    def _close_stream(self) -> None:
        s, self._stream = self._stream, None
        if s is None:
            return
        try:
            with PORTAUDIO_LOCK:
                s.abort(ignore_errors=True)
                s.close(ignore_errors=True)
        except Exception as e:  # a dead device may fail to close
            log.debug("closing the microphone stream failed: %r", e)

    def _pause(self, seconds: float) -> bool:
        """Wait before a retry; False if stop() was called meanwhile."""
        if self._sleep is not None:
            self._sleep(seconds)
        else:
            self._stopping.wait(seconds)
        return not self._stopping.is_set()

    def _recover(self, reason: str) -> bool:
        """Reopen the lost device; True once capturing again, False to end capture."""
        sd = self._sd
        assert sd is not None
        self._device_errors += 1
        t_lost = max(self._last_cb, self._accounted_until)
        name = self.device_info.name if self.device_info else repr(self.device)
        self._close_stream()
        if not self.reopen:
            self._error = SourceError(f"audio input device {name!r} lost: {reason}")
            self._event(f"microphone {name!r} lost ({reason}); not reopening")
            return False
        # the uplink's backoff (uplink/policy.py) without jitter: one device, nobody to
        # stampede with, and the delays stay predictable for the status line
        backoff = Backoff(BackoffConfig(base=self.backoff_initial, cap=self.backoff_max,
                                        jitter=0.0), random.Random())
        while True:
            delay = backoff.next_delay()
            attempt = backoff.attempt
            self._event(
                f"microphone {name!r} lost ({reason}); reopening in {delay:.2f} s "
                f"(attempt {attempt})"
                if attempt == 1
                else f"microphone {name!r}: retrying in {delay:.2f} s (attempt {attempt})"
            )
            if not self._pause(delay):
                return False
            self._reopen_attempts += 1
            try:
                if self.rescan_on_reopen:
                    rescan_devices()
                info = self._find_again()
                stream = self._open(info)
            except (SourceError, sd.PortAudioError, ValueError, OSError) as e:
                reason = f"reopen failed: {e}"
                continue
            if self._stopping.is_set():
                self._stream = stream
                return False
            t_resume = self._clock()
            missing = max(0, round((t_resume - t_lost) * self.format.sample_rate))
            if missing:
                self._gap_samples += missing
                self._sink.gap(missing)  # type: ignore[union-attr]
            self._accounted_until = t_resume
            self.device_info = info
            try:
                self._start_stream(stream)
            except (sd.PortAudioError, OSError) as e:
                self._close_stream()
                t_lost = t_resume
                reason = f"restart failed: {e}"
                continue
            self._reopens += 1
            self._event(
                f"microphone {info.name!r} back after {t_resume - t_lost:.2f} s; recorded a gap "
                f"of {missing} samples"
            )
            return True

    def _find_again(self) -> DeviceInfo:
        assert self._sd is not None
        with PORTAUDIO_LOCK:
            devices = input_devices(self._sd)
        if self.device_info is not None:
            for d in devices:
                if d.name == self.device_info.name:
                    return d
        return pick_device(devices, self.device)

    def _finish(self) -> None:
        self._close_stream()
        sink, self._sink = self._sink, None
        if sink is not None:
            try:
                sink.close()
            except Exception as e:
                if self._error is None:
                    self._error = e
        self._done.set()


def _stream_active(stream: Any) -> bool:
    try:
        return bool(stream.active)
    except Exception:  # PortAudioError from a dead stream
        return False

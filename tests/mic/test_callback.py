"""The callback, the overflow rule and the reopen loop, driven by a fake sounddevice.

No audio stack here: fake clock, fake sleep, fake streams — so the backoff schedule and the
gap arithmetic are checked exactly.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

import capture.microphone as micmod
from capture.microphone import (
    MicrophoneSource,
    describe_supported,
    supported_formats,
)
from capture.source import SourceError

from .conftest import RecordingSink

RATE = 16_000
BLOCK = 320


class PortAudioError(Exception):
    pass


class CallbackAbort(Exception):
    pass


@dataclass
class Status:
    input_overflow: bool = False

    def __bool__(self) -> bool:
        return self.input_overflow


@dataclass
class TimeInfo:
    inputBufferAdcTime: float  # noqa: N815 (PortAudio's name)


class FakeStream:
    def __init__(self, callback: Any, finished_callback: Any) -> None:
        self.callback = callback
        self.finished_callback = finished_callback
        self.active = False
        self.closed = False

    def start(self) -> None:
        self.active = True

    def abort(self, ignore_errors: bool = True) -> None:
        self.active = False

    def close(self, ignore_errors: bool = True) -> None:
        self.active = False
        self.closed = True

    def lose_device(self) -> None:
        self.active = False
        self.finished_callback()


class FakeSD:
    """Enough of the sounddevice module for MicrophoneSource."""

    PortAudioError = PortAudioError
    CallbackAbort = CallbackAbort

    def __init__(self) -> None:
        self.streams: list[FakeStream] = []
        self.open_failures = 0  # the next N RawInputStream() calls fail
        self.devices = [
            {"index": 0, "name": "Fake USB Mic", "max_input_channels": 1, "hostapi": 0,
             "default_samplerate": 48000.0},
        ]

    def query_devices(self, kind: str | None = None) -> Any:
        if kind == "input":
            return self.devices[0]
        return self.devices

    def query_hostapis(self) -> list[dict[str, str]]:
        return [{"name": "Fake"}]

    def check_input_settings(self, **kw: Any) -> None:
        if kw["channels"] > 1:
            raise PortAudioError("Invalid number of channels")

    def RawInputStream(self, **kw: Any) -> FakeStream:  # noqa: N802 (sounddevice's name)
        if self.open_failures:
            self.open_failures -= 1
            raise PortAudioError("Error opening RawInputStream: Device unavailable")
        s = FakeStream(kw["callback"], kw["finished_callback"])
        self.streams.append(s)
        return s


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []
        self.lock = threading.Lock()

    def __call__(self) -> float:
        with self.lock:
            return self.now

    def sleep(self, seconds: float) -> None:
        with self.lock:
            self.sleeps.append(round(seconds, 6))
            self.now += seconds


@pytest.fixture
def fake_sd(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeSD]:
    sd = FakeSD()
    monkeypatch.setattr(micmod, "import_sounddevice", lambda: sd)
    yield sd


def feed(stream: FakeStream, n: int, adc: float, *, overflow: bool = False) -> None:
    stream.callback(bytes(2 * n), n, TimeInfo(adc), Status(overflow))


def wait_event(q: queue.Queue[str], needle: str) -> str:
    while True:
        msg = q.get(timeout=5)
        if needle in msg:
            return msg


def test_callback_writes_blocks_and_counts(fake_sd: FakeSD) -> None:
    src = MicrophoneSource(device="usb", clock=FakeClock())
    sink = RecordingSink(2)
    src.start(sink)
    s = fake_sd.streams[0]
    for i in range(3):
        feed(s, BLOCK, 5.0 + i * BLOCK / RATE)
    src.stop()
    assert sink.ops == [("audio", 3 * BLOCK * 2)] and sink.closed and s.closed
    st = src.stats()
    assert (st.callbacks, st.samples_captured, st.overflows) == (3, 3 * BLOCK, 0)


def test_overflow_with_an_adc_jump_records_the_gap(fake_sd: FakeSD) -> None:
    src = MicrophoneSource(device="usb", clock=FakeClock())
    sink = RecordingSink(2)
    src.start(sink)
    s = fake_sd.streams[0]
    feed(s, BLOCK, 5.0)
    feed(s, BLOCK, 5.02 + 0.1, overflow=True)  # 100 ms (1600 samples) missing
    feed(s, BLOCK, 5.14 + 0.005, overflow=True)  # 5 ms: less than a block, not measurable
    feed(s, BLOCK, 0.0, overflow=True)  # no ADC time: count only
    feed(s, BLOCK, 0.0)
    src.stop()
    assert sink.ops == [("audio", 640), ("gap", 1600), ("audio", 4 * 640)]
    st = src.stats()
    assert (st.overflows, st.overflow_gaps, st.gap_samples) == (3, 1, 1600)


def test_a_failing_sink_ends_capture_with_its_error(fake_sd: FakeSD) -> None:
    class Broken(RecordingSink):
        def write(self, block: bytes | bytearray | memoryview) -> None:
            raise RuntimeError("ring closed")

    src = MicrophoneSource(device="usb", clock=FakeClock())
    sink = Broken(2)
    src.start(sink)
    with pytest.raises(CallbackAbort):
        feed(fake_sd.streams[0], BLOCK, 1.0)
    assert src.wait(5)
    assert isinstance(src.error, RuntimeError) and sink.closed


def test_reopen_backs_off_exponentially_and_records_the_outage(fake_sd: FakeSD) -> None:
    clock = FakeClock()
    events: queue.Queue[str] = queue.Queue()
    src = MicrophoneSource(
        device="usb",
        clock=clock,
        sleep=clock.sleep,
        on_event=events.put,
        backoff_initial=0.5,
        backoff_max=2.0,
        rescan_on_reopen=False,
    )
    sink = RecordingSink(2)
    src.start(sink)
    first = fake_sd.streams[0]
    feed(first, BLOCK, 5.0)
    fake_sd.open_failures = 3
    first.lose_device()
    back = wait_event(events, "back after")
    assert clock.sleeps == [0.5, 1.0, 2.0, 2.0]
    assert first.closed and len(fake_sd.streams) == 2 and fake_sd.streams[1].active
    # the outage is the fake time slept: 5.5 s -> 88000 samples, before any new audio
    assert sink.ops == [("audio", 640), ("gap", 88_000)]
    assert "recorded a gap of 88000 samples" in back
    feed(fake_sd.streams[1], BLOCK, 100.0)
    src.stop()
    assert sink.ops[-1] == ("audio", 640) and sink.closed
    st = src.stats()
    assert (st.device_errors, st.reopen_attempts, st.reopens) == (1, 4, 1)


def test_stop_during_backoff_ends_promptly(fake_sd: FakeSD) -> None:
    events: queue.Queue[str] = queue.Queue()
    src = MicrophoneSource(
        device="usb",
        on_event=events.put,
        backoff_initial=30.0,
        backoff_max=60.0,
        rescan_on_reopen=False,
    )
    sink = RecordingSink(2)
    src.start(sink)
    fake_sd.streams[0].lose_device()
    wait_event(events, "reopening in 30.00 s")
    src.stop()  # interrupts the 30 s wait
    assert src.wait(0) and sink.closed


def test_format_error_summary() -> None:
    table = supported_formats(lambda rate, dt: rate >= 44100 or dt == "int16")
    assert table[8000] == ["int16"] and table[48000] == ["int16", "int24", "int32", "float32"]
    text = describe_supported(table, 2)
    assert text == (
        "Supported with 2 channels: 8000, 16000, 22050, 32000 Hz x int16; "
        "44100, 48000, 96000 Hz x int16, int24, int32, float32"
    )
    assert describe_supported({}, 1).startswith("None of the common rates")


def test_format_check_with_fake_device(fake_sd: FakeSD) -> None:
    with pytest.raises(SourceError, match="at most 1 input channel") as e:
        MicrophoneSource(device="usb", channels=2).start(RecordingSink(4))
    assert "'Fake USB Mic' (index 0, Fake)" in str(e.value)


def test_options_are_validated() -> None:
    with pytest.raises(ValueError):
        MicrophoneSource(latency="fast")
    with pytest.raises(ValueError):
        MicrophoneSource(sample_rate=1000)  # AudioFormatError
    assert MicrophoneSource(blocksize=1024).blocksize == 1024

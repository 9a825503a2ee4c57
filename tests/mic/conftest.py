"""Fixtures for the microphone tests: a real PulseAudio virtual mic and a recording sink.

The virtual mic is session-scoped (one private pulseaudio for all tests here). If it cannot
start, the tests are skipped with the reason — except under CI=true, where they fail: CI
must exercise the real audio stack.
"""

from __future__ import annotations

import os
import subprocess
import threading
from collections.abc import Callable, Iterator

import pytest

from capture.source import SourceError
from tools.virtual_mic import ALSA_DEVICE, VirtualMic, VirtualMicError


def _unavailable(reason: str) -> None:
    msg = f"real audio stack unavailable: {reason}"
    if os.environ.get("CI", "").strip().lower() == "true":
        pytest.fail(msg + " (CI=true: the microphone tests must run)", pytrace=False)
    pytest.skip(msg)


@pytest.fixture(scope="session")
def virtual_mic() -> Iterator[VirtualMic]:
    vm = VirtualMic(format_probe_device=True)
    try:
        vm.start()
    except (VirtualMicError, OSError, subprocess.SubprocessError) as e:
        _unavailable(f"cannot start the PulseAudio virtual mic: {e}")
    try:
        vm.activate()  # before PortAudio initialises, or re-scanned if it already has
        from capture.microphone import list_input_devices

        try:
            names = [d.name for d in list_input_devices()]
        except SourceError as e:
            _unavailable(str(e))
        if ALSA_DEVICE not in names:
            _unavailable(
                f"PortAudio does not list {ALSA_DEVICE!r} (found {names}); is "
                "libasound2-plugins (ALSA's pulse plugin) installed?"
            )
        yield vm
    finally:
        vm.stop()


@pytest.fixture
def mic(virtual_mic: VirtualMic) -> Iterator[VirtualMic]:
    """The session's virtual mic, with its source present (tests may unload it)."""
    if not virtual_mic.source_loaded:
        virtual_mic.load_source()
    yield virtual_mic
    if not virtual_mic.source_loaded:
        virtual_mic.load_source()


class RecordingSink:
    """A FrameSink that keeps everything, in order, and lets tests wait for conditions.

    ``ops`` is the sequence of ("audio", nbytes) / ("gap", nsamples) calls; ``audio`` the
    concatenated bytes.
    """

    def __init__(self, block_align: int) -> None:
        self.block_align = block_align
        self.audio = bytearray()
        self.ops: list[tuple[str, int]] = []
        self.closed = False
        self.errors: list[str] = []
        self._cond = threading.Condition()

    def write(self, block: bytes | bytearray | memoryview) -> None:
        with self._cond:
            n = len(block)
            if n % self.block_align:
                self.errors.append(f"partial sample frame: {n} bytes")
            if self.closed:
                self.errors.append("write after close")
            self.audio += block
            if self.ops and self.ops[-1][0] == "audio":
                self.ops[-1] = ("audio", self.ops[-1][1] + n)
            else:
                self.ops.append(("audio", n))
            self._cond.notify_all()

    def gap(self, nsamples: int) -> None:
        with self._cond:
            self.ops.append(("gap", nsamples))
            self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self.closed = True
            self._cond.notify_all()

    @property
    def samples(self) -> int:
        with self._cond:
            return len(self.audio) // self.block_align

    def gaps(self) -> list[int]:
        with self._cond:
            return [n for kind, n in self.ops if kind == "gap"]

    def wait_for(self, pred: Callable[[RecordingSink], bool], timeout: float, what: str) -> None:
        with self._cond:
            if not self._cond.wait_for(lambda: pred(self), timeout):
                raise AssertionError(f"timed out after {timeout} s waiting for {what}")

    def wait_samples(self, n: int, timeout: float) -> None:
        self.wait_for(lambda s: len(s.audio) // s.block_align >= n, timeout, f"{n} samples")


@pytest.fixture
def make_sink() -> Callable[[int], RecordingSink]:
    return RecordingSink

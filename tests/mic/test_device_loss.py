"""The microphone disappears mid-capture and comes back: reported, reopened, gap recorded."""

from __future__ import annotations

import queue
import time
from pathlib import Path

import pytest

from capture.microphone import MicrophoneSource
from tools.virtual_mic import ALSA_DEVICE, VirtualMic

from .conftest import RecordingSink
from .signals import best_alignment, chirp, decode, write_wav

RATE = 16_000


def _wait_event(events: queue.Queue[str], needle: str, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    seen: list[str] = []
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"no event containing {needle!r} within {timeout} s: {seen}")
        try:
            msg = events.get(timeout=left)
        except queue.Empty:
            continue
        seen.append(msg)
        if needle in msg:
            return msg


def test_device_loss_is_reported_reopened_and_recorded_as_gap(
    mic: VirtualMic, tmp_path: Path
) -> None:
    events: queue.Queue[str] = queue.Queue()
    src = MicrophoneSource(
        device=ALSA_DEVICE,
        sample_rate=RATE,
        on_event=events.put,
        backoff_initial=0.1,
        backoff_max=0.4,
    )
    sink = RecordingSink(src.format.block_align)
    t_start = time.monotonic()
    src.start(sink)
    try:
        sink.wait_samples(RATE // 2, timeout=5)

        t_unload = time.monotonic()
        mic.unload_source()
        lost = _wait_event(events, "lost", timeout=5)
        assert ALSA_DEVICE in lost
        _wait_event(events, "attempt 3", timeout=5)  # two reopen attempts have failed
        assert src.reopen_attempts >= 2
        assert not src.stats().active
        samples_while_away = sink.samples

        t_load = time.monotonic()
        mic.load_source()
        back = _wait_event(events, "back after", timeout=10)
        t_back = time.monotonic()
        assert "recorded a gap of" in back

        # the reopened stream is the real device again: it hears what is played
        sink.wait_samples(samples_while_away + RATE // 10, timeout=5)
        n_before_play = sink.samples
        ref = chirp(RATE, seconds=0.5)
        mic.play(write_wav(tmp_path / "chirp.wav", ref, RATE), wait=True, timeout=10)
        sink.wait_samples(sink.samples + int(0.4 * RATE), timeout=5)
    finally:
        src.stop()
    t_stop = time.monotonic()

    assert sink.closed and not sink.errors
    stats = src.stats()
    assert stats.device_errors == 1 and stats.reopens == 1
    assert stats.reopen_attempts >= 3

    # exactly one gap, between audio before and audio after
    kinds = [k for k, _ in sink.ops]
    assert kinds == ["audio", "gap", "audio"], sink.ops
    (gap,) = sink.gaps()
    assert stats.gap_samples == gap
    gap_s = gap / RATE
    assert gap_s >= (t_load - t_unload) - 0.1, (gap_s, t_load - t_unload)
    assert gap_s <= (t_back - t_unload) + 0.3, (gap_s, t_back - t_unload)
    # audio + gap keep the timeline aligned with the wall clock
    timeline_s = (sink.samples + gap) / RATE
    assert abs(timeline_s - (t_stop - t_start)) < 0.4, (timeline_s, t_stop - t_start)

    audio_after = bytes(sink.audio)[n_before_play * src.format.block_align :]
    captured = decode(audio_after, src.format.sample_type, 1)[:, 0]
    _, corr = best_alignment(ref, captured)
    assert corr > 0.9, corr


def test_without_reopen_the_loss_ends_capture(mic: VirtualMic) -> None:
    events: queue.Queue[str] = queue.Queue()
    src = MicrophoneSource(device=ALSA_DEVICE, on_event=events.put, reopen=False)
    sink = RecordingSink(src.format.block_align)
    src.start(sink)
    try:
        sink.wait_samples(RATE // 10, timeout=5)
        mic.unload_source()
        assert src.wait(5), "capture did not end after the device vanished"
    finally:
        src.stop()
    assert sink.closed
    assert src.error is not None and "lost" in str(src.error)
    _wait_event(events, "not reopening", timeout=1)


@pytest.mark.parametrize("stall_timeout", [0.5])
def test_a_silent_stall_counts_as_loss(mic: VirtualMic, stall_timeout: float) -> None:
    """A suspended source delivers nothing and raises no error: the stall detector reopens."""
    events: queue.Queue[str] = queue.Queue()
    src = MicrophoneSource(
        device=ALSA_DEVICE,
        on_event=events.put,
        stall_timeout=stall_timeout,
        startup_timeout=1.0,
        backoff_initial=0.1,
        backoff_max=0.2,
    )
    sink = RecordingSink(src.format.block_align)
    src.start(sink)
    try:
        sink.wait_samples(RATE // 10, timeout=5)
        mic.pactl("suspend-source", "echopanel_mic", "1")
        try:
            _wait_event(events, "no audio", timeout=5)
        finally:
            mic.pactl("suspend-source", "echopanel_mic", "0")
        _wait_event(events, "back after", timeout=10)
        n = sink.samples
        sink.wait_samples(n + RATE // 5, timeout=5)
    finally:
        src.stop()
    assert src.stats().device_errors >= 1
    assert sum(sink.gaps()) > stall_timeout * RATE * 0.8

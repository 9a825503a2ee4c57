"""write_undelivered: the ring's unacknowledged span as one WAV, gaps as silence, positioned."""

from __future__ import annotations

from pathlib import Path

import pytest

from capture.undelivered import default_path, write_undelivered
from capture.wavfile import read_wav
from uplink.audio import AudioFormat, SampleType
from uplink.ring import OverflowPolicy, RingBuffer

FMT = AudioFormat(8000, 1, SampleType.INT16)  # 4-sample frames below: 8 bytes each


def frame(k: int, samples: int = 4) -> bytes:
    return bytes([k % 256, 0]) * samples


def test_held_audio_gaps_and_evicted_frames_line_up_from_the_first_unacked_sample(
    tmp_path: Path,
) -> None:
    ring = RingBuffer(FMT, 4, 0.0015, OverflowPolicy.DROP_OLDEST)  # 3 slots
    for k in range(3):
        ring.push(frame(k))
    ring.ack(1, 4)  # frame 0 delivered
    ring.push_gap(5)  # a source gap (seq 3, samples 12..17)
    ring.push(frame(4))  # evicts frame 1 (into the front gap): it was never delivered
    ring.push(frame(5, samples=2))  # a short last frame; evicts frame 2
    assert ring.first_seq() == 1

    kept = write_undelivered(ring, lambda start: tmp_path / f"u-{start}.wav")

    assert kept is not None
    assert kept.path == tmp_path / "u-4.wav" and kept.start_sample == 4
    fmt, data = read_wav(kept.path)
    assert fmt == FMT
    # evicted frames 1 and 2 are audio the ring no longer holds: silence, like the server's gap
    want = bytes(8) + bytes(8) + bytes(10) + frame(4) + frame(5, samples=2)
    assert data == want
    assert kept.samples == len(want) // 2


def test_nothing_held_writes_nothing(tmp_path: Path) -> None:
    ring = RingBuffer(FMT, 4, 1.0)
    ring.push(frame(1))
    ring.ack(1, 4)
    assert write_undelivered(ring, lambda start: tmp_path / "never.wav") is None
    assert not (tmp_path / "never.wav").exists()


def test_a_long_span_is_read_in_runs_and_kept_whole(tmp_path: Path) -> None:
    ring = RingBuffer(FMT, 4, 10.0, OverflowPolicy.BLOCK)
    for k in range(2000):
        ring.push(frame(k))
    ring.ack(7, 28)
    kept = write_undelivered(ring, lambda start: tmp_path / "u.wav")
    assert kept is not None and kept.start_sample == 28
    assert read_wav(kept.path)[1] == b"".join(frame(k) for k in range(7, 2000))


@pytest.mark.parametrize("tee,want", [
    (None, "undelivered-s-1-from-480.wav"),
    ("/rec/tee.wav", "/rec/tee.undelivered-s-1-from-480.wav"),
])
def test_default_path_is_beside_the_tee_or_here_and_names_the_position(
    tee: str | None, want: str
) -> None:
    assert default_path("s-1", tee, 480) == Path(want)

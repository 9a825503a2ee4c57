"""The capture's end-of-run accounting: what counts as lost audio (exit status 4)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from capture.cli import Loss, overflow_policy, token_from_env, unmeasured_overflows
from capture.cli import build_parser as parser
from uplink.ring import OverflowPolicy


def test_nothing_lost_is_not_a_loss() -> None:
    assert not Loss(0, 0, 0, 0).anything


def test_each_kind_of_loss_is_named_with_its_seconds() -> None:
    loss = Loss(ring_frames=50, ring_samples=16_000, source_gaps=2, source_samples=8_000,
                unmeasured_overflows=3)
    assert loss.anything and loss.samples == 24_000
    assert loss.describe(16_000) == (
        "audio was lost: 1.50 s in all — 50 frames (1.00 s) dropped while the buffer was full; "
        "2 gaps (0.50 s) reported by the source; 3 input overflows of unknown length (not in "
        "the stored timeline) (gaps are stored as silence and listed by the server)")


def test_overflows_of_unknown_length_alone_are_a_loss() -> None:
    loss = Loss(0, 0, 0, 0, unmeasured_overflows=1)
    assert loss.anything
    assert loss.describe(16_000) == (
        "audio was lost — 1 input overflows of unknown length (not in the stored timeline)")


@dataclass
class MicStats:
    overflows: int
    overflow_gaps: int


class Mic:
    def __init__(self, overflows: int, gaps: int) -> None:
        self._stats = MicStats(overflows, gaps)

    def stats(self) -> MicStats:
        return self._stats


def test_only_overflows_without_a_measured_gap_are_counted_apart() -> None:
    assert unmeasured_overflows(Mic(5, 3)) == 2  # type: ignore[arg-type]
    assert unmeasured_overflows(object()) == 0  # type: ignore[arg-type]  # a file


@pytest.mark.parametrize("argv,policy", [
    (["--input", "f.wav"], OverflowPolicy.BLOCK),
    (["--input", "f.wav", "--speed", "50"], OverflowPolicy.BLOCK),
    (["--input", "f.wav", "--speed", "0"], OverflowPolicy.BLOCK),
    (["--input", "f.wav", "--overflow", "drop-oldest"], OverflowPolicy.DROP_OLDEST),
    ([], OverflowPolicy.DROP_OLDEST),
])
def test_a_file_blocks_at_any_speed_unless_told_to_drop(argv: list[str],
                                                        policy: OverflowPolicy) -> None:
    assert overflow_policy(parser().parse_args(argv)) is policy


@pytest.mark.parametrize("environ,token", [
    ({}, None),
    ({"ECHOPANEL_UPLINK_TOKEN": "mine"}, "mine"),
    ({"ECHOPANEL_TOKEN": "shared-one"}, "shared-one"),
    ({"ECHOPANEL_UPLINK_TOKEN": "mine", "ECHOPANEL_TOKEN": "a,b"}, "mine"),
])
def test_the_capture_token_has_its_own_variable(environ: dict[str, str],
                                                 token: str | None) -> None:
    assert token_from_env(environ) == token


def test_a_server_token_list_is_never_sent_by_a_capture() -> None:
    with pytest.raises(ValueError, match="ECHOPANEL_UPLINK_TOKEN"):
        token_from_env({"ECHOPANEL_TOKEN": "tok1,tok2"})

"""The capture's spool glue (capture/spool.py, capture/cli.py): dead time, loss line,
default directory, --list-spool."""

from __future__ import annotations

from pathlib import Path

from capture.cli import Loss, build_parser, spool_directory, spool_sync
from capture.spool import ResumeSink, dead_time_samples, default_spool_dir, list_spool
from uplink.audio import AudioFormat, SampleType
from uplink.ring import RestoredSpan
from uplink.spool import Recovered, SpoolMeta, SyncMode

MONO16 = AudioFormat(16_000, 1, SampleType.INT16)


def recovered(wall_time: float | None, end_sample: int) -> Recovered:
    meta = SpoolMeta("s-1", 16_000, 1, "int16", 320, 100, 0.0, wall_time=wall_time)
    span = RestoredSpan(0, 0, 0, [], 0, end_sample, wall_time)
    return Recovered(meta, span, 0, 0, 0)


class Sink:
    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []

    def write(self, block: bytes | bytearray | memoryview) -> None:
        self.calls.append(("write", len(block)))

    def gap(self, nsamples: int) -> None:
        self.calls.append(("gap", nsamples))

    def close(self) -> None:
        self.calls.append(("close", 0))


def test_dead_time_is_measured_from_the_last_spooled_sample() -> None:
    rec = recovered(1000.0, 32_000)  # the last sample was captured at 1002.0
    assert dead_time_samples(rec, 1005.5, 16_000) == 56_000
    assert dead_time_samples(rec, 1001.0, 16_000) == 0  # never negative
    assert dead_time_samples(recovered(None, 32_000), 1005.5, 16_000) == 0


def test_resume_sink_pushes_the_gap_before_the_first_block_only() -> None:
    inner = Sink()
    # the first block (0.1 s) arrives at 1003.1: it began at 1003.0, one second after the end
    sink = ResumeSink(inner, recovered(1000.0, 32_000), 16_000, 2, clock=lambda: 1003.1)
    sink.write(bytes(3200))
    sink.write(bytes(640))
    sink.close()
    assert inner.calls == [("gap", 16_000), ("write", 3200), ("write", 640), ("close", 0)]
    assert sink.dead.samples == 16_000


def test_the_loss_line_names_the_dead_time() -> None:
    loss = Loss(0, 0, 0, 0, dead_gaps=1, dead_samples=24_000, earlier_samples=320)
    text = loss.describe(16_000)
    assert "1.52 s in all" in text
    assert "1.50 s while the capture was not running (resumed from its spool)" in text
    assert "0.02 s in gaps from before the restart" in text
    assert loss.anything


def test_default_spool_is_per_stream_for_the_microphone_and_off_for_files(tmp_path: Path) -> None:
    parse = build_parser().parse_args
    root = default_spool_dir()
    assert spool_directory(parse([])) == root / "unnamed"
    assert spool_directory(parse(["--stream-id", "abc"])) == root / "abc"
    assert spool_directory(parse(["--input", "x.wav"])) is None
    assert spool_directory(parse(["--input", "x.wav", "--spool", str(tmp_path)])) == tmp_path
    assert spool_directory(parse(["--no-spool"])) is None
    assert spool_sync(parse([])).interval == 1.0
    assert spool_sync(parse(["--input", "x.wav"])).mode is SyncMode.NONE
    assert spool_sync(parse(["--spool-sync", "always"])).mode is SyncMode.ALWAYS
    env = {"XDG_DATA_HOME": str(tmp_path)}
    assert default_spool_dir(env) == tmp_path / "echopanel" / "spool"


def test_list_spool_of_an_empty_directory(tmp_path: Path) -> None:
    assert list_spool(tmp_path) == [f"{tmp_path}: empty (nothing pending)"]

"""Smoke test of the benchmark suite (tools/bench): every benchmark runs end to end in a tiny
configuration against the real servers on loopback and writes its results.

No timing assertions: performance is measured by `python -m tools.bench` and reported as ratios
to the baseline (docs/performance.md), never asserted in the test suite. What is checked is that
the suite still works: it completes, every benchmark produced its rows, the JSON parses, and the
correctness checks built into the benchmarks (stored audio identical, no lost frames at a tiny
load) hold.
"""

from __future__ import annotations

import json
from pathlib import Path

from tools.bench.__main__ import BENCHMARKS, main


def test_every_benchmark_runs_in_smoke_mode(tmp_path: Path) -> None:
    out = tmp_path / "results"
    assert main(["--mode", "smoke", "--results", str(out)]) == 0

    data = json.loads((out / "results.json").read_text())
    assert data["mode"] == "smoke"
    assert data["machine"]["nproc"] >= 1
    for name in BENCHMARKS:
        assert "error" not in data["results"][name], data["results"][name]
    benchmarks = {row["benchmark"].split()[1] for row in data["table"]}
    assert benchmarks == {"catch-up", "live", "capacity", "footprint", "restart"}

    results = data["results"]
    assert results["catchup"]["identical"] is True
    assert results["latency"]["identical"] is True
    for target in ("ours", "baseline"):
        steps = results["capacity"][target]["steps"]
        assert steps and steps[0]["frames_lost"] == 0 and steps[0]["frames_sent"] > 0
    soak = results["footprint"]["soak"]
    assert soak["identical"] is True and soak["faults"] >= 1
    model = results["restart"]["model"]["live"]
    assert model["new"]["recovery_s"]["n"] == 10 and model["new"]["unrecovered"] == 0
    assert model["new"]["down_for_good"]["times_opened"] >= 1  # the breaker still protects
    for policy in ("new", "old"):
        assert results["restart"]["real"][policy]["recovery_s"]["n"] == 1

    table = (out / "results.md").read_text()
    assert "| benchmark | metric | ours | baseline | ratio | target | met? |" in table

"""Smoke test of the scale-out benchmark (tools/bench/cluster.py): `--only cluster` runs end
to end in its tiny configuration (1 NATS node, 1 and 2 ingest processes, 4 streams) and the
correctness checks built into it hold: no frame lost at that load, the audio of the catch-up
and live runs read back over REST identical; the "own core" searches and the equal-load
steps ran. No timing assertions (docs/performance.md)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tools.bench.__main__ import main

if not os.environ.get("CI"):
    pytest.importorskip("nats")


def test_the_cluster_benchmark_runs_in_smoke_mode(tmp_path: Path) -> None:
    out = tmp_path / "results"
    assert main(["--mode", "smoke", "--only", "cluster", "--results", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())["results"]["cluster"]
    assert "error" not in results, results
    for nodes in ("1", "2"):
        steps = results["jetstream"][nodes]["steps"]
        assert steps and steps[0]["frames_lost"] == 0 and steps[0]["frames_sent"] > 0
        assert steps[0]["ingest_cpu"] > 0
    assert results["identical"] is True
    if len(os.sched_getaffinity(0)) >= 2:  # a core of its own, each side (affinity.py)
        own = results["own_core"]
        assert own["jetstream"]["steps"][0]["frames_lost"] == 0
        assert own["local"]["steps"], own
        assert own["jetstream_sync_always"]["steps"][0]["frames_lost"] == 0
        assert own["split"]["server"] and own["split"]["rest"]
    synced = results["sync_always"]  # NATS with sync_interval: always
    assert synced["identical"] is True and synced["capacity"]["steps"]
    equal = results["equal_load"]
    assert set(equal["steps"]) == {"1", "2"} and equal["per_node"] == 2
    assert all(step["frames_lost"] == 0 for step in equal["steps"].values())
    assert results["catchup_x_realtime"]["n"] == 1
    assert "| 7 scale-out |" in (out / "results.md").read_text()

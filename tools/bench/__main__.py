"""Run the benchmark suite: `python -m tools.bench [--mode quick|full] [--only ...]`.

Every benchmark runs our pipeline and the baseline (tools/bench/baseline.py) side by side,
on 127.0.0.1 only, each server a fresh subprocess with its own data directory (fsync on).
Results go to a new directory (default `bench-results/<time>-<mode>/`):

    results.md     machine, code state, mode, the table (ours, baseline, ratio, target, met?)
    results.json   the same plus every raw measurement (each repeat, each capacity step)

Modes (durations per benchmark; each benchmark has a hard time limit and stops by itself):

    quick (default, ~10 min)  shorter runs, fewer repeats: for development
    full  (~45 min)           the issue's settings: 60 s live run, 60 s client run, 30 s
                              capacity steps, 10-minute soak with a fault every 10 s
    smoke (seconds)           tiny configurations that only prove everything still runs

`--only listeners` runs the live-listener benchmark (tools/bench/listeners.py: durable →
listener latency, the uplink's ack p99 with 100 listeners against none, catch-up speed,
server memory per idle listener); optional like the spool one.

`--only spool` runs the optional spool benchmark (tools/bench/spool.py: client CPU and
callback timing with the write-ahead spool on and off); it is not part of the default run.

`--profile` adds py-spy profiles (if py-spy is installed in the venv) of the server under
capacity load and of the client at 48 kHz stereo, summarized to text in the results dir.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from types import FrameType
from typing import Any, get_args

from tools.bench import capacity, catchup, footprint, latency, listeners, profiling, restart
from tools.bench import cluster as cluster_bench
from tools.bench import spool as spool_bench
from tools.bench.report import Row, markdown_table, write_results
from tools.bench.servers import Target
from tools.bench.stats import cpu_jiffies, machine_activity, machine_facts
from tools.ingest_process import REPO_ROOT

BENCHMARKS = ("catchup", "latency", "capacity", "footprint", "restart")
# run only when named in --only (e.g. `--only spool`): not part of the default suite yet
OPTIONAL_BENCHMARKS = ("spool", "listeners", "cluster")

MODES: dict[str, dict[str, Any]] = {
    "quick": {
        "catchup": catchup.CatchupSettings(repeats=5),
        "latency": latency.LatencySettings(seconds=15.0, repeats=3),
        "capacity": capacity.CapacitySettings(step_seconds=8.0, start=100, budget_seconds=100.0),
        "footprint": footprint.FootprintSettings(
            client_seconds=15.0, client_warmup=3.0, client_repeats=3, idle_streams=200,
            idle_repeats=3, soak_seconds=90.0, soak_warmup=20.0),
        "restart": restart.RestartSettings(),
        "spool": spool_bench.SpoolSettings(seconds=30.0, warmup=3.0, repeats=1),
        "listeners": listeners.ListenerSettings(live_seconds=20.0, repeats=2),
    },
    "full": {
        "catchup": catchup.CatchupSettings(repeats=10),
        "latency": latency.LatencySettings(seconds=60.0, repeats=3),
        "capacity": capacity.CapacitySettings(step_seconds=30.0, start=100, budget_seconds=300.0),
        "footprint": footprint.FootprintSettings(
            client_seconds=60.0, client_warmup=5.0, client_repeats=3, idle_streams=500,
            idle_repeats=3, soak_seconds=600.0, soak_warmup=45.0),
        "restart": restart.RestartSettings(real_downs=(1.0, 2.0, 3.0, 5.0, 8.0)),
        "spool": spool_bench.SpoolSettings(seconds=60.0, warmup=5.0, repeats=3),
        "listeners": listeners.ListenerSettings(live_seconds=60.0, repeats=3),
    },
    "smoke": {
        "catchup": catchup.CatchupSettings(backlog_seconds=2.0, repeats=1, warmup=0),
        "latency": latency.LatencySettings(seconds=0.5, repeats=1),
        "capacity": capacity.CapacitySettings(step_seconds=1.0, start=4, max_streams=4,
                                              budget_seconds=30.0, workers=1,
                                              targets=("ours", "baseline")),
        "footprint": footprint.FootprintSettings(
            client_seconds=0.5, client_warmup=0.2, client_repeats=1, idle_streams=4,
            idle_repeats=1, idle_settle_seconds=0.2, soak_seconds=1.5, soak_fault_interval=1.0,
            soak_warmup=0.5),
        "restart": restart.RestartSettings(restarts=10, real_downs=(1.0,), profiles=("live",)),
        "spool": spool_bench.SpoolSettings(seconds=0.5, warmup=0.2, repeats=1),
        "listeners": listeners.ListenerSettings(live_seconds=1.0, repeats=1, listeners=10,
                                                backlog_seconds=5.0, idle_listeners=10),
    },
}

for _mode, _settings in cluster_bench.SETTINGS.items():  # --only cluster (docs/scale-out.md)
    MODES[_mode]["cluster"] = _settings

# Hard limits per benchmark (seconds), far above what the settings need: a hang is a failure.
LIMITS = {"quick": 900, "full": 3600, "smoke": 120}


class BenchTimeout(Exception):
    pass


@contextlib.contextmanager
def time_limit(seconds: int, what: str) -> Iterator[None]:
    """SIGALRM in the main thread: the benchmark unwinds and its servers are stopped."""

    def expired(signum: int, frame: FrameType | None) -> None:
        raise BenchTimeout(f"{what} exceeded its {seconds} s limit")

    old = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def code_state() -> dict[str, Any]:
    def git(*args: str) -> str:
        try:
            out = subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True,
                                 timeout=10)
            return out.stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            return "unknown"

    dirty = git("status", "--porcelain", "--", "uplink", "ingest_server", "capture")
    return {"commit": git("rev-parse", "--short", "HEAD"),
            "dirty": [line[3:] for line in dirty.splitlines()]}


def preamble(meta: dict[str, Any]) -> str:
    m, code = meta["machine"], meta["code"]
    dirty = ", ".join(code["dirty"]) if code["dirty"] else "none"
    act = "; ".join(f"{k} busy {v['busy_pct']}% steal {v['steal_pct']}%"
                    for k, v in meta.get("activity", {}).items()) or "—"
    return (f"# echopanel benchmark results ({meta['mode']} mode)\n\n"
            f"- started {meta['started']}, took {meta['elapsed_s']:.0f} s\n"
            f"- machine: {m['nproc']} CPUs ({m['cpu_model']}), {m['mem_total_gib']} GiB, "
            f"Linux {m['kernel']}, Python {m['python']}, websockets {m['websockets']}\n"
            f"- code: commit {code['commit']}, uncommitted changes in: {dirty}\n"
            f"- loopback only, fsync on; values are median [min–max] over the repeats\n"
            f"- machine activity during each benchmark (all CPUs, steal = hypervisor): {act}\n\n")


def run_profiles(settings: dict[str, Any], best: int, workdir: Path, out: Path,
                 log: Callable[[str], None]) -> dict[str, str]:
    """py-spy: the server under capacity load, and the 48 kHz stereo client."""
    if profiling.py_spy() is None:
        log("  py-spy is not installed: no profiles (pip install py-spy into the venv)")
        return {}
    done: dict[str, str] = {}
    n = max(best, 50)
    cap: capacity.CapacitySettings = settings["capacity"]
    raw = out / f"profile-server-{n}.txt"
    capacity.run_step("ours", n, cap, workdir, profile=raw)
    if raw.exists():
        summary = out / f"profile-server-{n}-summary.txt"
        summary.write_text(profiling.summarize(raw, rate=profiling.DEFAULT_RATE,
                                               seconds=max(1, round(cap.step_seconds - 1))))
        done["server"] = summary.name
    raw = out / "profile-client-48k.txt"
    fp: footprint.FootprintSettings = settings["footprint"]
    seconds = max(10.0, fp.client_seconds)
    footprint.profile_client(workdir, raw, seconds=seconds)
    if raw.exists():
        summary = out / "profile-client-48k-summary.txt"
        summary.write_text(profiling.summarize(raw, rate=footprint.PROFILE_RATE,
                                               seconds=max(1, round(seconds - 2.0))))
        done["client"] = summary.name
    return done


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mode", choices=sorted(MODES), default="quick")
    ap.add_argument("--only", default=",".join(BENCHMARKS),
                    help=f"comma-separated subset of {','.join(BENCHMARKS)} (default: all), "
                    f"or of the optional {','.join(OPTIONAL_BENCHMARKS)}")
    ap.add_argument("--results", type=Path, default=None,
                    help="results directory (default bench-results/<time>-<mode>)")
    ap.add_argument("--profile", action="store_true", help="also record py-spy profiles")
    ap.add_argument("--latency-seconds", type=float, help="live latency run length")
    ap.add_argument("--soak-seconds", type=float, help="soak length")
    ap.add_argument("--client-seconds", type=float, help="client CPU run length")
    ap.add_argument("--capacity-step-seconds", type=float, help="length of each capacity step")
    ap.add_argument("--capacity-budget", type=float, help="capacity search time per target")
    ap.add_argument("--capacity-targets",
                    help="comma-separated servers to search: ours, baseline, baseline-global, "
                    "ours-fsync, ours-nofsync (default: all but ours-nofsync)")
    args = ap.parse_args(argv)

    only = [b.strip() for b in args.only.split(",") if b.strip()]
    unknown = set(only) - set(BENCHMARKS) - set(OPTIONAL_BENCHMARKS)
    if unknown:
        ap.error(f"unknown benchmark(s): {', '.join(sorted(unknown))}")
    settings = dict(MODES[args.mode])
    if args.latency_seconds:
        settings["latency"] = replace(settings["latency"], seconds=args.latency_seconds)
    if args.soak_seconds:
        settings["footprint"] = replace(settings["footprint"], soak_seconds=args.soak_seconds)
    if args.client_seconds:
        settings["footprint"] = replace(settings["footprint"], client_seconds=args.client_seconds)
    if args.capacity_step_seconds:
        settings["capacity"] = replace(settings["capacity"], step_seconds=args.capacity_step_seconds)
    if args.capacity_budget:
        settings["capacity"] = replace(settings["capacity"], budget_seconds=args.capacity_budget)
    if args.capacity_targets:
        targets = tuple(t.strip() for t in args.capacity_targets.split(",") if t.strip())
        if set(targets) - set(get_args(Target)):
            ap.error(f"--capacity-targets: choose from {', '.join(get_args(Target))}")
        settings["capacity"] = replace(settings["capacity"], targets=targets)

    started = datetime.now().astimezone()
    out = args.results or Path("bench-results") / f"{started:%Y%m%d-%H%M%S}-{args.mode}"
    out.mkdir(parents=True, exist_ok=True)

    def log(msg: str) -> None:
        print(msg, flush=True)

    meta: dict[str, Any] = {"mode": args.mode, "started": started.isoformat(timespec="seconds"),
                            "machine": machine_facts(), "code": code_state(),
                            "settings": {k: v for k, v in settings.items() if k in only},
                            "activity": {}}
    results: dict[str, Any] = {}
    rows: list[Row] = []
    failed: list[str] = []
    t0 = time.monotonic()
    runners: dict[str, Callable[[Any, Path], tuple[dict[str, Any], list[Row]]]] = {
        "catchup": catchup.run,
        "latency": latency.run,
        "capacity": lambda s, w: capacity.run(s, w, log),
        "footprint": lambda s, w: footprint.run(s, w, log),
        "restart": restart.run,
        "spool": spool_bench.run,
        "listeners": listeners.run,
        "cluster": lambda s, w: cluster_bench.run(s, w, log),
    }
    with tempfile.TemporaryDirectory(prefix="echopanel-bench-") as tmp:
        for name in only:
            log(f"[{name}] running ({args.mode} mode)")
            began = time.monotonic()
            jiffies = cpu_jiffies()
            work = Path(tmp) / name
            work.mkdir()
            try:
                with time_limit(LIMITS[args.mode], name):
                    res, bench_rows = runners[name](settings[name], work)
            except Exception as e:  # reported in the results; the other benchmarks still run
                log(f"[{name}] FAILED: {e!r}")
                failed.append(name)
                results[name] = {"error": repr(e)}
                rows.append(Row(name, "benchmark failed", repr(e)[:80], "—", "—", "—", False))
                continue
            results[name] = res
            meta["activity"][name] = machine_activity(jiffies, cpu_jiffies())
            rows += bench_rows
            log(f"[{name}] done in {time.monotonic() - began:.0f} s")
            log(markdown_table(bench_rows))
        if args.profile:
            best = int(getattr(results.get("capacity", {}).get("ours"), "best", 0))
            with time_limit(LIMITS[args.mode], "profiles"):
                meta["profiles"] = run_profiles(settings, best, Path(tmp) / "profiles", out, log)
    meta["elapsed_s"] = time.monotonic() - t0
    json_path, md_path = write_results(out, "results", {**meta, "results": results}, rows,
                                       preamble(meta))
    log(f"results: {md_path} and {json_path}")
    print(md_path.read_text())
    if failed:
        log(f"failed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

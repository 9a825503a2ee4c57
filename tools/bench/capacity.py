"""Benchmark 3: server capacity in concurrent real-time streams.

A step runs N streams (16 kHz mono int16, 20 ms frames, real time) from the load generator
(tools/bench/loadgen.py, worker processes) against a fresh server for `step_seconds`. A step
passes when every stream connected, the server closed none, every frame sent was acked
(zero lost), the p99 ack latency is under 200 ms, and the generator itself kept real time
(its p99 lag under the same 200 ms — otherwise the offered load was not real time).

The search doubles N from `start` until a step fails, then bisects between the largest pass
and the smallest failure until they are within `precision` — or the time budget runs out,
in which case the largest pass so far is reported and marked as bounded by time. The same
search runs against the baseline receiver. Server and generators share this machine's
cores; their CPU shares are recorded per step.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tools.bench.affinity import CoreSplit, PinningError, pin_all
from tools.bench.loadgen import LoadResult, LoadRun, Protocol, merge
from tools.bench.profiling import finish_record, start_record
from tools.bench.report import Row
from tools.bench.servers import Target, make_server, remove_data
from tools.bench.stats import cpu_seconds, rss_bytes

TARGET_STREAMS = 1000
TARGET_RATIO = 0.7


@dataclass(frozen=True, slots=True)
class CapacitySettings:
    step_seconds: float = 30.0
    start: int = 100
    max_streams: int = 4000
    budget_seconds: float = 300.0  # per target (ours, baseline)
    workers: int = 2
    precision: float = 0.1
    p99_limit_ms: float = 200.0
    drain_timeout: float = 5.0
    # Beside the comparison (docs/performance.md): "baseline-global" is the baseline with one
    # syncfs for all streams (the durability strategy ours uses), "ours-fsync" our server
    # with one fsync per stream (the earlier design). "ours-nofsync" (acks not durable) can
    # be asked for with --capacity-targets.
    targets: tuple[Target, ...] = ("ours", "baseline", "baseline-global", "ours-fsync")


@dataclass(slots=True)
class SearchResult:
    target: str
    best: int = 0
    smallest_failure: int | None = None
    bounded_by_time: bool = False
    steps: list[LoadResult] = field(default_factory=list)
    verdicts: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"target": self.target, "best": self.best,
                "smallest_failure": self.smallest_failure,
                "bounded_by_time": self.bounded_by_time,
                "steps": [dict(s.to_json(), verdict=v)
                          for s, v in zip(self.steps, self.verdicts, strict=True)]}


def verdict(res: LoadResult, p99_limit_ms: float) -> str:
    """'pass', or why the step failed."""
    if res.error:
        return f"error: {res.error}"
    problems = []
    if res.connect_failures:
        problems.append(f"{res.connect_failures} streams failed to connect")
    if res.closed_by_server:
        problems.append(f"{res.closed_by_server} closed by the server {res.close_codes}")
    if res.frames_lost:
        problems.append(f"{res.frames_lost} frames lost")
    if res.ack_errors:
        problems.append(f"bad acks: {res.ack_errors[:2]}")
    if not res.p99_ms < p99_limit_ms:
        problems.append(f"p99 {res.p99_ms:.0f} ms")
    if not res.lag_p99_ms < p99_limit_ms:
        problems.append(f"generator lag p99 {res.lag_p99_ms:.0f} ms")
    return "pass" if not problems else "; ".join(problems)


def run_step(target: Target, n: int, settings: CapacitySettings, workdir: Path,
             profile: Path | None = None, split: CoreSplit | None = None) -> LoadResult:
    """One step; with `profile`, py-spy samples the server during the streaming window;
    with `split`, the server runs on its server core and the generators on the others (the
    scale-out benchmark's like-for-like reference, tools/bench/cluster.py)."""
    protocol: Protocol = "v1" if target.startswith("ours") else "baseline"
    data_dir = workdir / f"{target}-capacity"
    server = make_server(target, data_dir)
    server.start()
    load: LoadRun | None = None
    try:
        load = LoadRun(protocol, server.port, n, workers=settings.workers,
                       seconds=settings.step_seconds, prefix=f"cap{n}",
                       drain_timeout=settings.drain_timeout)
        if split is not None:
            pin_all(split, [server.pid], load.pids)
        load.wait_ready(timeout=60.0 + n * 0.05)
        if split is not None:  # again: threads the connections started
            pin_all(split, [server.pid], load.pids)
        t0 = time.monotonic() + 0.5
        load.start(t0)
        time.sleep(max(0.0, t0 - time.monotonic()))
        cpu0 = cpu_seconds(server.pid)
        spy = start_record(server.pid, settings.step_seconds - 1, profile) if profile else None
        time.sleep(max(0.0, t0 + settings.step_seconds - time.monotonic()))
        cpu1 = cpu_seconds(server.pid)
        finish_record(spy)
        rss = rss_bytes(server.pid)
        res = merge(protocol, n, settings.step_seconds,
                    load.results(timeout=settings.drain_timeout + 60.0))
        res.server_cpu = (cpu1 - cpu0) / settings.step_seconds
        res.server_rss_mib = rss / 2**20
        return res
    except PinningError:
        raise
    except Exception as e:  # a step that breaks is a failed step, with the reason kept
        return LoadResult(protocol, n, settings.step_seconds, error=repr(e))
    finally:
        if load is not None:
            load.close()
        with contextlib.suppress(Exception):
            server.stop()
        server.kill()
        remove_data(data_dir)


def search(target: Target, settings: CapacitySettings, workdir: Path,
           log: Any = print, split: CoreSplit | None = None) -> SearchResult:
    out = SearchResult(target)
    deadline = time.monotonic() + settings.budget_seconds
    n = settings.start
    last_step = settings.step_seconds + 10.0
    while True:
        if time.monotonic() + last_step > deadline:
            out.bounded_by_time = True
            break
        began = time.monotonic()
        res = run_step(target, n, settings, workdir, split=split)
        last_step = time.monotonic() - began
        v = verdict(res, settings.p99_limit_ms)
        out.steps.append(res)
        out.verdicts.append(v)
        log(f"  capacity {target}{' (own core)' if split else ''}: {n} streams: "
            f"p50 {res.p50_ms:.1f} ms, p99 {res.p99_ms:.1f} ms, "
            f"server cpu {res.server_cpu:.0%}, generators {res.generator_cpu:.0%}: {v}")
        if v == "pass":
            out.best = max(out.best, n)
        else:
            out.smallest_failure = n if out.smallest_failure is None else min(out.smallest_failure, n)
        hi = out.smallest_failure
        if hi is None:
            if n >= settings.max_streams:
                break
            n = min(n * 2, settings.max_streams)
            continue
        lo = out.best
        if hi - lo <= max(1, int(lo * settings.precision)):
            break
        n = (lo + hi) // 2
    return out


def _passing_step(s: SearchResult) -> LoadResult | None:
    return next((step for step, v in zip(s.steps, s.verdicts, strict=True)
                 if step.streams == s.best and v == "pass"), None)


def run(settings: CapacitySettings, workdir: Path, log: Any = print) -> tuple[dict[str, Any], list[Row]]:
    found: dict[str, SearchResult] = {t: search(t, settings, workdir, log) for t in settings.targets}
    ours = found.get("ours", SearchResult("ours"))
    base = found.get("baseline", SearchResult("baseline"))

    def show(s: SearchResult) -> str:
        text = f"{s.best}"
        if s.smallest_failure is not None:
            text += f" (fails at {s.smallest_failure})"
        elif s.best >= settings.max_streams:
            text += " (search cap)"
        if s.bounded_by_time:
            text += ", time-bounded"
        return text

    ratio = ours.best / base.best if base.best else float("nan")
    rows: list[Row] = []
    if "ours" in found and "baseline" in found:
        rows.append(Row("3 capacity", "concurrent real-time streams, 0 lost, p99 < 200 ms",
                        show(ours), show(base), f"{ratio:.2f}", f"≥ {TARGET_STREAMS}",
                        ours.best >= TARGET_STREAMS))
        rows.append(Row("3 capacity", "capacity relative to the baseline", f"{ratio:.2f}", "1",
                        f"{ratio:.2f}", f"≥ {TARGET_RATIO}", ratio >= TARGET_RATIO))
        best_ours, best_base = _passing_step(ours), _passing_step(base)
        if best_ours is not None and best_base is not None:
            rows.append(Row("3 capacity", "at that count: p99 ack latency (ms)",
                            f"{best_ours.p99_ms:.1f}", f"{best_base.p99_ms:.1f}", "—", "< 200 ms",
                            None))
            rows.append(Row("3 capacity", "at that count: server CPU (share of one core)",
                            f"{best_ours.server_cpu:.0%}", f"{best_base.server_cpu:.0%}", "—", "—",
                            None))
    elif "ours" in found:
        rows.append(Row("3 capacity", "concurrent real-time streams (ours only)", show(ours), "—",
                        "—", f"≥ {TARGET_STREAMS}", ours.best >= TARGET_STREAMS))
    glob = found.get("baseline-global")
    if glob is not None and "ours" in found:
        g_ratio = ours.best / glob.best if glob.best else float("nan")
        rows.append(Row("3 capacity", "vs the baseline with one syncfs for all streams "
                        "(ours' durability strategy)", show(ours), show(glob), f"{g_ratio:.2f}",
                        f"≥ {TARGET_RATIO} (stricter reading)", g_ratio >= TARGET_RATIO))
    per_stream = found.get("ours-fsync")
    if per_stream is not None:
        rows.append(Row("3 capacity", "ours with one fsync per stream (--sync-mode fsync)",
                        show(per_stream), "—", "—", "(reference: before group commit)", None))
    nofsync = found.get("ours-nofsync")
    if nofsync is not None:
        rows.append(Row("3 capacity", "ours without fsync (diagnostic: acks not durable)",
                        show(nofsync), "—", "—", "(reference)", None))
    results: dict[str, Any] = {"settings": asdict(settings), "ratio": ratio, **found}
    return results, rows

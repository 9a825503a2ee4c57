"""Scale-out benchmark (issue 14, docs/scale-out.md): the JetStream store, 1 vs 2 vs 3 ingest
processes, next to the local store; catch-up and live latency through JetStream.

    python -m tools.bench --only cluster [--mode quick|full|smoke]

Capacity: the loopback cluster (tools/cluster.py: `nats_nodes` NATS JetStream nodes, R =
nats_nodes, `k` ingest processes) takes N real-time streams (16 kHz mono int16, 20 ms
frames, the load generator of tools/bench/loadgen.py), dealt evenly over the k nodes by
connecting each generator straight to its node (the balancer would add a Python hop to
every byte). A step passes on the same verdict as benchmark 3 (capacity.verdict: 0 lost,
none closed, p99 ack < 200 ms, the generator kept real time); the search doubles then
bisects like benchmark 3. The local store's capacity is benchmark 3's search for "ours".

Everything shares this machine's cores (2 on the development VM): NATS, the ingest
processes and the generator. So beside the totals we report streams per ingest-process
CPU-second (N / the ingest processes' summed CPU share at the best passing step): what one
core given to ingest processes carries, the number that scales where CPU is free. The NATS
nodes' CPU share is reported too: with R3 every node stores every byte.

"A core of its own" (`own_core`): the same search for one JetStream-backed ingest process
and for the local store with the ingest process pinned to one CPU and everything else (NATS,
generators, this process) to the others (affinity.py) — one process against one process,
each with a core, which is the issue's "one JetStream-backed process vs the local store"
without three NATS nodes taking their CPU from the process being measured.

Equal load per node (`equal_load_per_node`): 1, 2 and 3 nodes each given the same number
of streams; where CPU is free, the ingest CPU per node should not grow with the number of
nodes if nodes add capacity linearly. On 2 shared cores 3 x 50 streams plus the NATS nodes
already fill the machine, and CPU-starved processes batch more (less CPU per frame), so the
rows are informational (EqualLoad).

Catch-up and live latency: benchmark 1's and 2's uplink runs (catchup.ours_once,
latency.ours_once) against one ingest process on the JetStream store, the stored audio read
back over REST and compared with what was sent.
"""

from __future__ import annotations

import asyncio
import shutil
import time
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from tools.bench import capacity, catchup, latency
from tools.bench.affinity import CoreSplit, PinningError, core_split, pin_all, this_process_on
from tools.bench.common import FRAME_PERIOD, SPEECH, pcm
from tools.bench.loadgen import LoadResult, LoadRun, WorkerResult, merge
from tools.bench.report import Row
from tools.bench.stats import cpu_seconds, summarize
from tools.cluster import Cluster

TARGET_PER_NODE = 0.8  # of one node's capacity added by each further node
TARGET_VS_LOCAL = 0.7  # one JetStream-backed process vs the local store
TARGET_CATCHUP_X = 1000.0
TARGET_P99_MS = 10.0


@dataclass(frozen=True, slots=True)
class ClusterSettings:
    node_counts: tuple[int, ...] = (1, 2, 3)
    nats_nodes: int = 3
    step_seconds: float = 10.0
    start: int = 50
    max_streams: int = 4000
    budget_seconds: float = 150.0  # per node count (and for the local reference)
    workers: int = 2  # generator processes in all (at least one per node)
    precision: float = 0.1
    p99_limit_ms: float = 200.0
    drain_timeout: float = 5.0
    local_reference: bool = True
    backlog_seconds: float = 60.0
    catchup_repeats: int = 3
    latency_seconds: float = 15.0
    own_core: bool = True  # also measure 1 process vs the local store, each on its own core
    equal_load_per_node: int = 50  # streams per node for the equal-load CPU comparison
    # NATS with `sync_interval: always` (the production config, docs/scale-out.md): one
    # ingest process's capacity, catch-up and live latency again, each write fsynced
    sync_always_reference: bool = True


SETTINGS = {
    "quick": ClusterSettings(step_seconds=8.0, budget_seconds=120.0, latency_seconds=15.0),
    "full": ClusterSettings(step_seconds=30.0, budget_seconds=300.0, catchup_repeats=7,
                            latency_seconds=60.0),
    "smoke": ClusterSettings(node_counts=(1, 2), nats_nodes=1, step_seconds=1.0, start=4,
                             equal_load_per_node=2,
                             max_streams=4, budget_seconds=30.0, local_reference=False,
                             backlog_seconds=2.0, catchup_repeats=1, latency_seconds=0.5),
}


@dataclass(slots=True)
class ClusterStep:
    load: LoadResult
    ingest_cpu: float = 0.0  # summed over the ingest processes, share of one core
    nats_cpu: float = 0.0  # summed over the NATS nodes

    @property
    def per_cpu_second(self) -> float:
        """Streams carried per CPU-second of ingest processes."""
        return self.load.streams / self.ingest_cpu if self.ingest_cpu else float("nan")


@dataclass(slots=True)
class ClusterSearch:
    nodes: int
    best: int = 0
    smallest_failure: int | None = None
    bounded_by_time: bool = False
    steps: list[ClusterStep] = field(default_factory=list)
    verdicts: list[str] = field(default_factory=list)

    def best_step(self) -> ClusterStep | None:
        return next((s for s, v in zip(self.steps, self.verdicts, strict=True)
                     if s.load.streams == self.best and v == "pass"), None)

    def to_json(self) -> dict[str, Any]:
        return {"nodes": self.nodes, "best": self.best,
                "smallest_failure": self.smallest_failure,
                "bounded_by_time": self.bounded_by_time,
                "steps": [dict(s.load.to_json(), ingest_cpu=s.ingest_cpu, nats_cpu=s.nats_cpu,
                               verdict=v) for s, v in zip(self.steps, self.verdicts, strict=True)]}


def _nats_pids(cluster: Cluster) -> list[int]:
    return [node.proc.pid for node in cluster.nats.nodes if node.proc is not None]


def run_step(cluster: Cluster, n: int, settings: ClusterSettings, tag: str,
             split: CoreSplit | None = None) -> ClusterStep:
    """N streams dealt over the cluster's nodes, each node fed by its own generator(s);
    with `split`, the ingest processes on its server core and the rest on the others."""
    k = len(cluster.nodes)
    shares = [n // k + (1 if i < n % k else 0) for i in range(k)]
    per_node_workers = max(1, settings.workers // k)
    loads: list[LoadRun] = []
    try:
        for i, (node, count) in enumerate(zip(cluster.nodes, shares, strict=True)):
            if count:
                loads.append(LoadRun("v1", node.port, count, workers=per_node_workers,
                                     seconds=settings.step_seconds, prefix=f"{tag}-{n}-{i}",
                                     drain_timeout=settings.drain_timeout))
        ingest = [node.proc.pid for node in cluster.nodes if node.proc is not None]
        nats = _nats_pids(cluster)
        generators = [pid for load in loads for pid in load.pids]
        if split is not None:
            pin_all(split, ingest, nats + generators)
        for load in loads:
            load.wait_ready(timeout=60.0 + n * 0.05)
        if split is not None:  # again: threads started since
            pin_all(split, ingest, nats + generators)
        t0 = time.monotonic() + 0.5
        for load in loads:
            load.start(t0)
        time.sleep(max(0.0, t0 - time.monotonic()))
        cpu0 = [cpu_seconds(p) for p in ingest], [cpu_seconds(p) for p in nats]
        time.sleep(max(0.0, t0 + settings.step_seconds - time.monotonic()))
        cpu1 = [cpu_seconds(p) for p in ingest], [cpu_seconds(p) for p in nats]
        parts: list[WorkerResult] = []
        for load in loads:
            parts += load.results(timeout=settings.drain_timeout + 60.0)
        res = merge("v1", n, settings.step_seconds, parts)
        ingest_cpu = (sum(cpu1[0]) - sum(cpu0[0])) / settings.step_seconds
        res.server_cpu = ingest_cpu
        return ClusterStep(res, ingest_cpu, (sum(cpu1[1]) - sum(cpu0[1])) / settings.step_seconds)
    except PinningError:
        raise
    except Exception as e:  # a step that breaks is a failed step, with the reason kept
        return ClusterStep(LoadResult("v1", n, settings.step_seconds, error=repr(e)))
    finally:
        for load in loads:
            load.close()


def search(nodes: int, settings: ClusterSettings, workdir: Path,
           log: Callable[[str], None] = print, split: CoreSplit | None = None,
           sync_always: bool = False) -> ClusterSearch:
    """Benchmark 3's search (double, then bisect) on one cluster of `nodes` ingest nodes."""
    out = ClusterSearch(nodes)
    deadline = time.monotonic() + settings.budget_seconds
    n, last_step = settings.start, settings.step_seconds + 10.0
    while True:
        if time.monotonic() + last_step > deadline:
            out.bounded_by_time = True
            break
        began = time.monotonic()
        # A fresh cluster per step, as benchmark 3 starts a fresh server per step: the
        # generators disconnect without ending their streams, so a reused node would carry
        # every earlier step's streams (open and resumable, their leases renewed) into the
        # next one, and past --max-streams refuse new ones with 1013.
        where = workdir / f"cluster-{nodes}-{n}"
        with Cluster(where, nodes=nodes, nats_nodes=settings.nats_nodes,
                     sync_always=sync_always) as cluster:
            step = run_step(cluster, n, settings, f"cap{nodes}", split)
        shutil.rmtree(where, ignore_errors=True)  # hundreds of MB of audio, three times
        last_step = time.monotonic() - began
        v = capacity.verdict(step.load, settings.p99_limit_ms)
        out.steps.append(step)
        out.verdicts.append(v)
        how = (" (own core)" if split else "") + (" (sync always)" if sync_always else "")
        log(f"  cluster {nodes} node(s){how}: {n} streams: "
            f"p99 {step.load.p99_ms:.1f} ms, "
            f"ingest cpu {step.ingest_cpu:.0%}, NATS cpu {step.nats_cpu:.0%}, "
            f"generators {step.load.generator_cpu:.0%}: {v}")
        if v == "pass":
            out.best = max(out.best, n)
        else:
            out.smallest_failure = n if out.smallest_failure is None \
                else min(out.smallest_failure, n)
        if out.smallest_failure is None:
            if n >= settings.max_streams:
                break
            n = min(n * 2, settings.max_streams)
            continue
        lo, hi = out.best, out.smallest_failure
        if hi - lo <= max(1, int(lo * settings.precision)):
            break
        n = (lo + hi) // 2
    return out


def _show(best: int, failure: int | None, bounded: bool) -> str:
    text = f"{best}" + (f" (fails at {failure})" if failure is not None else "")
    return text + (", time-bounded" if bounded else "")


def _wav_pcm(http: str, stream_id: str) -> bytes:
    with urllib.request.urlopen(f"{http}/v1/streams/{stream_id}/audio.wav", timeout=60) as r:
        body: bytes = r.read()
    return body[44:]


@dataclass(slots=True)
class OwnCoreResult:
    """One JetStream-backed ingest process and the local store, each on a core of its own."""

    split: CoreSplit
    jetstream: ClusterSearch
    local: capacity.SearchResult
    jetstream_replicas: int
    # the same search with NATS at `sync_interval: always`: fsynced acks on both sides
    jetstream_synced: ClusterSearch | None = None

    def rows(self) -> list[Row]:
        js, local = self.jetstream, self.local
        ratio = js.best / local.best if local.best else float("nan")
        where = f"a core of its own ({self.split.describe()})"
        rows = [
            Row("7 scale-out", f"local store, {where}: streams",
                _show(local.best, local.smallest_failure, local.bounded_by_time), "—", "—",
                "(reference)", None),
            Row("7 scale-out", f"JetStream (R{self.jetstream_replicas}), 1 ingest process, "
                "a core of its own: streams",
                _show(js.best, js.smallest_failure, js.bounded_by_time), "—", "—", "—", None),
            Row("7 scale-out", "one JetStream process vs the local store, each on a core of "
                "its own (streams)", f"{ratio:.2f}", "1", f"{ratio:.2f}",
                f"≥ {TARGET_VS_LOCAL}", ratio >= TARGET_VS_LOCAL if ratio == ratio else None),
        ]
        synced = self.jetstream_synced
        if synced is not None:
            sync_ratio = synced.best / local.best if local.best else float("nan")
            rows += [
                Row("7 scale-out", f"JetStream (R{self.jetstream_replicas}), sync_interval: "
                    "always, 1 ingest process, a core of its own: streams",
                    _show(synced.best, synced.smallest_failure, synced.bounded_by_time), "—",
                    "—", "—", None),
                Row("7 scale-out", "the same vs the local store (both acks fsynced), each on "
                    "a core of its own (streams)", f"{sync_ratio:.2f}", "1",
                    f"{sync_ratio:.2f}", f"≥ {TARGET_VS_LOCAL}",
                    sync_ratio >= TARGET_VS_LOCAL if sync_ratio == sync_ratio else None),
            ]
        return rows

    def to_json(self) -> dict[str, Any]:
        return {"split": {"server": sorted(self.split.server), "rest": sorted(self.split.rest)},
                "jetstream": self.jetstream.to_json(), "local": self.local.to_json(),
                "jetstream_sync_always": (self.jetstream_synced.to_json()
                                          if self.jetstream_synced else None)}


def own_core_searches(settings: ClusterSettings, workdir: Path,
                      log: Callable[[str], None] = print) -> OwnCoreResult | None:
    """Capacity of one JetStream-backed process and of the local store, the ingest process
    pinned to one CPU and everything else to the others (affinity.py). None on one CPU."""
    split = core_split()
    if split is None:
        log("  own core: skipped, this machine lets us use one CPU")
        return None
    log(f"  own core: {split.describe()}")
    # What this process starts inherits its mask. `split` is passed down, not asked for
    # again: from in here, core_split() would see only the rest.
    with this_process_on(split.rest):
        js = search(1, settings, workdir, log, split)
        synced = (search(1, settings, workdir, log, split, sync_always=True)
                  if settings.sync_always_reference else None)
        local = capacity.search("ours", replace(
            capacity.CapacitySettings(), step_seconds=settings.step_seconds,
            start=settings.start, max_streams=settings.max_streams,
            budget_seconds=settings.budget_seconds, workers=settings.workers,
            precision=settings.precision, targets=("ours",)), workdir, log, split)
    return OwnCoreResult(split, js, local, settings.nats_nodes, synced)


@dataclass(slots=True)
class EqualLoad:
    """The same load per node on 1, 2 and 3 nodes: the ingest CPU each node spends on it.

    Where CPU is free, k nodes carry k times one node's streams exactly when each of them
    spends no more CPU on its share than one node alone spends on the same share: nothing
    in the shared store (lease renewals, PubAcks, KV) grows with the number of nodes. So
    this compares CPU per node at equal per-node load. Informational: when the nodes and
    NATS fill the cores, starved processes batch more and spend less per frame."""

    per_node: int
    steps: dict[int, ClusterStep] = field(default_factory=dict)
    verdicts: dict[int, str] = field(default_factory=dict)

    def efficiency(self, k: int) -> float:
        """One node's ingest CPU over the mean per node of k nodes (1.0: linear)."""
        one, many = self.steps.get(1), self.steps.get(k)
        if one is None or many is None or not many.ingest_cpu:
            return float("nan")
        return one.ingest_cpu / (many.ingest_cpu / k)

    def rows(self) -> list[Row]:
        rows: list[Row] = []
        one = self.steps.get(1)
        for k, step in self.steps.items():
            if k == 1 or one is None:
                continue
            eff = self.efficiency(k)
            # Not a verdict on the goal: on shared cores, processes that wait for CPU batch
            # more and spend less per frame, so this can exceed 1 (docs/performance.md).
            rows.append(Row("7 scale-out", f"{k} nodes at {self.per_node} streams each: "
                            "ingest CPU per node vs 1 node at the same load (efficiency)",
                            f"{eff:.2f} ({one.ingest_cpu:.0%} vs {step.ingest_cpu / k:.0%} "
                            "per node)", "—", "—", "(does a node's cost grow with nodes?)",
                            None))
        return rows

    def to_json(self) -> dict[str, Any]:
        return {"per_node": self.per_node,
                "steps": {str(k): dict(s.load.to_json(), ingest_cpu=s.ingest_cpu,
                                       nats_cpu=s.nats_cpu, verdict=self.verdicts[k])
                          for k, s in self.steps.items()},
                "efficiency": {str(k): self.efficiency(k) for k in self.steps if k != 1}}


def equal_load(settings: ClusterSettings, workdir: Path,
               log: Callable[[str], None] = print) -> EqualLoad:
    """One step per node count with `equal_load_per_node` streams on every node."""
    out = EqualLoad(settings.equal_load_per_node)
    for k in settings.node_counts:
        n = k * settings.equal_load_per_node
        where = workdir / f"cluster-equal-{k}"
        with Cluster(where, nodes=k, nats_nodes=settings.nats_nodes) as cluster:
            step = run_step(cluster, n, settings, f"eq{k}")
        shutil.rmtree(where, ignore_errors=True)
        out.steps[k] = step
        out.verdicts[k] = capacity.verdict(step.load, settings.p99_limit_ms)
        log(f"  equal load, {k} node(s) x {settings.equal_load_per_node}: ingest cpu "
            f"{step.ingest_cpu:.0%} ({step.ingest_cpu / k:.0%} per node), NATS cpu "
            f"{step.nats_cpu:.0%}: {out.verdicts[k]}")
    return out


def latency_and_catchup(settings: ClusterSettings, workdir: Path,
                        sync_always: bool = False) -> dict[str, Any]:
    """One ingest process on the JetStream store (R = nats_nodes): benchmark 1's catch-up
    runs and one benchmark 2 live run, each checked against the audio read back over REST."""
    payload = pcm(SPEECH, settings.backlog_seconds)
    runs: list[catchup.CatchupRun] = []
    identical = True
    with Cluster(workdir / f"cluster-latency{'-sync' if sync_always else ''}", nodes=1,
                 nats_nodes=settings.nats_nodes, sync_always=sync_always) as cluster:
        node = cluster.nodes[0]
        for i in range(settings.catchup_repeats + 1):  # the first is a warm-up
            sid = f"js-catchup-{i}"
            run = asyncio.run(catchup.ours_once(node.port, sid, payload,
                                                settings.backlog_seconds, node.data_dir))
            identical &= _wav_pcm(node.http, sid) == payload
            if i:
                runs.append(run)
        live = asyncio.run(latency.ours_once(node.port, "js-live", settings.latency_seconds,
                                             node.data_dir))
        frames = round(settings.latency_seconds / FRAME_PERIOD)
        identical &= _wav_pcm(node.http, "js-live") == pcm(SPEECH, frames * FRAME_PERIOD,
                                                           seed=2)
    return {"catchup_ms": summarize([r.transfer_s * 1000 for r in runs]),
            "catchup_x_realtime": summarize([settings.backlog_seconds / r.transfer_s
                                             for r in runs]),
            # latency.ours_once compares a local journal, which JetStream has not: the REST
            # read-back above is the check
            "live": {**asdict(live), "identical": identical}, "identical": identical}


def _timing_rows(label: str, timing: dict[str, Any], settings: ClusterSettings) -> list[Row]:
    cx, live = timing["catchup_x_realtime"], timing["live"]
    return [
        Row("7 scale-out", f"{label}: {settings.backlog_seconds:g} s backlog acked (ms)",
            timing["catchup_ms"].fmt(1), "—", "—",
            f"≤ {settings.backlog_seconds * 1000 / TARGET_CATCHUP_X:g} ms",
            cx.median >= TARGET_CATCHUP_X),
        Row("7 scale-out", f"{label}: catch-up speed (× real time)", cx.fmt(0), "—", "—",
            f"≥ {TARGET_CATCHUP_X:g}×", cx.median >= TARGET_CATCHUP_X),
        Row("7 scale-out", f"{label}: live frame → ack p50 / p99 (ms)",
            f"{live['p50_ms']:.2f} / {live['p99_ms']:.2f}", "—", "—",
            f"p99 ≤ {TARGET_P99_MS:g} ms", live["p99_ms"] <= TARGET_P99_MS),
        Row("7 scale-out", f"{label}: stored audio identical (read over REST)",
            "yes" if timing["identical"] else "NO", "—", "—", "every run",
            bool(timing["identical"])),
    ]


def run(settings: ClusterSettings, workdir: Path,
        log: Callable[[str], None] = print) -> tuple[dict[str, Any], list[Row]]:
    found = {k: search(k, settings, workdir, log) for k in settings.node_counts}
    local: capacity.SearchResult | None = None
    if settings.local_reference:
        local = capacity.search("ours", replace(
            capacity.CapacitySettings(), step_seconds=settings.step_seconds,
            start=settings.start, max_streams=settings.max_streams,
            budget_seconds=settings.budget_seconds, workers=settings.workers,
            precision=settings.precision, targets=("ours",)), workdir, log)
    own = own_core_searches(settings, workdir, log) if settings.own_core else None
    equal = equal_load(settings, workdir, log)
    timing = latency_and_catchup(settings, workdir)
    synced: dict[str, Any] | None = None
    if settings.sync_always_reference:
        synced = {"capacity": search(1, settings, workdir, log, sync_always=True),
                  **latency_and_catchup(settings, workdir, sync_always=True)}

    rows: list[Row] = []
    one = found.get(1)
    one_step = one.best_step() if one else None
    local_step = capacity._passing_step(local) if local else None
    if local is not None:
        per_cpu = (f"{local_step.streams / local_step.server_cpu:.0f}"
                   if local_step and local_step.server_cpu else "—")
        rows.append(Row("7 scale-out", "local store, 1 process: streams (per ingest CPU-s)",
                        f"{_show(local.best, local.smallest_failure, local.bounded_by_time)} "
                        f"({per_cpu})", "—", "—", "(reference)", None))
    for k, s in found.items():
        step = s.best_step()
        per_cpu = f"{step.per_cpu_second:.0f}" if step else "—"
        cpu = (f"; ingest cpu {step.ingest_cpu:.0%}, NATS cpu {step.nats_cpu:.0%}, "
               f"p99 {step.load.p99_ms:.0f} ms") if step else ""
        rows.append(Row("7 scale-out", f"JetStream (R{settings.nats_nodes}), {k} ingest "
                        f"process{'es' if k > 1 else ''}: streams (per ingest CPU-s){cpu}",
                        f"{_show(s.best, s.smallest_failure, s.bounded_by_time)} ({per_cpu})",
                        "—", "—", "—", None))
    if one is not None and one.best:
        for k, s in found.items():
            if k == 1:
                continue
            gain = (s.best - one.best) / (one.best * (k - 1))
            step = s.best_step()
            eff = (step.per_cpu_second / one_step.per_cpu_second
                   if step and one_step else float("nan"))
            rows.append(Row("7 scale-out", f"{k} nodes: capacity added per further node "
                            "(of one node's) — totals; per ingest CPU-s vs 1 node",
                            f"{gain:.2f}; {eff:.2f}", "—", "—",
                            f"≥ {TARGET_PER_NODE} where CPU is free",
                            eff >= TARGET_PER_NODE if eff == eff else None))
    if local is not None and local.best and one is not None:
        vs_local = one.best / local.best
        rows.append(Row("7 scale-out", "one JetStream process vs the local store (streams)",
                        f"{vs_local:.2f}", "1", f"{vs_local:.2f}", f"≥ {TARGET_VS_LOCAL}",
                        vs_local >= TARGET_VS_LOCAL))
    if own is not None:
        rows += own.rows()
    rows += equal.rows()
    rows += _timing_rows("JetStream", timing, settings)
    if synced is not None:
        cap: ClusterSearch = synced["capacity"]
        step = cap.best_step()
        cpu = (f"; ingest cpu {step.ingest_cpu:.0%}, NATS cpu {step.nats_cpu:.0%}, "
               f"p99 {step.load.p99_ms:.0f} ms") if step else ""
        rows.append(Row("7 scale-out", f"JetStream (R{settings.nats_nodes}), sync_interval: "
                        f"always, 1 ingest process: streams (per ingest CPU-s){cpu}",
                        _show(cap.best, cap.smallest_failure, cap.bounded_by_time)
                        + (f" ({step.per_cpu_second:.0f})" if step else ""), "—", "—", "—",
                        None))
        rows += _timing_rows("JetStream, sync_interval: always", synced, settings)
    results: dict[str, Any] = {"settings": asdict(settings),
                               "jetstream": {str(k): s.to_json() for k, s in found.items()},
                               "local": local.to_json() if local else None,
                               "own_core": own.to_json() if own else None,
                               "equal_load": equal.to_json(), **timing}
    if synced is not None:
        results["sync_always"] = {**synced, "capacity": synced["capacity"].to_json()}
    best_steps = {k: s.best_step() for k, s in found.items()}
    results["per_cpu_second"] = {str(k): step.per_cpu_second
                                 for k, step in best_steps.items() if step is not None}
    return results, rows

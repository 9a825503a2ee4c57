"""Stream a recording through the chaos proxy and server crashes; check it arrived exactly.

    python -m tools.chaos_run --seed 7 --seconds 60 --speed 2 --mean-interval 0.5

Starts the real ingest server and a chaos proxy in front of it (seeded random resets,
blackholes, refusals and latency spikes), streams the recording through the real uplink while
the server is stopped with SIGTERM and killed with SIGKILL at set points of the stream, then
compares the stored WAV with the source and prints a JSON report: faults survived, frames
replayed, reconnects and recovery times. The e2e test suite runs the same scenario.

    python -m tools.chaos_run --cluster --seconds 20

runs it through the loopback cluster's balancer instead (tools/cluster.py, JetStream store),
SIGKILLing whichever ingest node holds the capture at 30 % and 65 % of the stream
(docs/scale-out.md); tests/e2e/test_cluster.py runs that scenario.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import urllib.request
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

from capture.wav_source import WavFileSource, bundled_recording
from capture.wavfile import read_wav, write_wav
from tools.chaos_proxy import ChaosProxyThread, ChaosSchedule
from tools.cluster import Cluster
from tools.ingest_process import IngestServer
from uplink.audio import AudioFormat
from uplink.client import UplinkClient, UplinkResult
from uplink.config import UplinkConfig
from uplink.frames import FrameCutter
from uplink.policy import BackoffConfig, BreakerConfig, RetryBudgetConfig
from uplink.ring import OverflowPolicy, RingBuffer

# Short deadlines so a 20 s run can absorb 50+ faults; the mechanisms are the production ones.
CHAOS_CONFIG = UplinkConfig(
    buffer_seconds=120.0,
    connect_timeout=1.0,
    handshake_timeout=1.0,
    ack_timeout=0.6,
    heartbeat_interval=0.5,
    heartbeat_timeout=0.5,
    end_timeout=3.0,
    backoff=BackoffConfig(base=0.1, cap=1.0),
    breaker=BreakerConfig(failure_threshold=8, success_threshold=2, open_timeout=1.0),
    budget=RetryBudgetConfig(max_initial_attempts=0, max_outage=None),
)


@dataclass
class ChaosReport:
    seed: int
    audio_seconds: float
    wall_seconds: float = 0.0
    identical: bool = False
    ok: bool = False
    error: str | None = None
    faults: dict[str, int] = field(default_factory=dict)
    faults_total: int = 0
    server_sigterms: int = 0
    server_sigkills: int = 0
    reconnects: int = 0
    frames: int = 0
    frames_sent: int = 0
    frames_replayed: int = 0
    frames_dropped: int = 0
    recoveries: int = 0
    recovery_median_s: float = 0.0
    recovery_worst_s: float = 0.0
    recovery_times_s: list[float] = field(default_factory=list)  # link lost → next welcome
    node_kills: list[int] = field(default_factory=list)  # --cluster: ingest nodes SIGKILLed


def make_recording(path: Path, seconds: float) -> Path:
    """The bundled speech recording, repeated to `seconds` (a real recording, any length)."""
    fmt, data = read_wav(bundled_recording())
    want = int(seconds * fmt.sample_rate) * fmt.block_align
    write_wav(path, fmt, (data * (want // len(data) + 1))[:want])
    return path


async def run_scenario(
    workdir: Path,
    source: Path,
    seed: int,
    speed: float = 2.0,
    mean_interval: float = 0.5,
    term_at: tuple[float, ...] = (0.25,),
    kill_at: tuple[float, ...] = (0.55,),
    config: UplinkConfig = CHAOS_CONFIG,
) -> ChaosReport:
    fmt, source_bytes = read_wav(source)
    total_samples = len(source_bytes) // fmt.block_align
    report = ChaosReport(seed=seed, audio_seconds=total_samples / fmt.sample_rate)
    loop = asyncio.get_running_loop()
    started = loop.time()
    stream_seconds = report.audio_seconds / speed if speed else 5.0
    schedule = ChaosSchedule.random(
        seed,
        duration=stream_seconds,
        mean_interval=mean_interval,
        blackhole_range=(0.2, 0.8),
        refuse_range=(0.1, 0.6),
        latency_range=(0.01, 0.15),
        latency_duration_range=(0.5, 2.0),
    )
    server = IngestServer(workdir / "data")
    server.start()
    proxy = ChaosProxyThread(target=("127.0.0.1", server.port), schedule=schedule)
    proxy.start()
    try:
        frame_samples = round(fmt.sample_rate * config.frame_ms / 1000)
        ring = RingBuffer(fmt, frame_samples, config.buffer_seconds, OverflowPolicy.DROP_OLDEST)
        client = UplinkClient(f"ws://127.0.0.1:{proxy.port}", ring, f"chaos-{seed}", config)
        wav = WavFileSource(source, speed=speed)

        async def server_faults() -> None:
            points = sorted([(f, "term") for f in term_at] + [(f, "kill") for f in kill_at])
            for fraction, how in points:
                while client.stats().counters.acked_sample < fraction * total_samples:
                    await asyncio.sleep(0.02)  # polling a condition, bounded by the stream
                if how == "kill":
                    await asyncio.to_thread(server.kill)
                    report.server_sigkills += 1
                else:
                    await asyncio.to_thread(server.stop)
                    report.server_sigterms += 1
                await asyncio.to_thread(server.start)

        wav.start(FrameCutter(ring))
        faults = asyncio.create_task(server_faults())
        result = await client.run()
        faults.cancel()
        wav.wait(5.0)
        _count(report, result)
        stored = server.data_dir / "streams" / f"chaos-{seed}" / "audio.wav"
        if result.ok and stored.exists():
            stored_fmt, stored_bytes = read_wav(stored)
            report.identical = stored_fmt == fmt and stored_bytes == source_bytes
    finally:
        proxy.stop()
        server.stop()
    _faults(report, proxy)
    report.wall_seconds = round(loop.time() - started, 2)
    return report


async def run_cluster_scenario(
    cluster: Cluster,
    source: Path,
    seed: int,
    speed: float = 2.0,
    mean_interval: float = 0.5,
    node_kills_at: tuple[float, ...] = (0.3, 0.65),
    config: UplinkConfig = CHAOS_CONFIG,
) -> ChaosReport:
    """The same chaos, with the proxy in front of the cluster's balancer (docs/scale-out.md):
    at each fraction of `node_kills_at` (of the source acked), the ingest node holding the
    capture is SIGKILLed (and started again, so the next kill has three nodes to choose
    from); the capture resumes on another node through the balancer. The stored audio is
    read back through the balancer (any node serves any stream)."""
    fmt, source_bytes = read_wav(source)
    total_samples = len(source_bytes) // fmt.block_align
    report = ChaosReport(seed=seed, audio_seconds=total_samples / fmt.sample_rate)
    loop = asyncio.get_running_loop()
    started = loop.time()
    stream_id = f"chaos-cluster-{seed}"
    schedule = ChaosSchedule.random(
        seed, duration=report.audio_seconds / speed if speed else 5.0,
        mean_interval=mean_interval, blackhole_range=(0.2, 0.8), refuse_range=(0.1, 0.6),
        latency_range=(0.01, 0.15), latency_duration_range=(0.5, 2.0))
    assert cluster.balancer is not None
    proxy = ChaosProxyThread(target=("127.0.0.1", cluster.balancer.port), schedule=schedule)
    proxy.start()
    try:
        frame_samples = round(fmt.sample_rate * config.frame_ms / 1000)
        ring = RingBuffer(fmt, frame_samples, config.buffer_seconds, OverflowPolicy.DROP_OLDEST)
        client = UplinkClient(f"ws://127.0.0.1:{proxy.port}/v1/stream", ring, stream_id,
                              config)
        wav = WavFileSource(source, speed=speed)

        async def node_kills() -> None:
            for fraction in node_kills_at:
                while True:  # until that much is acked AND a node holds the capture now
                    if client.stats().counters.acked_sample >= fraction * total_samples:
                        holder = await asyncio.to_thread(cluster.holder, stream_id)
                        if holder is not None:
                            break
                    await asyncio.sleep(0.02)  # polling a condition, bounded by the stream
                await asyncio.to_thread(cluster.kill_node, holder)
                report.node_kills.append(holder)
                await asyncio.to_thread(cluster.start_node, holder)

        wav.start(FrameCutter(ring))
        faults = asyncio.create_task(node_kills())
        result = await client.run()
        faults.cancel()
        wav.wait(5.0)
        _count(report, result)
        if result.ok:
            url = f"{cluster.balancer_http}/v1/streams/{stream_id}/audio.wav"
            stored = await asyncio.to_thread(_download, url)
            stored_fmt, stored_bytes = wav_bytes(stored)
            report.identical = stored_fmt == fmt and stored_bytes == source_bytes
    finally:
        proxy.stop()
    _faults(report, proxy)
    report.wall_seconds = round(loop.time() - started, 2)
    return report


def _download(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=60) as resp:
        body: bytes = resp.read()
        return body


def wav_bytes(body: bytes) -> tuple[AudioFormat, bytes]:
    with tempfile.NamedTemporaryFile(suffix=".wav") as f:
        f.write(body)
        f.flush()
        return read_wav(Path(f.name))


def _count(report: ChaosReport, result: UplinkResult) -> None:
    stats = result.stats
    report.ok = result.ok
    report.error = None if result.error is None else str(result.error)
    report.reconnects = stats.counters.reconnects
    report.frames = stats.counters.acked_seq
    report.frames_sent = stats.counters.frames_sent
    report.frames_replayed = stats.counters.frames_replayed
    report.frames_dropped = stats.ring.frames_dropped
    times = stats.counters.recovery_times
    report.recoveries = len(times)
    report.recovery_times_s = [round(t, 3) for t in times]
    if times:
        report.recovery_median_s = round(statistics.median(times), 3)
        report.recovery_worst_s = round(max(times), 3)


def _faults(report: ChaosReport, proxy: ChaosProxyThread) -> None:
    kinds = Counter(e.kind for e in proxy.events if not e.kind.endswith("_end"))
    report.faults = dict(kinds)
    report.faults_total = sum(kinds.values())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--seconds", type=float, default=60.0, help="length of the recording")
    ap.add_argument("--speed", type=float, default=2.0)
    ap.add_argument("--mean-interval", type=float, default=0.5, help="mean seconds between faults")
    ap.add_argument("--cluster", action="store_true",
                    help="through the loopback cluster's balancer (3 NATS nodes, 3 ingest "
                    "nodes; needs the cluster extra), killing the capture's node at 30%% and "
                    "65%% of the stream instead of one server's SIGTERM and SIGKILL")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="echopanel-chaos-") as tmp:
        work = Path(tmp)
        source = make_recording(work / "source.wav", args.seconds)
        if args.cluster:
            with Cluster(work / "cluster", nodes=3, nats_nodes=3,
                         extra_args=["--lease-seconds", "2"]) as cluster:
                report = asyncio.run(run_cluster_scenario(cluster, source, args.seed,
                                                          args.speed, args.mean_interval))
        else:
            report = asyncio.run(run_scenario(work, source, args.seed, args.speed,
                                              args.mean_interval))
    print(json.dumps(asdict(report), indent=2))
    return 0 if report.ok and report.identical else 1


if __name__ == "__main__":
    sys.exit(main())

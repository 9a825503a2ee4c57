"""Benchmark: live listeners (docs/listeners.md, protocol §11).

Rows, all from one run:
- durable → listener latency while live: a producer pushes 16 kHz mono int16 frames every
  20 ms (as latency.py does); for each audio message a listener in the same process receives,
  latency = its arrival - the arrival of the uplink's ack that first covered its last sample.
  The ack leaves the server right after the sync made the audio durable, so this is the
  durable → listener delay plus the (small) difference of the two sockets' paths;
- the uplink's frame → ack p99 with 100 listeners on the stream (in a separate process, so
  their client-side work does not load the uplink's process, at nice 10: they stand for a
  recognizer on other machines) against the same run with none, runs interleaved; every one
  of the 100 outputs is compared with what was pushed. Steady state: the worker is started
  (imported) before the stream, and acks count from 2 s into the stream and, with the crowd,
  from when all 100 listeners have had audio (their connects are a one-off, measured by
  nothing here);
- server CPU per listener per 20 ms frame: the server process's CPU time (/proc) over the
  run with the crowd minus over the run without, divided by listeners × frames (it includes
  the crowd's connects and closes, a small part);
- catch-up: one listener reads a 60 s backlog of an open stream from sample 0 (× real time);
- server memory per idle listener: RSS growth of the server for N listeners waiting at the
  live end of an idle open stream, divided by N.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import math
import os
import subprocess
import sys
import threading
import time
from array import array
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tools.bench.common import FRAME_PERIOD, SPEECH, frame_samples, pcm, sleep_until, uplink_config
from tools.bench.report import Row, ratio
from tools.bench.servers import OursServer
from tools.bench.stats import cpu_seconds, percentiles, rss_bytes, summarize
from tools.ingest_process import REPO_ROOT
from uplink import AsyncUplink, Uplink
from uplink.client import UplinkClient
from uplink.core import Phase
from uplink.listen import ChunkKind, ListenConfig, listen
from uplink.policy import BackoffConfig
from uplink.ring import OverflowPolicy, RingBuffer

TARGET_P50_MS = 2.0
TARGET_P99_MS = 10.0
TARGET_ACK_RATIO = 1.2
TARGET_CATCHUP = 1000.0
TARGET_IDLE_KIB = 100.0
ACK_SETTLE = 2.0  # seconds at the start of a live run left out of the ack percentiles
# (a quarter of the run when that is shorter: the smoke run)
WAITING = ListenConfig(backoff=BackoffConfig(base=0.02, cap=0.1), wait_for_stream=True,
                       ping_interval=20.0, ping_timeout=20.0)


@dataclass(frozen=True, slots=True)
class ListenerSettings:
    live_seconds: float = 20.0
    repeats: int = 2
    listeners: int = 100
    # The 100 listeners' client process runs at this nice level: in a deployment they are a
    # recognizer on other machines, not a CPU competitor of the uplink and the server on the
    # same 2 cores. The server and the uplink's process run at normal priority; what the
    # server spends on listeners is measured apart (the CPU rows).
    crowd_nice: int = 10
    backlog_seconds: float = 60.0
    idle_listeners: int = 200


@dataclass(frozen=True, slots=True)
class LiveRun:
    listeners: int
    ack_p50_ms: float
    ack_p99_ms: float
    listen_p50_ms: float  # durable (ack) -> listener; NaN without an in-process listener
    listen_p99_ms: float
    outputs_identical: bool
    frames: int
    server_cpu_s: float  # the server's CPU time during the run


async def live_once(port: int, stream_id: str, seconds: float, crowd: int,
                    server_pid: int, crowd_nice: int = 0) -> LiveRun:
    """One live stream; `crowd` listeners in a worker process (0: none) and, when there is
    no crowd, one listener here for the durable -> listener latency."""
    fmt = SPEECH
    fs = frame_samples(fmt)
    frame_bytes = fs * fmt.block_align
    frames = round(seconds / FRAME_PERIOD)
    audio = pcm(fmt, frames * FRAME_PERIOD, seed=2)
    ring = RingBuffer(fmt, fs, 30.0, OverflowPolicy.DROP_OLDEST)
    client = UplinkClient(f"ws://127.0.0.1:{port}", ring, stream_id, uplink_config())
    ready = array("d", bytes(8 * frames))
    acked_at = array("d", [math.nan]) * frames
    acked = 0
    connected = threading.Event()

    def on_ack(seq: int) -> None:
        nonlocal acked
        now = time.perf_counter()
        for s in range(acked, min(seq, frames)):
            acked_at[s] = now
        acked = max(acked, seq)

    def produce() -> None:
        connected.wait(30.0)
        view = memoryview(audio)
        start = time.perf_counter()
        for k in range(frames):
            sleep_until(start + k * FRAME_PERIOD)
            ready[k] = time.perf_counter()
            ring.push(view[k * frame_bytes:(k + 1) * frame_bytes])
        ring.close()

    worker = None
    if crowd:
        worker = subprocess.Popen(
            [sys.executable, "-m", "tools.bench.listeners", "worker", "--port", str(port),
             "--stream-id", stream_id, "--count", str(crowd),
             "--sha256", hashlib.sha256(audio).hexdigest(), "--nice", str(crowd_nice)],
            stdout=subprocess.PIPE, text=True, cwd=REPO_ROOT)
        assert worker.stdout is not None
        # its start-up (imports) stays out of the measured window
        line = await asyncio.to_thread(worker.stdout.readline)
        if line.strip() != "ready":
            raise RuntimeError(f"listener worker: {line!r}")
    attached = [math.inf if crowd else 0.0]
    worker_lines: list[str] = []

    def read_worker() -> None:  # the one reader of its stdout from here on
        assert worker is not None and worker.stdout is not None
        for line in worker.stdout:
            if line.strip() == "attached":
                attached[0] = time.perf_counter()
            else:
                worker_lines.append(line)

    reader = threading.Thread(target=read_worker, daemon=True)
    if worker is not None:
        reader.start()
    arrivals: list[tuple[int, float]] = []  # (end sample, arrival)
    received = bytearray()

    async def listen_here() -> None:
        async with listen(f"ws://127.0.0.1:{port}", stream_id, 0, config=WAITING) as stream:
            async for chunk in stream:
                if chunk.kind is ChunkKind.AUDIO:
                    arrivals.append((chunk.end, time.perf_counter()))
                    received.extend(chunk.data)

    here = None if crowd else asyncio.create_task(listen_here())
    client.on_state(lambda s: connected.set() if s.phase is Phase.CONNECTED else None)
    client.on_ack = on_ack
    producer = threading.Thread(target=produce, name="bench-producer", daemon=True)
    producer.start()
    cpu0 = cpu_seconds(server_pid)
    result = await asyncio.wait_for(client.run(), seconds + 60.0)
    server_cpu = cpu_seconds(server_pid) - cpu0
    producer.join(5.0)
    if not result.ok:
        raise RuntimeError(f"live run failed: {result.error}")
    identical = True
    if here is not None:
        await asyncio.wait_for(here, 30.0)
        identical = bytes(received) == audio
    if worker is not None:
        await asyncio.to_thread(worker.wait, 60.0)
        await asyncio.to_thread(reader.join, 10.0)
        report = json.loads(worker_lines[-1])
        identical = report["identical"] == crowd
    # Steady state: from ACK_SETTLE s into the stream, and (with a crowd) only once all its
    # listeners have attached: their connects are a one-off, not the cost of listening.
    measured_from = max(ready[0] + min(ACK_SETTLE, seconds / 4), attached[0])
    ack_ms = [(acked_at[k] - ready[k]) * 1000 for k in range(frames)
              if ready[k] >= measured_from]
    if len(ack_ms) < frames // 4:
        raise RuntimeError(f"only {len(ack_ms)} of {frames} frames after the crowd attached")
    # live only: what arrived before the listener had caught up measures catch-up, not this
    settled = ready[0] + 1.0
    listen_ms = [(t - acked_at[min(end // fs, frames) - 1]) * 1000 for end, t in arrivals
                 if acked_at[min(end // fs, frames) - 1] >= settled]
    a50, a99 = percentiles(ack_ms, (50, 99))
    l50, l99 = percentiles(listen_ms, (50, 99))
    return LiveRun(crowd, a50, a99, l50, l99, identical, frames, server_cpu)


async def catchup_once(port: int, stream_id: str, seconds: float) -> float:
    """Seconds one listener needs to read `seconds` of durable backlog of an open stream."""
    fmt = SPEECH
    audio = pcm(fmt, seconds, seed=4)
    up = AsyncUplink(f"ws://127.0.0.1:{port}", stream_id=stream_id, rate=fmt.sample_rate,
                     overflow="block", buffer_seconds=seconds + 10, config=uplink_config())
    await up.push(audio)
    total = len(audio) // fmt.block_align
    while up.stats().counters.acked_sample < total:
        await asyncio.sleep(0.01)
    received = bytearray()
    t0 = time.perf_counter()
    async with listen(f"ws://127.0.0.1:{port}", stream_id, 0) as stream:
        async for chunk in stream:
            received.extend(chunk.data)
            if chunk.end >= total:
                break
    elapsed = time.perf_counter() - t0
    await up.aclose(timeout=30)
    if bytes(received) != audio:
        raise RuntimeError("catch-up listener output differs from the source")
    return elapsed


def idle_memory(server: OursServer, stream_id: str, count: int) -> float:
    """Server RSS growth per idle listener, KiB: `count` listeners wait at the live end of an
    open stream whose capture is connected and silent."""
    up = Uplink(f"ws://127.0.0.1:{server.port}", stream_id=stream_id, rate=SPEECH.sample_rate,
                config=uplink_config())
    up.push(pcm(SPEECH, 1.0))
    deadline = time.monotonic() + 10
    while up.stats().counters.acked_sample < SPEECH.sample_rate and time.monotonic() < deadline:
        time.sleep(0.01)
    try:
        return _idle_growth(server, stream_id, count)
    finally:
        up.close(timeout=10)


def _idle_growth(server: OursServer, stream_id: str, count: int) -> float:
    time.sleep(0.5)
    before = rss_bytes(server.pid)
    worker = subprocess.Popen(
        [sys.executable, "-m", "tools.bench.listeners", "idle", "--port", str(server.port),
         "--stream-id", stream_id, "--count", str(count)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO_ROOT)
    assert worker.stdout is not None and worker.stdin is not None
    line = worker.stdout.readline()
    if line.strip() != "ready":
        raise RuntimeError(f"idle worker: {line!r}")
    time.sleep(1.0)
    after = rss_bytes(server.pid)
    worker.stdin.close()
    worker.wait(30)
    return (after - before) / count / 1024


def run(settings: ListenerSettings, workdir: Path) -> tuple[dict[str, Any], list[Row]]:
    none: list[LiveRun] = []
    crowd: list[LiveRun] = []
    catchups: list[float] = []
    data = workdir / "ours-data"
    with OursServer(data) as server:
        for i in range(settings.repeats):
            none.append(asyncio.run(live_once(server.port, f"solo-{i}",
                                              settings.live_seconds, 0, server.pid)))
            crowd.append(asyncio.run(live_once(server.port, f"crowd-{i}",
                                               settings.live_seconds, settings.listeners,
                                               server.pid, settings.crowd_nice)))
            catchups.append(asyncio.run(catchup_once(server.port, f"backlog-{i}",
                                                     settings.backlog_seconds)))
        per_idle = idle_memory(server, "idle", settings.idle_listeners)
    l50 = summarize([r.listen_p50_ms for r in none])
    l99 = summarize([r.listen_p99_ms for r in none])
    a0 = summarize([r.ack_p99_ms for r in none])
    a100 = summarize([r.ack_p99_ms for r in crowd])
    speed = summarize([settings.backlog_seconds / s for s in catchups])
    identical = all(r.outputs_identical for r in none + crowd)
    n = settings.listeners
    per_listener_us = summarize([(c.server_cpu_s - o.server_cpu_s) / (n * c.frames) * 1e6
                                 for o, c in zip(none, crowd, strict=True)])
    cpu_none = summarize([r.server_cpu_s / settings.live_seconds * 100 for r in none])
    cpu_crowd = summarize([r.server_cpu_s / settings.live_seconds * 100 for r in crowd])
    rows = [
        Row("listeners", "p50 durable → listener (ms)", l50.fmt(2), "—", "—",
            f"≤ {TARGET_P50_MS:g} ms", l50.median <= TARGET_P50_MS),
        Row("listeners", "p99 durable → listener (ms)", l99.fmt(2), "—", "—",
            f"≤ {TARGET_P99_MS:g} ms", l99.median <= TARGET_P99_MS),
        Row("listeners", f"uplink frame → ack p99 (ms), {n} listeners vs none",
            a100.fmt(2), a0.fmt(2), ratio(a100.median, a0.median),
            f"≤ {TARGET_ACK_RATIO:g}×", a100.median <= TARGET_ACK_RATIO * a0.median),
        Row("listeners", f"server CPU (% of one core), {n} listeners vs none",
            cpu_crowd.fmt(1), cpu_none.fmt(1), "—", "—", None),
        Row("listeners", "server CPU per listener per 20 ms frame (µs)",
            per_listener_us.fmt(1), "—", "—", "—", None),
        Row("listeners", f"catch-up of {settings.backlog_seconds:g} s backlog (× real time)",
            speed.fmt(0), "—", "—", f"≥ {TARGET_CATCHUP:g}×", speed.median >= TARGET_CATCHUP),
        Row("listeners", "server memory per idle listener (KiB)", f"{per_idle:.1f}", "—", "—",
            f"≤ {TARGET_IDLE_KIB:g} KiB", per_idle <= TARGET_IDLE_KIB),
        Row("listeners", "every listener's output identical", "yes" if identical else "NO",
            "—", "—", "every run", identical),
    ]
    results = {"settings": asdict(settings), "no_crowd": [asdict(r) for r in none],
               "crowd": [asdict(r) for r in crowd], "catchup_s": catchups,
               "idle_kib_per_listener": per_idle, "identical": identical}
    return results, rows


# -- worker processes -----------------------------------------------------------------------

async def crowd_worker(port: int, stream_id: str, count: int, sha256: str) -> None:
    """`count` listeners from sample 0. Prints `ready` once imported (before connecting),
    `attached` once every listener has had audio, then the result as JSON."""
    print("ready", flush=True)
    waiting = count

    async def one() -> bool:
        nonlocal waiting
        got = hashlib.sha256()
        first = True
        async with listen(f"ws://127.0.0.1:{port}", stream_id, 0, config=WAITING) as stream:
            async for chunk in stream:
                if chunk.kind is ChunkKind.AUDIO:
                    got.update(chunk.data)
                    if first:
                        first, waiting = False, waiting - 1
                        if waiting == 0:
                            print("attached", flush=True)
        return got.hexdigest() == sha256

    results = await asyncio.gather(*(one() for _ in range(count)))
    print(json.dumps({"identical": sum(results), "count": count}), flush=True)


async def idle_worker(port: int, stream_id: str, count: int) -> None:
    import websockets

    url = f"ws://127.0.0.1:{port}/v1/streams/{stream_id}/listen?from=live"
    conns = []
    for _ in range(count):
        ws = await websockets.connect(url, ping_interval=None, compression=None)
        await ws.recv()  # the header
        conns.append(ws)
    print("ready", flush=True)
    await asyncio.to_thread(sys.stdin.read)
    for ws in conns:
        await ws.close()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m tools.bench.listeners")
    ap.add_argument("role", choices=("worker", "idle"))
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--stream-id", required=True)
    ap.add_argument("--count", type=int, required=True)
    ap.add_argument("--sha256", default="")
    ap.add_argument("--nice", type=int, default=0)
    args = ap.parse_args(argv)
    if args.role == "worker":
        os.nice(args.nice)
        asyncio.run(crowd_worker(args.port, args.stream_id, args.count, args.sha256))
    else:
        asyncio.run(idle_worker(args.port, args.stream_id, args.count))


if __name__ == "__main__":
    main()

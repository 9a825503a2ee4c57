"""Benchmark 2: live latency, frame ready -> ack received.

A producer thread plays the microphone: every 20 ms (on a deadline schedule, so no drift)
it stamps a 16 kHz mono int16 frame as ready and pushes it into the ring, exactly where a
PortAudio callback would. The uplink sends it; the server appends, fsyncs and acks. When
an ack arrives, every frame it newly covers gets latency = ack time - ready time. The
stream is then ended and the stored WAV compared with what was pushed.

The baseline sender stamps a frame, sends it over its own connection and takes the time
until the baseline receiver's ack covers it: the round trip of one frame through websockets,
a write and an fsync, with nothing else.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from array import array
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tools.bench.baseline import send_live
from tools.bench.common import (
    FRAME_PERIOD,
    SPEECH,
    frame_samples,
    pcm,
    sleep_until,
    stored_audio,
    uplink_config,
)
from tools.bench.report import Row, ratio
from tools.bench.servers import BaselineServer, OursServer
from tools.bench.stats import Summary, percentiles, summarize
from uplink.client import UplinkClient
from uplink.core import Phase
from uplink.ring import OverflowPolicy, RingBuffer

TARGET_P50_MS = 2.0
TARGET_P99_MS = 10.0


@dataclass(frozen=True, slots=True)
class LatencySettings:
    seconds: float = 60.0
    repeats: int = 3


@dataclass(frozen=True, slots=True)
class LatencyRun:
    p50_ms: float
    p99_ms: float
    max_ms: float
    frames: int
    identical: bool = True

    @classmethod
    def of(cls, seconds: list[float], identical: bool = True) -> LatencyRun:
        p50, p99 = percentiles([s * 1000 for s in seconds], (50, 99))
        return cls(p50, p99, max(seconds) * 1000, len(seconds), identical)


async def ours_once(port: int, stream_id: str, seconds: float, data_dir: Path) -> LatencyRun:
    fmt = SPEECH
    fs = frame_samples(fmt)
    frame_bytes = fs * fmt.block_align
    frames = round(seconds / FRAME_PERIOD)
    audio = pcm(fmt, frames * FRAME_PERIOD, seed=2)
    ring = RingBuffer(fmt, fs, 30.0, OverflowPolicy.DROP_OLDEST)
    client = UplinkClient(f"ws://127.0.0.1:{port}", ring, stream_id, uplink_config())
    ready = array("d", bytes(8 * frames))
    latency = array("d", [math.nan]) * frames
    acked = 0
    connected = threading.Event()

    def on_ack(seq: int) -> None:
        nonlocal acked
        now = time.perf_counter()
        for s in range(acked, min(seq, frames)):
            latency[s] = now - ready[s]
        acked = max(acked, seq)

    def produce() -> None:
        connected.wait(30.0)
        view = memoryview(audio)
        start = time.perf_counter()
        for k in range(frames):
            sleep_until(start + k * FRAME_PERIOD)
            ready[k] = time.perf_counter()
            ring.push(view[k * frame_bytes : (k + 1) * frame_bytes])
        ring.close()

    client.on_state(lambda s: connected.set() if s.phase is Phase.CONNECTED else None)
    client.on_ack = on_ack
    producer = threading.Thread(target=produce, name="bench-producer", daemon=True)
    producer.start()
    result = await asyncio.wait_for(client.run(), seconds + 60.0)
    producer.join(5.0)
    if not result.ok:
        raise RuntimeError(f"live run failed: {result.error}")
    values = [v for v in latency if not math.isnan(v)]
    if len(values) != frames:
        raise RuntimeError(f"only {len(values)} of {frames} frames were acked")
    return LatencyRun.of(values, stored_audio(data_dir, stream_id) == audio)


async def baseline_once(port: int, stream_id: str, seconds: float) -> LatencyRun:
    fmt = SPEECH
    frame = pcm(fmt, FRAME_PERIOD, seed=3)
    frames = round(seconds / FRAME_PERIOD)
    return LatencyRun.of(await send_live(port, stream_id, frame, frames, FRAME_PERIOD))


def run(settings: LatencySettings, workdir: Path) -> tuple[dict[str, Any], list[Row]]:
    ours_runs: list[LatencyRun] = []
    base_runs: list[LatencyRun] = []
    ours_dir, base_dir = workdir / "ours-data", workdir / "baseline-data"
    with OursServer(ours_dir) as ours, BaselineServer(base_dir) as base:
        for i in range(settings.repeats):
            ours_runs.append(asyncio.run(ours_once(ours.port, f"live-{i}", settings.seconds, ours_dir)))
            base_runs.append(asyncio.run(baseline_once(base.port, f"live-{i}", settings.seconds)))

    def pick(runs: list[LatencyRun], attr: str) -> Summary:
        return summarize([getattr(r, attr) for r in runs])

    o50, o99, omax = pick(ours_runs, "p50_ms"), pick(ours_runs, "p99_ms"), pick(ours_runs, "max_ms")
    b50, b99, bmax = pick(base_runs, "p50_ms"), pick(base_runs, "p99_ms"), pick(base_runs, "max_ms")
    identical = all(r.identical for r in ours_runs)
    rows = [
        Row("2 live latency", "p50 frame ready → ack (ms)", o50.fmt(2), b50.fmt(2),
            ratio(o50.median, b50.median), f"≤ {TARGET_P50_MS:g} ms", o50.median <= TARGET_P50_MS),
        Row("2 live latency", "p99 (ms)", o99.fmt(2), b99.fmt(2), ratio(o99.median, b99.median),
            f"≤ {TARGET_P99_MS:g} ms", o99.median <= TARGET_P99_MS),
        Row("2 live latency", "max (ms)", omax.fmt(1), bmax.fmt(1), ratio(omax.median, bmax.median),
            "—", None),
        Row("2 live latency", "stored audio identical", "yes" if identical else "NO", "—", "—",
            "every run", identical),
    ]
    results = {
        "settings": asdict(settings),
        "frames_per_run": ours_runs[0].frames,
        "ours": [asdict(r) for r in ours_runs],
        "baseline": [asdict(r) for r in base_runs],
        "ours_p50_ms": o50, "ours_p99_ms": o99, "ours_max_ms": omax,
        "baseline_p50_ms": b50, "baseline_p99_ms": b99, "baseline_max_ms": bmax,
        "identical": identical,
    }
    return results, rows

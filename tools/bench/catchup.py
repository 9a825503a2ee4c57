"""Benchmark 1: catch-up after an outage.

The uplink holds a backlog (default 60 s of 16 kHz mono int16 in 20 ms frames: 3,000 frames)
in its ring when the server becomes reachable. We time from the connection reaching
`connected` (welcome received) until an ack covers the whole backlog, i.e. until all of it
is fsync'd on the server. Then the stream is ended normally and the stored WAV is compared
with the source, so a fast but wrong run cannot count.

The baseline sender moves the same bytes to the baseline receiver, timed from its open
connection to the ack covering the last frame, in two shapes: messages of the same size as
ours (the uplink coalesces runs of frames during catch-up) and one frame per message.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tools.bench.baseline import send_backlog
from tools.bench.common import SPEECH, frame_samples, pcm, preloaded_ring, stored_audio, uplink_config
from tools.bench.report import Row, ratio
from tools.bench.servers import BaselineServer, OursServer
from tools.bench.stats import summarize
from uplink.client import UplinkClient
from uplink.core import Phase
from uplink.wire import HEADER_SIZE

TARGET_SPEED = 1000.0  # × real time
TARGET_RATIO = 0.5  # of the baseline's speed


@dataclass(frozen=True, slots=True)
class CatchupSettings:
    backlog_seconds: float = 60.0
    repeats: int = 7
    warmup: int = 1


@dataclass(frozen=True, slots=True)
class CatchupRun:
    connect_s: float  # TCP + upgrade (+ hello/welcome for ours)
    transfer_s: float  # connected -> whole backlog acked
    identical: bool = True


async def ours_once(port: int, stream_id: str, payload: bytes, backlog_seconds: float,
                    data_dir: Path) -> CatchupRun:
    fmt = SPEECH
    total = len(payload) // (frame_samples(fmt) * fmt.block_align)
    ring = preloaded_ring(fmt, payload, backlog_seconds + 10.0)
    client = UplinkClient(f"ws://127.0.0.1:{port}", ring, stream_id, uplink_config())
    marks: dict[str, float] = {}

    def on_state(state: Any) -> None:
        if state.phase is Phase.CONNECTED and "connected" not in marks:
            marks["connected"] = time.perf_counter()

    def on_ack(acked: int) -> None:
        if acked >= total and "acked" not in marks:
            marks["acked"] = time.perf_counter()
            ring.close()  # now end the stream (not timed)

    client.on_state(on_state)
    client.on_ack = on_ack
    marks["start"] = time.perf_counter()
    result = await asyncio.wait_for(client.run(), 60.0)
    if not result.ok or "acked" not in marks:
        raise RuntimeError(f"catch-up run failed: {result.error}")
    stored = stored_audio(data_dir, stream_id)
    return CatchupRun(marks["connected"] - marks["start"], marks["acked"] - marks["connected"],
                      identical=stored == payload)


def coalesced_frames(frame_bytes: int) -> int:
    """Frames per message the uplink sends during catch-up (its max_coalesce_bytes)."""
    cfg = uplink_config()
    return max(1, min(cfg.max_coalesce_bytes, (1 << 20) - HEADER_SIZE) // frame_bytes)


def run(settings: CatchupSettings, workdir: Path) -> tuple[dict[str, Any], list[Row]]:
    fmt = SPEECH
    frame_bytes = frame_samples(fmt) * fmt.block_align
    payload = pcm(fmt, settings.backlog_seconds)
    per_message = coalesced_frames(frame_bytes)
    ours_runs: list[CatchupRun] = []
    base_runs: list[CatchupRun] = []
    base1_runs: list[CatchupRun] = []
    ours_dir, base_dir = workdir / "ours-data", workdir / "baseline-data"
    with OursServer(ours_dir) as ours, BaselineServer(base_dir) as base:
        for i in range(settings.warmup + settings.repeats):
            keep = i >= settings.warmup
            run_ours = asyncio.run(
                ours_once(ours.port, f"catchup-{i}", payload, settings.backlog_seconds, ours_dir))
            connect_s, transfer_s = asyncio.run(
                send_backlog(base.port, f"catchup-{i}", payload, frame_bytes, per_message))
            c1, t1 = asyncio.run(send_backlog(base.port, f"catchup1-{i}", payload, frame_bytes, 1))
            if keep:
                ours_runs.append(run_ours)
                base_runs.append(CatchupRun(connect_s, transfer_s))
                base1_runs.append(CatchupRun(c1, t1))
    secs = settings.backlog_seconds
    ours_t = summarize([r.transfer_s * 1000 for r in ours_runs])
    base_t = summarize([r.transfer_s * 1000 for r in base_runs])
    base1_t = summarize([r.transfer_s * 1000 for r in base1_runs])
    ours_x = summarize([secs / r.transfer_s for r in ours_runs])
    base_x = summarize([secs / r.transfer_s for r in base_runs])
    base1_x = summarize([secs / r.transfer_s for r in base1_runs])
    identical = all(r.identical for r in ours_runs)
    speed_ratio = base_t.median / ours_t.median
    rows = [
        Row("1 catch-up", f"{secs:g} s backlog acked (ms)", ours_t.fmt(1), base_t.fmt(1),
            ratio(ours_t.median, base_t.median), f"≤ {secs * 1000 / TARGET_SPEED:g} ms",
            ours_t.median <= secs * 1000 / TARGET_SPEED),
        Row("1 catch-up", "speed (× real time)", ours_x.fmt(0), base_x.fmt(0),
            f"{speed_ratio:.2f}", f"≥ {TARGET_SPEED:g}×", ours_x.median >= TARGET_SPEED),
        Row("1 catch-up", "speed relative to the baseline (median time ratio)",
            f"{speed_ratio:.2f}", "1", f"{speed_ratio:.2f}", f"≥ {TARGET_RATIO}",
            speed_ratio >= TARGET_RATIO),
        Row("1 catch-up", "baseline, one frame per message (ms)", "—", base1_t.fmt(1),
            ratio(ours_t.median, base1_t.median), "(reference)", None),
        Row("1 catch-up", "stored audio identical to the backlog", "yes" if identical else "NO",
            "—", "—", "every run", identical),
    ]
    results = {
        "settings": asdict(settings),
        "frames": len(payload) // frame_bytes,
        "bytes": len(payload),
        "frames_per_message": per_message,
        "ours_ms": ours_t, "baseline_ms": base_t, "baseline_per_frame_ms": base1_t,
        "ours_x_realtime": ours_x, "baseline_x_realtime": base_x,
        "baseline_per_frame_x_realtime": base1_x,
        "ours_connect_ms": summarize([r.connect_s * 1000 for r in ours_runs]),
        "baseline_connect_ms": summarize([r.connect_s * 1000 for r in base_runs]),
        "speed_ratio_vs_baseline": speed_ratio,
        "identical": identical,
    }
    return results, rows


"""Benchmark 6: the write-ahead spool's cost (issue 13) — client CPU and callback timing.

The client of benchmark 4 (a) (tools/bench/footprint.py: 48 kHz stereo float32 in real
time, 20 ms producer blocks into the frame cutter and the ring, the UplinkClient streaming
to the real server) runs twice in its own spawned process: without a spool, and with one
(uplink/spool.py, synced every second as the microphone's default). Measured in each, after
a warm-up:

- CPU: user+system seconds per wall second (share of one core); the target is at most
  0.5 percentage points more with the spool;
- the producer's "callback": how long each `write` into the cutter took (max, p99) and the
  longest interval between two writes (max), which is what a PortAudio callback would see.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing as mp
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from tools.bench.common import STUDIO, frame_samples, pcm, sleep_until, uplink_config
from tools.bench.footprint import BLOCK_SECONDS, _measure
from tools.bench.report import Row
from tools.bench.servers import OursServer, remove_data
from tools.bench.stats import percentiles, summarize
from uplink.client import UplinkClient
from uplink.core import Phase
from uplink.frames import FrameCutter
from uplink.ring import OverflowPolicy, RingBuffer
from uplink.spool import Spool, SyncPolicy

TARGET_EXTRA_CPU_PP = 0.5


@dataclass(frozen=True, slots=True)
class SpoolSettings:
    seconds: float = 30.0
    warmup: float = 3.0
    repeats: int = 1
    sync: str = "1"  # --spool-sync: the microphone's default (every second)
    #: also measured: the writer batching frames (Spool.batch_seconds), which trades up to
    #: this much send latency for CPU; 0 = not measured
    batch_seconds: float = 0.04


@dataclass(frozen=True, slots=True)
class SpoolUsage:
    spool: bool
    cpu_share: float
    write_max_ms: float  # longest single write into the cutter (the callback's own work)
    write_p99_ms: float
    interval_max_ms: float  # longest gap between two write starts (20 ms nominal)
    spool_syncs: int = 0
    spool_mib: float = 0.0


class _TimedProducer(threading.Thread):
    """footprint._Producer, timing each write and the interval between writes."""

    def __init__(self, sink: FrameCutter, audio: bytes, block: int) -> None:
        super().__init__(name="bench-mic", daemon=True)
        self.sink, self.audio, self.block = sink, memoryview(audio), block
        self.stopping = threading.Event()
        self.measuring = False
        self.durations: list[float] = []
        self.intervals: list[float] = []

    def run(self) -> None:
        start, k, size = time.perf_counter(), 0, len(self.audio)
        last: float | None = None
        while not self.stopping.is_set():
            sleep_until(start + k * BLOCK_SECONDS)
            off = (k * self.block) % size
            t0 = time.perf_counter()
            self.sink.write(self.audio[off : off + self.block])
            t1 = time.perf_counter()
            if self.measuring:
                self.durations.append(t1 - t0)
                if last is not None:
                    self.intervals.append(t0 - last)
            last = t0
            k += 1
        self.sink.close()


async def _client(port: int, with_spool: bool, seconds: float, warmup: float,
                  sync: str, batch: float) -> SpoolUsage:
    fmt = STUDIO
    config = uplink_config()
    ring = RingBuffer(fmt, frame_samples(fmt), config.buffer_seconds, OverflowPolicy.DROP_OLDEST)
    stream_id = f"spool-bench-{time.time_ns()}"
    client = UplinkClient(f"ws://127.0.0.1:{port}", ring, stream_id, config)
    spool: Spool | None = None
    with tempfile.TemporaryDirectory(prefix="spool-bench-") as tmp:
        if with_spool:
            spool = Spool.open(Path(tmp), SyncPolicy.parse(sync))
            spool.create(stream_id, fmt, ring.frame_samples, ring.slots, "bench")
            spool.batch_seconds = batch
            spool.attach(ring)
            core = client.core
            keep = spool
            client.on_state(lambda s: keep.record_credential(core.epoch or 0, core.credential)
                            if s.phase is Phase.CONNECTED and core.credential else None)
        block = round(BLOCK_SECONDS * fmt.sample_rate) * fmt.block_align
        producer = _TimedProducer(FrameCutter(ring), pcm(fmt, 1.0, seed=5), block)
        connected = asyncio.Event()
        client.on_state(lambda s: connected.set() if s.phase is Phase.CONNECTED else None)
        runner = asyncio.create_task(client.run())
        await asyncio.wait_for(connected.wait(), 15.0)
        producer.start()
        await asyncio.sleep(warmup)
        producer.measuring = True
        usage = await _measure(seconds, 0.0)
        producer.measuring = False
        producer.stopping.set()
        result = await asyncio.wait_for(runner, 30.0)
        if not result.ok:
            raise RuntimeError(f"spool bench client failed: {result.error}")
        syncs = 0
        size = 0.0
        if spool is not None:
            syncs = spool.stats.syncs
            size = (Path(tmp) / "audio.spool").stat().st_size / 2**20
            spool.finish()
    [p99] = percentiles([d * 1000 for d in producer.durations], [99])
    return SpoolUsage(with_spool, usage.cpu_share, max(producer.durations) * 1000, p99,
                      max(producer.intervals) * 1000, syncs, size)


def probe_main(port: int, with_spool: bool, seconds: float, warmup: float, sync: str,
               batch: float, conn: Connection) -> None:
    try:
        conn.send(("ok", asyncio.run(_client(port, with_spool, seconds, warmup, sync, batch))))
    except BaseException as e:
        conn.send(("error", repr(e)))


def usage(port: int, with_spool: bool, seconds: float, warmup: float,
          sync: str = "1", batch: float = 0.0) -> SpoolUsage:
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=probe_main,
                       args=(port, with_spool, seconds, warmup, sync, batch, child),
                       daemon=True)
    proc.start()
    child.close()
    try:
        if not parent.poll(seconds + warmup + 60.0):
            raise TimeoutError("spool probe did not finish")
        try:
            tag, value = parent.recv()
        except EOFError:
            raise RuntimeError(f"spool probe died (exit code {proc.exitcode})") from None
    finally:
        proc.join(10.0)
        if proc.is_alive():
            proc.kill()
    if tag != "ok":
        raise RuntimeError(f"spool probe failed: {value}")
    assert isinstance(value, SpoolUsage)
    return value


def run(settings: SpoolSettings, workdir: Path) -> tuple[dict[str, Any], list[Row]]:
    off: list[SpoolUsage] = []
    on: list[SpoolUsage] = []
    batched: list[SpoolUsage] = []
    with OursServer(workdir / "spool-server") as server:
        for _ in range(settings.repeats):
            off.append(usage(server.port, False, settings.seconds, settings.warmup))
            on.append(usage(server.port, True, settings.seconds, settings.warmup,
                            settings.sync))
            if settings.batch_seconds > 0:
                batched.append(usage(server.port, True, settings.seconds, settings.warmup,
                                     settings.sync, settings.batch_seconds))
    remove_data(workdir / "spool-server")
    cpu_off = summarize([u.cpu_share * 100 for u in off])
    cpu_on = summarize([u.cpu_share * 100 for u in on])
    extra = cpu_on.median - cpu_off.median

    def worst(values: list[SpoolUsage], attr: str) -> str:
        return f"{max(getattr(u, attr) for u in values):.2f}"

    rows = [
        Row("6 spool", "client CPU, 48 kHz stereo float32 (% of one core; spool on / off; "
            f"--spool-sync {settings.sync})",
            cpu_on.fmt(2), cpu_off.fmt(2), f"{extra:+.2f} pp",
            f"≤ +{TARGET_EXTRA_CPU_PP:g} pp", extra <= TARGET_EXTRA_CPU_PP),
        Row("6 spool", "max interval between producer writes (ms; on / off, 20 ms nominal)",
            worst(on, "interval_max_ms"), worst(off, "interval_max_ms"), "—", "unaffected",
            None),
        Row("6 spool", "producer write time max / p99 (ms; on / off)",
            f"{worst(on, 'write_max_ms')} / {worst(on, 'write_p99_ms')}",
            f"{worst(off, 'write_max_ms')} / {worst(off, 'write_p99_ms')}", "—", "—", None),
    ]
    if batched:
        cpu_batched = summarize([u.cpu_share * 100 for u in batched])
        extra_batched = cpu_batched.median - cpu_off.median
        rows.append(Row(
            "6 spool", f"… with the writer batching {settings.batch_seconds * 1000:g} ms "
            f"(up to that much send latency; % of one core; on / off)", cpu_batched.fmt(2),
            cpu_off.fmt(2), f"{extra_batched:+.2f} pp", f"≤ +{TARGET_EXTRA_CPU_PP:g} pp",
            extra_batched <= TARGET_EXTRA_CPU_PP))
        rows.append(Row("6 spool", "… its max interval between producer writes (ms)",
                        worst(batched, "interval_max_ms"), worst(off, "interval_max_ms"), "—",
                        "unaffected", None))
    results = {"off": [asdict(u) for u in off], "on": [asdict(u) for u in on],
               "on_batched": [asdict(u) for u in batched],
               "cpu_pct_off": cpu_off, "cpu_pct_on": cpu_on, "extra_cpu_pp": extra}
    with contextlib.suppress(Exception):
        results["spool_mib"] = on[0].spool_mib
    return results, rows

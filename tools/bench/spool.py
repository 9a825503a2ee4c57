"""Benchmark 6: the write-ahead spool's cost (issue 13) — client CPU and callback timing.

The client of benchmark 4 (a) (tools/bench/footprint.py: 48 kHz stereo float32 in real
time, 20 ms producer blocks into the frame cutter and the ring, the UplinkClient streaming
to the real server) runs twice in its own spawned process: without a spool, and with one
(uplink/spool.py, synced every second as the microphone's default, attached on the
client's event loop as the capture does). Measured in each, after a warm-up:

- CPU: user+system seconds per wall second (share of one core; getrusage of the client
  process); the target is at most 0.5 percentage points more with the spool. That is a
  few tenths of a point, and a shared machine's background load drifts by as much between
  two runs one after the other, so each round runs the two clients AT THE SAME TIME (two
  processes, each its own stream to the same server, measuring the same wall-clock window,
  started together through a barrier after their warm-up): whatever else the machine does
  weighs on both. `rounds` such pairs per repeat; the result is the mean of the per-pair
  differences, with their range;
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
from multiprocessing.synchronize import Barrier
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
    rounds: int = 3  # off/on pairs (run side by side) per repeat, `seconds` each


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
                  sync: str, together: Barrier) -> SpoolUsage:
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
            spool.attach(ring)  # on the running loop, as AsyncUplink does
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
        # both clients of the pair measure the same window (module docstring)
        await asyncio.get_running_loop().run_in_executor(None, together.wait, 60.0)
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
               together: Barrier, conn: Connection) -> None:
    try:
        conn.send(("ok", asyncio.run(_client(port, with_spool, seconds, warmup, sync,
                                             together))))
    except BaseException as e:
        conn.send(("error", repr(e)))


def usage_pair(port: int, seconds: float, warmup: float,
               sync: str = "1") -> tuple[SpoolUsage, SpoolUsage]:
    """(off, on): both clients run at once, each in its own spawned process."""
    ctx = mp.get_context("spawn")
    together = ctx.Barrier(2)
    probes = []
    for with_spool in (False, True):
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=probe_main,
                           args=(port, with_spool, seconds, warmup, sync, together, child),
                           daemon=True)
        proc.start()
        child.close()
        probes.append((proc, parent))
    results: list[SpoolUsage] = []
    try:
        for proc, parent in probes:
            if not parent.poll(seconds + warmup + 60.0):
                raise TimeoutError("spool probe did not finish")
            try:
                tag, value = parent.recv()
            except EOFError:
                raise RuntimeError(f"spool probe died (exit code {proc.exitcode})") from None
            if tag != "ok":
                raise RuntimeError(f"spool probe failed: {value}")
            assert isinstance(value, SpoolUsage)
            results.append(value)
    finally:
        for proc, _ in probes:
            proc.join(10.0)
            if proc.is_alive():
                proc.kill()
    off, on = results
    return off, on


def run(settings: SpoolSettings, workdir: Path) -> tuple[dict[str, Any], list[Row]]:
    off: list[SpoolUsage] = []
    on: list[SpoolUsage] = []
    seconds = settings.seconds
    with OursServer(workdir / "spool-server") as server:
        for _ in range(settings.repeats * max(1, settings.rounds)):
            pair = usage_pair(server.port, seconds, settings.warmup, settings.sync)
            off.append(pair[0])
            on.append(pair[1])
    remove_data(workdir / "spool-server")
    cpu_off = summarize([u.cpu_share * 100 for u in off])
    cpu_on = summarize([u.cpu_share * 100 for u in on])
    pair_pp = [(a.cpu_share - b.cpu_share) * 100 for a, b in zip(on, off, strict=True)]
    extra = sum(pair_pp) / len(pair_pp)

    def worst(values: list[SpoolUsage], attr: str) -> str:
        return f"{max(getattr(u, attr) for u in values):.2f}"

    spread = f" [{min(pair_pp):+.2f}…{max(pair_pp):+.2f}]" if len(pair_pp) > 1 else ""
    rows = [
        Row("6 spool", "client CPU, 48 kHz stereo float32 (% of one core; spool on / off; "
            f"--spool-sync {settings.sync}; mean of {len(pair_pp)} pairs run side by side, "
            f"{seconds:g} s each [pair range])",
            cpu_on.fmt(2), cpu_off.fmt(2), f"{extra:+.2f} pp{spread}",
            f"≤ +{TARGET_EXTRA_CPU_PP:g} pp", extra <= TARGET_EXTRA_CPU_PP),
        Row("6 spool", "max interval between producer writes (ms; on / off, 20 ms nominal)",
            worst(on, "interval_max_ms"), worst(off, "interval_max_ms"), "—", "unaffected",
            None),
        Row("6 spool", "producer write time max / p99 (ms; on / off)",
            f"{worst(on, 'write_max_ms')} / {worst(on, 'write_p99_ms')}",
            f"{worst(off, 'write_max_ms')} / {worst(off, 'write_p99_ms')}", "—", "—", None),
    ]
    results = {"off": [asdict(u) for u in off], "on": [asdict(u) for u in on],
               "cpu_pct_off": cpu_off, "cpu_pct_on": cpu_on, "pair_extra_pp": pair_pp,
               "extra_cpu_pp": extra}
    with contextlib.suppress(Exception):
        results["spool_mib"] = on[0].spool_mib
    return results, rows

"""Benchmark 4: footprint — client CPU and memory, server memory per stream, a soak.

(a) Client CPU and RSS while streaming 48 kHz stereo float32 in real time. The client runs in
    its own process (spawned), so getrusage and /proc/self describe the client alone: a
    producer thread plays the microphone (20 ms blocks, as the microphone source asks
    PortAudio for) into the FrameCutter and the ring; the UplinkClient streams to the real
    server. The microphone thread alone (same blocks into a ring nobody reads) is measured
    too, so the uplink's own share can be told apart. CPU is measured
    after a warm-up, as user+system seconds per wall second (share of one core). The
    baseline sender streams the same frames in its own process to the baseline receiver.

(b) Server RSS per connected idle stream: a fresh server, a few warm-up streams, RSS; then K
    more streams connected (v1: hello/welcome, then a ping every 5 s), RSS again; the
    difference over K. Same for the baseline receiver.

(c) Soak: one live 16 kHz mono stream through the chaos proxy with a fault every 10 s
    (reset, 4 s black hole, 2 s refusal, 3 s latency spike, in turn), client and server RSS
    sampled every 2 s. Growth is the least-squares slope over the run after the warm-up,
    times the measured span. The stored audio must equal what was captured.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing as mp
import resource
import threading
import time
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Literal

from tools.bench.baseline import ITEM, MAX_MESSAGE_BYTES
from tools.bench.common import (
    FRAME_PERIOD,
    SPEECH,
    STUDIO,
    frame_samples,
    pcm,
    sleep_until,
    stored_audio,
    uplink_config,
)
from tools.bench.loadgen import LoadRun
from tools.bench.report import Row, ratio
from tools.bench.servers import BaselineServer, OursServer, make_server, remove_data
from tools.bench.stats import rss_bytes, summarize
from tools.chaos_proxy import ChaosProxyThread, ChaosSchedule
from uplink.audio import AudioFormat
from uplink.client import UplinkClient
from uplink.core import Phase
from uplink.frames import FrameCutter
from uplink.ring import OverflowPolicy, RingBuffer

TARGET_CPU = 0.03  # share of one core
TARGET_KIB_PER_STREAM = 100.0
FLAT_LIMIT_MIB = 1.0  # fitted growth over the soak's measured span
PROFILE_RATE = 1000  # py-spy samples per second: the client is busy only a few % of the time
# producer block: the microphone source's callback size (capture/microphone.py: one 20 ms
# frame per PortAudio callback)
BLOCK_SECONDS = 0.020
SOAK_FAULTS: tuple[tuple[str, dict[str, float]], ...] = (
    ("reset", {}),
    ("blackhole", {"duration": 4.0}),
    ("refuse", {"duration": 2.0}),
    ("latency", {"seconds": 0.2, "duration": 3.0}),
)


@dataclass(frozen=True, slots=True)
class FootprintSettings:
    client_seconds: float = 60.0
    client_warmup: float = 5.0
    client_repeats: int = 3
    idle_streams: int = 500
    idle_repeats: int = 3
    idle_settle_seconds: float = 2.0  # after connecting, before reading the RSS
    soak_seconds: float = 600.0
    soak_fault_interval: float = 10.0
    soak_buffer_seconds: float = 30.0
    soak_warmup: float = 45.0


# -- (a) client CPU and memory --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ClientUsage:
    cpu_share: float  # user+system seconds per wall second, after the warm-up
    rss_mib: float  # at the end
    peak_rss_mib: float  # ru_maxrss
    ring_mib: float = 0.0  # the ring's preallocated bytes (its RSS grows into them)


class _Producer(threading.Thread):
    """Plays a microphone: `block` bytes every BLOCK_SECONDS from a looped buffer."""

    def __init__(self, sink: FrameCutter, audio: bytes, block: int) -> None:
        super().__init__(name="bench-mic", daemon=True)
        self.sink, self.audio, self.block = sink, memoryview(audio), block
        self.stopping = threading.Event()

    def run(self) -> None:
        start, k, size = time.perf_counter(), 0, len(self.audio)
        while not self.stopping.is_set():
            sleep_until(start + k * BLOCK_SECONDS)
            off = (k * self.block) % size
            self.sink.write(self.audio[off : off + self.block])
            k += 1
        self.sink.close()


async def _ours_client(port: int, fmt: AudioFormat, seconds: float, warmup: float) -> ClientUsage:
    ring = RingBuffer(fmt, frame_samples(fmt), uplink_config().buffer_seconds,
                      OverflowPolicy.DROP_OLDEST)
    client = UplinkClient(f"ws://127.0.0.1:{port}", ring, f"footprint-{time.time_ns()}",
                          uplink_config())
    block = round(BLOCK_SECONDS * fmt.sample_rate) * fmt.block_align
    producer = _Producer(FrameCutter(ring), pcm(fmt, 1.0, seed=5), block)
    connected = asyncio.Event()
    client.on_state(lambda s: connected.set() if s.phase is Phase.CONNECTED else None)
    runner = asyncio.create_task(client.run())
    await asyncio.wait_for(connected.wait(), 15.0)
    producer.start()
    usage = await _measure(seconds, warmup)
    producer.stopping.set()
    result = await asyncio.wait_for(runner, 30.0)
    if not result.ok:
        raise RuntimeError(f"footprint client failed: {result.error}")
    return ClientUsage(usage.cpu_share, usage.rss_mib, usage.peak_rss_mib, ring.memory_bytes / 2**20)


async def _baseline_client(port: int, fmt: AudioFormat, seconds: float,
                           warmup: float) -> ClientUsage:
    from websockets.asyncio.client import connect

    frame_bytes = frame_samples(fmt) * fmt.block_align
    audio = pcm(fmt, 1.0, seed=5)
    frames_in_audio = len(audio) // frame_bytes
    async with connect(f"ws://127.0.0.1:{port}/footprint-{time.time_ns()}", compression=None,
                       proxy=None, ping_interval=None, max_size=MAX_MESSAGE_BYTES) as ws:

        async def acks() -> None:
            async for _ in ws:
                pass

        reader = asyncio.create_task(acks())
        stop = asyncio.Event()

        async def send() -> None:
            start, seq = time.perf_counter(), 0
            view = memoryview(audio)
            while not stop.is_set():
                delay = start + seq * FRAME_PERIOD - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                off = (seq % frames_in_audio) * frame_bytes
                await ws.send(ITEM.pack(seq, 1) + view[off : off + frame_bytes])
                seq += 1

        sender = asyncio.create_task(send())
        usage = await _measure(seconds, warmup)
        stop.set()
        await sender
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader
    return usage


async def _measure(seconds: float, warmup: float) -> ClientUsage:
    await asyncio.sleep(warmup)
    r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    await asyncio.sleep(seconds)
    r1, t1 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    cpu = (r1.ru_utime + r1.ru_stime) - (r0.ru_utime + r0.ru_stime)
    return ClientUsage(cpu / (t1 - t0), rss_bytes() / 2**20, r1.ru_maxrss / 1024)


async def _mic_only(port: int, fmt: AudioFormat, seconds: float, warmup: float) -> ClientUsage:
    """The simulated microphone alone: blocks into the cutter and a ring nobody reads."""
    del port
    ring = RingBuffer(fmt, frame_samples(fmt), uplink_config().buffer_seconds,
                      OverflowPolicy.DROP_OLDEST)
    block = round(BLOCK_SECONDS * fmt.sample_rate) * fmt.block_align
    producer = _Producer(FrameCutter(ring), pcm(fmt, 1.0, seed=5), block)
    producer.start()
    usage = await _measure(seconds, warmup)
    producer.stopping.set()
    producer.join(5.0)
    return usage


ProbeKind = Literal["ours", "baseline", "mic"]
_PROBES = {"ours": _ours_client, "baseline": _baseline_client, "mic": _mic_only}


def client_probe_main(kind: ProbeKind, port: int, seconds: float, warmup: float,
                      conn: Connection) -> None:
    """Entry point of the spawned client process; sends ("ok", ClientUsage) or ("error", …)."""
    try:
        conn.send(("ok", asyncio.run(_PROBES[kind](port, STUDIO, seconds, warmup))))
    except BaseException as e:
        conn.send(("error", repr(e)))


def client_usage(kind: ProbeKind, port: int, seconds: float, warmup: float) -> ClientUsage:
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=client_probe_main, args=(kind, port, seconds, warmup, child),
                       daemon=True)
    proc.start()
    child.close()
    try:
        if not parent.poll(seconds + warmup + 60.0):
            raise TimeoutError(f"{kind} client probe did not finish")
        try:
            tag, value = parent.recv()
        except EOFError:
            raise RuntimeError(f"{kind} client probe died (exit code {proc.exitcode})") from None
    finally:
        proc.join(10.0)
        if proc.is_alive():
            proc.kill()
    if tag != "ok":
        raise RuntimeError(f"{kind} client probe failed: {value}")
    assert isinstance(value, ClientUsage)
    return value


# -- (b) server memory per idle stream ------------------------------------------------------------


def idle_kib_per_stream(target: Literal["ours", "baseline"], k: int, workdir: Path,
                        settle: float = 2.0) -> float:
    data_dir = workdir / f"{target}-idle"
    server = make_server(target, data_dir)
    server.start()
    loads: list[LoadRun] = []
    protocol: Literal["v1", "baseline"] = "v1" if target == "ours" else "baseline"
    try:
        warm = LoadRun(protocol, server.port, 20, workers=1, seconds=0, prefix="warm", idle=True)
        loads.append(warm)
        if warm.wait_ready(60.0) != 20:
            raise RuntimeError("warm-up streams did not all connect")
        time.sleep(settle / 2)
        before = rss_bytes(server.pid)
        main = LoadRun(protocol, server.port, k, workers=1 if k < 100 else 2, seconds=0,
                       prefix="idle", idle=True)
        loads.append(main)
        connected = main.wait_ready(60.0 + k * 0.05)
        if connected != k:
            raise RuntimeError(f"only {connected} of {k} idle streams connected")
        time.sleep(settle)
        after = rss_bytes(server.pid)
        return (after - before) / k / 1024
    finally:
        for load in loads:
            with contextlib.suppress(Exception):
                load.stop_idle()
                load.results(30.0)
            load.close()
        with contextlib.suppress(Exception):
            server.stop()
        server.kill()
        remove_data(data_dir)


# -- (c) soak ------------------------------------------------------------------------------


@dataclass(slots=True)
class SoakResult:
    seconds: float
    faults: int = 0
    reconnects: int = 0
    identical: bool = False
    ok: bool = False
    error: str | None = None
    t: list[float] = field(default_factory=list)
    client_rss_mib: list[float] = field(default_factory=list)
    server_rss_mib: list[float] = field(default_factory=list)
    client_growth_mib: float = float("nan")
    server_growth_mib: float = float("nan")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def soak_client_main(proxy_port: int, seconds: float, buffer_seconds: float,
                     conn: Connection) -> None:
    """Spawned: stream `seconds` of live 16 kHz mono through the proxy; report counters."""
    try:
        conn.send(("ok", asyncio.run(_soak_client(proxy_port, seconds, buffer_seconds))))
    except BaseException as e:
        conn.send(("error", repr(e)))


async def _soak_client(proxy_port: int, seconds: float, buffer_seconds: float) -> dict[str, Any]:
    fmt = SPEECH
    ring = RingBuffer(fmt, frame_samples(fmt), buffer_seconds, OverflowPolicy.DROP_OLDEST)
    client = UplinkClient(f"ws://127.0.0.1:{proxy_port}", ring, "soak",
                          uplink_config(buffer_seconds=buffer_seconds))
    block = round(BLOCK_SECONDS * fmt.sample_rate) * fmt.block_align
    loop_audio = pcm(fmt, 7.0, seed=6)
    cutter = FrameCutter(ring)
    producer = _Producer(cutter, loop_audio, block)
    connected = asyncio.Event()
    client.on_state(lambda s: connected.set() if s.phase is Phase.CONNECTED else None)
    runner = asyncio.create_task(client.run())
    await asyncio.wait_for(connected.wait(), 15.0)
    producer.start()
    await asyncio.sleep(seconds)
    producer.stopping.set()
    result = await asyncio.wait_for(runner, 60.0)
    producer.join(5.0)
    stats = result.stats
    return {"ok": result.ok, "error": None if result.error is None else str(result.error),
            "reconnects": stats.counters.reconnects, "samples": cutter.samples_written,
            "frames_dropped": stats.ring.frames_dropped, "block": block}


def _growth(ts: list[float], ys: list[float], after: float) -> float:
    """Least-squares slope of ys over ts (t >= after), times the span: MiB over the window."""
    pts = [(t, y) for t, y in zip(ts, ys, strict=True) if t >= after]
    if len(pts) < 3:
        return float("nan")
    n = len(pts)
    mt = sum(t for t, _ in pts) / n
    my = sum(y for _, y in pts) / n
    var = sum((t - mt) ** 2 for t, _ in pts)
    slope = sum((t - mt) * (y - my) for t, y in pts) / var
    return slope * (pts[-1][0] - pts[0][0])


def soak(settings: FootprintSettings, workdir: Path, log: Any = print) -> SoakResult:
    out = SoakResult(settings.soak_seconds)
    data_dir = workdir / "soak-data"
    interval = settings.soak_fault_interval
    count = int(settings.soak_seconds / interval)
    if count * interval >= settings.soak_seconds:
        count -= 1  # none at the very end: the stream is ending then
    faults = [(i * interval, *SOAK_FAULTS[(i - 1) % len(SOAK_FAULTS)]) for i in range(1, count + 1)]
    sample_every = 2.0 if settings.soak_seconds >= 60 else 0.5
    with OursServer(data_dir) as server:
        schedule = ChaosSchedule.explicit(faults)
        with ChaosProxyThread(target=("127.0.0.1", server.port), schedule=schedule) as proxy:
            ctx = mp.get_context("spawn")
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=soak_client_main, daemon=True,
                               args=(proxy.port, settings.soak_seconds,
                                     settings.soak_buffer_seconds, child))
            proc.start()
            child.close()
            start = time.monotonic()
            deadline = start + settings.soak_seconds + 120.0
            while not parent.poll(sample_every):
                if time.monotonic() > deadline:
                    proc.kill()
                    out.error = "soak client did not finish"
                    break
                with contextlib.suppress(OSError, ValueError):
                    out.client_rss_mib.append(rss_bytes(proc.pid) / 2**20)
                    out.server_rss_mib.append(rss_bytes(server.pid) / 2**20)
                    out.t.append(round(time.monotonic() - start, 1))
            report: dict[str, Any] = {}
            if out.error is None:
                tag, value = parent.recv()
                if tag != "ok":
                    out.error = str(value)
                else:
                    report = value
            proc.join(10.0)
            out.faults = sum(1 for e in proxy.events if not e.kind.endswith("_end"))
    if report:
        out.ok = bool(report["ok"]) and report["frames_dropped"] == 0
        out.error = report["error"]
        out.reconnects = int(report["reconnects"])
        fmt = SPEECH
        loop_audio = pcm(fmt, 7.0, seed=6)
        total = report["samples"] * fmt.block_align
        expected = (loop_audio * (total // len(loop_audio) + 1))[:total]
        out.identical = stored_audio(data_dir, "soak") == expected
    n = min(len(out.t), len(out.client_rss_mib), len(out.server_rss_mib))
    out.t, out.client_rss_mib, out.server_rss_mib = (out.t[:n], out.client_rss_mib[:n],
                                                     out.server_rss_mib[:n])
    out.client_growth_mib = _growth(out.t, out.client_rss_mib, settings.soak_warmup)
    out.server_growth_mib = _growth(out.t, out.server_rss_mib, settings.soak_warmup)
    log(f"  soak: {out.faults} faults, {out.reconnects} reconnects, identical={out.identical}, "
        f"client growth {out.client_growth_mib:+.2f} MiB, server {out.server_growth_mib:+.2f} MiB")
    remove_data(data_dir)
    return out


# -- all of it ---------------------------------------------------------------------------------


def run(settings: FootprintSettings, workdir: Path, log: Any = print,
        parts: tuple[str, ...] = ("client", "idle", "soak")) -> tuple[dict[str, Any], list[Row]]:
    results: dict[str, Any] = {"settings": asdict(settings)}
    rows: list[Row] = []
    if "client" in parts:
        ours_u: list[ClientUsage] = []
        base_u: list[ClientUsage] = []
        mic_u: list[ClientUsage] = []
        with OursServer(workdir / "fp-ours") as ours, BaselineServer(workdir / "fp-base") as base:
            for _ in range(settings.client_repeats):
                ours_u.append(client_usage("ours", ours.port, settings.client_seconds,
                                           settings.client_warmup))
                base_u.append(client_usage("baseline", base.port, settings.client_seconds,
                                           settings.client_warmup))
                mic_u.append(client_usage("mic", 0, settings.client_seconds,
                                          settings.client_warmup))
        oc = summarize([u.cpu_share * 100 for u in ours_u])
        bc = summarize([u.cpu_share * 100 for u in base_u])
        mc = summarize([u.cpu_share * 100 for u in mic_u])
        orss = summarize([u.rss_mib for u in ours_u])
        brss = summarize([u.rss_mib for u in base_u])
        rows += [
            Row("4 footprint", "client CPU, 48 kHz stereo float32 (% of one core)", oc.fmt(2),
                bc.fmt(2), ratio(oc.median, bc.median), f"≤ {TARGET_CPU * 100:g} %",
                oc.median <= TARGET_CPU * 100),
            Row("4 footprint", "… of which the simulated microphone thread alone (%)", mc.fmt(2),
                "—", "—", "(reference)", None),
            Row("4 footprint", "client RSS at the end (MiB)", orss.fmt(1), brss.fmt(1),
                ratio(orss.median, brss.median),
                f"— (ring bound {ours_u[0].ring_mib:.1f} MiB)", None),
        ]
        results |= {"client_ours": [asdict(u) for u in ours_u],
                    "client_baseline": [asdict(u) for u in base_u],
                    "client_mic_only": [asdict(u) for u in mic_u],
                    "client_cpu_pct_ours": oc, "client_cpu_pct_baseline": bc,
                    "client_cpu_pct_mic_only": mc,
                    "client_rss_mib_ours": orss, "client_rss_mib_baseline": brss}
        remove_data(workdir / "fp-ours")
        remove_data(workdir / "fp-base")
    if "idle" in parts:
        ours_k: list[float] = []
        base_k: list[float] = []
        for _ in range(settings.idle_repeats):
            ours_k.append(idle_kib_per_stream("ours", settings.idle_streams, workdir,
                                              settings.idle_settle_seconds))
            base_k.append(idle_kib_per_stream("baseline", settings.idle_streams, workdir,
                                              settings.idle_settle_seconds))
        ok_, bk = summarize(ours_k), summarize(base_k)
        rows.append(Row("4 footprint", f"server RSS per idle connected stream (KiB, "
                        f"{settings.idle_streams} streams)", ok_.fmt(1), bk.fmt(1),
                        ratio(ok_.median, bk.median), f"≤ {TARGET_KIB_PER_STREAM:g} KiB",
                        ok_.median <= TARGET_KIB_PER_STREAM))
        results |= {"idle_kib_ours": ok_, "idle_kib_baseline": bk}
    if "soak" in parts:
        s = soak(settings, workdir, log)
        flat = (s.ok and s.identical and abs(s.client_growth_mib) <= FLAT_LIMIT_MIB
                and abs(s.server_growth_mib) <= FLAT_LIMIT_MIB)
        span = f"{settings.soak_seconds:g} s, {s.faults} faults"
        rows.append(Row("4 footprint", f"soak RSS growth after warm-up ({span}; MiB, client / "
                        "server)", f"{s.client_growth_mib:+.2f} / {s.server_growth_mib:+.2f}",
                        "—", "—", f"flat: within ±{FLAT_LIMIT_MIB:g} MiB, audio identical",
                        flat))
        if s.client_rss_mib:
            rows.append(Row("4 footprint", "soak RSS first → last sample (MiB, client / server)",
                            f"{s.client_rss_mib[0]:.1f} → {s.client_rss_mib[-1]:.1f} / "
                            f"{s.server_rss_mib[0]:.1f} → {s.server_rss_mib[-1]:.1f}",
                            "—", "—", "—", None))
        results["soak"] = s
    return results, rows



def profile_client(workdir: Path, out: Path, seconds: float = 20.0) -> None:
    """py-spy the 48 kHz stereo client (as in (a)) into collapsed stacks at `out`."""
    from tools.bench.profiling import finish_record, start_record

    with OursServer(workdir / "profile-client") as server:
        ctx = mp.get_context("spawn")
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=client_probe_main, daemon=True,
                           args=("ours", server.port, seconds, 2.0, child))
        proc.start()
        child.close()
        time.sleep(3.0)  # connected and streaming
        assert proc.pid is not None
        spy = start_record(proc.pid, seconds - 2.0, out, rate=PROFILE_RATE)
        with contextlib.suppress(EOFError):
            parent.poll(seconds + 60.0) and parent.recv()
        finish_record(spy)
        proc.join(10.0)
        if proc.is_alive():
            proc.kill()
    remove_data(workdir / "profile-client")

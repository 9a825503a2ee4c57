"""Benchmark 5: recovery from a server restart (issue 10 defect 2).

What is timed: from the moment the server accepts connections again to the client's first
frame acked after the restart. The "baseline" column is the OLD policy — the same core with
`restart_grace = 0`, i.e. every refused connect escalates the backoff and counts against the
circuit breaker — measured in the same run.

Two measurements:

- **model**: 100 restarts of 1–8 s (uniform; half SIGTERM with close 1012, half SIGKILL) run
  on the real `UplinkCore` driven by a simulated clock and a simulated server (timeline from
  a fixed seed: deterministic). Frames are pushed every 0.1 s of simulated time; connect
  attempts while the server is down are refused at once (loopback: RST); a round trip is
  2 ms. Also: a server that goes down and stays down, to show the breaker still opens.
- **real**: a handful of real restarts (the real ingest server process, SIGTERM or SIGKILL,
  down for a set time, started again on the same port) with the real `UplinkClient` fed
  20 ms frames in real time, for both policies, so the model is checked against reality.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import json
import random
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from tools.bench.common import SPEECH, frame_samples
from tools.bench.report import Row, ratio
from tools.ingest_process import IngestServer
from uplink import wire
from uplink.client import UplinkClient
from uplink.config import PROFILES, UplinkConfig
from uplink.core import (
    Action,
    CloseConnection,
    OpenConnection,
    Phase,
    SendBinary,
    SendText,
    State,
    UplinkCore,
)
from uplink.errors import ConnectFailed
from uplink.policy import RetryBudgetConfig
from uplink.ring import OverflowPolicy, RingBuffer

TARGET_P99 = 1.0  # seconds beyond the server's return (the goal)


@dataclass(frozen=True, slots=True)
class RestartSettings:
    restarts: int = 100  # simulated
    min_down: float = 1.0
    max_down: float = 8.0
    seed: int = 2026
    real_downs: tuple[float, ...] = (1.5, 3.0, 5.0, 8.0)  # real restarts per policy
    profiles: tuple[str, ...] = ("live", "production")


def old_policy(config: UplinkConfig) -> UplinkConfig:
    """The policy before the restart grace: every refused connect is a breaker failure."""
    return replace(config, breaker=replace(config.breaker, restart_grace=0.0))


# -- the model: real core, simulated clock and server -------------------------------------


@dataclass(slots=True)
class Outage:
    down_at: float
    up_at: float
    sigterm: bool  # SIGTERM: close 1012 first; SIGKILL: the socket just dies
    recovered_at: float | None = None
    breaker_opened: bool = False


@dataclass(slots=True)
class _Sim:
    """A discrete-event loop: the core's actions become server events after a round trip."""

    core: UplinkCore
    outages: list[Outage]
    rtt: float = 0.002
    frame_interval: float = 0.1
    now: float = 0.0
    gen: int = 0  # current connection; events of an older one are dropped
    alive: bool = False  # the current connection is open at the server
    server_next_seq: int = 0
    events: list[tuple[float, int, Callable[[], None]]] = field(default_factory=list)
    counter: itertools.count[int] = field(default_factory=itertools.count)
    tick_at: float | None = None
    attempts: list[float] = field(default_factory=list)  # connection attempts (times)
    first_open_at: float | None = None  # when the breaker first opened

    def up(self, t: float) -> bool:
        return not any(o.down_at <= t < o.up_at for o in self.outages)

    def at(self, t: float, fn: Callable[[], None]) -> None:
        heapq.heappush(self.events, (t, next(self.counter), fn))

    def do(self, actions: list[Action]) -> None:
        for action in actions:
            match action:
                case OpenConnection():
                    self.attempts.append(self.now)
                    self.gen += 1
                    self.alive = False
                    self.at(self.now + self.rtt / 2, self._open_result(self.gen))
                case CloseConnection():
                    self.gen += 1
                    self.alive = False
                case SendText(text):
                    self._server_text(json.loads(text))
                case SendBinary(data):
                    header = wire.decode_header(data)
                    self._server_receives(header.seq + header.count)
        deadline = self.core.next_deadline()
        if deadline is not None and (self.tick_at is None or deadline < self.tick_at):
            self.tick_at = deadline
            self.at(deadline, self._tick)

    def _tick(self) -> None:
        self.tick_at = None
        self.do(self.core.tick(self.now))

    def _open_result(self, gen: int) -> Callable[[], None]:
        def result() -> None:
            if gen != self.gen or self.core.state is not State.CONNECTING:
                return
            if self.up(self.now):
                self.alive = True
                self.do(self.core.connection_opened(self.now))
            else:
                self.do(self.core.connection_failed(ConnectFailed("connection refused"), self.now))
        return result

    def _reply(self, message: wire.Control) -> None:
        gen = self.gen

        def deliver() -> None:
            if gen == self.gen and self.alive:
                self.do(self.core.text_received(wire.encode_control(message), self.now))
        self.at(self.now + self.rtt, deliver)

    def _server_text(self, obj: dict[str, Any]) -> None:
        if not self.alive:
            return
        if obj["type"] == "hello":
            n = self.server_next_seq
            fs = self.core.ring.frame_samples
            self._reply(wire.Welcome("bench", 1, "cred", n, n * fs, n > 0, False, 1 << 20,
                                     1024, 15.0, 300.0))
        elif obj["type"] == "ping":
            self._reply(wire.Pong(obj["t"]))

    def _server_receives(self, next_seq: int) -> None:
        if not self.alive:
            return
        self.server_next_seq = max(self.server_next_seq, next_seq)  # durable on receipt
        self._reply(wire.Ack(next_seq, next_seq * self.core.ring.frame_samples))

    def push_frame(self) -> None:
        self.core.ring.push(bytes(self.core.ring.frame_bytes))
        self.do(self.core.data_available(self.now))
        self.at(self.now + self.frame_interval, self.push_frame)

    def server_down(self, outage: Outage) -> Callable[[], None]:
        def down() -> None:
            if self.alive:
                self.alive = False
                self.gen += 1
                code = wire.CloseCode.SERVICE_RESTART if outage.sigterm else None
                self.do(self.core.connection_closed(code, "", self.now))
        return down

    def on_ack(self, before: int) -> None:
        if self.core.counters.acked_seq == before:
            return
        for o in self.outages:
            if o.recovered_at is None and self.now >= o.up_at:
                o.recovered_at = self.now

    def run(self, until: float) -> None:
        self.at(0.0, lambda: self.do(self.core.start(self.now)))
        self.at(0.05, self.push_frame)
        for o in self.outages:
            self.at(o.down_at, self.server_down(o))
        while self.events:
            t, _, fn = heapq.heappop(self.events)
            if t > until:
                break
            self.now = t
            acked, opened = self.core.counters.acked_seq, self.core.breaker.times_opened
            fn()
            self.on_ack(acked)
            if self.core.breaker.times_opened > opened:
                if self.first_open_at is None:
                    self.first_open_at = t
                current = [o for o in self.outages if o.down_at <= t]
                if current:
                    current[-1].breaker_opened = True


def make_core(config: UplinkConfig, seed: int) -> UplinkCore:
    ring = RingBuffer(SPEECH, frame_samples(SPEECH), config.buffer_seconds,
                      OverflowPolicy.DROP_OLDEST, wall_clock=lambda: 0.0)
    return UplinkCore(ring, "bench", config, random.Random(seed))


def simulate_restarts(config: UplinkConfig, settings: RestartSettings) -> list[Outage]:
    """`settings.restarts` restarts on one long stream; the same timeline for every policy."""
    rng = random.Random(settings.seed)
    outages = []
    t = 10.0
    for _ in range(settings.restarts):
        down = rng.uniform(settings.min_down, settings.max_down)
        outages.append(Outage(t, t + down, sigterm=rng.random() < 0.5))
        t += down + rng.uniform(30.0, 60.0)  # healthy streaming in between
    sim = _Sim(make_core(config, settings.seed + 1), outages)
    sim.run(until=t)
    return outages


def simulate_down_for_good(config: UplinkConfig, seed: int, horizon: float = 300.0
                           ) -> dict[str, Any]:
    """The server goes away at t=10 s and never comes back: does the breaker open?"""
    config = replace(config, budget=RetryBudgetConfig(max_initial_attempts=0))
    outage = Outage(10.0, float("inf"), sigterm=False)
    sim = _Sim(make_core(config, seed), [outage])
    sim.run(until=10.0 + horizon)
    after = [a for a in sim.attempts if a >= 10.0]
    return {"breaker_opened_after_s": None if sim.first_open_at is None
            else sim.first_open_at - 10.0,
            "times_opened": sim.core.breaker.times_opened,
            "attempts_first_60s": sum(1 for a in after if a < 70.0),
            "attempts_total": len(after), "horizon_s": horizon}


# -- the real run ---------------------------------------------------------------------------


async def real_restarts(config: UplinkConfig, downs: tuple[float, ...], workdir: Path,
                        stream_id: str) -> list[dict[str, Any]]:
    """Stream 20 ms frames in real time; restart the real server; time each recovery."""
    fmt = SPEECH
    fs = frame_samples(fmt)
    ring = RingBuffer(fmt, fs, config.buffer_seconds, OverflowPolicy.DROP_OLDEST)
    acked = asyncio.Event()
    stop = threading.Event()

    def produce() -> None:
        frame = bytes(fs * fmt.block_align)
        t = time.monotonic()
        while not stop.is_set():
            ring.push(frame)
            t += fs / fmt.sample_rate
            delay = t - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        ring.close()

    results: list[dict[str, Any]] = []
    with IngestServer(workdir / f"data-{stream_id}") as server:
        client = UplinkClient(server.url, ring, stream_id, config)
        client.on_ack = lambda seq: acked.set()
        producer = threading.Thread(target=produce, daemon=True)
        producer.start()
        run = asyncio.ensure_future(client.run())
        try:
            for i, down in enumerate(downs):
                await asyncio.wait_for(_healthy(client, acked), 30)
                await asyncio.sleep(1.0)
                sigterm = i % 2 == 0
                await asyncio.to_thread(server.stop if sigterm else server.kill)
                await asyncio.sleep(down)
                await asyncio.to_thread(server.start)
                back = time.monotonic()
                acked.clear()
                opened = client.stats().breaker
                await asyncio.wait_for(acked.wait(), 90)
                results.append({"down_s": down, "sigterm": sigterm,
                                "recovery_s": time.monotonic() - back,
                                "breaker_when_back": opened})
        finally:
            stop.set()
            result = await asyncio.wait_for(run, 60)
            producer.join(5)
        if not result.ok:
            raise RuntimeError(f"real restart run failed: {result.error}")
    return results


async def _healthy(client: UplinkClient, acked: asyncio.Event) -> None:
    while client.stats().state.phase is not Phase.CONNECTED:
        await asyncio.sleep(0.05)
    acked.clear()
    await acked.wait()


# -- report ---------------------------------------------------------------------------------


def percentiles(values: list[float]) -> dict[str, float]:
    s = sorted(values)
    if not s:
        return {"p50": float("nan"), "p99": float("nan"), "max": float("nan"), "n": 0}

    def pct(p: float) -> float:
        return s[min(len(s) - 1, max(0, round(p / 100 * (len(s) - 1))))]
    return {"p50": pct(50), "p99": pct(99), "max": s[-1], "n": len(s)}


def run(settings: RestartSettings, workdir: Path) -> tuple[dict[str, Any], list[Row]]:
    results: dict[str, Any] = {"settings": asdict(settings), "model": {}, "real": {}}
    rows: list[Row] = []
    for profile in settings.profiles:
        config = PROFILES[profile]
        model: dict[str, Any] = {}
        for name, cfg in (("new", config), ("old", old_policy(config))):
            outages = simulate_restarts(cfg, settings)
            recoveries = [o.recovered_at - o.up_at for o in outages if o.recovered_at is not None]
            model[name] = {
                "recovery_s": percentiles(recoveries),
                "breaker_opened_pct": 100.0 * sum(o.breaker_opened for o in outages)
                / max(1, len(outages)),
                "unrecovered": sum(o.recovered_at is None for o in outages),
                "down_for_good": simulate_down_for_good(cfg, settings.seed),
            }
        results["model"][profile] = model
        new, old = model["new"], model["old"]
        label = f"model, {profile}, {settings.restarts} restarts of "
        label += f"{settings.min_down:g}–{settings.max_down:g} s"
        for key in ("p50", "p99", "max"):
            ours, base = new["recovery_s"][key], old["recovery_s"][key]
            rows.append(Row("5 restart", f"{label}: back → first ack, {key} (s)", f"{ours:.2f}",
                            f"{base:.2f}", ratio(ours, base),
                            f"≤ {TARGET_P99:g}" if key == "p99" else "—",
                            ours <= TARGET_P99 if key == "p99" else None))
        rows.append(Row("5 restart", f"model, {profile}: restarts that opened the breaker (%)",
                        f"{new['breaker_opened_pct']:.0f}", f"{old['breaker_opened_pct']:.0f}",
                        "—", "0", new["breaker_opened_pct"] == 0))
        down_new, down_old = new["down_for_good"], old["down_for_good"]
        opened_new = down_new["breaker_opened_after_s"]
        rows.append(Row("5 restart", f"model, {profile}: server down for good → breaker opens "
                        "after (s)", "never" if opened_new is None else f"{opened_new:.0f}",
                        _fmt_opt(down_old["breaker_opened_after_s"]), "—", "opens",
                        opened_new is not None))
    config = PROFILES["live"]
    for name, cfg in (("new", config), ("old", old_policy(config))):
        real = asyncio.run(real_restarts(cfg, settings.real_downs, workdir, f"restart-{name}"))
        results["real"][name] = {"runs": real,
                                 "recovery_s": percentiles([r["recovery_s"] for r in real])}
    new_r, old_r = results["real"]["new"]["recovery_s"], results["real"]["old"]["recovery_s"]
    downs = ", ".join(f"{d:g}" for d in settings.real_downs)
    for key in ("p50", "max"):
        rows.append(Row("5 restart", f"real server, live, restarts of {downs} s: back → first "
                        f"ack, {key} (s)", f"{new_r[key]:.2f}", f"{old_r[key]:.2f}",
                        ratio(new_r[key], old_r[key]), "—", None))
    return results, rows


def _fmt_opt(value: float | None) -> str:
    return "never" if value is None else f"{value:.0f}"

"""Load generator: many real-time streams from separate processes against one server.

Each worker process (multiprocessing, spawn) runs one asyncio loop driving its share of the
streams over `tools.bench.wsraw` (a lean WebSocket client: see there for why not the full
UplinkClient). The streams speak either

- protocol v1 to the ingest server: `hello` (docs/protocol.md §2) and a checked `welcome`,
  then one AUDIO item per 20 ms frame (§3) with consecutive seq and sample_pos, and every
  `ack` (§4) checked: cumulative, never beyond what was sent, next_sample consistent with
  next_seq; or
- the baseline format to the baseline receiver (tools/bench/baseline.py).

Streams are spread evenly over the 20 ms period (20 phase slots of 1 ms), like independent
microphones, instead of all sending at once. The parent connects every stream first, then
gives all workers one common start time (CLOCK_MONOTONIC is shared by all processes).
After `seconds` of streaming, each worker waits up to `drain_timeout` for the last acks;
whatever is still unacked, or was sent on a connection the server closed, is lost.

Per frame a worker records ack latency = ack received - frame sent, and the generator's own
lag = frame sent - frame due (a worker starved of CPU sends late; that is reported, not
hidden in the latency).

`idle` mode connects the streams (v1: hello/welcome, then a ping every 5 s so the server's
15 s idle timeout does not close them) and holds them until the parent says stop: this is
how the footprint benchmark measures server memory per connected stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import multiprocessing as mp
import time
from array import array
from collections import deque
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection, wait
from typing import Any, Literal

from tools.bench.baseline import ACK, ITEM, raise_fd_limit
from tools.bench.common import FRAME_PERIOD, SPEECH, frame_samples, pcm
from tools.bench.stats import cpu_seconds, percentiles
from tools.bench.wsraw import RawWebSocket
from uplink import wire

Protocol = Literal["v1", "baseline"]
SLOTS = 20  # phase slots per frame period
CONNECT_CONCURRENCY = 32
PING_INTERVAL = 5.0


@dataclass(frozen=True, slots=True)
class WorkerSpec:
    protocol: Protocol
    port: int
    indices: tuple[int, ...]  # global stream numbers (name and phase slot)
    prefix: str
    seconds: float
    idle: bool = False
    drain_timeout: float = 5.0


@dataclass(slots=True)
class WorkerResult:
    streams: int = 0
    connected: int = 0
    connect_failures: int = 0
    connect_errors: list[str] = field(default_factory=list)  # the first few
    frames_sent: int = 0
    frames_acked: int = 0
    frames_lost: int = 0
    closed_by_server: int = 0
    close_codes: dict[str, int] = field(default_factory=dict)
    ack_errors: list[str] = field(default_factory=list)
    latencies_ms: bytes = b""  # array('f') of send -> ack, ms
    lag_ms: bytes = b""  # array('f') of due -> sent, ms, one per send tick
    cpu_s: float = 0.0  # worker CPU during the streaming window
    wall_s: float = 0.0


class _Stream:
    """One stream's protocol state (v1 or baseline) on one RawWebSocket."""

    def __init__(self, protocol: Protocol, stream_id: str, payload: bytes, latencies: array,
                 result: WorkerResult) -> None:
        self.protocol = protocol
        self.stream_id = stream_id
        self.payload = payload
        self.fs = frame_samples(SPEECH)
        self.latencies = latencies
        self.result = result
        self.ws: RawWebSocket | None = None
        self.epoch = 1
        self.seq = 0
        self.acked = 0
        self.sent_at: deque[float] = deque()
        self.welcome: asyncio.Future[None] | None = None  # while open() waits for it
        self.closed = False

    async def open(self, port: int) -> None:
        path = wire.ENDPOINT_PATH if self.protocol == "v1" else f"/{self.stream_id}"
        self.ws = await RawWebSocket.connect("127.0.0.1", port, path, self._on_text,
                                             self._on_binary, self._on_close)
        if self.protocol == "v1":
            self.welcome = asyncio.get_running_loop().create_future()
            hello = wire.Hello(self.stream_id, SPEECH, self.fs)
            self.ws.send_text(wire.encode_control(hello))
            try:
                await asyncio.wait_for(self.welcome, 15.0)
            finally:
                self.welcome = None

    def send_frame(self, now: float) -> None:
        ws = self.ws
        if ws is None or self.closed:
            return
        if self.protocol == "v1":
            head = wire.HEADER.pack(wire.KIND_AUDIO, 0, 1, self.epoch, self.seq, self.seq * self.fs)
        else:
            head = ITEM.pack(self.seq, 1)
        ws.send_binary(head + self.payload)
        self.sent_at.append(now)
        self.seq += 1
        self.result.frames_sent += 1

    def ping(self) -> None:
        if self.ws is not None and not self.closed and self.protocol == "v1":
            self.ws.send_text(wire.encode_control(wire.Ping(time.monotonic())))

    def _acked(self, next_seq: int) -> None:
        now = time.monotonic()
        if next_seq > self.seq:
            self._error(f"ack {next_seq} beyond sent {self.seq}")
            return
        lat, sent_at = self.latencies, self.sent_at
        while self.acked < next_seq:
            lat.append((now - sent_at.popleft()) * 1000.0)
            self.acked += 1

    def _on_text(self, text: str) -> None:
        msg = json.loads(text)
        kind = msg.get("type")
        if kind == "ack":
            next_seq, next_sample = msg["next_seq"], msg["next_sample"]
            if next_sample != next_seq * self.fs:
                self._error(f"ack next_sample {next_sample} != {next_seq} x {self.fs}")
            self._acked(next_seq)
        elif kind == "welcome":
            if msg["next_seq"] != 0 or msg["stream_id"] != self.stream_id:
                self._error(f"unexpected welcome {msg}")
            self.epoch = msg["epoch"]
            if self.welcome is not None and not self.welcome.done():
                self.welcome.set_result(None)
        elif kind != "pong":
            self._error(f"unexpected message {text[:80]}")

    def _on_binary(self, data: bytes) -> None:
        if self.protocol == "baseline":
            self._acked(ACK.unpack(data)[0])
        else:
            self._error("binary message from the server")

    def _on_close(self, code: int | None) -> None:
        if not self.closed:
            self.closed = True
            self.result.closed_by_server += 1
            key = str(code)
            self.result.close_codes[key] = self.result.close_codes.get(key, 0) + 1
        if self.welcome is not None and not self.welcome.done():  # open() is waiting
            self.welcome.set_exception(ConnectionError(f"closed with {code} before welcome"))

    def _error(self, what: str) -> None:
        if len(self.result.ack_errors) < 20:
            self.result.ack_errors.append(f"{self.stream_id}: {what}")

    def close(self) -> None:
        self.closed = True
        if self.ws is not None:
            self.ws.close(1000)


async def _connect_all(spec: WorkerSpec, streams: list[_Stream], result: WorkerResult) -> None:
    gate = asyncio.Semaphore(CONNECT_CONCURRENCY)

    async def one(st: _Stream) -> None:
        async with gate:
            try:
                await st.open(spec.port)
                result.connected += 1
            except Exception as e:  # counted and reported: a refused stream fails the step
                st.closed = True
                result.connect_failures += 1
                if len(result.connect_errors) < 10:
                    result.connect_errors.append(f"{st.stream_id}: {e!r}")

    await asyncio.gather(*(one(st) for st in streams))


async def _stream_all(spec: WorkerSpec, streams: list[_Stream], t0: float,
                      lag: array) -> None:
    slots: list[list[_Stream]] = [[] for _ in range(SLOTS)]
    for index, st in zip(spec.indices, streams, strict=True):
        slots[index % SLOTS].append(st)
    slot_period = FRAME_PERIOD / SLOTS
    end = t0 + spec.seconds
    tick = 0
    while True:
        due = t0 + tick * slot_period
        if due >= end:
            break
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        now = time.monotonic()
        batch = slots[tick % SLOTS]
        if batch:
            lag.append((now - due) * 1000.0)
            for st in batch:
                st.send_frame(now)
        tick += 1


async def _drain(streams: list[_Stream], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(st.closed or st.acked >= st.seq for st in streams):
            return
        await asyncio.sleep(0.01)


async def _keep_idle(streams: list[_Stream], stop: asyncio.Future[None]) -> None:
    while not stop.done():
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.shield(stop), PING_INTERVAL)
        for st in streams:
            st.ping()


async def _worker(spec: WorkerSpec, conn: Connection) -> WorkerResult:
    loop = asyncio.get_running_loop()
    result = WorkerResult(streams=len(spec.indices))
    latencies = array("f")
    lag = array("f")
    payload = pcm(SPEECH, FRAME_PERIOD, seed=4)
    streams = [_Stream(spec.protocol, f"{spec.prefix}-{i}", payload, latencies, result)
               for i in spec.indices]
    await _connect_all(spec, streams, result)
    conn.send(("ready", result.connected))
    if spec.idle:
        stop: asyncio.Future[None] = loop.create_future()
        keeper = asyncio.create_task(_keep_idle(streams, stop))
        await loop.run_in_executor(None, conn.recv)  # ("stop",)
        stop.set_result(None)
        await keeper
    else:
        _, t0 = await loop.run_in_executor(None, conn.recv)  # ("start", t0)
        cpu0, wall0 = cpu_seconds(), time.monotonic()
        await _stream_all(spec, streams, t0, lag)
        result.cpu_s, result.wall_s = cpu_seconds() - cpu0, time.monotonic() - wall0
        await _drain(streams, spec.drain_timeout)
    for st in streams:
        result.frames_lost += st.seq - st.acked
        result.frames_acked += st.acked
        st.close()
    await asyncio.sleep(0.05)  # let the close frames go out
    result.latencies_ms = latencies.tobytes()
    result.lag_ms = lag.tobytes()
    return result


def worker_main(spec: WorkerSpec, conn: Connection) -> None:
    raise_fd_limit()
    try:
        result = asyncio.run(_worker(spec, conn))
        conn.send(("result", result))
    except BaseException as e:
        conn.send(("error", repr(e)))
        raise


# -- the parent side ------------------------------------------------------------------------


@dataclass(slots=True)
class LoadResult:
    """One load step, merged over the workers."""

    protocol: str
    streams: int
    seconds: float
    connected: int = 0
    connect_failures: int = 0
    connect_errors: list[str] = field(default_factory=list)
    frames_sent: int = 0
    frames_acked: int = 0
    frames_lost: int = 0
    closed_by_server: int = 0
    close_codes: dict[str, int] = field(default_factory=dict)
    ack_errors: list[str] = field(default_factory=list)
    p50_ms: float = float("nan")
    p99_ms: float = float("nan")
    max_ms: float = float("nan")
    lag_p99_ms: float = float("nan")
    lag_max_ms: float = float("nan")
    server_cpu: float = 0.0  # share of one core during the streaming window
    generator_cpu: float = 0.0  # summed over worker processes, share of one core
    server_rss_mib: float = 0.0
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def split(n: int, workers: int) -> list[tuple[int, ...]]:
    """Stream numbers 0..n-1 dealt round-robin, so every worker has every phase slot."""
    return [tuple(range(w, n, workers)) for w in range(min(workers, max(n, 1)))]


class LoadRun:
    """Start workers, connect `n` streams, then stream (or hold idle) on command."""

    def __init__(self, protocol: Protocol, port: int, n: int, *, workers: int, seconds: float,
                 prefix: str, idle: bool = False, drain_timeout: float = 5.0) -> None:
        self.protocol, self.n, self.seconds, self.idle = protocol, n, seconds, idle
        ctx = mp.get_context("spawn")
        self._pipes: list[Connection] = []
        self._procs: list[Any] = []
        for indices in split(n, workers):
            parent, child = ctx.Pipe()
            spec = WorkerSpec(protocol, port, indices, prefix, seconds, idle, drain_timeout)
            proc = ctx.Process(target=worker_main, args=(spec, child), daemon=True)
            proc.start()
            child.close()
            self._pipes.append(parent)
            self._procs.append(proc)
        self.pids = [p.pid for p in self._procs]

    def wait_ready(self, timeout: float) -> int:
        """Block until every worker connected its streams; returns how many connected."""
        replies = self._collect(timeout, "ready")
        return sum(int(r) for r in replies)

    def start(self, t0: float) -> None:
        for pipe in self._pipes:
            pipe.send(("start", t0))

    def stop_idle(self) -> None:
        for pipe in self._pipes:
            pipe.send(("stop",))

    def results(self, timeout: float) -> list[WorkerResult]:
        return self._collect(timeout, "result")

    def _collect(self, timeout: float, kind: str) -> list[Any]:
        deadline = time.monotonic() + timeout
        got: dict[int, Any] = {}
        while len(got) < len(self._pipes):
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"load workers did not report {kind!r} within {timeout:.0f} s")
            for pipe in wait([p for i, p in enumerate(self._pipes) if i not in got], left):
                assert isinstance(pipe, Connection)
                i = self._pipes.index(pipe)
                try:
                    tag, value = pipe.recv()
                except EOFError:
                    raise RuntimeError(f"load worker {i} died") from None
                if tag == "error":
                    raise RuntimeError(f"load worker {i} failed: {value}")
                if tag != kind:
                    raise RuntimeError(f"load worker {i} sent {tag!r}, expected {kind!r}")
                got[i] = value
        return [got[i] for i in range(len(self._pipes))]

    def close(self) -> None:
        for proc in self._procs:
            proc.join(5.0)
            if proc.is_alive():
                proc.kill()
                proc.join(5.0)
        for pipe in self._pipes:
            pipe.close()


def merge(protocol: str, n: int, seconds: float, parts: list[WorkerResult]) -> LoadResult:
    out = LoadResult(protocol, n, seconds)
    lat = array("f")
    lag = array("f")
    for r in parts:
        out.connected += r.connected
        out.connect_failures += r.connect_failures
        out.connect_errors += r.connect_errors
        out.frames_sent += r.frames_sent
        out.frames_acked += r.frames_acked
        out.frames_lost += r.frames_lost
        out.closed_by_server += r.closed_by_server
        for code, count in r.close_codes.items():
            out.close_codes[code] = out.close_codes.get(code, 0) + count
        out.ack_errors += r.ack_errors
        lat.frombytes(r.latencies_ms)
        lag.frombytes(r.lag_ms)
        out.generator_cpu += r.cpu_s / r.wall_s if r.wall_s else 0.0
    if lat:
        out.p50_ms, out.p99_ms = percentiles(lat, (50, 99))
        out.max_ms = float(max(lat))
    if lag:
        (out.lag_p99_ms,) = percentiles(lag, (99,))
        out.lag_max_ms = float(max(lag))
    return out

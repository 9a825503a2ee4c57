"""Chaos TCP proxy: forwards one loopback port to another and injects network faults.

Why a proxy and not mocks: the uplink's reconnect logic has to survive what real networks do to
real sockets (RSTs, silent black holes, refused connects, slow links), and only real sockets
produce the exact errors and timings the websockets stack reacts to.

Faults (each available on demand and from a ChaosSchedule; every one is logged as a FaultEvent):

- ``reset``: abort every current connection with a TCP RST (SO_LINGER 0, then close), both sides.
- ``blackhole``: stop forwarding in both directions without closing anything; bytes (and FINs)
  are read and discarded, like a dead NAT. Connections accepted during the black hole are never
  connected upstream. Design choice: connections caught in a black hole stay dead after it ends
  (a real black hole leaves the peers to time out); only new connections work again.
- ``refuse``: close the listening socket (new connects get ECONNREFUSED; existing connections are
  untouched), then listen again on the same port.
- ``latency``: added one-way delay per chunk in each direction, order preserved. With a
  ``duration`` it is a spike that reverts to the base latency set by ``set_latency``.
- ``bandwidth``: cap each direction at ``bytes_per_second`` (absent/None = unlimited).

Loopback only: a fault injector must never be pointed at or exposed to a real network.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import logging
import socket
import struct
import sys
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from random import Random
from typing import TypeVar

log = logging.getLogger(__name__)
_T = TypeVar("_T")

CHUNK = 64 * 1024
FAULTS: dict[str, tuple[str, ...]] = {  # kind -> required params
    "reset": (),
    "blackhole": ("duration",),
    "refuse": ("duration",),
    "latency": ("seconds",),
    "bandwidth": (),
}
RANDOM_KINDS = ("reset", "blackhole", "refuse", "latency")
Range = tuple[float, float]


def check_loopback(host: str) -> str:
    """Return ``host`` if it is a literal 127.0.0.0/8 or ::1 address ("localhost" maps to
    127.0.0.1); raise ValueError otherwise. Names are not resolved: DNS could point anywhere."""
    if host == "localhost":
        return "127.0.0.1"
    try:
        if ipaddress.ip_address(host.strip("[]")).is_loopback:
            return host.strip("[]")
    except ValueError:
        pass
    raise ValueError(f"chaos proxy is loopback-only; refusing {host!r}")


@dataclass(frozen=True)
class FaultEvent:
    """One fault (or its end, kind ``<fault>_end``), ``t`` seconds after the proxy started
    (in a ChaosSchedule: when it is due)."""

    t: float
    kind: str
    params: Mapping[str, float] = field(default_factory=dict)


@dataclass
class ProxyStats:
    """Counters; bytes are those actually delivered, ``bytes_dropped`` those lost to faults."""

    connections_accepted: int = 0
    bytes_client_to_server: int = 0
    bytes_server_to_client: int = 0
    bytes_dropped: int = 0
    faults: Counter[str] = field(default_factory=Counter)

    def snapshot(self) -> ProxyStats:
        return replace(self, faults=Counter(self.faults))


def _validate(kind: str, params: Mapping[str, float]) -> dict[str, float]:
    if kind not in FAULTS:
        raise ValueError(f"unknown fault {kind!r}; expected one of {sorted(FAULTS)}")
    missing = [p for p in FAULTS[kind] if p not in params]
    if missing:
        raise ValueError(f"fault {kind!r} needs params {missing}")
    return {k: float(v) for k, v in params.items()}


@dataclass(frozen=True)
class ChaosSchedule:
    """An ordered list of faults to inject at given offsets from proxy start."""

    events: tuple[FaultEvent, ...] = ()

    @classmethod
    def explicit(cls, items: Iterable[tuple[float, str, Mapping[str, float]]]) -> ChaosSchedule:
        evs = [FaultEvent(float(t), kind, _validate(kind, params)) for t, kind, params in items]
        return cls(tuple(sorted(evs, key=lambda e: e.t)))

    @classmethod
    def random(
        cls,
        seed: int,
        duration: float,
        mean_interval: float = 3.0,
        weights: Mapping[str, float] | None = None,
        blackhole_range: Range = (0.5, 3.0),
        refuse_range: Range = (0.5, 2.0),
        latency_range: Range = (0.02, 0.3),
        latency_duration_range: Range = (1.0, 5.0),
    ) -> ChaosSchedule:
        """Pure function of its arguments (seed -> same events, no clock involved).

        Gaps are exponential (a Poisson process with mean ``mean_interval``) so faults cannot
        phase-lock with the client's own retry/heartbeat timers. Latency events are spikes
        lasting ``latency_duration_range``."""
        w = {k: 1.0 for k in RANDOM_KINDS} if weights is None else dict(weights)
        if set(w) - set(RANDOM_KINDS):
            raise ValueError(f"weights keys must be among {RANDOM_KINDS}, got {sorted(w)}")
        kinds = [k for k in RANDOM_KINDS if w.get(k, 0.0) > 0]
        if not kinds or mean_interval <= 0:
            raise ValueError("need a positive mean_interval and at least one positive weight")
        rng, t, events = Random(seed), 0.0, []
        while (t := t + rng.expovariate(1.0 / mean_interval)) < duration:
            kind = rng.choices(kinds, [w[k] for k in kinds])[0]
            params: dict[str, float] = {}
            if kind == "blackhole":
                params = {"duration": rng.uniform(*blackhole_range)}
            elif kind == "refuse":
                params = {"duration": rng.uniform(*refuse_range)}
            elif kind == "latency":
                params = {
                    "seconds": rng.uniform(*latency_range),
                    "duration": rng.uniform(*latency_duration_range),
                }
            events.append(FaultEvent(t, kind, params))
        return cls(tuple(events))


def _rst(writer: asyncio.StreamWriter) -> None:
    """Close with RST instead of FIN: SO_LINGER on with timeout 0 makes close() abortive."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class _Conn:
    def __init__(self, client: asyncio.StreamWriter, dead: bool) -> None:
        self.client = client
        self.upstream: asyncio.StreamWriter | None = None
        self.dead = dead  # caught in a black hole: forward nothing, ever
        self.task = asyncio.current_task()

    def writers(self) -> list[asyncio.StreamWriter]:
        return [w for w in (self.client, self.upstream) if w is not None]

    def abort(self) -> None:
        for w in self.writers():
            _rst(w)


class ChaosProxy:
    """Asyncio chaos proxy. Fault methods are coroutines that return once the fault is in effect
    (e.g. after ``refuse()`` the listening socket is closed; after ``end_refuse()`` it is back).
    ``on_fault`` is called on the proxy's loop for every FaultEvent, including ``*_end`` ones."""

    def __init__(
        self,
        listen_port: int = 0,
        *,
        target: tuple[str, int],
        listen_host: str = "127.0.0.1",
        schedule: ChaosSchedule | None = None,
        on_fault: Callable[[FaultEvent], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.listen_host = check_loopback(listen_host)
        self.target = (check_loopback(target[0]), int(target[1]))
        self.port = listen_port
        self.schedule = schedule or ChaosSchedule()
        self.on_fault = on_fault
        self.events: list[FaultEvent] = []
        self.stats = ProxyStats()
        self._clock, self._t0 = clock, clock()
        self._server: asyncio.Server | None = None
        self._conns: set[_Conn] = set()
        self._timers: dict[str, asyncio.Task[None]] = {}
        self._runner: asyncio.Task[None] | None = None
        self._running = False
        self._blackholed = False
        self._latency = self._base_latency = 0.0
        self._bandwidth: float | None = None

    def elapsed(self) -> float:
        return self._clock() - self._t0

    async def start(self) -> None:
        await self._listen()
        self.port = self._server.sockets[0].getsockname()[1] if self._server else self.port
        self._running, self._t0 = True, self._clock()
        self._runner = asyncio.create_task(self._run_schedule())

    async def stop(self) -> None:
        """Stop listening, cancel pending fault timers, close connections gracefully."""
        self._running = False
        for task in [self._runner, *self._timers.values()]:
            if task is not None:
                task.cancel()
        self._timers.clear()
        if self._server is not None:
            self._server.close()
            self._server = None
        tasks = [c.task for c in self._conns if c.task is not None]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def __aenter__(self) -> ChaosProxy:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # --- faults -------------------------------------------------------------------------------

    async def inject(self, kind: str, params: Mapping[str, float] | None = None) -> FaultEvent:
        """Apply one fault now; this is what the schedule runner calls."""
        p = _validate(kind, params or {})
        if kind == "reset":
            for conn in list(self._conns):
                conn.abort()
        elif kind == "blackhole":
            self._blackholed = True
            for conn in self._conns:
                conn.dead = True
            self._arm("blackhole", p["duration"], self.end_blackhole)
        elif kind == "refuse":
            if self._server is not None:
                self._server.close()  # closes the listening socket synchronously
                self._server = None
            self._arm("refuse", p["duration"], self.end_refuse)
        elif kind == "latency":
            self._latency = p["seconds"]
            if "duration" in p:
                self._arm("latency", p["duration"], self._end_latency_spike)
            else:
                self._base_latency = p["seconds"]
                self._disarm("latency")
        elif kind == "bandwidth":
            bps = p.get("bytes_per_second")
            self._bandwidth = bps if bps and bps > 0 else None
        return self._record(kind, p)

    async def reset(self) -> None:
        await self.inject("reset")

    async def blackhole(self, duration: float) -> None:
        await self.inject("blackhole", {"duration": duration})

    async def end_blackhole(self) -> None:
        if self._blackholed:
            self._blackholed = False
            self._disarm("blackhole")
            self._record("blackhole_end", {})

    async def refuse(self, duration: float) -> None:
        await self.inject("refuse", {"duration": duration})

    async def end_refuse(self) -> None:
        self._disarm("refuse")
        if self._server is None and self._running:
            await self._listen()
            self._record("refuse_end", {})

    async def set_latency(self, seconds: float) -> None:
        await self.inject("latency", {"seconds": seconds})

    async def set_bandwidth(self, bytes_per_second: float | None) -> None:
        await self.inject("bandwidth", {} if bytes_per_second is None else {
            "bytes_per_second": bytes_per_second})

    async def _end_latency_spike(self) -> None:
        self._latency = self._base_latency
        self._record("latency_end", {"seconds": self._latency})

    def _record(self, kind: str, params: Mapping[str, float]) -> FaultEvent:
        event = FaultEvent(self.elapsed(), kind, dict(params))
        self.events.append(event)
        if not kind.endswith("_end"):
            self.stats.faults[kind] += 1
        if self.on_fault is not None:
            try:
                self.on_fault(event)
            except Exception:
                log.exception("on_fault callback failed for %s", event)
        return event

    def _arm(self, name: str, delay: float, end: Callable[[], Awaitable[None]]) -> None:
        """(Re)start the timer that ends a timed fault; re-injecting a fault extends it."""
        self._disarm(name)

        async def fire() -> None:
            await asyncio.sleep(delay)
            self._timers.pop(name, None)
            try:
                await end()
            except Exception:
                log.exception("ending %s failed", name)

        self._timers[name] = asyncio.create_task(fire())

    def _disarm(self, name: str) -> None:
        task = self._timers.pop(name, None)
        if task is not None and task is not asyncio.current_task():
            task.cancel()

    async def _run_schedule(self) -> None:
        for ev in self.schedule.events:
            await asyncio.sleep(max(0.0, ev.t - self.elapsed()))
            await self.inject(ev.kind, ev.params)

    # --- forwarding ---------------------------------------------------------------------------

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(
            self._handle, self.listen_host, self.port, reuse_address=True)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.stats.connections_accepted += 1
        conn = _Conn(writer, dead=self._blackholed)
        self._conns.add(conn)
        try:
            if conn.dead:  # a black hole never lets the SYN through: no upstream connection
                await self._pump(conn, reader, None, True)
                return
            try:
                up_reader, conn.upstream = await asyncio.open_connection(*self.target)
            except OSError:
                conn.abort()  # target down: look to the client like the server refused
                return
            if writer.is_closing():  # reset() raced with the upstream connect
                conn.abort()
                return
            await asyncio.gather(self._pump(conn, reader, conn.upstream, True),
                                 self._pump(conn, up_reader, writer, False))
        except asyncio.CancelledError:
            pass  # stop(): end quietly; asyncio reports cancelled connection callbacks as errors
        finally:
            self._conns.discard(conn)
            for w in conn.writers():
                w.close()

    async def _pump(self, conn: _Conn, src: asyncio.StreamReader,
                    dst: asyncio.StreamWriter | None, to_server: bool) -> None:
        """One direction. The reader stamps each chunk with its due time (arrival + latency) and
        queues it; a sender releases chunks in FIFO order, not before they are due and not
        faster than the bandwidth cap. The bounded queue passes backpressure back to the peer."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue(maxsize=64)
        sender = None if dst is None else asyncio.create_task(
            self._send(conn, queue, dst, to_server))
        try:
            while True:
                data = await src.read(CHUNK)
                if data and (conn.dead or sender is None):
                    self.stats.bytes_dropped += len(data)
                    continue
                if sender is None:
                    return
                await queue.put((loop.time() + self._latency, data))
                if not data:
                    break
            await sender
        except (ConnectionError, OSError):
            if not conn.dead:  # propagate a peer's RST to the other side (not through a hole)
                conn.abort()
        finally:
            if sender is not None:
                sender.cancel()

    async def _send(self, conn: _Conn, queue: asyncio.Queue[tuple[float, bytes]],
                    dst: asyncio.StreamWriter, to_server: bool) -> None:
        loop = asyncio.get_running_loop()
        next_slot = 0.0
        while True:
            due, data = await queue.get()
            if not data:  # EOF: half-close onward, unless a black hole swallows the FIN
                if not conn.dead and not dst.is_closing() and dst.can_write_eof():
                    dst.write_eof()
                return
            if due > loop.time() and not conn.dead:
                await asyncio.sleep(due - loop.time())
            view = memoryview(data)
            while view:
                if conn.dead or dst.is_closing():
                    self.stats.bytes_dropped += len(view)
                    break
                bps = self._bandwidth
                n = len(view) if bps is None else max(1024, int(bps / 20))  # ~50 ms slices
                if bps is not None:
                    if next_slot > loop.time():
                        await asyncio.sleep(next_slot - loop.time())
                    next_slot = max(next_slot, loop.time()) + min(n, len(view)) / bps
                piece, view = view[:n], view[n:]
                try:
                    dst.write(piece)
                    await dst.drain()
                except (ConnectionError, OSError):
                    conn.abort()
                    continue
                if to_server:
                    self.stats.bytes_client_to_server += len(piece)
                else:
                    self.stats.bytes_server_to_client += len(piece)


class ChaosProxyThread:
    """A ChaosProxy on a private event loop in a daemon thread, for synchronous tests and tests
    whose client runs in another loop. Every method is thread-safe: it runs on the proxy's loop
    and blocks until done. ``on_fault`` is called on the proxy thread."""

    def __init__(
        self,
        listen_port: int = 0,
        *,
        target: tuple[str, int],
        listen_host: str = "127.0.0.1",
        schedule: ChaosSchedule | None = None,
        on_fault: Callable[[FaultEvent], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        timeout: float = 10.0,
    ) -> None:
        self.proxy = ChaosProxy(listen_port, target=target, listen_host=listen_host,
                                schedule=schedule, on_fault=on_fault, clock=clock)
        self.timeout = timeout
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True,
                                        name="chaos-proxy")

    def _run(self, coro: Awaitable[_T]) -> _T:
        async def wrap() -> _T:
            return await coro
        return asyncio.run_coroutine_threadsafe(wrap(), self._loop).result(self.timeout)

    def _call(self, fn: Callable[[], _T]) -> _T:
        """Read state on the proxy thread; directly once stopped (so results survive stop())."""
        if not self._thread.is_alive():
            return fn()

        async def wrap() -> _T:
            return fn()
        return self._run(wrap())

    def start(self) -> ChaosProxyThread:
        self._thread.start()
        self._run(self.proxy.start())
        return self

    def stop(self) -> None:
        if self._loop.is_closed():
            return
        if not self._thread.is_alive():
            self._loop.close()
            return
        try:
            self._run(self.proxy.stop())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(self.timeout)
            self._loop.close()

    def __enter__(self) -> ChaosProxyThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        return self.proxy.port

    @property
    def events(self) -> list[FaultEvent]:
        return self._call(lambda: list(self.proxy.events))

    @property
    def stats(self) -> ProxyStats:
        return self._call(self.proxy.stats.snapshot)

    def inject(self, kind: str, params: Mapping[str, float] | None = None) -> FaultEvent:
        return self._run(self.proxy.inject(kind, params))

    def reset(self) -> None:
        self._run(self.proxy.reset())

    def blackhole(self, duration: float) -> None:
        self._run(self.proxy.blackhole(duration))

    def end_blackhole(self) -> None:
        self._run(self.proxy.end_blackhole())

    def refuse(self, duration: float) -> None:
        self._run(self.proxy.refuse(duration))

    def end_refuse(self) -> None:
        self._run(self.proxy.end_refuse())

    def set_latency(self, seconds: float) -> None:
        self._run(self.proxy.set_latency(seconds))

    def set_bandwidth(self, bytes_per_second: float | None) -> None:
        self._run(self.proxy.set_bandwidth(bytes_per_second))


# --- CLI --------------------------------------------------------------------------------------


def _addr(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


def _print_event(ev: FaultEvent) -> None:
    params = " ".join(f"{k}={v:g}" for k, v in ev.params.items())
    print(f"[chaos {ev.t:8.3f}s] {ev.kind} {params}".rstrip(), flush=True)


async def _serve(args: argparse.Namespace, schedule: ChaosSchedule) -> ProxyStats:
    proxy = ChaosProxy(args.listen[1], listen_host=args.listen[0], target=args.target,
                       schedule=schedule, on_fault=_print_event)
    async with proxy:
        print(f"[chaos] {proxy.listen_host}:{proxy.port} -> {args.target[0]}:{args.target[1]} "
              f"for {args.duration:g}s, {len(schedule.events)} scheduled faults", flush=True)
        if args.latency:
            await proxy.set_latency(args.latency)
        if args.bandwidth:
            await proxy.set_bandwidth(args.bandwidth)
        try:
            await asyncio.sleep(args.duration)
        finally:
            s = proxy.stats
            faults = ",".join(f"{k}:{v}" for k, v in sorted(s.faults.items())) or "none"
            print(f"[chaos] summary: connections={s.connections_accepted} "
                  f"c2s={s.bytes_client_to_server}B s2c={s.bytes_server_to_client}B "
                  f"dropped={s.bytes_dropped}B faults={faults}", flush=True)
    return proxy.stats


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.chaos_proxy", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--listen", type=_addr, default=("127.0.0.1", 9000), help="HOST:PORT")
    ap.add_argument("--target", type=_addr, required=True, help="HOST:PORT")
    ap.add_argument("--duration", type=float, default=300.0, help="stop after (s), default 300")
    ap.add_argument("--seed", type=int, help="random fault schedule seed")
    ap.add_argument("--mean-interval", type=float, default=3.0, help="mean s between faults")
    ap.add_argument("--faults", help=f"comma list from {','.join(RANDOM_KINDS)} (default all)")
    ap.add_argument("--latency", type=float, default=0.0, help="base one-way latency (s)")
    ap.add_argument("--bandwidth", type=float, help="bytes/s cap per direction")
    args = ap.parse_args(argv)
    schedule = ChaosSchedule()
    try:
        check_loopback(args.listen[0])
        check_loopback(args.target[0])
        if args.seed is not None or args.faults:
            seed = args.seed if args.seed is not None else Random().randrange(2**31)
            kinds = (args.faults or ",".join(RANDOM_KINDS)).split(",")
            schedule = ChaosSchedule.random(seed, args.duration, args.mean_interval,
                                            weights={k.strip(): 1.0 for k in kinds if k.strip()})
            print(f"[chaos] seed={seed}", flush=True)
    except ValueError as exc:
        ap.error(str(exc))
    try:
        asyncio.run(_serve(args, schedule))
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())

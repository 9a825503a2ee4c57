"""A small TCP load balancer: round-robin over backends, for the loopback cluster.

    python -m tools.balancer --listen 127.0.0.1:8765 --backend 127.0.0.1:8801 --backend 127.0.0.1:8802

    async with Balancer([("127.0.0.1", 8801), ("127.0.0.1", 8802)]) as lb:   # port 0: any
        url = f"ws://127.0.0.1:{lb.port}"
    with BalancerThread(backends) as lb: ...                                 # synchronous code

Each accepted connection goes to the next backend in turn; a backend that refuses the
connect (or does not answer within `connect_timeout`) is skipped for that connection and
the one after it is tried, so a killed ingest node costs its clients one reconnect, never a
refused one while another node is up (issue 14: a capture resumes "through the load
balancer" on any other node). Both directions are piped with bounded buffers (a read of at
most CHUNK bytes is written and drained before the next read: a slow side holds the other
back instead of filling memory), and when either side ends, both are closed. No health
checks, no stickiness: a WebSocket stream is one TCP connection, and a reconnect may land on
any node, which is the point (docs/scale-out.md).

Why not haproxy: Debian's package installs (as root) but not from pip, so a newcomer
without root, and the test suite, could not count on it; and the cluster needs an importable
object that listens on port 0 and says its port. This is ~150 lines of asyncio.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
import threading
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import TypeVar

log = logging.getLogger(__name__)
_T = TypeVar("_T")

CHUNK = 64 * 1024  # bytes per read: with drain() before the next read, the bound per direction
Address = tuple[str, int]


@dataclass
class BalancerStats:
    accepted: int = 0
    #: connections piped to each backend ("host:port" → count)
    per_backend: dict[str, int] = field(default_factory=dict)
    skipped: int = 0  # connects a backend refused (the next one was tried)
    unserved: int = 0  # clients closed because every backend refused


class Balancer:
    def __init__(self, backends: Sequence[Address], *, host: str = "127.0.0.1", port: int = 0,
                 connect_timeout: float = 2.0) -> None:
        if not backends:
            raise ValueError("at least one backend")
        self.backends = list(backends)
        self.host = host
        self.connect_timeout = connect_timeout
        self.stats = BalancerStats()
        self._requested_port = port
        self._next = 0  # the backend the next connection goes to first
        self._server: asyncio.Server | None = None
        self._conns: set[asyncio.Task[None]] = set()
        self._sockets: set[asyncio.StreamWriter] = set()  # both sides of every connection

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the balancer is not started")
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, self.host, self._requested_port,
                                                  limit=CHUNK)

    async def stop(self) -> None:
        """Stop listening and close every piped connection."""
        if self._server is not None:
            self._server.close()
        # aborting the sockets ends every pipe, so each connection task returns normally
        # (cancelling a start_server callback task makes asyncio log its CancelledError)
        for w in list(self._sockets):
            w.transport.abort()
        await asyncio.gather(*self._conns, return_exceptions=True)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await self._server.wait_closed()

    async def __aenter__(self) -> Balancer:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.stop()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._conns.add(task)
        self._sockets.add(writer)
        try:
            await self._serve(reader, writer)
        finally:
            self._conns.discard(task)
            self._sockets.discard(writer)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.stats.accepted += 1
        first = self._next
        self._next = (self._next + 1) % len(self.backends)  # round-robin per connection
        upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        for turn in range(len(self.backends)):
            host, port = self.backends[(first + turn) % len(self.backends)]
            try:
                upstream = await asyncio.wait_for(
                    asyncio.open_connection(host, port, limit=CHUNK), self.connect_timeout)
            except (OSError, TimeoutError):
                self.stats.skipped += 1  # refused or silent: try the next backend
                continue
            name = f"{host}:{port}"
            self.stats.per_backend[name] = self.stats.per_backend.get(name, 0) + 1
            break
        if upstream is None:
            self.stats.unserved += 1
            log.warning("no backend accepted a connection (all %d refused)", len(self.backends))
            writer.transport.abort()
            return
        up_reader, up_writer = upstream
        self._sockets.add(up_writer)
        pipes = [asyncio.ensure_future(_pipe(reader, up_writer)),
                 asyncio.ensure_future(_pipe(up_reader, writer))]
        try:
            # either direction ending (EOF, reset) ends the connection: both sides close
            await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for pipe in pipes:
                pipe.cancel()
            await asyncio.gather(*pipes, return_exceptions=True)
            for w in (writer, up_writer):
                w.close()
            for w in (writer, up_writer):
                with contextlib.suppress(Exception):
                    await w.wait_closed()
            self._sockets.discard(up_writer)


async def _pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError, asyncio.IncompleteReadError):
        while data := await src.read(CHUNK):
            dst.write(data)
            await dst.drain()  # bounded: wait for the peer before reading more


class BalancerThread:
    """A Balancer on its own event loop in a daemon thread, for synchronous code (the
    cluster tool, tests)."""

    def __init__(self, backends: Sequence[Address], *, host: str = "127.0.0.1",
                 port: int = 0, connect_timeout: float = 2.0) -> None:
        self.balancer = Balancer(backends, host=host, port=port,
                                 connect_timeout=connect_timeout)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True,
                                        name="balancer")

    def _run(self, coro: Awaitable[_T]) -> _T:
        async def wrap() -> _T:
            return await coro
        return asyncio.run_coroutine_threadsafe(wrap(), self._loop).result(30.0)

    @property
    def port(self) -> int:
        return self.balancer.port

    @property
    def stats(self) -> BalancerStats:
        return self.balancer.stats

    def start(self) -> BalancerThread:
        self._thread.start()
        self._run(self.balancer.start())
        return self

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        self._run(self.balancer.stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def __enter__(self) -> BalancerThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def parse_address(text: str) -> Address:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tools.balancer",
                                description="Round-robin TCP load balancer (a backend that "
                                "refuses is skipped for that connection).")
    p.add_argument("--listen", type=parse_address, default=("127.0.0.1", 0),
                   metavar="HOST:PORT", help="where to listen (default 127.0.0.1:0, any port)")
    p.add_argument("--backend", type=parse_address, action="append", required=True,
                   metavar="HOST:PORT", help="a backend (repeat for each)")
    p.add_argument("--connect-timeout", type=float, default=2.0,
                   help="seconds before a silent backend is skipped (default %(default)s)")
    return p


async def serve(args: argparse.Namespace) -> None:
    host, port = args.listen
    async with Balancer(args.backend, host=host, port=port,
                        connect_timeout=args.connect_timeout) as lb:
        backends = ", ".join(f"{h}:{p}" for h, p in args.backend)
        print(f"balancer listening on {host}:{lb.port} -> {backends}", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="balancer: %(message)s")
    asyncio.run(serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())

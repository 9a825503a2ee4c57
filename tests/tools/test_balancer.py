"""tools/balancer.py: round-robin, skipping a refusing backend, piping, closing."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Awaitable, Callable

import pytest

from tools.balancer import Balancer, BalancerThread, parse_address
from tools.ingest_process import REPO_ROOT, free_port


class Backend:
    """An echo server that first says its name; it counts the clients that closed."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.closed_by_peer = asyncio.Event()
        self.writers: list[asyncio.StreamWriter] = []
        self.server: asyncio.Server | None = None

    async def start(self) -> Backend:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return self

    @property
    def address(self) -> tuple[str, int]:
        assert self.server is not None
        return "127.0.0.1", int(self.server.sockets[0].getsockname()[1])

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.append(writer)
        writer.write(f"{self.name}\n".encode())
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        self.closed_by_peer.set()
        writer.close()

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        for w in self.writers:
            w.close()


def with_backends(test: Callable[[list[Backend]], Awaitable[None]]) -> None:
    """Run `test` on a fresh event loop with two started echo backends, a and b."""
    async def run() -> None:
        started = [await Backend(name).start() for name in ("a", "b")]
        try:
            await test(started)
        finally:
            for b in started:
                await b.stop()
    asyncio.run(run())


async def hello(port: int) -> tuple[str, asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    name = (await asyncio.wait_for(reader.readline(), 5)).decode().strip()
    return name, reader, writer


def test_connections_go_round_robin() -> None:
    with_backends(round_robin)


async def round_robin(backends: list[Backend]) -> None:
    async with Balancer([b.address for b in backends]) as lb:
        names = []
        for _ in range(4):
            name, _, writer = await hello(lb.port)
            names.append(name)
            writer.close()
    assert names == ["a", "b", "a", "b"]


def test_a_refusing_backend_is_skipped_for_that_connection() -> None:
    with_backends(skip_refusing)


async def skip_refusing(backends: list[Backend]) -> None:
    dead = ("127.0.0.1", free_port())  # nothing listens: refused
    async with Balancer([dead, backends[0].address, backends[1].address]) as lb:
        names = [(await hello(lb.port))[0] for _ in range(3)]
        assert lb.stats.skipped == 1 and lb.stats.unserved == 0
    # turns: dead (skipped → a), a, b
    assert names == ["a", "a", "b"]


def test_all_backends_refusing_closes_the_client() -> None:
    with_backends(all_refusing)


async def all_refusing(backends: list[Backend]) -> None:
    del backends
    async with Balancer([("127.0.0.1", free_port())]) as lb:
        reader, writer = await asyncio.open_connection("127.0.0.1", lb.port)
        with pytest.raises((ConnectionError, asyncio.IncompleteReadError)):
            await asyncio.wait_for(reader.readexactly(1), 5)
        writer.close()
        assert lb.stats.unserved == 1


def test_both_directions_are_piped_and_either_end_closes_both() -> None:
    with_backends(pipe_and_close)


async def pipe_and_close(backends: list[Backend]) -> None:
    async with Balancer([backends[0].address]) as lb:
        _, reader, writer = await hello(lb.port)
        payload = bytes(range(256)) * 8192  # 2 MiB: many bounded reads each way
        writer.write(payload)
        echoed = await asyncio.wait_for(reader.readexactly(len(payload)), 10)
        assert echoed == payload
        writer.close()  # the client ends: the backend sees its side closed
        await asyncio.wait_for(backends[0].closed_by_peer.wait(), 5)

        _, reader, writer = await hello(lb.port)
        await backends[0].stop()  # the backend ends: the client sees EOF
        assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()


def test_the_thread_wrapper_and_the_command_line() -> None:
    assert parse_address("127.0.0.1:80") == ("127.0.0.1", 80)

    with BalancerThread([("127.0.0.1", free_port())]) as lb:
        assert lb.port > 0
    out = subprocess.run([sys.executable, "-m", "tools.balancer", "--help"], cwd=REPO_ROOT,
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and "--backend" in out.stdout

"""Tests for tools/chaos_proxy.py against real loopback sockets.

No pytest-asyncio in the venv: each async scenario runs under asyncio.run with an overall
timeout. Waits are on events/futures (or a polled condition with a deadline), never bare sleeps.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import pytest
import websockets
from websockets.asyncio.client import connect as ws_connect
from websockets.asyncio.server import ServerConnection
from websockets.asyncio.server import serve as ws_serve

from tools.chaos_proxy import (
    RANDOM_KINDS,
    ChaosProxy,
    ChaosProxyThread,
    ChaosSchedule,
    FaultEvent,
    check_loopback,
    main,
)

TIMEOUT = 10.0


def run(coro: Coroutine[Any, Any, None]) -> None:
    asyncio.run(asyncio.wait_for(coro, TIMEOUT))


async def eventually(pred: Callable[[], bool], timeout: float = 5.0) -> None:
    """Poll a condition until true (fails the test on the deadline, never passes by waiting)."""
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.005)


def when(kind: str) -> tuple[asyncio.Event, Callable[[FaultEvent], None]]:
    """An event set when the proxy reports a fault of ``kind``, and the on_fault hook for it."""
    event = asyncio.Event()

    def hook(e: FaultEvent) -> None:
        if e.kind == kind:
            event.set()

    return event, hook


class EchoServer:
    """Asyncio echo target that records what it received and how each connection ended."""

    def __init__(self) -> None:
        self.received = bytearray()
        self.accepted = 0
        self.endings: asyncio.Queue[str] = asyncio.Queue()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        try:
            while data := await reader.read(65536):
                self.received += data
                writer.write(data)
                await writer.drain()
            self.endings.put_nowait("eof")
        except ConnectionResetError:
            self.endings.put_nowait("reset")
        finally:
            writer.close()


@contextlib.asynccontextmanager
async def echo_proxy(**kwargs: Any) -> AsyncIterator[tuple[EchoServer, ChaosProxy]]:
    echo = EchoServer()
    server = await asyncio.start_server(echo.handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with ChaosProxy(target=("127.0.0.1", port), **kwargs) as proxy:
            yield echo, proxy
    finally:
        server.close()


async def open_(proxy: ChaosProxy) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", proxy.port)


async def ping_new(proxy: ChaosProxy, msg: bytes) -> None:
    """Round trip on a fresh connection, closed afterwards."""
    reader, writer = await open_(proxy)
    try:
        await ping(reader, writer, msg)
    finally:
        writer.close()


async def ping(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, msg: bytes) -> None:
    writer.write(msg)
    assert await reader.readexactly(len(msg)) == msg


def test_bytes_pass_through_unchanged_both_ways() -> None:
    payload = os.urandom(1 << 20)

    async def scenario() -> None:
        async with echo_proxy() as (echo, proxy):
            reader, writer = await open_(proxy)

            async def send() -> None:
                for i in range(0, len(payload), 10_000):
                    writer.write(payload[i : i + 10_000])
                    await writer.drain()
                writer.write_eof()  # half-close travels through; echo replies then closes

            _, echoed = await asyncio.gather(send(), reader.read())
            assert echoed == payload
            assert bytes(echo.received) == payload
            assert await echo.endings.get() == "eof"
            writer.close()
            await eventually(lambda: proxy.stats.bytes_server_to_client == len(payload))
            assert proxy.stats.bytes_client_to_server == len(payload)
            assert proxy.stats.connections_accepted == 1

    run(scenario())


def test_reset_sends_rst_to_both_sides() -> None:
    async def scenario() -> None:
        seen: list[FaultEvent] = []
        async with echo_proxy(on_fault=seen.append) as (echo, proxy):
            reader, writer = await open_(proxy)
            await ping(reader, writer, b"hello")
            await proxy.reset()
            with pytest.raises(ConnectionResetError):
                await reader.read(1)
            assert await echo.endings.get() == "reset"
            writer.close()
            assert [e.kind for e in seen] == ["reset"]
            assert proxy.stats.faults["reset"] == 1
            # the proxy itself keeps working
            await ping_new(proxy, b"again")

    run(scenario())


def test_blackhole_discards_without_closing_and_new_connections_recover() -> None:
    async def scenario() -> None:
        async with echo_proxy() as (echo, proxy):
            reader, writer = await open_(proxy)
            await ping(reader, writer, b"before")
            await proxy.blackhole(30.0)
            writer.write(b"lost")
            await eventually(lambda: proxy.stats.bytes_dropped == 4)
            # connection accepted during the black hole: never reaches the target
            r2, w2 = await open_(proxy)
            w2.write(b"void")
            await eventually(lambda: proxy.stats.bytes_dropped == 8)
            assert echo.accepted == 1
            await proxy.end_blackhole()
            # a fresh connection works again
            await ping_new(proxy, b"after")
            assert bytes(echo.received) == b"beforeafter"
            # the blackholed connection is still open, but stays dead
            assert not writer.is_closing() and not reader.at_eof() and echo.endings.empty()
            writer.write(b"x")
            await eventually(lambda: proxy.stats.bytes_dropped == 9)
            assert bytes(echo.received) == b"beforeafter"
            assert [e.kind for e in proxy.events] == ["blackhole", "blackhole_end"]
            writer.close()
            w2.close()

    run(scenario())


def test_blackhole_ends_by_itself() -> None:
    async def scenario() -> None:
        ended, hook = when("blackhole_end")
        async with echo_proxy(on_fault=hook) as (_, proxy):
            await proxy.blackhole(0.1)
            await ended.wait()
            await ping_new(proxy, b"ok")

    run(scenario())


def test_refuse_then_relisten_on_same_port() -> None:
    async def scenario() -> None:
        ended, hook = when("refuse_end")
        async with echo_proxy(on_fault=hook) as (_, proxy):
            port = proxy.port
            reader, writer = await open_(proxy)
            await ping(reader, writer, b"a")
            await proxy.refuse(30.0)
            with pytest.raises(ConnectionRefusedError):
                await open_(proxy)
            await ping(reader, writer, b"existing connection unaffected")
            await proxy.end_refuse()
            assert proxy.port == port and ended.is_set()
            await ping_new(proxy, b"b")
            # timed variant: listening again once "refuse_end" is reported
            ended.clear()
            await proxy.refuse(0.1)
            with pytest.raises(ConnectionRefusedError):
                await open_(proxy)
            await ended.wait()
            await ping_new(proxy, b"c")
            await ping(reader, writer, b"still alive")
            writer.close()

    run(scenario())


def test_latency_adds_at_least_the_delay_each_way() -> None:
    async def scenario() -> None:
        async with echo_proxy() as (_, proxy):
            reader, writer = await open_(proxy)
            await ping(reader, writer, b"warm")
            await proxy.set_latency(0.15)
            start = time.monotonic()
            for i in range(3):  # order preserved
                writer.write(b"%d" % i)
            assert await reader.readexactly(3) == b"012"
            assert time.monotonic() - start >= 2 * 0.15 - 0.005
            writer.close()

    run(scenario())


def test_bandwidth_cap_slows_transfer() -> None:
    async def scenario() -> None:
        async with echo_proxy() as (_, proxy):
            reader, writer = await open_(proxy)
            await proxy.set_bandwidth(100_000)
            start = time.monotonic()
            writer.write(bytes(50_000))
            assert await reader.readexactly(50_000) == bytes(50_000)
            # 10 slices of 5000 B per direction, 50 ms apart: >= 0.45 s one way
            assert time.monotonic() - start >= 0.4
            await proxy.set_bandwidth(None)
            await ping(reader, writer, b"unthrottled")
            writer.close()

    run(scenario())


def test_random_schedule_is_deterministic_and_respects_ranges() -> None:
    kwargs: dict[str, Any] = dict(
        duration=200.0, mean_interval=2.0, blackhole_range=(1.0, 2.0),
        refuse_range=(0.3, 0.6), latency_range=(0.05, 0.1), latency_duration_range=(2.0, 3.0))
    a = ChaosSchedule.random(7, **kwargs)
    assert a == ChaosSchedule.random(7, **kwargs)
    assert a != ChaosSchedule.random(8, **kwargs)
    ts = [e.t for e in a.events]
    assert ts == sorted(ts) and ts[0] > 0 and ts[-1] < 200.0
    assert 50 < len(ts) < 150  # Poisson with mean 100 events
    assert {e.kind for e in a.events} == set(RANDOM_KINDS)
    for e in a.events:
        if e.kind == "blackhole":
            assert 1.0 <= e.params["duration"] <= 2.0
        elif e.kind == "refuse":
            assert 0.3 <= e.params["duration"] <= 0.6
        elif e.kind == "latency":
            assert 0.05 <= e.params["seconds"] <= 0.1
            assert 2.0 <= e.params["duration"] <= 3.0
        else:
            assert e.kind == "reset" and e.params == {}
    only = ChaosSchedule.random(1, 100.0, 1.0, weights={"reset": 1.0, "refuse": 0.0})
    assert {e.kind for e in only.events} == {"reset"}
    with pytest.raises(ValueError):
        ChaosSchedule.random(1, 10.0, weights={"explode": 1.0})


def test_explicit_schedule_sorted_validated_and_run() -> None:
    sched = ChaosSchedule.explicit([
        (0.05, "reset", {}),
        (0.0, "latency", {"seconds": 0.01, "duration": 0.02}),
        (0.1, "bandwidth", {"bytes_per_second": 1e6}),
    ])
    assert [e.kind for e in sched.events] == ["latency", "reset", "bandwidth"]
    with pytest.raises(ValueError):
        ChaosSchedule.explicit([(1.0, "blackhole", {})])  # missing duration
    with pytest.raises(ValueError):
        ChaosSchedule.explicit([(1.0, "meteor", {})])

    async def scenario() -> None:
        done, hook = when("bandwidth")
        async with echo_proxy(schedule=sched, on_fault=hook) as (_, proxy):
            await done.wait()
            kinds = [e.kind for e in proxy.events]
            assert sorted(kinds) == ["bandwidth", "latency", "latency_end", "reset"]
            for ev in proxy.events:
                due = next(s.t for s in sched.events if ev.kind.startswith(s.kind))
                assert ev.t >= due - 0.005
            assert proxy.stats.faults == {"latency": 1, "reset": 1, "bandwidth": 1}

    run(scenario())


def test_injected_clock_timestamps_events() -> None:
    ticks = iter(range(100, 200))

    async def scenario() -> None:
        async with echo_proxy(clock=lambda: float(next(ticks))) as (_, proxy):
            ev = await proxy.inject("reset")
            assert ev.t == 1.0  # clock read at start (101) and at the event (102)

    run(scenario())


@pytest.mark.parametrize("host", ["0.0.0.0", "10.0.0.1", "192.168.1.1", "::", "example.com", ""])
def test_loopback_only(host: str) -> None:
    with pytest.raises(ValueError):
        check_loopback(host)
    with pytest.raises(ValueError):
        ChaosProxy(target=(host, 80))
    with pytest.raises(ValueError):
        ChaosProxy(listen_host=host, target=("127.0.0.1", 80))


def test_loopback_accepted() -> None:
    for host in ["127.0.0.1", "127.8.9.10", "::1", "[::1]", "localhost"]:
        ChaosProxy(target=(host, 80), listen_host=host)


def test_websockets_through_threaded_proxy() -> None:
    """A websockets client/server pair in the test's own loop, the proxy on its own thread."""
    faults: list[str] = []

    async def scenario() -> None:
        async def echo(ws: ServerConnection) -> None:
            with contextlib.suppress(websockets.ConnectionClosed):
                async for msg in ws:
                    await ws.send(msg)

        async with ws_serve(echo, "127.0.0.1", 0) as server:
            port = next(iter(server.sockets)).getsockname()[1]
            with ChaosProxyThread(target=("127.0.0.1", port),
                                  on_fault=lambda e: faults.append(e.kind)) as proxy:
                url = f"ws://127.0.0.1:{proxy.port}/v1/stream"
                async with ws_connect(url) as ws:
                    blob = os.urandom(200_000)
                    await ws.send(blob)
                    assert await ws.recv() == blob
                    await ws.send("text")
                    assert await ws.recv() == "text"
                    proxy.reset()  # sync, thread-safe
                    with pytest.raises(websockets.ConnectionClosedError):
                        await ws.recv()
                proxy.set_latency(0.05)
                async with ws_connect(url) as ws:
                    await ws.send("again")
                    assert await ws.recv() == "again"
                stats = proxy.stats
                assert stats.connections_accepted == 2
                assert stats.faults["reset"] == 1
        assert faults == ["reset", "latency"]

    run(scenario())


def test_cli_runs_for_duration_and_prints_summary(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--listen", "127.0.0.1:0", "--target", "127.0.0.1:9", "--duration", "0.3",
                 "--seed", "3", "--mean-interval", "0.05", "--faults", "reset,latency"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "[chaos] seed=3"
    assert any(" reset" in line for line in out) or any(" latency " in line for line in out)
    assert out[-1].startswith("[chaos] summary: connections=0")
    with pytest.raises(SystemExit):
        main(["--listen", "0.0.0.0:9000", "--target", "127.0.0.1:8765"])


def test_thread_wrapper_state_readable_after_stop() -> None:
    proxy = ChaosProxyThread(target=("127.0.0.1", 9)).start()
    proxy.reset()
    proxy.stop()
    proxy.stop()  # idempotent
    assert [e.kind for e in proxy.events] == ["reset"]
    assert proxy.stats.faults["reset"] == 1

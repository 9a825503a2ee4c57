"""The real app under real uvicorn on loopback, but in this process (a thread), so a test
can inject a fake clock or a fault and reach into the registry."""

from __future__ import annotations

import asyncio
import errno
import socket
import threading
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import numpy as np
import pytest
import uvicorn

import ingest_server.connection
from ingest_server.app import create_app
from ingest_server.cli import uvicorn_config
from ingest_server.config import ServerConfig
from ingest_server.service import IngestService
from ingest_server.storage import Journal
from uplink.wire import CloseCode

from .client import FRAME, Client, Closed, frames
from .test_sessions import FakeClock

T = TypeVar("T")


class _ThreadServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.ready = threading.Event()
        self.loop: asyncio.AbstractEventLoop | None = None

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        self.loop = asyncio.get_running_loop()
        self.ready.set()


@dataclass
class Running:
    url: str
    http: str
    service: IngestService
    server: _ThreadServer

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 10) -> T:
        """Run a coroutine on the server's event loop and wait for its result."""
        assert self.server.loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self.server.loop).result(timeout)

    def connections_finished(self) -> None:
        """Wait until the server has processed every disconnect (no polling)."""
        async def wait() -> None:
            await asyncio.gather(*(c.finished.wait() for c in list(self.service.connections)))
        self.call(wait())


@contextmanager
def in_process(data: Path, clock: FakeClock) -> Iterator[Running]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = ServerConfig(port=port, data_dir=data, session_timeout=60.0)
    app = create_app(config, clock=clock)
    server = _ThreadServer(uvicorn_config(app, config))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    assert server.ready.wait(20), "server did not start"
    try:
        yield Running(f"ws://127.0.0.1:{port}/v1/stream", f"http://127.0.0.1:{port}",
                      app.state.ingest, server)
    finally:
        server.should_exit = True
        thread.join(20)


def test_session_expiry_through_the_app_with_a_fake_clock(tmp_path: Path) -> None:
    clock = FakeClock(100.0)
    f = frames(5, seed=30)
    with in_process(tmp_path / "data", clock) as srv:
        with Client(srv.url) as c:
            w = c.hello("sleepy")
            c.stream(0, f)
        srv.connections_finished()  # the session timeout starts at this (fake) instant
        assert srv.call(srv.service.registry.expire(100.0 + 59.9)) == []
        clock.now = 100.0 + 60.0
        assert srv.call(srv.service.registry.expire()) == ["sleepy"]

        with Client(srv.url) as c:
            w2 = c.hello("sleepy", resume=w)
            assert w2.finalized and w2.next_seq == 5
            c.audio(5, 5 * FRAME, frames(1, seed=31))
            assert c.expect_close().code == CloseCode.STREAM_FINALIZED
        with Client(srv.url) as c:
            c.hello("sleepy", resume=w)
            assert c.end(5, 5 * FRAME).gaps == 0
        d = httpx.get(f"{srv.http}/v1/streams/sleepy", timeout=10).json()
        assert (d["state"], d["end_reason"], d["frames"]) == ("finalized", "expired", 5)
        wav = (tmp_path / "data" / "streams" / "sleepy" / "audio.wav").read_bytes()
        assert wav[-5 * FRAME * 2:] == b"".join(f)


def test_unexpected_fault_closes_1011_and_spares_other_streams(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = ingest_server.connection.apply_item

    def faulty(journal: Any, data: bytes, **kw: Any) -> bool:
        if "boom" in str(journal.path) and journal.next_seq == 2:
            raise RuntimeError("injected fault")
        return real(journal, data, **kw)

    monkeypatch.setattr(ingest_server.connection, "apply_item", faulty)
    f = frames(6, seed=32)
    with in_process(tmp_path / "data", FakeClock()) as srv:
        with Client(srv.url) as calm, Client(srv.url) as boom:
            calm.hello("calm")
            boom.hello("boom")
            calm.stream(0, f[:3])
            boom.stream(0, f[:2])
            boom.audio(2, 2 * FRAME, [f[2]])
            closed = boom.expect_close()
            assert closed.code == CloseCode.INTERNAL_ERROR and "internal" in closed.reason
            calm.stream(3, f[3:])
            calm.end(6, 6 * FRAME)
        assert httpx.get(f"{srv.http}/healthz", timeout=10).json()["status"] == "ok"
        wav = httpx.get(f"{srv.http}/v1/streams/calm/audio.wav", timeout=10).content
        assert wav[-6 * FRAME * 2:] == b"".join(f)
        boom_wav = httpx.get(f"{srv.http}/v1/streams/boom/audio.wav", timeout=10).content
        assert np.array_equal(np.frombuffer(boom_wav[-2 * FRAME * 2:], "<i2"),
                              np.frombuffer(b"".join(f[:2]), "<i2"))


def test_failed_fsync_is_never_acked_and_closes_1013(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_sync = Journal.sync

    def failing_sync(self: Journal) -> None:
        if "eio" in str(self.path) and self.next_seq > 3:
            raise OSError(errno.EIO, "injected I/O error")
        real_sync(self)

    monkeypatch.setattr(Journal, "sync", failing_sync)
    f = frames(5, seed=33)
    with in_process(tmp_path / "data", FakeClock()) as srv:
        with Client(srv.url) as c:
            w = c.hello("eio")
            c.stream(0, f[:3])
            c.audio(3, 3 * FRAME, [f[3]])
            closed = c.expect_close()
            assert closed.code == CloseCode.TRY_AGAIN_LATER and closed.reason == "storage failure"
            assert c.acked == (3, 3 * FRAME)  # seq 3 was written but never made durable
        with Client(srv.url) as c:  # the journal stays unusable until a restart re-verifies it
            with pytest.raises(Closed) as e:
                c.hello("eio", resume=w)
            assert e.value.code == CloseCode.TRY_AGAIN_LATER

"""Shared test machinery: the real app under real uvicorn in this process (so a test can
inject a fake clock or a storage fault and reach into the registry), /metrics scraping,
data-dir snapshots, and a healthy "bystander" stream that runs in a thread while a test
misbehaves next to it."""

from __future__ import annotations

import asyncio
import hashlib
import socket
import threading
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

import httpx
import uvicorn
from prometheus_client.parser import text_string_to_metric_families

from ingest_server.app import create_app
from ingest_server.cli import uvicorn_config
from ingest_server.config import ServerConfig
from ingest_server.service import IngestService
from tests.support.clock import FakeClock

from .client import FRAME, Client, frames

T = TypeVar("T")
WAIT = 20.0


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
    data: Path

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = WAIT) -> T:
        """Run a coroutine on the server's event loop and wait for its result."""
        assert self.server.loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self.server.loop).result(timeout)

    def connections_finished(self, stream_id: str | None = None) -> None:
        """Wait until the server has processed every disconnect (no polling); with
        `stream_id`, only those of that stream's connections (others may stay connected)."""
        async def wait() -> None:
            await asyncio.gather(*(c.finished.wait() for c in list(self.service.connections)
                                   if stream_id is None
                                   or (c.stream is not None and c.stream.stream_id == stream_id)))
        self.call(wait())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def in_process(data: Path, clock: FakeClock | None = None, wall: FakeClock | None = None,
               **overrides: Any) -> Iterator[Running]:
    port = free_port()
    config = replace(ServerConfig(port=port, data_dir=data, session_timeout=60.0), **overrides)
    app = create_app(config, clock=clock or FakeClock(), wall=wall or FakeClock(1.7e9))
    server = _ThreadServer(uvicorn_config(app, config))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    assert server.ready.wait(WAIT), "server did not start"
    try:
        yield Running(f"ws://127.0.0.1:{port}/v1/stream", f"http://127.0.0.1:{port}",
                      app.state.ingest, server, data)
    finally:
        server.should_exit = True
        thread.join(WAIT)


# -- metrics --------------------------------------------------------------------------------

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(http: str, token: str | None = None) -> Samples:
    """Every sample of /metrics, parsed by the Prometheus client's own parser."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    resp = httpx.get(f"{http}/metrics", headers=headers, timeout=WAIT)
    assert resp.status_code == 200, resp.text
    out: Samples = {}
    for family in text_string_to_metric_families(resp.text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


# -- stored bytes ---------------------------------------------------------------------------


def snapshot(data: Path, exclude: set[str] = frozenset()) -> dict[str, str]:  # type: ignore[assignment]
    """SHA-256 of every file under DATA/streams, except the streams named in `exclude`."""
    root = data / "streams"
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*"))
            if p.is_file() and p.relative_to(root).parts[0] not in exclude}


# -- a healthy neighbour --------------------------------------------------------------------


class Bystander:
    """Streams one frame at a time (each acked) in a thread until released, then ends.

    Paced (`pace` seconds between frames) so it stays far below any rate limit under test.
    `finish()` returns the frames it stored, for a sample-exact comparison.
    """

    def __init__(self, url: str, sid: str, token: str | None = None, seed: int = 99,
                 pace: float = 0.01, max_frames: int = 3000) -> None:
        self.url, self.sid, self.token, self.pace = url, sid, token, pace
        self.frames = frames(max_frames, seed)
        self.sent = 0
        self.started = threading.Event()
        self._release = threading.Event()
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Bystander:
        self._thread.start()
        assert self.started.wait(WAIT), f"bystander did not start: {self.error!r}"
        return self

    def __exit__(self, *exc: object) -> None:
        self._release.set()
        self._thread.join(WAIT)

    def _run(self) -> None:
        try:
            with Client(self.url, self.token) as c:
                c.hello(self.sid)
                while self.sent < len(self.frames):
                    c.stream(self.sent, self.frames[self.sent:self.sent + 1])
                    self.sent += 1
                    self.started.set()
                    if self._release.wait(self.pace):
                        break
                c.end(self.sent, self.sent * FRAME)
        except BaseException as e:  # reported by finish()
            self.error = e
            self.started.set()

    def finish(self) -> list[bytes]:
        self._release.set()
        self._thread.join(WAIT)
        assert not self._thread.is_alive(), "bystander hung"
        assert self.error is None, f"the healthy stream failed: {self.error!r}"
        return self.frames[:self.sent]

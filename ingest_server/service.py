"""The running ingest service: storage, registry, live connections, expiry sweeper, shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from starlette.websockets import WebSocket

from uplink.wire import CloseCode

from .config import ServerConfig
from .connection import Connection
from .sessions import Registry
from .storage import Store

log = logging.getLogger(__name__)

# fsyncs, WAV exports and stream creation run here, off the event loop. Sized for many
# concurrent streams: while one fsync runs, later writes queue up and share the next one.
IO_THREADS = 16
SHUTDOWN_GRACE = 10.0


class IngestService:
    def __init__(self, config: ServerConfig, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.store = Store(config.data_dir, fsync=config.fsync)
        self.store.check_writable()  # StorageError: a clear start-up failure
        self.executor = ThreadPoolExecutor(IO_THREADS, thread_name_prefix="ingest-io")
        self.registry = Registry(self.store, config, clock=clock, executor=self.executor)
        self.connections: set[Connection] = set()
        self._sweeper: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Recover every stream before the first connection is accepted."""
        self.registry.recover()
        self._sweeper = asyncio.create_task(self._sweep())

    async def handle(self, ws: WebSocket) -> None:
        conn = Connection(ws, self.registry, self.config)
        self.connections.add(conn)
        try:
            await conn.run()
        finally:
            self.connections.discard(conn)

    async def _sweep(self) -> None:
        # The sweep period bounds how late a stream expires; the decision itself uses the
        # registry's clock (sessions.Registry.expire), which tests drive directly.
        interval = min(1.0, self.config.session_timeout / 4)
        while True:
            await asyncio.sleep(interval)
            try:
                await self.registry.expire()
            except Exception:
                log.exception("session expiry sweep failed")

    async def close_connections(self) -> None:
        """Stop taking streams; flush, ack and close every live connection with 1012 (§7)."""
        self.registry.shutting_down = True
        conns = list(self.connections)
        if conns:
            log.info("closing %d live connections with %d", len(conns), CloseCode.SERVICE_RESTART)
        await asyncio.gather(*(c.shutdown() for c in conns), return_exceptions=True)
        waits = [asyncio.create_task(c.finished.wait()) for c in conns]
        if waits:
            _, pending = await asyncio.wait(waits, timeout=SHUTDOWN_GRACE)
            for t in pending:
                t.cancel()

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        await self.close_connections()
        await self.registry.close()
        self.executor.shutdown(wait=True)

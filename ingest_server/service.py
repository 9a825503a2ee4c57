"""The running ingest service: storage, registry, admission of connections, sweeper, shutdown.

Admission happens before the WebSocket upgrade, so a refused client gets a plain HTTP answer
(docs/protocol.md §10): 401 / 403 from authentication, 503 when the server holds
max_connections, 429 when the client's token holds max_connections_per_token. The counts are
checked and changed without an await in between, so concurrent upgrades cannot overshoot.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextvars import ContextVar
from dataclasses import dataclass

from starlette.responses import PlainTextResponse
from starlette.websockets import WebSocket

from uplink.wire import CloseCode

from .auth import Authenticator, Denial, Principal
from .commit import make_committer
from .config import ServerConfig
from .connection import Connection
from .errors import ClosingError
from .history import ConnectionHistory
from .listen import FromError, ListenerHub, parse_from
from .metrics import Gauges, Metrics, WebhookTotals
from .relay import EventRelay
from .sessions import Registry
from .storage import Store, is_valid_stream_id
from .storage.interface import SharedStorage, StreamStorage
from .storage.lock import DataDirLock
from .stream import Stream
from .webhooks import WebhookDispatcher

log = logging.getLogger(__name__)


def open_shared_store(config: ServerConfig, *, wall: Callable[[], float],
                      clock: Callable[[], float]) -> SharedStorage:
    """`--store nats://...`: the JetStream backend (imports nats-py only now)."""
    from .storage.jetstream import open_jetstream  # noqa: PLC0415 - the cluster extra

    return open_jetstream(config, wall=wall, clock=clock)

# fsyncs, WAV exports and stream creation run here, off the event loop. Sized for many
# concurrent streams: while one fsync runs, later writes queue up and share the next one.
IO_THREADS = 16
SHUTDOWN_GRACE = 10.0
RETRY_AFTER = "5"  # seconds, on 429 / 503 answers to the upgrade
READY_PROBE = ".ready-probe"
WEBHOOK_OUTBOX_DIR = ".webhooks"


@dataclass(frozen=True, slots=True)
class Readiness:
    ready: bool
    storage: bool
    shutting_down: bool
    detail: str


class IngestService:
    def __init__(self, config: ServerConfig, *, clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time) -> None:
        self.config = config
        # First, before anything reads or writes a stream: a second server on this data dir
        # would recover, expire and delete the first one's live streams (storage/lock.py).
        # DataDirBusy (a StorageError) names the holder's pid.
        self.lock = DataDirLock(config.data_dir)
        self.lock.acquire()
        # The local journal, or NATS JetStream shared by every node (docs/scale-out.md;
        # the data dir then holds only this node's webhook outbox). StorageError (NATS
        # unreachable, too few replicas, nats-py missing): a clear start-up failure.
        self.shared: SharedStorage | None = None
        self.store: StreamStorage
        try:
            if config.store:
                self.shared = self.store = open_shared_store(config, wall=wall, clock=clock)
            else:
                local = Store(config.data_dir, fsync=config.fsync)
                local.check_writable()
                self.store = local
        except BaseException:
            self.lock.release()
            raise
        self.executor = ThreadPoolExecutor(IO_THREADS, thread_name_prefix="ingest-io")
        self.metrics = Metrics()
        self.auth = Authenticator(config.tokens)
        self.committer = (self.shared.committer if self.shared is not None
                          else make_committer(config.sync_mode, self.executor, self.metrics))
        self.registry = Registry(self.store, config, clock=clock, wall=wall,
                                 executor=self.executor, metrics=self.metrics,
                                 committer=self.committer)
        self.connections: set[Connection] = set()
        self.listeners = ListenerHub(self.registry, self.store, config)  # §11 live listeners
        # Both subscribe to the event bus (events.py): the web view's timeline, and webhooks
        # with their outbox under the data dir (it survives a restart).
        self.history = ConnectionHistory(self.registry.events, config.history_limit,
                                         streams=self.registry.streams)
        self.webhooks = WebhookDispatcher(config, self.registry.events,
                                          config.data_dir / WEBHOOK_OUTBOX_DIR, self.executor,
                                          describe=self.registry.describe)
        # Shared store: discovery and listeners hear of every node's streams (relay.py)
        self.relay = (EventRelay(self.registry.events, self.shared)
                      if self.shared is not None else None)
        self.per_token: dict[str | None, int] = {}
        self._sweeper: asyncio.Task[None] | None = None
        self.metrics.watch(self._gauges)
        if config.webhooks:
            self.metrics.watch_webhooks(self._webhook_totals)

    def _webhook_totals(self) -> WebhookTotals:
        stats = self.webhooks.stats()
        return WebhookTotals(delivered=stats.total("delivered"),
                             retried=stats.total("retried"), failed=stats.total("failed"),
                             dropped=stats.total("dropped"), lost=stats.lost,
                             queued=stats.total("queued"))

    async def start(self) -> None:
        """Recover every stream before the first connection is accepted."""
        self.history.start()  # before recovery and the first connection: nothing is missed
        await self.webhooks.start()
        if self.relay is not None:
            self.relay.start()
        self.registry.recover()
        self._sweeper = asyncio.create_task(self._sweep())

    def _gauges(self) -> Gauges:
        streams = self.registry.streams.values()
        open_ = [s for s in streams if not s.finalized]
        return Gauges(
            connections=len(self.connections),
            streams_open=len(open_),
            streams_finalized=len(self.registry.streams) - len(open_),
            streams_connected=sum(1 for s in open_ if s.owner is not None),
            journal_bytes=sum(s.journal.position.size for s in open_ if s.journal is not None),
        )

    # -- admission and connections (§10) ------------------------------------------------------

    def authenticate(self, authorization: list[str], query_string: str) -> Principal | Denial:
        result = self.auth.check(authorization, query_string)
        if isinstance(result, Denial):
            self.metrics.auth_failures[result.reason] += 1
        return result

    async def handle(self, ws: WebSocket) -> None:
        result = self.authenticate(ws.headers.getlist("authorization"),
                                   ws.scope.get("query_string", b"").decode("latin-1"))
        if isinstance(result, Denial):
            await self._refuse(ws, result.status, result.reason, result.detail, result.headers)
            return
        cfg, token = self.config, result.token_sha256
        if len(self.connections) >= cfg.max_connections:
            self.metrics.rejections["max_connections"] += 1
            await self._refuse(ws, 503, "max_connections", f"server at its limit of "
                               f"{cfg.max_connections} connections", {"Retry-After": RETRY_AFTER})
            return
        if token is not None and self.per_token.get(token, 0) >= cfg.max_connections_per_token:
            self.metrics.rejections["per_token"] += 1
            await self._refuse(ws, 429, "per_token", f"this token already holds "
                               f"{cfg.max_connections_per_token} connections",
                               {"Retry-After": RETRY_AFTER})
            return
        conn = Connection(ws, self.registry, cfg, self.metrics, result)
        self.connections.add(conn)
        self.per_token[token] = self.per_token.get(token, 0) + 1
        try:
            await conn.run()
        finally:
            self.connections.discard(conn)
            left = self.per_token[token] - 1
            if left:
                self.per_token[token] = left
            else:
                del self.per_token[token]

    async def handle_listen(self, ws: WebSocket, stream_id: str) -> None:
        """§11: a live listener. Refusals are HTTP answers to the upgrade (like §10)."""
        query = ws.scope.get("query_string", b"").decode("latin-1")
        result = self.authenticate(ws.headers.getlist("authorization"), query)
        if isinstance(result, Denial):
            await self._refuse(ws, result.status, result.reason, result.detail, result.headers)
            return
        if self.shared is not None:  # any node serves any stream's listeners
            await self._listen_shared(ws, stream_id)
            return
        stream = self.registry.streams.get(stream_id)
        if stream is None:
            await deny(ws, 404, f"unknown stream {stream_id[:64]!r}")
            return
        if await self._listener_refused(ws):
            return
        await self._serve_listener(ws, stream)

    async def _listener_refused(self, ws: WebSocket) -> bool:
        """Shutting down, or at the listener limit: answered with 503 (§11.1)."""
        if self.registry.shutting_down:
            await deny(ws, 503, "server shutting down", {"Retry-After": RETRY_AFTER})
            return True
        if len(self.listeners.listeners) >= self.config.max_connections:
            self.metrics.rejections["max_connections"] += 1
            await deny(ws, 503, f"server at its limit of {self.config.max_connections} "
                       "listeners", {"Retry-After": RETRY_AFTER})
            return True
        return False

    async def _serve_listener(self, ws: WebSocket, stream: Stream) -> None:
        try:
            start = parse_from(ws.query_params.get("from"), stream.meta.format.sample_rate,
                               stream.durable.next_sample)
        except FromError as e:
            await deny(ws, 400, str(e))
            return
        await self.listeners.serve(ws, stream, start)

    async def _listen_shared(self, ws: WebSocket, stream_id: str) -> None:
        """§11 on a shared store: the stream may be written on another node; the registry
        follows it (Registry.follow) for as long as listeners here need it."""
        if await self._listener_refused(ws):
            return
        try:
            stream = await self.registry.follow(stream_id) \
                if is_valid_stream_id(stream_id) else None
        except ClosingError:
            await deny(ws, 503, "storage unavailable", {"Retry-After": RETRY_AFTER})
            return
        if stream is None:
            await deny(ws, 404, f"unknown stream {stream_id[:64]!r}")
            return
        try:
            await self._serve_listener(ws, stream)
        finally:
            self.registry.unfollow(stream)

    @staticmethod
    async def _refuse(ws: WebSocket, status: int, reason: str, detail: str,
                      headers: dict[str, str]) -> None:
        peer = f"{ws.client.host}:{ws.client.port}" if ws.client else None
        log.info("refused WebSocket upgrade from %s: HTTP %d (%s)", peer or "?", status, reason,
                 extra={"ctx": {"peer": peer, "status": status, "reason": reason}})
        await deny(ws, status, detail, headers)

    # -- readiness, sweeper, shutdown ---------------------------------------------------------

    async def readiness(self) -> Readiness:
        """Ready: not shutting down, and a file can be written in the data dir right now."""
        if self.registry.shutting_down:
            return Readiness(False, True, True, "shutting down")
        if self.shared is not None:
            if not self.shared.healthy():
                return Readiness(False, False, False, "not connected to NATS")
            return Readiness(True, True, False, "ready")
        try:
            await asyncio.get_running_loop().run_in_executor(self.executor, self._probe)
        except OSError as e:
            return Readiness(False, False, False, f"data dir not writable: {e.strerror or e}")
        return Readiness(True, True, False, "ready")

    def _probe(self) -> None:
        assert isinstance(self.store, Store)
        path = self.store.streams_dir / READY_PROBE
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, b"ready\n")
        finally:
            os.close(fd)
            with contextlib.suppress(OSError):
                path.unlink()

    async def sweep_once(self) -> None:
        """Expire idle sessions (monotonic clock), then apply retention (wall clock)."""
        if self.shared is not None:
            self.registry.poll_followed()  # listeners' streams written on other nodes
        await self.registry.expire()
        await self.registry.purge()

    async def _sweep(self) -> None:
        # The sweep period bounds how late a stream expires; the decisions themselves use the
        # registry's clocks (sessions.Registry.expire / purge), which tests drive directly.
        interval = min(1.0, self.config.session_timeout / 4)
        while True:
            await asyncio.sleep(interval)
            try:
                await self.sweep_once()
            except Exception:
                log.exception("sweep failed")

    async def close_connections(self) -> None:
        """Stop taking streams; flush, ack and close every live connection with 1012 (§7)."""
        self.registry.shutting_down = True
        self.registry.events.close()  # discovery responses end (§11.4)
        await self.listeners.close()  # 1012 to listeners (§11.5): they resume after the restart
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
        self.registry.shutting_down = True  # no new listener from here on
        await self.listeners.close()  # 1012: each resumes from its position after the restart
        await self.close_connections()
        await self.registry.close()
        await self.webhooks.stop()  # after the last event; undelivered ones stay on disk
        await self.history.stop()
        self.committer.close()
        self.executor.shutdown(wait=True)
        if self.relay is not None:
            self.relay.stop()  # after the last local event (the disconnects above)
        if self.shared is not None:
            self.shared.close()  # after the last publish; leases lapse (lease_seconds)
        self.lock.release()  # last: every journal is closed


async def deny(ws: WebSocket, status: int, detail: str,
               headers: dict[str, str] | None = None) -> None:
    """Answer the upgrade request with a plain HTTP response instead of switching protocols.

    Uses the ASGI "websocket.http.response" extension (uvicorn's websockets implementations
    have it); a server without it can only refuse with 403, which we fall back to.
    """
    _denied.set(True)
    if "websocket.http.response" in (ws.scope.get("extensions") or {}):
        await ws.send_denial_response(PlainTextResponse(detail + "\n", status, headers=headers))
    else:
        await ws.close(CloseCode.POLICY_VIOLATION)


# uvicorn's websockets-sansio protocol never marks the handshake done after a denial
# response, so it logs "ASGI callable returned without completing handshake." at ERROR for
# every refused upgrade (Kludex/uvicorn PR #3138). A failed login is not a server error:
# drop exactly that record, and only for a request we denied. uvicorn logs it in the task
# that ran our app, so a context variable set by `deny` is visible to the filter.
_denied: ContextVar[bool] = ContextVar("echopanel_denied", default=False)
_UVICORN_NOISE = "ASGI callable returned without completing handshake."


class _DenialNoiseFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not (_denied.get() and record.getMessage() == _UVICORN_NOISE)


def quiet_uvicorn_denials() -> None:
    logger = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, _DenialNoiseFilter) for f in logger.filters):
        logger.addFilter(_DenialNoiseFilter())

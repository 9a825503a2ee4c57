"""The asyncio layer around the sans-I/O core: it moves bytes and keeps time, nothing more.

One task per job: a connection task (open, then read) and a writer task (sends in order);
one loop timer calls `core.tick` at `core.next_deadline()`. Ring wake-ups arrive from the
capture thread through `loop.call_soon_threadsafe`. Every core call happens on the event loop
thread, so the core needs no locks. Each connection has a generation number: events from a
connection the core already dropped are ignored.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import random
import socket
import ssl
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import urlsplit

import websockets
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidMessage, InvalidStatus, InvalidURI

from uplink import wire
from uplink.config import Servers, UplinkConfig, server_urls
from uplink.config import endpoint_url as endpoint_url  # re-exported: its old home
from uplink.core import (
    Action,
    CloseConnection,
    ConnectionState,
    Counters,
    Failed,
    Finished,
    GapMismatch,
    GapRecorded,
    OpenConnection,
    SendBinary,
    SendText,
    State,
    StateChanged,
    UplinkCore,
)
from uplink.errors import (
    ConnectFailed,
    FatalError,
    HandshakeRefused,
    TlsFailure,
    UplinkError,
    error_for_http_status,
)
from uplink.ring import GapReason, RingBuffer, RingStats

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class UplinkStats:
    """A snapshot for status displays and supervisors."""

    state: ConnectionState
    counters: Counters
    ring: RingStats
    in_flight: int
    breaker: str


@dataclass(frozen=True, slots=True)
class UplinkResult:
    ok: bool
    error: FatalError | None
    stats: UplinkStats
    #: the server's `ended` gap totals disagreed with the GAPs it acknowledged (§6); None
    #: when they agree, or the server is too old to send totals
    gap_mismatch: str | None = None


class UplinkClient:
    """Streams one ring to the server. `server` is one URL or several — a string with
    commas or a sequence (docs/resilience.md, "Several servers"): the client keeps the
    one that works and moves to the next on a reconnect; token and TLS apply to each."""

    def __init__(
        self,
        server: Servers,
        ring: RingBuffer,
        stream_id: str,
        config: UplinkConfig,
        token: str | None = None,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
        *,
        cafile: str | None = None,
        labels: dict[str, str] | None = None,
    ) -> None:
        #: the endpoint URLs, checked (uplink/config.py server_urls); `url` is the one in use
        self.urls = server_urls(server)
        self.ring = ring
        #: may be replaced before `retry()` (e.g. the application obtained a new token)
        self.token = token
        self.config = config
        self.clock = clock
        # validates labels
        self.core = UplinkCore(ring, stream_id, config, rng, labels=labels, servers=self.urls)
        self._ssl = _tls_context(self.urls[0], cafile)  # every URL has the same scheme
        self._listeners: list[Callable[[ConnectionState], None]] = []
        #: called with the new acked seq (everything below is durable) whenever it advances
        self.on_ack: Callable[[int], None] | None = None
        #: called with (start_sample, samples, reason) when the server acknowledged a GAP:
        #: those samples are recorded as lost (silence in the WAV), exactly that range
        self.on_gap: Callable[[int, int, GapReason], None] | None = None
        self._retry_requested = False
        self._queues: list[asyncio.Queue[ConnectionState]] = []
        self._ws: ClientConnection | None = None
        self._gen = 0
        self._outgoing: deque[str | bytes] = deque()
        self._send_ready = asyncio.Event()
        self._wake_pending = False  # set by the producer thread, cleared on the loop
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_deadline: float | None = None
        self._finished: asyncio.Future[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    # -- observation ----------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The server URL in use (or, while reconnecting, the one tried next)."""
        return self.core.server

    def on_state(self, listener: Callable[[ConnectionState], None]) -> None:
        """Call `listener` on every connection state change (on the event loop thread)."""
        self._listeners.append(listener)

    async def states(self) -> AsyncIterator[ConnectionState]:
        """Async iterator over state changes until the uplink is done or failed."""
        queue: asyncio.Queue[ConnectionState] = asyncio.Queue()
        self._queues.append(queue)
        try:
            while True:
                state = await queue.get()
                yield state
                if state.phase.final:
                    return
        finally:
            self._queues.remove(queue)

    def stats(self) -> UplinkStats:
        core = self.core
        return UplinkStats(
            state=core.public,
            counters=replace(core.counters, recovery_times=list(core.counters.recovery_times)),
            ring=self.ring.stats(),
            in_flight=core.in_flight,
            breaker=core.breaker.state.value,
        )

    # -- running --------------------------------------------------------------------------

    async def run(self) -> UplinkResult:
        """Stream until the server acked end-of-stream, or a fatal error.

        After a fatal error, `retry()` then `run()` again continues the same stream.
        """
        if self.core.state is State.FAILED and not self._retry_requested:
            raise RuntimeError("the uplink failed: call retry() before running it again")
        loop = self._loop = asyncio.get_running_loop()
        self._finished = loop.create_future()
        def wake() -> None:
            # one pending wake-up at a time: a burst of pushes costs one self-pipe write,
            # not one per frame (the flag is cleared on the loop before the ring is read)
            if not self._wake_pending:
                self._wake_pending = True
                loop.call_soon_threadsafe(self._on_ring_data)

        self.ring.on_data = wake
        self._spawn(self._writer())
        try:
            if self._retry_requested:
                self._retry_requested = False
                self._execute(self.core.retry(self.clock()))
            else:
                self._execute(self.core.start(self.clock()))
            await self._finished
        finally:
            self.ring.on_data = None
            if self.core.state not in (State.DONE, State.FAILED):
                self.ring.abort()
            await self._shutdown()
        error = self.core.error
        return UplinkResult(ok=error is None, error=error, stats=self.stats(),
                            gap_mismatch=self.core.gap_mismatch)

    def retry(self, *, token: str | None = None) -> None:
        """After `run()` returned a fatal error whose cause the application fixed: the next
        `run()` reconnects with the same epoch and credential (§8) and replays everything
        the ring still holds, with a fresh retry budget. `token` replaces the token.

        Synchronous and cheap: it only arms the retry. Call it once `run()` has returned.
        """
        if self.core.state is not State.FAILED:
            raise RuntimeError(f"retry() is for a failed uplink (it is {self.core.state.value})")
        if self._finished is not None and not self._finished.done():
            raise RuntimeError("retry() only after run() returned")
        if token is not None:
            self.token = token
        self._retry_requested = True

    def give_up(self, reason: str) -> None:
        """Stop now (e.g. a second Ctrl-C): fail with `reason`; the ring keeps the audio."""
        self._execute(self.core.stop(self.clock(), reason))

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        """A task that dies of a bug must end the run loudly, not leave it hanging."""
        self._tasks.discard(task)
        if task.cancelled() or task.exception() is None:
            return
        exc = task.exception()
        log.error("uplink task failed", exc_info=exc)
        if self.core.state not in (State.DONE, State.FAILED):
            self.give_up(f"internal error: {exc!r}")

    async def _shutdown(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._timer_deadline = None  # a retry's run() arms a fresh one
        ws, self._ws = self._ws, None
        if ws is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ws.close(), 2.0)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    # -- executing actions ----------------------------------------------------------------

    def _execute(self, actions: list[Action]) -> None:
        for action in actions:
            match action:
                case SendBinary(data):
                    self._outgoing.append(data)
                    self._send_ready.set()
                case SendText(text):
                    self._outgoing.append(text)
                    self._send_ready.set()
                case OpenConnection(server):
                    self._gen += 1
                    self._outgoing.clear()
                    self._spawn(self._connection(self._gen, self.urls[server]))
                case CloseConnection(code, reason):
                    self._close_current(code, reason)
                case StateChanged(state):
                    for listener in self._listeners:
                        try:
                            listener(state)
                        except Exception:  # an observer's bug must not stop the uplink
                            log.exception("state listener %r failed", listener)
                    for queue in self._queues:
                        queue.put_nowait(state)
                case GapRecorded(start, samples, reason):
                    if self.on_gap is not None:
                        try:
                            self.on_gap(start, samples, reason)
                        except Exception:  # an observer's bug must not stop the uplink
                            log.exception("on_gap hook failed")
                case GapMismatch(detail):
                    log.error("gap accounting mismatch for stream %s: %s",
                              self.core.stream_id, detail)
                case Finished() | Failed():
                    if self._finished is not None and not self._finished.done():
                        self._finished.set_result(None)
        self._rearm_timer()

    def _close_current(self, code: int, reason: str) -> None:
        self._gen += 1  # whatever that connection still reports is stale
        self._outgoing.clear()
        ws, self._ws = self._ws, None
        if ws is None:
            return
        if code == 1001:
            # a dead link: a closing handshake would wait on it, so abort the TCP connection
            ws.transport.abort()
        else:
            self._spawn(_close_quietly(ws, code, reason))

    def _on_ring_data(self) -> None:
        self._wake_pending = False
        self._execute(self.core.data_available(self.clock()))

    # -- tasks ----------------------------------------------------------------------------

    async def _connection(self, gen: int, url: str) -> None:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else None
        try:
            ws = await connect(
                url,
                additional_headers=headers,
                compression=None,  # PCM does not compress (docs/protocol.md §1)
                proxy=None,
                ssl=self._ssl,
                open_timeout=self.config.connect_timeout,
                ping_interval=None,  # liveness is the core's job (acks, app-level pings)
                close_timeout=1.0,
                max_size=wire.DEFAULT_MAX_MESSAGE_BYTES,
            )
        except Exception as e:  # translated at the boundary, cause kept
            if gen != self._gen:
                return
            error = _translate_open_error(e, url)
            if (isinstance(e, InvalidMessage) and url.startswith("ws://")
                    and await _speaks_tls(url, self.config.connect_timeout)):
                error = TlsFailure("the server speaks TLS: use wss://, not ws://")
                error.__cause__ = e
            if gen == self._gen:
                self._execute(self.core.connection_failed(error, self.clock()))
            return
        if gen != self._gen:
            await _close_quietly(ws, 1000, "superseded locally")
            return
        self._ws = ws
        self._execute(self.core.connection_opened(self.clock()))
        code: int | None = None
        reason = ""
        try:
            async for message in ws:
                if gen != self._gen:
                    return
                if isinstance(message, str):
                    acked = self.core.counters.acked_seq
                    self._execute(self.core.text_received(message, self.clock()))
                    if self.on_ack is not None and self.core.counters.acked_seq != acked:
                        try:
                            self.on_ack(self.core.counters.acked_seq)
                        except Exception:
                            log.exception("on_ack hook failed")
        except ConnectionClosed as e:
            if e.rcvd is not None:
                code, reason = e.rcvd.code, e.rcvd.reason
        except OSError:
            pass
        else:
            if ws.close_code is not None and ws.close_code != 1006:
                code, reason = ws.close_code, ws.close_reason or ""
        if gen == self._gen:
            self._ws = None
            self._execute(self.core.connection_closed(code, reason, self.clock()))

    async def _writer(self) -> None:
        while True:
            await self._send_ready.wait()
            self._send_ready.clear()
            while self._outgoing:
                ws, gen = self._ws, self._gen
                if ws is None:
                    self._outgoing.clear()
                    break
                message = self._outgoing.popleft()
                try:
                    await ws.send(message)
                except (ConnectionClosed, OSError):
                    # the reader sees the close and tells the core; what was in flight is
                    # replayed after the next welcome
                    if gen == self._gen:
                        self._outgoing.clear()
                    break

    def _rearm_timer(self) -> None:
        """Keep one loop timer armed no later than the core's next deadline.

        It is re-armed only when the deadline comes *earlier* than the armed one. Every ack
        pushes the ack deadline out; leaving the timer where it is then saves a cancel and a
        call_later per frame: the timer fires early once, `tick` finds nothing due (it only
        acts on deadlines that have passed) and the timer is armed for the real deadline.
        """
        deadline = self.core.next_deadline()
        if deadline is None:
            return  # an armed timer may fire for nothing; tick is then a no-op
        armed = self._timer_deadline
        if self._timer is not None and armed is not None and armed <= deadline:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_deadline = deadline
        if self._loop is not None:
            delay = max(0.0, deadline - self.clock())
            self._timer = self._loop.call_later(delay, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_deadline = None
        self._execute(self.core.tick(self.clock()))


async def _close_quietly(ws: ClientConnection, code: int, reason: str) -> None:
    with contextlib.suppress(Exception):
        await ws.close(code, reason)


def _tls_context(url: str, cafile: str | None) -> ssl.SSLContext | None:
    """The TLS context for wss:// (system CAs, plus `cafile` for a private CA)."""
    if not url.startswith("wss://"):
        if cafile is not None:
            raise ValueError("cafile is only for wss:// servers")
        return None
    try:
        return ssl.create_default_context(cafile=cafile)
    except (OSError, ssl.SSLError) as e:
        raise ValueError(f"cannot load the CA file {cafile}: {e}") from e


# OpenSSL reasons that mean the peer does not speak TLS (or no version we accept): a plain
# HTTP server answers a ClientHello with text, which OpenSSL reads as a bad record
_NOT_TLS_REASONS = frozenset({
    "WRONG_VERSION_NUMBER", "RECORD_LAYER_FAILURE", "UNKNOWN_PROTOCOL", "HTTP_REQUEST",
    "PACKET_LENGTH_TOO_LONG", "UNSUPPORTED_PROTOCOL", "TLSV1_ALERT_PROTOCOL_VERSION",
    "NO_PROTOCOLS_AVAILABLE",
})
# getaddrinfo answers that mean the name does not exist (EAI_AGAIN is a transient failure)
_NO_SUCH_NAME = frozenset(
    getattr(socket, name) for name in ("EAI_NONAME", "EAI_NODATA") if hasattr(socket, name)
)


def _translate_open_error(e: Exception, url: str = "") -> UplinkError:
    """Socket, TLS and websockets exceptions → the uplink's hierarchy (cause kept).

    Errors that reconnecting cannot fix are fatal here, with what to do (docs/resilience.md).
    """
    err: UplinkError
    if isinstance(e, InvalidStatus):
        status = e.response.status_code
        body = e.response.body.decode("utf-8", "replace")[:200] if e.response.body else ""
        err = error_for_http_status(status, body.strip())
    elif isinstance(e, InvalidURI):
        err = HandshakeRefused(f"invalid server URL: {e}")
    elif isinstance(e, ssl.SSLCertVerificationError):
        err = TlsFailure(
            f"certificate verify failed: {e.verify_message} — pass --cafile with your CA "
            "(cafile=), or check the host name in the server URL"
        )
    elif isinstance(e, ssl.SSLError) and e.reason in _NOT_TLS_REASONS:
        err = TlsFailure(f"the server does not speak TLS ({e.reason}): use ws://, not wss://")
    elif isinstance(e, TimeoutError | asyncio.TimeoutError):
        err = ConnectFailed("timed out opening the connection")
    elif isinstance(e, socket.gaierror):
        host = url.split("://", 1)[-1].split("/", 1)[0]
        err = ConnectFailed(f"cannot resolve {host}: {e.strerror or e}",
                            unresolved=e.errno in _NO_SUCH_NAME)
    elif isinstance(e, OSError) and _refused(e):
        err = ConnectFailed(f"connection refused — is echopanel-ingest running at {url}?")
    elif isinstance(e, OSError):
        err = ConnectFailed(f"cannot connect: {e.strerror or e}")
    elif isinstance(e, websockets.exceptions.InvalidHandshake):
        err = ConnectFailed(f"WebSocket upgrade failed: {e}")
    else:
        err = ConnectFailed(f"cannot connect: {e!r}")
    err.__cause__ = e
    return err


def _refused(e: OSError) -> bool:
    # asyncio joins the per-address errors of a multi-address host into one OSError
    return isinstance(e, ConnectionRefusedError) or (
        e.errno is None and f"[Errno {errno.ECONNREFUSED}]" in str(e)
    )


async def _speaks_tls(url: str, timeout: float) -> bool:
    """Does the server at this ws:// URL complete a TLS handshake (certificate unchecked)?

    A TLS server reading a plain upgrade request closes without a byte of answer, which
    looks like a server dying mid-upgrade; this probe tells the two apart.
    """
    parts = urlsplit(url)
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # only asks "is this TLS?"; nothing is sent over it
    try:
        _, writer = await asyncio.wait_for(
            asyncio.open_connection(parts.hostname, parts.port or 80, ssl=ctx), timeout
        )
    except (OSError, TimeoutError, ssl.SSLError):
        return False
    writer.close()
    with contextlib.suppress(Exception):
        await writer.wait_closed()
    return True

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
import logging
import random
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, replace
from typing import Any

import websockets
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, InvalidURI

from uplink import wire
from uplink.config import UplinkConfig
from uplink.core import (
    Action,
    CloseConnection,
    ConnectionState,
    Counters,
    Failed,
    Finished,
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
    UplinkError,
    error_for_http_status,
)
from uplink.ring import RingBuffer, RingStats

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


def endpoint_url(server: str) -> str:
    """`ws://host:port` gets the protocol's path; a URL with a path is used as given."""
    scheme, sep, rest = server.partition("://")
    if not sep:
        scheme, rest = "ws", server
    if scheme not in ("ws", "wss"):
        raise ValueError(f"server URL must start with ws:// or wss://, not {scheme}://")
    host, slash, path = rest.partition("/")
    if not host:
        raise ValueError(f"server URL {server!r} has no host")
    if not slash or not path:
        return f"{scheme}://{host}{wire.ENDPOINT_PATH}"
    return f"{scheme}://{host}/{path}"


class UplinkClient:
    def __init__(
        self,
        server: str,
        ring: RingBuffer,
        stream_id: str,
        config: UplinkConfig,
        token: str | None = None,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self.url = endpoint_url(server)
        self.ring = ring
        self.token = token
        self.config = config
        self.clock = clock
        self.core = UplinkCore(ring, stream_id, config, rng)
        self._listeners: list[Callable[[ConnectionState], None]] = []
        #: called with the new acked seq (everything below is durable) whenever it advances
        self.on_ack: Callable[[int], None] | None = None
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
                if state.name in ("done", "failed"):
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
        """Stream until the server acked end-of-stream, or a fatal error."""
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
            self._execute(self.core.start(self.clock()))
            await self._finished
        finally:
            self.ring.on_data = None
            if self.core.state not in (State.DONE, State.FAILED):
                self.ring.abort()
            await self._shutdown()
        error = self.core.error
        return UplinkResult(ok=error is None, error=error, stats=self.stats())

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
                case OpenConnection():
                    self._gen += 1
                    self._outgoing.clear()
                    self._spawn(self._connection(self._gen))
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

    async def _connection(self, gen: int) -> None:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else None
        try:
            ws = await connect(
                self.url,
                additional_headers=headers,
                compression=None,  # PCM does not compress (docs/protocol.md §1)
                proxy=None,
                open_timeout=self.config.connect_timeout,
                ping_interval=None,  # liveness is the core's job (acks, app-level pings)
                close_timeout=1.0,
                max_size=wire.DEFAULT_MAX_MESSAGE_BYTES,
            )
        except Exception as e:  # translated at the boundary, cause kept
            if gen == self._gen:
                self._execute(self.core.connection_failed(_translate_open_error(e), self.clock()))
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


def _translate_open_error(e: Exception) -> UplinkError:
    if isinstance(e, InvalidStatus):
        status = e.response.status_code
        body = e.response.body.decode("utf-8", "replace")[:200] if e.response.body else ""
        err = error_for_http_status(status, body.strip())
    elif isinstance(e, InvalidURI):
        err = HandshakeRefused(f"invalid server URL: {e}")
    elif isinstance(e, TimeoutError | asyncio.TimeoutError):
        err = ConnectFailed("timed out opening the connection")
    elif isinstance(e, OSError):
        err = ConnectFailed(f"cannot connect: {e.strerror or e}")
    elif isinstance(e, websockets.exceptions.InvalidHandshake):
        err = ConnectFailed(f"WebSocket upgrade failed: {e}")
    else:
        err = ConnectFailed(f"cannot connect: {e!r}")
    err.__cause__ = e
    return err

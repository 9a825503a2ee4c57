"""One WebSocket connection: the asyncio adapter of the connection core (core.py).

It moves bytes and keeps time; core.py decides (what each message does in each state, every
close code: docs/protocol.md §2–§7). The receive loop hands each message to the core with
the loop time and carries out the actions: O(1) work per message, no wait on the disk
(the flusher, flusher.py, runs the sync and the core sends one cumulative ack). The core's
deadlines (handshake, idle, a peer that stopped reading) share one loop timer, re-armed
only when it fires, not a wait_for per message. Authentication and connection limits were
checked before the upgrade (service.py, §10).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from starlette.websockets import WebSocket, WebSocketDisconnect

from uplink.wire import CloseCode, End, Hello

from .auth import ANONYMOUS, Principal
from .config import ServerConfig
from .core import (
    Abort,
    Action,
    Attach,
    Close,
    Detach,
    Finalize,
    FinalSync,
    MessageBudget,
    RequestSync,
    Send,
    ServerCore,
    StartCommits,
    State,
)
from .errors import STORAGE_FAILURE, ClosingError, storage_failure
from .flusher import Flusher
from .metrics import Metrics
from .sessions import Registry
from .storage.interface import Position
from .stream import Stream
from .wsprotocol import LOCAL_CLOSE, abort_callback, connection_extension

log = logging.getLogger(__name__)

_SEND_ERRORS = (RuntimeError, OSError, WebSocketDisconnect)  # the peer is already gone
MAX_REASON_BYTES = 123  # RFC 6455: a close frame's reason fits in 123 bytes
CLOSE_TIMEOUT = 5.0  # a close frame that cannot be written by then: the peer is not reading
TRANSPORT_CLOSES = (CloseCode.PROTOCOL_ERROR, CloseCode.INVALID_PAYLOAD,
                    CloseCode.MESSAGE_TOO_BIG)
_DONE = (State.SHUTTING_DOWN, State.CLOSING, State.CLOSED)  # process nothing more


def short_reason(reason: str) -> str:
    return reason.encode()[:MAX_REASON_BYTES].decode(errors="ignore")


class Connection:
    def __init__(self, ws: WebSocket, registry: Registry, config: ServerConfig,
                 metrics: Metrics, principal: Principal = ANONYMOUS) -> None:
        self.ws = ws
        self.registry = registry
        self.metrics = metrics
        self.principal = principal
        self.stream: Stream | None = None
        self.finished = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        # §5 rate limit: shared with our WebSocket protocol (wsprotocol.py), which takes one
        # per control or continuation frame, so a ping or fragment flood meets the same limit.
        ext = connection_extension(ws.scope)
        budget = ext.get("budget") if ext else None
        self.core = ServerCore(config, metrics, self._loop.time(),
                               budget if isinstance(budget, MessageBudget) else None)
        self._drop_transport = abort_callback(ws.scope)
        self._timer: asyncio.TimerHandle | None = None
        self._flusher: Flusher | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._task: asyncio.Task[Any] | None = None
        self._close_sent = False
        self._send_failed = False
        self._aborted = False

    def __repr__(self) -> str:
        peer = self.ws.client
        sid = self.stream.stream_id if self.stream else "-"
        return f"<connection {sid} from {peer.host}:{peer.port}>" if peer else f"<connection {sid}>"

    def _ctx(self, **fields: object) -> dict[str, object]:
        peer = self.ws.client
        return {"ctx": {"stream_id": self.stream.stream_id if self.stream else None,
                        "peer": f"{peer.host}:{peer.port}" if peer else None,
                        "token": self.principal.label, **fields}}

    # -- lifecycle ------------------------------------------------------------------------

    async def run(self) -> None:
        self._task = asyncio.current_task()
        try:
            await self.ws.accept()
            self._arm()
            await self._receive_loop()
        except asyncio.CancelledError:
            if not self._aborted:
                raise
            if self._task is not None:
                self._task.uncancel()
        except Exception:
            # Never let one connection's fault reach the server or another stream (§7: 1011).
            log.exception("%r failed", self, extra=self._ctx())
            await self._do(self.core.internal_error())
        finally:
            await self._finish()

    async def _finish(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        try:
            if self._flusher is not None:
                await self._flusher.stop()  # everything written becomes durable
        except Exception:
            log.exception("%r: final flush failed", self, extra=self._ctx())
        finally:
            actions = self.core.finished()
            if self.stream is not None and any(type(a) is Detach for a in actions):
                self.registry.detach(self.stream, self, self.core.close_code or 1006)
            self.metrics.close(self.core.close_code or 1006)
            self.finished.set()

    async def supersede(self) -> None:
        """A newer connection takes the stream over (§2): 4411, then wait for our writes."""
        await self._do(self.core.supersede())
        await self.finished.wait()

    async def shutdown(self) -> None:
        """Server stopping: make what we wrote durable, ack it, close with 1012 (§7)."""
        await self._do(self.core.shutdown())

    # -- receiving --------------------------------------------------------------------------

    async def _receive_loop(self) -> None:
        receive, clock, core = self.ws.receive, self._loop.time, self.core
        while True:
            msg = await receive()
            if msg["type"] == "websocket.disconnect":  # first: a close is recorded even
                self._peer_closed(msg)  # when a failed send already stopped us
                return
            if core.state in _DONE or self._send_failed:
                return
            data = msg.get("bytes")
            if data is not None:
                actions = core.receive_binary(data, clock())
            else:
                actions = core.receive_text(msg.get("text") or "", clock())
            if actions:
                await self._do(actions)
                if core.state is State.CLOSING and core.close_code != CloseCode.NORMAL:
                    return  # closed for an error of this message (§7): done reading

    def _peer_closed(self, msg: Mapping[str, Any]) -> None:
        code = msg.get("code")
        # The WebSocket layer refused a frame (size, UTF-8) or a frame flood (1008).
        if self.core.close_code is None and (code in TRANSPORT_CLOSES or msg.get(LOCAL_CLOSE)):
            log.info("%r closed by the WebSocket layer with %d: %s", self, code,
                     msg.get("reason") or "", extra=self._ctx(code=code))
        self.core.peer_closed(code if isinstance(code, int) else None)

    # -- carrying out the core's actions ------------------------------------------------------

    async def _do(self, actions: Sequence[Action]) -> None:
        for action in actions:
            match action:
                case RequestSync(since=since):
                    if self._flusher is not None:
                        self._flusher.request(since)
                case Send(text=text):
                    await self._send(text)
                case Close():
                    await self._close(action)
                case Attach(hello=hello):
                    await self._attach(hello)
                case StartCommits():
                    assert self.stream is not None
                    self._flusher = Flusher(self.stream, self.metrics, self._synced,
                                            self._sync_failed)
                case Finalize(end=end):
                    await self._finalize(end)
                case FinalSync():
                    await self._final_sync()
                case Abort(why=why):
                    self._abort(why)
                case Detach():
                    pass  # carried out by _finish, after the last sync

    async def _attach(self, hello: Hello) -> None:
        try:
            attached = await self.registry.attach(hello, self, self.principal)
        except ClosingError as e:
            await self._do(self.core.failed(e))
            return
        stream = self.stream = attached.stream
        actions = self.core.attached(stream, attached.credential, attached.resumed,
                                     self._loop.time())
        if actions:
            event = "resumed" if attached.resumed else "created"
            log.info("%r %s at seq %d (%s)", self, event, stream.durable.next_seq,
                     self.principal.label,
                     extra=self._ctx(event=event, next_seq=stream.durable.next_seq))
        await self._do(actions)

    async def _synced(self, durable: Position) -> None:
        await self._do(self.core.synced(durable, self._loop.time()))

    async def _sync_failed(self, error: ClosingError | None) -> None:
        await self._do(self.core.internal_error() if error is None
                       else self.core.sync_failed(error))

    async def _finalize(self, end: End) -> None:
        stream = self.stream
        assert stream is not None
        if self._flusher is not None:
            await self._flusher.stop()
        try:
            with storage_failure("finalization", stream_id=stream.stream_id):
                ended = await self.registry.end(stream, end)
        except ClosingError as e:
            await self._do(self.core.failed(e))
            return
        log.info("%r ended at seq %d (%d gaps)", self, ended.next_seq, ended.gaps,
                 extra=self._ctx(event="ended", next_seq=ended.next_seq, gaps=ended.gaps))
        await self._do(self.core.finalized(ended))

    async def _final_sync(self) -> None:
        stream = self.stream
        assert stream is not None
        durable: Position | None = None
        with contextlib.suppress(ClosingError):  # logged by the guard; the close is 1012
            with storage_failure("fsync at shutdown", stream_id=stream.stream_id):
                await stream.sync()
            durable = stream.durable
        await self._do(self.core.final_synced(durable))

    # -- timer, sending, closing ------------------------------------------------------------

    def _arm(self) -> None:
        deadline = self.core.next_deadline()
        if deadline is not None:
            self._timer = self._loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        actions = self.core.tick(self._loop.time())
        if actions:  # a close from a timer runs as its own task; the receive loop sees it
            task = asyncio.create_task(self._do(actions))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        self._arm()

    async def _send(self, text: str) -> None:
        if self._close_sent:
            return
        core = self.core
        core.send_started(self._loop.time())
        try:
            await self.ws.send_text(text)
        except _SEND_ERRORS:
            self._send_failed = True
        finally:
            core.send_finished()

    async def _close(self, close: Close) -> None:
        """Send our close frame (the first close wins: the core emits only one)."""
        if self._close_sent:
            return
        self._close_sent = True
        code, reason = close.code, close.reason
        if code == CloseCode.TRY_AGAIN_LATER and reason == STORAGE_FAILURE \
                and self.stream is not None:
            self.registry.storage_failed(self.stream, "write or sync")
        if code not in (CloseCode.NORMAL, CloseCode.SERVICE_RESTART):
            log.info("%r closing with %d: %s", self, code, reason,
                     extra=self._ctx(code=code, reason=reason))
        with contextlib.suppress(*_SEND_ERRORS):
            try:
                await asyncio.wait_for(self.ws.close(code, short_reason(reason)), CLOSE_TIMEOUT)
            except TimeoutError:
                self._abort("the close frame could not be sent")

    def _abort(self, why: str) -> None:
        """The peer stopped reading (its TCP window is shut): sends would wait forever. Stop
        waiting; what was written becomes durable at the stream's next sync (resume,
        expiry or shutdown), and nothing was acked that was not durable."""
        log.warning("%r: %s; dropping the connection", self, why, extra=self._ctx())
        self._aborted = True
        if self._drop_transport is not None:
            self._drop_transport()  # free the socket and what it could not send, now
        if self._flusher is not None:
            self._flusher.cancel()
        if self._task is not None and self._task is not asyncio.current_task():
            self._task.cancel()

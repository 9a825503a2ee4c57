"""One WebSocket connection: handshake (§2), items (§3), group-commit acks (§4), limits (§5),
heartbeats and end of stream (§6), close codes (§7). Section numbers: docs/protocol.md.

The receive loop does O(1) work per message and never waits on the disk: items are appended
at once and the flusher (flusher.py) runs the fsync in a worker thread, then sends one
cumulative ack. Per message: a token-bucket rate check (§5, 1008), a few integer additions
for the metrics, the item rules (items.py). Timeouts (handshake, idle, a peer that stopped
reading) share one rescheduled loop timer, not a wait_for per message. Authentication and
connection limits were checked before the upgrade (service.py, §10).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from typing import Any

from starlette.websockets import WebSocket, WebSocketDisconnect

from uplink.wire import (
    Ack,
    CloseCode,
    End,
    Ping,
    Pong,
    Welcome,
    WireError,
    decode_control,
    encode_control,
)

from .auth import ANONYMOUS, Principal
from .config import ServerConfig
from .errors import ClosingError, Refusal
from .flusher import Flusher
from .handshake import parse_hello
from .items import ItemRules
from .metrics import Metrics
from .sessions import Registry
from .stream import Stream
from .wsprotocol import LOCAL_CLOSE, MessageBudget, abort_callback, connection_extension

log = logging.getLogger(__name__)

_SEND_ERRORS = (RuntimeError, OSError, WebSocketDisconnect)  # the peer is already gone
MAX_REASON_BYTES = 123  # RFC 6455: a close frame's reason fits in 123 bytes
CLOSE_TIMEOUT = 5.0  # a close frame that cannot be written by then: the peer is not reading
TRANSPORT_CLOSES = (CloseCode.PROTOCOL_ERROR, CloseCode.INVALID_PAYLOAD,
                    CloseCode.MESSAGE_TOO_BIG)


def short_reason(reason: str) -> str:
    return reason.encode()[:MAX_REASON_BYTES].decode(errors="ignore")


class Connection:
    def __init__(self, ws: WebSocket, registry: Registry, config: ServerConfig,
                 metrics: Metrics, principal: Principal = ANONYMOUS) -> None:
        self.ws = ws
        self.registry = registry
        self.config = config
        self.metrics = metrics
        self.principal = principal
        self.stream: Stream | None = None
        self.finished = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self._stop = False  # set once the connection is closing: process nothing more
        self._close_sent = False
        self._close_code: int | None = None  # what ended the connection (ours or the peer's)
        self._handshaking = True
        self._last_rx = self._loop.time()
        # §5 rate limit. Shared with our WebSocket protocol (wsprotocol.py), which takes one
        # per control or continuation frame: a ping or fragment flood meets the same limit.
        ext = connection_extension(ws.scope)
        budget = ext.get("budget") if ext else None
        self._budget = budget if isinstance(budget, MessageBudget) else MessageBudget(
            now=self._last_rx)
        self._budget.configure(config.max_message_rate, config.message_burst)
        self._drop_transport = abort_callback(ws.scope)
        self._timer: asyncio.TimerHandle | None = None
        self._flusher: Flusher | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._task: asyncio.Task[Any] | None = None
        self._batch_start: float | None = None  # oldest item not yet covered by an fsync
        self._sending = 0  # sends in progress, and since when (a peer that stopped reading)
        self._send_since = 0.0
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
            self._arm(self.config.handshake_timeout)
            await self._serve()
        except WireError as e:
            await self.close(e.close_code, str(e))
        except ClosingError as e:
            await self.close(e.code, e.reason)
        except asyncio.CancelledError:
            if not self._aborted:
                raise
            if self._task is not None:
                self._task.uncancel()
        except Exception:
            # Never let one connection's fault reach the server or another stream (§7: 1011).
            log.exception("%r failed", self, extra=self._ctx())
            await self.close(CloseCode.INTERNAL_ERROR, "internal server error")
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
            if self.stream is not None:
                self.registry.detach(self.stream, self)
            self.metrics.close(self._close_code if self._close_code is not None else 1006)
            self.finished.set()

    async def close(self, code: int, reason: str) -> None:
        """Idempotent: the first close wins. Also stops processing (set before any await)."""
        self._stop = True
        if self._close_sent:
            return
        self._close_sent = True
        if self._close_code is None:
            self._close_code = code
        if code not in (CloseCode.NORMAL, CloseCode.SERVICE_RESTART):
            log.info("%r closing with %d: %s", self, code, reason,
                     extra=self._ctx(code=code, reason=reason))
        with contextlib.suppress(*_SEND_ERRORS):
            try:
                await asyncio.wait_for(self.ws.close(code, short_reason(reason)), CLOSE_TIMEOUT)
            except TimeoutError:
                self._abort("the close frame could not be sent")

    def spawn_close(self, code: int, reason: str) -> None:
        """Close from a timer callback or the flusher; the receive loop sees the disconnect."""
        self._stop = True
        task = asyncio.create_task(self.close(code, reason))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _abort(self, why: str) -> None:
        """The peer stopped reading (its TCP window is shut): sends would wait forever. Stop
        waiting; what was written becomes durable at the stream's next sync (resume,
        expiry or shutdown), and nothing was acked that was not durable."""
        log.warning("%r: %s; dropping the connection", self, why, extra=self._ctx())
        self._aborted = self._stop = True
        if self._drop_transport is not None:
            self._drop_transport()  # free the socket and what it could not send, now
        if self._flusher is not None:
            self._flusher.cancel()
        if self._task is not None and self._task is not asyncio.current_task():
            self._task.cancel()

    async def supersede(self) -> None:
        """A newer connection takes the stream over (§2): 4411, then wait for our writes."""
        await self.close(CloseCode.SUPERSEDED, "superseded by a newer connection")
        await self.finished.wait()

    async def shutdown(self) -> None:
        """Server stopping: make what we wrote durable, ack it, close with 1012 (§7)."""
        self._stop = True
        stream = self.stream
        if stream is not None and not self._handshaking:
            try:
                if await stream.sync():
                    await self.send_ack(stream)
            except OSError as e:
                log.error("%r: fsync at shutdown failed: %s", self, e, extra=self._ctx())
        await self.close(CloseCode.SERVICE_RESTART, "server restarting")

    # -- timers -----------------------------------------------------------------------------

    def _arm(self, delay: float) -> None:
        self._timer = self._loop.call_later(delay, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        if self._stop:
            return
        now, cfg = self._loop.time(), self.config
        if self._sending and now - self._send_since >= cfg.idle_timeout:
            self._close_code = CloseCode.POLICY_VIOLATION
            self._abort(f"nothing could be sent for {cfg.idle_timeout:g} s (peer not reading)")
            return
        if self._handshaking:
            self.spawn_close(CloseCode.HANDSHAKE_TIMEOUT,
                             f"no hello within {cfg.handshake_timeout:g} s")
            return
        remaining = self._last_rx + cfg.idle_timeout - now
        if remaining > 0:
            self._arm(remaining)
        else:
            self.spawn_close(CloseCode.HANDSHAKE_TIMEOUT,
                             f"nothing received for {cfg.idle_timeout:g} s")

    # -- protocol ---------------------------------------------------------------------------

    async def _serve(self) -> None:
        msg = await self.ws.receive()
        if msg["type"] == "websocket.disconnect":
            self._peer_closed(msg)
            return
        if self._stop:
            return
        self.metrics.messages_received += 1
        hello = parse_hello(msg)
        attached = await self.registry.attach(hello, self, self.principal)
        stream = self.stream = attached.stream
        if self._stop:  # timed out or superseded while waiting for the stream
            return
        self._handshaking = False
        self._last_rx = self._loop.time()
        cfg, meta = self.config, stream.meta
        durable = stream.durable
        await self._send(encode_control(Welcome(
            stream_id=stream.stream_id, epoch=meta.epoch, credential=attached.credential,
            next_seq=durable.next_seq, next_sample=durable.next_sample,
            resumed=attached.resumed, finalized=stream.finalized,
            max_message_bytes=cfg.max_message_bytes, max_inflight_frames=cfg.max_inflight_frames,
            idle_timeout=cfg.idle_timeout, session_timeout=cfg.session_timeout,
        )))
        log.info("%r %s at seq %d (%s)", self, "resumed" if attached.resumed else "created",
                 durable.next_seq, self.principal.label,
                 extra=self._ctx(event="resumed" if attached.resumed else "created",
                                 next_seq=durable.next_seq))
        if not stream.finalized:
            self._flusher = Flusher(self, stream, self.metrics)
        rules = ItemRules.for_stream(meta, durable.next_seq, cfg, self.metrics)
        await self._receive_loop(stream, rules)

    async def _receive_loop(self, stream: Stream, rules: ItemRules) -> None:
        receive, clock, metrics = self.ws.receive, self._loop.time, self.metrics
        take = self._budget.take
        while True:
            msg = await receive()
            if msg["type"] == "websocket.disconnect":  # first: a close is recorded even
                self._peer_closed(msg)  # when a failed send already stopped us
                return
            if self._stop:
                return
            now = clock()
            metrics.messages_received += 1
            if not take(now):  # §5: a flood of (tiny) messages
                raise Refusal(CloseCode.POLICY_VIOLATION,
                              f"more than {self.config.max_message_rate:g} messages/s")
            self._last_rx = now
            data = msg.get("bytes")
            if data is not None:
                if self._on_item(stream, rules, data, now):
                    await self.send_ack(stream)
            else:
                await self._on_control(stream, msg.get("text") or "")

    def _on_item(self, stream: Stream, rules: ItemRules, data: bytes, now: float) -> bool:
        """Apply one item; True if an immediate re-ack is due (a duplicate, nothing pending)."""
        if stream.finalized:
            raise WireError("stream is finalized", CloseCode.STREAM_FINALIZED)
        journal, flusher = stream.journal, self._flusher
        if journal is None or flusher is None:  # journals are closed: we are shutting down
            raise Refusal(CloseCode.SERVICE_RESTART, "server restarting")
        try:
            written = rules.apply(journal, data)
        except OSError as e:
            # The journal cut the partial record off; nothing of this item is acked (§4).
            self.metrics.storage_errors["write"] += 1
            log.error("%r: journal write failed: %s", self, e, extra=self._ctx(error=str(e)))
            raise Refusal(CloseCode.TRY_AGAIN_LATER, "storage failure") from e
        if written:
            if self._batch_start is None:
                self._batch_start = now
            flusher.kick()
            return False
        stream.duplicates += 1
        # §4: a duplicate is re-acked at once if nothing is pending, else the next ack covers it.
        return not flusher.busy and not stream.pending

    async def _on_control(self, stream: Stream, text: str) -> None:
        ctl = decode_control(text)  # 1007 malformed / unknown, 1009 oversized
        if isinstance(ctl, Ping):
            await self._send(encode_control(Pong(ctl.t)))
        elif isinstance(ctl, End):
            if self._flusher is not None:
                await self._flusher.stop()
            try:
                ended = await self.registry.end(stream, ctl)
            except OSError as e:
                log.error("%r: finalization failed: %s", self, e, extra=self._ctx(error=str(e)))
                raise Refusal(CloseCode.TRY_AGAIN_LATER, "storage failure") from e
            await self._send(encode_control(ended))
            log.info("%r ended at seq %d (%d gaps)", self, ended.next_seq, ended.gaps,
                     extra=self._ctx(event="ended", next_seq=ended.next_seq, gaps=ended.gaps))
            await self.close(CloseCode.NORMAL, "stream ended")
        else:
            raise WireError(f"unexpected {type(ctl).__name__.lower()} message")

    def _peer_closed(self, msg: Mapping[str, Any]) -> None:
        code = msg.get("code")
        if self._close_code is None:
            self._close_code = code if isinstance(code, int) else 1005
            # The WebSocket layer refused a frame (size, UTF-8) or a frame flood (1008).
            if code in TRANSPORT_CLOSES or msg.get(LOCAL_CLOSE):
                log.info("%r closed by the WebSocket layer with %d: %s", self, code,
                         msg.get("reason") or "", extra=self._ctx(code=code))

    # -- sending ----------------------------------------------------------------------------

    def take_batch_start(self) -> float | None:
        start, self._batch_start = self._batch_start, None
        return start

    async def send_ack(self, stream: Stream) -> None:
        durable = stream.durable
        await self._send(encode_control(Ack(durable.next_seq, durable.next_sample)))

    async def _send(self, text: str) -> None:
        if self._close_sent:
            return
        if not self._sending:
            self._send_since = self._loop.time()
        self._sending += 1
        try:
            await self.ws.send_text(text)
        except _SEND_ERRORS:
            self._stop = True
        finally:
            self._sending -= 1

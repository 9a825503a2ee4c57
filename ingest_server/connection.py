"""One WebSocket connection: handshake (§2), items (§3), group-commit acks (§4),
heartbeats and end of stream (§6), close codes (§7).

The receive loop does O(1) work per item and never waits on the disk: items are appended
at once and a per-connection flusher task runs the fsync in a worker thread, then sends one
cumulative ack for what that fsync covered. Items arriving meanwhile ride the next fsync.
Timeouts (handshake, idle) are one rescheduled loop timer, not a wait_for per message.
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
    Hello,
    Ping,
    Pong,
    Welcome,
    WireError,
    decode_control,
    encode_control,
)

from .config import ServerConfig
from .items import apply_item
from .sessions import Refusal, Registry, Stream

log = logging.getLogger(__name__)

_SEND_ERRORS = (RuntimeError, OSError, WebSocketDisconnect)  # the peer is already gone
MAX_REASON_BYTES = 123  # RFC 6455: a close frame's reason fits in 123 bytes


def short_reason(reason: str) -> str:
    return reason.encode()[:MAX_REASON_BYTES].decode(errors="ignore")


def parse_hello(msg: Mapping[str, Any]) -> Hello:
    """The first message must be a valid text hello (§2): else 4400 (1003 for a version or
    format we do not support, 1009 for an oversized message, as the codec decides)."""
    text = msg.get("text")
    if not isinstance(text, str):
        raise WireError("first message must be a text hello", CloseCode.BAD_HANDSHAKE)
    try:
        ctl = decode_control(text)
    except WireError as e:
        if e.close_code == CloseCode.INVALID_PAYLOAD:
            raise WireError(f"bad hello: {e}", CloseCode.BAD_HANDSHAKE) from e
        raise
    if not isinstance(ctl, Hello):
        raise WireError(f"first message must be hello, not {type(ctl).__name__.lower()}",
                        CloseCode.BAD_HANDSHAKE)
    return ctl


class Connection:
    def __init__(self, ws: WebSocket, registry: Registry, config: ServerConfig) -> None:
        self.ws = ws
        self.registry = registry
        self.config = config
        self.stream: Stream | None = None
        self.finished = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self._stop = False  # set once the connection is closing: process nothing more
        self._close_sent = False
        self._handshaking = True
        self._last_rx = self._loop.time()
        self._timer: asyncio.TimerHandle | None = None
        self._flusher: _Flusher | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def __repr__(self) -> str:
        peer = self.ws.client
        sid = self.stream.stream_id if self.stream else "-"
        return f"<connection {sid} from {peer.host}:{peer.port}>" if peer else f"<connection {sid}>"

    # -- lifecycle ------------------------------------------------------------------------

    async def run(self) -> None:
        try:
            await self.ws.accept()
            self._arm(self.config.handshake_timeout)
            await self._serve()
        except WireError as e:
            await self.close(e.close_code, str(e))
        except Refusal as e:
            await self.close(e.code, e.reason)
        except Exception:
            # Never let one connection's fault reach the server or another stream (§7: 1011).
            log.exception("%r failed", self)
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
            log.exception("%r: final flush failed", self)
        finally:
            if self.stream is not None:
                self.registry.detach(self.stream, self)
            self.finished.set()

    async def close(self, code: int, reason: str) -> None:
        """Idempotent: the first close wins. Also stops processing (set before any await)."""
        self._stop = True
        if self._close_sent:
            return
        self._close_sent = True
        if code not in (CloseCode.NORMAL, CloseCode.SERVICE_RESTART):
            log.info("%r closing with %d: %s", self, code, reason)
        with contextlib.suppress(*_SEND_ERRORS):
            await self.ws.close(code, short_reason(reason))

    def _spawn_close(self, code: int, reason: str) -> None:
        """Close from a timer callback or the flusher; the receive loop sees the disconnect."""
        self._stop = True
        task = asyncio.create_task(self.close(code, reason))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

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
                    await self._send_ack(stream)
            except OSError as e:
                log.error("%r: fsync at shutdown failed: %s", self, e)
        await self.close(CloseCode.SERVICE_RESTART, "server restarting")

    # -- timers -----------------------------------------------------------------------------

    def _arm(self, delay: float) -> None:
        self._timer = self._loop.call_later(delay, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        if self._stop:
            return
        if self._handshaking:
            self._spawn_close(CloseCode.HANDSHAKE_TIMEOUT,
                              f"no hello within {self.config.handshake_timeout:g} s")
            return
        remaining = self._last_rx + self.config.idle_timeout - self._loop.time()
        if remaining > 0:
            self._arm(remaining)
        else:
            self._spawn_close(CloseCode.HANDSHAKE_TIMEOUT,
                              f"nothing received for {self.config.idle_timeout:g} s")

    # -- protocol ---------------------------------------------------------------------------

    async def _serve(self) -> None:
        msg = await self.ws.receive()
        if self._stop or msg["type"] == "websocket.disconnect":
            return
        hello = parse_hello(msg)
        attached = await self.registry.attach(hello, self)
        stream = self.stream = attached.stream
        if self._stop:  # timed out or superseded while waiting for the stream
            return
        self._handshaking = False
        self._last_rx = self._loop.time()
        cfg = self.config
        await self._send(encode_control(Welcome(
            stream_id=stream.stream_id, epoch=stream.meta.epoch, credential=attached.credential,
            next_seq=stream.durable.next_seq, next_sample=stream.durable.next_sample,
            resumed=attached.resumed, finalized=stream.finalized,
            max_message_bytes=cfg.max_message_bytes, max_inflight_frames=cfg.max_inflight_frames,
            idle_timeout=cfg.idle_timeout, session_timeout=cfg.session_timeout,
        )))
        log.info("%r %s at seq %d", self, "resumed" if attached.resumed else "created",
                 stream.durable.next_seq)
        if not stream.finalized:
            self._flusher = _Flusher(self, stream)
        await self._receive_loop(stream)

    async def _receive_loop(self, stream: Stream) -> None:
        receive = self.ws.receive
        while True:
            msg = await receive()
            if self._stop or msg["type"] == "websocket.disconnect":
                return
            self._last_rx = self._loop.time()
            data = msg.get("bytes")
            if data is not None:
                if self._on_item(stream, data):
                    await self._send_ack(stream)
            else:
                await self._on_control(stream, msg.get("text") or "")

    def _on_item(self, stream: Stream, data: bytes) -> bool:
        """Apply one item; True if an immediate re-ack is due (a duplicate, nothing pending)."""
        if stream.finalized:
            raise WireError("stream is finalized", CloseCode.STREAM_FINALIZED)
        journal, flusher = stream.journal, self._flusher
        if journal is None or flusher is None:  # journals are closed: we are shutting down
            raise Refusal(CloseCode.SERVICE_RESTART, "server restarting")
        meta = stream.meta
        try:
            written = apply_item(journal, data, epoch=meta.epoch,
                                 block_align=meta.format.block_align,
                                 frame_samples=meta.frame_samples,
                                 max_message_bytes=self.config.max_message_bytes)
        except OSError as e:
            log.error("%r: journal write failed: %s", self, e)
            raise Refusal(CloseCode.TRY_AGAIN_LATER, "storage failure") from e
        if written:
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
                log.error("%r: finalization failed: %s", self, e)
                raise Refusal(CloseCode.TRY_AGAIN_LATER, "storage failure") from e
            await self._send(encode_control(ended))
            log.info("%r ended at seq %d (%d gaps)", self, ended.next_seq, ended.gaps)
            await self.close(CloseCode.NORMAL, "stream ended")
        else:
            raise WireError(f"unexpected {type(ctl).__name__.lower()} message")

    async def _send_ack(self, stream: Stream) -> None:
        durable = stream.durable
        await self._send(encode_control(Ack(durable.next_seq, durable.next_sample)))

    async def _send(self, text: str) -> None:
        if self._close_sent:
            return
        try:
            await self.ws.send_text(text)
        except _SEND_ERRORS:
            self._stop = True


class _Flusher:
    """Group commit for one connection's stream (§4): fsync, then one cumulative ack."""

    def __init__(self, conn: Connection, stream: Stream) -> None:
        self._conn = conn
        self._stream = stream
        self._wake = asyncio.Event()
        self._stopping = False
        self.busy = False
        self._task = asyncio.create_task(self._run())

    def kick(self) -> None:
        self._wake.set()

    async def stop(self) -> None:
        """One last fsync covering everything written so far, then end the task."""
        self._stopping = True
        self._wake.set()
        await self._task

    async def _run(self) -> None:
        stream, conn = self._stream, self._conn
        while True:
            await self._wake.wait()
            self._wake.clear()
            self.busy = True
            try:
                if await stream.sync():
                    await conn._send_ack(stream)
            except OSError as e:
                log.error("%r: fsync failed: %s", conn, e)
                conn._spawn_close(CloseCode.TRY_AGAIN_LATER, "storage failure")
                return
            except Exception:
                log.exception("%r: flusher failed", conn)
                conn._spawn_close(CloseCode.INTERNAL_ERROR, "internal server error")
                return
            finally:
                self.busy = False
            if self._stopping and not self._wake.is_set():
                return

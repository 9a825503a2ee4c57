"""uvicorn's sans-I/O websockets protocol with read flow control by queued bytes, every frame
counted in the message rate limit, and peers that are dropped really let go.

Read flow control. Upstream (uvicorn.protocols.websockets.websockets_sansio_impl) pauses the
socket after every message and resumes it when the app takes that message: two epoll_ctl
calls and the selector bookkeeping around them, per message. At 250 live streams that was 7 %
of the server's time (docs/performance.md "Capacity"). Here the socket is paused only when the
messages the app has not taken yet exceed QUEUE_HIGH_BYTES, and resumed when they are all
taken. A live stream (one 20 ms frame at a time) never pauses.

Each queued message counts its payload plus MESSAGE_OVERHEAD bytes (the ASGI event dict and
the bytes object cost about 190 bytes even when empty), so a flood of empty or 1-byte
messages pauses reading after at most QUEUE_HIGH_BYTES / MESSAGE_OVERHEAD = 1,024 messages.

Control frames and fragments (docs/operations.md "Hostile input"). websockets answers every
PING with a PONG that we write to the socket; a peer that sends pings and never reads would
grow our write buffer without limit (+165 MB in 6 s, measured), and neither the queue above
nor the app's rate limit ever saw those frames. So:
- a PING arriving while the write buffer is over its high-water mark (the peer is not
  reading) pauses reading until the buffer drains: queued pongs are bounded like data;
- PING, PONG and continuation frames each take one message from the connection's rate
  limit (core.MessageBudget, shared with the connection core, which takes one per message);
  past it the connection is failed with 1008 and dropped;
- fragments are assembled in one growing buffer, not kept as one object each (a 1 MiB
  message in 2-byte fragments cost 27 MB as a list).

Dropping a peer. Closing a transport gracefully waits for its write buffer to drain, which
for a peer that stopped reading is never: memory and socket stayed until the peer reset.
When the server drops a peer (rate limit, parser error, the app's "peer not reading"
abort), the transport is aborted if anything is still unsent; any other close that still
has bytes unsent is aborted after DRAIN_TIMEOUT.

An upgrade request that websockets cannot take (a header line over 8 KiB, too many headers:
431; a request line over 8 KiB: 414; not HTTP at all) used to get nothing: websockets
prepared the answer and upstream never wrote it, so the socket stayed open. Here the answer
is sent and the connection closed.

Memory bound per connection (websockets' memory docs do the same arithmetic): at most
QUEUE_HIGH_BYTES + one message of up to `ws_max_size` queued before the pause takes effect,
plus what one read returned (READ_SIZE) still being parsed and queued, plus the transport's
write buffer (high-water mark 64 KiB, plus the pongs for one read of pings, at most
READ_SIZE): with the defaults 256 KiB + 1 MiB + 64 KiB + 128 KiB of payload, plus ~190 bytes
for each of the at most ~1,000 + 64 Ki/6 tiny messages one read can hold (~2 MiB in the worst
case of a read full of 6-byte empty frames).
"""

from __future__ import annotations

import asyncio
from asyncio import BaseTransport, Transport
from collections.abc import Callable, Mapping
from typing import Any

from uvicorn._types import ASGIReceiveEvent
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.frames import Frame

from uplink.wire import CloseCode

from .core import MessageBudget

QUEUE_HIGH_BYTES = 256 * 1024
# asyncio reads up to 256 KiB per recv(). Buffers that large make glibc raise its mmap
# threshold and then serve them from the heap between long-lived blocks; after each replay
# burst the heap kept a new high-water mark of free holes (+1.6 MiB RSS over a 10-minute soak
# with 30 resumes, docs/performance.md "Footprint"). 64 KiB reads stay below the threshold.
READ_SIZE = 64 * 1024
MESSAGE_OVERHEAD = 256
# A close that still has bytes unsent after this long: the peer is not reading; abort.
DRAIN_TIMEOUT = 2.0
WS_PROTOCOL = "ingest_server.wsprotocol:IngestWebSocketProtocol"  # for uvicorn.Config(ws=...)
# The ASGI scope extension through which the app shares this connection's rate limit and
# can drop the peer, and through which the listeners' fan-out (fanout.py) writes encoded
# frames to it: scope["extensions"][EXTENSION] = {"budget": ..., "abort": ..., "protocol": ...}.
EXTENSION = "echopanel.connection"
# A disconnect event we generated ourselves (not the peer's close) carries this key.
LOCAL_CLOSE = "echopanel.local_close"
def connection_extension(scope: Mapping[str, Any]) -> dict[str, Any] | None:
    ext: Any = (scope.get("extensions") or {}).get(EXTENSION)
    return ext if isinstance(ext, dict) else None


class _DrainOrAbortTransport(Transport):
    """The socket transport, except that close() never waits forever for a peer that does
    not read: with nothing unsent it closes at once, else it closes gracefully and aborts
    if the bytes are still unsent after DRAIN_TIMEOUT (the peer may be slow, not stuck:
    the final ack and close frame of a server restart are worth two seconds)."""

    def __init__(self, inner: Transport, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self._inner = inner
        self._loop = loop
        self._abort_timer: asyncio.TimerHandle | None = None

    def close(self) -> None:
        if self._inner.get_write_buffer_size() == 0:
            self._inner.close()
        elif not self._inner.is_closing():
            self._inner.close()
            self._abort_timer = self._loop.call_later(DRAIN_TIMEOUT, self._inner.abort)

    def drop(self) -> None:
        """The server gives up on this peer: free everything now, unsent bytes included."""
        if self._inner.get_write_buffer_size() == 0:
            self._inner.close()
        else:
            self._inner.abort()

    def connection_lost(self) -> None:
        if self._abort_timer is not None:
            self._abort_timer.cancel()
            self._abort_timer = None

    def abort(self) -> None:
        self._inner.abort()

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self._inner.write(data)

    def writelines(self, list_of_data: Any) -> None:
        self._inner.writelines(list_of_data)

    def is_closing(self) -> bool:
        return self._inner.is_closing()

    def pause_reading(self) -> None:
        self._inner.pause_reading()

    def resume_reading(self) -> None:
        self._inner.resume_reading()

    def is_reading(self) -> bool:
        return self._inner.is_reading()

    def get_write_buffer_size(self) -> int:
        return self._inner.get_write_buffer_size()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._inner.get_extra_info(name, default)

    def can_write_eof(self) -> bool:
        return self._inner.can_write_eof()

    def write_eof(self) -> None:
        self._inner.write_eof()


class IngestWebSocketProtocol(WebSocketsSansIOProtocol):
    queued_bytes = 0  # message bytes queued for the app and not yet taken
    paused_for_writes = False  # reading paused because the peer does not read our pongs
    refused = False  # the upgrade request was refused before the app saw it
    _drain: _DrainOrAbortTransport | None = None
    budget: MessageBudget

    def connection_made(self, transport: BaseTransport) -> None:
        if hasattr(transport, "max_size"):  # asyncio's selector transport: bytes per recv()
            transport.max_size = READ_SIZE
        self.budget = MessageBudget(now=self.loop.time())
        if isinstance(transport, Transport):
            transport = self._drain = _DrainOrAbortTransport(transport, self.loop)
        super().connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._drain is not None:
            self._drain.connection_lost()
        super().connection_lost(exc)

    # -- the upgrade request ----------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self.refused:
            return
        super().data_received(data)
        if not self.handshake_initiated and self.conn.handshake_exc is not None:
            # websockets refused the request (431, 414, or not HTTP) and prepared its answer
            # (or an EOF), but there was no request event for upstream to act on.
            self.refused = self.close_sent = self.handshake_complete = True
            self.transport.write(b"".join(self.conn.data_to_send()))
            self.transport.close()

    def handle_connect(self, event: Any) -> None:
        super().handle_connect(event)
        if self.handshake_initiated and hasattr(self, "scope"):
            # Before the app runs (its task is only scheduled): the shared rate limit.
            self.scope["extensions"][EXTENSION] = {"budget": self.budget, "abort": self.drop,
                                                   "protocol": self}

    # -- frames ------------------------------------------------------------------------------

    def handle_ping(self) -> None:
        if self.close_sent or not self._take_frame():
            return
        super().handle_ping()  # writes the pong websockets queued
        if not self.writable.is_set() and not self.paused_for_writes:
            # Over the write buffer's high-water mark: the peer is not reading its pongs.
            # Stop reading its pings until resume_writing() says the buffer drained.
            self.paused_for_writes = True
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        super().resume_writing()
        if self.paused_for_writes:
            self.paused_for_writes = False
            if not self.read_paused:
                self.transport.resume_reading()

    def handle_pong(self, event: Frame) -> None:
        if self.close_sent or not self._take_frame():
            return
        super().handle_pong(event)

    def handle_cont(self, event: Frame) -> None:
        if self.close_sent or not self._take_frame():
            return
        # One growing buffer per message, not one bytes object per fragment.
        if len(self.frames) == 1 and isinstance(self.frames[0], bytearray):
            self.frames[0] += event.data
        else:
            buffer = bytearray(b"".join(self.frames))
            buffer += event.data
            self.frames = [buffer]  # type: ignore[list-item]
        if event.fin:
            self.send_receive_event_to_app()

    def _take_frame(self) -> bool:
        """A frame the app never sees as a message takes one from the rate limit; past the
        limit the peer is failed with 1008 (§5) and dropped."""
        if self.budget.take(self.loop.time()):
            return True
        reason = f"more than {self.budget.rate:g} messages/s (control frames and fragments)"
        self.conn.fail(CloseCode.POLICY_VIOLATION, reason)
        event: Any = {"type": "websocket.disconnect", "code": int(CloseCode.POLICY_VIOLATION),
                      "reason": reason, LOCAL_CLOSE: True}
        self.queue.put_nowait(event)
        self.transport.write(b"".join(self.conn.data_to_send()))
        self.close_sent = True
        self.drop()
        return False

    def drop(self) -> None:
        """Give up on the peer now: stop the keepalive and free socket and buffers."""
        self.stop_keepalive()
        if self._drain is not None:
            self._drain.drop()
        else:
            self.transport.close()

    # -- messages to the app -----------------------------------------------------------------

    def handle_parser_exception(self) -> None:
        super().handle_parser_exception()
        self.drop()  # a peer that broke the protocol gets no graceful drain

    def send_receive_event_to_app(self) -> None:
        data = self.frames[0] if len(self.frames) == 1 else b"".join(self.frames)
        self.frames = []
        if self.close_sent:
            # Upstream discards messages after websocket.close (reads stay on for the reply).
            return
        if self.curr_msg_data_type == "text":
            try:
                text = data.decode()
            except UnicodeDecodeError:
                # 1007 (§7). Upstream also logs it at ERROR with a traceback: a client's
                # mistake is not a server error, and hostile input must not flood the log.
                self.conn.fail(CloseCode.INVALID_PAYLOAD, "invalid UTF-8 in a text message")
                self.handle_parser_exception()
                return
            self.queue.put_nowait({"type": "websocket.receive", "text": text})
        else:
            self.queue.put_nowait({"type": "websocket.receive", "bytes": bytes(data)})
        # Queued size counted as bytes on the wire, text or binary.
        self._queued(len(data) + MESSAGE_OVERHEAD)

    def _queued(self, size: int) -> None:
        self.queued_bytes += size
        if self.queued_bytes > QUEUE_HIGH_BYTES and not self.read_paused:
            self.read_paused = True
            self.transport.pause_reading()

    async def receive(self) -> ASGIReceiveEvent:
        message = await self.queue.get()
        if message["type"] == "websocket.receive":
            body = message.get("bytes")
            if body is None:
                text = message.get("text")
                size = len(text.encode()) if isinstance(text, str) else 0
            else:
                size = len(body)
            self.queued_bytes -= size + MESSAGE_OVERHEAD
        if self.read_paused and self.queue.empty():
            self.queued_bytes = 0
            self.read_paused = False
            if not self.paused_for_writes:
                self.transport.resume_reading()
        return message


def abort_callback(scope: Mapping[str, Any]) -> Callable[[], None] | None:
    ext = connection_extension(scope)
    abort = ext.get("abort") if ext else None
    return abort if callable(abort) else None

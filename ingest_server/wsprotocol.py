"""uvicorn's sans-I/O websockets protocol with read flow control by queued bytes.

Upstream (uvicorn.protocols.websockets.websockets_sansio_impl) pauses the socket after every
message and resumes it when the app takes that message: two epoll_ctl calls and the
selector bookkeeping around them, per message. At 250 live streams that was 7 % of the
server's time (docs/performance.md "Capacity"). Here the socket is paused only when the
messages the app has not taken yet exceed QUEUE_HIGH_BYTES, and resumed when they are all
taken. A live stream (one 20 ms frame at a time) never pauses.

Each queued message counts its payload plus MESSAGE_OVERHEAD bytes (the ASGI event dict and
the bytes object cost about 190 bytes even when empty), so a flood of empty or 1-byte
messages pauses reading after at most QUEUE_HIGH_BYTES / MESSAGE_OVERHEAD = 1,024 messages.

Memory bound per connection (websockets' memory docs do the same arithmetic): at most
QUEUE_HIGH_BYTES + one message of up to `ws_max_size` queued before the pause takes effect,
plus what one read returned (asyncio reads at most 256 KiB at a time) still being parsed and
queued: with the defaults 256 KiB + 1 MiB + 256 KiB of payload, plus ~190 bytes for each of
the at most ~1,000 + 256 Ki/6 tiny messages one read can hold (~8 MiB in the worst case of
a read full of 6-byte empty frames), as upstream, which also queues every message of a read.
"""

from __future__ import annotations

from asyncio import BaseTransport

from uvicorn._types import ASGIReceiveEvent
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

QUEUE_HIGH_BYTES = 256 * 1024
# asyncio reads up to 256 KiB per recv(). Buffers that large make glibc raise its mmap
# threshold and then serve them from the heap between long-lived blocks; after each replay
# burst the heap kept a new high-water mark of free holes (+1.6 MiB RSS over a 10-minute soak
# with 30 resumes, docs/performance.md "Footprint"). 64 KiB reads stay below the threshold.
READ_SIZE = 64 * 1024
MESSAGE_OVERHEAD = 256
WS_PROTOCOL = "ingest_server.wsprotocol:IngestWebSocketProtocol"  # for uvicorn.Config(ws=...)


class IngestWebSocketProtocol(WebSocketsSansIOProtocol):
    queued_bytes = 0  # message bytes queued for the app and not yet taken

    def connection_made(self, transport: BaseTransport) -> None:
        if hasattr(transport, "max_size"):  # asyncio's selector transport: bytes per recv()
            transport.max_size = READ_SIZE
        super().connection_made(transport)

    def send_receive_event_to_app(self) -> None:
        data = self.frames[0] if len(self.frames) == 1 else b"".join(self.frames)
        if self.close_sent:
            # Upstream discards messages after websocket.close (reads stay on for the reply).
            self.frames = []
            return
        if self.curr_msg_data_type == "text":
            # Upstream decodes and handles bad UTF-8 (1007); queued size counted as bytes.
            size = len(data) + MESSAGE_OVERHEAD
            before = self.queue.qsize()
            paused = self.read_paused
            self.read_paused = True  # so upstream does not pause; we decide below
            super().send_receive_event_to_app()
            self.read_paused = paused
            if self.queue.qsize() > before:
                self._queued(size)
            return
        self.frames = []
        self.queue.put_nowait({"type": "websocket.receive", "bytes": data})
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
            self.transport.resume_reading()
        return message

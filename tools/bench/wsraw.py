"""A lean WebSocket client (RFC 6455) on a bare asyncio Protocol, for the load generator.

Why not `websockets` or the full `UplinkClient`: one load-generator process has to drive
hundreds of real-time streams on a share of a 2-core machine, and every microsecond it
spends per frame is taken from the server under test. This client does the minimum: the
HTTP upgrade (Sec-WebSocket-Accept checked), unfragmented text and binary frames out,
frames in (text, binary, close; pings answered), nothing else.

Client frames must be masked; the mask key here is zero (valid framing — any key is — and
XOR with zero leaves the payload as is, so nothing is copied to mask it). A browser would
use random keys to defeat cache-poisoning proxies; on loopback to our own server that
concern does not exist. No extensions (no compression), no subprotocols.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import struct
from collections.abc import Callable

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
_ZERO_MASK = b"\x00\x00\x00\x00"
_LEN16 = struct.Struct(">H")
_LEN64 = struct.Struct(">Q")


class HandshakeError(ConnectionError):
    pass


def frame_header(opcode: int, length: int) -> bytes:
    """FIN + opcode, masked length, zero mask key."""
    if length < 126:
        return bytes((0x80 | opcode, 0x80 | length)) + _ZERO_MASK
    if length < 1 << 16:
        return bytes((0x80 | opcode, 0x80 | 126)) + _LEN16.pack(length) + _ZERO_MASK
    return bytes((0x80 | opcode, 0x80 | 127)) + _LEN64.pack(length) + _ZERO_MASK


class RawWebSocket(asyncio.Protocol):
    """Callbacks run on the event loop: on_text(str), on_binary(bytes), on_close(code|None)."""

    def __init__(self, path: str, on_text: Callable[[str], None],
                 on_binary: Callable[[bytes], None], on_close: Callable[[int | None], None]) -> None:
        self.path = path
        self.on_text = on_text
        self.on_binary = on_binary
        self.on_close = on_close
        self.transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self._open: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._key = base64.b64encode(os.urandom(16))
        self._upgraded = False
        self._closed = False
        self.close_code: int | None = None

    # -- connecting -------------------------------------------------------------------------

    @classmethod
    async def connect(cls, host: str, port: int, path: str, on_text: Callable[[str], None],
                      on_binary: Callable[[bytes], None], on_close: Callable[[int | None], None],
                      timeout: float = 10.0) -> RawWebSocket:
        """Open TCP, upgrade, return once the server answered 101 with the right accept key."""
        loop = asyncio.get_running_loop()
        _, proto = await asyncio.wait_for(
            loop.create_connection(lambda: cls(path, on_text, on_binary, on_close), host, port),
            timeout)
        try:
            await asyncio.wait_for(asyncio.shield(proto._open), timeout)
        except BaseException:
            proto.abort()
            raise
        return proto

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        peer = transport.get_extra_info("peername")
        host = f"{peer[0]}:{peer[1]}" if peer else "127.0.0.1"
        request = (f"GET {self.path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
                   f"Connection: Upgrade\r\nSec-WebSocket-Key: {self._key.decode()}\r\n"
                   "Sec-WebSocket-Version: 13\r\n\r\n")
        transport.write(request.encode())

    # -- sending ----------------------------------------------------------------------------

    def send_binary(self, payload: bytes) -> None:
        if self.transport is not None and not self._closed:
            self.transport.write(frame_header(OP_BINARY, len(payload)) + payload)

    def send_text(self, text: str) -> None:
        if self.transport is not None and not self._closed:
            data = text.encode()
            self.transport.write(frame_header(OP_TEXT, len(data)) + data)

    def close(self, code: int = 1000) -> None:
        if self.transport is not None and not self._closed:
            body = _LEN16.pack(code)
            self.transport.write(frame_header(OP_CLOSE, len(body)) + body)
            self._closed = True
            self.transport.close()

    def abort(self) -> None:
        self._closed = True
        if self.transport is not None:
            self.transport.abort()

    @property
    def write_buffer_size(self) -> int:
        return self.transport.get_write_buffer_size() if self.transport is not None else 0

    # -- receiving --------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        self._buf += data
        if not self._upgraded:
            end = self._buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self._buf[:end]).decode("latin-1")
            del self._buf[: end + 4]
            accept = base64.b64encode(hashlib.sha1(self._key + GUID).digest()).decode()
            lines = head.split("\r\n")
            headers = {k.strip().lower(): v.strip()
                       for k, _, v in (line.partition(":") for line in lines[1:])}
            if not lines[0].startswith("HTTP/1.1 101") or headers.get("sec-websocket-accept") != accept:
                if not self._open.done():
                    self._open.set_exception(HandshakeError(lines[0]))
                self.abort()
                return
            self._upgraded = True
            if not self._open.done():
                self._open.set_result(None)
        self._parse()

    def _parse(self) -> None:
        buf = self._buf
        while len(buf) >= 2:
            b0, b1 = buf[0], buf[1]
            length = b1 & 0x7F
            pos = 2
            if length == 126:
                if len(buf) < 4:
                    return
                (length,) = _LEN16.unpack_from(buf, 2)
                pos = 4
            elif length == 127:
                if len(buf) < 10:
                    return
                (length,) = _LEN64.unpack_from(buf, 2)
                pos = 10
            if b1 & 0x80:  # servers must not mask; be lenient and skip the key
                pos += 4
            if len(buf) < pos + length:
                return
            payload = bytes(buf[pos : pos + length])
            del buf[: pos + length]
            opcode = b0 & 0x0F
            if opcode == OP_TEXT:
                self.on_text(payload.decode())
            elif opcode == OP_BINARY:
                self.on_binary(payload)
            elif opcode == OP_PING and self.transport is not None and not self._closed:
                self.transport.write(frame_header(OP_PONG, len(payload)) + payload)
            elif opcode == OP_CLOSE:
                self.close_code = _LEN16.unpack_from(payload)[0] if len(payload) >= 2 else 1005
                if not self._closed:
                    self.close(1000)

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        if not self._open.done():
            self._open.set_exception(exc or ConnectionError("connection closed during upgrade"))
        self.on_close(self.close_code)

"""A WebSocket client over a bare socket, for what no library will send: ping floods from a
peer that never reads, messages in millions of fragments, oversized upgrade requests.

Frames are masked with the all-zero key (valid per RFC 6455 §5.3, and the payload stays as
is), so building them costs nothing and a flood is limited by the socket, not by Python.
"""

from __future__ import annotations

import base64
import os
import socket
import struct
import time
from pathlib import Path

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
TCP_ESTABLISHED = 1


def frame(opcode: int, payload: bytes = b"", *, fin: bool = True) -> bytes:
    head = bytes([(0x80 if fin else 0) | opcode])
    n = len(payload)
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 1 << 16:
        head += bytes([0x80 | 126]) + struct.pack("!H", n)
    else:
        head += bytes([0x80 | 127]) + struct.pack("!Q", n)
    return head + b"\x00\x00\x00\x00" + payload


def upgrade_request(host: str, port: int, token: str | None, path: str = "/v1/stream",
                    extra: str = "") -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    return (f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            f"Sec-WebSocket-Version: 13\r\n{auth}{extra}\r\n").encode("latin-1")


def open_websocket(host: str, port: int, token: str | None, *,
                   rcvbuf: int | None = None, timeout: float = 10.0) -> socket.socket:
    """Connect and upgrade; returns the socket right after the 101 response."""
    s = socket.socket()
    if rcvbuf is not None:  # before connect, so the window is small from the start
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.settimeout(timeout)
    s.connect((host, port))
    s.sendall(upgrade_request(host, port, token))
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = s.recv(1)  # byte by byte: nothing past the response is consumed
        if not chunk:
            raise ConnectionError(f"upgrade refused: {head!r}")
        head += chunk
    assert head.startswith(b"HTTP/1.1 101"), head
    return s


def tcp_state(s: socket.socket) -> int:
    """Linux tcp_info.tcpi_state: 1 while established; anything else once the server closed
    (FIN: CLOSE_WAIT) or reset (CLOSE) its end."""
    return s.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0]


def wait_until_dropped(s: socket.socket, timeout: float) -> float:
    """Seconds until the server let go of the connection, without reading from it."""
    start = time.monotonic()
    while tcp_state(s) == TCP_ESTABLISHED:
        if time.monotonic() - start > timeout:
            raise AssertionError(f"the server still holds the connection after {timeout} s")
        time.sleep(0.01)
    return time.monotonic() - start


def read_frames_until_pong(s: socket.socket, payload: bytes, timeout: float = 20.0) -> None:
    """Read server frames (unmasked) until the pong carrying `payload`."""
    s.settimeout(timeout)
    buf = b""
    while True:
        while len(buf) < 2 or len(buf) < _frame_len(buf):
            chunk = s.recv(65536)
            if not chunk:
                raise ConnectionError("closed before the pong")
            buf += chunk
        n = _frame_len(buf)
        opcode, body = buf[0] & 0x0F, buf[n - _payload_len(buf):n]
        buf = buf[n:]
        if opcode == OP_PONG and body == payload:
            return
        if opcode == OP_CLOSE:
            raise ConnectionError(f"closed: {body!r}")


def _payload_len(buf: bytes) -> int:
    n = buf[1] & 0x7F
    if n == 126:
        return int(struct.unpack("!H", buf[2:4])[0]) if len(buf) >= 4 else 1 << 62
    if n == 127:
        return int(struct.unpack("!Q", buf[2:10])[0]) if len(buf) >= 10 else 1 << 62
    return n


def _frame_len(buf: bytes) -> int:
    n = buf[1] & 0x7F
    header = 2 + (2 if n == 126 else 8 if n == 127 else 0)
    return header + _payload_len(buf)


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")

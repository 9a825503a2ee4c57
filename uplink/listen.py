"""Listen to a stream while it is captured: the Python API of docs/listeners.md.

    from uplink import listen

    async with listen("ws://127.0.0.1:8765", "meeting-1", start=0, token=TOKEN) as stream:
        async for chunk in stream:
            if chunk.kind is ChunkKind.AUDIO:
                level = np.abs(chunk.samples).max()    # (frames, channels) numpy array
            elif chunk.kind is ChunkKind.GAP: ...      # chunk.position .. chunk.end: no audio
            elif chunk.kind is ChunkKind.END: ...      # the iteration stops after it

It speaks the listen protocol (docs/protocol.md §11) and hides its connection: when the link
drops, the server restarts or the listener is cut off, it reconnects with the uplink's
backoff and circuit breaker (uplink/policy.py) and resumes at `stream.position`, the next
sample it has not yielded. So every sample of the stream is yielded exactly once, in order,
as audio or inside a gap, from `start` up to the stream's end.

`server` may name several servers ("ws://A,ws://B" or a list): nodes of one service (the
JetStream store, docs/scale-out.md). The listener keeps the one that works and, when it
fails, resumes at the same position on the next (docs/resilience.md, "Several servers").
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import struct
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from enum import Enum
from types import TracebackType
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import numpy as np
import websockets
from websockets.exceptions import ConnectionClosed, InvalidStatus

from .audio import AudioFormat
from .config import Servers, listen_servers
from .policy import Backoff, BackoffConfig, BreakerConfig, CircuitBreaker, ServerRotation

log = logging.getLogger(__name__)

AUDIO_HEADER = struct.Struct("<Q")  # §11.3: the first sample frame of a binary message
LISTEN_VERSION = 1
STALLED = 4429
STREAM_GONE = 4404
# §11.5: closes after which reconnecting cannot help
FATAL_CLOSES = frozenset({1002, 1003, 1007, 1008, 1009, STREAM_GONE})
FATAL_STATUSES = frozenset({400, 401, 403, 404})
_DTYPES = {"int16": "<i2", "int32": "<i4", "float32": "<f4"}


class ChunkKind(Enum):
    AUDIO = "audio"  # samples [position, end) of the stream
    GAP = "gap"  # samples [position, end) carry no audio: the capture lost them
    STATE = "state"  # the uplink connected / disconnected / resumed (informational)
    END = "end"  # the stream was finalized at `position`; nothing follows


@dataclass(frozen=True, slots=True)
class Chunk:
    kind: ChunkKind
    position: int  # first sample frame (END: the stream's length)
    end: int  # one past the last sample frame (== position for STATE and END)
    data: bytes = b""  # AUDIO: little-endian interleaved PCM in the stream's format
    fmt: AudioFormat | None = None
    state: str | None = None  # STATE: "connected", "disconnected" or "resumed"
    end_reason: str | None = None  # END: "ended" or "expired"
    recorded: tuple[int, int] | None = None  # GAP: the range as the server recorded it

    @property
    def samples(self) -> np.ndarray:
        """AUDIO as a (frames, channels) numpy array (int24 widened to int32); else empty."""
        if self.fmt is None or not self.data:
            return np.zeros((0, 1), dtype=np.int16)
        return decode_samples(self.data, self.fmt)

    @property
    def frames(self) -> int:
        return self.end - self.position


def decode_samples(data: bytes, fmt: AudioFormat) -> np.ndarray:
    name = fmt.sample_type.value
    channels = fmt.channels
    if name == "int24":
        raw = np.frombuffer(data, dtype=np.uint8).reshape(-1, 3)
        wide = (raw[:, 0].astype(np.int32) | (raw[:, 1].astype(np.int32) << 8)
                | (raw[:, 2].astype(np.int32) << 16))
        wide = np.where(wide & 0x800000, wide - (1 << 24), wide).astype(np.int32)
        return wide.reshape(-1, channels)
    return np.frombuffer(data, dtype=_DTYPES[name]).reshape(-1, channels)


class ListenError(Exception):
    """The server refused the listener for good (unknown stream, bad token, bad `from`) or
    broke the protocol; reconnecting would not help."""


@dataclass(frozen=True, slots=True)
class ListenConfig:
    backoff: BackoffConfig = field(default_factory=BackoffConfig)
    breaker: BreakerConfig = field(default_factory=lambda: BreakerConfig(open_timeout=10.0))
    ping_interval: float = 5.0  # a silent dead link (black hole) is noticed within
    ping_timeout: float = 5.0  # ping_interval + ping_timeout, then we reconnect
    open_timeout: float = 10.0
    wait_for_stream: bool = False  # True: a stream the server does not know yet (HTTP 404)
    #                                is retried with backoff, for a listener started first
    #: failed attempts before the first connection, then ListenError (0 = never give up):
    #: a wrong address or a server that is not running fails fast, like the uplink's budget;
    #: once connected a listener reconnects for as long as it takes
    max_initial_attempts: int = 15


def listen_url(server: str, stream_id: str, position: int | str) -> str:
    """`ws://H:P` (or http://, or with a path prefix) → the §11 listen URL."""
    parts = urlsplit(server)
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    path = parts.path.rstrip("/")
    if path.endswith("/v1/stream"):
        path = path[: -len("/v1/stream")]
    path = f"{path}/v1/streams/{quote(stream_id, safe='')}/listen"
    return urlunsplit((scheme, parts.netloc, path, f"from={position}", ""))


class ListenStream:
    """An async iterator of Chunks that reconnects and resumes on its own (module docstring).

    `position` is the next sample it will yield; `fmt` is known after the first connection;
    `reconnects` counts the connections after the first.
    """

    def __init__(self, server: Servers, stream_id: str, start: int | str = 0, *,
                 token: str | None = None, config: ListenConfig | None = None,
                 rng: random.Random | None = None) -> None:
        #: the servers' base URLs, checked (uplink/config.py listen_servers)
        self.servers = listen_servers(server)
        self._rotation = ServerRotation(len(self.servers))
        self.stream_id = stream_id
        self._start: int | str = start
        self.position: int | None = start if isinstance(start, int) else None
        self.fmt: AudioFormat | None = None
        self.reconnects = 0
        self.connections = 0
        self.ended = False
        self._token = token
        self._config = config or ListenConfig()
        self._wait_for_stream = self._config.wait_for_stream
        self._backoff = Backoff(self._config.backoff, rng or random.Random())
        self._breaker = CircuitBreaker(self._config.breaker)
        self._ws: Any = None
        self._pending: list[Chunk] = []
        self._failed_attempts = 0  # before the first connection (max_initial_attempts)

    @property
    def server(self) -> str:
        """The server in use (or the one tried next)."""
        return self.servers[self._rotation.index]

    def __aiter__(self) -> ListenStream:
        return self

    async def __anext__(self) -> Chunk:
        while not self._pending:
            if self.ended:
                raise StopAsyncIteration
            await self._receive_some()
        return self._pending.pop(0)

    async def aclose(self) -> None:
        ws, self._ws = self._ws, None
        if ws is not None:
            with contextlib.suppress(Exception):
                await ws.close()

    # -- one message at a time, reconnecting as needed ---------------------------------------

    async def _receive_some(self) -> None:
        if self._ws is None:
            await self._connect()
            return
        try:
            message = await self._ws.recv()
        except ConnectionClosed as e:
            await self._lost(e.rcvd.code if e.rcvd is not None else None,
                             e.rcvd.reason if e.rcvd is not None else str(e))
            return
        except OSError as e:
            await self._lost(None, str(e))
            return
        self._handle(message)

    async def _connect(self) -> None:
        while True:
            now = time.monotonic()
            if not self._breaker.allow(now):
                until = self._breaker.open_until or now
                await asyncio.sleep(max(until - now, 0.0))
                continue
            position = self.position if self.position is not None else self._start
            url = listen_url(self.server, self.stream_id, position)
            headers = {"Authorization": f"Bearer {self._token}"} if self._token else None
            try:
                ws = await websockets.connect(
                    url, additional_headers=headers, max_size=None,
                    ping_interval=self._config.ping_interval,
                    ping_timeout=self._config.ping_timeout,
                    open_timeout=self._config.open_timeout, compression=None)
                header = json.loads(await asyncio.wait_for(ws.recv(),
                                                           self._config.open_timeout))
            except InvalidStatus as e:
                status = e.response.status_code
                if status in FATAL_STATUSES and not (status == 404 and self._wait_for_stream):
                    body = e.response.body.decode(errors="replace").strip() if e.response.body else ""
                    raise ListenError(f"HTTP {status}: {body}") from e
                # waiting for a stream to be created is not a failing server: no breaker
                await self._wait_backoff(f"HTTP {status}", failure=status != 404)
                continue
            except (OSError, TimeoutError, ConnectionClosed, websockets.InvalidHandshake,
                    ValueError) as e:
                await self._wait_backoff(str(e) or type(e).__name__)
                continue
            self._accept_header(header)
            self._wait_for_stream = False  # it exists: from now on a 404 means deleted
            self._ws = ws
            self._breaker.record_success()
            self._backoff.reset()
            self._rotation.connected()
            self.connections += 1
            if self.connections > 1:
                self.reconnects += 1
            return

    def _accept_header(self, header: dict[str, Any]) -> None:
        if header.get("type") != "listening" or header.get("version") != LISTEN_VERSION:
            raise ListenError(f"not a listen v{LISTEN_VERSION} header: {str(header)[:200]}")
        start = int(header["start_sample"])
        if self.position is not None and start != self.position:
            raise ListenError(f"asked for sample {self.position}, the server starts at {start}")
        self.position = start
        self.fmt = AudioFormat.from_json(header["format"])

    async def _wait_backoff(self, why: str, failure: bool = True) -> None:
        failed_at = self.server
        if not self._rotation.failed():
            # another server is due at once; a full round of failures backs off below
            log.info("listener of %s: %s: %s; trying %s", self.stream_id, failed_at, why,
                     self.server)
            return
        if failure:
            self._breaker.record_failure(time.monotonic())
            if self.connections == 0:
                self._failed_attempts += 1
                limit = self._config.max_initial_attempts
                if limit and self._failed_attempts >= limit:
                    each = f" (each a round of {len(self.servers)} servers)" if len(
                        self.servers) > 1 else ""
                    raise ListenError(f"could not connect to {', '.join(self.servers)} after "
                                      f"{self._failed_attempts} attempts{each}: {why}")
        delay = self._backoff.next_delay()
        log.info("listener of %s: %s; retrying in %.2f s", self.stream_id, why, delay)
        await asyncio.sleep(delay)

    async def _lost(self, code: int | None, reason: str) -> None:
        self._ws = None
        if code in FATAL_CLOSES:
            raise ListenError(f"closed with {code}: {reason}")
        if code == 1012:  # the server restarts: the next one at once, or soon, not escalating
            if self._rotation.failed():
                await asyncio.sleep(self._backoff.soon_delay())
            return
        await self._wait_backoff(f"connection lost ({code}: {reason})")

    def _handle(self, message: str | bytes) -> None:
        fmt, position = self.fmt, self.position
        assert fmt is not None and position is not None
        if isinstance(message, bytes):
            (start,) = AUDIO_HEADER.unpack_from(message)
            data = message[AUDIO_HEADER.size:]
            if start != position or len(data) % fmt.block_align:
                raise ListenError(f"audio at sample {start}, expected {position}")
            end = start + len(data) // fmt.block_align
            self._pending.append(Chunk(ChunkKind.AUDIO, start, end, data, fmt))
            self.position = end
            return
        body = json.loads(message)
        kind = body.get("type")
        if kind == "gap":
            start, end = int(body["start_sample"]), int(body["end_sample"])
            if start != position:
                raise ListenError(f"gap at sample {start}, expected {position}")
            recorded = (int(body["recorded_start_sample"]), int(body["recorded_end_sample"]))
            self._pending.append(Chunk(ChunkKind.GAP, start, end, fmt=fmt, recorded=recorded))
            self.position = end
        elif kind == "state":
            at = int(body["at_sample"])
            self._pending.append(Chunk(ChunkKind.STATE, at, at, fmt=fmt, state=body["state"]))
        elif kind == "end":
            total = int(body["next_sample"])
            self._pending.append(Chunk(ChunkKind.END, total, total, fmt=fmt,
                                       end_reason=body.get("end_reason")))
            self.ended = True
        # anything else: a later protocol minor version's event; ignored (§11.2)


class _Listening:
    def __init__(self, stream: ListenStream) -> None:
        self._stream = stream

    async def __aenter__(self) -> ListenStream:
        return self._stream

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self._stream.aclose()


def listen(server: Servers, stream_id: str, start: int | str = 0, *, token: str | None = None,
           config: ListenConfig | None = None) -> _Listening:
    """`async with listen(...) as stream: async for chunk in stream: ...` (module docstring).

    `start`: a sample frame, `"start"`, `"live"` (what becomes durable from now on) or
    seconds as `"12.5s"`.
    """
    return _Listening(ListenStream(server, stream_id, start, token=token, config=config))


async def iterate(server: Servers, stream_id: str, start: int | str = 0, *,
                  token: str | None = None) -> AsyncIterator[Chunk]:
    """The chunks of `listen(...)` as a plain async generator."""
    async with listen(server, stream_id, start, token=token) as stream:
        async for chunk in stream:
            yield chunk


if __name__ == "__main__":  # python -m uplink.listen: the echopanel-listen command
    from .listen_cli import main

    raise SystemExit(main())

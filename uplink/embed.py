"""The embedding API: stream an application's own audio with the uplink's guarantees.

    with Uplink("ws://127.0.0.1:8765", rate=16000, channels=1, dtype="int16") as up:
        for block in my_blocks():          # numpy arrays (frames x channels) or bytes
            up.push(block)                 # copies into the ring; never waits on the network
    # leaving the block delivered everything and waited for the server's end-of-stream ack

`Uplink` is for plain threads; `AsyncUplink` for asyncio applications. Both wire the same
parts the capture CLI uses — a frame cutter, the bounded ring (uplink/ring.py) and the
reconnecting client (uplink/client.py) — so they keep the same promises: exactly-once,
sample-exact delivery through disconnects and server restarts, explicit gaps when an outage
outlasts the buffer, and a client that can be retried after a fatal error once its cause is
fixed (a new token, a server that is back). docs/embedding.md is the guide.

Errors (all raised at the call that caused them, nothing is half-written):

    ValueError      a block of the wrong dtype, shape or byte length; a bad argument
    UplinkClosed    push() after close(), or push() after the uplink failed
    UplinkFailed    close() could not deliver everything: .error says why (the FatalError
                    from uplink.errors), .summary what was and was not delivered
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import threading
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Future
from dataclasses import dataclass, replace
from types import TracebackType
from typing import Any

import numpy as np

from uplink import wire
from uplink.audio import AudioFormat, SampleType
from uplink.client import UplinkClient, UplinkResult, UplinkStats
from uplink.config import Servers, UplinkConfig, build_config
from uplink.core import ConnectionState, Phase
from uplink.errors import FatalError
from uplink.frames import FrameCutter
from uplink.ring import OverflowPolicy, RingBuffer, RingClosed
from uplink.spool import Spool, SpoolError

Block = np.ndarray[Any, Any] | bytes | bytearray | memoryview
StateHook = Callable[[ConnectionState], None]
GapHook = Callable[[int, int, str], None]

# numpy's dtype for each wire sample type; int24 has none, so it is accepted as bytes only
_NUMPY_DTYPES: dict[SampleType, np.dtype[Any]] = {
    SampleType.INT16: np.dtype("<i2"),
    SampleType.INT32: np.dtype("<i4"),
    SampleType.FLOAT32: np.dtype("<f4"),
}


class UplinkClosed(RuntimeError):
    """The uplink takes no more audio (closed, or failed: see `close()` / `retry()`)."""


@dataclass(frozen=True, slots=True)
class Summary:
    """What happened to a stream, as `close()` returns it (or `UplinkFailed.summary`)."""

    stream_id: str
    ok: bool
    frames_acked: int  # frames the server holds durably
    seconds_acked: float  # the stream's length on the server, gaps included
    frames_dropped: int  # lost to buffer overflow and recorded by the server as gaps
    seconds_dropped: float
    seconds_undelivered: float  # captured but not (yet) acknowledged: kept in the ring
    reconnects: int
    frames_replayed: int
    error: str | None  # why the uplink failed, None when ok

    @classmethod
    def from_result(cls, stream_id: str, result: UplinkResult, fmt: AudioFormat) -> Summary:
        return cls.from_stats(stream_id, result.stats, fmt, result.error)

    @classmethod
    def from_stats(cls, stream_id: str, stats: UplinkStats, fmt: AudioFormat,
                   error: FatalError | None) -> Summary:
        c, ring = stats.counters, stats.ring
        return cls(
            stream_id=stream_id,
            ok=error is None and stats.state.phase is Phase.DONE,
            frames_acked=c.acked_seq,
            seconds_acked=c.acked_sample / fmt.sample_rate,
            frames_dropped=ring.frames_dropped,
            seconds_dropped=ring.samples_dropped / fmt.sample_rate,
            seconds_undelivered=ring.buffered_seconds,
            reconnects=c.reconnects,
            frames_replayed=c.frames_replayed,
            error=None if error is None else str(error),
        )


class UplinkFailed(Exception):
    """close() could not deliver everything; the audio it holds stays in the ring."""

    def __init__(self, summary: Summary, error: FatalError | None) -> None:
        super().__init__(f"uplink failed: {summary.error or 'not delivered'}; "
                         f"{summary.seconds_undelivered:.2f} s of audio not delivered")
        self.summary = summary
        self.error = error


def new_stream_id(prefix: str = "capture") -> str:
    """A fresh id matching the protocol's pattern (§1): prefix, UTC time, random suffix."""
    return time.strftime(f"{prefix}-%Y%m%d-%H%M%S-", time.gmtime()) + secrets.token_hex(3)


class _Pipeline:
    """Format, config, ring, frame cutter and client: the parts both front ends share."""

    def __init__(self, server: Servers, *, stream_id: str | None, rate: int, channels: int,
                 dtype: str | SampleType, token: str | None, profile: str,
                 buffer_seconds: float | None, overflow: str | OverflowPolicy,
                 config: UplinkConfig | None, cafile: str | None,
                 labels: dict[str, str] | None, spool: Spool | None = None,
                 spool_source: str = "") -> None:
        self.format = AudioFormat(rate, channels, SampleType(dtype))
        held = spool.meta if spool is not None else None
        if held is not None:
            # a spool left by an earlier process: continue its stream (docs/spool.md)
            if stream_id is not None and stream_id != held.stream_id:
                raise SpoolError(f"spool {spool.directory if spool else ''} holds stream "
                                 f"{held.stream_id}, not {stream_id}: drain it first "
                                 "(--drain) or use another spool directory")
            if held.format != self.format:
                raise SpoolError(f"spool holds {held.stream_id} in {held.format}, "
                                 f"the source is {self.format}")
            stream_id = held.stream_id
        self.spool = spool
        self.stream_id = stream_id or new_stream_id()
        if not wire.is_valid_stream_id(self.stream_id):
            raise ValueError(f"stream id {self.stream_id!r} must match {wire.STREAM_ID_PATTERN}")
        overrides = {} if buffer_seconds is None else {"buffer_seconds": buffer_seconds}
        if config is None:
            # explicit arguments only: an embedded uplink reads no ECHOPANEL_UPLINK_* variable
            config = build_config(profile, overrides, environ={})
        elif buffer_seconds is not None:
            if not buffer_seconds > 0:
                raise ValueError(f"buffer_seconds must be greater than 0 (got {buffer_seconds})")
            config = replace(config, buffer_seconds=buffer_seconds)
        self.config = config
        self.policy = OverflowPolicy(overflow)
        frame_samples = max(1, round(rate * self.config.frame_ms / 1000))
        capacity = self.config.buffer_seconds
        if held is not None:
            # the ring mirrors the spool slot for slot: take its frame length and capacity
            frame_samples = held.frame_samples
            capacity = (held.slots - 0.5) * frame_samples / rate
        self.ring = RingBuffer(self.format, frame_samples, capacity, self.policy)
        self.cutter = FrameCutter(self.ring)
        extra: dict[str, Any] = {}
        if cafile is not None:
            extra["cafile"] = cafile
        if labels is not None:
            extra["labels"] = labels
        self.client = UplinkClient(server, self.ring, self.stream_id, self.config, token=token,
                                   **extra)
        if spool is not None:
            self._attach_spool(spool, spool_source)
        self.closed = False
        self._dtype = _NUMPY_DTYPES.get(self.format.sample_type)

    def _attach_spool(self, spool: Spool, source: str) -> None:
        core = self.client.core
        if spool.meta is None:
            spool.create(self.stream_id, self.format, self.ring.frame_samples, self.ring.slots,
                         source)
        else:
            core.epoch, core.credential = spool.meta.epoch, spool.meta.credential
        spool.attach(self.ring)
        if spool.recovered is not None:
            span = spool.recovered.span
            core.counters.acked_seq, core.counters.acked_sample = (span.acked_seq,
                                                                   span.acked_sample)

        def keep_credential(state: ConnectionState) -> None:
            # on the loop, before this connection sends any audio (docs/spool.md)
            if state.phase is Phase.CONNECTED and core.epoch is not None and core.credential:
                spool.record_credential(core.epoch, core.credential)

        self.client.on_state(keep_credential)

    def end_spool(self, ok: bool) -> None:
        """The run is over: an ended stream frees its spool; otherwise the spool stays for
        a later run or --drain."""
        if self.spool is None:
            return
        if ok:
            self.spool.finish()
        else:
            self.spool.close()

    def as_bytes(self, block: Block) -> memoryview:
        """Check a block against the declared format and view it as little-endian bytes."""
        fmt = self.format
        if isinstance(block, np.ndarray):
            if self._dtype is None:
                raise ValueError("int24 audio is pushed as bytes (3 bytes per sample, "
                                 "little-endian), not as a numpy array")
            if block.dtype.kind != self._dtype.kind or block.dtype.itemsize != self._dtype.itemsize:
                raise ValueError(f"block has dtype {block.dtype}, the stream is "
                                 f"{fmt.sample_type} ({self._dtype.name})")
            if block.ndim == 1 and fmt.channels != 1:
                raise ValueError(f"a 1-D block is mono; the stream has {fmt.channels} "
                                 "channels: pass a (frames, channels) array")
            if block.ndim == 2 and block.shape[1] != fmt.channels:
                raise ValueError(f"block has {block.shape[1]} channels, the stream "
                                 f"{fmt.channels} (shape must be (frames, channels))")
            if block.ndim not in (1, 2):
                raise ValueError(f"block must be 1-D (mono) or 2-D (frames, channels), "
                                 f"not {block.ndim}-D")
            block = np.ascontiguousarray(block, dtype=self._dtype)  # copies only if needed
            return block.data.cast("B")
        if not isinstance(block, bytes | bytearray | memoryview):
            raise ValueError(f"a block is a numpy array or bytes, not {type(block).__name__}")
        view = memoryview(block).cast("B")
        if view.nbytes % fmt.block_align:
            raise ValueError(f"{view.nbytes} bytes is not a whole number of "
                             f"{fmt.block_align}-byte sample frames ({fmt})")
        return view

    def write(self, view: memoryview) -> None:
        try:
            self.cutter.write(view)
        except RingClosed as e:
            raise UplinkClosed("the uplink failed or was closed; call retry() or close()") from e

    def stats(self) -> UplinkStats:
        return self.client.stats()

    def summary(self, result: UplinkResult) -> Summary:
        return Summary.from_result(self.stream_id, result, self.format)


class AsyncUplink:
    """The uplink for asyncio applications. Create it inside a running loop::

        async with AsyncUplink(url, rate=16000, channels=1, dtype="int16") as up:
            async for block in decoded_audio():
                await up.push(block)         # never waits on the network
        # leaving the block: everything delivered and acknowledged (or UplinkFailed)

    `push()` returns as soon as the block is in the ring. With `overflow="block"` (for
    sources that can wait, e.g. a file being decoded) a push into a full ring waits for the
    server's acks to free room; with the default `"drop-oldest"` (live audio) it never
    waits and an outage longer than the buffer becomes a recorded gap (`on_gap`).

    `server` is one URL or several ("ws://A,ws://B" or ["ws://A", "ws://B"]): the uplink
    keeps the one that works and moves to the next on a reconnect (docs/resilience.md,
    "Several servers"); the token and `cafile` apply to every one.

    `spool=Spool.open(DIR)` (uplink/spool.py, docs/spool.md) keeps the unacknowledged audio
    on disk too: a spool that holds a stream (a crashed run's) continues it — same stream
    id, format and frame length — and a successful `aclose()` frees it.
    """

    def __init__(self, server: Servers, *, stream_id: str | None = None, rate: int,
                 channels: int = 1, dtype: str | SampleType = "int16",
                 token: str | None = None, profile: str = "live",
                 buffer_seconds: float | None = None,
                 overflow: str | OverflowPolicy = OverflowPolicy.DROP_OLDEST,
                 on_state: StateHook | None = None, on_gap: GapHook | None = None,
                 config: UplinkConfig | None = None, cafile: str | None = None,
                 labels: dict[str, str] | None = None, spool: Spool | None = None,
                 spool_source: str = "") -> None:
        self._p = _Pipeline(server, stream_id=stream_id, rate=rate, channels=channels,
                            dtype=dtype, token=token, profile=profile,
                            buffer_seconds=buffer_seconds, overflow=overflow, config=config,
                            cafile=cafile, labels=labels, spool=spool,
                            spool_source=spool_source)
        if on_state is not None:
            self._p.client.on_state(on_state)
        if on_gap is not None:
            self._p.client.on_gap = on_gap
        self._run: asyncio.Task[UplinkResult] | None = None
        self._push_lock = asyncio.Lock()
        self._summary: Summary | None = None  # set by a successful aclose()

    @property
    def stream_id(self) -> str:
        return self._p.stream_id

    @property
    def format(self) -> AudioFormat:
        return self._p.format

    @property
    def client(self) -> UplinkClient:
        """The underlying client (for its hooks and stats); do not run it yourself."""
        return self._p.client

    @property
    def ring(self) -> RingBuffer:
        """The bounded buffer between push() and the network (read-only use)."""
        return self._p.ring

    @property
    def spool(self) -> Spool | None:
        """The write-ahead spool, if one was given (docs/spool.md)."""
        return self._p.spool

    @property
    def sink(self) -> FrameCutter:
        """A FrameSink (write / gap / close) for capture sources: the same path as push(),
        without the format checks. One producer at a time; close() ends the input."""
        return self._p.cutter

    async def run(self) -> UplinkResult:
        """Start if needed and wait until the stream is done or failed; never raises for a
        failed stream (the result says why). For supervisors like the capture CLI, which
        end the input through `sink.close()` themselves."""
        self.start()
        assert self._run is not None
        return await asyncio.shield(self._run)

    def start(self) -> None:
        """Start connecting (push() and `async with` start it too). Idempotent."""
        if self._run is None:
            self._run = asyncio.get_running_loop().create_task(self._p.client.run())

    async def push(self, block: Block) -> None:
        if self._p.closed:
            raise UplinkClosed("push() after close()")
        view = self._p.as_bytes(block)
        self.start()
        if self._p.policy is OverflowPolicy.BLOCK:
            # a full ring waits for acks, which this same loop delivers: wait off the loop
            async with self._push_lock:
                await asyncio.to_thread(self._p.write, view)
        else:
            self._p.write(view)

    def stats(self) -> UplinkStats:
        return self._p.stats()

    async def states(self) -> AsyncIterator[ConnectionState]:
        """Every connection state change until the uplink is done or failed."""
        async for state in self._p.client.states():
            yield state

    async def aclose(self, timeout: float | None = None) -> Summary:
        """End the stream: deliver everything, wait for the server's end-of-stream ack.

        Raises UplinkFailed (with what was not delivered) on a fatal error, or when
        `timeout` seconds pass first; the audio stays in the ring for `retry()`.
        """
        if self._summary is not None:
            raise UplinkClosed("the uplink is already closed")
        if not self._p.closed:
            self._p.closed = True
            self._p.cutter.close()
        self.start()
        assert self._run is not None
        try:
            result = await asyncio.wait_for(asyncio.shield(self._run), timeout)
        except TimeoutError:
            self._p.client.give_up(f"close() timed out after {timeout:g} s")
            result = await self._run
        summary = self._p.summary(result)
        if not summary.ok:
            raise UplinkFailed(summary, result.error)
        self._p.end_spool(ok=True)
        self._summary = summary
        return summary

    async def retry(self, *, token: str | None = None) -> None:
        """Continue after a fatal error once its cause is fixed (optionally a new token):
        the client reconnects, resumes the stream and replays what the ring still holds."""
        if self._run is None or not self._run.done():
            raise RuntimeError("retry() is for an uplink that failed")
        retry = self._p.client.retry
        retry(token=token) if token is not None else retry()
        self._run = asyncio.get_running_loop().create_task(self._p.client.run())

    async def __aenter__(self) -> AsyncUplink:
        self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        if exc_type is None:
            if self._summary is None:  # unless the block already closed it
                await self.aclose()
            return
        # the application failed: stop at once, but still end the run cleanly
        if self._run is not None and not self._run.done():
            self._p.client.give_up(f"application error: {exc_type.__name__}")
            with contextlib.suppress(Exception):
                await self._run


class Uplink:
    """The uplink for applications that are not asyncio: a thread-safe synchronous object
    whose event loop runs on a thread of its own::

        up = Uplink("ws://127.0.0.1:8765", rate=48000, channels=2, dtype="float32")
        up.push(block)                # from any thread; returns at once (see overflow)
        summary = up.close()          # delivers everything, waits for the end-of-stream ack

    Hooks (`on_state`, `on_gap`) run on the uplink's thread: keep them short.
    """

    def __init__(self, server: Servers, *, stream_id: str | None = None, rate: int,
                 channels: int = 1, dtype: str | SampleType = "int16",
                 token: str | None = None, profile: str = "live",
                 buffer_seconds: float | None = None,
                 overflow: str | OverflowPolicy = OverflowPolicy.DROP_OLDEST,
                 on_state: StateHook | None = None, on_gap: GapHook | None = None,
                 config: UplinkConfig | None = None, cafile: str | None = None,
                 labels: dict[str, str] | None = None, spool: Spool | None = None) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="uplink", daemon=True)
        self._push_lock = threading.Lock()  # the frame cutter has one producer at a time
        self._closing = False

        async def build() -> AsyncUplink:
            return AsyncUplink(server, stream_id=stream_id, rate=rate, channels=channels,
                               dtype=dtype, token=token, profile=profile,
                               buffer_seconds=buffer_seconds, overflow=overflow,
                               on_state=on_state, on_gap=on_gap, config=config,
                               cafile=cafile, labels=labels, spool=spool)

        self._thread.start()
        try:
            self._async = self._call(build())
            self._call(self._start())
        except BaseException:
            self._stop_loop()
            raise

    async def _start(self) -> None:
        self._async.start()

    def _call(self, coro: Any, timeout: float | None = None) -> Any:
        future: Future[Any] = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return future.result(timeout)

    @property
    def stream_id(self) -> str:
        return self._async.stream_id

    @property
    def format(self) -> AudioFormat:
        return self._async.format

    def push(self, block: Block) -> None:
        """Copy `block` into the ring. Never waits on the network; with overflow="block"
        a full ring makes it wait for acks (that is what "block" asks for)."""
        p = self._async._p
        if self._closing or p.closed:
            raise UplinkClosed("push() after close()")
        view = p.as_bytes(block)
        with self._push_lock:
            p.write(view)

    def stats(self) -> UplinkStats:
        return self._async.stats()

    def close(self, timeout: float | None = None) -> Summary:
        """Deliver everything and wait for the end-of-stream ack; returns the summary or
        raises UplinkFailed. After a failure, `retry()` and `close()` again."""
        if self._loop.is_closed():
            raise UplinkClosed("the uplink is already closed")
        with self._push_lock:
            self._closing = True
        summary: Summary = self._call(self._async.aclose(timeout))
        self._stop_loop()
        return summary

    def retry(self, *, token: str | None = None) -> None:
        """Continue after a fatal error once its cause is fixed (see AsyncUplink.retry)."""
        self._call(self._async.retry(token=token))

    def abandon(self) -> Summary:
        """Give up without delivering what is left (the audio in the ring is discarded)."""
        async def stop() -> Summary:
            run = self._async._run
            if run is not None and not run.done():
                self._async.client.give_up("abandoned by the application")
                await run
            return Summary.from_stats(self.stream_id, self._async.stats(), self.format,
                                      self._async.client.core.error)
        summary: Summary = self._call(stop())
        self._stop_loop()
        return summary

    def _stop_loop(self) -> None:
        if self._loop.is_closed():
            return
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def __enter__(self) -> Uplink:
        return self

    def __exit__(self, exc_type: type[BaseException] | None,
                 exc: BaseException | None, tb: TracebackType | None) -> None:
        if self._loop.is_closed():
            return
        if exc_type is not None:
            self.abandon()
            return
        try:
            self.close()
        except UplinkFailed:
            self._stop_loop()  # nobody can retry() after the with block
            raise

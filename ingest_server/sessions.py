"""Stream registry: create, resume, take over, end and expire streams (docs/protocol.md §2, §6).

A `Stream` is the in-memory face of one stream directory. At most one connection owns it
(`owner`); only the owner appends to its journal. Time comes from an injectable monotonic
clock so session expiry is tested without sleeping.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import secrets
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, replace
from typing import Protocol, TypeVar

from uplink.wire import HEADER_SIZE, CloseCode, End, Ended, Hello

from .config import ServerConfig
from .storage import Gap, Journal, Position, Store, StreamMeta, is_valid_stream_id, utc_now

log = logging.getLogger(__name__)
T = TypeVar("T")

EPOCH = 1  # §1: version 1 servers always issue epoch 1
TAKEOVER_TIMEOUT = 10.0


class Refusal(Exception):
    """The registry refuses a request; the connection closes with `code` (§7)."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class Owner(Protocol):
    """What the registry needs from a connection that owns a stream."""

    async def supersede(self) -> None:
        """Close with 4411 and return once this connection has finished its writes (§2)."""


def credential_hash(credential: str) -> str:
    return hashlib.sha256(credential.encode()).hexdigest()


class Stream:
    def __init__(self, meta: StreamMeta, journal: Journal | None, executor: Executor | None,
                 idle_since: float) -> None:
        self.meta = meta
        self.journal = journal  # None once finalized (or while being created)
        self.durable = journal.position if journal else Position(0, meta.next_seq, meta.next_sample)
        self.owner: Owner | None = None
        self.idle_since = idle_since
        self.duplicates = 0
        self.lock = asyncio.Lock()  # state transitions: attach, end, expire
        self._sync_lock = asyncio.Lock()  # one fsync at a time; finalize closes the fd under it
        self._executor = executor

    @property
    def stream_id(self) -> str:
        return self.meta.stream_id

    @property
    def finalized(self) -> bool:
        return self.meta.state == "finalized"

    @property
    def next_seq(self) -> int:
        return self.journal.next_seq if self.journal else self.meta.next_seq

    @property
    def next_sample(self) -> int:
        return self.journal.next_sample if self.journal else self.meta.next_sample

    @property
    def frames(self) -> int:
        return self.journal.frames if self.journal else self.meta.frames

    @property
    def gaps(self) -> list[Gap]:
        return self.journal.gaps if self.journal else self.meta.gaps

    @property
    def pending(self) -> bool:
        """Written but not yet covered by an fsync."""
        return self.journal is not None and self.journal.position.size != self.durable.size

    async def sync(self) -> bool:
        """Group commit: one fsync covers everything written before it starts (§4).

        Returns True if the durable position advanced (the caller then acks it).
        """
        async with self._sync_lock:
            return await self._sync_locked()

    async def _sync_locked(self) -> bool:
        journal = self.journal
        if journal is None:
            return False
        target = journal.position
        if target.size == self.durable.size:
            return False
        try:
            await asyncio.get_running_loop().run_in_executor(self._executor, journal.sync)
        except OSError:
            journal.broken = True  # after a failed fsync the page cache cannot be trusted
            raise
        self.durable = target
        return True


@dataclass(frozen=True, slots=True)
class Attached:
    stream: Stream
    credential: str
    resumed: bool


class Registry:
    def __init__(self, store: Store, config: ServerConfig, *,
                 clock: Callable[[], float] = time.monotonic,
                 executor: Executor | None = None) -> None:
        self.store = store
        self.config = config
        self.clock = clock
        self.executor = executor
        self.streams: dict[str, Stream] = {}
        self.shutting_down = False

    async def _run(self, fn: Callable[..., T], *args: object) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    def recover(self) -> None:
        """Load every stream on disk; open ones are disconnected sessions from now on."""
        now = self.clock()
        for meta, journal in self.store.recover():
            self.streams[meta.stream_id] = Stream(meta, journal, self.executor, now)
        log.info("recovered %d streams (%d open)", len(self.streams),
                 sum(1 for s in self.streams.values() if not s.finalized))

    # -- handshake (§2) -------------------------------------------------------------------

    async def attach(self, hello: Hello, owner: Owner) -> Attached:
        if self.shutting_down:
            raise Refusal(CloseCode.SERVICE_RESTART, "server shutting down")
        sid = hello.stream_id
        if not is_valid_stream_id(sid):
            raise Refusal(CloseCode.BAD_HANDSHAKE, "invalid stream id")
        fmt = hello.format
        if hello.frame_samples > fmt.sample_rate * self.config.max_frame_seconds:
            raise Refusal(CloseCode.BAD_HANDSHAKE,
                          f"frame_samples over {self.config.max_frame_seconds:g} s of audio")
        if HEADER_SIZE + hello.frame_samples * fmt.block_align > self.config.max_message_bytes:
            raise Refusal(CloseCode.BAD_HANDSHAKE, "one frame would exceed max_message_bytes")
        if hello.resume is None:
            return await self._create(hello, owner)

        stream = self.streams.get(sid)
        if stream is None:
            raise Refusal(CloseCode.UNKNOWN_STREAM, f"unknown stream {sid}")
        given = credential_hash(hello.resume.credential)
        if hello.resume.epoch != stream.meta.epoch or not hmac.compare_digest(
            given, stream.meta.credential_sha256
        ):
            raise Refusal(CloseCode.STREAM_CONFLICT, "wrong credential or epoch")
        if fmt != stream.meta.format or hello.frame_samples != stream.meta.frame_samples:
            raise Refusal(CloseCode.BAD_HANDSHAKE, "format or frame_samples differ from the stream's")
        await self._take_over(stream, owner)
        return Attached(stream, hello.resume.credential, resumed=True)

    async def _create(self, hello: Hello, owner: Owner) -> Attached:
        sid = hello.stream_id
        if sid in self.streams:
            raise Refusal(CloseCode.STREAM_CONFLICT, f"stream {sid} already exists")
        credential = secrets.token_urlsafe(32)
        meta = StreamMeta(sid, hello.format, hello.frame_samples, EPOCH,
                          credential_hash(credential), utc_now())
        # Registered before the first await, so a concurrent hello for the same id sees it.
        stream = Stream(meta, None, self.executor, self.clock())
        stream.owner = owner
        self.streams[sid] = stream
        async with stream.lock:
            try:
                journal = await self._run(self.store.create, meta)
            except FileExistsError:  # a directory we could not recover still holds the id
                del self.streams[sid]
                raise Refusal(CloseCode.STREAM_CONFLICT, f"stream {sid} already exists") from None
            except OSError as e:
                del self.streams[sid]
                log.error("cannot create stream %s: %s", sid, e)
                raise Refusal(CloseCode.TRY_AGAIN_LATER, "storage failure") from e
            stream.journal = journal
            stream.durable = journal.position
        return Attached(stream, credential, resumed=False)

    async def _take_over(self, stream: Stream, owner: Owner) -> None:
        """Make `owner` the stream's only writer; the previous one is closed with 4411 and
        finishes its writes first, and everything written is fsynced before the welcome."""
        while True:
            old = stream.owner
            if old is not None and old is not owner:
                try:
                    await asyncio.wait_for(old.supersede(), TAKEOVER_TIMEOUT)
                except TimeoutError:
                    raise Refusal(CloseCode.TRY_AGAIN_LATER,
                                  "previous connection did not finish in time") from None
                if stream.owner is old:  # it is gone even if it did not say so
                    stream.owner = None
            async with stream.lock:
                if stream.owner is not None and stream.owner is not owner:
                    continue  # a third connection got in first: supersede it too
                stream.owner = owner
                try:
                    await stream.sync()  # the welcome's next_seq must be durable (§2)
                except OSError as e:
                    stream.owner = None
                    log.error("stream %s: fsync failed: %s", stream.stream_id, e)
                    raise Refusal(CloseCode.TRY_AGAIN_LATER, "storage failure") from e
                return

    def detach(self, stream: Stream, owner: Owner) -> None:
        """The owner's connection is gone: the session timeout starts now (§2)."""
        if stream.owner is owner:
            stream.owner = None
            stream.idle_since = self.clock()

    # -- end and expiry (§6, §2) ------------------------------------------------------------

    async def end(self, stream: Stream, msg: End) -> Ended:
        async with stream.lock:
            if msg.next_seq != stream.next_seq or msg.next_sample != stream.next_sample:
                raise Refusal(
                    CloseCode.PROTOCOL_ERROR,
                    f"end at seq {msg.next_seq} sample {msg.next_sample}, server has "
                    f"seq {stream.next_seq} sample {stream.next_sample}",
                )
            if not stream.finalized:
                await self._finalize_locked(stream, "ended")
            return Ended(stream.next_seq, stream.next_sample, len(stream.gaps))

    async def expire(self, now: float | None = None) -> list[str]:
        """Finalize as `expired` every open stream disconnected for session_timeout."""
        now = self.clock() if now is None else now
        timeout = self.config.session_timeout
        expired: list[str] = []
        for stream in list(self.streams.values()):
            if stream.finalized or stream.owner is not None or now - stream.idle_since < timeout:
                continue
            async with stream.lock:
                if stream.finalized or stream.owner is not None or stream.journal is None:
                    continue
                try:
                    await self._finalize_locked(stream, "expired")
                except OSError as e:
                    log.error("cannot finalize expired stream %s: %s", stream.stream_id, e)
                    continue
            log.info("stream %s expired after %.0f s without a connection",
                     stream.stream_id, timeout)
            expired.append(stream.stream_id)
        return expired

    async def _finalize_locked(self, stream: Stream, reason: str) -> None:
        async with stream._sync_lock:  # no fsync may run on the fd we are about to close
            await stream._sync_locked()
            journal = stream.journal
            assert journal is not None
            meta = replace(stream.meta, state="finalized", end_reason=reason, ended=utc_now(),
                           next_seq=journal.next_seq, next_sample=journal.next_sample,
                           frames=journal.frames, gaps=list(journal.gaps))
            await self._run(self.store.finalize, meta, journal)
            stream.meta = meta
            stream.journal = None
            stream.durable = Position(0, meta.next_seq, meta.next_sample)

    async def close(self) -> None:
        """Shutdown: fsync and close every journal (the data survives for the restart)."""
        self.shutting_down = True
        for stream in self.streams.values():
            async with stream._sync_lock:
                if stream.journal is None:
                    continue
                try:
                    await stream._sync_locked()
                except OSError as e:
                    log.error("final fsync of %s failed: %s", stream.stream_id, e)
                stream.journal.close()
                stream.journal = None

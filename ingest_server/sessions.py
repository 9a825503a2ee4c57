"""Stream registry: create, resume, take over, end, expire and delete streams
(docs/protocol.md §2, §6; docs/operations.md for the limits and retention).

At most one connection owns a stream (`Stream.owner`); only the owner appends to its
journal. Ownership has two locks on it: the resume credential (issued once, only its SHA-256
stored, compared in constant time) and the token that created the stream (a stream made
with one bearer token cannot be resumed with another: 1008). Monotonic time (session expiry)
and wall time (timestamps, retention) come from injectable clocks, so both are tested
without sleeping.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, replace
from typing import TypeVar, cast

from uplink.wire import (
    MAX_ENDED_GAPS,
    STREAM_ID_PATTERN,
    CloseCode,
    End,
    Ended,
    Hello,
)

from .auth import ANONYMOUS, Principal
from .commit import PerJournalCommit
from .config import ServerConfig
from .errors import BadInput, Refusal, StorageUnavailable, storage_failure
from .events import EventBus, EventKind, StreamEvent
from .metrics import Metrics
from .storage import is_valid_stream_id, parse_utc, utc_now
from .storage.interface import (
    Committer,
    EndReason,
    Gap,
    Position,
    SharedStorage,
    StreamFenced,
    StreamMeta,
    StreamState,
    StreamStorage,
    StreamWriter,
)
from .storage.store import is_reopenable
from .stream import Owner, Stream

log = logging.getLogger(__name__)
T = TypeVar("T")

EPOCH = 1  # §1: version 1 servers always issue epoch 1
TAKEOVER_TIMEOUT = 10.0
SHARED_PURGE_INTERVAL = 60.0
SHARED_EXISTS = ("stream id taken by a stream in the cluster: only its resume credential "
                 "continues it; else choose another id")
EXPIRY_RETRY = 30.0  # seconds before retrying an expiry whose finalization failed
FOLLOW_POLL = 2.0  # seconds without a wake-up before a followed stream's tail is read anyway
DAY = 86400.0
# final metas kept for describe(): the webhook dispatcher reads one moments after the
# expiry, when it takes the event into its outbox
EXPIRED_ORPHANS_KEPT = 1024


# Events that carry the stream's duplicates count (events.py): replays per connection.
_COUNTS_REPLAYS = frozenset({EventKind.RESUMED, EventKind.DISCONNECTED})


def credential_hash(credential: str) -> str:
    return hashlib.sha256(credential.encode()).hexdigest()


def ended_message(stream: Stream) -> Ended:
    """§6: `ended` with the gap totals, so the client can check its own loss accounting."""
    gaps = stream.gaps
    return Ended(stream.next_seq, stream.next_sample, len(gaps),
                 gap_samples=sum(g.end_sample - g.start_sample for g in gaps),
                 gap_list=tuple((g.start_sample, g.end_sample) for g in gaps[:MAX_ENDED_GAPS]))


@dataclass(frozen=True, slots=True)
class Attached:
    stream: Stream
    credential: str
    resumed: bool


class Registry:
    def __init__(self, store: StreamStorage, config: ServerConfig, *,
                 clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time,
                 executor: Executor | None = None, metrics: Metrics | None = None,
                 committer: Committer | None = None, events: EventBus | None = None) -> None:
        self.store = store
        # opened / resumed / disconnected / gap / finalized, for discovery and listeners
        self.events = events or EventBus()
        self.config = config
        self.clock = clock
        self.wall = wall
        self.executor = executor
        self.metrics = metrics or Metrics()
        self.committer = committer or PerJournalCommit(executor, self.metrics)
        self.streams: dict[str, Stream] = {}
        self.open_count = 0  # streams not finalized (the max_streams limit)
        self.shutting_down = False
        self._next_shared_purge = 0.0  # monotonic; shared stores purge once a minute
        self._next_orphan_check = 0.0  # monotonic; and look for orphans once a minute
        self._refreshing: set[Stream] = set()  # followed streams whose tail is being read
        self._refresh_again: set[Stream] = set()  # ... and written again meanwhile
        self._tail_read_at: dict[Stream, float] = {}  # followed stream -> last tail read
        # final meta of the dead nodes' streams this node expired: held nowhere else here,
        # and the webhook payload needs its format and totals (describe)
        self._expired_orphans: OrderedDict[str, StreamMeta] = OrderedDict()

    def _keep(self, stream: Stream) -> None:
        """Hold a stream in memory; its meta is then the one describe() answers with."""
        self.streams[stream.stream_id] = stream
        self._expired_orphans.pop(stream.stream_id, None)

    def describe(self, stream_id: str) -> StreamMeta | None:
        """A stream's meta from memory, no store read: the streams held here, and the dead
        nodes' streams this node expired (webhook payloads: format, frames, gaps)."""
        stream = self.streams.get(stream_id)
        return stream.meta if stream is not None else self._expired_orphans.get(stream_id)

    async def _run(self, fn: Callable[..., T], *args: object) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    def _stream(self, meta: StreamMeta, journal: StreamWriter | None, idle_since: float) -> Stream:
        stream = Stream(meta, journal, self.committer, idle_since, self.metrics)
        stream.on_durable = self._durable_moved
        return stream

    def _publish(self, kind: EventKind, stream: Stream, *, gap: Gap | None = None,
                 end_reason: str | None = None, close_code: int | None = None,
                 detail: str | None = None, share: bool = True) -> None:
        duplicates = stream.duplicates if kind in _COUNTS_REPLAYS else None
        self.events.publish(StreamEvent(kind, stream.stream_id, stream.durable.next_sample,
                                        self.wall(), gap, end_reason, duplicates, close_code,
                                        detail), share=share)

    def _durable_moved(self, stream: Stream, before: Position, after: Position) -> None:
        """A gap is announced once its record is durable (events.py): never one that a
        failed sync could still cut back."""
        if after.gap_count > before.gap_count:
            for gap in stream.gaps[before.gap_count:after.gap_count]:
                self._publish(EventKind.GAP, stream, gap=gap)

    def recover(self) -> None:
        """Load every stream on disk; open ones are disconnected sessions from now on."""
        now = self.clock()
        for meta, journal in self.store.recover():
            self._keep(self._stream(meta, journal, now))
        self.open_count = sum(1 for s in self.streams.values() if not s.finalized)
        log.info("recovered %d streams (%d open)", len(self.streams), self.open_count)

    # -- handshake (§2) -------------------------------------------------------------------

    async def attach(self, hello: Hello, owner: Owner, principal: Principal = ANONYMOUS
                     ) -> Attached:
        if self.shutting_down:
            raise Refusal(CloseCode.SERVICE_RESTART, "server shutting down")
        # The connection core admitted the hello (core.check_hello, §2, §5). The id is
        # checked again here because it becomes a directory name (docs/storage.md).
        sid, fmt = hello.stream_id, hello.format
        if not is_valid_stream_id(sid):
            raise Refusal(CloseCode.BAD_HANDSHAKE,
                          f"invalid stream id: it must match {STREAM_ID_PATTERN}")
        if hello.resume is None:
            return await self._create(hello, owner, principal)

        if self.store.shared:  # the stream may live on, or have moved from, another node
            await self._load_shared(sid)
        stream = self.streams.get(sid)
        if stream is None:
            raise Refusal(CloseCode.UNKNOWN_STREAM, f"unknown stream {sid}")
        given = credential_hash(hello.resume.credential)
        if hello.resume.epoch != stream.meta.epoch or not hmac.compare_digest(
            given, stream.meta.credential_sha256
        ):
            raise Refusal(CloseCode.STREAM_CONFLICT, "wrong credential or epoch")
        # Only after the credential: a guessed id learns nothing from this answer (§10).
        bound = stream.meta.token_sha256
        if bound is not None and principal.token_sha256 is not None and not hmac.compare_digest(
            bound, principal.token_sha256
        ):
            raise Refusal(CloseCode.POLICY_VIOLATION, "stream belongs to another token")
        if fmt != stream.meta.format or hello.frame_samples != stream.meta.frame_samples:
            raise Refusal(CloseCode.BAD_HANDSHAKE, "format or frame_samples differ from the stream's")
        if is_reopenable(stream.meta):
            await self._reopen(stream)
        await self._take_over(stream, owner)
        self.metrics.resumes += 1
        self._publish(EventKind.RESUMED, stream)
        return Attached(stream, hello.resume.credential, resumed=True)

    async def _create(self, hello: Hello, owner: Owner, principal: Principal) -> Attached:
        sid = hello.stream_id
        if sid in self.streams:
            raise Refusal(CloseCode.STREAM_CONFLICT, self._exists_reason(self.streams[sid]))
        if self.open_count >= self.config.max_streams:
            raise Refusal(CloseCode.TRY_AGAIN_LATER,
                          f"too many open streams ({self.config.max_streams})")
        credential = secrets.token_urlsafe(32)
        meta = StreamMeta(sid, hello.format, hello.frame_samples, EPOCH,
                          credential_hash(credential), utc_now(self.wall()),
                          token_sha256=principal.token_sha256,
                          capture_started=None if hello.wall_time is None
                          else utc_now(hello.wall_time),
                          labels=hello.labels or None)
        # Registered before the first await, so a concurrent hello for the same id sees it.
        stream = self._stream(meta, None, self.clock())
        stream.owner = owner
        self._keep(stream)
        self.open_count += 1
        async with stream.lock:
            try:
                with storage_failure("stream creation", counts=self.metrics.storage_errors,
                                     op="create", stream_id=sid, passthrough=(FileExistsError,)):
                    journal = await self._run(self.store.create, meta)
            except FileExistsError:  # a directory we could not recover still holds the id
                self._forget(stream)  # (shared store: a stream another node holds or held)
                reason = (SHARED_EXISTS if self.store.shared
                          else f"stream {sid} already exists")
                raise Refusal(CloseCode.STREAM_CONFLICT, reason) from None
            except StorageUnavailable:
                self._forget(stream)
                raise
            stream.journal = journal
            stream.durable = journal.position
        self.metrics.streams_created += 1
        self._publish(EventKind.OPENED, stream)
        return Attached(stream, credential, resumed=False)

    async def _reopen(self, stream: Stream) -> None:
        """An outage outlasted the session timeout: the credential holder continues the
        expired stream instead of losing what it still buffers (protocol.md §2 "Expired
        streams"). What its buffer could not keep arrives as GAP items, as after any outage."""
        async with stream.lock:
            if not is_reopenable(stream.meta):
                return  # another connection reopened it meanwhile
            if self.open_count >= self.config.max_streams:
                raise Refusal(CloseCode.TRY_AGAIN_LATER,
                              f"too many open streams ({self.config.max_streams})")
            try:
                with storage_failure("reopening an expired stream", op="reopen",
                                     counts=self.metrics.storage_errors,
                                     stream_id=stream.stream_id,
                                     passthrough=(FileNotFoundError,)):
                    meta, journal = await self._run(self.store.reopen, stream.meta)
            except FileNotFoundError:
                return  # expired by a server that deleted journals: it stays finalized
            stream.meta = meta
            stream.journal = journal
            stream.durable = journal.position
            self.open_count += 1
        log.info("stream %s reopened after it had expired (%d frames, %.1f s kept)",
                 stream.stream_id, meta.next_seq, meta.next_sample / meta.format.sample_rate,
                 extra={"ctx": {"stream_id": stream.stream_id, "event": "reopened"}})

    def _exists_reason(self, stream: Stream) -> str:
        """4409 for a new stream whose id is taken, saying what the id holds (§2): an orphaned
        open stream can only be continued with its resume credential (a capture's spool keeps
        it, docs/spool.md), and says how long until it expires. Fits a close reason (123 B)."""
        if is_reopenable(stream.meta):
            return ("stream id taken by an expired stream: only its resume credential reopens "
                    "it; else choose another id")
        if stream.finalized:
            return "stream id taken by a stream that ended: choose another id"
        if stream.owner is not None:
            return "stream id taken by a live stream on another connection"
        left = max(0.0, self.config.session_timeout - (self.clock() - stream.idle_since))
        return (f"stream id taken by an open stream: only its resume credential (a capture's "
                f"spool) continues it; it expires in {left:.0f} s")

    def _forget(self, stream: Stream) -> None:
        del self.streams[stream.stream_id]
        if not stream.finalized:
            self.open_count -= 1

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
                self.metrics.takeovers += 1
            async with stream.lock:
                if stream.owner is not None and stream.owner is not owner:
                    continue  # a third connection got in first: supersede it too
                stream.owner = owner
                try:
                    if self.store.shared and not stream.finalized:
                        await self._claim(stream)
                    # the welcome's next_seq must be durable (§2); a failed fsync was counted
                    with storage_failure("fsync before the welcome", stream_id=stream.stream_id):
                        await stream.sync()
                except (StorageUnavailable, Refusal):
                    stream.owner = None
                    raise
                return

    # -- a shared store (JetStream, docs/scale-out.md) ------------------------------

    @property
    def _shared(self) -> SharedStorage:
        assert self.store.shared
        return cast(SharedStorage, self.store)

    async def _load_shared(self, sid: str) -> None:
        """Bring this node's view of `sid` up to date with the store before a resume: the
        stream may have been created, continued, finalized or deleted on another node. A
        stream a connection here still holds stays: the takeover supersedes it first."""
        with storage_failure("stream lookup", op="lookup", counts=self.metrics.storage_errors,
                             stream_id=sid):
            meta = await self._run(self.store.lookup, sid)
        stream = self.streams.get(sid)
        if stream is not None and stream.owner is None and (
                meta is None or stream.journal is None or not self.store.holds(stream.journal)
                or meta.state is not stream.meta.state):
            if meta is not None and stream.watchers:  # listeners follow this very object
                self._unhold(stream)
                self._set_meta(stream, meta)
                return
            self._drop(stream)
            stream = None
        if stream is None and meta is not None:
            self._keep(self._stream(meta, None, self.clock()))
            if meta.state is not StreamState.FINALIZED:
                self.open_count += 1

    async def _claim(self, stream: Stream) -> None:
        """Make this node the stream's writer (store.take: lease, fence, tail) and answer
        the welcome from the tail JetStream holds. Called under stream.lock; the previous
        owner here has finished (superseded)."""
        sid = stream.stream_id
        async with stream.sync_lock:
            try:
                with storage_failure("stream takeover", op="take", stream_id=sid,
                                     counts=self.metrics.storage_errors,
                                     passthrough=(FileNotFoundError,)):
                    meta, writer = await self._run(self._shared.take, stream.meta)
            except FileNotFoundError:
                self._drop(stream)
                raise Refusal(CloseCode.UNKNOWN_STREAM, f"unknown stream {sid}") from None
            if stream.journal is not None:
                stream.journal.close()  # fenced by the take
            stream.meta = meta
            stream.journal = writer
            stream.durable = writer.position

    def _unhold(self, stream: Stream) -> None:
        """This node no longer writes the stream (another node took it): listeners here
        keep following it through the store (`follow`)."""
        if stream.journal is not None:
            stream.journal.close()
            stream.journal = None

    def _set_meta(self, stream: Stream, meta: StreamMeta) -> None:
        if stream.finalized and meta.state is not StreamState.FINALIZED:
            self.open_count += 1
        elif not stream.finalized and meta.state is StreamState.FINALIZED:
            self.open_count -= 1
        stream.meta = meta

    # -- following a stream written elsewhere (live listeners, shared store) ---------------

    async def follow(self, sid: str) -> Stream | None:
        """The stream a listener on this node follows, wherever it is written: this node's
        object if it has one, else one made from the store, whose `durable` moves when the
        stream's subject is written (a subscription as the wake-up, the tail as the truth,
        docs/scale-out.md). None: no such stream. `unfollow` when done."""
        stream = self.streams.get(sid)
        if stream is None:
            with storage_failure("stream lookup", stream_id=sid):
                meta = await self._run(self.store.lookup, sid)
            if meta is None:
                return None
            stream = self.streams.get(sid)  # a resume may have made it meanwhile
            if stream is None:
                stream = self._stream(meta, None, self.clock())
                self._keep(stream)
                if not stream.finalized:
                    self.open_count += 1
                    stream.durable = (await self._run(self._shared.tail_of, meta))[0]
        stream.watchers += 1
        if stream.unwatch is None and not stream.finalized:
            loop = asyncio.get_running_loop()
            target = stream

            def written() -> None:  # on the NATS thread
                loop.call_soon_threadsafe(self._remote_written, target)
            stream.unwatch = self._shared.watch(sid, written)
            self._remote_written(stream)  # anything written before the subscription
        return stream

    def unfollow(self, stream: Stream) -> None:
        stream.watchers -= 1
        if stream.watchers == 0:
            self._tail_read_at.pop(stream, None)
            if stream.unwatch is not None:
                stream.unwatch()
                stream.unwatch = None

    def poll_followed(self, now: float | None = None) -> int:
        """Read the tail of every followed stream that had no wake-up for FOLLOW_POLL
        seconds. The subscription is a hint that can miss (a publish made before this
        node's NATS server learned of the interest, right after a NATS reconnect; a tail
        read that failed): without this, a listener could wait forever for a stream that
        was written, or ended, meanwhile. Returns how many were read."""
        now = self.clock() if now is None else now
        due = [s for s in self.streams.values()
               if s.unwatch is not None and s.journal is None and not s.finalized
               and now - self._tail_read_at.get(s, float("-inf")) >= FOLLOW_POLL]
        for stream in due:
            self._remote_written(stream)
        return len(due)

    def _remote_written(self, stream: Stream) -> None:
        if stream.journal is not None:
            return  # this node writes it: its own syncs move `durable`
        if stream in self._refreshing:
            self._refresh_again.add(stream)
            return
        self._refreshing.add(stream)
        task = asyncio.create_task(self._refresh_remote(stream))
        task.add_done_callback(lambda _: self._refreshing.discard(stream))

    async def _refresh_remote(self, stream: Stream) -> None:
        """Move a followed stream's `durable` to its subject's tail (never back: this
        node's own writer moves it when it writes the stream); an END finalizes it."""
        while True:
            self._refresh_again.discard(stream)
            if stream.journal is not None or stream.finalized:
                return
            if stream.unwatch is not None:  # still followed (poll_followed)
                self._tail_read_at[stream] = self.clock()
            try:
                pos, ended = await self._run(self._shared.tail_of, stream.meta)
                meta = await self._run(self.store.lookup, stream.stream_id) if ended else None
            except OSError as e:
                log.warning("stream %s: cannot read its tail: %s", stream.stream_id, e)
                return
            if stream.journal is not None:
                return
            if meta is not None and meta.state is StreamState.FINALIZED:
                self._set_meta(stream, meta)
                stream.durable = Position(0, meta.next_seq, meta.next_sample, meta.frames,
                                          len(meta.gaps))
                if stream.unwatch is not None:
                    stream.unwatch()
                    stream.unwatch = None
                return
            if pos.next_seq > stream.durable.next_seq:
                stream.durable = pos
            if stream not in self._refresh_again:
                return

    def _drop(self, stream: Stream) -> None:
        """Forget a stream another node owns now (or that is gone): only the memory."""
        if self.streams.get(stream.stream_id) is stream:
            self._forget(stream)
        if stream.journal is not None:
            stream.journal.close()
            stream.journal = None

    def detach(self, stream: Stream, owner: Owner, close_code: int | None = None) -> None:
        """The owner's connection is gone: the session timeout starts now (§2)."""
        if stream.owner is owner:
            stream.owner = None
            stream.idle_since = self.clock()
            # A node that lost the stream (fenced, 4411, or already dropped: another node
            # resumed it) tells only its own subscribers: relayed, it would say
            # "disconnected" of a capture live elsewhere, after that node's "resumed".
            lost = close_code == CloseCode.SUPERSEDED or (stream.journal is None
                                                          and not stream.finalized)
            self._publish(EventKind.DISCONNECTED, stream, close_code=close_code,
                          share=not lost)

    def storage_failed(self, stream: Stream, what: str) -> None:
        """A storage fault closed this stream's uplink with 1013 (§7): tell subscribers
        (webhooks, the web view). The reason stays generic on the wire; `what` names the
        operation ("journal write", "fsync"), never a path or an errno text."""
        self._publish(EventKind.STORAGE_FAILED, stream, detail=what)

    # -- end, expiry and retention (§6, §2) -------------------------------------------------

    async def end(self, stream: Stream, msg: End) -> Ended:
        async with stream.lock:
            if msg.next_seq != stream.next_seq or msg.next_sample != stream.next_sample:
                raise BadInput(
                    CloseCode.PROTOCOL_ERROR,
                    f"end at seq {msg.next_seq} sample {msg.next_sample}, server has "
                    f"seq {stream.next_seq} sample {stream.next_sample}",
                )
            if not stream.finalized:
                await self._finalize_locked(stream, EndReason.ENDED)
                self.metrics.streams_ended += 1
            return ended_message(stream)

    async def expire(self, now: float | None = None) -> list[str]:
        """Finalize as `expired` every open stream disconnected for session_timeout."""
        now = self.clock() if now is None else now
        timeout = self.config.session_timeout
        expired: list[str] = []
        if self.store.shared:
            self._drop_unheld()
            expired += await self._expire_orphans()
        for stream in list(self.streams.values()):
            if (stream.finalized or stream.owner is not None
                    or now - stream.idle_since < timeout or now < stream.expiry_retry_at):
                continue
            async with stream.lock:
                if stream.finalized or stream.owner is not None or stream.journal is None:
                    continue
                try:
                    await self._finalize_locked(stream, EndReason.EXPIRED)
                except StreamFenced:
                    log.info("stream %s: taken over by another server; not expiring it here",
                             stream.stream_id, extra={"ctx": {"stream_id": stream.stream_id}})
                    self._drop(stream)
                    continue
                except OSError as e:
                    stream.expiry_retry_at = now + EXPIRY_RETRY
                    log.error("cannot finalize expired stream %s (retrying in %g s): %s",
                              stream.stream_id, EXPIRY_RETRY, e)
                    continue
            self.metrics.streams_expired += 1
            log.info("stream %s expired after %.0f s without a connection",
                     stream.stream_id, timeout, extra={"ctx": {"stream_id": stream.stream_id}})
            expired.append(stream.stream_id)
        return expired

    async def _expire_orphans(self) -> list[str]:
        """Shared store: expire the open streams of nodes that died (no lease renewal for
        session_timeout, nor for lease_seconds) whose capture never resumed anywhere. Any
        node may do it: take (lease CAS + fence) then finalize, so of two nodes at once the
        second's take or END is rejected, and a capture resuming meanwhile finds the stream
        expired and reopens it (§2 "Expired streams"). Listed once a minute per node."""
        clock = self.clock()
        if clock < self._next_orphan_check:
            return []
        self._next_orphan_check = clock + SHARED_PURGE_INTERVAL
        idle = max(self.config.session_timeout, self.config.lease_seconds)
        try:
            orphans = await self._run(self._shared.orphans, self.wall(), idle)
        except OSError as e:
            log.error("cannot list orphaned streams: %s", e)
            return []
        expired: list[str] = []
        for meta in orphans:
            local = self.streams.get(meta.stream_id)
            if local is not None and (local.owner is not None or local.journal is not None):
                continue  # a resume here is under way (a followed view does not count)
            try:
                taken, writer = await self._run(self._shared.take, meta)
                final = replace(taken, state=StreamState.FINALIZED,
                                end_reason=EndReason.EXPIRED, ended=utc_now(self.wall()),
                                next_seq=writer.next_seq, next_sample=writer.next_sample,
                                frames=writer.frames, gaps=list(writer.gaps))
                await self._run(self.store.finalize, final, writer)
            except OSError as e:
                log.warning("cannot expire orphaned stream %s: %s", meta.stream_id, e)
                continue
            self.metrics.streams_expired += 1
            self._expired_orphans[meta.stream_id] = final
            while len(self._expired_orphans) > EXPIRED_ORPHANS_KEPT:
                self._expired_orphans.popitem(last=False)
            # announced here, on the node that expired it: relayed to every node (relay.py)
            self.events.publish(StreamEvent(EventKind.FINALIZED, meta.stream_id,
                                            writer.next_sample, self.wall(),
                                            end_reason=str(EndReason.EXPIRED)))
            log.info("stream %s expired: its node stopped renewing it %.0f s ago or more",
                     meta.stream_id, idle, extra={"ctx": {"stream_id": meta.stream_id}})
            expired.append(meta.stream_id)
        return expired

    def _drop_unheld(self) -> None:
        """Shared store: keep in memory only the streams this node writes or a connection
        here holds; the store answers for the rest (REST, resumes: _load_shared)."""
        for stream in list(self.streams.values()):
            if stream.owner is None and (stream.journal is None
                                         or not self.store.holds(stream.journal)):
                if stream.watchers:
                    self._unhold(stream)
                else:
                    self._drop(stream)

    async def purge(self, now: float | None = None) -> list[str]:
        """Retention: delete finalized streams that ended `retention_days` ago or more."""
        days = self.config.retention_days
        if days <= 0:
            return []
        cutoff = (self.wall() if now is None else now) - days * DAY
        if self.store.shared:
            return await self._purge_shared(cutoff)
        deleted: list[str] = []
        for stream in list(self.streams.values()):
            meta = stream.meta
            if not stream.finalized or stream.owner is not None or meta.ended is None:
                continue
            if parse_utc(meta.ended) > cutoff:
                continue
            async with stream.lock:
                if stream.owner is not None or self.streams.get(stream.stream_id) is not stream:
                    continue
                del self.streams[stream.stream_id]  # gone for REST and resumes from here on
                if not await self._delete_expired(stream.stream_id, meta.ended):
                    continue
            deleted.append(stream.stream_id)
        return deleted

    async def _delete_expired(self, stream_id: str, ended: str) -> bool:
        """Retention's deletion of one finalized stream; False (logged, counted) if it
        failed: it is tried again at the next purge."""
        try:
            await self._run(self.store.delete, stream_id)
        except OSError as e:
            self.metrics.storage_errors["delete"] += 1
            log.error("retention: cannot delete stream %s: %s", stream_id, e)
            return False
        self.metrics.streams_deleted += 1
        log.info("retention: deleted stream %s (ended %s)", stream_id, ended,
                 extra={"ctx": {"stream_id": stream_id}})
        return True

    async def _purge_shared(self, cutoff: float) -> list[str]:
        """Retention on a shared store: every node may delete an old finalized stream (the
        deletion is idempotent: purge the subject, then the keys), at most once a minute
        per node, since it lists the whole KV bucket."""
        clock = self.clock()
        if clock < self._next_shared_purge:
            return []
        self._next_shared_purge = clock + SHARED_PURGE_INTERVAL
        try:
            listed = await self._run(self._shared.list_streams)
        except OSError as e:
            log.error("retention: cannot list the streams: %s", e)
            return []
        deleted: list[str] = []
        for meta, _ in listed:
            if meta.state is not StreamState.FINALIZED or meta.ended is None \
                    or parse_utc(meta.ended) > cutoff:
                continue
            stream = self.streams.get(meta.stream_id)
            if stream is not None:
                if stream.owner is not None:
                    continue
                self._drop(stream)
            if await self._delete_expired(meta.stream_id, meta.ended):
                deleted.append(meta.stream_id)
        return deleted

    async def _finalize_locked(self, stream: Stream, reason: EndReason) -> None:
        async with stream.sync_lock:  # no fsync may run on the fd we are about to close
            await stream.sync_locked()
            journal = stream.journal
            if journal is None:  # journals are closed: the server is shutting down
                raise Refusal(CloseCode.SERVICE_RESTART, "server restarting")
            meta = replace(stream.meta, state=StreamState.FINALIZED, end_reason=reason,
                           ended=utc_now(self.wall()), next_seq=journal.next_seq,
                           next_sample=journal.next_sample, frames=journal.frames,
                           gaps=list(journal.gaps))
            try:
                await self._run(self.store.finalize, meta, journal)
            except OSError:
                self.metrics.storage_errors["finalize"] += 1
                raise
            stream.meta = meta
            stream.journal = None
            stream.durable = Position(0, meta.next_seq, meta.next_sample, meta.frames,
                                      len(meta.gaps))
            self.open_count -= 1
            self._publish(EventKind.FINALIZED, stream, end_reason=str(reason))

    async def close(self) -> None:
        """Shutdown: fsync and close every journal (the data survives for the restart)."""
        self.shutting_down = True
        for stream in self.streams.values():
            async with stream.sync_lock:
                if stream.journal is None:
                    continue
                try:
                    await stream.sync_locked()
                except OSError as e:
                    log.error("final fsync of %s failed: %s", stream.stream_id, e)
                stream.journal.close()
                stream.journal = None

"""The JetStream implementation of StreamStorage (docs/scale-out.md).

    stream ECHOPANEL_AUDIO, subject echopanel.audio.<id>   the items (records.py)
    KV bucket ECHOPANEL_STREAMS, key meta.<id>              StreamMeta as JSON (revision CAS)
    KV bucket ECHOPANEL_STREAMS, key lease.<id>             the owner lease (lease.py)

Every node sees every stream: `lookup` / `list_streams` read the KV, the durable position
of an open stream is its subject's last message (records.Tail). A node writes a stream only
after `take` (create, resume, reopen): lease CAS, then a FENCE marker published with the
tail it read as the expected last subject sequence. From then on each publish names the
previous one's sequence, so the subject is a single chain and a second writer is rejected
by JetStream, never interleaved (writer.py).

All calls block; they run on the NATS loop (link.py) and are safe from any thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from ..interface import StreamFenced
from ..journal import KIND_GAP, Gap, Position
from ..reader import DurableReader
from ..store import EndReason, StorageError, StreamMeta, StreamState, is_reopenable
from .lease import Lease, renew_interval
from .link import CONNECT_TIMEOUT, NatsLink
from .publisher import JetStreamCommitter
from .reader import SubjectReader, SubjectWav
from .records import (
    H_END_REASON,
    H_ENDED,
    WRONG_LAST_SEQUENCE,
    MessageKind,
    Tail,
    items,
    position_headers,
    tail_from,
)
from .writer import JetStreamWriter, WriterState

log = logging.getLogger(__name__)

AUDIO_STREAM = "ECHOPANEL_AUDIO"
SUBJECT_PREFIX = "echopanel.audio."
# Core NATS, not JetStream (outside SUBJECT_PREFIX): events are live notifications, as
# /v1/events is on one node (docs/scale-out.md "Events across nodes").
EVENTS_SUBJECT = "echopanel.events"
NODE_HEADER = "Echopanel-Node"
META_BUCKET = "ECHOPANEL_STREAMS"
REQUEST_TIMEOUT = 5.0
PAYLOAD_SLACK = 64 * 1024  # record header, position headers, NATS framing


def token_of(stream_id: str) -> str:
    """A stream id as ONE subject token / KV key part. Ids may hold dots (`a..b.`), and a
    dot separates tokens: empty or extra tokens would be invalid or ambiguous. `=` is
    never in an id (uplink/wire.py STREAM_ID_PATTERN), so the mapping is one-to-one."""
    return stream_id.replace(".", "=")


def stream_id_of(token: str) -> str:
    return token.replace("=", ".")


def subject_of(stream_id: str) -> str:
    return SUBJECT_PREFIX + token_of(stream_id)


def meta_key(stream_id: str) -> str:
    return "meta." + token_of(stream_id)


def lease_key(stream_id: str) -> str:
    return "lease." + token_of(stream_id)


@dataclass(slots=True)
class _Held:
    """A stream this node has taken: its lease's KV revision and its writer."""

    lease: Lease
    revision: int
    writer: JetStreamWriter
    meta: StreamMeta
    last_renewal: float  # monotonic


class JetStreamStore:
    """StreamStorage on NATS JetStream. `shared`: other nodes see and take these streams."""

    shared = True

    def __init__(self, store: str, *, node: str, replicas: int, min_replicas: int,
                 lease_seconds: float, token: str = "", creds: str = "",
                 wall: Callable[[], float] = time.time,
                 clock: Callable[[], float] = time.monotonic, renew: bool = True,
                 connect_timeout: float = CONNECT_TIMEOUT,
                 max_item_bytes: int = 1 << 20) -> None:
        self.node = node
        self._process_token = secrets.token_hex(8)  # events' sender (share_event)
        self.replicas = replicas
        self.min_replicas = min_replicas
        self.lease_seconds = lease_seconds
        self.wall = wall
        self.clock = clock
        self._held: dict[str, _Held] = {}
        try:
            self.link = NatsLink(store, token=token, creds=creds,
                                 name=f"echopanel-ingest {node}",
                                 connect_timeout=connect_timeout)
        except RuntimeError as e:  # NatsMissing: the install hint
            raise StorageError(str(e)) from e
        try:
            self.link.connect()
            self._check_max_payload(max_item_bytes)
            self._setup_when_ready(connect_timeout)
        except (OSError, StorageError) as e:
            self.link.close()
            raise StorageError(str(e)) from e
        self.errors = self.link.errors
        self.committer = JetStreamCommitter(self.link, AUDIO_STREAM, self._gap_checkpoint)
        self._renewer = self.link.spawn(self._renew_forever()) if renew else None

    # -- set-up and the min-replicas check (docs/scale-out.md "What an ack means") ---------

    def _check_max_payload(self, max_item_bytes: int) -> None:
        """One item (up to --max-message-bytes) must fit in one NATS message with its
        record header and our headers; NATS' default max_payload (1 MiB) does not."""
        need = max_item_bytes + PAYLOAD_SLACK
        have = int(getattr(self.link.nc, "max_payload", 0) or 0)
        if have < need:
            raise StorageError(
                f"the NATS servers accept messages of at most {have} bytes; items of up to "
                f"{max_item_bytes} bytes (--max-message-bytes) need max_payload >= {need} "
                "in the NATS server config (docs/scale-out.md)")

    def _setup_when_ready(self, patience: float) -> None:
        """Set up, retrying while JetStream cannot answer yet: a cluster that just started
        or lost a node elects its meta leader first (requests time out meanwhile)."""
        deadline = self.clock() + patience
        while True:
            try:
                self.link.call(self._setup())
                return
            except OSError:  # timeouts, "JetStream not available": StorageError is final
                if self.clock() >= deadline:
                    raise
            time.sleep(0.25)

    async def _setup(self) -> None:
        from nats.js.api import (  # noqa: PLC0415 - the cluster extra
            DiscardPolicy,
            KeyValueConfig,
            StorageType,
            StreamConfig,
        )
        js, errors = self.link.js, self.link.errors
        try:
            info = await js.stream_info(AUDIO_STREAM)
        except errors.NotFoundError:
            info = await js.add_stream(StreamConfig(
                name=AUDIO_STREAM, subjects=[SUBJECT_PREFIX + ">"], storage=StorageType.FILE,
                num_replicas=self.replicas, discard=DiscardPolicy.NEW, allow_direct=True,
                max_msgs_per_subject=-1, duplicate_window=0))
        except (errors.ServiceUnavailableError, TimeoutError) as e:
            raise OSError("JetStream is not available on the NATS servers "
                          "(is it enabled, and does the cluster have a leader?)") from e
        replicas = info.config.num_replicas or 1
        if replicas < self.min_replicas:
            raise StorageError(
                f"JetStream stream {AUDIO_STREAM} has {replicas} replica(s), fewer than "
                f"--min-replicas {self.min_replicas}: raise its replicas (nats stream edit) "
                "or lower --min-replicas (development only)")
        try:
            self.kv = await js.key_value(META_BUCKET)
        except errors.BucketNotFoundError:
            self.kv = await js.create_key_value(KeyValueConfig(
                bucket=META_BUCKET, history=1, replicas=self.replicas,
                storage=StorageType.FILE))
        kv_info = await js.stream_info(f"KV_{META_BUCKET}")
        if (kv_info.config.num_replicas or 1) < self.min_replicas:
            raise StorageError(f"JetStream KV bucket {META_BUCKET} has fewer replicas than "
                               f"--min-replicas {self.min_replicas}")
        # A stream just created (or whose leader was lost) answers writes with "no
        # responders" until its Raft group has a leader: wait for both, like a restart.
        for name in (AUDIO_STREAM, f"KV_{META_BUCKET}"):
            info = await js.stream_info(name)
            if replicas > 1 and (info.cluster is None or not info.cluster.leader):
                raise OSError(f"JetStream stream {name} has no leader yet")

    def close(self) -> None:
        if self._renewer is not None:
            self._renewer.cancel()
        self.committer.close()
        self.link.close()

    def healthy(self) -> bool:
        nc = self.link.nc
        return bool(nc is not None and nc.is_connected)

    # -- KV helpers (run on the NATS loop) ---------------------------------------------------

    async def _get_meta(self, stream_id: str) -> tuple[StreamMeta, int] | None:
        try:
            entry = await self.kv.get(meta_key(stream_id))
        except self.errors.KeyNotFoundError:
            return None
        if entry.value is None:
            return None
        return StreamMeta.from_json(json.loads(entry.value)), entry.revision

    async def _put_meta(self, meta: StreamMeta, revision: int) -> int:
        try:
            rev: int = await self.kv.update(meta_key(meta.stream_id),
                                            json.dumps(meta.to_json()).encode(), last=revision)
        except self.errors.KeyWrongLastSequenceError as e:
            raise StreamFenced(f"stream {meta.stream_id}: its metadata changed on another "
                               "node") from e
        return rev

    async def _tail(self, subject: str) -> Tail:
        try:
            msg = await self.link.get_msg(AUDIO_STREAM, subject=subject)
        except self.errors.NotFoundError:
            return Tail.empty()
        return tail_from(int(msg.seq), msg.headers)

    async def _publish_marker(self, kind: MessageKind, subject: str, pos: Position,
                              prev: int, owner: str, extra: dict[str, str] | None = None
                              ) -> int:
        headers = position_headers(kind, pos.next_seq, pos, prev, owner)
        headers.update(extra or {})
        try:
            ack = await self.link.js.publish(subject, b"", timeout=REQUEST_TIMEOUT,
                                             stream=AUDIO_STREAM, headers=headers)
        except self.errors.APIError as e:
            if e.err_code == WRONG_LAST_SEQUENCE:
                raise StreamFenced(f"{subject}: another node wrote the subject") from e
            raise OSError(f"JetStream refused the {kind.value} marker: {e.description}") from e
        seq: int = ack.seq
        return seq

    async def _claim_lease(self, stream_id: str) -> tuple[Lease, int]:
        """CAS the lease to this node, whoever held it: a resume that presented the
        stream's credential proves the old connection stale (§2 takeover, 4411), and the
        fence below stops the old writer. Two concurrent takers: one CAS fails (1013)."""
        key = lease_key(stream_id)
        lease = Lease.new(self.node, self.wall())
        try:
            try:
                entry = await self.kv.get(key)
            except self.errors.KeyNotFoundError:
                revision: int = await self.kv.create(key, lease.encode())
            else:
                revision = await self.kv.update(key, lease.encode(), last=entry.revision)
        except self.errors.KeyWrongLastSequenceError as e:
            raise OSError(f"stream {stream_id} is being taken over concurrently") from e
        return lease, revision

    # -- StreamStorage -------------------------------------------------------------------

    def create(self, meta: StreamMeta) -> JetStreamWriter:
        return self.link.call(self._create(meta))

    async def _create(self, meta: StreamMeta) -> JetStreamWriter:
        subject = subject_of(meta.stream_id)
        tail = await self._tail(subject)
        if tail.subject_seq:
            if await self._get_meta(meta.stream_id) is not None:
                raise FileExistsError(f"stream {meta.stream_id} exists")
            # a deletion that purged the meta but not the subject (a bug): never serve it
            raise OSError(f"{subject} holds messages of a deleted stream")
        key = meta_key(meta.stream_id)
        try:
            meta_rev: int = await self.kv.create(key, json.dumps(meta.to_json()).encode())
        except self.errors.KeyWrongLastSequenceError as e:
            raise FileExistsError(f"stream {meta.stream_id} exists") from e
        try:
            lease, lease_rev = await self._claim_lease(meta.stream_id)
        except BaseException:
            # No welcome was sent: give the id back, or the client's retry would find it
            # taken (4409) with no credential to continue it (like the local store's rmtree).
            with contextlib.suppress(Exception):
                await self.kv.delete(key, last=meta_rev)
            raise
        writer = JetStreamWriter(meta.stream_id, subject, tail.position, 0, [],
                                 lease.owner_tag, meta_rev)
        self._hold(meta, lease, lease_rev, writer)
        return writer

    def take(self, meta: StreamMeta, *, reopen: bool = False
             ) -> tuple[StreamMeta, JetStreamWriter]:
        """Make this node the stream's writer: lease, fence, tail (docs/scale-out.md).
        Returns the stored meta (reopened if `reopen`) and a writer at the durable tail."""
        return self.link.call(self._take(meta.stream_id, reopen))

    async def _take(self, stream_id: str, reopen: bool) -> tuple[StreamMeta, JetStreamWriter]:
        subject = subject_of(stream_id)
        found = await self._get_meta(stream_id)
        if found is None:
            raise FileNotFoundError(f"stream {stream_id} is gone")
        meta, meta_rev = found
        if meta.state is StreamState.FINALIZED and not (reopen and is_reopenable(meta)):
            raise OSError(f"stream {stream_id} was finalized meanwhile")
        lease, lease_rev = await self._claim_lease(stream_id)
        tail = await self._tail(subject)
        if tail.kind is MessageKind.END and meta.state is StreamState.OPEN:
            await self._finish_end(meta, meta_rev, tail)
            raise OSError(f"stream {stream_id} was finalized meanwhile")
        try:
            fence_seq = await self._publish_marker(MessageKind.FENCE, subject, tail.position,
                                                   tail.subject_seq, lease.owner_tag)
        except StreamFenced as e:
            raise OSError(f"stream {stream_id}: written during the takeover; retry") from e
        gaps = await self._gaps(meta, tail)
        if reopen:
            meta = replace(meta, state=StreamState.OPEN, end_reason=None, ended=None,
                           reopened=meta.reopened + 1)
        if len(gaps) != len(meta.gaps) or reopen:
            meta = replace(meta, gaps=gaps)
            meta_rev = await self._put_meta(meta, meta_rev)
        old = self._held.pop(stream_id, None)
        if old is not None:
            old.writer.fence()
        writer = JetStreamWriter(stream_id, subject, tail.position, fence_seq, list(gaps),
                                 lease.owner_tag, meta_rev)
        self._hold(meta, lease, lease_rev, writer)
        log.info("took stream %s at seq %d (fence at subject seq %d)", stream_id,
                 tail.position.next_seq, fence_seq,
                 extra={"ctx": {"stream_id": stream_id, "event": "taken"}})
        return meta, writer

    async def _gaps(self, meta: StreamMeta, tail: Tail) -> list[Gap]:
        """The stream's gap list: the KV checkpoint, plus the gaps of messages published
        after it (a crash between a gap batch's PubAck and its checkpoint), found by walking
        the Ep-Prev chain back from the tail."""
        known = len(meta.gaps)
        missing = tail.position.gap_count - known
        if missing < 0:
            raise OSError(f"stream {meta.stream_id}: metadata lists {known} gaps, its "
                          f"subject {tail.position.gap_count}")
        found: list[Gap] = []
        seq = tail.subject_seq
        while missing and seq:
            msg = await self.link.get_msg(AUDIO_STREAM, seq=seq)
            at = tail_from(seq, msg.headers)
            if at.position.gap_count <= known:
                break
            if at.kind is MessageKind.AUDIO:
                found[:0] = [it.gap() for it in items(msg.data or b"") if it.kind == KIND_GAP]
            seq = at.prev
        if len(found) < missing:
            raise OSError(f"stream {meta.stream_id}: {missing} gaps not found on the subject")
        return list(meta.gaps) + found[len(found) - missing:]

    async def _finish_end(self, meta: StreamMeta, meta_rev: int, tail: Tail) -> None:
        """An END marker with an open meta: its node finalized the subject and died (or is
        about to write the meta). Finish from what the marker records; the client's retry
        then finds the stream finalized (and reopens it if it expired)."""
        msg = await self.link.get_msg(AUDIO_STREAM, seq=tail.subject_seq)
        headers = msg.headers or {}
        pos = tail.position
        final = replace(meta, state=StreamState.FINALIZED,
                        end_reason=EndReason(headers.get(H_END_REASON, EndReason.EXPIRED)),
                        ended=headers.get(H_ENDED) or meta.created, next_seq=pos.next_seq,
                        next_sample=pos.next_sample, frames=pos.frames,
                        gaps=await self._gaps(meta, tail))
        with contextlib.suppress(StreamFenced):  # its node did it first: same content
            await self._put_meta(final, meta_rev)
        log.info("stream %s: finished a finalization its node did not complete",
                 meta.stream_id, extra={"ctx": {"stream_id": meta.stream_id}})

    def _hold(self, meta: StreamMeta, lease: Lease, revision: int,
              writer: JetStreamWriter) -> None:
        self._held[meta.stream_id] = _Held(lease, revision, writer, meta, self.clock())

    async def _gap_checkpoint(self, writer: JetStreamWriter, gap_count: int) -> None:
        held = self._held.get(writer.stream_id)
        if held is None or held.writer is not writer:
            writer.fence()
            raise StreamFenced(f"stream {writer.stream_id} is no longer held here")
        meta = replace(held.meta, gaps=list(writer.gaps[:gap_count]))
        try:
            writer.meta_revision = await self._put_meta(meta, writer.meta_revision)
        except StreamFenced:
            writer.fence()
            raise
        held.meta = meta

    def reopen(self, meta: StreamMeta) -> tuple[StreamMeta, JetStreamWriter]:
        return self.take(meta, reopen=True)

    def finalize(self, meta: StreamMeta, writer: JetStreamWriter) -> None:
        self.link.call(self._finalize(meta, writer))

    async def _finalize(self, meta: StreamMeta, writer: JetStreamWriter) -> None:
        """END marker (fenced like any publish), then the meta (the commit point for REST),
        then the lease goes. A crash between END and meta: the next take sees END on an
        open meta and completes it from the marker (`_finish_end`)."""
        if writer.state is WriterState.FENCED:
            raise StreamFenced(f"stream {meta.stream_id} was taken over by another node")
        subject = writer.subject
        try:
            seq = await self._publish_marker(
                MessageKind.END, subject, writer.position, writer.last_subject_seq,
                writer.owner, {H_END_REASON: str(meta.end_reason or EndReason.ENDED),
                               H_ENDED: meta.ended or ""})
        except StreamFenced:
            writer.fence()
            raise
        writer.last_subject_seq = seq
        writer.meta_revision = await self._put_meta(meta, writer.meta_revision)
        writer.close()
        held = self._held.pop(meta.stream_id, None)
        if held is not None:
            try:
                await self.kv.delete(lease_key(meta.stream_id), last=held.revision)
            except self.errors.APIError as e:  # renewed or taken meanwhile: it expires
                log.info("stream %s: lease not released: %s", meta.stream_id, e.description)

    def delete(self, stream_id: str) -> None:
        """Retention: the subject's messages first, then the KV keys (a crash in between
        leaves a finalized meta whose audio is gone; the next purge deletes it again)."""
        self.link.call(self._delete(stream_id))

    async def _delete(self, stream_id: str) -> None:
        await self.link.js.purge_stream(AUDIO_STREAM, subject=subject_of(stream_id))
        for key in (lease_key(stream_id), meta_key(stream_id)):
            with contextlib.suppress(self.errors.KeyNotFoundError):
                await self.kv.purge(key)
        self._held.pop(stream_id, None)

    def recover(self) -> list[tuple[StreamMeta, JetStreamWriter | None]]:
        """Nothing is loaded at start-up: a stream is taken when its capture resumes here
        (any node may be the one), and REST reads the KV (docs/scale-out.md)."""
        return []

    # -- reading, from any node ----------------------------------------------------------

    def lookup(self, stream_id: str) -> StreamMeta | None:
        found = self.link.call(self._get_meta(stream_id))
        return None if found is None else found[0]

    def durable_position(self, meta: StreamMeta) -> Position:
        """What a resume would be welcomed with: the subject's tail while open."""
        if meta.state is StreamState.FINALIZED:
            return Position(0, meta.next_seq, meta.next_sample, meta.frames, len(meta.gaps))
        return self.link.call(self._tail(subject_of(meta.stream_id))).position

    def list_streams(self) -> list[tuple[StreamMeta, Position]]:
        return self.link.call(self._list_streams())

    async def _list_streams(self) -> list[tuple[StreamMeta, Position]]:
        try:
            keys = await self.kv.keys()
        except self.errors.NoKeysError:
            return []
        metas = await asyncio.gather(*(self._get_meta(stream_id_of(k.removeprefix("meta.")))
                                       for k in keys if k.startswith("meta.")))
        out: list[tuple[StreamMeta, Position]] = []
        for found in metas:
            if found is None:
                continue
            meta = found[0]
            if meta.state is StreamState.FINALIZED:
                pos = Position(0, meta.next_seq, meta.next_sample, meta.frames, len(meta.gaps))
            else:
                pos = (await self._tail(subject_of(meta.stream_id))).position
            out.append((meta, pos))
        return out

    def orphans(self, now: float, idle_seconds: float) -> list[StreamMeta]:
        """Open streams nobody has renewed a lease on for `idle_seconds` (wall clock `now`):
        their node died and their capture did not come back anywhere. Some node expires
        them (Registry._expire_orphans): take (fence) then finalize, as its own would."""
        return self.link.call(self._orphans(now, idle_seconds))

    async def _orphans(self, now: float, idle_seconds: float) -> list[StreamMeta]:
        try:
            keys = await self.kv.keys()
        except self.errors.NoKeysError:
            return []
        found: list[StreamMeta] = []
        for key in keys:
            if not key.startswith("meta."):
                continue
            sid = stream_id_of(key.removeprefix("meta."))
            got = await self._get_meta(sid)
            if got is None or got[0].state is not StreamState.OPEN or sid in self._held:
                continue
            try:
                entry = await self.kv.get(lease_key(sid))
                lease = None if entry.value is None else Lease.decode(entry.value)
            except self.errors.KeyNotFoundError:
                lease = None
            if lease is None or now - lease.renewed >= idle_seconds:
                found.append(got[0])
        return found

    def tail_of(self, meta: StreamMeta) -> tuple[Position, bool]:
        """The durable position of the subject and whether it ends with an END marker."""
        tail = self.link.call(self._tail(subject_of(meta.stream_id)))
        return tail.position, tail.kind is MessageKind.END

    def watch(self, stream_id: str, on_message: Callable[[], None]) -> Callable[[], None]:
        """Call `on_message` (from the NATS thread) whenever a message is published on the
        stream's subject; returns the function that stops it. A hint only: a core
        subscriber also sees a message JetStream then rejects (a fenced writer's), so the
        caller reads the tail (`tail_of`) for the truth."""
        async def deliver(_msg: Any) -> None:
            on_message()

        sub = self.link.call(self.link.nc.subscribe(subject_of(stream_id), cb=deliver))

        def stop() -> None:
            self.link.spawn(sub.unsubscribe())
        return stop

    def share_event(self, payload: bytes) -> None:
        nc = self.link.nc
        if nc is None or not nc.is_connected:
            return  # nats-py would buffer it and send it late, stale: drop it (relay.py)
        self.link.spawn(nc.publish(EVENTS_SUBJECT, payload,
                                   headers={NODE_HEADER: self._process_token}))

    def shared_events(self, on_payload: Callable[[bytes], None]) -> Callable[[], None]:
        """Every other node's events (this process's own come back too: skipped here by
        a random per-process token, not the node name, which two hosts may share)."""
        async def deliver(msg: Any) -> None:
            if (msg.headers or {}).get(NODE_HEADER) != self._process_token:
                on_payload(msg.data)

        sub = self.link.call(self.link.nc.subscribe(EVENTS_SUBJECT, cb=deliver))

        def stop() -> None:
            self.link.spawn(sub.unsubscribe())
        return stop

    def lease_of(self, stream_id: str) -> Lease | None:
        try:
            entry = self.link.call(self.kv.get(lease_key(stream_id)))
        except self.errors.KeyNotFoundError:
            return None
        return None if entry.value is None else Lease.decode(entry.value)

    def open_wav(self, meta: StreamMeta, upto: Position) -> SubjectWav:
        return SubjectWav(self.link, AUDIO_STREAM, subject_of(meta.stream_id), meta.format,
                          upto)

    def open_reader(self, meta: StreamMeta, start_sample: int) -> DurableReader:
        return SubjectReader(self.link, AUDIO_STREAM, subject_of(meta.stream_id), meta.format,
                             start_sample)

    # -- lease renewal -------------------------------------------------------------------

    async def _renew_forever(self) -> None:
        while True:
            await asyncio.sleep(renew_interval(self.lease_seconds))
            await self.renew_once()

    async def renew_once(self) -> None:
        """Renew every held lease (CAS). Another revision: taken over, fence the writer.
        No renewal for a whole lease: stop writing (STALE, syncs fail with 1013) before
        another node may consider the lease expired."""
        for stream_id, held in list(self._held.items()):
            if held.writer.state in (WriterState.CLOSED, WriterState.FENCED):
                self._held.pop(stream_id, None)
                continue
            lease = held.lease.renewed_at(self.wall())
            try:
                held.revision = await self.kv.update(lease_key(stream_id), lease.encode(),
                                                     last=held.revision)
            except self.errors.KeyWrongLastSequenceError:
                log.warning("stream %s: lease taken by another node; fencing our writer",
                            stream_id, extra={"ctx": {"stream_id": stream_id}})
                held.writer.fence()
                self._held.pop(stream_id, None)
                continue
            except Exception as e:
                if self.clock() - held.last_renewal >= self.lease_seconds * 2 / 3 \
                        and held.writer.state is WriterState.OWNER:
                    log.error("stream %s: lease not renewed for %.1f s (%s): writes stop",
                              stream_id, self.clock() - held.last_renewal, type(e).__name__)
                    held.writer.state = WriterState.STALE
                continue
            held.lease = lease
            held.last_renewal = self.clock()

    def holds(self, writer: JetStreamWriter) -> bool:
        return writer.state is WriterState.OWNER


def open_jetstream(config: Any, *, wall: Callable[[], float] = time.time,
                   clock: Callable[[], float] = time.monotonic) -> JetStreamStore:
    """The store for `config.store` (ServerConfig); StorageError with one clear line."""
    node = config.node_name or f"{config.host}:{config.port}"
    return JetStreamStore(config.store, node=node, replicas=config.replicas,
                          min_replicas=config.min_replicas, lease_seconds=config.lease_seconds,
                          token=config.nats_token, creds=config.nats_creds, wall=wall,
                          clock=clock, max_item_bytes=config.max_message_bytes)

"""The JetStream storage backend against a real NATS server on loopback
(ingest_server/storage/jetstream, docs/scale-out.md).

One single-node NATS server for the module (replication does not matter here); the
replicated cases are in test_jetstream_cluster.py. Every test uses its own stream ids, and
"two nodes" are two JetStreamStore instances with their own connections and node names.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from itertools import count
from pathlib import Path

import pytest

from ingest_server.storage.interface import StreamFenced
from ingest_server.storage.journal import Gap, Position
from ingest_server.storage.reader import AudioPiece, GapPiece
from ingest_server.storage.store import EndReason, StorageError, StreamMeta, StreamState
from uplink.audio import AudioFormat, SampleType

nats = pytest.importorskip("nats") if not os.environ.get("CI") else __import__("nats")

from ingest_server.storage.jetstream import JetStreamStore  # noqa: E402
from ingest_server.storage.jetstream.lease import Lease, expired  # noqa: E402
from ingest_server.storage.jetstream.writer import JetStreamWriter, WriterState  # noqa: E402
from tools.nats_cluster import NatsCluster  # noqa: E402

FMT = AudioFormat(16000, 1, SampleType.INT16)
FRAME = 320  # samples per frame
_ids = count()


@pytest.fixture(scope="module")
def nats_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with NatsCluster(tmp_path_factory.mktemp("nats"), size=1, name="t1") as cluster:
        yield cluster.urls


def make_store(url: str, node: str, **kw: object) -> JetStreamStore:
    options: dict[str, object] = {"replicas": 1, "min_replicas": 1, "lease_seconds": 10.0,
                                  "renew": False}
    options.update(kw)
    return JetStreamStore(url, node=node, **options)  # type: ignore[arg-type]


@pytest.fixture()
def node_a(nats_url: str) -> Iterator[JetStreamStore]:
    store = make_store(nats_url, "node-a")
    yield store
    store.close()


@pytest.fixture()
def node_b(nats_url: str) -> Iterator[JetStreamStore]:
    store = make_store(nats_url, "node-b")
    yield store
    store.close()


def new_meta(stream_id: str | None = None) -> StreamMeta:
    return StreamMeta(stream_id or f"js-{os.getpid()}-{next(_ids)}", FMT, FRAME, 1, "0" * 64,
                      "2026-01-01T00:00:00.000+00:00")


def frame(seq: int) -> bytes:
    return bytes([seq % 251]) * (FRAME * FMT.block_align)


def append_frames(writer: JetStreamWriter, first: int, n: int) -> bytes:
    data = b""
    for seq in range(first, first + n):
        writer.append_audio(seq, 1, seq * FRAME, FRAME, frame(seq))
        data += frame(seq)
    return data


def commit(store: JetStreamStore, writer: JetStreamWriter) -> None:
    async def run() -> None:
        await asyncio.wait_for(store.committer.submit(writer), 10)
    asyncio.run(run())


def wav_pcm(store: JetStreamStore, meta: StreamMeta, upto: Position) -> bytes:
    wav = store.open_wav(meta, upto)
    body = b"".join(wav)
    assert len(body) == wav.size
    return body[44:]


def test_create_append_commit_and_read_back_from_another_node(
        node_a: JetStreamStore, node_b: JetStreamStore) -> None:
    meta = new_meta()
    writer = node_a.create(meta)
    pcm = append_frames(writer, 0, 50)
    # nothing is visible before the commit: appends only buffer
    assert node_b.durable_position(meta).next_seq == 0
    commit(node_a, writer)
    seen = node_b.lookup(meta.stream_id)
    assert seen is not None and seen.credential_sha256 == meta.credential_sha256
    pos = node_b.durable_position(seen)
    assert (pos.next_seq, pos.next_sample, pos.frames) == (50, 50 * FRAME, 50)
    assert wav_pcm(node_b, seen, pos) == pcm
    listed = {m.stream_id: p for m, p in node_b.list_streams()}
    assert listed[meta.stream_id] == pos


def test_a_batch_is_one_message_not_one_per_frame(node_a: JetStreamStore) -> None:
    meta = new_meta()
    writer = node_a.create(meta)
    append_frames(writer, 0, 200)
    commit(node_a, writer)
    append_frames(writer, 200, 1)
    commit(node_a, writer)
    # two publishes: the subject's stream sequences advanced by two messages
    tail = node_a.link.call(node_a._tail(writer.subject))
    assert tail.position.next_seq == 201
    first = node_a.link.call(node_a.link.js.get_msg("ECHOPANEL_AUDIO", seq=1,
                                                    subject=writer.subject, next=True,
                                                    direct=True))
    assert first.headers["Ep-First-Seq"] == "0" and first.headers["Ep-Next-Seq"] == "200"
    assert int(first.seq) == tail.prev


def test_create_of_an_existing_id_is_a_conflict_on_any_node(
        node_a: JetStreamStore, node_b: JetStreamStore) -> None:
    meta = new_meta()
    node_a.create(meta)
    with pytest.raises(FileExistsError):
        node_b.create(meta)


def test_takeover_fences_the_old_writer_and_nothing_interleaves(
        node_a: JetStreamStore, node_b: JetStreamStore) -> None:
    meta = new_meta()
    old = node_a.create(meta)
    pcm = append_frames(old, 0, 10)
    commit(node_a, old)
    stale_frames = b"\xff" * (FRAME * FMT.block_align)
    old.append_audio(10, 1, 10 * FRAME, FRAME, stale_frames)  # on A, not yet published

    _, new = node_b.take(meta)  # B: lease, fence, tail
    assert new.position.next_seq == 10  # the welcome's next_seq: A's durable tail
    pcm += append_frames(new, 10, 5)
    commit(node_b, new)

    with pytest.raises(StreamFenced):  # A's in-flight batch is rejected by JetStream
        commit(node_a, old)
    assert old.state is WriterState.FENCED
    with pytest.raises(StreamFenced):
        old.append_audio(15, 1, 15 * FRAME, FRAME, frame(15))
    pos = node_a.durable_position(meta)
    assert pos.next_seq == 15
    got = wav_pcm(node_a, meta, pos)
    assert got == pcm and stale_frames not in got


def test_lease_renewal_finds_a_takeover_and_fences_at_once(
        node_a: JetStreamStore, node_b: JetStreamStore) -> None:
    meta = new_meta()
    old = node_a.create(meta)
    node_b.take(meta)
    asyncio.run(_renew(node_a))
    assert old.state is WriterState.FENCED
    assert not node_a.holds(old)


async def _renew(store: JetStreamStore) -> None:
    await asyncio.wrap_future(store.link.spawn(store.renew_once()))


def test_renewal_keeps_the_lease_and_its_timestamp_moves(nats_url: str) -> None:
    now = [1000.0]
    store = make_store(nats_url, "node-r", wall=lambda: now[0])
    try:
        meta = new_meta()
        writer = store.create(meta)
        now[0] = 1004.0
        asyncio.run(_renew(store))
        lease = store.lease_of(meta.stream_id)
        assert lease is not None and lease.node == "node-r" and lease.renewed == 1004.0
        assert writer.state is WriterState.OWNER
    finally:
        store.close()


def test_lease_expiry_on_a_fake_clock() -> None:
    lease = Lease("node-a", "t", renewed=100.0)
    assert not expired(lease, 109.9, 10.0)
    assert expired(lease, 110.0, 10.0)
    assert Lease.decode(lease.encode()) == lease


def test_gaps_survive_a_takeover_from_the_checkpoint_and_from_the_chain(
        node_a: JetStreamStore, node_b: JetStreamStore) -> None:
    meta = new_meta()
    writer = node_a.create(meta)
    append_frames(writer, 0, 3)
    writer.append_gap(3, 2, 3 * FRAME, 5 * FRAME)
    commit(node_a, writer)  # the gap batch writes the KV checkpoint
    stored = node_b.lookup(meta.stream_id)
    assert stored is not None and stored.gaps == [Gap(3, 5, 3 * FRAME, 5 * FRAME)]

    # A crash between a gap batch's PubAck and its checkpoint: the chain has the gap.
    async def no_checkpoint(w: JetStreamWriter, n: int) -> None:
        return None
    node_a.committer.publisher.gap_checkpoint = no_checkpoint
    append_frames(writer, 5, 2)
    writer.append_gap(7, 1, 7 * FRAME, 9 * FRAME)
    append_frames_at(writer, 8, 9 * FRAME, 2)
    commit(node_a, writer)
    _, taken = node_b.take(meta)
    assert taken.gaps == [Gap(3, 5, 3 * FRAME, 5 * FRAME), Gap(7, 8, 7 * FRAME, 9 * FRAME)]
    assert taken.position.next_seq == 10
    reader = node_b.open_reader(meta, 0)
    pieces = reader.read(taken.position, 1 << 20)
    kinds = [type(p) for i, p in enumerate(pieces) if i == 0 or type(pieces[i - 1]) is not type(p)]
    assert kinds == [AudioPiece, GapPiece, AudioPiece, GapPiece, AudioPiece]  # runs of kinds
    assert reader.sample == 11 * FRAME


def append_frames_at(writer: JetStreamWriter, seq: int, sample: int, n: int) -> None:
    for i in range(n):
        writer.append_audio(seq + i, 1, sample + i * FRAME, FRAME, frame(seq + i))


def test_finalize_then_takeover_refuses_and_expired_streams_reopen(
        node_a: JetStreamStore, node_b: JetStreamStore) -> None:
    from dataclasses import replace
    meta = new_meta()
    writer = node_a.create(meta)
    pcm = append_frames(writer, 0, 4)
    commit(node_a, writer)
    final = replace(meta, state=StreamState.FINALIZED, end_reason=EndReason.EXPIRED,
                    ended="2026-01-01T00:01:00.000+00:00", next_seq=4,
                    next_sample=4 * FRAME, frames=4)
    node_a.finalize(final, writer)
    seen = node_b.lookup(meta.stream_id)
    assert seen is not None and seen.state is StreamState.FINALIZED
    assert wav_pcm(node_b, seen, node_b.durable_position(seen)) == pcm
    with pytest.raises(OSError, match="finalized"):
        node_b.take(seen)
    reopened, w2 = node_b.reopen(seen)
    assert reopened.state is StreamState.OPEN and reopened.reopened == 1
    assert w2.position.next_seq == 4
    pcm += append_frames(w2, 4, 2)
    commit(node_b, w2)
    assert wav_pcm(node_a, reopened, node_a.durable_position(reopened)) == pcm


def test_delete_removes_audio_and_metadata(node_a: JetStreamStore) -> None:
    meta = new_meta()
    writer = node_a.create(meta)
    append_frames(writer, 0, 2)
    commit(node_a, writer)
    node_a.delete(meta.stream_id)
    assert node_a.lookup(meta.stream_id) is None
    assert meta.stream_id not in {m.stream_id for m, _ in node_a.list_streams()}
    node_a.create(meta)  # the id is free again, and starts at 0
    assert node_a.durable_position(meta).next_seq == 0


def test_min_replicas_refuses_a_stream_with_fewer_replicas(nats_url: str,
                                                           node_a: JetStreamStore) -> None:
    with pytest.raises(StorageError, match="1 replica.*--min-replicas 3"):
        make_store(nats_url, "node-x", min_replicas=3)


def test_unreachable_nats_is_a_clear_start_up_error(tmp_path: Path) -> None:
    from tools.ingest_process import free_port
    with pytest.raises(StorageError, match="cannot connect to NATS") as refused:
        make_store(f"nats://user:s3cret@127.0.0.1:{free_port()}", "node-y", token="t0ken",
                   connect_timeout=1.0)
    assert "s3cret" not in str(refused.value) and "t0ken" not in str(refused.value)


def test_a_nats_max_payload_too_small_for_one_item_is_refused(tmp_path: Path) -> None:
    small = NatsCluster(tmp_path / "small", size=1, name="mp", max_payload="1MB")
    with small, pytest.raises(StorageError, match="max_payload >= "):
        make_store(small.urls, "node-z")


def test_an_end_marker_without_its_meta_update_is_finished_by_the_next_taker(
        node_a: JetStreamStore, node_b: JetStreamStore) -> None:
    from dataclasses import replace

    from ingest_server.storage.jetstream.store import StreamFenced as _Fenced
    meta = new_meta()
    writer = node_a.create(meta)
    append_frames(writer, 0, 3)
    commit(node_a, writer)

    async def crash(*args: object) -> int:  # node A dies after its END, before the meta
        raise _Fenced("simulated crash")
    node_a._put_meta = crash  # type: ignore[method-assign]
    final = replace(meta, state=StreamState.FINALIZED, end_reason=EndReason.ENDED,
                    ended="2026-01-01T00:02:00.000+00:00", next_seq=3, next_sample=3 * FRAME,
                    frames=3)
    with pytest.raises(OSError):
        node_a.finalize(final, writer)
    with pytest.raises(OSError, match="finalized meanwhile"):
        node_b.take(meta)
    seen = node_b.lookup(meta.stream_id)
    assert seen is not None and seen.state is StreamState.FINALIZED
    assert (seen.end_reason, seen.ended, seen.next_seq) == (EndReason.ENDED, final.ended, 3)


def test_without_nats_py_the_error_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys
    monkeypatch.setitem(sys.modules, "nats", None)  # `import nats` raises ImportError
    with pytest.raises(StorageError, match=r"pip install echopanel-uplink\[cluster\]"):
        make_store("nats://127.0.0.1:1", "node-w")


def test_ids_with_dots_anywhere_but_first_are_distinct_streams(node_a: JetStreamStore) -> None:
    written = {}
    for sid in (f"d{os.getpid()}..x.", f"d{os.getpid()}.x", f"d{os.getpid()}"):
        meta = new_meta(sid)
        writer = node_a.create(meta)
        written[sid] = append_frames(writer, 0, 2 + len(written))
        commit(node_a, writer)
    listed = {m.stream_id: p for m, p in node_a.list_streams()}
    for sid, pcm in written.items():
        meta = node_a.lookup(sid)
        assert meta is not None and meta.stream_id == sid
        assert wav_pcm(node_a, meta, listed[sid]) == pcm

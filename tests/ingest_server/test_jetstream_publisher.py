"""The JetStream committer's publisher (ingest_server/storage/jetstream/publisher.py)
against a real NATS server on loopback: many batches in flight on one connection, a batch
split into several chained messages, and a PubAck that never comes.

Each test starts its own single-node server (the last one freezes it with SIGSTOP).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import pytest

from ingest_server.storage.journal import Position
from ingest_server.storage.store import StreamMeta
from uplink.audio import AudioFormat, SampleType

nats = pytest.importorskip("nats") if not os.environ.get("CI") else __import__("nats")

from ingest_server.storage.jetstream import JetStreamStore  # noqa: E402
from ingest_server.storage.jetstream import writer as writer_module  # noqa: E402
from ingest_server.storage.jetstream.publisher import Publisher, PublishJob  # noqa: E402
from ingest_server.storage.jetstream.writer import JetStreamWriter, WriterState  # noqa: E402
from tools.nats_cluster import NatsCluster  # noqa: E402

FMT = AudioFormat(16000, 1, SampleType.INT16)
FRAME = 320
FRAME_BYTES = FRAME * FMT.block_align


@pytest.fixture()
def cluster(tmp_path: Path) -> Iterator[NatsCluster]:
    with NatsCluster(tmp_path / "nats", size=1, name="pub") as nats_cluster:
        yield nats_cluster


@pytest.fixture()
def store(cluster: NatsCluster) -> Iterator[JetStreamStore]:
    node = JetStreamStore(cluster.urls, node="pub-node", replicas=1, min_replicas=1,
                          lease_seconds=10.0, renew=False)
    yield node
    node.close()


def meta(stream_id: str) -> StreamMeta:
    return StreamMeta(stream_id, FMT, FRAME, 1, "0" * 64, "2026-01-01T00:00:00.000+00:00")


def frame(stream: int, seq: int) -> bytes:
    return bytes([(stream * 7 + seq) % 251]) * FRAME_BYTES


def append(writer: JetStreamWriter, stream: int, first: int, n: int) -> bytes:
    for seq in range(first, first + n):
        writer.append_audio(seq, 1, seq * FRAME, FRAME, frame(stream, seq))
    return b"".join(frame(stream, seq) for seq in range(first, first + n))


def stored_pcm(store: JetStreamStore, stream_meta: StreamMeta) -> bytes:
    position = store.durable_position(stream_meta)
    body = b"".join(store.open_wav(stream_meta, position))
    return body[44:]


def test_many_streams_commit_at_once_on_one_connection(store: JetStreamStore) -> None:
    """Forty streams' batches submitted in one go, three rounds: every future resolves and
    every stream holds exactly its own frames, in order."""
    metas = [meta(f"pub-many-{i}") for i in range(40)]
    writers = [store.create(m) for m in metas]
    expected = [b""] * len(writers)

    async def round_of_commits(first: int) -> None:
        futures = []
        for i, writer in enumerate(writers):
            expected[i] += append(writer, i, first, 2)
            futures.append(store.committer.submit(writer))
        await asyncio.wait_for(asyncio.gather(*futures), 10)

    async def run() -> None:
        for first in (0, 2, 4):
            await round_of_commits(first)

    asyncio.run(run())
    for stream_meta, writer, pcm in zip(metas, writers, expected, strict=True):
        assert writer.state is WriterState.OWNER
        assert store.durable_position(stream_meta).next_seq == 6
        assert stored_pcm(store, stream_meta) == pcm


def test_a_batch_larger_than_a_message_is_published_as_a_chain(
        store: JetStreamStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """A stream that is behind commits a batch over MAX_MESSAGE_BYTES: it goes out as
    several messages, each expecting the previous one's sequence (writer.take_batch)."""
    monkeypatch.setattr(writer_module, "MAX_MESSAGE_BYTES", 3 * FRAME_BYTES + 64)
    stream_meta = meta("pub-chain")
    writer = store.create(stream_meta)
    pcm = append(writer, 0, 0, 10)
    last_before = writer.last_subject_seq

    async def run() -> None:
        await asyncio.wait_for(store.committer.submit(writer), 10)

    asyncio.run(run())
    assert writer.last_subject_seq - last_before >= 4  # 10 frames, at most 3 per message
    assert stored_pcm(store, stream_meta) == pcm


def test_a_puback_that_never_comes_fails_the_sync_and_the_writer_goes_stale(
        cluster: NatsCluster, store: JetStreamStore) -> None:
    """The server is frozen (SIGSTOP): the publish's outcome is unknown, so the sync fails
    with an OSError (1013 to the uplink) after the timeout, and the writer publishes nothing
    more until the stream is taken again (writer.py)."""
    stream_meta = meta("pub-frozen")
    writer = store.create(stream_meta)
    append(writer, 0, 0, 2)
    store.committer.publisher.timeout = 0.5

    async def commit() -> None:
        await asyncio.wait_for(store.committer.submit(writer), 10)

    cluster.pause(0)
    started = time.monotonic()
    try:
        with pytest.raises(OSError, match="TimeoutError"):
            asyncio.run(commit())
    finally:
        cluster.resume(0)
    assert time.monotonic() - started < 5  # the sweeper, not a 10 s wait_for, ended it
    assert writer.state is WriterState.STALE

    with pytest.raises(OSError, match="stale"):
        append(writer, 0, 2, 1)


@dataclass
class Reply:
    """What nats-py hands a subscription callback: subject, data, headers."""

    subject: str
    data: bytes
    headers: dict[str, str] | None = None


@pytest.mark.parametrize("data", [b"not json", b'{"error": "x"}', b'{"stream": "S"}', b"[]"])
def test_an_unreadable_puback_fails_the_sync_and_never_hangs(data: bytes) -> None:
    """No real server sends these; a reply that cannot be read must still finish its job
    (stale, 1013), or the stream's sync would wait forever (the job has left every table)."""
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        link = SimpleNamespace(loop=loop)

        async def no_checkpoint(w: JetStreamWriter, n: int) -> None:
            return None

        publisher = Publisher(link, "S", no_checkpoint)  # type: ignore[arg-type]
        publisher._prefix = "_INBOX.test."
        writer = JetStreamWriter("s", "echopanel.audio.s", Position(0, 0, 0, 0, 0), 0, [],
                                 "node", 1)
        writer.append_audio(0, 1, 0, FRAME, frame(0, 0))
        job = PublishJob(writer, writer.take_batch(), 0, loop.create_future())
        publisher._awaiting[7] = job
        await publisher._on_reply(Reply("_INBOX.test.7", data))
        with pytest.raises(OSError, match="unreadable PubAck"):
            await asyncio.wait_for(job.future, 5)
        assert writer.state is WriterState.STALE

    asyncio.run(scenario())

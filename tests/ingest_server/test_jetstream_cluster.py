"""JetStream backend with replication and two real ingest nodes (docs/scale-out.md):
a 3-node NATS cluster on loopback (R3) and two `python -m ingest_server --store nats://...`
processes, driven by the explicit protocol test client (tests/ingest_server/client.py)."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.ingest_server.client import FMT, FRAME, Client, frames
from tools.ingest_process import IngestServer
from uplink.wire import Hello, encode_control

if not os.environ.get("CI"):
    pytest.importorskip("nats")

from ingest_server.storage.jetstream import JetStreamStore  # noqa: E402
from ingest_server.storage.jetstream.writer import JetStreamWriter, WriterState  # noqa: E402
from ingest_server.storage.store import StreamMeta  # noqa: E402
from tools.nats_cluster import NatsCluster  # noqa: E402

from .test_jetstream import append_frames, commit, new_meta, wav_pcm  # noqa: E402


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsCluster]:
    with NatsCluster(tmp_path_factory.mktemp("nats3"), size=3, name="t3") as c:
        yield c


@pytest.fixture(scope="module")
def nodes(cluster: NatsCluster, tmp_path_factory: pytest.TempPathFactory
          ) -> Iterator[tuple[IngestServer, IngestServer]]:
    base = tmp_path_factory.mktemp("ingest")
    args = ["--store", cluster.urls, "--replicas", "3", "--min-replicas", "3"]
    with IngestServer(base / "a", args=[*args, "--node-name", "a"]) as a, \
            IngestServer(base / "b", args=[*args, "--node-name", "b"]) as b:
        yield a, b


def pcm_of(server: IngestServer, sid: str) -> bytes:
    body = httpx.get(f"{server.http}/v1/streams/{sid}/audio.wav", timeout=30).content
    return body[44:]


def test_split_brain_the_stale_node_writes_nothing_and_closes_with_4411(
        nodes: tuple[IngestServer, IngestServer]) -> None:
    a, b = nodes
    first, second, stale = frames(10, 1), frames(10, 2), frames(5, 3)
    with Client(a.url) as old:
        welcome = old.hello("split-brain")
        old.stream(0, first)
        with Client(b.url) as new:  # the capture came back through node B
            resumed = new.hello("split-brain", resume=welcome)
            assert (resumed.next_seq, resumed.next_sample) == (10, 10 * FRAME)
            new.stream(10, second)
            # The old connection on A is still open and sends more: JetStream rejects A's
            # publish (fenced), and A closes its client with 4411.
            for i, payload in enumerate(stale):
                old.audio(10 + i, (10 + i) * FRAME, [payload])
            closed = old.expect_close()
            assert closed.code == 4411, closed
            new.stream(20, frames(2, 4))
            new.end(22, 22 * FRAME)
    expected = b"".join(first + second + frames(2, 4))
    assert pcm_of(a, "split-brain") == expected == pcm_of(b, "split-brain")
    detail = httpx.get(f"{a.http}/v1/streams/split-brain", timeout=10).json()
    assert (detail["state"], detail["next_seq"]) == ("finalized", 22)


def test_a_new_stream_with_an_id_taken_on_another_node_is_a_conflict(
        nodes: tuple[IngestServer, IngestServer]) -> None:
    a, b = nodes
    with Client(a.url) as c:
        c.hello("taken-id")
        c.stream(0, frames(2, 5))
        with Client(b.url) as other:
            other.send(encode_control(Hello("taken-id", FMT, FRAME, None)))
            closed = other.expect_close()
            assert closed.code == 4409 and "resume credential" in closed.reason


def test_open_stream_is_listed_and_served_by_the_other_node(
        nodes: tuple[IngestServer, IngestServer]) -> None:
    a, b = nodes
    payload = frames(25, 6)
    with Client(a.url) as c:
        c.hello("open-elsewhere")
        c.stream(0, payload)
        listed = httpx.get(f"{b.http}/v1/streams?state=open", timeout=10).json()["streams"]
        mine = [s for s in listed if s["stream_id"] == "open-elsewhere"]
        assert mine and mine[0]["frames"] == 25 and mine[0]["samples"] == 25 * FRAME
        assert pcm_of(b, "open-elsewhere") == b"".join(payload)
        ranged = httpx.get(f"{b.http}/v1/streams/open-elsewhere/audio.wav",
                           headers={"Range": "bytes=44-"}, timeout=10)
        assert ranged.status_code == 206 and ranged.content == b"".join(payload)


def test_acked_data_survives_the_loss_and_restart_of_nats_nodes(cluster: NatsCluster) -> None:
    store = JetStreamStore(cluster.urls, node="restart-test", replicas=3, min_replicas=3,
                           lease_seconds=10.0, renew=False)
    try:
        meta = new_meta()
        writer = store.create(meta)
        pcm = append_frames(writer, 0, 20)
        commit(store, writer)
        cluster.kill(0)  # a quorum (2 of 3) keeps the stream writable
        pcm += append_frames(writer, 20, 20)
        try:
            commit(store, writer)
        except OSError:
            # The client may have been on the killed node, or the stream's leader was: the
            # outcome is unknown, so the writer is STALE. What an uplink's resume does:
            # take the stream again (fence, tail) and replay from the tail.
            assert writer.state is WriterState.STALE
            writer = _take_when_ready(store, meta)
            append_frames(writer, writer.next_seq, 40 - writer.next_seq)
            commit(store, writer)
        cluster.start(0)  # returns once it has caught up (/healthz)
        # read through the restarted node only: its copy has what was acked without it
        # A node just restarted may answer JetStream API requests only after its peers
        # settle (seen: over 10 s, rarely): the store retries its set-up that long.
        reader = JetStreamStore(cluster.url(0), node="reader", replicas=3, min_replicas=3,
                                lease_seconds=10.0, renew=False, connect_timeout=45.0)
        try:
            pos = reader.durable_position(meta)
            assert (pos.next_seq, pos.frames) == (40, 40)
            assert wav_pcm(reader, meta, pos) == pcm
        finally:
            reader.close()
    finally:
        for i in range(cluster.size):
            if not cluster.running(i):
                cluster.start(i)
        store.close()


def _take_when_ready(store: JetStreamStore, meta: StreamMeta) -> JetStreamWriter:
    """A new stream leader is elected within seconds; until then a take fails (1013)."""
    deadline = time.monotonic() + 20
    while True:
        try:
            return store.take(meta)[1]
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def test_ingest_refuses_to_start_below_min_replicas(tmp_path: Path) -> None:
    import subprocess
    import sys
    with NatsCluster(tmp_path / "nats1", size=1, name="r1") as single:
        args = [sys.executable, "-m", "ingest_server", "--data-dir", str(tmp_path / "d"),
                "--port", "0", "--store", single.urls]
        refused = subprocess.run([*args, "--replicas", "1", "--min-replicas", "3"],
                                 timeout=30, capture_output=True, text=True, check=False)
    assert refused.returncode == 2
    lines = [line for line in refused.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, refused.stderr
    assert "1 replica" in lines[0] and "--min-replicas 3" in lines[0]


def test_a_listener_on_one_node_follows_a_capture_written_through_the_other(
        nodes: tuple[IngestServer, IngestServer], tmp_path: Path) -> None:
    from capture.wavfile import read_wav
    from tests.e2e.listen_support import collect, feed
    from tools.chaos_run import make_recording
    a, b = nodes
    fmt, source = read_wav(make_recording(tmp_path / "source.wav", 3.0))

    async def scenario() -> None:
        listener = asyncio.create_task(collect(f"ws://127.0.0.1:{b.port}", "followed",
                                               timeout=60))
        summary = await feed(f"ws://127.0.0.1:{a.port}", "followed", fmt, source, speed=4.0)
        assert summary.ok
        got = await listener
        assert got.end_reason == "ended" and got.gaps == []
        assert bytes(got.audio) == source

    asyncio.run(asyncio.wait_for(scenario(), 90))

"""Scale-out end to end (docs/scale-out.md, "Failure table"): one loopback cluster for the
module — 3 NATS JetStream nodes (R3), 3 real ingest processes (`--store nats://...`,
`--lease-seconds 2`) and the TCP balancer in front (tools/cluster.py) — and real captures
through the balancer while ingest nodes are SIGKILLed or frozen and the JetStream node
leading the audio stream is killed. Every test compares the PCM stored (read back from a
node that took no part in the failure) or heard (a live listener) with the source, sample
for sample: no byte lost, duplicated or moved.

Each test leaves the cluster whole (killed nodes started again, `Cluster.wait_ready`), so
the order does not matter. The capture settings are tools/chaos_run.py's short deadlines.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from capture.wav_source import WavFileSource
from capture.wavfile import read_wav
from tests.e2e.conftest import stored_equals_source
from tests.e2e.listen_support import FAST_UPLINK, collect, feed, sse_events
from tests.ingest_server.client import FRAME, Client, frames
from tools.chaos_run import CHAOS_CONFIG, make_recording, run_cluster_scenario
from tools.cluster import Cluster
from uplink.client import UplinkClient, UplinkResult
from uplink.frames import FrameCutter
from uplink.ring import OverflowPolicy, RingBuffer

if not os.environ.get("CI"):
    pytest.importorskip("nats")

AUDIO_STREAM = "ECHOPANEL_AUDIO"  # ingest_server/storage/jetstream/store.py


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with Cluster(tmp_path_factory.mktemp("cluster"), nodes=3, nats_nodes=3,
                 extra_args=["--lease-seconds", "2"]) as c:
        yield c


@pytest.fixture(autouse=True)
def whole_cluster(cluster: Cluster) -> Iterator[None]:
    yield
    for i in range(len(cluster.nodes)):
        cluster.resume_node(i)
    for i in range(cluster.nats.size):
        if not cluster.nats.running(i):
            cluster.nats.start(i)
    cluster.wait_ready()


async def until(predicate: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def holder_once_acked(cluster: Cluster, client: UplinkClient, stream_id: str,
                            samples: int, timeout: float = 60.0) -> int:
    """The node holding the capture once `samples` are acked (polls REST in a thread)."""
    deadline = time.monotonic() + timeout
    while True:
        if client.stats().counters.acked_sample >= samples:
            node = await asyncio.to_thread(cluster.holder, stream_id)
            if node is not None:
                return node
        if time.monotonic() > deadline:
            raise AssertionError(f"{stream_id}: {samples} samples not acked on a node")
        await asyncio.sleep(0.02)


def capture(cluster: Cluster, source: Path, stream_id: str, speed: float
            ) -> tuple[UplinkClient, WavFileSource]:
    fmt, _ = read_wav(source)
    ring = RingBuffer(fmt, FRAME, CHAOS_CONFIG.buffer_seconds, OverflowPolicy.BLOCK)
    client = UplinkClient(cluster.balancer_url, ring, stream_id, CHAOS_CONFIG)
    wav = WavFileSource(source, speed=speed)
    wav.start(FrameCutter(ring))
    return client, wav


def fetch(cluster: Cluster, node: int, stream_id: str, into: Path) -> Path:
    http = cluster.nodes[node].http
    detail = httpx.get(f"{http}/v1/streams/{stream_id}", timeout=10).json()
    assert detail["state"] == "finalized" and detail["gap_count"] == 0, detail
    into.write_bytes(httpx.get(f"{http}/v1/streams/{stream_id}/audio.wav", timeout=60).content)
    return into


def finished(result: UplinkResult) -> None:
    assert result.ok, result.error
    assert result.stats.ring.frames_dropped == 0


def test_a_capture_survives_the_sigkill_of_two_of_its_nodes(
        cluster: Cluster, tmp_path: Path) -> None:
    source = make_recording(tmp_path / "source.wav", 8.0)
    fmt, _ = read_wav(source)
    sid = "cluster-two-kills"
    killed: list[int] = []

    async def scenario() -> None:
        client, wav = capture(cluster, source, sid, speed=2.0)

        async def kill_twice() -> None:
            for fraction in (0.25, 0.6):
                node = await holder_once_acked(cluster, client, sid,
                                               int(fraction * 8.0 * fmt.sample_rate))
                assert node not in killed  # it resumed on another node
                await asyncio.to_thread(cluster.kill_node, node)
                killed.append(node)

        killer = asyncio.create_task(kill_twice())
        result = await asyncio.wait_for(client.run(), 90)
        await asyncio.wait_for(killer, 5)
        wav.wait(5.0)
        finished(result)
        assert result.stats.counters.reconnects >= 2

    asyncio.run(scenario())
    assert len(set(killed)) == 2
    third = ({0, 1, 2} - set(killed)).pop()
    stored_equals_source(fetch(cluster, third, sid, tmp_path / "stored.wav"), source)


def test_a_capture_survives_the_sigkill_of_the_jetstream_leader_of_its_audio(
        cluster: Cluster, tmp_path: Path) -> None:
    source = make_recording(tmp_path / "source.wav", 6.0)
    fmt, _ = read_wav(source)
    sid = "cluster-nats-leader"
    killed: list[int] = []

    async def scenario() -> None:
        client, wav = capture(cluster, source, sid, speed=1.5)

        async def kill_leader() -> None:
            await holder_once_acked(cluster, client, sid, fmt.sample_rate)  # 1 s stored
            leader = await asyncio.to_thread(cluster.nats.stream_leader, AUDIO_STREAM)
            assert leader is not None
            await asyncio.to_thread(cluster.nats.kill, leader)
            killed.append(leader)

        killer = asyncio.create_task(kill_leader())
        result = await asyncio.wait_for(client.run(), 90)
        await asyncio.wait_for(killer, 5)
        wav.wait(5.0)
        finished(result)

    asyncio.run(scenario())
    assert killed
    stored_equals_source(fetch(cluster, 0, sid, tmp_path / "stored.wav"), source)
    cluster.nats.start(killed[0])  # back and caught up (/healthz): its copy is the same
    nodes_view = httpx.get(f"{cluster.nodes[1].http}/v1/streams/{sid}", timeout=10).json()
    assert nodes_view["next_seq"] == 6 * 50


def test_split_brain_a_frozen_owner_that_wakes_up_writes_nothing_and_closes_4411(
        cluster: Cluster) -> None:
    """Protocol level through the balancer (tests/ingest_server/client.py: the uplink would
    never keep a connection it gave up on): the old owner's connection stays open while the
    node is frozen and the capture resumes on another node; woken, the old node reads the
    frames queued on that connection, JetStream rejects its publish (the fence) or its
    lease renewal finds the stream taken, and it closes its client with 4411."""
    sid = "cluster-split-brain"
    first, second, stale, last = frames(25, 11), frames(25, 12), frames(10, 13), frames(5, 14)
    with Client(cluster.balancer_url) as old:
        welcome = old.hello(sid)
        old.stream(0, first)
        frozen = cluster.holder(sid)
        assert frozen is not None
        cluster.pause_node(frozen)
        try:
            for i, payload in enumerate(stale):  # queued in the frozen node's socket
                old.audio(25 + i, (25 + i) * FRAME, [payload])
            # the balancer's next turn is the next node: not the frozen one
            with Client(cluster.balancer_url) as new:
                resumed = new.hello(sid, resume=welcome)
                assert (resumed.next_seq, resumed.next_sample) == (25, 25 * FRAME)
                new_node = cluster.holder(sid)
                assert new_node not in (None, frozen)
                new.stream(25, second)
                cluster.resume_node(frozen)
                closed = old.expect_close(timeout=20)
                assert closed.code == 4411, closed
                new.stream(50, last)
                new.end(55, 55 * FRAME)
        finally:
            cluster.resume_node(frozen)
    third = ({0, 1, 2} - {frozen, new_node}).pop()
    body = httpx.get(f"{cluster.nodes[third].http}/v1/streams/{sid}/audio.wav", timeout=30)
    assert body.content[44:] == b"".join(first + second + last)
    detail = httpx.get(f"{cluster.nodes[frozen].http}/v1/streams/{sid}", timeout=10).json()
    assert (detail["state"], detail["next_seq"], detail["gap_count"]) == ("finalized", 55, 0)


def test_a_listener_on_one_node_hears_exactly_a_capture_whose_node_is_killed(
        cluster: Cluster, tmp_path: Path) -> None:
    fmt, source = read_wav(make_recording(tmp_path / "source.wav", 5.0))
    sid = "cluster-listened"

    async def scenario() -> None:
        capture = asyncio.create_task(feed(cluster.balancer_url, sid, fmt, source, speed=2.0,
                                           config=FAST_UPLINK))
        deadline = time.monotonic() + 30
        while (node := await asyncio.to_thread(cluster.holder, sid)) is None:
            assert time.monotonic() < deadline and not capture.done()
            await asyncio.sleep(0.05)
        listen_node = (node + 1) % 3
        listener = asyncio.create_task(collect(cluster.nodes[listen_node].url, sid,
                                               timeout=60))
        await asyncio.sleep(1.0)  # the listener is following and the capture is mid-way
        assert not capture.done()
        await asyncio.to_thread(cluster.kill_node, node)
        summary = await capture
        assert summary.ok
        got = await listener
        assert got.end_reason == "ended" and got.gaps == []
        assert bytes(got.audio) == source

    asyncio.run(asyncio.wait_for(scenario(), 90))


def test_discovery_on_any_node_announces_the_streams_of_every_node(cluster: Cluster) -> None:
    """`GET /v1/events` on node 2 (docs/scale-out.md "Events across nodes"): its snapshot
    lists a stream open on node 0, and the events of a capture on node 1 follow (in its
    node's order; two nodes' events may interleave either way), the end on node 0 too."""
    early_sid, sid = "cluster-discovery-early", "cluster-discovery"
    with Client(cluster.nodes[0].url) as early:
        early.hello(early_sid)
        early.stream(0, frames(5, 21))
        events = sse_events(cluster.nodes[2].http)
        snapshot = next(events)
        assert snapshot["type"] == "snapshot"
        listed = {s["stream_id"]: s for s in snapshot["streams"]}
        assert listed[early_sid] == {"stream_id": early_sid, "at_sample": 5 * FRAME,
                                     "connected": False}  # connected to node 0, not here
        with Client(cluster.nodes[1].url) as client:
            client.hello(sid)
            client.stream(0, frames(10, 22))
            client.end(10, 10 * FRAME)
        early.end(5, 5 * FRAME)
    seen: list[tuple[str, str, int]] = []
    while not {("finalized", early_sid), ("finalized", sid)} <= {(e, s) for e, s, _ in seen}:
        event = next(events)
        if event.get("type") == "stream" and event["stream_id"] in (sid, early_sid):
            seen.append((event["event"], event["stream_id"], event["at_sample"]))
    mine = [(e, at) for e, s, at in seen if s == sid]
    assert mine[0] == ("opened", 0) and ("finalized", 10 * FRAME) in mine, seen
    assert ("finalized", early_sid, 5 * FRAME) in seen


def test_the_chaos_run_through_the_balancer_with_node_kills(
        cluster: Cluster, tmp_path: Path) -> None:
    source = make_recording(tmp_path / "source.wav", 10.0)
    report = asyncio.run(asyncio.wait_for(
        run_cluster_scenario(cluster, source, seed=5, speed=2.0, mean_interval=0.5), 120))
    assert report.ok, report.error
    assert len(report.node_kills) == 2 and report.faults_total >= 3
    assert report.identical and report.frames_dropped == 0

"""The registry on a shared JetStream store, in-process: two "nodes" are two Registries with
their own JetStreamStore (connection, node name, leases) on one NATS server. Resume on
another node, the stale node letting go, and the expiry of a dead node's stream on a fake
wall clock (docs/scale-out.md)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from ingest_server.config import ServerConfig
from ingest_server.errors import TakenOver, storage_failure
from ingest_server.events import EventKind
from ingest_server.sessions import FOLLOW_POLL, Registry
from ingest_server.storage.interface import StreamState
from tests.support.clock import FakeClock
from uplink.wire import Hello, Resume

from .client import FMT, FRAME, frames

if not os.environ.get("CI"):
    pytest.importorskip("nats")

from ingest_server.storage.jetstream import JetStreamStore  # noqa: E402
from tools.nats_cluster import NatsCluster  # noqa: E402

TIMEOUT = 60.0


@pytest.fixture(scope="module")
def nats_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with NatsCluster(tmp_path_factory.mktemp("nats"), size=1, name="reg") as cluster:
        yield cluster.urls


class FakeOwner:
    def __init__(self) -> None:
        self.superseded = False

    async def supersede(self) -> None:
        self.superseded = True


class Node:
    def __init__(self, url: str, name: str, data: Path, wall: list[float]) -> None:
        self.clock = FakeClock()
        self.store = JetStreamStore(url, node=name, replicas=1, min_replicas=1,
                                    lease_seconds=10.0, renew=False, wall=lambda: wall[0])
        config = ServerConfig(data_dir=data, session_timeout=TIMEOUT, store=url)
        self.registry = Registry(self.store, config, clock=self.clock, wall=lambda: wall[0],
                                 committer=self.store.committer)

    def close(self) -> None:
        self.store.close()


@pytest.fixture()
def wall() -> list[float]:
    return [1_800_000_000.0]


@pytest.fixture()
def two_nodes(nats_url: str, tmp_path: Path, wall: list[float]) -> Iterator[tuple[Node, Node]]:
    a, b = Node(nats_url, "a", tmp_path / "a", wall), Node(nats_url, "b", tmp_path / "b", wall)
    yield a, b
    a.close()
    b.close()


async def write(registry: Registry, sid: str, first: int, payload: list[bytes]) -> None:
    stream = registry.streams[sid]
    assert stream.journal is not None
    for i, p in enumerate(payload):
        seq = first + i
        stream.journal.append_audio(seq, 1, seq * FRAME, FRAME, p)
    await stream.sync()


def test_resume_on_another_node_takes_over_and_the_old_node_lets_go(
        two_nodes: tuple[Node, Node]) -> None:
    a, b = two_nodes
    sid = f"reg-resume-{os.getpid()}"

    async def scenario() -> None:
        created = await a.registry.attach(Hello(sid, FMT, FRAME), FakeOwner())
        await write(a.registry, sid, 0, frames(5, 1))
        a.registry.detach(created.stream, created.stream.owner)  # type: ignore[arg-type]
        resumed = await b.registry.attach(
            Hello(sid, FMT, FRAME, Resume(1, created.credential)), FakeOwner())
        assert resumed.resumed and resumed.stream.durable.next_seq == 5
        await write(b.registry, sid, 5, frames(3, 2))
        # A still has the stream in memory; its writer was fenced by B's takeover.
        old = a.registry.streams[sid]
        old.journal.append_audio(5, 1, 5 * FRAME, FRAME, frames(1, 9)[0])  # type: ignore[union-attr]
        with pytest.raises(TakenOver), storage_failure("fsync", stream_id=sid):
            await old.sync()
        assert await a.registry.expire() == []  # nothing to expire: it lets go instead
        assert sid not in a.registry.streams
        # and a resume on A takes it back, at B's durable position
        back = await a.registry.attach(
            Hello(sid, FMT, FRAME, Resume(1, created.credential)), FakeOwner())
        assert back.stream.durable.next_seq == 8

    asyncio.run(asyncio.wait_for(scenario(), 30))


def test_a_dead_nodes_stream_expires_on_another_node_and_can_be_reopened(
        two_nodes: tuple[Node, Node], wall: list[float]) -> None:
    a, b = two_nodes
    sid = f"reg-orphan-{os.getpid()}"

    async def scenario() -> str:
        created = await a.registry.attach(Hello(sid, FMT, FRAME), FakeOwner())
        await write(a.registry, sid, 0, frames(4, 3))
        return created.credential

    credential = asyncio.run(asyncio.wait_for(scenario(), 30))
    a.close()  # node A dies: no finalization, its lease stops being renewed

    async def later() -> None:
        assert await b.registry.expire() == []  # lease still fresh
        wall[0] += TIMEOUT + 1
        b.clock.advance(61)  # the once-a-minute orphan scan is due
        with b.registry.events.subscribe(sid) as sub:
            assert sid in await b.registry.expire()
            announced = sub.pending()  # B announces it (and relays it to every node)
        assert [(e.kind, e.at_sample, e.end_reason) for e in announced] == [
            (EventKind.FINALIZED, 4 * FRAME, "expired")]
        meta = b.store.lookup(sid)
        assert meta is not None and meta.state is StreamState.FINALIZED
        assert meta.next_seq == 4 and meta.end_reason == "expired"
        # B keeps its final meta in memory: the `stream.expired` webhook it sends carries
        # the format and totals (webhooks.build_payload), though B never held the stream
        described = b.registry.describe(sid)
        assert described is not None and described.frames == 4
        assert described.format.sample_rate == FMT.sample_rate
        back = await b.registry.attach(Hello(sid, FMT, FRAME, Resume(1, credential)),
                                       FakeOwner())
        assert back.stream.meta.reopened == 1 and back.stream.durable.next_seq == 4
        reopened = b.registry.describe(sid)  # the held stream's meta, not the final one
        assert reopened is not None and reopened.reopened == 1
        assert sid not in b.registry._expired_orphans

    asyncio.run(asyncio.wait_for(later(), 30))


def test_a_followed_stream_whose_wake_ups_are_lost_is_read_within_follow_poll(
        two_nodes: tuple[Node, Node], monkeypatch: pytest.MonkeyPatch) -> None:
    """The subscription that wakes a follower is a hint and can miss (a publish before the
    interest reached the writer's NATS server, after a reconnect): the sweep's
    poll_followed reads the tail of a followed stream FOLLOW_POLL after the last read, so a
    listener never waits forever for audio, or an end, that is already durable."""
    a, b = two_nodes
    sid = f"reg-poll-{os.getpid()}"
    monkeypatch.setattr(b.store, "watch", lambda stream_id, on_message: lambda: None)

    async def scenario() -> None:
        await a.registry.attach(Hello(sid, FMT, FRAME), FakeOwner())
        followed = await b.registry.follow(sid)
        assert followed is not None and followed.durable.next_seq == 0
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        while b.registry._refreshing:  # follow()'s own first tail read
            assert loop.time() < deadline
            await asyncio.sleep(0.01)
        await write(a.registry, sid, 0, frames(6, 5))
        await asyncio.sleep(0.2)  # what a wake-up would have taken, had one come
        assert followed.durable.next_seq == 0 and not b.registry._refreshing
        assert b.registry.poll_followed() == 0  # read at follow(): not due yet
        b.clock.advance(FOLLOW_POLL)
        assert b.registry.poll_followed() == 1
        deadline = loop.time() + 10
        while followed.durable.next_seq != 6:
            assert loop.time() < deadline
            await asyncio.sleep(0.01)
        b.registry.unfollow(followed)
        b.clock.advance(FOLLOW_POLL)
        assert b.registry.poll_followed() == 0  # nobody follows it any more

    asyncio.run(asyncio.wait_for(scenario(), 30))

"""The webhook dispatcher in process (ingest_server/webhooks.py): the real event bus and
outbox, a receiver behind httpx.MockTransport. Per-URL order, retries through 500 and 429,
permanent 4xx failures, stop → start re-sends with the same ids, nothing at all without
webhooks. Against a real HTTP receiver and server process: tests/e2e/test_webhooks.py."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from ingest_server.backoff import BackoffConfig
from ingest_server.config import ServerConfig
from ingest_server.events import EventBus, EventKind, StreamEvent
from ingest_server.storage.interface import Gap
from ingest_server.storage.store import StreamMeta
from ingest_server.webhooks import WebhookDispatcher
from uplink.audio import AudioFormat, SampleType

SECRET = "test-webhook-secret-0123456789"
A = "http://receiver.test/a"
B = "http://receiver.test/b?token=query-credential"
FAST = BackoffConfig(base=0.01, cap=0.05)
WAIT = 10.0


@pytest.fixture
def executor() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(4) as pool:
        yield pool


class Receiver:
    """Answers each request with the next scripted status per path (then 200); records
    every request whose signature verifies."""

    def __init__(self, script: dict[str, list[int]] | None = None,
                 default: Callable[[str], int] = lambda path: 200) -> None:
        self.script = {k: list(v) for k, v in (script or {}).items()}
        self.default = default
        self.received: dict[str, list[dict[str, object]]] = {}
        self.attempts: dict[str, int] = {}
        self.changed = asyncio.Event()

    def handle(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        self.attempts[path] = self.attempts.get(path, 0) + 1
        h = request.headers
        signed = f"{h['webhook-id']}.{h['webhook-timestamp']}.".encode() + request.content
        mac = base64.b64encode(hmac.new(SECRET.encode(), signed, hashlib.sha256).digest())
        assert h["webhook-signature"] == "v1," + mac.decode()
        body = json.loads(request.content)
        assert body["id"] == h["webhook-id"]
        pending = self.script.get(path)
        status = pending.pop(0) if pending else self.default(path)
        if 200 <= status < 300:
            self.received.setdefault(path, []).append(body)
        self.changed.set()
        headers = {"retry-after": "0"} if status == 429 else {}
        return httpx.Response(status, headers=headers)

    def types(self, path: str) -> list[object]:
        return [b["type"] for b in self.received.get(path, [])]

    async def until(self, done: Callable[[], bool]) -> None:
        async def wait() -> None:
            while not done():
                self.changed.clear()
                await self.changed.wait()
        await asyncio.wait_for(wait(), WAIT)


def dispatcher(tmp_path: Path, executor: ThreadPoolExecutor, bus: EventBus, receiver: Receiver,
               urls: tuple[str, ...] = (A,), **config: object) -> WebhookDispatcher:
    cfg = ServerConfig(data_dir=tmp_path, webhooks=urls, webhook_secret=SECRET,
                       **config)  # type: ignore[arg-type]
    return WebhookDispatcher(cfg, bus, tmp_path / ".webhooks", executor, backoff=FAST,
                             transport=httpx.MockTransport(receiver.handle))


def story(bus: EventBus, stream_id: str = "s1") -> None:
    bus.publish(StreamEvent(EventKind.OPENED, stream_id, 0, 1.0))
    bus.publish(StreamEvent(EventKind.DISCONNECTED, stream_id, 100, 2.0, close_code=1006))
    bus.publish(StreamEvent(EventKind.RESUMED, stream_id, 100, 3.0, duplicates=2))
    bus.publish(StreamEvent(EventKind.GAP, stream_id, 500, 4.0, gap=Gap(1, 3, 100, 400)))
    bus.publish(StreamEvent(EventKind.FINALIZED, stream_id, 900, 5.0, end_reason="ended"))


STORY = ["stream.opened", "stream.resumed", "stream.gap", "stream.finalized"]


def test_without_webhooks_nothing_runs(tmp_path: Path, executor: ThreadPoolExecutor) -> None:
    async def scenario() -> None:
        bus = EventBus()
        d = dispatcher(tmp_path, executor, bus, Receiver(), urls=())
        await d.start()
        assert bus.subscribers == 0
        story(bus)
        await d.stop()
        assert d.stats().endpoints == []

    asyncio.run(scenario())
    assert not (tmp_path / ".webhooks").exists()


def test_events_arrive_in_order_through_500s_and_a_429(
        tmp_path: Path, executor: ThreadPoolExecutor) -> None:
    async def scenario() -> None:
        bus = EventBus()
        receiver = Receiver({"/a": [500, 500, 429, 503]})
        d = dispatcher(tmp_path, executor, bus, receiver)
        await d.start()
        story(bus)
        await receiver.until(lambda: len(receiver.received.get("/a", [])) == 4)
        assert receiver.types("/a") == STORY  # the failing head held the others back
        assert receiver.attempts["/a"] == 8
        got = receiver.received["/a"]
        assert got[2]["start_sample"] == 100 and got[2]["samples"] == 300
        assert got[1]["duplicates"] == 2 and got[3]["end_reason"] == "ended"
        assert len({b["id"] for b in got}) == 4
        s = d.stats()
        assert (s.total("delivered"), s.total("retried"), s.total("failed"),
                s.total("queued")) == (4, 4, 0, 0)
        await d.stop()

    asyncio.run(scenario())


def test_a_permanent_4xx_is_dropped_and_other_urls_are_unaffected(
        tmp_path: Path, executor: ThreadPoolExecutor, caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        bus = EventBus()
        receiver = Receiver(default=lambda path: 410 if path == "/b" else 200)
        d = dispatcher(tmp_path, executor, bus, receiver, urls=(A, B))
        await d.start()
        story(bus)
        await receiver.until(lambda: receiver.attempts.get("/b", 0) == 4
                             and len(receiver.received.get("/a", [])) == 4)
        await d.sync()
        s = d.stats()
        a, b = s.endpoints
        assert (a.delivered, a.failed) == (4, 0)
        assert (b.delivered, b.failed, b.queued) == (0, 4, 0)
        assert b.endpoint == "http://receiver.test/b"
        await d.stop()

    asyncio.run(scenario())
    assert "HTTP 410" in caplog.text and "not retried" in caplog.text
    assert "query-credential" not in caplog.text and SECRET not in caplog.text


def test_undelivered_events_are_resent_after_a_restart_with_the_same_ids(
        tmp_path: Path, executor: ThreadPoolExecutor) -> None:
    async def scenario() -> None:
        bus = EventBus()
        down = Receiver(default=lambda path: 503)
        first = dispatcher(tmp_path, executor, bus, down)
        await first.start()
        story(bus)
        await down.until(lambda: down.attempts.get("/a", 0) >= 2)
        bus.publish(StreamEvent(EventKind.OPENED, "late", 0, 6.0))  # just before stop
        await first.stop()
        assert first.stats().total("queued") == 5

        up = Receiver()
        second = dispatcher(tmp_path, executor, EventBus(), up)
        await second.start()
        await up.until(lambda: len(up.received.get("/a", [])) == 5)
        assert up.types("/a") == [*STORY, "stream.opened"]
        await second.stop()
        return None

    asyncio.run(scenario())


def test_a_full_outbox_drops_the_oldest_undelivered(
        tmp_path: Path, executor: ThreadPoolExecutor) -> None:
    async def scenario() -> None:
        bus = EventBus()
        down = Receiver(default=lambda path: 500)
        d = dispatcher(tmp_path, executor, bus, down, webhook_outbox_limit=2)
        await d.start()
        story(bus)
        await d.sync()
        s = d.stats()
        assert (s.total("dropped"), s.total("queued")) == (2, 2)
        await d.stop()
        up = Receiver()
        again = dispatcher(tmp_path, executor, EventBus(), up, webhook_outbox_limit=2)
        await again.start()
        await up.until(lambda: len(up.received.get("/a", [])) == 2)
        assert up.types("/a") == ["stream.gap", "stream.finalized"]
        await again.stop()

    asyncio.run(scenario())


def test_events_after_the_bus_closed_reach_the_disk_before_stop(
        tmp_path: Path, executor: ThreadPoolExecutor) -> None:
    """service.stop closes the bus (close_connections) well before webhooks.stop: a stream
    finalized in between is on disk at once (a SIGKILL then would not lose it)."""
    async def scenario() -> None:
        bus = EventBus()
        d = dispatcher(tmp_path, executor, bus, Receiver(default=lambda path: 503))
        await d.start()
        bus.close()
        bus.publish(StreamEvent(EventKind.FINALIZED, "late", 10, 1.0, end_reason="ended"))

        async def on_disk() -> None:
            while not any("stream.finalized" in f.read_text()
                          for f in (tmp_path / ".webhooks").glob("*/events.jsonl")):
                await asyncio.sleep(0.01)
        await asyncio.wait_for(on_disk(), WAIT)
        await d.stop()

    asyncio.run(scenario())


def test_payloads_carry_the_format_and_totals_from_the_stream_meta(
        tmp_path: Path, executor: ThreadPoolExecutor) -> None:
    gap = Gap(1, 3, 100, 400)
    meta = StreamMeta("s1", AudioFormat(16000, 2, SampleType.INT16), 320, 1, "c",
                      "2026-11-30T00:00:00Z", frames=7, gaps=[gap], labels={"room": "a"})

    async def scenario() -> None:
        bus = EventBus()
        receiver = Receiver()
        cfg = ServerConfig(data_dir=tmp_path, webhooks=(A,), webhook_secret=SECRET)
        d = WebhookDispatcher(cfg, bus, tmp_path / ".webhooks", executor, backoff=FAST,
                              transport=httpx.MockTransport(receiver.handle),
                              describe={"s1": meta}.get)
        await d.start()
        story(bus)
        await receiver.until(lambda: len(receiver.received.get("/a", [])) == 4)
        opened, resumed, gapped, finalized = receiver.received["/a"]
        assert (opened["sample_rate"], opened["channels"], opened["labels"]) \
            == (16000, 2, {"room": "a"})
        assert resumed["at_seconds"] == 100 / 16000
        assert gapped["seconds"] == 300 / 16000
        assert (finalized["frames"], finalized["gaps"], finalized["gap_samples"],
                finalized["gap_seconds"]) == (7, 1, 300, 300 / 16000)
        await d.stop()

    asyncio.run(scenario())

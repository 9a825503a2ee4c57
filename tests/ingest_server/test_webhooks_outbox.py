"""The webhook outbox on disk (ingest_server/outbox.py): what is queued survives a reload with
the same ids and bytes, settled events are not re-sent, the bound drops the oldest, a torn
or garbled file never stops start-up and is repaired."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from ingest_server.outbox import ACKED, ENDPOINT, EVENTS, Outbox, payload_bytes, url_key

URL = "http://127.0.0.1:9/hook?token=secret-in-query"
OTHER = "https://hooks.example/in"


@pytest.fixture
def executor() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(2) as pool:
        yield pool


def body(i: int) -> bytes:
    return payload_bytes({"id": f"evt_{i}", "type": "stream.opened", "stream_id": f"s{i}",
                          "at_sample": i})


def run(coro: object) -> None:
    asyncio.run(coro)  # type: ignore[arg-type]


async def opened(root: Path, executor: ThreadPoolExecutor, limit: int = 100,
                 urls: tuple[str, ...] = (URL,)) -> Outbox:
    box = Outbox(urls, root, limit, executor)
    await box.load()
    box.start()
    await box.sync()
    return box


def ids(box: Outbox, index: int = 0) -> list[str]:
    return [e.event_id for e in box.queues[index].entries]


def test_queued_events_survive_a_reload_with_the_same_ids_and_bytes(
        tmp_path: Path, executor: ThreadPoolExecutor) -> None:
    async def scenario() -> None:
        box = await opened(tmp_path, executor, urls=(URL, OTHER))
        for i in range(1, 4):
            box.add(f"evt_{i}", body(i))
        await box.sync()  # on disk now, before any close
        before = [(e.event_id, e.body) for e in box.queues[0].entries]
        await box.close()
        again = await opened(tmp_path, executor, urls=(URL, OTHER))
        assert [(e.event_id, e.body) for e in again.queues[0].entries] == before
        assert ids(again, 1) == ["evt_1", "evt_2", "evt_3"]  # each URL has its own queue
        await again.close()

    run(scenario())
    d = tmp_path / url_key(URL)
    assert (d / ENDPOINT).read_text() == "http://127.0.0.1:9/hook\n"  # no query on disk
    assert "secret-in-query" not in "".join(p.name for p in tmp_path.rglob("*"))


def test_settled_events_are_not_sent_again_and_an_empty_queue_empties_the_file(
        tmp_path: Path, executor: ThreadPoolExecutor) -> None:
    async def scenario() -> None:
        box = await opened(tmp_path, executor)
        for i in range(1, 4):
            box.add(f"evt_{i}", body(i))
        q = box.queues[0]
        for _ in range(2):
            head = q.head()
            assert head is not None
            q.settle(head)
        box.changed()
        await box.sync()
        await box.close()
        again = await opened(tmp_path, executor)
        assert ids(again) == ["evt_3"]
        q = again.queues[0]
        head = q.head()
        assert head is not None
        q.settle(head)
        again.changed()
        again.add("evt_4", body(4))  # numbering goes on after a reload
        assert q.entries[-1].n == 4
        q.settle(q.entries[0])
        again.changed()
        await again.sync()
        await again.close()

    run(scenario())
    d = tmp_path / url_key(URL)
    assert (d / EVENTS).read_bytes() == b""  # compacted: everything delivered
    assert (d / ACKED).read_text() == "4\n"


def test_a_full_outbox_drops_the_oldest_and_counts_them(
        tmp_path: Path, executor: ThreadPoolExecutor, caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        box = await opened(tmp_path, executor, limit=3)
        for i in range(1, 6):
            box.add(f"evt_{i}", body(i))
        assert ids(box) == ["evt_3", "evt_4", "evt_5"]
        assert box.queues[0].dropped == 2 and box.size == 3
        await box.sync()
        await box.close()
        again = await opened(tmp_path, executor, limit=3)
        assert ids(again) == ["evt_3", "evt_4", "evt_5"]
        await again.close()
        smaller = await opened(tmp_path, executor, limit=1)  # the limit was lowered
        assert ids(smaller) == ["evt_5"] and smaller.queues[0].dropped == 2
        await smaller.close()

    with caplog.at_level(logging.ERROR, "ingest_server.outbox"):
        run(scenario())
    assert "dropped the 1 oldest undelivered events (2 dropped so far; limit 3)" in caplog.text
    assert "secret-in-query" not in caplog.text


def test_a_torn_tail_and_garbage_are_skipped_logged_and_repaired(
        tmp_path: Path, executor: ThreadPoolExecutor, caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        box = await opened(tmp_path, executor)
        for i in range(1, 4):
            box.add(f"evt_{i}", body(i))
        await box.sync()
        await box.close()
        events = tmp_path / url_key(URL) / EVENTS
        lines = events.read_bytes().splitlines(keepends=True)
        # a garbled middle line, then a crash mid-append
        events.write_bytes(lines[0] + b"\x00\x00garbage\n" + lines[1] + lines[2][:17])
        (tmp_path / url_key(URL) / ACKED).write_text("not a number")
        again = await opened(tmp_path, executor)
        assert ids(again) == ["evt_1", "evt_2"]
        assert again.queues[0].unreadable == 2
        again.add("evt_9", body(9))  # must not be glued to the torn line
        await again.sync()
        await again.close()
        third = await opened(tmp_path, executor)
        assert ids(third) == ["evt_1", "evt_2", "evt_9"]
        assert third.queues[0].unreadable == 0
        await third.close()
        for line in events.read_bytes().splitlines():
            json.loads(line)

    with caplog.at_level(logging.WARNING, "ingest_server.outbox"):
        run(scenario())
    assert "skipped 2 unreadable lines" in caplog.text
    assert "re-sending every queued event" in caplog.text


def test_a_long_backlog_is_compacted(tmp_path: Path, executor: ThreadPoolExecutor) -> None:
    async def scenario() -> None:
        box = await opened(tmp_path, executor, limit=5000)
        q = box.queues[0]
        for i in range(1, 1201):
            box.add(f"evt_{i}", body(i))
        await box.sync()
        while len(q.entries) > 10:
            q.settle(q.entries[0])
        box.changed()
        await box.sync()
        assert q.lines_on_disk == 10  # rewritten with the live events only
        await box.close()
        again = await opened(tmp_path, executor, limit=5000)
        assert ids(again) == [f"evt_{i}" for i in range(1191, 1201)]
        await again.close()

    run(scenario())
    assert len((tmp_path / url_key(URL) / EVENTS).read_bytes().splitlines()) == 10

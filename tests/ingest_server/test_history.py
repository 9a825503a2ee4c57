"""The connection history behind the web view's timeline (ingest_server/history.py,
docs/ui.md): entries per event, replay counts per connection, the bound per stream, and
histories dropped with their stream."""

from __future__ import annotations

import asyncio

from ingest_server.events import EventBus, EventKind, StreamEvent
from ingest_server.history import ConnectionHistory, EntryKind
from ingest_server.storage.interface import Gap


def ev(kind: EventKind, sid: str = "s1", t: float = 100.0, at: int = 0,
       **extra: object) -> StreamEvent:
    return StreamEvent(kind, sid, at, t, **extra)  # type: ignore[arg-type]


def test_entries_carry_replays_per_connection_gaps_and_the_end() -> None:
    history = ConnectionHistory(EventBus(), limit=50)
    for event in [
        ev(EventKind.OPENED, t=1),
        ev(EventKind.DISCONNECTED, t=2, at=1600, duplicates=0, close_code=1006),
        ev(EventKind.RESUMED, t=3, at=1600, duplicates=0),
        ev(EventKind.GAP, t=4, at=4800, gap=Gap(10, 12, 3200, 4800)),
        ev(EventKind.DISCONNECTED, t=5, at=6400, duplicates=7, close_code=1012),
        ev(EventKind.RESUMED, t=6, at=6400, duplicates=7),
        ev(EventKind.DISCONNECTED, t=7, at=8000, duplicates=9, close_code=1000),
        ev(EventKind.FINALIZED, t=7, at=8000, end_reason="ended"),
    ]:
        history.record(event)
    stream = history.of("s1")
    assert stream is not None and stream.dropped == 0
    got = [e.to_json() for e in stream.entries]
    assert [e["kind"] for e in got] == ["connected", "disconnected", "connected", "gap",
                                        "disconnected", "connected", "disconnected",
                                        "finalized"]
    assert got[0]["first"] is True and got[2]["first"] is False
    # The cumulative count on the bus becomes what each connection replayed (§4).
    assert [e["replayed"] for e in got if e["kind"] == "disconnected"] == [0, 7, 2]
    assert [e["close_code"] for e in got if e["kind"] == "disconnected"] == [1006, 1012, 1000]
    assert got[3] == {"kind": "gap", "time": 4, "at_sample": 4800, "start_sample": 3200,
                      "end_sample": 4800, "samples": 1600, "first_seq": 10, "end_seq": 12}
    assert got[-1]["end_reason"] == "ended"
    assert history.of("unknown") is None


def test_a_disconnect_without_its_connection_has_an_unknown_replay_count() -> None:
    history = ConnectionHistory(EventBus(), limit=50)  # e.g. the server restarted meanwhile
    history.record(ev(EventKind.DISCONNECTED, duplicates=5, close_code=1006))
    stream = history.of("s1")
    assert stream is not None and stream.entries[0].replayed is None


def test_each_stream_keeps_at_most_limit_entries_and_counts_the_dropped() -> None:
    history = ConnectionHistory(EventBus(), limit=4)
    for i in range(10):
        history.record(ev(EventKind.RESUMED if i % 2 == 0 else EventKind.DISCONNECTED,
                          t=i, duplicates=0))
    stream = history.of("s1")
    assert stream is not None
    assert [e.time for e in stream.entries] == [6, 7, 8, 9]
    assert stream.dropped == 6


def test_histories_of_streams_the_registry_deleted_are_dropped_at_the_next_open() -> None:
    registry_ids = {"a", "b"}
    history = ConnectionHistory(EventBus(), limit=10, streams=registry_ids)
    history.record(ev(EventKind.OPENED, "a"))
    history.record(ev(EventKind.OPENED, "b"))
    history.record(ev(EventKind.FINALIZED, "a", end_reason="expired"))
    assert len(history) == 2
    registry_ids.discard("a")  # retention deleted it
    registry_ids.add("c")
    history.record(ev(EventKind.OPENED, "c"))
    assert history.of("a") is None and len(history) == 2
    finalized = history.of("b")
    assert finalized is not None and finalized.entries[0].kind is EntryKind.CONNECTED


def test_it_follows_the_bus_until_stopped() -> None:
    async def run() -> None:
        bus = EventBus()
        history = ConnectionHistory(bus, limit=10)
        history.start()
        assert bus.subscribers == 1
        bus.publish(ev(EventKind.OPENED))
        bus.publish(ev(EventKind.STORAGE_FAILED, detail="fsync"))
        for _ in range(3):  # the consumer runs at the loop's next turns
            await asyncio.sleep(0)
        stream = history.of("s1")
        assert stream is not None
        assert [e.to_json().get("detail") for e in stream.entries] == [None, "fsync"]
        await history.stop()
        assert bus.subscribers == 0
        bus.publish(ev(EventKind.OPENED, "s2"))
        assert history.of("s2") is None

    asyncio.run(run())

"""Events across nodes (ingest_server/relay.py, events.py): the wire form round-trips,
relayed events reach only the subscriptions that asked for them, and a payload that is
not an event is counted and dropped. The relay runs over a stand-in for the shared store's
two event methods; over real NATS it is tests/e2e/test_cluster.py's discovery test."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

import pytest

from ingest_server.events import EventBus, EventKind, StreamEvent
from ingest_server.relay import EventRelay
from ingest_server.storage.journal import Gap

EVENTS = [
    StreamEvent(EventKind.OPENED, "s", 0, 1.5),
    StreamEvent(EventKind.GAP, "s", 640, 2.0, gap=Gap(2, 5, 640, 1600)),
    StreamEvent(EventKind.DISCONNECTED, "s", 1600, 2.5, duplicates=3, close_code=1006),
    StreamEvent(EventKind.STORAGE_FAILED, "s", 1600, 2.75, detail="sync"),
    StreamEvent(EventKind.FINALIZED, "s", 1600, 3.0, end_reason="expired"),
]


@pytest.mark.parametrize("event", EVENTS, ids=lambda e: e.kind.value)
def test_the_wire_form_round_trips(event: StreamEvent) -> None:
    assert StreamEvent.from_json(json.loads(json.dumps(event.to_json()))) == event


@pytest.mark.parametrize("body", [
    {"event": "opened", "stream_id": "s", "at_sample": 0},  # no time
    {"event": "nope", "stream_id": "s", "at_sample": 0, "time": 1},
    {"event": "opened", "stream_id": "s", "at_sample": "0", "time": 1},
    {"event": "opened", "stream_id": "s", "at_sample": True, "time": 1},
    {"event": "gap", "stream_id": "s", "at_sample": 0, "time": 1, "start_sample": 0},
])
def test_a_malformed_event_is_a_value_error(body: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        StreamEvent.from_json(body)


class SharedEvents:
    """The two SharedStorage methods the relay uses, as one node sees them."""

    def __init__(self) -> None:
        self.shared: list[bytes] = []
        self.deliver: Callable[[bytes], None] | None = None
        self.stopped = False

    def share_event(self, payload: bytes) -> None:
        self.shared.append(payload)

    def shared_events(self, on_payload: Callable[[bytes], None]) -> Callable[[], None]:
        self.deliver = on_payload

        def stop() -> None:
            self.stopped = True
        return stop


def test_local_events_go_out_and_remote_ones_reach_only_remote_subscribers() -> None:
    async def scenario() -> None:
        bus, store = EventBus(), SharedEvents()
        relay = EventRelay(bus, store)  # type: ignore[arg-type]  # the two methods it uses
        relay.start()
        local_only = bus.subscribe()  # webhooks, history
        everything = bus.subscribe(remote=True)  # discovery
        one_stream = bus.subscribe("s", remote=True)  # a listener

        bus.publish(EVENTS[0])
        assert [StreamEvent.from_json(json.loads(p)) for p in store.shared] == [EVENTS[0]]

        assert store.deliver is not None
        store.deliver(json.dumps(EVENTS[2].to_json()).encode())  # from another thread
        store.deliver(b"\xff not json")
        store.deliver(b"[1, 2]")
        await asyncio.sleep(0)  # call_soon_threadsafe: the next loop iteration
        await asyncio.sleep(0)

        assert local_only.pending() == [EVENTS[0]]
        assert everything.pending() == [EVENTS[0], EVENTS[2]]
        assert one_stream.pending() == [EVENTS[0], EVENTS[2]]
        assert (relay.sent, relay.received, relay.rejected) == (1, 1, 2)
        assert len(store.shared) == 1  # a relayed event is not sent on again

        # a node that lost the stream keeps its `disconnected` to itself (sessions.detach)
        bus.publish(EVENTS[2], share=False)
        assert local_only.pending() == [EVENTS[2]] and len(store.shared) == 1

        relay.stop()
        bus.publish(EVENTS[4])
        assert store.stopped and len(store.shared) == 1

    asyncio.run(scenario())

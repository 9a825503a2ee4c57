"""Stream events across the nodes of a shared store (docs/scale-out.md "Events across
nodes").

Each node publishes its own events (events.py) to the others through the store
(`SharedStorage.share_event`: core NATS, fire and forget) and delivers theirs to the local
subscribers that asked for remote events: `GET /v1/events` and live listeners. So a worker
pool subscribed to any node hears of a stream opened on any other, and a listener on node
A hears that the capture it follows on node B disconnected. Webhooks and the web view's
history take only local events: each webhook leaves once, from the node where it
happened.

Events are notifications, not audio: one lost in transit (published while the node is
disconnected from NATS: dropped rather than delivered late) costs that notification only,
exactly as a discovery client that reconnects misses what happened meanwhile
(protocol.md §11.4: its snapshot is the truth). A node that lost a stream to another
(fenced) keeps that stream's `disconnected` to itself (sessions.py `detach`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable

from .events import EventBus, StreamEvent
from .storage.interface import SharedStorage

log = logging.getLogger(__name__)

MAX_EVENT_BYTES = 64 * 1024  # far above any real event (a few hundred bytes)


class EventRelay:
    def __init__(self, bus: EventBus, shared: SharedStorage) -> None:
        self._bus = bus
        self._shared = shared
        self._stop: Callable[[], None] | None = None
        self.sent = 0
        self.received = 0
        self.rejected = 0  # payloads another node sent that were not events

    def start(self) -> None:
        """On the server's loop: from here on events go out and come in."""
        loop = asyncio.get_running_loop()

        def arrived(payload: bytes) -> None:  # on the store's thread
            with contextlib.suppress(RuntimeError):  # the loop is closed: we are stopping
                loop.call_soon_threadsafe(self._deliver, payload)

        self._stop = self._shared.shared_events(arrived)
        self._bus.relay = self._send

    def stop(self) -> None:
        self._bus.relay = None
        if self._stop is not None:
            self._stop()
            self._stop = None

    def _send(self, event: StreamEvent) -> None:
        try:
            self._shared.share_event(json.dumps(event.to_json(),
                                                separators=(",", ":")).encode())
        except Exception as e:  # never let a notification break the path that published it
            log.warning("cannot relay the %s event of %s to other nodes: %s",
                        event.kind.value, event.stream_id, type(e).__name__)
            return
        self.sent += 1

    def _deliver(self, payload: bytes) -> None:
        try:
            if len(payload) > MAX_EVENT_BYTES:
                raise ValueError(f"{len(payload)} bytes")
            body = json.loads(payload)
            if not isinstance(body, dict):
                raise ValueError("not a JSON object")
            event = StreamEvent.from_json(body)
        except (ValueError, RecursionError) as e:  # JSONDecodeError, UnicodeDecodeError:
            # ValueErrors; RecursionError: JSON nested deeper than the parser's stack
            self.rejected += 1
            log.warning("ignored an event relayed by another node: %s", e)
            return
        self.received += 1
        self._bus.publish_remote(event)

"""Discovery: `GET /v1/events`, the event bus as Server-Sent Events (docs/protocol.md §11.4).

Why SSE and not a WebSocket: discovery is one-way (the server tells, the worker listens),
SSE is plain HTTP (curl -N shows it, any HTTP proxy passes it, the bearer header works as for
the rest of the REST API) and its format carries what a worker needs to reconnect
(`retry:`). A worker pool that needs more than announcements opens a WebSocket listener
(§11) per stream.

The response starts with one `snapshot` event naming every open stream (subscribed first,
so nothing that happens meanwhile is missed: an event may repeat what the snapshot says,
never the other way round), then one `stream` event per bus event, and a comment every
KEEPALIVE seconds so idle proxies keep it open. A subscriber that falls DEFAULT_LIMIT events
behind (it stopped reading) gets an `overflow` event, if it can still take one, and the
response ends: it reconnects and starts from a new snapshot.

With a shared store the feed is cluster-wide (relay.py): the snapshot lists the open streams
of the whole store (its `connected` is true for a capture on this node, as in REST), and
the events of every node follow.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable

from .events import EventBus
from .sessions import Registry
from .storage.interface import Position, StreamMeta, StreamState

# A shared store's listing (SharedStorage.list_streams, run off the loop by the caller)
ListShared = Callable[[], Awaitable[list[tuple[StreamMeta, Position]]]]

KEEPALIVE = 15.0
RETRY_MS = 1000


def _sse(event: str, body: object) -> bytes:
    return f"event: {event}\ndata: {json.dumps(body, separators=(',', ':'))}\n\n".encode()


def snapshot(registry: Registry) -> dict[str, object]:
    streams = [{"stream_id": s.stream_id, "at_sample": s.durable.next_sample,
                "connected": s.owner is not None}
               for s in sorted(registry.streams.values(), key=lambda s: s.stream_id)
               if not s.finalized]
    return {"type": "snapshot", "streams": streams}


async def shared_snapshot(registry: Registry, list_shared: ListShared) -> dict[str, object]:
    listed = await list_shared()
    streams = []
    for meta, position in sorted(listed, key=lambda item: item[0].stream_id):
        if meta.state is not StreamState.OPEN:
            continue
        local = registry.streams.get(meta.stream_id)
        streams.append({"stream_id": meta.stream_id, "at_sample": position.next_sample,
                        "connected": local is not None and local.owner is not None})
    return {"type": "snapshot", "streams": streams}


async def event_stream(registry: Registry, bus: EventBus, keepalive: float = KEEPALIVE,
                       list_shared: ListShared | None = None) -> AsyncIterator[bytes]:
    with bus.subscribe(remote=True) as sub:  # every node's streams (relay.py)
        yield f"retry: {RETRY_MS}\n\n".encode()
        yield _sse("snapshot", snapshot(registry) if list_shared is None
                   else await shared_snapshot(registry, list_shared))
        while True:
            changed = sub.changed()
            try:
                await asyncio.wait_for(asyncio.shield(changed), keepalive)
            except TimeoutError:
                yield b": keepalive\n\n"
                continue
            for event in sub.pending():
                yield _sse("stream", event.to_json())
            if sub.ended:  # the server is stopping: end the response (clients reconnect)
                return
            if sub.overflowed:
                yield _sse("overflow", {"type": "overflow", "reason": "subscriber too slow"})
                return

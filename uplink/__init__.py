"""The uplink: bounded ring buffer and the reconnecting, resuming WebSocket client.

The public API for applications is the embedding API (docs/embedding.md)::

    from uplink import Uplink, AsyncUplink

and, to consume a stream while it is captured (docs/listeners.md)::

    from uplink.listen import listen, ChunkKind

(`listen` is imported from its module: `uplink.listen` names the module itself, which
`python -m uplink.listen` runs as the `echopanel-listen` command.)

It is loaded lazily (PEP 562): the ingest server imports only the protocol modules
(`uplink.wire`, `uplink.audio`), and importing those must not pull in the client, numpy or
websockets.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from uplink.core import ConnectionState, Phase
    from uplink.embed import AsyncUplink, Summary, Uplink, UplinkClosed, UplinkFailed, new_stream_id
    from uplink.listen import Chunk, ChunkKind, ListenConfig, ListenError, ListenStream

_HOMES = {
    "AsyncUplink": "uplink.embed",
    "Chunk": "uplink.listen",
    "ChunkKind": "uplink.listen",
    "ListenConfig": "uplink.listen",
    "ListenError": "uplink.listen",
    "ListenStream": "uplink.listen",
    "ConnectionState": "uplink.core",
    "Phase": "uplink.core",
    "Summary": "uplink.embed",
    "Uplink": "uplink.embed",
    "UplinkClosed": "uplink.embed",
    "UplinkFailed": "uplink.embed",
    "new_stream_id": "uplink.embed",
}
__all__ = [
    "AsyncUplink",
    "Chunk",
    "ChunkKind",
    "ListenConfig",
    "ListenError",
    "ListenStream",
    "ConnectionState",
    "Phase",
    "Summary",
    "Uplink",
    "UplinkClosed",
    "UplinkFailed",
    "new_stream_id",
]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'uplink' has no attribute {name!r}")
    return getattr(importlib.import_module(home), name)

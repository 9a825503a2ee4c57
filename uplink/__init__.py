"""The uplink: bounded ring buffer and the reconnecting, resuming WebSocket client.

The public API for applications is the embedding API (docs/embedding.md)::

    from uplink import Uplink, AsyncUplink

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

_HOMES = {
    "AsyncUplink": "uplink.embed",
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

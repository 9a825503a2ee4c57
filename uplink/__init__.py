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
    from uplink.embed import AsyncUplink, Summary, Uplink, UplinkClosed, UplinkFailed, new_stream_id

__all__ = ["AsyncUplink", "Summary", "Uplink", "UplinkClosed", "UplinkFailed", "new_stream_id"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(importlib.import_module("uplink.embed"), name)
    raise AttributeError(f"module 'uplink' has no attribute {name!r}")

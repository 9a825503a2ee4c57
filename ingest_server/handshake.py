"""The first message of every connection: a text `hello` (docs/protocol.md §2)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from uplink.wire import CloseCode, Hello, WireError, decode_control


def parse_hello(msg: Mapping[str, Any]) -> Hello:
    """The first message must be a valid text hello (§2): else 4400 (1003 for a version or
    format we do not support, 1009 for an oversized message, as the codec decides)."""
    text = msg.get("text")
    if not isinstance(text, str):
        raise WireError("first message must be a text hello", CloseCode.BAD_HANDSHAKE)
    try:
        ctl = decode_control(text)
    except WireError as e:
        if e.close_code == CloseCode.INVALID_PAYLOAD:
            raise WireError(f"bad hello: {e}", CloseCode.BAD_HANDSHAKE) from e
        raise
    if not isinstance(ctl, Hello):
        raise WireError(f"first message must be hello, not {type(ctl).__name__.lower()}",
                        CloseCode.BAD_HANDSHAKE)
    return ctl

"""The real ingest server as a subprocess on loopback (see tools/ingest_process.py), plus a fixture.

    with IngestServer(tmp_path / "data") as server:      # waits for the listening line
        ws = websockets.sync.client.connect(server.url)   # ws://127.0.0.1:PORT/v1/stream
        server.kill(); server.start()                      # SIGKILL, then same port again
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tools.ingest_process import LISTENING_PREFIX, IngestServer, ServerError, free_port

__all__ = ["LISTENING_PREFIX", "IngestServer", "ServerError", "free_port", "ingest_server"]


@pytest.fixture
def ingest_server(tmp_path: Path) -> Iterator[IngestServer]:
    """A running server with a fresh data dir (tmp_path / "data")."""
    with IngestServer(tmp_path / "data") as server:
        yield server

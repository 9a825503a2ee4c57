"""The real ingest server as a subprocess on loopback (tools/ingest_process.py), and the one
server fixture of the test suite.

    with IngestServer(tmp_path / "data") as server:      # waits for the listening line
        ws = websockets.sync.client.connect(server.url)   # ws://127.0.0.1:PORT/v1/stream
        server.kill(); server.start()                      # SIGKILL, then same port again

`server` (below) is a fresh server with a fresh data dir for each test; a test directory
that shares one server per module with its own flags makes its own with `server_fixture`
(tests/ingest_server/conftest.py). An in-process server, for tests that inject a clock or a
storage fault, is tests/ingest_server/harness.py's `in_process`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any, Literal

import pytest

from tools.ingest_process import LISTENING_PREFIX, IngestServer, ServerError, free_port

__all__ = ["LISTENING_PREFIX", "IngestServer", "ServerError", "free_port", "server",
           "server_fixture"]

Scope = Literal["function", "module", "session"]


def server_fixture(*, scope: Scope = "function", args: Sequence[str] = ()) -> Callable[..., Any]:
    """A pytest fixture named `server`: a running server started with `args`, shared by
    everything in `scope`. Its data dir is the test's `tmp_path / "data"` for a
    function-scoped server, a fresh temporary directory otherwise."""

    @pytest.fixture(scope=scope, name="server")
    def _server(request: pytest.FixtureRequest) -> Iterator[IngestServer]:
        if scope == "function":
            data = request.getfixturevalue("tmp_path") / "data"
        else:
            data = request.getfixturevalue("tmp_path_factory").mktemp("ingest") / "data"
        with IngestServer(data, args=list(args)) as srv:
            yield srv

    return _server


server = server_fixture()

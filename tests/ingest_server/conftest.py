"""One real server (subprocess, loopback) shared by a test module; tests use distinct stream
ids. Short handshake / idle timeouts: what a timeout does is tested on the connection core
(test_core.py), without waiting."""

from __future__ import annotations

from tests.support.server import server_fixture

SHARED_ARGS = ["--handshake-timeout", "1", "--idle-timeout", "2", "--profile", "development"]

server = server_fixture(scope="module", args=SHARED_ARGS)

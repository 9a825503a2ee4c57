"""One real server (subprocess, loopback) shared by a test module; tests use distinct stream
ids. Short handshake / idle timeouts keep the timeout tests fast without sleeping."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.server import IngestServer

SHARED_ARGS = ["--handshake-timeout", "1", "--idle-timeout", "2", "--profile", "development"]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[IngestServer]:
    with IngestServer(tmp_path_factory.mktemp("ingest") / "data", args=SHARED_ARGS) as srv:
        yield srv

"""Fixtures for the whole suite."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest


@pytest.fixture(scope="session", autouse=True)
def private_user_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Microphone capture spools under $XDG_DATA_HOME by default (docs/spool.md): point it,
    for this process and every capture it starts, at a temporary directory, so no test
    writes into the home directory of whoever runs the suite."""
    saved = os.environ.get("XDG_DATA_HOME")
    os.environ["XDG_DATA_HOME"] = str(tmp_path_factory.mktemp("xdg-data"))
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("XDG_DATA_HOME", None)
        else:
            os.environ["XDG_DATA_HOME"] = saved

"""echopanel-listen the way a newcomer meets it: a wrong --from, and no server running."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import pytest

from tools.ingest_process import REPO_ROOT, free_port
from uplink.listen import ListenConfig, ListenError, ListenStream
from uplink.listen_cli import parse_start
from uplink.policy import BackoffConfig


def test_a_wrong_from_is_a_usage_error_before_any_connection() -> None:
    proc = subprocess.run([sys.executable, "-m", "uplink.listen", "--server",
                           f"ws://127.0.0.1:{free_port()}", "--stream-id", "x",
                           "--from", "banana"], capture_output=True, text=True, timeout=30,
                          cwd=REPO_ROOT)
    assert proc.returncode == 2
    assert "--from 'banana'" in proc.stderr and "12.5s" in proc.stderr


@pytest.mark.parametrize("text,value", [("start", "start"), ("live", "live"), ("480", 480),
                                        ("12.5s", "12.5s"), ("3s", "3s")])
def test_from_accepts_what_the_protocol_does(text: str, value: int | str) -> None:
    assert parse_start(text) == value


def test_no_server_gives_up_after_the_attempt_budget_saying_where() -> None:
    url = f"ws://127.0.0.1:{free_port()}"  # nothing listens there
    config = ListenConfig(backoff=BackoffConfig(base=0.01, cap=0.02), max_initial_attempts=3)

    async def run() -> None:
        async for _ in ListenStream(url, "x", config=config):
            pass

    with pytest.raises(ListenError, match=rf"could not connect to {url} after 3 attempts"):
        asyncio.run(asyncio.wait_for(run(), 30))

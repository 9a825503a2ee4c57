"""One server per data dir (docs/operations.md "One server per data dir"): a second server
on the same dir refuses to start, naming the holder's pid, and never touches a stream; a
SIGKILLed server's lock dies with it, so its successor starts at once. Real processes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from ingest_server.storage.lock import LOCK_NAME, DataDirBusy, DataDirLock
from tests.support.server import IngestServer, free_port
from tools.ingest_process import REPO_ROOT

from .client import FRAME, Client, frames
from .harness import snapshot

ARGS = ["--profile", "development"]


def start_second_server(data_dir: Path) -> subprocess.CompletedProcess[str]:
    """What an operator would type; short session timeout, as in the issue's reproduction:
    before the lock, this server expired the first one's live stream within seconds."""
    cmd = [sys.executable, "-m", "ingest_server", "--port", str(free_port()),
           "--data-dir", str(data_dir), "--session-timeout", "0.2"]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=REPO_ROOT, timeout=30,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})


def test_a_second_server_on_the_same_data_dir_refuses_and_the_first_keeps_serving(
    tmp_path: Path,
) -> None:
    f = frames(6, seed=70)
    with IngestServer(tmp_path / "data", args=ARGS) as first:
        assert first.proc is not None
        with Client(first.url) as resting:  # an open stream, disconnected: resumable
            w_resting = resting.hello("lock-resting")
            resting.stream(0, f[:3])
        with Client(first.url) as live:  # and a live one, connected throughout
            live.hello("lock-live")
            live.stream(0, f[:3])
            before = snapshot(first.data_dir)

            second = start_second_server(first.data_dir)

            assert second.returncode == 2, second
            assert second.stdout == ""  # never printed a listening line
            lines = second.stderr.strip().splitlines()
            assert len(lines) == 1, second.stderr
            assert f"pid {first.proc.pid}" in lines[0] and str(first.data_dir) in lines[0]
            assert lines[0].startswith("echopanel-ingest: ")
            assert snapshot(first.data_dir) == before  # nothing recovered, expired, deleted

            live.stream(3, f[3:])  # the first server keeps serving the live stream
            live.end(6, 6 * FRAME)
        with Client(first.url) as resumed:
            assert resumed.hello("lock-resting", resume=w_resting).next_seq == 3
            resumed.stream(3, f[3:])
            resumed.end(6, 6 * FRAME)
        for sid in ("lock-live", "lock-resting"):
            wav = httpx.get(f"{first.http}/v1/streams/{sid}/audio.wav", timeout=10)
            assert wav.status_code == 200 and wav.content.endswith(b"".join(f))


def test_a_killed_server_never_blocks_its_successor(tmp_path: Path) -> None:
    server = IngestServer(tmp_path / "data", args=ARGS).start()
    try:
        assert server.proc is not None
        first_pid = server.proc.pid
        lock_file = server.data_dir / LOCK_NAME
        assert lock_file.read_text().strip() == str(first_pid)
        server.kill()  # SIGKILL: no shutdown code runs, the kernel drops the lock
        server.start()  # at once, same dir, same port
        assert server.proc.pid != first_pid
        assert lock_file.read_text().strip() == str(server.proc.pid)
        with Client(server.url) as c:
            c.hello("after-kill")
            c.stream(0, frames(2, seed=71))
            c.end(2, 2 * FRAME)
    finally:
        server.stop()
    assert lock_file.read_text() == ""  # a clean shutdown leaves no pid behind


def test_the_lock_is_exclusive_and_released(tmp_path: Path) -> None:
    first, second = DataDirLock(tmp_path / "d"), DataDirLock(tmp_path / "d")
    first.acquire()
    with pytest.raises(DataDirBusy, match=f"pid {os.getpid()}"):
        second.acquire()  # a second open file description: refused even in one process
    assert not second.held
    first.release()
    second.acquire()
    assert second.held
    second.release()
    second.release()  # idempotent

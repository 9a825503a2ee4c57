"""`--on-event CMD` (capture/hooks.py, docs/notifications.md "Event hooks"), with real
processes: a hook that appends its stdin to a file, one that fails, one that hangs."""

from __future__ import annotations

import json
import logging
import os
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from capture.hooks import (
    STDERR_LOG_CHARS,
    HookOutcome,
    HookResult,
    HookRunner,
    parse_hook_command,
)

APPEND = """\
import sys
with open(sys.argv[1], "a") as out:
    out.write(sys.stdin.read())
"""
FAIL = """\
import sys
sys.stdin.read()
sys.stderr.write("hook broke: " + "x" * 5000)
sys.exit(3)
"""
WAIT_FOR_RELEASE = """\
import os, sys, time
sys.stdin.read()
open(sys.argv[1] + ".started", "a").close()
deadline = time.monotonic() + 20
while not os.path.exists(sys.argv[1] + ".release") and time.monotonic() < deadline:
    time.sleep(0.01)
"""
SHOW_ENV = """\
import json, os, sys
sys.stdin.read()
with open(sys.argv[1], "w") as out:
    json.dump({k: os.environ.get(k) for k in ("ECHOPANEL_UPLINK_TOKEN", "ECHOPANEL_TOKEN",
                                              "HOOK_TEST_KEEP")}, out)
"""


def script(tmp_path: Path, name: str, text: str, *args: Path) -> str:
    path = tmp_path / f"{name}.py"
    path.write_text(text)
    return shlex.join([sys.executable, str(path), *map(str, args)])


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def record(kind: str, **fields: Any) -> dict[str, Any]:
    return {"t": 1.5, "time": "2026-11-30T20:00:00.000Z", "stream_id": "s-1", "type": kind, **fields}


def test_each_state_change_runs_the_hook_with_one_json_record_on_stdin(tmp_path: Path) -> None:
    out = tmp_path / "events.jsonl"
    results: list[HookResult] = []
    runner = HookRunner(script(tmp_path, "append", APPEND, out), on_result=results.append)
    runner.start()
    sent = [record("state", state="connecting", attempt=1, reason=""),
            record("status", state="connected"),  # the per-second snapshot: not a change
            record("state", state="reconnecting", attempt=2, reason="connection reset"),
            record("event", message="microphone 'USB' lost (x); reopening in 0.50 s (attempt 1)"),
            record("exit", exit_status=0, ok=True)]
    for r in sent:
        runner.record(r)
    stats = runner.close(10)
    lines = out.read_text().splitlines()
    assert [json.loads(line) for line in lines] == [r for r in sent if r["type"] != "status"]
    assert stats.ran == 4 and stats.failed == stats.timed_out == stats.dropped == 0
    assert [r.outcome for r in results] == [HookOutcome.OK] * 4
    assert [r.record_type for r in results] == ["state", "state", "event", "exit"]


def test_a_failing_hook_is_logged_with_its_status_and_truncated_stderr(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    results: list[HookResult] = []
    runner = HookRunner(script(tmp_path, "fail", FAIL), on_result=results.append)
    runner.start()
    with caplog.at_level(logging.INFO, logger="capture.hooks"):
        runner.record(record("state", state="failed", reason="gave up"))
        stats = runner.close(10)
    assert stats.ran == 1 and stats.failed == 1
    (result,) = results
    assert result.outcome is HookOutcome.FAILED and result.returncode == 3
    assert result.stderr.startswith("hook broke: xxx")
    assert len(result.stderr) == STDERR_LOG_CHARS + 1 and result.stderr.endswith("…")
    (line,) = [r for r in caplog.records if r.name == "capture.hooks"]
    assert line.levelno == logging.WARNING
    assert "exited with status 3" in line.getMessage() and "hook broke" in line.getMessage()


def test_a_hanging_hook_and_its_children_are_killed_after_the_timeout(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    # a shell that starts a child and waits: both must die with the hook
    hang = f"sh -c 'sleep 60 & echo $! > {pids}; wait'"
    results: list[HookResult] = []
    runner = HookRunner(hang, timeout=0.5, on_result=results.append)
    runner.start()
    started = time.monotonic()
    runner.record(record("state", state="reconnecting"))
    wait_until(lambda: len(results) == 1)
    assert time.monotonic() - started < 5
    assert results[0].outcome is HookOutcome.TIMED_OUT
    child = int(pids.read_text())

    def gone() -> bool:
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            return True
        # killed but not yet reaped by init: a zombie counts as gone
        stat = Path(f"/proc/{child}/stat")
        return stat.exists() and stat.read_text().split(") ")[1].startswith("Z")

    wait_until(gone)
    stats = runner.close(5)
    assert stats.timed_out == 1 and stats.ran == 1


def test_a_full_queue_drops_records_and_counts_them_never_blocking(tmp_path: Path) -> None:
    flag = tmp_path / "hook"
    runner = HookRunner(script(tmp_path, "wait", WAIT_FOR_RELEASE, flag), queue_size=2)
    runner.start()
    runner.record(record("state", state="connecting"))
    wait_until(lambda: Path(f"{flag}.started").exists())  # the worker is busy with it
    started = time.monotonic()
    for i in range(9):
        runner.record(record("event", message=f"e{i}"))
    assert time.monotonic() - started < 0.5
    assert runner.stats().dropped == 7  # two fit in the queue
    Path(f"{flag}.release").touch()
    stats = runner.close(20)
    assert stats.ran == 3 and stats.dropped == 7


def test_the_hook_does_not_inherit_the_capture_token(tmp_path: Path) -> None:
    out = tmp_path / "env.json"
    environ = {**os.environ, "ECHOPANEL_UPLINK_TOKEN": "secret-1", "ECHOPANEL_TOKEN": "secret-2",
               "HOOK_TEST_KEEP": "kept"}
    runner = HookRunner(script(tmp_path, "env", SHOW_ENV, out), environ=environ)
    runner.start()
    runner.record(record("exit", exit_status=0))
    runner.close(10)
    assert json.loads(out.read_text()) == {"ECHOPANEL_UPLINK_TOKEN": None, "ECHOPANEL_TOKEN": None,
                                           "HOOK_TEST_KEEP": "kept"}


def test_a_command_that_cannot_run_is_counted_and_logged(tmp_path: Path) -> None:
    results: list[HookResult] = []
    runner = HookRunner([str(tmp_path / "no-such-hook")], on_result=results.append)
    runner.start()
    runner.record(record("state", state="connected"))
    stats = runner.close(10)
    assert stats.failed == 1 and results[0].outcome is HookOutcome.NOT_STARTED


def test_close_past_its_timeout_kills_the_running_hook_and_drops_the_rest(tmp_path: Path) -> None:
    runner = HookRunner("sleep 60", timeout=30)
    runner.start()
    for _ in range(3):
        runner.record(record("state", state="connecting"))
    started = time.monotonic()
    stats = runner.close(0.3)
    assert time.monotonic() - started < 5
    assert stats.ran == 1 and stats.timed_out == 1 and stats.dropped == 2


def test_the_command_is_split_like_a_shell_would_without_a_shell() -> None:
    assert parse_hook_command("notify --to 'a b' \"c d\" $HOME") == ["notify", "--to", "a b", "c d",
                                                                      "$HOME"]
    with pytest.raises(ValueError, match="needs a command"):
        parse_hook_command("   ")
    with pytest.raises(ValueError, match="quotation"):
        parse_hook_command("notify 'unclosed")

"""`echopanel-capture --notify` and `--on-event` as wired in the CLI (docs/notifications.md):
a real capture process, a real session bus with a recording notification server, real hook
processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from capture.wav_source import bundled_recording
from tests.capture.dbus_session import RecordingNotificationServer, SessionBus
from tools.ingest_process import IngestServer, free_port


def capture(*args: str, env: dict[str, str] | None = None,
            timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "capture", *args], capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **(env or {})})


def test_on_event_hands_every_state_change_to_the_hook(tmp_path: Path) -> None:
    out = tmp_path / "events.jsonl"
    hook = tmp_path / "hook.py"
    hook.write_text(f"import sys\nopen({str(out)!r}, 'a').write(sys.stdin.read().strip() + '\\n')\n")
    with IngestServer(tmp_path / "data") as server:
        proc = capture("--server", server.url, "--stream-id", "hooked", "--input",
                       str(bundled_recording()), "--speed", "0", "--quiet",
                       "--on-event", f"{sys.executable} {hook}")
    assert proc.returncode == 0, proc.stderr
    records = [json.loads(line) for line in out.read_text().splitlines()]
    states = [r["state"] for r in records if r["type"] == "state"]
    assert states[:2] == ["connecting", "connected"] and states[-1] == "done"
    assert records[-1]["type"] == "exit" and records[-1]["exit_status"] == 0
    assert {r["stream_id"] for r in records} == {"hooked"}


def test_a_failing_hook_is_reported_and_costs_nothing_else(tmp_path: Path) -> None:
    with IngestServer(tmp_path / "data") as server:
        proc = capture("--server", server.url, "--stream-id", "hook-fails", "--input",
                       str(bundled_recording()), "--speed", "0", "--quiet",
                       "--on-event", "false")
    assert proc.returncode == 0, proc.stderr
    assert "--on-event:" in proc.stderr and "failed" in proc.stderr


def test_notify_tells_the_desktop_that_the_capture_gave_up_and_where_the_audio_is(
        tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    kept = tmp_path / "kept.wav"
    with SessionBus(tmp_path) as bus, RecordingNotificationServer(bus.address) as desktop:
        proc = capture("--server", f"ws://127.0.0.1:{port}", "--stream-id", "told",
                       "--input", str(bundled_recording()), "--speed", "0", "--quiet",
                       "--notify", "--undelivered", str(kept), "--max-attempts", "2",
                       "--backoff-base", "0.05",
                       env={"DBUS_SESSION_BUS_ADDRESS": bus.address})
        received = desktop.wait_for(1, timeout=10)
    assert proc.returncode == 1, proc.stderr
    gave_up = [n for n in received if "gave up" in n.summary.lower()]
    assert len(gave_up) == 1, received
    assert str(kept) in gave_up[0].body


def test_no_notify_sends_nothing(tmp_path: Path) -> None:
    with SessionBus(tmp_path) as bus, RecordingNotificationServer(bus.address) as desktop, \
            IngestServer(tmp_path / "data") as server:
        proc = capture("--server", server.url, "--stream-id", "quiet-desktop", "--input",
                       str(bundled_recording()), "--speed", "0", "--quiet", "--no-notify",
                       env={"DBUS_SESSION_BUS_ADDRESS": bus.address})
        assert proc.returncode == 0, proc.stderr
        assert desktop.wait_for(1, timeout=0.5) == []

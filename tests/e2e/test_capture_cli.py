"""`echopanel-capture` as a user runs it, against the real server (issue 10, capture side).

- a file never drops by default, at any --speed, through a server crash and restart;
- a run that lost audio exits 4 with one line saying what was lost;
- after a fatal error the audio that was not delivered is kept in a WAV that lines up with
  the stream at the sample the error line names;
- the tee survives a SIGKILL of the capture as a readable WAV;
- --stream-id is checked before connecting; --duration counts audio; --status-json - owns
  stderr; --version.

Each capture reports through `--status-json -`, so the test follows it by parsing stderr
(which also checks that nothing else is ever written there).
"""

from __future__ import annotations

import json
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import wave
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from capture.wavfile import read_wav_info
from tests.e2e.conftest import stored_equals_source, write_clip
from tools.ingest_process import REPO_ROOT, IngestServer
from uplink.wire import STREAM_ID_PATTERN

RATE = 16_000
FAST_RETRY = ["--backoff-base", "0.05", "--backoff-cap", "0.2", "--breaker-failures", "1000"]
Record = dict[str, Any]


class Capture:
    """A capture subprocess whose stderr JSON records are collected as they arrive."""

    def __init__(self, *args: str, cwd: Path = REPO_ROOT) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "capture", "--status-json", "-", *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=cwd,
        )
        self.records: list[Record] = []
        self.not_json: list[str] = []
        self._changed = threading.Condition()
        self._stdout: queue.Queue[str] = queue.Queue()
        self._stderr_closed = False
        threading.Thread(target=self._read_stderr, daemon=True).start()
        threading.Thread(target=self._read_stdout, daemon=True).start()

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self._changed:
                try:
                    self.records.append(json.loads(line))
                except ValueError:
                    self.not_json.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._stderr_closed = True
            self._changed.notify_all()

    def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._stdout.put(line.rstrip("\n"))

    def wait_for(self, predicate: Any, what: str, timeout: float = 20.0) -> Record:
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for record in self.records:
                    if predicate(record):
                        return record
                left = deadline - time.monotonic()
                if left <= 0 or self._stderr_closed:
                    raise AssertionError(f"no {what} (exit status {self.proc.poll()}); last "
                                         f"records: {self.records[-5:]}, stderr: {self.not_json}")
                self._changed.wait(left)

    def finish(self, timeout: float = 60.0) -> tuple[int, list[str]]:
        code = self.proc.wait(timeout)
        with self._changed:
            self._changed.wait_for(lambda: self._stderr_closed, 5.0)
        lines = []
        while not self._stdout.empty():
            lines.append(self._stdout.get())
        return code, lines


def state_is(name: str) -> Any:
    return lambda r: r["type"] == "state" and r["state"] == name


def stored(server: IngestServer, stream_id: str) -> Path:
    return server.data_dir / "streams" / stream_id / "audio.wav"


def details(server: IngestServer, stream_id: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"{server.http}/v1/streams/{stream_id}") as resp:
        result: dict[str, Any] = json.load(resp)
        return result


def crash_until_the_buffer_is_full(server: IngestServer, cap: Capture) -> None:
    """SIGKILL the server mid-stream, keep it down until the capture's 1 s ring is full
    (a file at --speed 20 fills it in 50 ms), then start it again on the same port."""
    cap.wait_for(lambda r: r["type"] == "status" and r["acked_seconds"] > 0, "audio acked")
    server.kill()
    cap.wait_for(lambda r: r["type"] == "status" and r["state"] != "connected"
                 and r["buffer_fill"] >= 0.99, "a full buffer while the server is down")
    server.start()


def test_a_file_at_speed_never_drops_through_a_server_crash(tmp_path: Path) -> None:
    source = write_clip(tmp_path / "source.wav", RATE, 1, "PCM_16", 30.0)
    with IngestServer(tmp_path / "data") as server:
        cap = Capture("--server", server.url, "--stream-id", "fast-file", "--input", str(source),
                      "--speed", "20", "--buffer-seconds", "1", *FAST_RETRY)
        crash_until_the_buffer_is_full(server, cap)
        code, out = cap.finish()
        assert code == 0, (out, cap.not_json)
        stored_equals_source(stored(server, "fast-file"), source)
        assert details(server, "fast-file")["gaps"] == []
    assert "block when full" in "\n".join(out)
    [done] = [line for line in out if ": done:" in line]
    assert re.search(r"1500 frames \(30\.00 s of audio\) delivered .* 0 frames dropped", done)
    exit_record = cap.records[-1]
    assert exit_record["type"] == "exit" and exit_record["exit_status"] == 0
    assert exit_record["frames_dropped"] == 0 and exit_record["seconds_lost"] == 0
    assert_attempts_are_consistent(cap.records)


def assert_attempts_are_consistent(records: list[Record]) -> None:
    """`attempt` is the connection try in progress (or, reconnecting, the next one): a
    `reconnecting` announces try N, `connecting` starts it, `connected` or the next
    `reconnecting` (N + 1) ends it; a connection resets the count to 1."""
    states = [(r["state"], r["attempt"]) for r in records if r["type"] == "state"]
    assert states[0] == ("connecting", 1)
    expected_next = 1
    for (name, attempt), (prev_name, prev_attempt) in zip(states[1:], states, strict=False):
        if name == "connecting":
            assert attempt == expected_next, states
            expected_next = attempt + 1
        elif name == "connected":
            assert prev_name == "connecting" and attempt == prev_attempt, states
            expected_next = 1
        elif name == "reconnecting":
            assert attempt == expected_next, states
    assert any(name == "reconnecting" for name, _ in states)
    status_attempts = {r["attempt"] for r in records if r["type"] == "status"}
    assert status_attempts <= {a for _, a in states}


def test_a_run_that_dropped_audio_exits_4_and_says_what_was_lost(tmp_path: Path) -> None:
    source = write_clip(tmp_path / "source.wav", RATE, 1, "PCM_16", 30.0)
    with IngestServer(tmp_path / "data") as server:
        cap = Capture("--server", server.url, "--stream-id", "dropping", "--input", str(source),
                      "--speed", "20", "--buffer-seconds", "1", "--overflow", "drop-oldest",
                      *FAST_RETRY)
        crash_until_the_buffer_is_full(server, cap)
        code, out = cap.finish()
        gaps = details(server, "dropping")["gaps"]
    assert code == 4, (out, cap.not_json)
    lost = sum(g["end_sample"] - g["start_sample"] for g in gaps)
    assert lost > 0
    exit_record = cap.records[-1]
    assert exit_record["exit_status"] == 4
    assert exit_record["seconds_lost"] == round(lost / RATE, 3)
    frames = exit_record["frames_dropped"]
    assert frames * 320 == lost
    [warning] = [line for line in out if "audio was lost" in line]
    assert f"{lost / RATE:.2f} s in all" in warning and f"{frames} frames" in warning
    [done] = [line for line in out if ": done:" in line]
    assert f"{1500 - frames} frames" in done and f"{frames} frames dropped" in done


def test_a_fatal_error_keeps_the_undelivered_audio_where_the_error_line_says(tmp_path: Path) -> None:
    source = write_clip(tmp_path / "source.wav", RATE, 1, "PCM_16", 10.0, seed=3)
    tee = tmp_path / "tee.wav"
    with IngestServer(tmp_path / "data") as server:
        cap = Capture("--server", server.url, "--stream-id", "revoked", "--input", str(source),
                      "--speed", "4", "--tee", str(tee), *FAST_RETRY)
        cap.wait_for(lambda r: r["type"] == "status" and r["acked_seconds"] >= 1.0, "1 s acked")
        server.stop()
        server.args = ["--token", "a-token-this-capture-does-not-have"]
        server.start()  # the resume is refused (401/403): fatal, nothing more is delivered
        code, out = cap.finish()
    assert code == 1, (out, cap.not_json)
    error = out[-1]
    m = re.search(r"not delivered: kept in (\S+) \(starts at sample (\d+), ", error)
    assert m is not None, error
    kept, start = Path(m.group(1)), int(m.group(2))
    assert kept.parent == tmp_path and kept.name.startswith("tee.undelivered-revoked-from-")
    exit_record = cap.records[-1]
    assert exit_record["undelivered_path"] == str(kept)
    assert exit_record["undelivered_start_sample"] == start
    last_status = [r for r in cap.records if r["type"] == "status"][-1]
    assert start == round(last_status["acked_seconds"] * RATE) >= RATE  # from the acked position
    got, rate = sf.read(kept, dtype="int16")
    want, _ = sf.read(source, dtype="int16")
    assert rate == RATE and len(got) > 0
    assert np.array_equal(got, want[start : start + len(got)])


def test_the_tee_of_a_killed_capture_is_a_readable_prefix_of_the_source(tmp_path: Path) -> None:
    # plain PCM int16: Python 3.11's `wave` reads no WAVE_FORMAT_EXTENSIBLE (int24 uses it)
    source = write_clip(tmp_path / "source.wav", RATE, 2, "PCM_16", 20.0, seed=5)
    tee = tmp_path / "tee.wav"
    with IngestServer(tmp_path / "data") as server:
        cap = Capture("--server", server.url, "--stream-id", "killed", "--input", str(source),
                      "--speed", "1", "--tee", str(tee))
        cap.wait_for(lambda r: r["type"] == "status" and r["acked_seconds"] >= 2.5, "2.5 s acked")
        cap.proc.send_signal(signal.SIGKILL)
        cap.proc.wait(10)
    want, _ = sf.read(source, dtype="int16")
    got, rate = sf.read(tee, dtype="int16")  # libsndfile
    assert rate == RATE and len(got) >= 1.4 * RATE  # 2.5 s captured, header <= ~1 s behind
    assert np.array_equal(got, want[: len(got)])
    with wave.open(str(tee)) as w:  # Python's own reader agrees on the length
        assert w.getnframes() == len(got)
    written = (tee.stat().st_size - read_wav_info(tee).data_offset) // 4  # 2 ch x 2 bytes
    assert written - len(got) <= 1.5 * RATE  # the header covers all but the last ~second


def test_stream_id_outside_the_pattern_is_refused_before_connecting() -> None:
    proc = subprocess.run([sys.executable, "-m", "capture", "--server", "ws://127.0.0.1:9",
                           "--stream-id", "../etc", "--input", "nothing.wav"],
                          capture_output=True, text=True, timeout=30, cwd=REPO_ROOT)
    assert proc.returncode == 2
    assert STREAM_ID_PATTERN in proc.stderr and "'../etc'" in proc.stderr


def test_duration_counts_audio_seconds_of_a_file(server: IngestServer, tmp_path: Path) -> None:
    source = write_clip(tmp_path / "source.wav", RATE, 1, "PCM_16", 8.0)
    cap = Capture("--server", server.url, "--stream-id", "five", "--input", str(source),
                  "--speed", "0", "--duration", "1.5")
    code, out = cap.finish()
    assert code == 0, (out, cap.not_json)
    got, _ = sf.read(stored(server, "five"), dtype="int16")
    want, _ = sf.read(source, dtype="int16")
    assert np.array_equal(got, want[: 24_000])
    assert not any("Ctrl-C again" in line for line in out)


def test_status_json_on_stderr_is_all_json_with_stream_id_and_time(server: IngestServer,
                                                                   tmp_path: Path) -> None:
    source = write_clip(tmp_path / "source.wav", RATE, 1, "PCM_16", 2.0)
    cap = Capture("--server", server.url, "--stream-id", "json-1", "--input", str(source),
                  "--speed", "0")
    code, out = cap.finish()
    assert code == 0
    assert cap.not_json == []  # nothing but JSON on stderr
    assert out[0] == "stream_id: json-1" and any(": done:" in line for line in out)
    for record in cap.records:
        assert record["stream_id"] == "json-1"
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", record["time"])
    assert len([r for r in cap.records if r.get("state") == "done" and r["type"] == "state"]) == 1
    assert [r["type"] for r in cap.records].count("exit") == 1
    assert cap.records[-1]["type"] == "exit"


def test_interrupt_says_ctrl_c_again_only_after_a_ctrl_c(server: IngestServer,
                                                          tmp_path: Path) -> None:
    source = write_clip(tmp_path / "source.wav", RATE, 1, "PCM_16", 5.0)
    cap = Capture("--server", server.url, "--stream-id", "sigint", "--input", str(source),
                  "--speed", "1", "--status", "lines")
    cap.wait_for(state_is("connected"), "connected")
    cap.proc.send_signal(signal.SIGINT)
    event = cap.wait_for(lambda r: r["type"] == "event", "the draining event")
    assert "Ctrl-C again to quit at once" in event["message"]
    code, _ = cap.finish()
    assert code == 0


def test_version() -> None:
    proc = subprocess.run([sys.executable, "-m", "capture", "--version"], capture_output=True,
                          text=True, timeout=30, cwd=REPO_ROOT)
    assert proc.returncode == 0
    assert re.fullmatch(r"echopanel-capture \S+\n", proc.stdout)


def test_a_fatal_error_without_tee_points_into_the_input_file(server: IngestServer,
                                                              tmp_path: Path) -> None:
    source = write_clip(tmp_path / "source.wav", RATE, 1, "PCM_16", 2.0)
    first = Capture("--server", server.url, "--stream-id", "twice", "--input", str(source),
                    "--speed", "0")
    assert first.finish()[0] == 0
    again = Capture("--server", server.url, "--stream-id", "twice", "--input", str(source),
                    "--speed", "0", cwd=tmp_path)
    code, out = again.finish()
    assert code == 1
    assert "4409" in out[-1]
    assert f"not delivered: it is still in {source} from sample 0 (0.00 s) on" in out[-1]
    assert again.records[-1]["undelivered_path"] == str(source)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "data-server.log", "source.wav"]

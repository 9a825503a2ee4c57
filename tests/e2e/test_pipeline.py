"""Foundation end to end: files streamed through the real CLI to the real server, sample-exact."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from datetime import datetime
from pathlib import Path

import pytest

from capture.wav_source import bundled_recording
from tests.e2e.conftest import stored_equals_source, write_clip
from tools.ingest_process import IngestServer


def run_capture(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "capture", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def stream_and_check(server: IngestServer, source: Path, stream_id: str) -> None:
    proc = run_capture("--server", server.url, "--stream-id", stream_id, "--input", str(source),
                       "--speed", "0")
    assert proc.returncode == 0, proc.stderr
    assert f"stream_id: {stream_id}" in proc.stdout
    stored = server.data_dir / "streams" / stream_id / "audio.wav"
    stored_equals_source(stored, source)
    with urllib.request.urlopen(f"{server.http}/v1/streams/{stream_id}/audio.wav") as resp:
        assert resp.read() == stored.read_bytes()


def test_bundled_speech_recording_streams_sample_exactly(server: IngestServer) -> None:
    stream_and_check(server, bundled_recording(), "speech")


@pytest.mark.parametrize(
    "rate,channels,subtype",
    [(48_000, 2, "PCM_16"), (44_100, 1, "FLOAT"), (96_000, 2, "PCM_24"), (8_000, 6, "PCM_32")],
)
def test_formats_stream_sample_exactly(
    server: IngestServer, tmp_path: Path, rate: int, channels: int, subtype: str
) -> None:
    clip = write_clip(tmp_path / f"clip-{rate}-{channels}-{subtype}.wav", rate, channels, subtype, 2.3)
    stream_and_check(server, clip, f"clip-{rate}-{channels}-{subtype.lower()}")


def test_stream_id_is_made_when_missing_and_listed(server: IngestServer) -> None:
    proc = run_capture("--server", server.url.rsplit("/v1/", 1)[0], "--input",
                       str(bundled_recording()), "--speed", "0", "--quiet")
    assert proc.returncode == 0, proc.stderr
    stream_id = proc.stdout.split("stream_id:", 1)[1].split()[0]
    with urllib.request.urlopen(f"{server.http}/v1/streams") as resp:
        listed = json.load(resp)
    items = listed["streams"] if isinstance(listed, dict) else listed
    assert stream_id in [s["stream_id"] for s in items]


def test_wrong_path_is_fatal_with_one_line_reason(server: IngestServer) -> None:
    proc = run_capture("--server", server.http.replace("http", "ws") + "/nope", "--stream-id", "x",
                       "--input", str(bundled_recording()), "--speed", "0")
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert "404" in last and "not delivered" in last


def test_missing_input_file_is_a_clear_error(server: IngestServer, tmp_path: Path) -> None:
    proc = run_capture("--server", server.url, "--input", str(tmp_path / "missing.wav"))
    assert proc.returncode == 1
    assert "missing.wav" in proc.stderr


def test_labels_and_the_capture_wall_clock_are_stored_and_shown(server: IngestServer) -> None:
    before = time.time()
    proc = run_capture("--server", server.url, "--stream-id", "labelled", "--input",
                       str(bundled_recording()), "--speed", "0", "--quiet",
                       "--label", "meeting=standup", "--label", "room=4.01")
    assert proc.returncode == 0, proc.stderr
    with urllib.request.urlopen(f"{server.http}/v1/streams/labelled") as resp:
        d = json.load(resp)
    assert d["labels"] == {"meeting": "standup", "room": "4.01"}
    started = datetime.fromisoformat(d["capture_started"]).timestamp()
    assert before - 1 <= started <= time.time()

"""docs/embedding.md's first example — a sounddevice InputStream the application owns, pushing
into uplink.Uplink from its callback — on the real audio stack (virtual mic → PortAudio), with
the server crashed and restarted while it records. Only the server URL and the recording
length are changed from the text in the docs."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from capture.wavfile import read_wav
from tests.e2e.test_embedding_docs import example
from tests.mic.signals import best_alignment, decode
from tests.mic.test_cli import CORRELATION_THRESHOLD, speech_clip
from tools.ingest_process import IngestServer
from tools.virtual_mic import VirtualMic

REPO = Path(__file__).resolve().parents[2]


def wait_for_frames(server: IngestServer, stream_id: str, n: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"{server.http}/v1/streams/{stream_id}") as resp:
                if json.load(resp)["frames"] >= n:
                    return
        except urllib.error.HTTPError:
            pass  # 404 until the stream is created
        assert time.monotonic() < deadline, f"no {n} frames of {stream_id} within {timeout} s"
        time.sleep(0.02)


def test_the_sounddevice_example_records_through_a_server_crash(
        mic: VirtualMic, tmp_path: Path) -> None:
    speech, played = speech_clip(tmp_path, 2.5)
    code = example("sounddevice")
    assert "sd.sleep(10_000)" in code
    with IngestServer(tmp_path / "data") as server:
        script = tmp_path / "app.py"
        script.write_text(code.replace("ws://127.0.0.1:8765", server.url.rsplit("/v1/", 1)[0])
                          .replace("sd.sleep(10_000)", "sd.sleep(5_000)"))
        app = subprocess.Popen([sys.executable, str(script)], env={
            **mic.client_env(), "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True)
        try:
            assert app.stdout is not None
            first = app.stdout.readline()
            assert first.startswith("stream id:"), first + app.stderr.read()
            stream_id = first.split(":", 1)[1].strip()
            wait_for_frames(server, stream_id, 5)  # the InputStream is open and recording
            player = threading.Thread(target=lambda: mic.play(played, wait=True, timeout=20))
            player.start()
            time.sleep(1.0)  # the speech is under way: crash the server, start it again
            server.kill()
            server.start()
            player.join(30)
            out, err = app.communicate(timeout=60)
        finally:
            if app.poll() is None:
                app.kill()
        assert app.returncode == 0, err
        with urllib.request.urlopen(f"{server.http}/v1/streams/{stream_id}") as resp:
            details = json.load(resp)
    assert details["state"] == "finalized" and details["end_reason"] == "ended"
    assert details["gaps"] == []  # the 120 s buffer bridged the crash
    assert details["duration_seconds"] >= 4.5
    fmt, stored = read_wav(tmp_path / "data" / "streams" / stream_id / "audio.wav")
    ref_fmt, ref = read_wav(speech)
    lag, corr = best_alignment(decode(ref, ref_fmt.sample_type, 1)[:, 0],
                               decode(stored, fmt.sample_type, 1)[:, 0])
    assert corr > CORRELATION_THRESHOLD, f"correlation {corr:.3f} at lag {lag}"

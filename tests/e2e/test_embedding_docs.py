"""The examples in docs/embedding.md run as written (only the server URL changed), and their
audio arrives sample-exactly through a server crash and restart."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from capture.wavfile import read_wav
from tools.chaos_run import make_recording
from tools.ingest_process import IngestServer

DOC = Path(__file__).resolve().parents[2] / "docs" / "embedding.md"


def example(name: str) -> str:
    m = re.search(rf"<!-- example: {name} -->\n```python\n(.*?)```", DOC.read_text(), re.S)
    assert m, f"docs/embedding.md has no example {name!r}"
    return m.group(1)


def stored_frames(server: IngestServer, stream_id: str) -> int:
    try:
        with urllib.request.urlopen(f"{server.http}/v1/streams/{stream_id}") as resp:
            return int(json.load(resp)["frames"])
    except urllib.error.HTTPError:  # 404: not created yet
        return 0


def test_the_file_example_streams_exactly_through_a_server_crash(tmp_path: Path) -> None:
    source = make_recording(tmp_path / "source.wav", 600.0)  # ~0.5 s to push
    server = IngestServer(tmp_path / "data").start()
    code = example("file-async")
    assert 'SERVER = "ws://127.0.0.1:8765"' in code
    script = tmp_path / "app.py"
    script.write_text(code.replace("ws://127.0.0.1:8765", f"ws://127.0.0.1:{server.port}"))
    app = subprocess.Popen([sys.executable, str(script), str(source)], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True,
                           env={**os.environ, "PYTHONPATH": str(DOC.parents[1])})
    try:
        assert app.stdout is not None
        first = app.stdout.readline()
        assert first.startswith("stream id:"), first + app.stderr.read()
        stream_id = first.split(":", 1)[1].strip()
        # once the server holds some of the stream, crash it and start it again
        deadline = time.monotonic() + 30
        while stored_frames(server, stream_id) == 0:
            assert time.monotonic() < deadline, "the stream never started"
            time.sleep(0.005)
        server.kill()
        server.start()
        out, err = app.communicate(timeout=120)
    finally:
        if app.poll() is None:
            app.kill()
        server.stop()
    assert app.returncode == 0, err
    assert re.search(r"delivered 600\.00 s, [1-9]\d* reconnects", out), out
    _, sent = read_wav(source)
    _, stored = read_wav(tmp_path / "data" / "streams" / stream_id / "audio.wav")
    assert stored == sent

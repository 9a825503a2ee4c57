"""The level-meter example of docs/listeners.md (and the README) runs as written against
the real server: one line per second of the stream, then the end."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
from pathlib import Path

from capture.wavfile import read_wav
from tests.e2e.listen_support import feed
from tools.chaos_run import make_recording
from tools.ingest_process import REPO_ROOT, IngestServer

DOC = REPO_ROOT / "docs" / "listeners.md"


def example(name: str) -> str:
    text = DOC.read_text()
    m = re.search(rf"<!-- example: {name} -->\n```python\n(.*?)```", text, re.S)
    assert m, f"no example {name!r} in {DOC}"
    return m.group(1)


def test_level_meter_example(server: IngestServer, tmp_path: Path) -> None:
    fmt, source = read_wav(make_recording(tmp_path / "source.wav", 3.0))
    assert asyncio.run(feed(f"ws://127.0.0.1:{server.port}", "meter", fmt, source)).ok
    code = example("level-meter").replace('"ws://127.0.0.1:8765"',
                                          f'"ws://127.0.0.1:{server.port}"')
    script = tmp_path / "meter.py"
    script.write_text(code)
    out = subprocess.run([sys.executable, str(script), "meter"], capture_output=True,
                         text=True, timeout=60, cwd=REPO_ROOT)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert [ln.split()[0] for ln in lines[:-1]] == ["0", "1", "2"]
    assert all("dBFS" in ln for ln in lines[:-1])
    assert lines[-1] == "end (ended)"

"""Graceful shutdown (SIGTERM → 1012), crash (SIGKILL) and restart, and the CLI contract.

Each test owns its server process, since each one stops or kills it.
"""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import soundfile as sf

from tests.support.server import LISTENING_PREFIX, IngestServer
from uplink.wire import CloseCode

from .client import FRAME, Client, frames


def stored(server: IngestServer, sid: str) -> np.ndarray:
    resp = httpx.get(f"{server.http}/v1/streams/{sid}/audio.wav", timeout=10)
    assert resp.status_code == 200, resp.text
    return np.asarray(sf.read(io.BytesIO(resp.content), dtype="int16")[0])


def pcm(parts: list[bytes]) -> np.ndarray:
    return np.frombuffer(b"".join(parts), "<i2")


def test_sigterm_closes_with_1012_and_resume_completes_exactly(tmp_path: Path) -> None:
    f = frames(60, seed=20)
    with IngestServer(tmp_path / "data") as server:
        a, b = Client(server.url), Client(server.url)
        wa, wb = a.hello("term-a"), b.hello("term-b")
        a.stream(0, f[:20])
        b.stream(0, f[:10])
        for i in range(20, 30):  # in flight when the signal arrives
            a.audio(i, i * FRAME, [f[i]])
        assert server.stop() == 0  # SIGTERM → clean exit
        for c in (a, b):
            closed = c.expect_close()  # acks sent before the close are read on the way
            assert closed.code == CloseCode.SERVICE_RESTART, closed
            c.ws.close()
        acked_a = a.acked[0]
        assert 20 <= acked_a <= 30

        server.start()  # same port, same data dir
        with Client(server.url) as a2:
            w = a2.hello("term-a", resume=wa)
            assert w.resumed and w.next_seq >= acked_a  # an ack is a promise (§4)
            a2.stream(w.next_seq, f[w.next_seq:])
            a2.end(60, 60 * FRAME)
        with Client(server.url) as b2:
            w = b2.hello("term-b", resume=wb)
            assert w.next_seq == 10
            b2.stream(10, f[10:40])
            b2.end(40, 40 * FRAME)
        assert np.array_equal(stored(server, "term-a"), pcm(f))
        assert np.array_equal(stored(server, "term-b"), pcm(f[:40]))


def test_sigkill_restart_recovers_and_resume_continues_from_acked(tmp_path: Path) -> None:
    f = frames(80, seed=21)
    with IngestServer(tmp_path / "data") as server:
        with Client(server.url) as c:
            w = c.hello("crash")
            c.stream(0, f[:30])
            for i in range(30, 45):
                c.audio(i, i * FRAME, [f[i]])
            c.wait_acked(31)
            server.kill()  # no flush, no close frame
            closed = c.expect_close()
            assert closed.code in (None, 1006), closed
            acked = c.acked[0]

        # As if the crash had torn a record in half: recovery must cut it, never serve it.
        journal = server.data_dir / "streams" / "crash" / "journal.bin"
        with open(journal, "ab") as torn:
            torn.write(bytes([1, 0, 0, 0]) + b"\xff" * 30)
        server.start()
        assert list(journal.parent.glob("journal.bin.cut-*"))
        listing = httpx.get(f"{server.http}/v1/streams/crash", timeout=10).json()
        assert listing["state"] == "open" and listing["connected"] is False
        with Client(server.url) as c:
            w2 = c.hello("crash", resume=w)
            assert w2.next_seq >= acked and w2.next_sample == w2.next_seq * FRAME
            c.stream(w2.next_seq, f[w2.next_seq:])
            c.end(80, 80 * FRAME)
        assert np.array_equal(stored(server, "crash"), pcm(f))


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ingest_server", *args], capture_output=True,
                          text=True, timeout=30)


def test_unwritable_data_dir_fails_at_startup_with_a_clear_message(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    proc = run_cli("--port", "0", "--data-dir", str(blocker / "data"))
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert "not writable" in proc.stderr and str(blocker) in proc.stderr


def test_bad_option_value_is_rejected(tmp_path: Path) -> None:
    proc = run_cli("--data-dir", str(tmp_path), "--session-timeout", "-1")
    assert proc.returncode == 2 and "session_timeout" in proc.stderr


def test_port_zero_prints_the_real_port(tmp_path: Path) -> None:
    server = IngestServer(tmp_path / "data", port=0)
    server.start()
    try:
        (line,) = server.stdout_lines
        assert line.startswith(LISTENING_PREFIX + "ws://127.0.0.1:")
        port = int(line.split(":")[2].split("/")[0])
        assert port != 0 and port == server.port
        assert line.endswith(f"/v1/stream (data dir {tmp_path / 'data'})")
        assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=10).status_code == 200
    finally:
        assert server.stop() == 0

"""`echopanel-listen` (python -m uplink.listen) as a real process against the real server:
raw audio to a pipe, a WAV file that survives kills of the listener and of the server, and
--follow-new (docs/listeners.md)."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from pathlib import Path

from capture.wavfile import read_wav
from tests.e2e.listen_support import details, feed, wait_until
from tools.chaos_run import make_recording
from tools.ingest_process import REPO_ROOT, IngestServer


def listen_cmd(server: IngestServer, *args: str) -> list[str]:
    return [sys.executable, "-m", "uplink.listen", "--server", f"ws://127.0.0.1:{server.port}",
            *args]


def test_raw_to_stdout_equals_the_source(server: IngestServer, tmp_path: Path) -> None:
    fmt, source = read_wav(make_recording(tmp_path / "source.wav", 2.0))
    proc = subprocess.Popen(listen_cmd(server, "--stream-id", "cli-raw", "--output", "-",
                                       "--wait"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO_ROOT)
    assert asyncio.run(feed(f"ws://127.0.0.1:{server.port}", "cli-raw", fmt, source,
                            speed=4.0)).ok
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err.decode()
    assert out == source
    assert b"stream ended" in err


def test_wav_output_survives_killing_the_listener_and_the_server(tmp_path: Path) -> None:
    fmt, source = read_wav(make_recording(tmp_path / "source.wav", 6.0))
    server = IngestServer(tmp_path / "data").start()
    out = tmp_path / "out.wav"
    cmd = listen_cmd(server, "--stream-id", "cli-wav", "--output", str(out), "--wait")

    def spawn() -> subprocess.Popen[bytes]:
        return subprocess.Popen(cmd, stderr=subprocess.PIPE, cwd=REPO_ROOT)

    def samples() -> int:
        try:
            return int(details(server.http, "cli-wav")["samples"])
        except Exception:
            return 0

    async def scenario() -> None:
        feeding = asyncio.create_task(feed(f"ws://127.0.0.1:{server.port}", "cli-wav", fmt,
                                           source, speed=2.0))
        proc = spawn()
        rate = fmt.sample_rate
        await wait_until(lambda: samples() >= rate, 20, "1 s stored")
        await wait_until(lambda: out.exists() and out.stat().st_size > rate, 20, "output")
        proc.send_signal(signal.SIGKILL)  # the listener dies mid-write
        proc.wait()
        await asyncio.to_thread(server.kill)  # and the server crashes
        await asyncio.to_thread(server.start)
        proc = spawn()  # continues after the last whole sample frame in out.wav
        await wait_until(lambda: samples() >= 2 * rate, 20, "2 s stored")
        proc.terminate()  # Ctrl-C-like stop, then continue again
        proc.wait()
        proc = spawn()
        assert (await feeding).ok
        _, err = await asyncio.to_thread(proc.communicate, None, 30)
        assert proc.returncode == 0, err.decode()

    try:
        asyncio.run(scenario())
    finally:
        server.stop()
    got_fmt, got = read_wav(out)
    assert got_fmt == fmt
    assert got == source


def test_follow_new_writes_each_new_stream_to_its_own_file(server: IngestServer,
                                                           tmp_path: Path) -> None:
    fmt, source = read_wav(make_recording(tmp_path / "source.wav", 1.0))
    folder = tmp_path / "recordings"
    proc = subprocess.Popen(listen_cmd(server, "--follow-new", str(folder)),
                            stderr=subprocess.PIPE, cwd=REPO_ROOT)
    url = f"ws://127.0.0.1:{server.port}"

    def complete(sid: str) -> bool:
        path = folder / f"{sid}.wav"
        try:
            return read_wav(path)[1] == source
        except Exception:
            return False

    async def scenario() -> None:
        await asyncio.sleep(0.5)  # the follower subscribes; a stream before it is in the snapshot
        for sid in ("follow-a", "follow-b"):
            assert (await feed(url, sid, fmt, source, speed=4.0)).ok
        await wait_until(lambda: complete("follow-a") and complete("follow-b"), 20, "files")

    try:
        asyncio.run(scenario())
    finally:
        proc.terminate()
        proc.communicate(timeout=10)

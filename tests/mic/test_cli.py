"""echopanel-capture on the real audio stack: virtual mic → PortAudio → uplink → real server."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

from capture.wav_source import bundled_recording
from capture.wavfile import read_wav, write_wav
from tests.mic.signals import best_alignment, decode
from tools.ingest_process import IngestServer
from tools.virtual_mic import VirtualMic

CORRELATION_THRESHOLD = 0.9


class Capture:
    """echopanel-capture as a child process, with its stderr collected as it arrives."""

    def __init__(self, env: dict[str, str], *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "capture", *args],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        self.lines: list[str] = []
        self._cond = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self._cond:
                self.lines.append(line.rstrip("\n"))
                self._cond.notify_all()

    def wait_for(self, pattern: str, timeout: float = 20.0) -> str:
        rx = re.compile(pattern)
        with self._cond:
            ok = self._cond.wait_for(lambda: any(rx.search(line) for line in self.lines), timeout)
        assert ok, f"no {pattern!r} in stderr within {timeout} s:\n" + "\n".join(self.lines)
        return next(line for line in self.lines if rx.search(line))

    def interrupt(self) -> None:
        """Ctrl-C: stop capturing, deliver what is buffered, exit 0 once acked."""
        self.proc.send_signal(signal.SIGINT)

    def finish(self, timeout: float = 60.0) -> tuple[int, str]:
        assert self.proc.stdout is not None
        out = self.proc.stdout.read()
        self.proc.wait(timeout)
        return self.proc.returncode, out


def speech_clip(tmp_path: Path, seconds: float = 2.5) -> tuple[Path, Path]:
    """(speech, the same speech followed by 1 s of silence to play: when paplay returns, the
    speech itself has passed PulseAudio's buffers and reached the microphone)."""
    fmt, data = read_wav(bundled_recording())
    speech = data[: int(seconds * fmt.sample_rate) * fmt.block_align]
    ref, padded = tmp_path / "speech.wav", tmp_path / "played.wav"
    write_wav(ref, fmt, speech)
    write_wav(padded, fmt, speech + bytes(fmt.bytes_per_second))
    return ref, padded


def stored_wav(server: IngestServer, stream_id: str) -> bytes:
    with urllib.request.urlopen(f"{server.http}/v1/streams/{stream_id}/audio.wav") as resp:
        return resp.read()


def details(server: IngestServer, stream_id: str) -> dict[str, object]:
    with urllib.request.urlopen(f"{server.http}/v1/streams/{stream_id}") as resp:
        result: dict[str, object] = json.load(resp)
        return result


def test_list_devices_shows_the_virtual_microphone(mic: VirtualMic) -> None:
    out = subprocess.run([sys.executable, "-m", "capture", "--list-devices"], env=mic.client_env(),
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert "echopanel_mic" in out.stdout


def test_microphone_capture_is_stored_exactly_as_teed_and_matches_what_was_played(
    mic: VirtualMic, tmp_path: Path
) -> None:
    speech, played = speech_clip(tmp_path)
    tee = tmp_path / "tee.wav"
    with IngestServer(tmp_path / "data") as server:
        cap = Capture(mic.client_env(), "--server", server.url, "--stream-id", "mic-1",
                      "--device", "panel_mic", "--tee", str(tee), "--status", "lines")
        cap.wait_for(r"\] connected")
        mic.play(played, wait=True, timeout=20)
        cap.interrupt()
        code, out = cap.finish()
        assert code == 0, "\n".join(cap.lines)
        assert "stream_id: mic-1" in out
        stored = stored_wav(server, "mic-1")
    tee_fmt, tee_data = read_wav(tee)
    stored_path = tmp_path / "stored.wav"
    stored_path.write_bytes(stored)
    stored_fmt, stored_data = read_wav(stored_path)
    assert stored_fmt == tee_fmt
    assert stored_data == tee_data  # the server holds exactly what was captured
    assert len(tee_data) >= 2 * tee_fmt.bytes_per_second
    ref_fmt, ref = read_wav(speech)
    lag, corr = best_alignment(decode(ref, ref_fmt.sample_type, 1)[:, 0],
                               decode(tee_data, tee_fmt.sample_type, 1)[:, 0])
    assert corr > CORRELATION_THRESHOLD, f"correlation {corr:.3f} at lag {lag}"


def test_device_that_disappears_is_reopened_and_the_gap_recorded(mic: VirtualMic, tmp_path: Path) -> None:
    tee = tmp_path / "tee.wav"
    with IngestServer(tmp_path / "data") as server:
        cap = Capture(mic.client_env(), "--server", server.url, "--stream-id", "mic-loss",
                      "--device", "echopanel_mic", "--tee", str(tee), "--status", "lines")
        cap.wait_for(r"\] connected")
        mic.unload_source()
        cap.wait_for(r"microphone .* lost", timeout=10)
        mic.load_source()
        back = cap.wait_for(r"back after .* recorded a gap of (\d+) samples", timeout=20)
        cap.interrupt()
        code, _ = cap.finish()
        # delivered, but the time the device was away is audio lost: exit 4 and one line
        assert code == 4, "\n".join(cap.lines)
        lost = cap.wait_for(r"audio was lost: .* 1 gaps \(.* s\) reported by the source", timeout=1)
        info = details(server, "mic-loss")
        stored = stored_wav(server, "mic-loss")
    gaps = info["gaps"]
    assert isinstance(gaps, list) and len(gaps) == 1
    reported = int(re.search(r"gap of (\d+) samples", back).group(1))  # type: ignore[union-attr]
    assert gaps[0]["end_sample"] - gaps[0]["start_sample"] == reported > 0
    lost_seconds = float(re.search(r"1 gaps \(([\d.]+) s\)", lost).group(1))  # type: ignore[union-attr]
    assert lost_seconds == round(reported / 16_000, 2)
    stored_path = tmp_path / "stored.wav"
    stored_path.write_bytes(stored)
    assert read_wav(stored_path)[1] == read_wav(tee)[1]  # gaps are silence in both


def _strip_ansi(text: str) -> str:
    return re.sub(r"\x1b\[[0-9;?]*[ -/]*[@-~]", "", text)


def _read_pty(fd: int, until: Callable[[], bool], timeout: float) -> str:
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            try:
                data = os.read(fd, 65536)
            except OSError:
                break
            if not data:
                break
            chunks.append(data)
        elif until():
            break
    return b"".join(chunks).decode("utf-8", "replace")


def test_live_status_panel_in_a_pseudo_terminal_shows_states_and_a_moving_meter(
    mic: VirtualMic, tmp_path: Path
) -> None:
    _, played = speech_clip(tmp_path, 3.0)
    with IngestServer(tmp_path / "data") as server:
        master, slave = pty.openpty()
        env = {**mic.client_env(), "COLUMNS": "160", "TERM": "xterm-256color"}
        proc = subprocess.Popen(
            [sys.executable, "-m", "capture", "--server", server.url, "--stream-id", "pty",
             "--device", "echopanel_mic", "--duration", "4"],
            env=env, stdout=subprocess.PIPE, stderr=slave, text=True,
        )
        os.close(slave)
        player = threading.Thread(target=lambda: mic.play(played, wait=True, timeout=20))
        player.start()
        screen = _strip_ansi(_read_pty(master, lambda: proc.poll() is not None, 40))
        player.join(30)
        proc.wait(30)
        os.close(master)
    (tmp_path / "screen.txt").write_text(screen)
    assert proc.returncode == 0, screen
    for state in ("connecting", "connected", "done"):
        assert state in screen, screen
    levels = {float(m) for m in re.findall(r"(-?\d+\.\d) dBFS", screen)}
    assert len(levels) >= 5, f"level meter did not move: {sorted(levels)}"
    assert "buffer" in screen and "acked" in screen

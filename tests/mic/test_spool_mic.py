"""The real audio stack with the spool on (issue 13): a microphone capture is SIGKILLed
while speech plays into the virtual mic, started again with the same spool, and the
stored stream is the first run's audio, one gap for the dead time, then the second run's
audio — each part matching what was played, at the place in time it was played."""

from __future__ import annotations

import json
import signal
import time
import urllib.request
from pathlib import Path

import numpy as np

from capture.wav_source import bundled_recording
from capture.wavfile import read_wav, write_wav
from tests.mic.signals import best_alignment, decode
from tests.mic.test_cli import CORRELATION_THRESHOLD, Capture
from tools.ingest_process import IngestServer
from tools.virtual_mic import VirtualMic
from uplink.audio import SampleType

RATE = 16_000


def stored_pcm(server: IngestServer, stream_id: str, tmp_path: Path) -> np.ndarray:
    with urllib.request.urlopen(f"{server.http}/v1/streams/{stream_id}/audio.wav") as resp:
        path = tmp_path / "stored.wav"
        path.write_bytes(resp.read())
    fmt, data = read_wav(path)
    return decode(data, fmt.sample_type, 1)[:, 0]


def test_a_killed_microphone_capture_resumes_with_the_dead_time_as_a_gap(
    mic: VirtualMic, tmp_path: Path
) -> None:
    fmt, data = read_wav(bundled_recording())
    speech = data[: 9 * fmt.bytes_per_second]
    played = tmp_path / "played.wav"
    write_wav(played, fmt, speech + bytes(fmt.bytes_per_second))
    ref = decode(speech, SampleType.INT16, 1)[:, 0]
    spool = tmp_path / "spool"
    args = ["--server", "", "--stream-id", "mic-spool", "--device", "panel_mic",
            "--spool", str(spool), "--status", "lines"]
    with IngestServer(tmp_path / "data") as server:
        args[1] = server.url
        first = Capture(mic.client_env(), *args)
        first.wait_for(r"\] connected")
        player = mic.play(played)
        time.sleep(3.0)  # let the first run capture about 3 s of speech
        killed_at = time.time()
        first.proc.send_signal(signal.SIGKILL)
        first.proc.wait(10)
        second = Capture(mic.client_env(), *args)
        second.wait_for(r"resuming stream mic-spool from its spool")
        second.wait_for(r"\] connected")
        player.wait(30)
        second.interrupt()
        code, _ = second.finish()
        lines = "\n".join(second.lines)
        with urllib.request.urlopen(f"{server.http}/v1/streams/mic-spool") as resp:
            info = json.load(resp)
        stored = stored_pcm(server, "mic-spool", tmp_path)
    assert code == 4, lines
    assert "while the capture was not running (resumed from its spool)" in lines
    [gap] = info["gaps"]
    g0, g1 = gap["start_sample"], gap["end_sample"]
    dead = (g1 - g0) / RATE
    assert time.time() - killed_at > dead > 0.2  # python start and device open take time
    before, after = stored[:g0], stored[g1:]
    assert np.all(stored[g0:g1] == 0)
    # each run's part is the played speech, and both sit on one timeline: the second part
    # is as far into the speech as the gap says (device latency tolerance: 0.15 s)
    probe = RATE  # one second of each part, well inside what was played
    lag_a, corr_a = best_alignment(before[-2 * probe : -probe], ref)
    lag_b, corr_b = best_alignment(after[probe : 2 * probe], ref)
    assert corr_a > CORRELATION_THRESHOLD, corr_a
    assert corr_b > CORRELATION_THRESHOLD, corr_b
    # stored sample (g0 - 2 s) is ref sample lag_a; stored sample (g1 + 1 s) is ref lag_b
    expected = lag_a + (g1 + probe) - (g0 - 2 * probe)
    assert abs(lag_b - expected) <= 0.15 * RATE, (lag_b, expected, dead)
    assert not (spool / "audio.spool").exists()

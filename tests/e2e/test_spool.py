"""The capture-side spool (issue 13, docs/spool.md) against the real server.

- SIGKILL mid-outage, restart with the same spool: the stored audio is the source except
  for exactly one gap, as long as the capture was dead;
- SIGKILL 20 times at random moments while the network fails too: stored audio equals the
  source outside the gaps, and the gaps are the dead times;
- deliver later: capture with the server down, kill, start the server, `--drain`;
- torn tail, bit flip and a full filesystem: clear messages, nothing acked lost, nothing
  corrupt sent.

A WAV read at --speed 1 stands in for a live source: while the capture is dead the file
"plays on", and the restarted capture continues where real time has got to, so stored
sample k must equal source sample k everywhere outside the gaps.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf

from tests.e2e.conftest import write_clip
from tests.e2e.test_capture_cli import FAST_RETRY, Capture
from tools.chaos_proxy import ChaosProxyThread
from tools.ingest_process import IngestServer
from uplink.spool import DATA_NAME, DATA_OFFSET, RECORD_BYTES

RATE = 16_000
FRAME = 320
FRAME_S = FRAME / RATE
BLOCK_S = 0.1  # WavFileSource reads 100 ms blocks: at most that much is "in the air"


def details(server: IngestServer, stream_id: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"{server.http}/v1/streams/{stream_id}") as resp:
        result: dict[str, Any] = json.load(resp)
        return result


def stored_pcm(server: IngestServer, stream_id: str) -> np.ndarray[Any, Any]:
    got, _ = sf.read(server.data_dir / "streams" / stream_id / "audio.wav", dtype="int16")
    return got


def gaps_of(info: dict[str, Any]) -> list[tuple[int, int]]:
    return [(g["start_sample"], g["end_sample"]) for g in info["gaps"]]


def assert_equal_outside(stored: np.ndarray[Any, Any], source: np.ndarray[Any, Any],
                         gaps: list[tuple[int, int]]) -> None:
    """Sample k of the stream is sample k of the source, except inside the gaps (silence)."""
    assert len(stored) == len(source)
    mask = np.ones(len(source), dtype=bool)
    for start, end in gaps:
        assert np.all(stored[start:end] == 0)
        mask[start:end] = False
    assert np.array_equal(stored[mask], source[mask])


def spooled_all(cap: Capture, what: str, timeout: float = 20.0) -> None:
    cap.wait_for(lambda r: r["type"] == "status" and r.get("spool_behind_frames") == 0
                 and r["buffered_seconds"] >= 0.5, what, timeout)


def test_sigkill_mid_outage_then_restart_records_exactly_the_dead_time(tmp_path: Path) -> None:
    source = write_clip(tmp_path / "source.wav", RATE, 1, "PCM_16", 7.0, seed=11)
    spool = tmp_path / "spool"
    with IngestServer(tmp_path / "data") as server:
        proxy = ChaosProxyThread(target=("127.0.0.1", server.port)).start()
        try:
            args = ["--server", f"ws://127.0.0.1:{proxy.port}", "--stream-id", "sp-kill",
                    "--input", str(source), "--speed", "1", "--spool", str(spool), *FAST_RETRY]
            first = Capture(*args, "--tee", str(tmp_path / "tee1.wav"))
            first.wait_for(lambda r: r["type"] == "status" and r["acked_seconds"] >= 1.0,
                           "1 s acked")
            proxy.refuse(60.0)
            proxy.reset()
            first.wait_for(lambda r: r["type"] == "status" and r["state"] != "connected"
                           and r["buffered_seconds"] >= 1.0, "1 s captured during the outage")
            killed_at = time.time()
            first.proc.send_signal(signal.SIGKILL)
            first.proc.wait(10)
            restarted_at = time.time()
            second = Capture(*args, "--tee", str(tmp_path / "tee2.wav"))
            ready = second.wait_for(lambda r: True, "a first record")
            ready_at = datetime.fromisoformat(ready["time"].replace("Z", "+00:00")).timestamp()
            proxy.end_refuse()
            code, out = second.finish()
        finally:
            proxy.stop()
        info = details(server, "sp-kill")
        stored = stored_pcm(server, "sp-kill")
    want, _ = sf.read(source, dtype="int16")
    assert code == 4, (out, second.not_json)
    [(g0, g1)] = gaps_of(info)
    dead = (g1 - g0) / RATE
    assert restarted_at - killed_at - FRAME_S <= dead <= ready_at - killed_at + BLOCK_S + FRAME_S
    assert_equal_outside(stored, want, [(g0, g1)])
    assert info["state"] == "finalized"
    tee1, _ = sf.read(tmp_path / "tee1.wav", dtype="int16")  # the killed run's own copy
    assert len(tee1) >= RATE and np.array_equal(stored[: len(tee1)], tee1[: g0])
    exit_record = second.records[-1]
    assert exit_record["exit_status"] == 4 and exit_record["seconds_dead"] == round(dead, 3)
    [warning] = [line for line in out if "audio was lost" in line]
    assert f"{dead:.2f} s while the capture was not running" in warning
    assert any("resuming stream sp-kill from its spool" in line for line in out)
    assert not spool.joinpath(DATA_NAME).exists()  # the ended stream freed its spool


def test_twenty_sigkills_with_network_faults_lose_only_the_dead_times(tmp_path: Path) -> None:
    rng = random.Random(13)
    source = write_clip(tmp_path / "source.wav", RATE, 1, "PCM_16", 40.0, seed=13)
    spool = tmp_path / "spool"
    kills: list[tuple[float, float]] = []  # (killed at, next process started at)
    with IngestServer(tmp_path / "data") as server:
        proxy = ChaosProxyThread(target=("127.0.0.1", server.port)).start()
        stop_faults = threading.Event()

        def faults() -> None:
            while not stop_faults.wait(rng.uniform(0.3, 0.9)):
                if rng.random() < 0.5:
                    proxy.reset()
                else:
                    proxy.refuse(rng.uniform(0.1, 0.6))

        fault_thread = threading.Thread(target=faults, daemon=True)
        args = ["--server", f"ws://127.0.0.1:{proxy.port}", "--stream-id", "sp-twenty",
                "--input", str(source), "--speed", "1", "--spool", str(spool),
                "--buffer-seconds", "60", *FAST_RETRY]
        try:
            fault_thread.start()
            began = time.time()
            for _ in range(20):
                cap = subprocess.Popen([sys.executable, "-m", "capture",
                                        "--quiet", *args],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                started = time.time()
                if kills:
                    kills[-1] = (kills[-1][0], started)
                time.sleep(rng.uniform(0.1, 0.9))  # a random moment: startup included
                cap.send_signal(signal.SIGKILL)
                cap.wait(10)
                kills.append((time.time(), 0.0))
            stop_faults.set()
            fault_thread.join(5)
            proxy.end_refuse()
            # the last run ends 1.5 s of audio after where real time has got to
            duration = f"{time.time() - began + 1.5:.2f}"
            last = Capture(*args, "--duration", duration)
            kills[-1] = (kills[-1][0], time.time())
            code, out = last.finish(timeout=90)
        finally:
            stop_faults.set()
            proxy.stop()
        info = details(server, "sp-twenty")
        stored = stored_pcm(server, "sp-twenty")
    want, _ = sf.read(source, dtype="int16")
    assert code == 4, (out, last.not_json)
    gaps = gaps_of(info)
    assert len(stored) == round(float(duration) * RATE)
    assert_equal_outside(stored, want[: len(stored)], gaps)
    assert 1 <= len(gaps) <= 20
    started = datetime.fromisoformat(info["capture_started"].replace("Z", "+00:00")).timestamp()
    # every gap starts at a kill (the last spooled sample, at most a block before it) and
    # lasts at least until the next process started
    for g0, g1 in gaps:
        begin, end = started + g0 / RATE, started + g1 / RATE
        match = [(k, s) for k, s in kills if k - BLOCK_S - 0.1 <= begin <= k + 0.05]
        relative = [(round(k - started, 3), round(s - started, 3)) for k, s in kills]
        assert match, (round(begin - started, 3), gaps, relative)
        _, restarted = match[0]
        assert end >= restarted - FRAME_S - 0.05, (end, restarted)
    total_dead = sum(g1 - g0 for g0, g1 in gaps) / RATE
    assert total_dead <= sum(s - k for k, s in kills) + 20 * (BLOCK_S + 2.0)
    print(f"{len(gaps)} gaps, {total_dead:.2f} s dead in {len(stored) / RATE:.2f} s")


def capture_with_the_server_down(tmp_path: Path, stream_id: str, seconds: float
                                 ) -> tuple[Path, Path]:
    source = write_clip(tmp_path / "source.wav", RATE, 1, "PCM_16", seconds, seed=7)
    spool = tmp_path / "spool"
    cap = Capture("--server", "ws://127.0.0.1:9", "--stream-id", stream_id, "--input",
                  str(source), "--speed", "0", "--spool", str(spool), *FAST_RETRY,
                  "--max-attempts", "0")
    spooled_all(cap, "everything spooled")
    cap.wait_for(lambda r: r["type"] == "status" and r["buffered_seconds"] >= seconds,
                 "the whole file captured")
    cap.proc.send_signal(signal.SIGKILL)
    cap.proc.wait(10)
    return source, spool


def drain(server: IngestServer, spool: Path) -> tuple[int, str]:
    proc = subprocess.run([sys.executable, "-m", "capture", "--server", server.url,
                           "--drain", "--spool", str(spool), "--status", "lines"],
                          capture_output=True, text=True, timeout=60)
    return proc.returncode, proc.stdout + proc.stderr


def test_drain_later_delivers_the_spool_sample_identical(tmp_path: Path) -> None:
    source, spool = capture_with_the_server_down(tmp_path, "sp-drain", 4.0)
    listing = subprocess.run([sys.executable, "-m", "capture", "--list-spool", "--spool",
                              str(spool)], capture_output=True, text=True, timeout=30)
    assert listing.returncode == 0
    assert "sp-drain" in listing.stdout and "4.00 s not acknowledged" in listing.stdout
    with IngestServer(tmp_path / "data") as server:
        code, out = drain(server, spool)
        assert code == 0, out
        info = details(server, "sp-drain")
        stored = stored_pcm(server, "sp-drain")
    want, _ = sf.read(source, dtype="int16")
    assert info["state"] == "finalized" and info["gaps"] == []
    assert np.array_equal(stored, want)
    assert "done: 200 frames (4.00 s of audio)" in out
    assert not (spool / DATA_NAME).exists()


def test_a_bit_flip_is_a_gap_of_one_frame_and_said(tmp_path: Path) -> None:
    source, spool = capture_with_the_server_down(tmp_path, "sp-flip", 2.0)
    where = DATA_OFFSET + 30 * (RECORD_BYTES + 2 * FRAME) + RECORD_BYTES + 100
    with open(spool / DATA_NAME, "r+b") as f:
        f.seek(where)
        byte = f.read(1)[0]
        f.seek(where)
        f.write(bytes([byte ^ 0x01]))
    with IngestServer(tmp_path / "data") as server:
        code, out = drain(server, spool)
        info = details(server, "sp-flip")
        stored = stored_pcm(server, "sp-flip")
    want, _ = sf.read(source, dtype="int16")
    assert code == 4, out
    assert "1 corrupt spool records (bad CRC) are sent as gaps" in out
    assert gaps_of(info) == [(30 * FRAME, 31 * FRAME)]
    assert_equal_outside(stored, want, [(30 * FRAME, 31 * FRAME)])
    assert re.search(r"0\.02 s in gaps from before the restart", out)


def test_a_torn_tail_is_cut_and_said(tmp_path: Path) -> None:
    source, spool = capture_with_the_server_down(tmp_path, "sp-torn", 2.0)
    os.truncate(spool / DATA_NAME, DATA_OFFSET + 99 * (RECORD_BYTES + 2 * FRAME) + 50)
    with IngestServer(tmp_path / "data") as server:
        code, out = drain(server, spool)
        info = details(server, "sp-torn")
        stored = stored_pcm(server, "sp-torn")
    want, _ = sf.read(source, dtype="int16")
    assert code == 0, out
    assert "cut a torn record at the end of the spool" in out
    assert info["gaps"] == [] and np.array_equal(stored, want[: 99 * FRAME])


def test_a_spool_on_a_full_filesystem_is_reported_and_the_capture_goes_on(
        tmp_path: Path, server: IngestServer) -> None:
    if os.geteuid() != 0:
        if os.environ.get("CI") == "true":
            pytest.fail("mounting a tmpfs needs root under CI")
        pytest.skip("mounting a tmpfs needs root")
    mount = tmp_path / "full"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=128k", "tmpfs", str(mount)], check=True)
    try:
        source = write_clip(tmp_path / "source.wav", RATE, 1, "PCM_16", 2.0, seed=3)
        cap = Capture("--server", server.url, "--stream-id", "sp-full", "--input", str(source),
                      "--speed", "0", "--spool", str(mount / "spool"))
        code, out = cap.finish()
    finally:
        subprocess.run(["umount", str(mount)], check=True)
    assert code == 0, (out, cap.not_json)
    [note] = [r["message"] for r in cap.records if r["type"] == "event"
              and "cannot allocate the spool" in r["message"]]
    assert "MB free" in note and "capturing without a spool" in note
    want, _ = sf.read(source, dtype="int16")
    assert np.array_equal(stored_pcm(server, "sp-full"), want)


def test_a_rerun_without_the_spool_gets_4409_and_is_told_why(tmp_path: Path,
                                                               server: IngestServer) -> None:
    source = write_clip(tmp_path / "source.wav", RATE, 1, "PCM_16", 5.0, seed=2)
    first = Capture("--server", server.url, "--stream-id", "sp-orphan", "--input", str(source),
                    "--speed", "1", "--spool", str(tmp_path / "spool"))
    first.wait_for(lambda r: r["type"] == "status" and r["acked_seconds"] >= 0.5, "0.5 s acked")
    first.proc.send_signal(signal.SIGKILL)
    first.proc.wait(10)
    rerun = Capture("--server", server.url, "--stream-id", "sp-orphan", "--input", str(source),
                    "--speed", "0")
    code, out = rerun.finish()
    assert code == 1, (out, rerun.not_json)
    error = out[-1]
    assert "4409" in error and "continues only with its spool (--spool DIR)" in error
    credential = json.loads((tmp_path / "spool" / "stream.json").read_text())["credential"]
    assert credential and credential not in "\n".join(out + first.not_json + rerun.not_json)

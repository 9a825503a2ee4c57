"""Resilience end to end: real server, real WebSockets, chaos proxy, server crashes.

Every test compares the stored PCM with the source, sample for sample.
"""

from __future__ import annotations

import asyncio
import json
import urllib.request
from pathlib import Path

import pytest
import websockets
from websockets.asyncio.server import serve

from capture.wav_source import WavFileSource
from capture.wavfile import read_wav
from tools.chaos_run import CHAOS_CONFIG, make_recording, run_scenario
from tools.ingest_process import IngestServer
from uplink.client import UplinkClient
from uplink.config import UplinkConfig
from uplink.errors import HandshakeRefused
from uplink.frames import FrameCutter
from uplink.policy import BackoffConfig, BreakerConfig, RetryBudgetConfig
from uplink.ring import OverflowPolicy, RingBuffer


def test_fifty_random_faults_and_server_crashes_store_audio_exactly(tmp_path: Path) -> None:
    source = make_recording(tmp_path / "source.wav", 60.0)
    report = asyncio.run(run_scenario(tmp_path, source, seed=2026, speed=2.0, mean_interval=0.5))
    print("chaos report:", json.dumps(report.__dict__))
    assert report.ok, report.error
    assert report.identical
    assert report.faults_total >= 50
    assert report.server_sigterms == 1 and report.server_sigkills == 1
    assert report.frames_dropped == 0
    assert report.reconnects >= 10
    assert report.recoveries == report.reconnects


@pytest.mark.parametrize("how", ["term", "kill"])
def test_server_restart_mid_stream_completes_exactly(tmp_path: Path, how: str) -> None:
    source = make_recording(tmp_path / "source.wav", 8.0)
    term = (0.4,) if how == "term" else ()
    kill = (0.4,) if how == "kill" else ()
    report = asyncio.run(
        run_scenario(tmp_path, source, seed=1, speed=2.0, mean_interval=1e9, term_at=term, kill_at=kill)
    )
    assert report.ok, report.error
    assert report.identical
    assert report.faults_total == 0
    assert report.reconnects >= 1


def test_outage_longer_than_the_buffer_records_exactly_the_reported_gap(tmp_path: Path) -> None:
    source = make_recording(tmp_path / "source.wav", 12.0)
    fmt, source_bytes = read_wav(source)
    config = UplinkConfig(
        buffer_seconds=1.0,
        ack_timeout=1.0,
        backoff=BackoffConfig(base=0.05, cap=0.2),
        breaker=BreakerConfig(failure_threshold=1000),
        budget=RetryBudgetConfig(max_initial_attempts=0),
    )

    async def scenario(server: IngestServer) -> tuple[int, int]:
        ring = RingBuffer(fmt, 320, config.buffer_seconds, OverflowPolicy.DROP_OLDEST)
        client = UplinkClient(server.url, ring, "overflow", config)
        wav = WavFileSource(source, speed=2.0)
        wav.start(FrameCutter(ring))

        async def outage() -> None:
            while client.stats().counters.acked_sample < fmt.sample_rate:  # 1 s stored
                await asyncio.sleep(0.02)
            await asyncio.to_thread(server.stop)
            # the ring overflowed (by at least 0.2 s), or the source is done anyway
            while ring.frames_dropped < 10 and not ring.closed:
                await asyncio.sleep(0.02)
            await asyncio.to_thread(server.start)

        task = asyncio.create_task(outage())
        result = await client.run()
        await task
        assert result.ok, result.error
        return result.stats.ring.frames_dropped, result.stats.ring.samples_dropped

    with IngestServer(tmp_path / "data") as server:
        frames_dropped, samples_dropped = asyncio.run(scenario(server))
        with urllib.request.urlopen(f"{server.http}/v1/streams/overflow") as resp:
            details = json.load(resp)
    assert frames_dropped >= 10 and samples_dropped == frames_dropped * 320
    [gap] = details["gaps"]
    start, end = gap["start_sample"], gap["end_sample"]
    assert end - start == samples_dropped
    _, stored = read_wav(tmp_path / "data" / "streams" / "overflow" / "audio.wav")
    align = fmt.block_align
    assert len(stored) == len(source_bytes)
    assert stored[: start * align] == source_bytes[: start * align]
    assert stored[start * align : end * align] == b"\x00" * ((end - start) * align)
    assert stored[end * align :] == source_bytes[end * align :]


def test_policy_close_on_handshake_is_fatal_without_retry_loop(tmp_path: Path) -> None:
    attempts = 0

    async def refuse(ws: websockets.asyncio.server.ServerConnection) -> None:
        nonlocal attempts
        attempts += 1
        await ws.recv()
        await ws.close(1008, "token revoked")

    async def scenario() -> None:
        async with serve(refuse, "127.0.0.1", 0) as srv:
            port = srv.sockets[0].getsockname()[1]
            ring = RingBuffer(read_wav(make_recording(tmp_path / "s.wav", 0.5))[0], 320, 5.0)
            ring.push(b"\x00" * 640)
            client = UplinkClient(f"ws://127.0.0.1:{port}", ring, "fatal", CHAOS_CONFIG)
            result = await asyncio.wait_for(client.run(), 10)
            assert not result.ok
            assert isinstance(result.error, HandshakeRefused)
            assert "1008" in str(result.error) and "token revoked" in str(result.error)
            assert result.stats.ring.held_frames == 1  # the audio is kept, not discarded

    asyncio.run(scenario())
    assert attempts == 1

"""A routine server restart costs about one backoff step, not a breaker timeout (issue 10
defect 2): the real client streaming live audio, the real server killed for 4 s and started
again on the same port; the client is back within a second of the server and the stored
audio equals the source, sample for sample."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from capture.wav_source import WavFileSource
from capture.wavfile import read_wav
from tests.e2e.conftest import stored_equals_source
from tools.chaos_run import make_recording
from tools.ingest_process import IngestServer
from uplink.client import UplinkClient
from uplink.config import PROFILES
from uplink.frames import FrameCutter
from uplink.ring import OverflowPolicy, RingBuffer


@pytest.mark.parametrize("how", ["kill", "term"])
def test_client_is_back_within_a_second_of_a_4_s_restart(tmp_path: Path, how: str) -> None:
    source = make_recording(tmp_path / "source.wav", 8.0)
    fmt, _ = read_wav(source)
    config = PROFILES["live"]

    async def scenario(server: IngestServer) -> float:
        ring = RingBuffer(fmt, 320, config.buffer_seconds, OverflowPolicy.BLOCK)
        client = UplinkClient(server.url, ring, f"restart-{how}", config)
        acked = asyncio.Event()
        client.on_ack = lambda seq: acked.set()
        wav = WavFileSource(source, speed=1.0)  # live pace: frames keep arriving meanwhile
        wav.start(FrameCutter(ring))

        async def restart() -> float:
            while client.stats().counters.acked_sample < fmt.sample_rate:  # 1 s stored
                await asyncio.sleep(0.02)
            await asyncio.to_thread(server.kill if how == "kill" else server.stop)
            await asyncio.sleep(4.0)  # long enough to open the old breaker most of the time
            await asyncio.to_thread(server.start)
            back = time.monotonic()
            acked.clear()
            await asyncio.wait_for(acked.wait(), 30)
            return time.monotonic() - back

        task = asyncio.create_task(restart())
        result = await asyncio.wait_for(client.run(), 60)
        recovery = await task
        wav.wait(5.0)
        assert result.ok, result.error
        assert result.stats.breaker == "closed"
        return recovery

    with IngestServer(tmp_path / "data") as server:
        recovery = asyncio.run(scenario(server))
    assert recovery < 1.0, f"first ack {recovery:.2f} s after the server was back"
    stored_equals_source(tmp_path / "data" / "streams" / f"restart-{how}" / "audio.wav", source)

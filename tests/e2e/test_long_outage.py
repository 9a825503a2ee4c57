"""An outage longer than the server's session timeout (docs/protocol.md §2 "Expired streams").

The real server expires the stream while the chaos proxy refuses every connection; when the
link returns, the client resumes with its credential, the server reopens the stream, and the
only audio lost is what the client's buffer could not hold — recorded as a gap.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from capture.wav_source import WavFileSource
from capture.wavfile import read_wav
from tools.chaos_proxy import ChaosProxyThread
from tools.chaos_run import make_recording
from tools.ingest_process import IngestServer
from uplink.client import UplinkClient
from uplink.config import UplinkConfig
from uplink.frames import FrameCutter
from uplink.policy import BackoffConfig, BreakerConfig, RetryBudgetConfig
from uplink.ring import OverflowPolicy, RingBuffer

SESSION_TIMEOUT = 1.0
FRAME = 320  # 20 ms at 16 kHz


def details(server: IngestServer, stream_id: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"{server.http}/v1/streams/{stream_id}") as resp:
        result: dict[str, Any] = json.load(resp)
        return result


async def wait_for(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def config(buffer_seconds: float) -> UplinkConfig:
    return UplinkConfig(
        buffer_seconds=buffer_seconds,
        ack_timeout=1.0,
        backoff=BackoffConfig(base=0.05, cap=0.2),
        breaker=BreakerConfig(failure_threshold=1000),
        budget=RetryBudgetConfig(max_initial_attempts=0),
    )


def stream_through_outage(tmp_path: Path, stream_id: str, buffer_seconds: float,
                          outage_until_dropped: int) -> tuple[IngestServer, int, int]:
    """Stream a 6 s recording at real time; after 1 s is stored, cut the link until the
    server has expired the stream (and, if asked, until the ring dropped that many frames)."""
    source = make_recording(tmp_path / "source.wav", 6.0)
    fmt, _ = read_wav(source)
    server = IngestServer(tmp_path / "data",
                          args=["--session-timeout", str(SESSION_TIMEOUT)]).start()
    proxy = ChaosProxyThread(target=("127.0.0.1", server.port)).start()
    cfg = config(buffer_seconds)

    async def scenario() -> tuple[int, int]:
        ring = RingBuffer(fmt, FRAME, cfg.buffer_seconds, OverflowPolicy.DROP_OLDEST)
        client = UplinkClient(f"ws://127.0.0.1:{proxy.port}", ring, stream_id, cfg)
        wav = WavFileSource(source, speed=1.0)
        wav.start(FrameCutter(ring))

        async def outage() -> None:
            await wait_for(lambda: client.stats().counters.acked_sample >= fmt.sample_rate,
                           10, "1 s stored")
            await asyncio.to_thread(proxy.refuse, 60.0)  # no new connections …
            await asyncio.to_thread(proxy.reset)  # … and the current one is gone

            def expired() -> bool:
                d = details(server, stream_id)
                return bool(d["state"] == "finalized" and d["end_reason"] == "expired")

            await wait_for(expired, 10, "the server to expire the stream")
            await wait_for(lambda: ring.frames_dropped >= outage_until_dropped or ring.closed,
                           10, "the ring to overflow")
            await asyncio.to_thread(proxy.end_refuse)

        task = asyncio.create_task(outage())
        result = await asyncio.wait_for(client.run(), 60)
        await task
        assert result.ok, result.error
        return result.stats.ring.frames_dropped, result.stats.ring.samples_dropped

    try:
        frames_dropped, samples_dropped = asyncio.run(scenario())
    except BaseException:
        server.stop()
        raise
    finally:
        proxy.stop()
    return server, frames_dropped, samples_dropped


def test_outage_past_the_session_timeout_within_the_buffer_loses_nothing(tmp_path: Path) -> None:
    server, dropped, _ = stream_through_outage(tmp_path, "long-outage", 30.0, 0)
    try:
        d = details(server, "long-outage")
    finally:
        server.stop()
    assert dropped == 0
    assert d["state"] == "finalized" and d["end_reason"] == "ended" and d["reopened"] == 1
    assert d["gaps"] == []
    fmt, source = read_wav(tmp_path / "source.wav")
    _, stored = read_wav(tmp_path / "data" / "streams" / "long-outage" / "audio.wav")
    assert stored == source


def test_outage_past_the_session_timeout_and_the_buffer_records_one_exact_gap(
        tmp_path: Path) -> None:
    server, dropped, samples_dropped = stream_through_outage(tmp_path, "overflowed", 0.5, 30)
    try:
        d = details(server, "overflowed")
    finally:
        server.stop()
    assert dropped >= 30 and samples_dropped == dropped * FRAME
    assert d["end_reason"] == "ended" and d["reopened"] == 1
    [gap] = d["gaps"]
    start, end = gap["start_sample"], gap["end_sample"]
    assert end - start == samples_dropped
    # the gap sits on the capture's wall clock (protocol §2 wall_time)
    started = datetime.fromisoformat(d["capture_started"]).timestamp()
    assert abs(time.time() - started) < 120
    gap_started = datetime.fromisoformat(gap["started"]).timestamp()
    assert gap_started == pytest.approx(started + start / 16000, abs=0.002)
    fmt, source = read_wav(tmp_path / "source.wav")
    _, stored = read_wav(tmp_path / "data" / "streams" / "overflowed" / "audio.wav")
    align = fmt.block_align
    assert len(stored) == len(source)
    assert stored[: start * align] == source[: start * align]
    assert stored[start * align : end * align] == b"\x00" * ((end - start) * align)
    assert stored[end * align :] == source[end * align :]

"""The asyncio shell against the real server: observers, failures, URLs."""

from __future__ import annotations

import asyncio
import time
import wave
from pathlib import Path

import pytest

from tools.ingest_process import IngestServer, free_port
from uplink.audio import AudioFormat, SampleType
from uplink.client import UplinkClient, endpoint_url
from uplink.config import UplinkConfig
from uplink.core import ConnectionState
from uplink.errors import AddressUnresolvable, HandshakeRefused, Interrupted, RetryBudgetExhausted
from uplink.policy import RetryBudgetConfig
from uplink.ring import RingBuffer

FMT = AudioFormat(16_000, 1, SampleType.INT16)


def filled_ring(frames: int) -> RingBuffer:
    ring = RingBuffer(FMT, 320, 5.0)
    for i in range(frames):
        ring.push(bytes([i % 256]) * 640)
    ring.close()
    return ring


def test_endpoint_url() -> None:
    assert endpoint_url("ws://h:1") == "ws://h:1/v1/stream"
    assert endpoint_url("h:1") == "ws://h:1/v1/stream"
    assert endpoint_url("wss://h/custom/path") == "wss://h/custom/path"
    with pytest.raises(ValueError):
        endpoint_url("http://h:1")


def test_a_failing_observer_does_not_stop_the_stream(tmp_path: Path) -> None:
    seen: list[str] = []

    def broken(state: ConnectionState) -> None:
        raise RuntimeError("observer bug")

    async def run(server: IngestServer) -> None:
        client = UplinkClient(server.url, filled_ring(50), "observed", UplinkConfig())
        client.on_state(broken)
        client.on_state(lambda s: seen.append(s.name))

        def bad_ack(seq: int) -> None:
            raise RuntimeError("hook bug")

        client.on_ack = bad_ack
        states = []

        async def watch() -> None:
            async for state in client.states():
                states.append(state.name)

        watcher = asyncio.create_task(watch())
        result = await asyncio.wait_for(client.run(), 30)
        await asyncio.wait_for(watcher, 5)
        assert result.ok, result.error
        assert result.stats.counters.acked_seq == 50
        assert states[-1] == "done"

    with IngestServer(tmp_path / "data") as server:
        asyncio.run(run(server))
    assert seen[0] == "connecting" and seen[-1] == "done"


def test_give_up_while_the_server_is_unreachable_keeps_the_audio(tmp_path: Path) -> None:
    async def run() -> None:
        ring = filled_ring(10)
        client = UplinkClient("ws://127.0.0.1:9", ring, "nowhere", UplinkConfig())

        def on_state(state: ConnectionState) -> None:
            if state.name == "reconnecting":
                client.give_up("user pressed Ctrl-C twice")

        client.on_state(on_state)
        result = await asyncio.wait_for(client.run(), 30)
        assert isinstance(result.error, Interrupted)
        assert result.stats.ring.held_frames == 10

    asyncio.run(run())


def test_refused_connection_names_the_server_it_expected() -> None:
    url = f"ws://127.0.0.1:{free_port()}/v1/stream"
    config = UplinkConfig(budget=RetryBudgetConfig(max_initial_attempts=1))
    result = asyncio.run(asyncio.wait_for(UplinkClient(url, filled_ring(1), "r", config).run(), 30))
    assert isinstance(result.error, RetryBudgetExhausted)
    assert f"connection refused — is echopanel-ingest running at {url}?" in str(result.error)


def test_unresolvable_host_fails_before_any_retry() -> None:
    client = UplinkClient("ws://no-such-host.invalid:8765", filled_ring(1), "dns", UplinkConfig())
    began = time.monotonic()
    result = asyncio.run(asyncio.wait_for(client.run(), 30))
    assert isinstance(result.error, AddressUnresolvable), result.error
    assert "no-such-host.invalid" in str(result.error)
    assert time.monotonic() - began < 5.0  # not ~45 s of retries
    assert result.stats.ring.held_frames == 1


def test_bad_labels_and_cafile_for_ws_are_refused_at_construction(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="label"):
        UplinkClient("ws://h:1", filled_ring(1), "l", UplinkConfig(), labels={"": "x"})
    with pytest.raises(ValueError, match="wss://"):
        UplinkClient("ws://h:1", filled_ring(1), "l", UplinkConfig(), cafile="ca.pem")
    with pytest.raises(ValueError, match="CA file"):
        UplinkClient("wss://h:1", filled_ring(1), "l", UplinkConfig(),
                     cafile=str(tmp_path / "missing.pem"))


def test_retry_after_a_refused_token_delivers_everything(tmp_path: Path) -> None:
    """Fatal keeps the audio: a wrong token fails the run; with the right one, retry() and a
    second run() deliver the whole ring (issue 10 defect 7)."""
    async def run(server: IngestServer) -> None:
        ring = filled_ring(60)
        client = UplinkClient(server.url, ring, "retry-token", UplinkConfig(), token="wrong")
        gaps: list[tuple[int, int, str]] = []
        client.on_gap = lambda start, n, why: gaps.append((start, n, why))
        first = await asyncio.wait_for(client.run(), 30)
        assert isinstance(first.error, HandshakeRefused), first.error
        assert first.stats.ring.held_frames == 60
        with pytest.raises(RuntimeError, match="retry"):
            await client.run()
        client.retry(token="the-right-token-0123456789")
        second = await asyncio.wait_for(client.run(), 30)
        assert second.ok, second.error
        assert second.stats.counters.acked_seq == 60 and second.gap_mismatch is None
        assert gaps == []

    with IngestServer(tmp_path / "data", args=["--token", "the-right-token-0123456789"]) as server:
        asyncio.run(run(server))
        stored = server.data_dir / "streams" / "retry-token" / "audio.wav"
        with wave.open(str(stored)) as wav:
            pcm = wav.readframes(wav.getnframes())
    assert pcm == b"".join(bytes([i % 256]) * 640 for i in range(60))


def test_a_retried_run_keeps_time_again() -> None:
    """The second run() must arm its own timer (backoff waits), not trust the first run's."""
    url = f"ws://127.0.0.1:{free_port()}/v1/stream"
    config = UplinkConfig(budget=RetryBudgetConfig(max_initial_attempts=2))

    async def run() -> None:
        client = UplinkClient(url, filled_ring(1), "again", config)
        first = await asyncio.wait_for(client.run(), 30)
        assert isinstance(first.error, RetryBudgetExhausted)
        client.retry()
        second = await asyncio.wait_for(client.run(), 10)  # a lost timer would hang here
        assert isinstance(second.error, RetryBudgetExhausted)
        assert "2 attempts" in str(second.error)

    asyncio.run(run())

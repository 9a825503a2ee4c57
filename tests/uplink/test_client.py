"""The asyncio shell against the real server: observers, failures, URLs."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tools.ingest_process import IngestServer
from uplink.audio import AudioFormat, SampleType
from uplink.client import UplinkClient, endpoint_url
from uplink.config import UplinkConfig
from uplink.core import ConnectionState
from uplink.errors import Interrupted
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

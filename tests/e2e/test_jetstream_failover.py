"""Scale-out on NATS JetStream, end to end (docs/scale-out.md): a 3-node NATS cluster
on loopback (R3), two real ingest processes with `--store nats://...`, the real uplink
client given both URLs. The ingest node the capture streams to is SIGKILLed mid-stream; the
client resumes on the other node, which takes the stream over (lease, fence, tail) and
welcomes it at the durable position JetStream holds. The stored audio, fetched from the
killed node once it is back (any node serves any stream), equals the source sample for
sample."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import httpx
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

if not os.environ.get("CI"):
    pytest.importorskip("nats")

from tools.nats_cluster import NatsCluster  # noqa: E402


def node_args(cluster: NatsCluster, name: str) -> list[str]:
    return ["--store", cluster.urls, "--replicas", "3", "--min-replicas", "3",
            "--node-name", name, "--lease-seconds", "10"]


def test_capture_resumes_on_another_node_after_a_sigkill(tmp_path: Path) -> None:
    source = make_recording(tmp_path / "source.wav", 6.0)
    fmt, _ = read_wav(source)
    config = PROFILES["live"]
    sid = "js-failover"

    async def scenario(a: IngestServer, b: IngestServer) -> None:
        ring = RingBuffer(fmt, 320, config.buffer_seconds, OverflowPolicy.BLOCK)
        client = UplinkClient(f"{a.url},{b.url}", ring, sid, config)
        wav = WavFileSource(source, speed=2.0)
        wav.start(FrameCutter(ring))

        async def kill_a() -> None:
            while client.stats().counters.acked_sample < fmt.sample_rate:  # 1 s stored on A
                await asyncio.sleep(0.02)
            await asyncio.to_thread(a.kill)

        killer = asyncio.create_task(kill_a())
        result = await asyncio.wait_for(client.run(), 60)
        await asyncio.wait_for(killer, 5)
        wav.wait(5.0)
        assert result.ok, result.error

    with NatsCluster(tmp_path / "nats", size=3) as cluster, \
            IngestServer(tmp_path / "a", args=node_args(cluster, "a")) as a, \
            IngestServer(tmp_path / "b", args=node_args(cluster, "b")) as b:
        asyncio.run(scenario(a, b))
        a.start()  # back, with no stream in memory: it answers from JetStream
        detail = httpx.get(f"{a.http}/v1/streams/{sid}", timeout=10).json()
        assert detail["state"] == "finalized" and detail["gap_count"] == 0
        listed = httpx.get(f"{a.http}/v1/streams", timeout=10).json()["streams"]
        assert [s["stream_id"] for s in listed] == [sid]
        stored = tmp_path / "stored.wav"
        stored.write_bytes(httpx.get(f"{a.http}/v1/streams/{sid}/audio.wav", timeout=30).content)
    stored_equals_source(stored, source)

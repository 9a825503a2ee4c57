"""Live listeners end to end (docs/listeners.md, protocol §11): the real server on 127.0.0.1,
a real uplink streaming the bundled speech recording, real listeners over real WebSockets;
what a listener wrote is compared with the source sample for sample."""

from __future__ import annotations

import asyncio
from pathlib import Path

from capture.wavfile import read_wav
from tests.e2e.listen_support import collect, details, feed, wait_until
from tools.chaos_run import make_recording
from tools.ingest_process import IngestServer


def base(server: IngestServer) -> str:
    return f"ws://127.0.0.1:{server.port}"


def test_listener_from_the_start_gets_exactly_the_source(server: IngestServer,
                                                          tmp_path: Path) -> None:
    fmt, source = read_wav(make_recording(tmp_path / "source.wav", 3.0))

    async def scenario() -> None:
        listener = asyncio.create_task(collect(base(server), "plain-1"))
        await asyncio.sleep(0.2)  # the stream does not exist yet: the listener retries (404?)
        summary = await feed(base(server), "plain-1", fmt, source, speed=4.0)
        assert summary.ok
        got = await listener
        assert got.end_reason == "ended"
        assert got.gaps == []
        assert bytes(got.audio) == source
        assert got.states[:1] == ["connected"] or got.states == []

    asyncio.run(scenario())


def test_late_listener_catches_up_then_follows(server: IngestServer, tmp_path: Path) -> None:
    fmt, source = read_wav(make_recording(tmp_path / "source.wav", 4.0))

    async def scenario() -> None:
        feeding = asyncio.create_task(feed(base(server), "late-1", fmt, source, speed=2.0))
        await wait_until(lambda: _samples(server, "late-1") >= fmt.sample_rate, 10,
                         "1 s durable")
        got = await collect(base(server), "late-1", start=0)
        assert (await feeding).ok
        assert bytes(got.audio) == source and got.end_reason == "ended"
        # from a sample position in the middle, and in seconds
        mid = await collect(base(server), "late-1", start=12345)
        assert bytes(mid.audio) == source[12345 * fmt.block_align:]
        secs = await collect(base(server), "late-1", start="1.5s")
        assert bytes(secs.audio) == source[24000 * fmt.block_align:]

    asyncio.run(scenario())


def _samples(server: IngestServer, stream_id: str) -> int:
    try:
        return int(details(server.http, stream_id)["samples"])
    except Exception:
        return 0

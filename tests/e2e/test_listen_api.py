"""The listen endpoint's edges and discovery (protocol §11) on the real server with tokens:
authentication, refusals before the upgrade, `from=live`, a finalized stream, `GET
/v1/events` (Server-Sent Events), `GET /v1/streams?state=open`, HEAD on audio.wav."""

from __future__ import annotations

import asyncio
import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import websockets
from websockets.exceptions import InvalidStatus

from capture.wavfile import read_wav
from tests.e2e import listen_support
from tests.e2e.listen_support import collect
from tests.support.server import server_fixture
from tools.chaos_run import make_recording
from tools.ingest_process import IngestServer
from uplink.config import UplinkConfig
from uplink.listen import ListenError, listen

TOKEN = "listen-test-token-0123456789abcdef"
server = server_fixture(scope="module", args=["--token", TOKEN])
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def get(srv: IngestServer, path: str, method: str = "GET", timeout: float = 10) -> Any:
    req = urllib.request.Request(f"{srv.http}{path}", headers=AUTH, method=method)
    return urllib.request.urlopen(req, timeout=timeout)


def sse_events(srv: IngestServer) -> Iterator[dict[str, Any]]:
    return listen_support.sse_events(srv.http, AUTH)


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, bytes]:
    return read_wav(make_recording(tmp_path_factory.mktemp("clip") / "s.wav", 2.0))


def uplink_config() -> UplinkConfig:
    from tests.e2e.listen_support import FAST_UPLINK
    return FAST_UPLINK


def stream(srv: IngestServer, sid: str, clip: tuple[Any, bytes], speed: float = 0.0) -> None:
    fmt, data = clip

    async def run() -> None:
        from uplink import AsyncUplink
        async with AsyncUplink(f"ws://127.0.0.1:{srv.port}", stream_id=sid, token=TOKEN,
                               rate=fmt.sample_rate, overflow="block",
                               config=uplink_config()) as up:
            await up.push(data)
            assert (await up.aclose(timeout=30)).ok

    asyncio.run(run())


def test_refusals_before_the_upgrade(server: IngestServer, clip: tuple[Any, bytes]) -> None:
    stream(server, "api-refusals", clip)
    base = f"ws://127.0.0.1:{server.port}/v1/streams"

    async def status(url: str, headers: dict[str, str] | None) -> int:
        with pytest.raises(InvalidStatus) as e:
            async with websockets.connect(url, additional_headers=headers):
                pass
        return e.value.response.status_code

    async def scenario() -> None:
        assert await status(f"{base}/api-refusals/listen", None) == 401
        assert await status(f"{base}/api-refusals/listen?token={TOKEN}", None) == 401
        assert await status(f"{base}/api-refusals/listen",
                            {"Authorization": "Bearer wrong-token-0123456789abcdef"}) == 403
        assert await status(f"{base}/nope/listen", AUTH) == 404
        assert await status(f"{base}/api-refusals/listen?from=yesterday", AUTH) == 400
        with pytest.raises(ListenError, match="404"):
            async with listen(f"ws://127.0.0.1:{server.port}", "nope", token=TOKEN) as s:
                async for _ in s:
                    pass

    asyncio.run(scenario())


def test_finalized_stream_and_from_live(server: IngestServer, clip: tuple[Any, bytes]) -> None:
    stream(server, "api-final", clip)
    fmt, data = clip
    url = f"ws://127.0.0.1:{server.port}"

    async def scenario() -> None:
        whole = await collect(url, "api-final", token=TOKEN)
        assert bytes(whole.audio) == data and whole.end_reason == "ended"
        tail = await collect(url, "api-final", start=len(data) // 2 // fmt.block_align,
                             token=TOKEN)
        assert bytes(tail.audio) == data[len(data) // 2 // fmt.block_align * fmt.block_align:]
        nothing = await collect(url, "api-final", start="live", token=TOKEN)
        assert nothing.audio == b"" and nothing.end_reason == "ended"

    asyncio.run(scenario())


def test_discovery_announces_open_gap_disconnect_and_finalized(
        server: IngestServer, clip: tuple[Any, bytes]) -> None:
    events = sse_events(server)
    first = next(events)
    assert first["type"] == "snapshot" and isinstance(first["streams"], list)
    stream(server, "api-discovered", clip)
    seen = []
    for event in events:
        if event.get("stream_id") == "api-discovered":
            seen.append(event["event"])
            if event["event"] == "finalized":
                assert event["end_reason"] == "ended"
                assert event["at_sample"] == len(clip[1]) // clip[0].block_align
                break
    assert seen[0] == "opened" and seen[-1] == "finalized"


def test_state_filter_and_head(server: IngestServer, clip: tuple[Any, bytes],
                               tmp_path: Path) -> None:
    stream(server, "api-filter", clip)
    finalized = json.load(get(server, "/v1/streams?state=finalized"))["streams"]
    assert "api-filter" in {s["stream_id"] for s in finalized}
    assert all(s["state"] == "open" for s in json.load(get(server, "/v1/streams?state=open"))
               ["streams"])
    head = get(server, "/v1/streams/api-filter/audio.wav", method="HEAD")
    assert head.status == 200 and int(head.headers["content-length"]) > len(clip[1])
    assert head.read() == b""


def test_feed_helper_with_token_is_listened_live(server: IngestServer,
                                                 clip: tuple[Any, bytes]) -> None:
    fmt, data = clip
    url = f"ws://127.0.0.1:{server.port}"

    async def scenario() -> None:
        from dataclasses import replace

        from tests.e2e.listen_support import FAST_LISTENER
        listening = asyncio.create_task(collect(url, "api-live", token=TOKEN,
                                                config=replace(FAST_LISTENER)))
        cfg = replace(uplink_config())
        from uplink import AsyncUplink
        async with AsyncUplink(url, stream_id="api-live", token=TOKEN, rate=fmt.sample_rate,
                               overflow="block", config=cfg) as up:
            block = 640
            for i in range(0, len(data), block):
                await up.push(data[i:i + block])
                await asyncio.sleep(0.005)
            assert (await up.aclose(timeout=30)).ok
        got = await listening
        assert bytes(got.audio) == data

    asyncio.run(scenario())



def test_sigterm_ends_listeners_and_discovery_at_once(tmp_path: Path,
                                                      clip: tuple[Any, bytes]) -> None:
    """A listener gets 1012 and the discovery response ends: neither holds the shutdown."""
    import time

    from uplink import Uplink

    srv = IngestServer(tmp_path / "data", args=["--token", TOKEN]).start()
    try:
        up = Uplink(f"ws://127.0.0.1:{srv.port}", stream_id="api-term", token=TOKEN,
                    rate=16000, config=uplink_config())
        up.push(clip[1][:32000])
        deadline = time.monotonic() + 10
        while up.stats().counters.acked_sample < 16000:  # the stream exists and holds 1 s
            assert time.monotonic() < deadline, "the stream was not created"
            time.sleep(0.02)
        events = sse_events(srv)
        assert next(events)["type"] == "snapshot"

        async def one_listener() -> int | None:
            async with websockets.connect(
                    f"ws://127.0.0.1:{srv.port}/v1/streams/api-term/listen?from=live",
                    additional_headers=AUTH) as ws:
                await ws.recv()
                try:
                    while True:
                        await ws.recv()
                except websockets.ConnectionClosed as e:
                    return e.rcvd.code if e.rcvd else None

        async def scenario() -> int | None:
            task = asyncio.create_task(one_listener())
            await asyncio.sleep(0.5)
            t0 = time.monotonic()
            assert await asyncio.to_thread(srv.stop, 10.0) == 0
            assert time.monotonic() - t0 < 5.0
            return await task

        assert asyncio.run(scenario()) == 1012
        up.abandon()
    finally:
        srv.stop()

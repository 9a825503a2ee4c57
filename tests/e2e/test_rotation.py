"""Several server URLs against real local servers (docs/resilience.md, "Several servers").

With the local store a stream cannot move to another server (each holds its own streams),
so these are the cases where moving is right without shared storage:

- a new stream whose first URL is down: the capture CLI and the embedding API move to the
  second server at once and deliver everything there;
- a listener whose server dies, over two servers that each hold the same stream (the same
  recording captured to both under one id): it resumes at its position on the other one and
  its output is sample-identical.

Resuming one capture's stream on another node needs the JetStream store (docs/scale-out.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from pathlib import Path

from capture.wavfile import read_wav
from tests.e2e.conftest import stored_equals_source
from tests.e2e.test_capture_cli import Capture, state_is, stored
from tools.chaos_proxy import ChaosProxyThread
from tools.chaos_run import make_recording
from tools.ingest_process import IngestServer, free_port
from uplink.embed import AsyncUplink, Uplink
from uplink.listen import ChunkKind, ListenStream


def test_the_capture_moves_past_a_first_server_that_is_down(server: IngestServer,
                                                              tmp_path: Path) -> None:
    clip = make_recording(tmp_path / "clip.wav", 3.0)
    down = f"ws://127.0.0.1:{free_port()}"  # nothing listens there: refused
    cap = Capture("--server", f"{down},{server.url}", "--input", str(clip), "--speed", "0",
                  "--stream-id", "rotated-cli")
    code, stdout = cap.finish()
    assert code == 0, (cap.records[-3:], cap.not_json)
    assert "stream_id: rotated-cli" in stdout
    stored_equals_source(stored(server, "rotated-cli"), clip)
    states = [(r["state"], r["server"]) for r in cap.records if r["type"] == "state"]
    assert states[0] == ("connecting", f"{down}/v1/stream")
    # refused: the next server is due at once (no backoff within a round)
    assert states[1][0] == "reconnecting" and states[1][1] == server.url
    assert ("connected", server.url) in states
    exit_record = cap.wait_for(lambda r: r["type"] == "exit", "exit record")
    assert exit_record["server"] == server.url
    assert cap.wait_for(state_is("done"), "done")["server"] == server.url


def test_the_embedding_api_takes_a_list(server: IngestServer, tmp_path: Path) -> None:
    fmt, data = read_wav(make_recording(tmp_path / "clip.wav", 1.0))
    down = f"ws://127.0.0.1:{free_port()}"
    with Uplink([down, server.url], stream_id="rotated-sync", rate=fmt.sample_rate,
                dtype="int16") as up:
        up.push(data)
    assert up.stats().state.server == server.url
    assert read_wav(stored(server, "rotated-sync"))[1] == data

    async def run() -> str:
        async with AsyncUplink(f"{down},{server.url}", stream_id="rotated-async",
                               rate=fmt.sample_rate, dtype="int16") as aup:
            await aup.push(data)
        return aup.client.url

    assert asyncio.run(run()) == server.url
    assert read_wav(stored(server, "rotated-async"))[1] == data


def test_a_listener_resumes_on_the_other_server_when_its_server_dies(tmp_path: Path) -> None:
    clip = make_recording(tmp_path / "clip.wav", 10.0)
    fmt, data = read_wav(clip)
    with IngestServer(tmp_path / "a") as a, IngestServer(tmp_path / "b") as b:
        for srv in (a, b):  # shared-nothing: each server gets its own copy of the stream
            with Uplink(srv.url, stream_id="twin", rate=fmt.sample_rate, dtype="int16") as up:
                up.push(data)
        # a's audio crosses a slow link (100 kB/s: the 320 kB stream takes ~3 s), so the
        # listener is mid-stream when a goes away
        proxy = ChaosProxyThread(target=("127.0.0.1", a.port)).start()
        try:
            proxy.set_bandwidth(100_000)
            got, stream = asyncio.run(_listen_killing_the_first(
                [f"ws://127.0.0.1:{proxy.port}", b.url.removesuffix("/v1/stream")], proxy))
        finally:
            proxy.stop()
    assert stream.reconnects == 1 and stream.server == b.url.removesuffix("/v1/stream")
    assert got == data


async def _listen_killing_the_first(servers: list[str],
                                    proxy: ChaosProxyThread) -> tuple[bytes, ListenStream]:
    stream = ListenStream(servers, "twin", 0)
    audio = bytearray()
    killed = threading.Event()
    try:
        async for chunk in stream:
            if chunk.kind is ChunkKind.AUDIO:
                audio += chunk.data
                if not killed.is_set():
                    killed.set()
                    # the first server dies: its connections reset, new ones refused
                    await asyncio.to_thread(proxy.refuse, 60.0)
                    await asyncio.to_thread(proxy.reset)
            elif chunk.kind is ChunkKind.END:
                break
    finally:
        with contextlib.suppress(Exception):
            await stream.aclose()
    return bytes(audio), stream

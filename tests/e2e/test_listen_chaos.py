"""Live listeners under faults (docs/listeners.md): the uplink's link and the listener's own
link each go through a chaos proxy (resets, black holes), the server is stopped with SIGTERM
and killed with SIGKILL mid-stream; a capture loses audio to a long outage (a gap); a
listener stops reading; 100 listeners follow one stream. Every listener's output is compared
with the source sample for sample."""

from __future__ import annotations

import asyncio
import dataclasses
import socket
import time
from pathlib import Path

import numpy as np

from capture.wavfile import read_wav
from tests.e2e.listen_support import (
    FAST_LISTENER,
    FAST_UPLINK,
    collect,
    details,
    feed,
    wait_until,
)
from tools.chaos_proxy import ChaosProxyThread
from tools.chaos_run import make_recording
from tools.ingest_process import IngestServer
from uplink.audio import AudioFormat, SampleType


def _samples(server: IngestServer, stream_id: str) -> int:
    try:
        return int(details(server.http, stream_id)["samples"])
    except Exception:  # not created yet, or the server is restarting
        return 0


def test_faults_on_both_links_and_server_sigterm_sigkill(tmp_path: Path) -> None:
    fmt, source = read_wav(make_recording(tmp_path / "source.wav", 8.0))
    server = IngestServer(tmp_path / "data").start()
    up = ChaosProxyThread(target=("127.0.0.1", server.port)).start()
    li = ChaosProxyThread(target=("127.0.0.1", server.port)).start()
    sid = "chaos-listen"

    async def scenario() -> None:
        feeding = asyncio.create_task(feed(f"ws://127.0.0.1:{up.port}", sid, fmt, source,
                                           speed=2.0))
        listening = asyncio.create_task(collect(f"ws://127.0.0.1:{li.port}", sid))
        second = fmt.sample_rate

        async def step(after_samples: int, fault: str) -> None:
            await wait_until(lambda: _samples(server, sid) >= after_samples, 20, fault)
            match fault:
                case "listener reset":
                    await asyncio.to_thread(li.reset)
                case "uplink reset":
                    await asyncio.to_thread(up.reset)
                case "listener blackhole":
                    await asyncio.to_thread(li.blackhole, 0.8)
                case "SIGTERM":
                    await asyncio.to_thread(server.stop)
                    await asyncio.to_thread(server.start)
                case "SIGKILL":
                    await asyncio.to_thread(server.kill)
                    await asyncio.to_thread(server.start)
                case "uplink blackhole":
                    await asyncio.to_thread(up.blackhole, 0.5)

        for at, fault in [(second // 2, "listener reset"), (second, "uplink reset"),
                          (3 * second // 2, "listener blackhole"), (2 * second, "SIGTERM"),
                          (3 * second, "SIGKILL"), (4 * second, "uplink blackhole"),
                          (5 * second, "listener reset")]:
            await step(at, fault)
        summary = await feeding
        assert summary.ok, summary.error
        got = await listening
        assert got.end_reason == "ended"
        assert got.gaps == []
        assert "disconnected" in got.states and "resumed" in got.states  # the uplink's
        assert got.reconnects >= 2  # faults that overlap an outage share one reconnect
        assert len(got.audio) == len(source)
        assert bytes(got.audio) == source

    try:
        asyncio.run(scenario())
    finally:
        up.stop()
        li.stop()
        server.stop()


def test_gap_events_are_exactly_the_recorded_gaps(tmp_path: Path) -> None:
    fmt, source = read_wav(make_recording(tmp_path / "source.wav", 4.0))
    server = IngestServer(tmp_path / "data").start()
    up = ChaosProxyThread(target=("127.0.0.1", server.port)).start()
    sid = "gappy"
    live = dataclasses.replace(FAST_UPLINK, buffer_seconds=0.5)

    async def scenario() -> None:
        feeding = asyncio.create_task(feed(f"ws://127.0.0.1:{up.port}", sid, fmt, source,
                                           speed=1.0, config=live, overflow="drop-oldest"))
        listening = asyncio.create_task(collect(f"ws://127.0.0.1:{server.port}", sid))
        await wait_until(lambda: _samples(server, sid) >= fmt.sample_rate, 10, "1 s stored")
        await asyncio.to_thread(up.refuse, 30.0)
        await asyncio.to_thread(up.reset)
        await asyncio.sleep(1.5)  # the 0.5 s ring overflows: about 1 s is lost
        await asyncio.to_thread(up.end_refuse)
        summary = await feeding
        assert summary.ok and summary.frames_dropped > 0
        got = await listening
        recorded = [(g["start_sample"], g["end_sample"]) for g in details(server.http, sid)["gaps"]]
        assert recorded and got.gaps == recorded
        align = fmt.block_align
        _, stored = read_wav(tmp_path / "data" / "streams" / sid / "audio.wav")
        assert bytes(got.audio) == stored
        edges = [0] + [x for g in recorded for x in g] + [len(source) // align]
        for start, end in zip(edges[::2], edges[1::2], strict=True):  # between the gaps
            assert got.audio[start * align:end * align] == source[start * align:end * align]

    try:
        asyncio.run(scenario())
    finally:
        up.stop()
        server.stop()


def test_a_stalled_listener_is_cut_off_and_ingest_goes_on(tmp_path: Path) -> None:
    fmt = AudioFormat(48000, 2, SampleType.INT16)
    big = np.random.default_rng(1).integers(-3000, 3000, 48000 * 2 * 40,
                                            dtype=np.int16).tobytes()  # 40 s: 7.7 MB
    _, speech = read_wav(make_recording(tmp_path / "speech.wav", 2.0))
    speech_fmt = AudioFormat(16000, 1, SampleType.INT16)
    server = IngestServer(tmp_path / "data", args=["--listener-stall-timeout", "1"]).start()

    async def scenario() -> None:
        assert (await feed(f"ws://127.0.0.1:{server.port}", "big", fmt, big)).ok
        stalled = socket.socket()
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stalled.connect(("127.0.0.1", server.port))
        stalled.sendall(b"GET /v1/streams/big/listen?from=start HTTP/1.1\r\n"
                        b"Host: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                        b"Sec-WebSocket-Version: 13\r\n\r\n")
        assert stalled.recv(12) == b"HTTP/1.1 101"  # then it reads nothing more
        # Meanwhile a capture streams live and its acks keep coming.
        t0 = time.monotonic()
        summary = await feed(f"ws://127.0.0.1:{server.port}", "live", speech_fmt, speech,
                             speed=1.0)
        assert summary.ok and time.monotonic() - t0 < 4.0
        log = server.log_path
        await wait_until(lambda: "closing with 4429" in log.read_text(), 10, "the 4429 close")
        # what the stalled socket still holds ends: the server dropped it
        stalled.settimeout(10)
        total = 0
        try:
            while chunk := stalled.recv(1 << 16):
                total += len(chunk)
        except ConnectionResetError:
            pass
        assert total < len(big)
        stalled.close()
        # a well-behaved listener of the same stream still gets all of it
        got = await collect(f"ws://127.0.0.1:{server.port}", "big")
        assert bytes(got.audio) == big

    try:
        asyncio.run(scenario())
    finally:
        server.stop()


def test_100_concurrent_listeners_each_get_the_source(tmp_path: Path) -> None:
    fmt, source = read_wav(make_recording(tmp_path / "source.wav", 3.0))
    server = IngestServer(tmp_path / "data").start()
    url = f"ws://127.0.0.1:{server.port}"
    calm = dataclasses.replace(FAST_LISTENER, ping_interval=5.0, ping_timeout=5.0)

    async def scenario() -> None:
        listeners = [asyncio.create_task(collect(url, "crowd", config=calm)) for _ in range(100)]
        assert (await feed(url, "crowd", fmt, source, speed=3.0)).ok
        results = await asyncio.gather(*listeners)
        for got in results:
            assert got.end_reason == "ended" and bytes(got.audio) == source

    try:
        asyncio.run(scenario())
    finally:
        server.stop()

"""Limits (docs/protocol.md §5, §10): connections overall and per token (HTTP 503 / 429
before the upgrade, retriable), open streams (1013), stream length (1008), and a peer that
stops reading (dropped, its slot and stream released)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.exceptions import InvalidStatus

import ingest_server.connection
from capture.frames import FrameCutter
from capture.wav_source import WavFileSource
from capture.wavfile import read_wav
from ingest_server.config import ServerConfig
from ingest_server.connection import Connection
from ingest_server.metrics import Metrics
from ingest_server.sessions import Registry
from ingest_server.storage import Store
from tools.chaos_run import make_recording
from uplink.client import UplinkClient
from uplink.config import UplinkConfig
from uplink.core import ConnectionState
from uplink.policy import BackoffConfig, BreakerConfig, RetryBudgetConfig
from uplink.ring import OverflowPolicy, RingBuffer
from uplink.wire import CloseCode, Hello, encode_audio, encode_control

from .client import FMT, FRAME, Client, Closed, frames
from .harness import WAIT, Running, in_process, scrape, value

A = "limits-token-A-0123456789"
B = "limits-token-B-0123456789"


def refused_status(url: str, token: str | None = None) -> tuple[int, str | None]:
    with pytest.raises(InvalidStatus) as e:
        Client(url, token)
    return e.value.response.status_code, e.value.response.headers.get("Retry-After")


def wait_connections(srv: Running, n: int) -> None:
    """Until the server has let go of closed connections (it counts them on its loop)."""
    async def settle() -> None:
        while len(srv.service.connections) > n:
            waits = [asyncio.create_task(c.finished.wait()) for c in srv.service.connections]
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            for w in waits:
                w.cancel()
            await asyncio.sleep(0)  # let the finished one's handler give its slot back
    srv.call(settle())


def test_connection_limits_answer_503_and_429_before_the_upgrade(tmp_path: Path) -> None:
    with in_process(tmp_path / "data", max_connections=4, max_connections_per_token=2,
                    tokens=(A, B)) as srv:
        a1, a2 = Client(srv.url, A), Client(srv.url, A)
        assert refused_status(srv.url, A) == (429, "5")  # A's third
        b1, b2 = Client(srv.url, B), Client(srv.url, B)
        assert refused_status(srv.url, B) == (503, "5")  # the fifth overall
        m = scrape(srv.http, A)
        assert value(m, "echopanel_upgrades_rejected_total", limit="per_token") == 1
        assert value(m, "echopanel_upgrades_rejected_total", limit="max_connections") == 1
        assert value(m, "echopanel_connections") == 4
        a1.ws.close()
        wait_connections(srv, 3)
        with Client(srv.url, A) as a3:  # a slot and A's quota are free again
            a3.hello("after-release")
        for c in (a2, b1, b2):
            c.ws.close()


def test_the_uplink_rides_out_a_full_server(tmp_path: Path) -> None:
    """503 is retriable (§7): the uplink backs off and streams once a slot frees up."""
    source = make_recording(tmp_path / "source.wav", 2.0)
    fmt, pcm = read_wav(source)
    config = UplinkConfig(backoff=BackoffConfig(base=0.05, cap=0.2),
                          breaker=BreakerConfig(failure_threshold=1000),
                          budget=RetryBudgetConfig(max_initial_attempts=0))
    with in_process(tmp_path / "data", max_connections=1) as srv:
        holder = Client(srv.url)  # takes the only slot

        async def scenario() -> None:
            refused = asyncio.Event()

            def on_state(state: ConnectionState) -> None:
                if state.name == "reconnecting" and "503" in state.reason:
                    refused.set()

            ring = RingBuffer(fmt, 320, 10.0, OverflowPolicy.BLOCK)
            client = UplinkClient(srv.url, ring, "patient", config)
            client.on_state(on_state)
            WavFileSource(source, speed=0).start(FrameCutter(ring))
            run = asyncio.create_task(client.run())
            await asyncio.wait_for(refused.wait(), WAIT)
            await asyncio.to_thread(holder.ws.close)
            result = await asyncio.wait_for(run, WAIT)
            assert result.ok, result.error

        asyncio.run(scenario())
        wav = httpx.get(f"{srv.http}/v1/streams/patient/audio.wav", timeout=WAIT).content
        assert wav.endswith(pcm)


def test_max_open_streams_closes_new_ones_with_1013(tmp_path: Path) -> None:
    with in_process(tmp_path / "data", max_streams=2) as srv:
        with Client(srv.url) as c1, Client(srv.url) as c2:
            c1.hello("one")
            c2.hello("two")
            with Client(srv.url) as c3:
                with pytest.raises(Closed) as e:
                    c3.hello("three")
                assert e.value.code == CloseCode.TRY_AGAIN_LATER
                assert "too many open streams" in e.value.reason
            c1.end(0, 0)  # a finalized stream no longer counts
        assert not (srv.data / "streams" / "three").exists()  # the refusal made nothing
        with Client(srv.url) as c3:
            c3.hello("three")


def test_audio_past_the_max_stream_length_closes_with_1008(tmp_path: Path) -> None:
    f = frames(6, seed=60)
    with in_process(tmp_path / "data", max_stream_seconds=5 * FRAME / 16000) as srv:
        with Client(srv.url) as c:
            w = c.hello("long")
            c.stream(0, f[:5])  # exactly the limit
            c.audio(5, 5 * FRAME, [f[5]])
            closed = c.expect_close()
        assert closed.code == CloseCode.POLICY_VIOLATION and "maximum length" in closed.reason
        with Client(srv.url) as c:  # what was stored stays, and the stream can be ended
            assert c.hello("long", resume=w).next_seq == 5
            c.end(5, 5 * FRAME)


# -- a peer that stops reading ------------------------------------------------------------------


class StalledSocket:
    """A WebSocket whose peer reads the welcome and then never again: sends never finish."""

    client = None

    def __init__(self) -> None:
        self.scope: dict[str, Any] = {}  # no protocol extension: the connection's own limit
        self.inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.sent: list[str] = []
        self.stalled = asyncio.Event()

    async def accept(self) -> None:
        pass

    async def receive(self) -> dict[str, Any]:
        return await self.inbox.get()

    async def send_text(self, text: str) -> None:
        if self.sent:
            self.stalled.set()
            await asyncio.Event().wait()  # the TCP window is shut
        self.sent.append(text)

    async def close(self, code: int = 1000, reason: str = "") -> None:
        await asyncio.Event().wait()  # cannot be written either

    def push(self, message: str | bytes) -> None:
        key = "bytes" if isinstance(message, bytes) else "text"
        self.inbox.put_nowait({"type": "websocket.receive", key: message})


@pytest.mark.parametrize("stall", ["acks", "close"])
def test_a_peer_that_stops_reading_is_dropped_and_its_stream_released(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stall: str
) -> None:
    """acks: it keeps sending while its acks cannot be written (watchdog, 1008 counted).
    close: it falls silent and even the idle close frame cannot be written (4408 counted)."""
    monkeypatch.setattr(ingest_server.connection, "CLOSE_TIMEOUT", 0.2)
    config = ServerConfig(data_dir=tmp_path, handshake_timeout=0.3, idle_timeout=0.3)
    f = frames(400, seed=61)

    async def scenario() -> None:
        store = Store(tmp_path)
        store.check_writable()
        metrics = Metrics()
        registry = Registry(store, config, metrics=metrics)
        ws = StalledSocket()
        conn = Connection(ws, registry, config, metrics)  # type: ignore[arg-type]
        ws.push(encode_control(Hello("stalled", FMT, FRAME)))
        run = asyncio.create_task(conn.run())
        i = 0
        if stall == "acks":
            ws.push(encode_audio(1, 0, 0, 1, f[0]))
            await asyncio.wait_for(ws.stalled.wait(), WAIT)  # its first ack cannot be sent
            i = 1
            while not conn.finished.is_set():
                ws.push(encode_audio(1, i, i * FRAME, 1, f[i]))
                i += 1
                await asyncio.sleep(0.005)  # a live client's pace; never waits for the server
                assert i < len(f), "the watchdog never fired"
        await asyncio.wait_for(run, WAIT)
        stream = registry.streams["stalled"]
        assert stream.owner is None  # released: resumable, and expires normally
        assert metrics.closes["1008" if stall == "acks" else "4408"] == 1
        await registry.close()
        # Everything it appended is durable. How many of the items pushed that is depends on
        # when the abort stopped the reading (the test keeps pushing until `finished`, which
        # comes after the final flush), so count what the journal on disk holds.
        n = stream.durable.next_seq
        assert stream.journal is None and n <= i and (n >= 1 or stall == "close")
        [(_, journal)] = Store(tmp_path).recover()
        assert journal is not None and journal.next_seq == n
        journal.close()

    asyncio.run(scenario())


def test_slot_count_survives_many_short_connections(tmp_path: Path) -> None:
    """Every admitted connection gives its slot back, whatever way it ends."""
    with in_process(tmp_path / "data", max_connections=3, tokens=(A,)) as srv:
        for i in range(20):
            with Client(srv.url, A) as c:
                if i % 2:
                    c.hello(f"short-{i}")
                else:
                    c.send("garbage")
                    c.expect_close()
        wait_connections(srv, 0)
        assert srv.service.per_token == {}
        full = [Client(srv.url, A) for _ in range(3)]  # all three slots are free again
        assert refused_status(srv.url, A)[0] == 503
        for c in full:
            c.ws.close()

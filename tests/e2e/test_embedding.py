"""The embedding API (uplink.Uplink / uplink.AsyncUplink, docs/embedding.md) end to end:
real server on loopback, a chaos proxy resetting the link, one server SIGKILL; stored audio is
compared sample for sample with what the application pushed."""

from __future__ import annotations

import asyncio
import random
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from capture.wavfile import read_wav
from tools.chaos_proxy import ChaosProxyThread, ChaosSchedule
from tools.chaos_run import make_recording
from tools.ingest_process import IngestServer
from uplink import AsyncUplink, Summary, Uplink, UplinkClosed, UplinkFailed
from uplink.config import UplinkConfig
from uplink.policy import BackoffConfig, BreakerConfig, RetryBudgetConfig

RATE = 16_000
CONFIG = UplinkConfig(
    buffer_seconds=60.0,
    ack_timeout=1.0,
    backoff=BackoffConfig(base=0.05, cap=0.3),
    breaker=BreakerConfig(failure_threshold=1000),
    budget=RetryBudgetConfig(max_initial_attempts=0),
)


def uneven_blocks(samples: np.ndarray, seed: int) -> Iterator[np.ndarray]:
    """Blocks of 1 sample to 2 s, at random (the issue's 'uneven block sizes')."""
    rng = random.Random(seed)
    pos = 0
    while pos < len(samples):
        n = rng.choice([1, rng.randint(2, 400), rng.randint(400, 8000), rng.randint(1, 2 * RATE)])
        yield samples[pos : pos + n]
        pos += n


class Chaos:
    """The server behind a chaos proxy that resets the link now and then; `kill_once()`
    SIGKILLs the server and starts it again on the same port and data dir."""

    def __init__(self, tmp_path: Path, seed: int) -> None:
        self.server = IngestServer(tmp_path / "data").start()
        schedule = ChaosSchedule.random(seed, duration=30.0, mean_interval=0.6,
                                        weights={"reset": 1.0})
        self.proxy = ChaosProxyThread(target=("127.0.0.1", self.server.port),
                                      schedule=schedule).start()
        self.url = f"ws://127.0.0.1:{self.proxy.port}"

    def kill_once(self) -> None:
        self.server.kill()
        self.server.start()

    def stored(self, stream_id: str) -> bytes:
        _, data = read_wav(self.server.data_dir / "streams" / stream_id / "audio.wav")
        return data

    def close(self) -> None:
        self.proxy.stop()
        self.server.stop()


@pytest.fixture
def chaos(tmp_path: Path) -> Iterator[Chaos]:
    c = Chaos(tmp_path, seed=16)
    try:
        yield c
    finally:
        c.close()


def recording(tmp_path: Path, seconds: float) -> np.ndarray:
    _, data = read_wav(make_recording(tmp_path / "source.wav", seconds))
    return np.frombuffer(data, dtype="<i2")


def test_a_plain_thread_pushes_uneven_blocks_through_resets_and_a_server_kill(
        chaos: Chaos, tmp_path: Path) -> None:
    source = recording(tmp_path, 20.0)
    states: list[str] = []
    up = Uplink(chaos.url, stream_id="embedded-sync", rate=RATE, channels=1, dtype="int16",
                config=CONFIG, on_state=lambda s: states.append(s.name))
    killed = threading.Event()

    def producer() -> None:
        pushed = 0
        for block in uneven_blocks(source, seed=1):
            up.push(block)
            pushed += len(block)
            if not killed.is_set() and up.stats().counters.acked_sample > 5 * RATE:
                chaos.kill_once()
                killed.set()
            time.sleep(len(block) / RATE / 10)  # ten times real time

    thread = threading.Thread(target=producer)
    thread.start()
    thread.join(120)
    assert not thread.is_alive()
    summary = up.close(timeout=60)
    assert killed.is_set()
    assert summary.ok and summary.frames_dropped == 0
    assert summary.seconds_acked == pytest.approx(20.0)
    assert summary.reconnects >= 1 and "reconnecting" in states
    assert chaos.stored("embedded-sync") == source.tobytes()


def test_an_asyncio_app_pushes_uneven_blocks_through_resets_and_a_server_kill(
        chaos: Chaos, tmp_path: Path) -> None:
    source = recording(tmp_path, 20.0)

    async def app() -> Summary:
        async with AsyncUplink(chaos.url, stream_id="embedded-async", rate=RATE, channels=1,
                               dtype="int16", config=CONFIG) as up:
            killed = False
            for block in uneven_blocks(source, seed=2):
                await up.push(block)
                if not killed and up.stats().counters.acked_sample > 5 * RATE:
                    await asyncio.to_thread(chaos.kill_once)
                    killed = True
                await asyncio.sleep(len(block) / RATE / 10)
            assert killed
            return await up.aclose(timeout=60)

    summary = asyncio.run(app())
    assert summary.ok and summary.reconnects >= 1
    assert chaos.stored("embedded-async") == source.tobytes()


def test_bad_blocks_and_misuse_get_clear_errors_and_corrupt_nothing(
        ingest: IngestServer) -> None:
    up = Uplink(ingest.url, stream_id="misuse", rate=RATE, channels=2, dtype="int16",
                config=CONFIG)
    good = np.arange(2 * 640, dtype=np.int16).reshape(640, 2)
    up.push(good)
    with pytest.raises(ValueError, match="dtype float32"):
        up.push(good.astype(np.float32))
    with pytest.raises(ValueError, match="3 channels"):
        up.push(np.zeros((10, 3), dtype=np.int16))
    with pytest.raises(ValueError, match="1-D block is mono"):
        up.push(np.zeros(10, dtype=np.int16))
    with pytest.raises(ValueError, match="whole number of 4-byte sample frames"):
        up.push(b"\x00" * 6)
    with pytest.raises(ValueError, match="numpy array or bytes"):
        up.push([1, 2, 3])  # type: ignore[arg-type]
    up.push(good[::-1].copy().tobytes())  # bytes in the declared format are fine
    summary = up.close(timeout=30)
    assert summary.ok and summary.seconds_acked == pytest.approx(1280 / RATE)
    with pytest.raises(UplinkClosed, match="after close"):
        up.push(good)
    with pytest.raises(UplinkClosed, match="already closed"):
        up.close()
    _, stored = read_wav(ingest.data_dir / "streams" / "misuse" / "audio.wav")
    assert stored == good.tobytes() + good[::-1].copy().tobytes()


def test_bad_arguments_are_refused_before_connecting(ingest: IngestServer) -> None:
    with pytest.raises(ValueError, match="must match"):
        Uplink(ingest.url, stream_id="no spaces", rate=RATE)
    with pytest.raises(ValueError, match="sample rate"):
        Uplink(ingest.url, rate=1)
    up = Uplink(ingest.url, rate=RATE, dtype="int24", config=CONFIG)
    with pytest.raises(ValueError, match="int24 audio is pushed as bytes"):
        up.push(np.zeros(3, dtype=np.int32))
    up.push(b"\x01\x02\x03" * 5)
    assert up.close(timeout=30).frames_acked == 1


def test_importing_the_api_needs_no_portaudio() -> None:
    code = ("import sys; sys.modules['sounddevice'] = None\n"
            "from uplink import Uplink, AsyncUplink\n"
            "assert 'sounddevice' not in {m for m in sys.modules if sys.modules[m]}\n"
            "print('ok')")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"


@pytest.fixture
def ingest(tmp_path: Path) -> Iterator[IngestServer]:
    with IngestServer(tmp_path / "data") as srv:
        yield srv


TOKEN = "embedding-test-token-0123456789"


def test_a_fatal_error_keeps_the_audio_and_retry_delivers_it(tmp_path: Path) -> None:
    """A wrong token is fatal; the app fixes it and retries: nothing was lost meanwhile."""
    source = recording(tmp_path, 3.0)

    async def app(server: IngestServer) -> tuple[Summary, str]:
        up = AsyncUplink(server.url, stream_id="retried", rate=RATE, config=CONFIG,
                         token="wrong-token-0123456789abcdef")
        for block in uneven_blocks(source, seed=3):
            await up.push(block)
        with pytest.raises(UplinkFailed) as failed:
            await up.aclose(timeout=30)
        assert failed.value.summary.seconds_undelivered == pytest.approx(3.0)
        with pytest.raises(UplinkClosed):
            await up.push(source[:10])  # closed: the input ended before the failure
        await up.retry(token=TOKEN)
        return await up.aclose(timeout=30), str(failed.value.error)

    with IngestServer(tmp_path / "data", args=["--token", TOKEN]) as server:
        summary, error = asyncio.run(app(server))
    assert "403" in error
    assert summary.ok and summary.seconds_acked == pytest.approx(3.0)
    _, stored = read_wav(tmp_path / "data" / "streams" / "retried" / "audio.wav")
    assert stored == source.tobytes()


def test_on_gap_reports_the_exact_samples_an_outage_longer_than_the_buffer_cost(
        tmp_path: Path) -> None:
    source = recording(tmp_path, 3.0)
    gaps: list[tuple[int, int, str]] = []
    server = IngestServer(tmp_path / "data")  # not started yet: the link is down

    async def app() -> Summary:
        up = AsyncUplink(server.url, stream_id="gapped", rate=RATE, config=CONFIG,
                         buffer_seconds=0.5, on_gap=lambda *g: gaps.append(g))
        await up.push(source)  # 3 s into a 0.5 s ring: the oldest 2.5 s are dropped
        await asyncio.to_thread(server.start)
        return await up.aclose(timeout=30)

    try:
        summary = asyncio.run(app())
    finally:
        server.stop()
    assert summary.ok
    dropped = summary.frames_dropped * 320
    assert dropped >= 2 * RATE
    assert [(start, n) for start, n, _ in gaps] == [(0, dropped)]
    _, stored = read_wav(tmp_path / "data" / "streams" / "gapped" / "audio.wav")
    assert stored == bytes(2 * dropped) + source[dropped:].tobytes()

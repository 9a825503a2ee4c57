"""Helpers of the live-listener end-to-end tests: feed a source through a real uplink, collect
what a real listener receives (docs/listeners.md)."""

from __future__ import annotations

import asyncio
import json
import queue
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from uplink import AsyncUplink, Summary
from uplink.audio import AudioFormat
from uplink.config import UplinkConfig
from uplink.listen import ChunkKind, ListenConfig, listen
from uplink.policy import BackoffConfig, BreakerConfig, RetryBudgetConfig

FAST_LISTENER = ListenConfig(backoff=BackoffConfig(base=0.05, cap=0.3, soon=0.05),
                             breaker=BreakerConfig(failure_threshold=1000, open_timeout=0.5),
                             ping_interval=0.3, ping_timeout=0.3, open_timeout=2.0,
                             wait_for_stream=True)
FAST_UPLINK = UplinkConfig(buffer_seconds=60.0, ack_timeout=1.0,
                           backoff=BackoffConfig(base=0.05, cap=0.3),
                           breaker=BreakerConfig(failure_threshold=1000),
                           budget=RetryBudgetConfig(max_initial_attempts=0))


def sse_events(http: str, headers: dict[str, str] | None = None) -> Iterator[dict[str, Any]]:
    """`GET /v1/events` of the server at `http`, read on a thread; yields each event's JSON
    (the snapshot first)."""
    lines: queue.Queue[str] = queue.Queue()
    request = urllib.request.Request(f"{http}/v1/events", headers=headers or {})
    resp = urllib.request.urlopen(request, timeout=60)
    assert resp.headers["content-type"].startswith("text/event-stream")

    def pump() -> None:
        try:
            for raw in resp:
                lines.put(raw.decode().rstrip("\n"))
        except OSError:
            pass  # the test is over and the response was left open

    threading.Thread(target=pump, daemon=True).start()
    while True:
        line = lines.get(timeout=10)
        if line.startswith("data: "):
            yield json.loads(line[6:])


@dataclass
class Collected:
    """What one listener received: audio with every gap as zeros (like audio.wav)."""

    audio: bytearray = field(default_factory=bytearray)
    gaps: list[tuple[int, int]] = field(default_factory=list)  # as recorded
    states: list[str] = field(default_factory=list)
    end_reason: str | None = None
    reconnects: int = 0
    first_position: int | None = None


async def collect(server: str, stream_id: str, start: int | str = 0, *,
                  config: ListenConfig = FAST_LISTENER, token: str | None = None,
                  timeout: float = 60.0) -> Collected:
    out = Collected()

    async def run() -> None:
        async with listen(server, stream_id, start, token=token, config=config) as stream:
            async for chunk in stream:
                if out.first_position is None and chunk.kind in (ChunkKind.AUDIO, ChunkKind.GAP):
                    out.first_position = chunk.position
                if chunk.kind is ChunkKind.AUDIO:
                    out.audio += chunk.data
                elif chunk.kind is ChunkKind.GAP:
                    assert chunk.recorded is not None and chunk.fmt is not None
                    out.gaps.append(chunk.recorded)
                    out.audio += bytes(chunk.frames * chunk.fmt.block_align)
                elif chunk.kind is ChunkKind.STATE:
                    assert chunk.state is not None
                    out.states.append(chunk.state)
                else:
                    out.end_reason = chunk.end_reason
            out.reconnects = stream.reconnects

    await asyncio.wait_for(run(), timeout)
    return out


async def feed(server: str, stream_id: str, fmt: AudioFormat, data: bytes, *,
               speed: float = 0.0, block_seconds: float = 0.02,
               config: UplinkConfig = FAST_UPLINK, buffer_seconds: float | None = None,
               overflow: str = "block") -> Summary:
    """Push `data` through a real AsyncUplink, `speed`× real time (0: as fast as it goes)."""
    block = int(fmt.sample_rate * block_seconds) * fmt.block_align
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    async with AsyncUplink(server, stream_id=stream_id, rate=fmt.sample_rate,
                           channels=fmt.channels, dtype=fmt.sample_type.value,
                           overflow=overflow, config=config,
                           buffer_seconds=buffer_seconds) as up:
        for i in range(0, len(data), block):
            await up.push(data[i:i + block])
            if speed:
                due = t0 + (i + block) / fmt.block_align / fmt.sample_rate / speed
                delay = due - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
        return await up.aclose(timeout=60)


def details(http: str, stream_id: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"{http}/v1/streams/{stream_id}") as resp:
        result: dict[str, Any] = json.load(resp)
        return result


async def wait_until(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)

"""Desktop notifications from a real uplink: real ingest server stopped mid-stream, real
session bus, a recording notification server. Wired the way docs/notifications.md tells the
CLI to wire it: `client.on_state(notifier.state)`, `client.on_gap = notifier.gap`."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

from capture.notify import DbusNotifications, NoticePolicy, NoticeRules, Notifier
from capture.wav_source import WavFileSource
from capture.wavfile import read_wav
from tests.capture.dbus_session import RecordingNotificationServer, SessionBus
from tools.chaos_run import make_recording
from tools.ingest_process import IngestServer
from uplink.client import UplinkClient
from uplink.config import UplinkConfig
from uplink.frames import FrameCutter
from uplink.policy import BackoffConfig, BreakerConfig, RetryBudgetConfig
from uplink.ring import OverflowPolicy, RingBuffer


def told_seconds(body: str) -> float:
    m = re.search(r"([0-9.]+) s of audio (?:dropped|lost)", body)
    return float(m.group(1)) if m else 0.0


def test_a_server_outage_is_one_lost_and_one_restored_notice_with_the_loss(tmp_path: Path) -> None:
    source = make_recording(tmp_path / "source.wav", 12.0)
    fmt, _ = read_wav(source)
    config = UplinkConfig(
        buffer_seconds=1.0,
        ack_timeout=1.0,
        backoff=BackoffConfig(base=0.05, cap=0.2),
        breaker=BreakerConfig(failure_threshold=1000),
        budget=RetryBudgetConfig(max_initial_attempts=0),
    )

    async def scenario(server: IngestServer, notifier_address: str) -> tuple[Notifier, int, int]:
        ring = RingBuffer(fmt, 320, config.buffer_seconds, OverflowPolicy.DROP_OLDEST)
        client = UplinkClient(server.url, ring, "notified", config)
        policy = NoticePolicy(NoticeRules(down_threshold=0.3), fmt.sample_rate)
        notifier = Notifier(DbusNotifications(notifier_address), policy)
        notifier.start()
        client.on_state(notifier.state)
        client.on_gap = notifier.gap
        wav = WavFileSource(source, speed=2.0)
        wav.start(FrameCutter(ring))

        async def outage() -> None:
            while client.stats().counters.acked_sample < fmt.sample_rate:  # 1 s stored
                await asyncio.sleep(0.02)
            await asyncio.to_thread(server.stop)
            while ring.frames_dropped < 10 and not ring.closed:  # the 1 s ring overflowed
                await asyncio.sleep(0.02)
            await asyncio.to_thread(server.start)

        task = asyncio.create_task(outage())
        result = await asyncio.wait_for(client.run(), 60)
        await task
        assert result.ok, result.error
        notifier.finished(True)
        await asyncio.to_thread(notifier.close, 5.0)
        return notifier, result.stats.ring.samples_dropped, result.stats.counters.reconnects

    with SessionBus(tmp_path) as bus, RecordingNotificationServer(bus.address) as desktop, \
            IngestServer(tmp_path / "data") as server:
        notifier, samples_dropped, reconnects = asyncio.run(scenario(server, bus.address))
        got = desktop.wait_for(2)
    assert reconnects >= 1 and samples_dropped > 0
    assert [r.summary for r in got[:2]] == ["Connection lost", "Connection restored"]
    assert got[1].replaces_id == got[0].id
    # drops after the reconnect (the ring still full) may add one "Audio dropped"; nothing else
    assert [r.summary for r in got[2:]] in ([], ["Audio dropped"])
    told = sum(told_seconds(r.body) for r in got[1:])
    assert abs(told - samples_dropped / fmt.sample_rate) <= 0.1 * len(got[1:]), [r.body for r in got]
    assert notifier.stats().inputs_dropped == 0

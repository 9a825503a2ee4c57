"""The real app in this process (see harness.py): fake clocks and injected faults."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

import ingest_server.items
from ingest_server.items import ItemRules
from tests.support.clock import FakeClock
from uplink.wire import CloseCode

from .client import FRAME, Client, frames
from .harness import in_process


def test_session_expiry_through_the_app_with_a_fake_clock(tmp_path: Path) -> None:
    clock = FakeClock(100.0)
    f = frames(5, seed=30)
    with in_process(tmp_path / "data", clock) as srv:
        with Client(srv.url) as c:
            w = c.hello("sleepy")
            c.stream(0, f)
        srv.connections_finished()  # the session timeout starts at this (fake) instant
        assert srv.call(srv.service.registry.expire(100.0 + 59.9)) == []
        clock.now = 100.0 + 60.0
        assert srv.call(srv.service.registry.expire()) == ["sleepy"]

        # the credential holder comes back after the expiry: the stream reopens (§2)
        more = frames(1, seed=31)
        with Client(srv.url) as c:
            w2 = c.hello("sleepy", resume=w)
            assert not w2.finalized and w2.next_seq == 5
            c.audio(5, 5 * FRAME, more)
            assert c.end(6, 6 * FRAME).gaps == 0
        # an *ended* stream stays finalized: items are refused with 4410
        with Client(srv.url) as c:
            assert c.hello("sleepy", resume=w).finalized
            c.audio(6, 6 * FRAME, frames(1, seed=32))
            assert c.expect_close().code == CloseCode.STREAM_FINALIZED
        d = httpx.get(f"{srv.http}/v1/streams/sleepy", timeout=10).json()
        assert (d["state"], d["end_reason"], d["frames"]) == ("finalized", "ended", 6)
        wav = (tmp_path / "data" / "streams" / "sleepy" / "audio.wav").read_bytes()
        assert wav[-6 * FRAME * 2:] == b"".join(f + more)


def test_unexpected_fault_closes_1011_and_spares_other_streams(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = ItemRules.apply

    def faulty(self: ItemRules, journal: Any, data: bytes) -> bool:
        if "boom" in str(journal.path) and journal.next_seq == 2:
            raise RuntimeError("injected fault")
        return real(self, journal, data)

    monkeypatch.setattr(ingest_server.items.ItemRules, "apply", faulty)
    f = frames(6, seed=32)
    with in_process(tmp_path / "data", FakeClock()) as srv:
        with Client(srv.url) as calm, Client(srv.url) as boom:
            calm.hello("calm")
            boom.hello("boom")
            calm.stream(0, f[:3])
            boom.stream(0, f[:2])
            boom.audio(2, 2 * FRAME, [f[2]])
            closed = boom.expect_close()
            assert closed.code == CloseCode.INTERNAL_ERROR and "internal" in closed.reason
            calm.stream(3, f[3:])
            calm.end(6, 6 * FRAME)
        assert httpx.get(f"{srv.http}/healthz", timeout=10).json()["status"] == "ok"
        wav = httpx.get(f"{srv.http}/v1/streams/calm/audio.wav", timeout=10).content
        assert wav[-6 * FRAME * 2:] == b"".join(f)
        boom_wav = httpx.get(f"{srv.http}/v1/streams/boom/audio.wav", timeout=10).content
        assert np.array_equal(np.frombuffer(boom_wav[-2 * FRAME * 2:], "<i2"),
                              np.frombuffer(b"".join(f[:2]), "<i2"))

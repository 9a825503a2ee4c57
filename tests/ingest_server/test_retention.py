"""Retention (docs/operations.md "Retention"): finalized streams are deleted retention_days
after they ended, by the sweeper; open, connected and recent streams never are. Wall time
is a fake clock: no sleeping."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx

from ingest_server.config import ServerConfig
from ingest_server.sessions import Registry
from ingest_server.storage import Store
from tests.support.clock import FakeClock
from uplink.wire import CloseCode, End

from .client import FRAME, Client, Closed, frames
from .harness import WAIT, in_process, scrape, value
from .test_sessions import FakeOwner, attach, write

DAY = 86400.0
T0 = 1.7e9


def registry(data: Path, wall: FakeClock, days: float) -> Registry:
    store = Store(data)
    store.check_writable()
    reg = Registry(store, ServerConfig(data_dir=data, retention_days=days), clock=FakeClock(),
                   wall=wall)
    reg.recover()
    return reg


async def ended_stream(reg: Registry, sid: str, wall: FakeClock, at: float) -> None:
    wall.now = at
    a, owner = await attach(reg, sid)
    write(a.stream, 2, seed=90)
    await reg.end(a.stream, End(2, 2 * FRAME))
    reg.detach(a.stream, owner)


def test_finalized_streams_are_deleted_after_retention_days(tmp_path: Path) -> None:
    async def scenario() -> None:
        wall = FakeClock(T0)
        reg = registry(tmp_path, wall, days=7)
        await ended_stream(reg, "old", wall, T0)
        await ended_stream(reg, "newer", wall, T0 + 2 * DAY)
        await attach(reg, "still-open")  # created at T0 + 2 days, never ended
        owner_of_done = FakeOwner(reg)
        await ended_stream(reg, "reconnected", wall, T0)
        reg.streams["reconnected"].owner = owner_of_done  # a client is asking it for `ended`

        assert await reg.purge(T0 + 7 * DAY - 1) == []
        assert await reg.purge(T0 + 7 * DAY) == ["old"]
        assert not (tmp_path / "streams" / "old").exists() and "old" not in reg.streams
        reg.streams["reconnected"].owner = None
        assert await reg.purge(T0 + 9 * DAY) == ["newer", "reconnected"]
        assert await reg.purge(T0 + 1000 * DAY) == []  # open streams are never deleted
        assert sorted(p.name for p in (tmp_path / "streams").iterdir()) == ["still-open"]

    asyncio.run(scenario())


def test_retention_off_keeps_everything(tmp_path: Path) -> None:
    async def scenario() -> None:
        wall = FakeClock(T0)
        reg = registry(tmp_path, wall, days=0)
        await ended_stream(reg, "kept", wall, T0)
        assert await reg.purge(T0 + 10_000 * DAY) == []
        assert (tmp_path / "streams" / "kept" / "audio.wav").exists()

    asyncio.run(scenario())


def test_an_interrupted_deletion_is_finished_at_start_up(tmp_path: Path) -> None:
    async def scenario() -> None:
        wall = FakeClock(T0)
        reg = registry(tmp_path, wall, days=1)
        await ended_stream(reg, "half-gone", wall, T0)
        d = tmp_path / "streams" / "half-gone"
        d.rename(tmp_path / "streams" / ".trash-half-gone")  # crashed after the rename
        again = registry(tmp_path, wall, days=1)
        assert "half-gone" not in again.streams
        assert list((tmp_path / "streams").iterdir()) == []

    asyncio.run(scenario())


def test_retention_through_the_sweeper_of_a_running_server(tmp_path: Path) -> None:
    wall = FakeClock(T0)
    f = frames(3, seed=91)
    with in_process(tmp_path / "data", wall=wall, retention_days=1.5) as srv:
        with Client(srv.url) as c:
            w = c.hello("ephemeral")
            c.stream(0, f)
            c.end(3, 3 * FRAME)
        srv.connections_finished()
        wall.now = T0 + 1.5 * DAY - 1
        srv.call(srv.service.sweep_once())
        assert httpx.get(f"{srv.http}/v1/streams/ephemeral", timeout=WAIT).status_code == 200
        wall.now = T0 + 1.5 * DAY
        srv.call(srv.service.sweep_once())
        assert httpx.get(f"{srv.http}/v1/streams/ephemeral", timeout=WAIT).status_code == 404
        assert not (srv.data / "streams" / "ephemeral").exists()
        assert value(scrape(srv.http), "echopanel_streams_deleted_total") == 1
        with Client(srv.url) as c:  # its credential now names nothing
            try:
                c.hello("ephemeral", resume=w)
            except Closed as e:
                assert e.code == CloseCode.UNKNOWN_STREAM
            else:
                raise AssertionError("a deleted stream was resumed")
        with Client(srv.url) as c:  # and the id is free again
            c.hello("ephemeral")

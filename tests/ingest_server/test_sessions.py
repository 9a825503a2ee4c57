"""Registry (create, resume, takeover, end, expiry with a fake clock) and item rules (§3),
in-process: no server, no sleeping."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest

from ingest_server.config import ServerConfig
from ingest_server.errors import BadInput, Refusal
from ingest_server.items import ItemRules
from ingest_server.metrics import Metrics
from ingest_server.sessions import Attached, Registry
from ingest_server.storage import Gap, Journal, Store
from ingest_server.stream import Stream
from tests.support.clock import FakeClock
from uplink.audio import AudioFormat, SampleType
from uplink.wire import (
    HEADER,
    STREAM_ID_PATTERN,
    CloseCode,
    End,
    Ended,
    Hello,
    Resume,
    WireError,
    encode_audio,
    encode_gap,
)

from .client import FMT, FRAME, frames

T = TypeVar("T")
TIMEOUT = 60.0


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


class FakeOwner:
    """Stands in for a connection: on supersede it lets go of the stream, as one would."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self.stream: Stream | None = None
        self.superseded = False

    async def supersede(self) -> None:
        self.superseded = True
        if self.stream is not None:
            self.registry.detach(self.stream, self)


def make_registry(data: Path, clock: FakeClock) -> Registry:
    config = ServerConfig(data_dir=data, session_timeout=TIMEOUT)
    store = Store(data)
    store.check_writable()
    registry = Registry(store, config, clock=clock)
    registry.recover()
    return registry


async def attach(registry: Registry, sid: str, resume: Attached | None = None,
                 fmt: AudioFormat = FMT, frame_samples: int = FRAME) -> tuple[Attached, FakeOwner]:
    owner = FakeOwner(registry)
    res = Resume(resume.stream.meta.epoch, resume.credential) if resume else None
    attached = await registry.attach(Hello(sid, fmt, frame_samples, res), owner)
    owner.stream = attached.stream
    return attached, owner


def write(stream: Stream, n: int, seed: int) -> None:
    assert stream.journal is not None
    for frame in frames(n, seed):
        seq = stream.journal.next_seq
        stream.journal.append_audio(seq, 1, stream.journal.next_sample, FRAME, frame)


def test_disconnected_stream_expires_after_session_timeout(tmp_path: Path) -> None:
    async def scenario() -> None:
        clock = FakeClock()
        reg = make_registry(tmp_path, clock)
        a, owner = await attach(reg, "s")
        write(a.stream, 3, seed=1)
        clock.now = 2000.0
        reg.detach(a.stream, owner)
        assert await reg.expire(2000.0 + TIMEOUT - 0.01) == []
        assert await reg.expire(2000.0 + TIMEOUT) == ["s"]
        meta = a.stream.meta
        assert (meta.state, meta.end_reason, meta.next_seq, meta.frames) == (
            "finalized", "expired", 3, 3)
        assert (tmp_path / "streams" / "s" / "audio.wav").exists()
        # The journal stays: the credential holder may still continue the stream (§2).
        assert (tmp_path / "streams" / "s" / "journal.bin").exists()

    run(scenario())


def test_resume_reopens_an_expired_stream_and_keeps_every_sample(tmp_path: Path) -> None:
    """An outage longer than the session timeout costs nothing the client still holds."""
    async def scenario() -> None:
        clock = FakeClock()
        reg = make_registry(tmp_path, clock)
        a, owner = await attach(reg, "x")
        write(a.stream, 3, seed=1)
        reg.detach(a.stream, owner)
        assert await reg.expire(clock.now + TIMEOUT) == ["x"]
        assert reg.open_count == 0
        # the server restarts meanwhile: the expired stream is recovered with its journal
        await reg.close()
        reg = make_registry(tmp_path, clock)
        assert reg.streams["x"].finalized
        b, _ = await attach(reg, "x", resume=a)
        assert b.resumed and not b.stream.finalized and reg.open_count == 1
        assert (b.stream.next_seq, b.stream.next_sample) == (3, 3 * FRAME)
        assert b.stream.meta.reopened == 1 and b.stream.meta.end_reason is None
        assert not (tmp_path / "streams" / "x" / "audio.wav").exists()  # stale copy gone
        # the client replays what it buffered, and a gap for what its buffer dropped
        assert b.stream.journal is not None
        b.stream.journal.append_gap(3, 2, 3 * FRAME, 5 * FRAME)
        write(b.stream, 1, seed=2)
        ended = await reg.end(b.stream, End(6, 6 * FRAME))
        assert ended == Ended(6, 6 * FRAME, 1, FRAME * 2, ((3 * FRAME, 5 * FRAME),))
        assert b.stream.meta.end_reason == "ended"
        assert not (tmp_path / "streams" / "x" / "journal.bin").exists()
        wav = (tmp_path / "streams" / "x" / "audio.wav").read_bytes()
        pcm = b"".join(frames(3, 1)) + bytes(2 * FRAME * 2) + b"".join(frames(1, 2))
        assert wav.endswith(pcm) and len(wav) == 44 + len(pcm)

    run(scenario())


def test_an_ended_stream_is_never_reopened(tmp_path: Path) -> None:
    async def scenario() -> None:
        reg = make_registry(tmp_path, FakeClock())
        a, _ = await attach(reg, "done")
        write(a.stream, 3, seed=1)
        await reg.end(a.stream, End(3, 3 * FRAME))
        # Resume of an ended stream: welcome says finalized; `end` is answered (§2, §6).
        b, _ = await attach(reg, "done", resume=a)
        assert b.resumed and b.stream.finalized
        ended = await reg.end(b.stream, End(3, 3 * FRAME))
        assert ended == Ended(3, 3 * FRAME, 0, 0)
        assert await reg.end(b.stream, End(3, 3 * FRAME)) == ended  # idempotent

    run(scenario())


def test_connected_stream_never_expires(tmp_path: Path) -> None:
    async def scenario() -> None:
        clock = FakeClock()
        reg = make_registry(tmp_path, clock)
        await attach(reg, "live")
        assert await reg.expire(clock.now + 100 * TIMEOUT) == []

    run(scenario())


def test_recovered_open_stream_timeout_starts_at_startup(tmp_path: Path) -> None:
    async def scenario() -> None:
        first = make_registry(tmp_path, FakeClock(0.0))
        a, _ = await attach(first, "r")
        write(a.stream, 2, seed=2)
        await first.close()  # the process stops; the stream stays open on disk

        clock = FakeClock(5000.0)
        second = make_registry(tmp_path, clock)
        stream = second.streams["r"]
        assert not stream.finalized and stream.next_seq == 2 and stream.owner is None
        assert await second.expire(5000.0 + TIMEOUT - 1) == []
        assert await second.expire(5000.0 + TIMEOUT) == ["r"]

    run(scenario())


def test_a_taken_id_says_what_holds_it(tmp_path: Path) -> None:
    """4409 tells a capture that lost its spool what it ran into, and for how long (§2)."""
    async def scenario() -> None:
        clock = FakeClock(1000.0)
        reg = make_registry(tmp_path, clock)

        async def reason_for(sid: str) -> str:
            with pytest.raises(Refusal) as e:
                await reg.attach(Hello(sid, FMT, FRAME), FakeOwner(reg))
            assert e.value.code == CloseCode.STREAM_CONFLICT
            return e.value.reason

        live, owner = await attach(reg, "orphan")
        assert "live stream on another connection" in await reason_for("orphan")
        reg.detach(live.stream, owner)
        clock.now += 13.0
        reason = await reason_for("orphan")
        assert "only its resume credential" in reason
        assert f"expires in {TIMEOUT - 13:.0f} s" in reason and len(reason.encode()) <= 123
        await reg.expire(clock.now + TIMEOUT)
        assert "expired stream: only its resume credential reopens it" in await reason_for("orphan")
        done, _ = await attach(reg, "done")
        await reg.end(done.stream, End(0, 0))
        assert "ended: choose another id" in await reason_for("done")

    run(scenario())


def test_an_invalid_stream_id_is_refused_naming_the_pattern(tmp_path: Path) -> None:
    async def scenario() -> None:
        reg = make_registry(tmp_path, FakeClock())
        with pytest.raises(Refusal) as e:
            await reg.attach(Hello("a..b", FMT, FRAME), FakeOwner(reg))
        assert e.value.code == CloseCode.BAD_HANDSHAKE
        assert STREAM_ID_PATTERN in e.value.reason

    run(scenario())


def test_handshake_refusals(tmp_path: Path) -> None:
    async def scenario() -> None:
        reg = make_registry(tmp_path, FakeClock())
        a, owner = await attach(reg, "taken")

        async def code_of(hello: Hello) -> int:
            with pytest.raises(Refusal) as e:
                await reg.attach(hello, FakeOwner(reg))
            return e.value.code

        good = Resume(1, a.credential)
        assert await code_of(Hello("taken", FMT, FRAME)) == CloseCode.STREAM_CONFLICT
        assert await code_of(Hello("nope", FMT, FRAME, good)) == CloseCode.UNKNOWN_STREAM
        assert await code_of(Hello("taken", FMT, FRAME, Resume(1, "x" * 43))) == 4409
        assert await code_of(Hello("taken", FMT, FRAME, Resume(2, a.credential))) == 4409
        other = AudioFormat(48000, 1, SampleType.INT16)
        assert await code_of(Hello("taken", other, FRAME, good)) == CloseCode.BAD_HANDSHAKE
        assert await code_of(Hello("taken", FMT, 160, good)) == CloseCode.BAD_HANDSHAKE
        assert await code_of(Hello("a..b", FMT, FRAME)) == CloseCode.BAD_HANDSHAKE
        # frame sizes and rates are the connection core's checks (test_core.py)
        assert not owner.superseded  # refused handshakes never disturb the live connection

    run(scenario())


def test_takeover_supersedes_the_live_owner(tmp_path: Path) -> None:
    async def scenario() -> None:
        reg = make_registry(tmp_path, FakeClock())
        a, old = await attach(reg, "t")
        write(a.stream, 4, seed=3)
        b, new = await attach(reg, "t", resume=a)
        assert old.superseded and b.stream.owner is new
        # Everything the old connection wrote is durable before the new welcome (§2).
        assert not b.stream.pending and b.stream.durable.next_seq == 4

    run(scenario())


def test_end_checks_the_position(tmp_path: Path) -> None:
    async def scenario() -> None:
        reg = make_registry(tmp_path, FakeClock())
        a, _ = await attach(reg, "e")
        write(a.stream, 2, seed=4)
        with pytest.raises(BadInput) as e:
            await reg.end(a.stream, End(3, 3 * FRAME))
        assert e.value.code == CloseCode.PROTOCOL_ERROR and not a.stream.finalized
        assert await reg.end(a.stream, End(2, 2 * FRAME)) == Ended(2, 2 * FRAME, 0, 0)
        assert a.stream.meta.end_reason == "ended"

    run(scenario())


# -- item rules (§3) -------------------------------------------------------------------------


def new_journal(tmp_path: Path) -> Journal:
    return Journal.create(tmp_path / "journal.bin")


def rules(min_seq: int = 0, max_samples: int = 1 << 40) -> ItemRules:
    return ItemRules(epoch=1, block_align=2, frame_samples=FRAME, max_message_bytes=1 << 20,
                     min_seq=min_seq, max_samples=max_samples, metrics=Metrics())


def apply(j: Journal, data: bytes) -> bool:
    return rules().apply(j, data)


def test_duplicates_and_straddling(tmp_path: Path) -> None:
    j = new_journal(tmp_path)
    f = frames(6, seed=5)
    assert apply(j, encode_audio(1, 0, 0, 3, b"".join(f[:3])))
    assert not apply(j, encode_audio(1, 1, FRAME, 2, b"".join(f[1:3])))  # wholly below
    assert apply(j, encode_audio(1, 2, 2 * FRAME, 3, b"".join(f[2:5])))  # straddles seq 3
    assert (j.next_seq, j.next_sample, j.frames) == (5, 5 * FRAME, 5)
    # GAP straddling: recorded from the server's own next_sample (§3).
    assert apply(j, encode_gap(1, 4, 4 * FRAME, 3, 9 * FRAME))
    assert j.gaps == [Gap(5, 7, 5 * FRAME, 9 * FRAME)]
    assert (j.next_seq, j.next_sample) == (7, 9 * FRAME)


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (encode_audio(1, 1, FRAME, 1, bytes(640)), CloseCode.PROTOCOL_ERROR),  # jump
        (encode_audio(1, 0, 5, 1, bytes(640)), CloseCode.PROTOCOL_ERROR),  # sample_pos
        (encode_audio(2, 0, 0, 1, bytes(640)), CloseCode.PROTOCOL_ERROR),  # epoch
        (encode_gap(1, 0, 0, 1, 0)[:-1], CloseCode.INVALID_PAYLOAD),  # short gap payload
        (encode_audio(1, 0, 0, 1, bytes(641)), CloseCode.INVALID_PAYLOAD),  # half a sample
        (encode_audio(1, 0, 0, 1, bytes(642)), CloseCode.INVALID_PAYLOAD),  # > frame_samples
        (encode_audio(1, 0, 0, 2, bytes(640)[:-2]), CloseCode.INVALID_PAYLOAD),  # not whole
        (HEADER.pack(1, 1, 1, 1, 0, 0) + bytes(640), CloseCode.INVALID_PAYLOAD),  # flags
        (HEADER.pack(9, 0, 1, 1, 0, 0) + bytes(640), CloseCode.INVALID_PAYLOAD),  # kind
        (HEADER.pack(1, 0, 0, 1, 0, 0), CloseCode.INVALID_PAYLOAD),  # count 0
        (b"\x01\x00", CloseCode.INVALID_PAYLOAD),  # short header
        (encode_audio(1, 0, 0, 1, bytes(2 << 20)), CloseCode.MESSAGE_TOO_BIG),
    ],
)
def test_bad_items_are_refused_and_write_nothing(tmp_path: Path, data: bytes, code: int) -> None:
    j = new_journal(tmp_path)
    before = j.position
    with pytest.raises(WireError) as e:
        apply(j, data)
    assert e.value.close_code == code
    assert j.position == before and (tmp_path / "journal.bin").stat().st_size == before.size


def test_gap_end_before_next_sample_is_a_protocol_error(tmp_path: Path) -> None:
    j = new_journal(tmp_path)
    apply(j, encode_audio(1, 0, 0, 1, bytes(640)))
    with pytest.raises(WireError) as e:
        apply(j, encode_gap(1, 1, FRAME, 1, FRAME - 1))
    assert e.value.close_code == CloseCode.PROTOCOL_ERROR

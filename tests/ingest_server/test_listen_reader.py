"""Durable readers (storage/reader.py), the event bus (events.py) and `from` parsing
(listen.py): the pieces a live listener is built from, without sockets."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from ingest_server.events import EventBus, EventKind, StreamEvent
from ingest_server.listen import FromError, parse_from
from ingest_server.storage import Journal
from ingest_server.storage.journal import Gap, Position
from ingest_server.storage.reader import AudioPiece, GapPiece, JournalReader, WavReader
from ingest_server.storage.wav import JournalWav, write_file_atomic
from uplink.audio import AudioFormat, SampleType

FMT = AudioFormat(16000, 2, SampleType.INT16)  # block_align 4


def frames(start: int, n: int) -> bytes:
    return b"".join(((start + i) % 65536).to_bytes(2, "little") * 2 for i in range(n))


def build(tmp_path: Path) -> tuple[Journal, Path]:
    """seq 0-1: audio 0..200; seq 2: gap 200..300; seq 3: audio 300..400."""
    path = tmp_path / "journal.bin"
    j = Journal.create(path, fsync=False)
    j.append_audio(0, 2, 0, 200, frames(0, 200))
    j.append_gap(2, 1, 200, 300)
    j.append_audio(3, 1, 300, 100, frames(300, 100))
    return j, path


def drain(reader: JournalReader | WavReader, upto: Position, max_bytes: int) -> list[object]:
    out: list[object] = []
    while pieces := reader.read(upto, max_bytes):
        out.extend(pieces)
    return out


def as_stream(pieces: list[object]) -> tuple[bytes, list[tuple[int, int]]]:
    audio, gaps = bytearray(), []
    for p in pieces:
        if isinstance(p, AudioPiece):
            audio += p.data
        else:
            assert isinstance(p, GapPiece)
            gaps.append((p.start_sample, p.end_sample))
            audio += bytes((p.end_sample - p.start_sample) * 4)
    return bytes(audio), gaps


def expected(start: int) -> bytes:
    whole = frames(0, 200) + bytes(100 * 4) + frames(300, 100)
    return whole[start * 4:]


@pytest.mark.parametrize("start", [0, 1, 199, 200, 250, 300, 399, 400])
@pytest.mark.parametrize("max_bytes", [4, 100, 1 << 20])
def test_journal_reader_from_any_sample_in_any_piece_size(tmp_path: Path, start: int,
                                                          max_bytes: int) -> None:
    j, path = build(tmp_path)
    reader = JournalReader(path, FMT, start)
    pieces = drain(reader, j.position, max_bytes)
    audio, gaps = as_stream(pieces)
    assert audio == expected(start)
    assert gaps == ([(max(start, 200), 300)] if start < 300 else [])
    assert reader.sample == 400
    positions = [p.start_sample for p in pieces]  # type: ignore[attr-defined]
    assert positions == sorted(positions)
    reader.close()
    j.close()


def test_journal_reader_never_reads_past_the_durable_position(tmp_path: Path) -> None:
    j, path = build(tmp_path)
    durable = j.position
    j.append_audio(4, 1, 400, 50, frames(400, 50))  # written, not durable
    reader = JournalReader(path, FMT, 0)
    audio, _ = as_stream(drain(reader, durable, 1 << 20))
    assert audio == expected(0) and reader.sample == 400
    assert reader.read(durable, 1 << 20) == []
    audio, _ = as_stream(drain(reader, j.position, 1 << 20))  # now durable
    assert audio == frames(400, 50)
    j.close()


@pytest.mark.parametrize("start", [0, 150, 200, 260, 300, 400])
def test_wav_reader_reports_gaps_not_silence(tmp_path: Path, start: int) -> None:
    j, path = build(tmp_path)
    wav = tmp_path / "audio.wav"
    write_file_atomic(wav, JournalWav(path, FMT, j.position), fsync=False)
    gaps = list(j.gaps)
    reader = WavReader(wav, FMT, gaps, 400, start)
    audio, got = as_stream(drain(reader, Position(0, 4, 400, 3, 1), 64))
    assert audio == expected(start)
    assert got == ([(max(start, 200), 300)] if start < 300 else [])
    assert gaps == [Gap(2, 3, 200, 300)]
    j.close()


def test_parse_from() -> None:
    assert parse_from(None, 16000, 999) == 0
    assert parse_from("start", 16000, 999) == 0
    assert parse_from("live", 16000, 999) == 999
    assert parse_from("12345", 16000, 999) == 12345
    assert parse_from("12.5s", 16000, 999) == 200000
    for bad in ("-1", "x", "1.5", "-2s", "nans", "infs", ""):
        with pytest.raises(FromError):
            parse_from(bad, 16000, 999)


def test_event_bus_filters_by_stream_and_cuts_off_a_slow_subscriber() -> None:
    async def scenario() -> None:
        bus = EventBus()
        everything = bus.subscribe()
        one = bus.subscribe("a")
        slow = bus.subscribe(limit=2)
        for sid in ("a", "b", "a"):
            bus.publish(StreamEvent(EventKind.OPENED, sid, 0, 0.0))
        assert [e.stream_id for e in everything.pending()] == ["a", "b", "a"]
        assert len(one.pending()) == 2
        assert slow.overflowed and len(slow.pending()) == 2
        assert await slow.get() is None
        waiter = one.changed()
        assert not waiter.done()
        bus.publish(StreamEvent(EventKind.GAP, "a", 5, 0.0, gap=Gap(1, 2, 3, 4)))
        assert waiter.done()
        event = await one.get()
        assert event is not None and event.to_json()["start_sample"] == 3
        for sub in (everything, one, slow):
            sub.close()
        assert bus.subscribers == 0

    asyncio.run(scenario())

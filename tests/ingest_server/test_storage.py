"""Journal, recovery and WAV export, in-process (no server)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from ingest_server.storage import (
    Gap,
    Journal,
    JournalError,
    StorageError,
    Store,
    StreamMeta,
    is_valid_stream_id,
    utc_now,
)
from ingest_server.storage.journal import FILE_MAGIC, RECORD_HEADER_SIZE
from uplink.audio import AudioFormat, SampleType

from .client import FMT, FRAME, frames

BLOCK = FMT.block_align


def fill(journal: Journal, payload: list[bytes], first_seq: int = 0) -> None:
    for i, frame in enumerate(payload):
        seq = first_seq + i
        journal.append_audio(seq, 1, journal.next_sample, len(frame) // BLOCK, frame)


def test_journal_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "journal.bin"
    j = Journal.create(path)
    fill(j, frames(5, seed=1))
    j.append_gap(5, 3, j.next_sample, j.next_sample + 1000)
    fill(j, frames(2, seed=2), first_seq=8)
    j.sync()
    j.close()

    r = Journal.open(path, BLOCK)
    assert (r.next_seq, r.next_sample, r.frames) == (10, 7 * FRAME + 1000, 7)
    assert r.gaps == [Gap(5, 8, 5 * FRAME, 5 * FRAME + 1000)]
    assert r.position.size == path.stat().st_size
    # Appends continue where recovery left off.
    fill(r, frames(1, seed=3), first_seq=10)
    r.close()
    assert Journal.open(path, BLOCK).next_seq == 11


@pytest.mark.parametrize("cut", [1, RECORD_HEADER_SIZE - 1, RECORD_HEADER_SIZE + 7])
def test_torn_tail_is_cut(tmp_path: Path, cut: int) -> None:
    """A crash mid-write leaves part of the last record: recovery drops exactly that record."""
    path = tmp_path / "journal.bin"
    j = Journal.create(path)
    fill(j, frames(4, seed=4))
    good = j.position
    j.close()
    with open(path, "ab") as f:  # half of a fifth record
        f.write(os.urandom(cut))
    r = Journal.open(path, BLOCK)
    assert r.position == good
    assert path.stat().st_size == good.size  # truncated on disk, not only in memory
    r.close()


def test_flipped_byte_cuts_the_record_and_everything_after(tmp_path: Path) -> None:
    path = tmp_path / "journal.bin"
    j = Journal.create(path)
    fill(j, frames(6, seed=5))
    j.close()
    record = RECORD_HEADER_SIZE + FRAME * BLOCK
    third = len(FILE_MAGIC) + 2 * record
    with open(path, "r+b") as f:  # one bit in the third record's audio
        f.seek(third + RECORD_HEADER_SIZE + 100)
        b = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([b[0] ^ 0x01]))
    r = Journal.open(path, BLOCK)
    assert (r.next_seq, r.frames) == (2, 2)
    assert path.stat().st_size == third
    # The cut bytes are kept aside for forensics, outside the journal.
    assert (tmp_path / f"journal.bin.cut-{third}").stat().st_size == 4 * record
    r.close()


def test_record_that_does_not_continue_the_stream_is_cut(tmp_path: Path) -> None:
    path = tmp_path / "journal.bin"
    j = Journal.create(path)
    fill(j, frames(2, seed=6))
    j.append_audio(5, 1, j.next_sample, FRAME, frames(1, seed=7)[0])  # valid CRC, wrong seq
    j.close()
    r = Journal.open(path, BLOCK)
    assert r.next_seq == 2
    r.close()


def test_torn_magic_restarts_the_file_and_foreign_file_is_refused(tmp_path: Path) -> None:
    torn = tmp_path / "torn.bin"
    torn.write_bytes(FILE_MAGIC[:3])
    j = Journal.open(torn, BLOCK)
    assert j.next_seq == 0 and torn.read_bytes() == FILE_MAGIC
    j.close()
    foreign = tmp_path / "foreign.bin"
    foreign.write_bytes(b"RIFF....WAVEfmt ")
    with pytest.raises(JournalError):
        Journal.open(foreign, BLOCK)


def meta(stream_id: str, fmt: AudioFormat = FMT) -> StreamMeta:
    return StreamMeta(stream_id, fmt, FRAME, 1, "0" * 64, utc_now())


def test_store_finalize_writes_wav_with_silent_gaps(tmp_path: Path) -> None:
    store = Store(tmp_path / "data")
    store.check_writable()
    m = meta("s-1")
    j = store.create(m)
    a, b = frames(3, seed=8), frames(2, seed=9)
    fill(j, a)
    j.append_gap(3, 4, j.next_sample, j.next_sample + 777)
    fill(j, b, first_seq=7)
    m.state, m.end_reason, m.gaps = "finalized", "ended", list(j.gaps)
    store.finalize(m, j)

    d = tmp_path / "data" / "streams" / "s-1"
    assert sorted(p.name for p in d.iterdir()) == ["audio.wav", "meta.json"]
    got, rate = sf.read(d / "audio.wav", dtype="int16")
    want = np.concatenate([np.frombuffer(b"".join(a), "<i2"), np.zeros(777, "<i2"),
                           np.frombuffer(b"".join(b), "<i2")])
    assert rate == 16000 and np.array_equal(got, want)
    (recovered, journal), = store.recover()
    assert journal is None and recovered.state == "finalized"
    assert recovered.gaps == [Gap(3, 7, 3 * FRAME, 3 * FRAME + 777)]


def test_odd_sized_int24_data_is_padded(tmp_path: Path) -> None:
    fmt = AudioFormat(8000, 1, SampleType.INT24)
    store = Store(tmp_path / "data")
    store.check_writable()
    m = meta("odd", fmt)
    j = store.create(m)
    j.append_audio(0, 1, 0, 3, b"\x01\x02\x03" * 3)  # 9 data bytes
    m.state = "finalized"
    store.finalize(m, j)
    wav = store.wav_path("odd")
    assert wav.stat().st_size % 2 == 0
    got, _ = sf.read(wav, dtype="int32")
    assert len(got) == 3


def test_recovery_removes_unborn_stream_and_skips_damaged(tmp_path: Path) -> None:
    store = Store(tmp_path / "data")
    store.check_writable()
    unborn = tmp_path / "data" / "streams" / "unborn"
    unborn.mkdir()
    (unborn / "journal.bin").write_bytes(FILE_MAGIC)  # crashed before meta.json
    damaged = tmp_path / "data" / "streams" / "damaged"
    damaged.mkdir()
    (damaged / "meta.json").write_text("{not json")
    fine = store.create(meta("fine"))
    fill(fine, frames(2, seed=10))
    fine.close()

    found = store.recover()
    assert [m.stream_id for m, _ in found] == ["fine"]
    assert found[0][1] is not None and found[0][1].next_seq == 2
    assert not unborn.exists() and damaged.exists()


def test_stream_id_validation() -> None:
    for ok in ["a", "mic-7f3a", "A.b_c-9", "x" * 128]:
        assert is_valid_stream_id(ok)
    for bad in ["", ".hidden", "-x", "a/b", "a..b", "x" * 129, "a\n", "é", "../etc"]:
        assert not is_valid_stream_id(bad)


def test_unwritable_data_dir_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(StorageError, match="not writable"):
        Store(blocker / "data").check_writable()

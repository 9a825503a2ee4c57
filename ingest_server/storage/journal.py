"""Per-stream append-only journal: the durable copy of every accepted item (docs/storage.md).

File: an 8-byte magic, then records. A record is a 36-byte header, a CRC32 and the payload:

    kind u8 | flags u8 | reserved u16 | count u32 | payload_len u32 |
    seq u64 | sample_pos u64 | extent u64 | crc32 u32 | payload

`extent` is the number of sample frames in the payload for AUDIO, and `end_sample` for GAP
(whose payload is empty). The CRC covers the 36 header bytes and the payload, so a torn or
flipped record is detected on recovery and cut off, never served.

Writes are one `os.writev` on an O_APPEND descriptor (no per-frame fsync); `sync()` is the
fsync a committer runs in a worker thread before acking (group commit: ingest_server/
commit.py).
Records are strictly consecutive: each starts at the previous one's next_seq and next_sample,
which recovery checks too.

Faults (docs/storage.md "Disk faults"): a failed or short write is undone at once (the file
is cut back to the last whole record) and the journal stays usable; after a failed fsync the
caller cuts the file back to the last *durable* position with `rollback()`, because the page
cache can no longer be trusted for anything written since. Only if a cut itself fails is the
journal `broken` until a restart recovers it. `_write`, `_fsync`, `_syncfs` and `_truncate`
are the only places that touch the file after opening it, so tests inject faults there.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import struct
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from .syncfs import DEVICES, Device

log = logging.getLogger(__name__)

FILE_MAGIC = b"EPJRNL\x00\x01"  # name + journal format version 1
RECORD = struct.Struct("<BBHIIQQQ")
CRC = struct.Struct("<I")
RECORD_HEADER_SIZE = RECORD.size + CRC.size  # 40 bytes
KIND_AUDIO = 1
KIND_GAP = 2
# Generous bound so a corrupt length field cannot make recovery allocate gigabytes.
MAX_RECORD_PAYLOAD = 64 << 20


class JournalError(OSError):
    """The journal cannot be used (not a journal, or a failed write left it unusable)."""


@dataclass(frozen=True, slots=True)
class Position:
    """A point in the journal: its byte size, the stream position it reaches, and how many
    AUDIO frames and GAP records lie before it (so a rollback restores the totals too)."""

    size: int
    next_seq: int
    next_sample: int
    frames: int = 0
    gap_count: int = 0


@dataclass(frozen=True, slots=True)
class Gap:
    """Seqs [first_seq, end_seq) carry no audio; samples [start_sample, end_sample) are silence."""

    first_seq: int
    end_seq: int
    start_sample: int
    end_sample: int

    def to_json(self) -> dict[str, int]:
        return {
            "first_seq": self.first_seq,
            "end_seq": self.end_seq,
            "start_sample": self.start_sample,
            "end_sample": self.end_sample,
        }


@dataclass(frozen=True, slots=True)
class Record:
    kind: int
    count: int
    seq: int
    sample_pos: int
    extent: int
    payload: bytes
    end_offset: int  # byte offset just past this record


def encode_header(kind: int, count: int, seq: int, sample_pos: int, extent: int,
                  payload: bytes | memoryview) -> bytes:
    head = RECORD.pack(kind, 0, 0, count, len(payload), seq, sample_pos, extent)
    return head + CRC.pack(zlib.crc32(payload, zlib.crc32(head)))


def read_records(f: BinaryIO, limit: int) -> Iterator[Record]:
    """Records from the file's current offset up to byte `limit`, stopping at the first bad one.

    "Bad" is anything a torn or corrupted write can produce: a short header or payload, an
    unknown kind, non-zero reserved bits, an absurd length, a CRC mismatch. The caller compares
    the last record's end_offset with the file size to see whether something was left over.
    """
    offset = f.tell()
    while offset + RECORD_HEADER_SIZE <= limit:
        raw = f.read(RECORD_HEADER_SIZE)
        if len(raw) < RECORD_HEADER_SIZE:
            return
        head = raw[: RECORD.size]
        kind, flags, reserved, count, plen, seq, sample_pos, extent = RECORD.unpack(head)
        if kind not in (KIND_AUDIO, KIND_GAP) or flags or reserved or count == 0:
            return
        if plen > MAX_RECORD_PAYLOAD or offset + RECORD_HEADER_SIZE + plen > limit:
            return
        payload = f.read(plen)
        if len(payload) < plen:
            return
        (crc,) = CRC.unpack_from(raw, RECORD.size)
        if zlib.crc32(payload, zlib.crc32(head)) != crc:
            return
        offset += RECORD_HEADER_SIZE + plen
        yield Record(kind, count, seq, sample_pos, extent, payload, offset)


@dataclass(slots=True)
class _Scan:
    position: Position
    gaps: list[Gap] = field(default_factory=list)


def _scan(path: Path, block_align: int) -> tuple[_Scan, int]:
    """Replay the journal; returns the state of the valid prefix and the file's size."""
    with open(path, "rb") as f:
        file_size = os.fstat(f.fileno()).st_size
        magic = f.read(len(FILE_MAGIC))
        if magic != FILE_MAGIC:
            if FILE_MAGIC.startswith(magic):  # crashed while creating: nothing was ever acked
                return _Scan(Position(0, 0, 0)), file_size
            raise JournalError(f"{path} is not a journal (bad magic {magic!r})")
        state = _Scan(Position(len(FILE_MAGIC), 0, 0))
        for rec in read_records(f, file_size):
            pos = state.position
            # A record that does not continue the stream exactly is corruption, not data.
            if rec.seq != pos.next_seq or rec.sample_pos != pos.next_sample:
                break
            frames = pos.frames
            if rec.kind == KIND_AUDIO:
                if len(rec.payload) != rec.extent * block_align or len(rec.payload) % rec.count:
                    break
                frames += rec.count
                end_sample = rec.sample_pos + rec.extent
            else:
                if rec.payload or rec.extent < rec.sample_pos:
                    break
                end_sample = rec.extent
                state.gaps.append(Gap(rec.seq, rec.seq + rec.count, rec.sample_pos, end_sample))
            state.position = Position(rec.end_offset, rec.seq + rec.count, end_sample, frames,
                                      len(state.gaps))
        return state, file_size


class Journal:
    """One stream's journal, open for appending. Not thread-safe except `sync()`."""

    def __init__(self, path: Path, fd: int, scan: _Scan, device: Device, *, fsync: bool) -> None:
        self.path = path
        self._fd = fd
        self.device = device  # acquired before the file was opened (see syncfs.py)
        self.error_generation = device.error_generation
        # A journal reached through a symlink or bind mount onto another file system is not
        # covered by its directory's syncfs: it gets its own fsync.
        self.syncfs_capable = device.syncfs_capable and os.fstat(fd).st_dev == device.dev
        self._do_fsync = fsync
        self._size = scan.position.size
        self.next_seq = scan.position.next_seq
        self.next_sample = scan.position.next_sample
        self.frames = scan.position.frames
        self.gaps = scan.gaps
        self.broken = False  # a cut after a fault failed: unusable until recovery

    @classmethod
    def create(cls, path: Path, *, fsync: bool = True) -> Journal:
        device = DEVICES.acquire(path.parent)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC,
                         0o644)
        except BaseException:
            DEVICES.release(device)
            raise
        try:
            os.write(fd, FILE_MAGIC)
            if fsync:
                os.fsync(fd)
        except BaseException:
            os.close(fd)
            DEVICES.release(device)
            raise
        return cls(path, fd, _Scan(Position(len(FILE_MAGIC), 0, 0)), device, fsync=fsync)

    @classmethod
    def open(cls, path: Path, block_align: int, *, fsync: bool = True) -> Journal:
        """Recover: keep the longest valid prefix, cut the rest, make what is kept durable."""
        scan, file_size = _scan(path, block_align)
        keep = scan.position.size
        device = DEVICES.acquire(path.parent)
        try:
            fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CLOEXEC)
        except BaseException:
            DEVICES.release(device)
            raise
        try:
            if keep == 0:  # torn magic: start the file over
                os.ftruncate(fd, 0)
                os.write(fd, FILE_MAGIC)
                scan.position = Position(len(FILE_MAGIC), 0, 0)
            elif keep < file_size:
                _cut_tail(path, fd, keep, file_size)
            # Whatever we recovered may sit only in the page cache (we were SIGKILLed before
            # an fsync): make it durable now, since the next welcome promises it (§2).
            if fsync:
                os.fsync(fd)
        except BaseException:
            os.close(fd)
            DEVICES.release(device)
            raise
        return cls(path, fd, scan, device, fsync=fsync)

    @property
    def position(self) -> Position:
        return Position(self._size, self.next_seq, self.next_sample, self.frames, len(self.gaps))

    def append_audio(self, seq: int, count: int, sample_pos: int, nsamples: int,
                     payload: bytes | memoryview) -> None:
        self._append(encode_header(KIND_AUDIO, count, seq, sample_pos, nsamples, payload), payload)
        self.next_seq = seq + count
        self.next_sample = sample_pos + nsamples
        self.frames += count

    def append_gap(self, seq: int, count: int, start_sample: int, end_sample: int) -> None:
        self._append(encode_header(KIND_GAP, count, seq, start_sample, end_sample, b""), b"")
        self.next_seq = seq + count
        self.next_sample = end_sample
        self.gaps.append(Gap(seq, seq + count, start_sample, end_sample))

    def _append(self, header: bytes, payload: bytes | memoryview) -> None:
        if self.broken:
            raise JournalError(f"{self.path}: journal unusable until the server restarts")
        total = len(header) + len(payload)
        try:
            written = self._write([header, payload])
            if written != total:
                raise OSError(errno.ENOSPC, f"short write ({written} of {total} bytes)")
        except OSError:
            # Never leave half a record in front of the next one: cut back to the last whole
            # record (the records before it were written whole and stay valid). If even the
            # cut fails, refuse further writes; recovery will cut the torn tail.
            try:
                self._truncate(self._size)
            except OSError:
                self.broken = True
            raise
        self._size += total

    def _write(self, parts: list[bytes | memoryview]) -> int:
        return os.writev(self._fd, parts)

    def _fsync(self) -> None:
        os.fsync(self._fd)

    def _syncfs(self) -> None:
        self.device.syncfs()

    def sync_filesystem(self) -> None:
        """syncfs(2) on this journal's file system: every dirty file on it (syncfs.py).
        Called by group commit (commit.sync_many) under the device's lock."""
        self._syncfs()

    def _truncate(self, size: int) -> None:
        os.ftruncate(self._fd, size)

    def sync(self) -> float:
        """fsync; safe to call from a worker thread while the event loop appends.

        Returns the seconds the fsync took (for the fsync latency histogram).
        """
        if self.broken:
            raise JournalError(f"{self.path}: journal unusable until the server restarts")
        if not self._do_fsync:
            return 0.0
        start = time.perf_counter()
        self._fsync()
        return time.perf_counter() - start

    @property
    def fsync_enabled(self) -> bool:
        return self._do_fsync

    def rollback(self, to: Position) -> None:
        """After a failed fsync: forget everything after `to` (the last durable position).

        Linux may mark pages whose writeback failed as clean, so a later fsync can "succeed"
        without writing them: nothing written since the last good fsync may ever be acked.
        Cutting the file back removes those pages; the client still holds that audio (it
        was never acked) and replays it. Runs on the event loop, with no fsync in progress.
        """
        try:
            self._truncate(to.size)
        except OSError:
            self.broken = True
            raise
        self._size = to.size
        self.next_seq = to.next_seq
        self.next_sample = to.next_sample
        self.frames = to.frames
        del self.gaps[to.gap_count:]

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
            DEVICES.release(self.device)


def _cut_tail(path: Path, fd: int, keep: int, file_size: int) -> None:
    """Truncate after the valid prefix; keep a copy of the cut bytes for forensics.

    A crash mid-write leaves at most one partial record; anything longer is corruption, and
    a copy (`journal.bin.cut-<offset>`) lets an operator look at it. It is never served.
    """
    cut = file_size - keep
    side = path.with_name(f"{path.name}.cut-{keep}")
    log.warning("%s: cutting %d bytes after offset %d (torn or corrupt tail); copy in %s",
                path, cut, keep, side.name)
    with open(path, "rb") as src, open(side, "wb") as dst:
        src.seek(keep)
        shutil.copyfileobj(src, dst)
    os.ftruncate(fd, keep)

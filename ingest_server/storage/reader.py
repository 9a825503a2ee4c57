"""Read durable audio from a sample position on: what a live listener is sent
(docs/listeners.md, docs/protocol.md §11).

Two readers, one contract (`DurableReader`):

- `JournalReader`: an open stream's journal, record by record, never past the byte size of
  the stream's *durable* position (`Stream.durable`): nothing it returns can later be cut
  back (docs/storage.md "Disk faults") or lost in a crash. Records are not CRC-checked here:
  each was written whole by this server or checked by recovery before it became durable.
- `WavReader`: a finalized stream's `audio.wav`, addressed by sample, with the gaps of
  meta.json reported as gaps (not as the silence the file holds).

A reader keeps only its file descriptor and its position: each `read` returns at most
`max_bytes` of audio, so a listener's memory is bounded whatever its backlog. Reads block
(`os.pread`); the caller decides whether to run them in a thread.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from uplink.audio import AudioFormat, wav_header

from .journal import FILE_MAGIC, KIND_AUDIO, KIND_GAP, RECORD, RECORD_HEADER_SIZE, Gap, Position


@dataclass(frozen=True, slots=True)
class AudioPiece:
    """Durable audio: sample frames [start_sample, start_sample + len(data) / block_align)."""

    start_sample: int
    data: bytes


@dataclass(frozen=True, slots=True)
class GapPiece:
    """Samples [start_sample, end_sample) carry no audio; `gap` is the range as recorded
    (the piece is only the part at or after the reader's start)."""

    start_sample: int
    end_sample: int
    gap: Gap


Piece = AudioPiece | GapPiece


@dataclass(frozen=True, slots=True)
class ReadMark:
    """Where a `JournalReader` stands: `sample` and the byte offset of the record holding
    it. Readers of one journal can hand it to each other (`seek`), so a listener the shared
    live reader carried forward resumes there without rescanning the journal (fanout.py)."""

    offset: int
    sample: int


class DurableReader(Protocol):
    """Pieces from `sample` on, in order, each starting where the previous one ended."""

    sample: int

    def read(self, upto: Position, max_bytes: int) -> list[Piece]:
        """The pieces after `sample` up to `upto` (the stream's durable position), at most
        about `max_bytes` of audio; [] when there is nothing new. Advances `sample`."""
        ...

    def close(self) -> None: ...


class JournalReader:
    """An open stream's journal from `start_sample` on (see the module docstring)."""

    def __init__(self, path: Path, fmt: AudioFormat, start_sample: int) -> None:
        self.sample = start_sample
        self._align = fmt.block_align
        self._offset = len(FILE_MAGIC)  # byte offset of the record holding `sample`
        self._fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)

    @property
    def mark(self) -> ReadMark:
        return ReadMark(self._offset, self.sample)

    def seek(self, mark: ReadMark) -> None:
        """Continue from `mark`, taken from a reader of the same journal."""
        self._offset, self.sample = mark.offset, mark.sample

    def read(self, upto: Position, max_bytes: int) -> list[Piece]:
        pieces: list[Piece] = []
        budget = max_bytes
        fd, align = self._fd, self._align
        while budget > 0 and self._offset + RECORD_HEADER_SIZE <= upto.size:
            head = os.pread(fd, RECORD.size, self._offset)
            if len(head) < RECORD.size:
                raise OSError(f"journal ends at {self._offset}, durable size is {upto.size}")
            kind, _, _, count, plen, seq, start, extent = RECORD.unpack(head)
            payload_at = self._offset + RECORD_HEADER_SIZE
            end = start + extent if kind == KIND_AUDIO else extent
            if end <= self.sample:  # wholly before the reader: skip it unread (catch-up)
                self._offset = payload_at + plen
                continue
            skip = max(self.sample - start, 0)
            if kind == KIND_GAP:
                pieces.append(GapPiece(self.sample, end, Gap(seq, seq + count, start, extent)))
                self.sample = end
                self._offset = payload_at
                continue
            if kind != KIND_AUDIO:
                raise OSError(f"journal record of unknown kind {kind} at {self._offset}")
            # A record larger than the budget is sent in parts: `sample` says where we are.
            frames = min(end - self.sample, max(budget // align, 1))
            data = os.pread(fd, frames * align, payload_at + skip * align)
            if len(data) != frames * align:
                raise OSError(f"short read of a durable journal record at {self._offset}")
            pieces.append(AudioPiece(self.sample, data))
            budget -= len(data)
            self.sample += frames
            if self.sample == end:
                self._offset = payload_at + plen
        return pieces

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class WavReader:
    """A finalized stream's audio.wav from `start_sample` on, gaps reported as gaps."""

    def __init__(self, path: Path, fmt: AudioFormat, gaps: list[Gap], total_samples: int,
                 start_sample: int) -> None:
        self.sample = start_sample
        self._align = fmt.block_align
        self._data_at = len(wav_header(fmt, total_samples))
        self._gaps = [g for g in gaps if g.end_sample > start_sample and g.end_sample > g.start_sample]
        self._fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)

    def read(self, upto: Position, max_bytes: int) -> list[Piece]:
        pieces: list[Piece] = []
        budget = max_bytes
        total = upto.next_sample
        while budget > 0 and self.sample < total:
            gap = self._gaps[0] if self._gaps else None
            if gap is not None and gap.start_sample <= self.sample:
                pieces.append(GapPiece(self.sample, gap.end_sample, gap))
                self.sample = gap.end_sample
                self._gaps.pop(0)
                continue
            stop = min(total, gap.start_sample if gap is not None else total,
                       self.sample + max(budget // self._align, 1))
            n = (stop - self.sample) * self._align
            data = os.pread(self._fd, n, self._data_at + self.sample * self._align)
            if len(data) != n:
                raise OSError(f"audio.wav is shorter than its {total} samples")
            pieces.append(AudioPiece(self.sample, data))
            budget -= n
            self.sample = stop
        return pieces

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

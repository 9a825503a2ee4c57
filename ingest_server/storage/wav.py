"""WAV export of a journal prefix: audio records as they are, gaps as silence (§8).

Used both to write the final `audio.wav` at finalization and to stream a WAV of what is
durable so far for an open stream. The sample count is known up front (the position's
next_sample), so the header is written first and never patched.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from uplink.audio import AudioFormat, wav_header

from .journal import FILE_MAGIC, KIND_AUDIO, Position, read_records

_ZEROS = bytes(1 << 20)


def max_wav_samples(fmt: AudioFormat) -> int:
    """The most sample frames a WAV of `fmt` can hold: RIFF sizes are u32 (about 4 GiB), so
    a longer stream could not be written as a valid file. The server caps streams here."""
    riff_overhead = len(wav_header(fmt, 0)) - 8  # the RIFF size counts everything after it
    max_data = 0xFFFFFFFF - riff_overhead - 1  # -1: room for the pad byte
    return max_data // fmt.block_align


def wav_size(fmt: AudioFormat, n_sample_frames: int) -> int:
    data = n_sample_frames * fmt.block_align
    return len(wav_header(fmt, n_sample_frames)) + data + (data & 1)


class JournalWav:
    """The WAV bytes of a journal prefix. Opening the journal happens in the constructor,
    so a caller sees a missing file at once and the iteration survives a later unlink."""

    def __init__(self, journal_path: Path, fmt: AudioFormat, upto: Position) -> None:
        self.fmt = fmt
        self.upto = upto
        self.size = wav_size(fmt, upto.next_sample)
        self._file = open(journal_path, "rb")  # noqa: SIM115 - closed by __iter__ / close()

    def close(self) -> None:
        self._file.close()

    def __iter__(self) -> Iterator[bytes]:
        try:
            yield wav_header(self.fmt, self.upto.next_sample)
            data_bytes = 0
            self._file.seek(len(FILE_MAGIC))
            for rec in read_records(self._file, self.upto.size):
                if rec.kind == KIND_AUDIO:
                    data_bytes += len(rec.payload)
                    yield rec.payload
                else:
                    silence = (rec.extent - rec.sample_pos) * self.fmt.block_align
                    data_bytes += silence
                    while silence > 0:
                        n = min(silence, len(_ZEROS))
                        yield _ZEROS if n == len(_ZEROS) else _ZEROS[:n]
                        silence -= n
            expected = self.upto.next_sample * self.fmt.block_align
            if data_bytes != expected:  # the prefix was validated when written: a bug or rot
                raise OSError(f"journal yielded {data_bytes} audio bytes, expected {expected}")
            if data_bytes & 1:
                yield b"\x00"  # RIFF chunks are word-aligned
        finally:
            self._file.close()


def write_file_atomic(path: Path, chunks: Iterator[bytes] | JournalWav, *, fsync: bool) -> None:
    """Write to `path.tmp`, fsync, rename over `path`, fsync the directory. On failure the
    `.tmp` file is removed and the old `path` (if any) is left as it was."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            for chunk in chunks:
                f.write(chunk)
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        # Disk full half way through a WAV: give the space back at once, not at the restart.
        tmp.unlink(missing_ok=True)
        if isinstance(chunks, JournalWav):
            chunks.close()  # if the iteration never started, its journal is still open
        raise
    if fsync:
        fsync_dir(path.parent)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

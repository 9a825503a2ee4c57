"""Keep what the uplink could not deliver: the ring's held audio, written to a WAV.

After a fatal error (or a second Ctrl-C) the ring still holds every item from the oldest
unacknowledged seq (`RingBuffer.first_seq()`) to `tail_seq`: audio frames, source gaps, and
the front gap of frames a full DROP_OLDEST ring evicted (docs/protocol.md §8). This module
reads that span through the ring's ordinary read API — read-only, after the source has
stopped — and writes it as one continuous WAV in the capture format, gaps as silence, so
the file lines up sample for sample with the stream from `start_sample` on: an operator can
append it to the server's copy, or re-stream it, without guessing where it belongs.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from capture.wavfile import wav_header
from uplink.ring import AudioRun, RingBuffer

_ZEROS = bytes(64 * 1024)
_READ_FRAMES = 1024
_READ_BYTES = 1 << 20


@dataclass(frozen=True, slots=True)
class UndeliveredAudio:
    path: Path
    start_sample: int  # the stream's sample position of the file's first sample frame
    samples: int  # sample frames in the file (gaps included, as silence)
    #: True: `path` is the input file itself, which still holds everything from
    #: `start_sample` on (more than the ring: also what was never read), so nothing is written
    in_source: bool = False


def first_unacked_sample(ring: RingBuffer) -> int | None:
    """The stream position of the oldest audio the server has not acknowledged, if any."""
    seq = ring.first_seq()
    if seq >= ring.tail_seq:
        return None
    run = ring.read(seq, 1, ring.frame_bytes)
    return None if run is None else run.sample_pos


def default_path(stream_id: str, tee: str | None, start_sample: int) -> Path:
    """Beside the tee when there is one, else in the current directory, named by position.

    The start sample is in the name so two failures of one stream never overwrite each
    other and the file says where it belongs without its log line.
    """
    name = f"undelivered-{stream_id}-from-{start_sample}.wav"
    if tee:
        tee_path = Path(tee)
        return tee_path.with_name(f"{tee_path.stem}.{name}")
    return Path(name)


def write_undelivered(
    ring: RingBuffer, path_for: Callable[[int], Path]
) -> UndeliveredAudio | None:
    """Write the ring's unacknowledged span to `path_for(start_sample)`; None if empty.

    Call only once the producer has stopped and the uplink has finished: the span must not
    move while it is read.
    """
    seq = ring.first_seq()
    end = ring.tail_seq
    if seq >= end:
        return None
    run = ring.read(seq, _READ_FRAMES, _READ_BYTES)
    if run is None:
        return None
    start_sample = run.sample_pos
    path = path_for(start_sample)
    fmt = ring.format
    written = 0
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, wav_header(fmt, 0))
        while run is not None:
            if isinstance(run, AudioRun):
                _write_all(fd, run.payload)
                written += len(run.payload)
            else:
                silence = (run.end_sample - run.sample_pos) * fmt.block_align
                while silence:
                    chunk = _ZEROS[: min(silence, len(_ZEROS))]
                    _write_all(fd, chunk)
                    silence -= len(chunk)
                    written += len(chunk)
            seq = run.seq + run.count
            run = ring.read(seq, _READ_FRAMES, _READ_BYTES) if seq < end else None
        if written % 2:
            os.write(fd, b"\x00")  # RIFF pad byte
        frames = written // fmt.block_align
        os.pwrite(fd, wav_header(fmt, frames), 0)
        os.fsync(fd)
    finally:
        os.close(fd)
    return UndeliveredAudio(path, start_sample, frames)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]

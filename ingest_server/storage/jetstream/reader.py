"""Durable audio from an audio subject: listener reads and WAV downloads, on any node.

No second copy of finalized audio: the subject already holds every item, replicated, and
the WAV is a pure function of it (journal records, gaps as silence), built on demand like
the local store's WAV of an open stream (storage/wav.py). Keeping an object-store copy would
double the storage and add a second commit point at finalization (docs/scale-out.md).

Messages are fetched with a batched direct get ("the next messages on this subject from
sequence N", up to BATCH_MESSAGES / BATCH_BYTES, any replica answers): one round trip per
batch, so a live-recorded stream (a message per 20 ms frame) reads at batch speed, and a
reader holds at most one batch. Where batching is unavailable, one message per request.
Reads stop at `upto.next_seq` (the durable position the caller was given), whatever the
subject holds past it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from typing import Any

from uplink.audio import AudioFormat, wav_header

from ..journal import KIND_GAP, Position
from ..reader import AudioPiece, GapPiece, Piece
from ..wav import wav_size
from .link import NatsLink
from .records import Item, items

_ZEROS = bytes(1 << 20)
WAV_CHUNK = 1 << 20
BATCH_MESSAGES = 512  # per batched direct get; memory is bounded by BATCH_BYTES
BATCH_BYTES = 4 << 20


def _sequence(msg: Any) -> int:
    """The stream sequence of a message from a get (`seq`) or a batched get (header)."""
    seq = getattr(msg, "seq", None)
    return int(seq if seq is not None else msg.headers["Nats-Sequence"])


class SubjectReader:
    """DurableReader over one subject, from `start_sample` on."""

    def __init__(self, link: NatsLink, stream_name: str, subject: str, fmt: AudioFormat,
                 start_sample: int) -> None:
        self.sample = start_sample
        self._link = link
        self._stream_name = stream_name
        self._subject = subject
        self._align = fmt.block_align
        self._cursor = 1  # the next stream sequence to look at
        self._items: deque[Item] = deque()
        self._exhausted = False  # the last fetch found nothing: the next read tries again

    def _fetch(self) -> bool:
        """The next messages' items into the queue; False if the subject has no more."""
        batch = self._link.call(self._link.get_batch(self._stream_name, self._subject,
                                                     self._cursor, BATCH_MESSAGES,
                                                     BATCH_BYTES))
        if batch is None:  # no batching right now: one message
            one = self._link.call(self._next_message())
            batch = [] if one is None else [one]
        if not batch:
            return False
        for msg in batch:
            self._items.extend(items(msg.data or b""))
        self._cursor = _sequence(batch[-1]) + 1
        return True

    async def _next_message(self) -> Any:
        errors = self._link.errors
        try:
            return await self._link.get_msg(self._stream_name, seq=self._cursor,
                                            subject=self._subject, next=True)
        except errors.NotFoundError:
            return None

    def read(self, upto: Position, max_bytes: int) -> list[Piece]:
        pieces: list[Piece] = []
        budget = max_bytes
        align = self._align
        while budget > 0 and self.sample < upto.next_sample:
            if not self._items and not self._fetch():
                break
            if not self._items:
                continue  # a marker (no items)
            item = self._items[0]
            if item.seq >= upto.next_seq:
                break  # past what the caller may see
            end = item.end_sample
            if end <= self.sample:
                self._items.popleft()
                continue
            if item.kind == KIND_GAP:
                pieces.append(GapPiece(self.sample, end, item.gap()))
                self.sample = end
                self._items.popleft()
                continue
            skip = self.sample - item.sample_pos
            frames = min(end - self.sample, max(budget // align, 1))
            data = bytes(item.payload[skip * align:(skip + frames) * align])
            pieces.append(AudioPiece(self.sample, data))
            budget -= len(data)
            self.sample += frames
            if self.sample == end:
                self._items.popleft()
        return pieces

    def close(self) -> None:
        self._items.clear()


class SubjectWav:
    """DurableAudio: the WAV bytes of a subject up to `upto`, gaps as silence."""

    def __init__(self, link: NatsLink, stream_name: str, subject: str, fmt: AudioFormat,
                 upto: Position) -> None:
        self.fmt = fmt
        self.upto = upto
        self.size = wav_size(fmt, upto.next_sample)
        self._reader = SubjectReader(link, stream_name, subject, fmt, 0)

    def close(self) -> None:
        self._reader.close()

    def __iter__(self) -> Iterator[bytes]:
        try:
            yield wav_header(self.fmt, self.upto.next_sample)
            data_bytes = 0
            while self._reader.sample < self.upto.next_sample:
                pieces = self._reader.read(self.upto, WAV_CHUNK)
                if not pieces:
                    break
                for piece in pieces:
                    if isinstance(piece, AudioPiece):
                        data_bytes += len(piece.data)
                        yield piece.data
                        continue
                    silence = (piece.end_sample - piece.start_sample) * self.fmt.block_align
                    data_bytes += silence
                    while silence > 0:
                        n = min(silence, len(_ZEROS))
                        yield _ZEROS if n == len(_ZEROS) else _ZEROS[:n]
                        silence -= n
            expected = self.upto.next_sample * self.fmt.block_align
            if data_bytes != expected:
                raise OSError(f"subject yielded {data_bytes} audio bytes, expected {expected}")
            if data_bytes & 1:
                yield b"\x00"
        finally:
            self._reader.close()

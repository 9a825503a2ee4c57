"""What one JetStream message of an audio subject holds (docs/scale-out.md).

A message is a batch of consecutive items in the journal's record encoding (storage/
journal.py: 36-byte header, CRC32, payload; gaps as GAP records), or an empty *marker*:

    AUDIO   items; the headers give the position after the batch
    FENCE   a node took the stream over (published with the tail it read as the expected
            last subject sequence, so an older owner's in-flight publish fails afterwards)
    END     the stream was finalized (ended or expired): nothing may follow but a FENCE of
            a reopen

Every message carries the cumulative position after it in its headers, so the tail (the
next seq a welcome promises, §2) is one "last message by subject" read, and `Ep-Prev` (the
subject's previous stream sequence, the same number the publish was fenced on) links the
messages backwards: the seq -> message mapping is recoverable from headers alone.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from enum import StrEnum

from ..journal import KIND_AUDIO, KIND_GAP, RECORD, RECORD_HEADER_SIZE, Gap, Position

# JetStream's per-subject optimistic concurrency: the publish fails with err_code 10071
# ("wrong last sequence") unless the subject's last message has this stream sequence.
EXPECTED_LAST_SUBJECT_SEQ = "Nats-Expected-Last-Subject-Sequence"
WRONG_LAST_SEQUENCE = 10071

H_KIND = "Ep-Kind"
H_FIRST_SEQ = "Ep-First-Seq"
H_NEXT_SEQ = "Ep-Next-Seq"
H_NEXT_SAMPLE = "Ep-Next-Sample"
H_FRAMES = "Ep-Frames"
H_GAPS = "Ep-Gaps"
H_SIZE = "Ep-Size"
H_PREV = "Ep-Prev"
H_OWNER = "Ep-Owner"
H_END_REASON = "Ep-End-Reason"  # END markers: how the stream ended, and when (ISO UTC),
H_ENDED = "Ep-Ended"  # so a node finding an END without a finalized meta can finish it


class MessageKind(StrEnum):
    AUDIO = "audio"
    FENCE = "fence"
    END = "end"


@dataclass(frozen=True, slots=True)
class Tail:
    """The last message of a subject: its stream sequence (0: none) and the position after
    it. `size` is the cumulative record bytes, the writer's Position.size."""

    subject_seq: int
    kind: MessageKind | None
    position: Position
    prev: int = 0

    @classmethod
    def empty(cls) -> Tail:
        return cls(0, None, Position(0, 0, 0, 0, 0))


def position_headers(kind: MessageKind, first_seq: int, pos: Position, prev: int,
                     owner: str) -> dict[str, str]:
    return {
        EXPECTED_LAST_SUBJECT_SEQ: str(prev),
        H_KIND: kind.value,
        H_FIRST_SEQ: str(first_seq),
        H_NEXT_SEQ: str(pos.next_seq),
        H_NEXT_SAMPLE: str(pos.next_sample),
        H_FRAMES: str(pos.frames),
        H_GAPS: str(pos.gap_count),
        H_SIZE: str(pos.size),
        H_PREV: str(prev),
        H_OWNER: owner,
    }


def tail_from(stream_seq: int, headers: Mapping[str, str] | None) -> Tail:
    """The position a message's headers record; ValueError for a foreign message."""
    if not headers or H_KIND not in headers:
        raise ValueError(f"message {stream_seq} carries no echopanel position headers")
    pos = Position(int(headers[H_SIZE]), int(headers[H_NEXT_SEQ]), int(headers[H_NEXT_SAMPLE]),
                   int(headers[H_FRAMES]), int(headers[H_GAPS]))
    return Tail(stream_seq, MessageKind(headers[H_KIND]), pos, int(headers.get(H_PREV, "0")))


@dataclass(frozen=True, slots=True)
class Item:
    kind: int
    count: int
    seq: int
    sample_pos: int
    extent: int  # AUDIO: sample frames; GAP: end_sample
    payload: memoryview

    @property
    def end_sample(self) -> int:
        return self.sample_pos + self.extent if self.kind == KIND_AUDIO else self.extent

    def gap(self) -> Gap:
        return Gap(self.seq, self.seq + self.count, self.sample_pos, self.extent)


def items(body: bytes) -> Iterator[Item]:
    """The records of a message body. They were CRC-checked... by nobody since: JetStream
    checksums its own storage, so only the framing is checked here."""
    view = memoryview(body)
    offset = 0
    while offset < len(view):
        if offset + RECORD_HEADER_SIZE > len(view):
            raise ValueError("truncated record header in a JetStream message")
        kind, _, _, count, plen, seq, sample_pos, extent = RECORD.unpack_from(view, offset)
        start = offset + RECORD_HEADER_SIZE
        if kind not in (KIND_AUDIO, KIND_GAP) or start + plen > len(view):
            raise ValueError("malformed record in a JetStream message")
        yield Item(kind, count, seq, sample_pos, extent, view[start:start + plen])
        offset = start + plen

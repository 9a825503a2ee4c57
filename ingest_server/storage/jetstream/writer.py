"""An open stream's writer on JetStream.

Appends only buffer records in memory (the journal's encoding, records.py). The committer
(publisher.py) takes everything buffered as one message (several if it exceeds
MAX_MESSAGE_BYTES) and publishes it, each with `Nats-Expected-Last-Subject-Sequence` = the
subject's last stream sequence this writer knows, and resolves once JetStream's PubAck
says a quorum of replicas stored it: acks to the uplink wait on that future
(docs/protocol.md §4). One publish per stream at a time (the stream's sync lock); items
arriving meanwhile ride the next batch (group commit, commit.py), so a stream that is
behind sends large messages, not one per 20 ms frame.

A "wrong last sequence" answer means another node published on the subject (it took the
stream over and fenced it, lease.py): this writer is FENCED for good, never retries, and
the connection closes with 4411 (errors.StreamFenced). Any other failure (timeout, no
quorum, connection lost) is a failed sync (1013): whether the message landed is unknown,
so the writer is STALE: it publishes nothing more and the next resume re-reads the tail
(store.take) instead of retrying blindly.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from ..interface import StreamFenced
from ..journal import KIND_AUDIO, KIND_GAP, Gap, Position, encode_header

# NATS' default max_payload is 1 MiB; headers and slack stay below it.
MAX_MESSAGE_BYTES = 768 * 1024


class WriterState(Enum):
    OWNER = "owner"  # may publish
    STALE = "stale"  # a publish failed with an unknown outcome: re-read the tail first
    FENCED = "fenced"  # another node wrote the subject (or took the lease): never again
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class BatchMessage:
    first_seq: int
    body: bytes
    after: Position  # the position after this message


class JetStreamWriter:
    """StreamWriter over one subject. Appends run on the server's loop; publishes on the
    NATS loop, one at a time, only through `JetStreamCommitter` (publisher.py)."""

    def __init__(self, stream_id: str, subject: str, tail: Position, last_subject_seq: int,
                 gaps: list[Gap], owner: str, meta_revision: int) -> None:
        self.stream_id = stream_id
        self.subject = subject
        self.owner = owner  # "node/lease token": in every message, for forensics
        self.next_seq = tail.next_seq
        self.next_sample = tail.next_sample
        self.frames = tail.frames
        self.gaps = gaps
        self._size = tail.size
        self.last_subject_seq = last_subject_seq  # the fencing token (records.py)
        self.meta_revision = meta_revision  # of the KV meta entry; gap checkpoints CAS on it
        self.state = WriterState.OWNER
        self._records: list[bytes] = []  # encoded, not yet published
        self._marks: list[Position] = []  # the position after each buffered record
        self._first_unpublished_seq = tail.next_seq
        self.unpublished_gap_start = tail.gap_count  # gaps before the buffered records

    @property
    def position(self) -> Position:
        return Position(self._size, self.next_seq, self.next_sample, self.frames, len(self.gaps))

    def append_audio(self, seq: int, count: int, sample_pos: int, nsamples: int,
                     payload: bytes | memoryview) -> None:
        self._check()
        self._buffer(encode_header(KIND_AUDIO, count, seq, sample_pos, nsamples, payload)
                     + bytes(payload))
        self.next_seq = seq + count
        self.next_sample = sample_pos + nsamples
        self.frames += count
        self._marks.append(self.position)

    def append_gap(self, seq: int, count: int, start_sample: int, end_sample: int) -> None:
        self._check()
        self._buffer(encode_header(KIND_GAP, count, seq, start_sample, end_sample, b""))
        self.next_seq = seq + count
        self.next_sample = end_sample
        self.gaps.append(Gap(seq, seq + count, start_sample, end_sample))
        self._marks.append(self.position)

    def _check(self) -> None:
        if self.state is WriterState.FENCED:
            raise StreamFenced(f"stream {self.stream_id} was taken over by another node")
        if self.state is not WriterState.OWNER:
            raise OSError(f"stream {self.stream_id}: writer is {self.state.value}")

    def _buffer(self, record: bytes) -> None:
        self._records.append(record)
        self._size += len(record)

    def take_batch(self) -> list[BatchMessage]:
        """Everything buffered, as messages of at most MAX_MESSAGE_BYTES (whole records)."""
        messages: list[BatchMessage] = []
        body: list[bytes] = []
        body_bytes = 0
        first = self._first_unpublished_seq
        prev_mark = self.position
        for record, mark in zip(self._records, self._marks, strict=True):
            if body and body_bytes + len(record) > MAX_MESSAGE_BYTES:
                messages.append(BatchMessage(first, b"".join(body), prev_mark))
                body, body_bytes, first = [], 0, prev_mark.next_seq
            body.append(record)
            body_bytes += len(record)
            prev_mark = mark
        if body:
            messages.append(BatchMessage(first, b"".join(body), prev_mark))
        self._records.clear()
        self._marks.clear()
        self._first_unpublished_seq = self.next_seq
        self.unpublished_gap_start = len(self.gaps)
        return messages

    def rollback(self, to: Position) -> None:
        """After a failed publish: forget what was not acked. The writer stays STALE (or
        FENCED): the client resumes and the store re-reads the tail (never a blind retry)."""
        self._records.clear()
        self._marks.clear()
        self._size = to.size
        self.next_seq = to.next_seq
        self.next_sample = to.next_sample
        self.frames = to.frames
        del self.gaps[to.gap_count:]
        self._first_unpublished_seq = to.next_seq
        self.unpublished_gap_start = to.gap_count
        if self.state is WriterState.OWNER:
            self.state = WriterState.STALE

    def fence(self) -> None:
        if self.state is not WriterState.CLOSED:
            self.state = WriterState.FENCED

    def close(self) -> None:
        if self.state is WriterState.OWNER:
            self.state = WriterState.CLOSED

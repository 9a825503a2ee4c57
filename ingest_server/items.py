"""Binary item processing, docs/protocol.md §3: validate, dedupe, trim, append to the journal.

O(1) per item apart from the CRC and the one `writev`: no JSON, no fsync, no copies (a
straddling item is trimmed with a memoryview), metrics as plain integer additions.
Everything is checked before anything is written, so a bad item never touches stored data.
Anything a client sends raises WireError (with the §3/§5 close code), nothing else; only a
storage failure raises OSError.
"""

from __future__ import annotations

from uplink.wire import (
    HEADER_SIZE,
    KIND_AUDIO,
    CloseCode,
    WireError,
    audio_frame_bytes,
    decode_gap_end,
    decode_header,
)

from .config import ServerConfig
from .metrics import Metrics
from .storage.interface import StreamMeta, StreamWriter
from .storage.journal import RECORD_HEADER_SIZE
from .storage.wav import max_wav_samples


class ItemRules:
    """What one connection's items must satisfy, fixed when its welcome is sent.

    `min_seq` is the welcome's next_seq: the client was told everything below it is stored
    (§2), so an item wholly below it is not a duplicate but a client going backwards (1002).
    `max_samples` is the stream's length limit (max_stream_seconds, and what one WAV file
    can hold): audio or a gap past it closes with 1008 (§5). `max_gaps` bounds the gap
    records of the stream (each lives in memory, meta.json and every details response): a
    gap past it closes with 1008 too.
    """

    __slots__ = ("block_align", "epoch", "frame_samples", "max_gaps", "max_message_bytes",
                 "max_samples", "metrics", "min_seq")

    def __init__(self, *, epoch: int, block_align: int, frame_samples: int,
                 max_message_bytes: int, min_seq: int, max_samples: int,
                 metrics: Metrics, max_gaps: int = 10000) -> None:
        self.epoch = epoch
        self.block_align = block_align
        self.frame_samples = frame_samples
        self.max_message_bytes = max_message_bytes
        self.min_seq = min_seq
        self.max_samples = max_samples
        self.max_gaps = max_gaps
        self.metrics = metrics

    @classmethod
    def for_stream(cls, meta: StreamMeta, welcome_seq: int, config: ServerConfig,
                   metrics: Metrics) -> ItemRules:
        fmt = meta.format
        return cls(epoch=meta.epoch, block_align=fmt.block_align,
                   frame_samples=meta.frame_samples, max_message_bytes=config.max_message_bytes,
                   min_seq=welcome_seq, metrics=metrics, max_gaps=config.max_gaps,
                   max_samples=min(int(config.max_stream_seconds * fmt.sample_rate),
                                   max_wav_samples(fmt)))

    def apply(self, journal: StreamWriter, data: bytes) -> bool:
        """Append what `data` adds to the stream. True if written, False for a duplicate."""
        m = self.metrics
        m.items_received += 1
        m.bytes_received += len(data)
        if len(data) > self.max_message_bytes:
            raise WireError(f"binary message of {len(data)} bytes exceeds "
                            f"{self.max_message_bytes}", CloseCode.MESSAGE_TOO_BIG)
        h = decode_header(data)  # 1007 for malformed headers
        frame_len = frame_bytes = end_sample = 0
        if h.kind == KIND_AUDIO:
            block_align = self.block_align
            frame_bytes = audio_frame_bytes(h, len(data) - HEADER_SIZE, block_align)
            frame_len = frame_bytes // block_align
            if frame_len > self.frame_samples:
                raise WireError(f"frame of {frame_len} samples exceeds frame_samples "
                                f"{self.frame_samples}")
            m.frames_received += h.count
        else:
            end_sample = decode_gap_end(data)
            if end_sample <= h.sample_pos:
                # A gap stands for lost audio (§3): one that covers no sample says nothing,
                # and a flood of them would only grow the stream's gap records.
                raise WireError(f"gap {h.sample_pos}..{end_sample} covers no sample",
                                CloseCode.PROTOCOL_ERROR)
        if h.epoch != self.epoch:
            raise WireError(f"item epoch {h.epoch}, stream epoch {self.epoch}",
                            CloseCode.PROTOCOL_ERROR)

        next_seq = journal.next_seq
        next_sample = journal.next_sample
        end_seq = h.seq + h.count
        if end_seq <= next_seq:
            if end_seq <= self.min_seq:
                raise WireError(f"seq {h.seq}..{end_seq - 1} is below {self.min_seq}, which "
                                "the welcome said is stored", CloseCode.PROTOCOL_ERROR)
            m.duplicates += 1
            return False  # a duplicate, re-acked by the caller (§3, §4)
        if h.seq > next_seq:
            raise WireError(f"seq {h.seq} jumps past expected {next_seq} without a GAP",
                            CloseCode.PROTOCOL_ERROR)
        skip = next_seq - h.seq  # > 0 when the item straddles next_seq
        count = h.count - skip

        if h.kind == KIND_AUDIO:
            start = h.sample_pos + skip * frame_len
            if start != next_sample:
                raise WireError(f"seq {next_seq} at sample {start}, expected {next_sample}",
                                CloseCode.PROTOCOL_ERROR)
            nsamples = count * frame_len
            if start + nsamples > self.max_samples:
                raise WireError(f"stream would exceed its maximum length of {self.max_samples} "
                                "samples", CloseCode.POLICY_VIOLATION)
            payload = memoryview(data)[HEADER_SIZE + skip * frame_bytes:]
            journal.append_audio(next_seq, count, start, nsamples, payload)
            m.frames_stored += count
            m.journal_bytes_written += RECORD_HEADER_SIZE + len(payload)
            return True

        # GAP. Unless it straddles (then the server's own next_sample is where it starts, §3),
        # it must start where the stream is.
        if skip == 0 and h.sample_pos != next_sample:
            raise WireError(f"gap at sample {h.sample_pos}, expected {next_sample}",
                            CloseCode.PROTOCOL_ERROR)
        if end_sample < next_sample:
            raise WireError(f"gap end_sample {end_sample} before next_sample {next_sample}",
                            CloseCode.PROTOCOL_ERROR)
        if end_sample > self.max_samples:
            raise WireError(f"stream would exceed its maximum length of {self.max_samples} "
                            "samples", CloseCode.POLICY_VIOLATION)
        if len(journal.gaps) >= self.max_gaps:
            raise WireError(f"stream already holds {self.max_gaps} gap records, the most "
                            "allowed", CloseCode.POLICY_VIOLATION)
        journal.append_gap(next_seq, count, next_sample, end_sample)
        m.gaps += 1
        m.journal_bytes_written += RECORD_HEADER_SIZE
        return True

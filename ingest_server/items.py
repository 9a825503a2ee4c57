"""Binary item processing, docs/protocol.md §3: validate, dedupe, trim, append to the journal.

O(1) per item apart from the CRC and the one `writev`: no JSON, no fsync, no copies (a
straddling item is trimmed with a memoryview). Everything is checked before anything is
written, so a bad item never touches stored data.
"""

from __future__ import annotations

from uplink.wire import (
    HEADER_SIZE,
    KIND_AUDIO,
    MAX_U64,
    CloseCode,
    WireError,
    audio_frame_bytes,
    decode_gap_end,
    decode_header,
)

from .storage import Journal


def apply_item(journal: Journal, data: bytes, *, epoch: int, block_align: int,
               frame_samples: int, max_message_bytes: int) -> bool:
    """Append what `data` adds to the stream. True if written, False for a duplicate.

    Raises WireError with the §3/§5 close code for anything the client must not send.
    """
    if len(data) > max_message_bytes:
        raise WireError(f"binary message of {len(data)} bytes exceeds {max_message_bytes}",
                        CloseCode.MESSAGE_TOO_BIG)
    h = decode_header(data)  # 1007 for malformed headers
    frame_len = frame_bytes = end_sample = 0
    if h.kind == KIND_AUDIO:
        frame_bytes = audio_frame_bytes(h, len(data) - HEADER_SIZE, block_align)
        frame_len = frame_bytes // block_align
        if frame_len > frame_samples:
            raise WireError(f"frame of {frame_len} samples exceeds frame_samples {frame_samples}")
    else:
        end_sample = decode_gap_end(data)
    if h.epoch != epoch:
        raise WireError(f"item epoch {h.epoch}, stream epoch {epoch}", CloseCode.PROTOCOL_ERROR)

    next_seq = journal.next_seq
    next_sample = journal.next_sample
    if h.seq + h.count <= next_seq:
        return False  # wholly below next_seq: a duplicate, re-acked by the caller (§3, §4)
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
        if start + nsamples > MAX_U64:
            raise WireError("sample position overflows 64 bits", CloseCode.PROTOCOL_ERROR)
        payload = memoryview(data)[HEADER_SIZE + skip * frame_bytes:]
        journal.append_audio(next_seq, count, start, nsamples, payload)
        return True

    # GAP. Unless it straddles (then the server's own next_sample is where it starts, §3),
    # it must start where the stream is.
    if skip == 0 and h.sample_pos != next_sample:
        raise WireError(f"gap at sample {h.sample_pos}, expected {next_sample}",
                        CloseCode.PROTOCOL_ERROR)
    if end_sample < next_sample:
        raise WireError(f"gap end_sample {end_sample} before next_sample {next_sample}",
                        CloseCode.PROTOCOL_ERROR)
    journal.append_gap(next_seq, count, next_sample, end_sample)
    return True

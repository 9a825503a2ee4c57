"""The spool's files: their layout, writing stream.json, and reading back what a crashed
process left (`recover`). The writer that fills them is uplink/spool.py; docs/spool.md
describes the format.

``audio.spool`` layout (little-endian)::

    0, 512      two header copies (HEADER): magic, version, slots, frame_bytes, the last ack
                (acked_seq, acked_sample), a write counter, CRC-32; written alternately, so
                a torn header write leaves the other copy valid
    4096 + k*slot_bytes   slot k = seq % slots: RECORD (magic, kind, seq, sample_pos,
                nsamples, CRC-32 over the record header and its payload) + frame_bytes
                of payload room (a gap record has no payload)
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from dataclasses import asdict, dataclass
from enum import Enum
from pathlib import Path

from uplink.audio import AudioFormat, SampleType
from uplink.ring import SLOT_AUDIO, SLOT_GAP, RestoredSpan, SlotCopy

META_NAME = "stream.json"
DATA_NAME = "audio.spool"
LOCK_NAME = "lock"
VERSION = 1
HEADER = struct.Struct("<8sIIIQQQ")  # magic, version, slots, frame_bytes, acked, sample, n
HEADER_MAGIC = b"EPSPOOL1"
HEADER_OFFSETS = (0, 512)
DATA_OFFSET = 4096
RECORD = struct.Struct("<4sB3xQQI")  # magic, kind, seq, sample_pos, nsamples
RECORD_MAGIC = b"EPRC"
RECORD_BYTES = RECORD.size + 4  # + CRC-32


class SpoolError(Exception):
    """The spool cannot be used; the message says why and what to do."""


@dataclass(slots=True)
class SpoolMeta:
    """stream.json: what a later process needs to continue or drain the stream."""

    stream_id: str
    sample_rate: int
    channels: int
    sample_type: str
    frame_samples: int
    slots: int
    created: float
    source: str = ""
    epoch: int | None = None
    credential: str | None = None
    wall_time: float | None = None  # POSIX time of sample 0 (docs/protocol.md §2)
    ended: bool = False
    version: int = VERSION

    @property
    def format(self) -> AudioFormat:
        return AudioFormat(self.sample_rate, self.channels, SampleType(self.sample_type))

    @property
    def frame_bytes(self) -> int:
        return self.frame_samples * self.format.block_align

    @property
    def capacity_seconds(self) -> float:
        return self.slots * self.frame_samples / self.sample_rate


@dataclass(frozen=True, slots=True)
class Recovered:
    """What `recover` found in a spool left by an earlier process."""

    meta: SpoolMeta
    span: RestoredSpan
    torn_tail: int  # records cut at the end (a write the crash interrupted)
    corrupt: int  # records with a bad CRC before the end (turned into gaps)
    lost_front: int  # seqs the spool no longer had (evicted or overwritten): one gap

    @property
    def end_wall_time(self) -> float | None:
        """Wall-clock time just after the last spooled sample (None without wall_time)."""
        if self.meta.wall_time is None:
            return None
        return self.meta.wall_time + self.span.end_sample / self.meta.sample_rate

    @property
    def pending_seconds(self) -> float:
        """Audio (and gaps) not yet acknowledged, in seconds of stream."""
        return (self.span.end_sample - self.span.acked_sample) / self.meta.sample_rate

    def problems(self) -> list[str]:
        out = []
        if self.torn_tail:
            out.append(f"cut a torn record at the end of the spool ({self.torn_tail})")
        if self.corrupt:
            out.append(f"{self.corrupt} corrupt spool records (bad CRC) are sent as gaps")
        return out

# -- files -------------------------------------------------------------------------------


def data_size(slots: int, frame_bytes: int) -> int:
    return DATA_OFFSET + slots * (RECORD_BYTES + frame_bytes)


def read_meta(directory: Path) -> SpoolMeta | None:
    """The spool's stream, or None if the directory holds none."""
    path = directory / META_NAME
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise SpoolError(f"cannot read {path}: {e}") from e
    try:
        if raw.get("version") != VERSION:
            raise SpoolError(f"{path}: spool version {raw.get('version')!r} is not {VERSION}")
        return SpoolMeta(**raw)
    except TypeError as e:
        raise SpoolError(f"{path}: not a spool description ({e})") from e


def write_meta(directory: Path, meta: SpoolMeta, sync: bool) -> None:
    """Replace stream.json atomically (mode 0600: it holds the resume credential)."""
    path = directory / META_NAME
    tmp = directory / (META_NAME + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, json.dumps(asdict(meta), indent=1).encode())
        if sync:
            os.fdatasync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    if sync:
        _sync_dir(directory)


def _sync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def pack_header(slots: int, frame_bytes: int, acked_seq: int, acked_sample: int,
                 counter: int) -> bytes:
    body = HEADER.pack(HEADER_MAGIC, VERSION, slots, frame_bytes, acked_seq, acked_sample,
                       counter)
    return body + struct.pack("<I", zlib.crc32(body))


def _unpack_header(raw: bytes) -> tuple[int, int, int, int, int] | None:
    body, crc = raw[: HEADER.size], raw[HEADER.size : HEADER.size + 4]
    if len(crc) < 4 or struct.unpack("<I", crc)[0] != zlib.crc32(body):
        return None
    magic, version, slots, frame_bytes, acked, sample, counter = HEADER.unpack(body)
    if magic != HEADER_MAGIC or version != VERSION:
        return None
    return slots, frame_bytes, acked, sample, counter


_CRC = struct.Struct("<I")


def record_head(item: SlotCopy) -> bytes:
    """The record header with its CRC (over the header and the payload): written together
    with the payload by one pwritev, without concatenating them."""
    head = RECORD.pack(RECORD_MAGIC, item.kind, item.seq, item.sample_pos, item.nsamples)
    return head + _CRC.pack(zlib.crc32(item.payload, zlib.crc32(head)))



class _Slot(Enum):
    EMPTY = "empty"  # never written (zeros)
    VALID = "valid"
    CORRUPT = "corrupt"  # written, but the CRC or a field does not check out


def _parse_record(raw: memoryview, meta: SpoolMeta) -> tuple[_Slot, SlotCopy | None]:
    if bytes(raw[:4]) != RECORD_MAGIC:
        return (_Slot.EMPTY if not any(raw[:RECORD_BYTES]) else _Slot.CORRUPT), None
    _, kind, seq, pos, nsamples = RECORD.unpack(raw[: RECORD.size])
    (crc,) = struct.unpack("<I", raw[RECORD.size : RECORD_BYTES])
    if kind == SLOT_AUDIO and 0 < nsamples <= meta.frame_samples:
        payload = bytes(raw[RECORD_BYTES : RECORD_BYTES + nsamples * meta.format.block_align])
    elif kind == SLOT_GAP and nsamples > 0:
        payload = b""
    else:
        return _Slot.CORRUPT, None
    if zlib.crc32(payload, zlib.crc32(bytes(raw[: RECORD.size]))) != crc:
        return _Slot.CORRUPT, None
    return _Slot.VALID, SlotCopy(seq, kind, pos, nsamples, payload)


def recover(directory: Path, meta: SpoolMeta) -> Recovered:
    """Read what an earlier process left: everything not acknowledged, as a RestoredSpan.

    Walking down from the newest valid record: a consecutive, sample-contiguous chain is
    kept; a corrupt record inside it becomes gap items covering exactly its samples; the
    chain ends where a slot holds another seq (overwritten: everything older is gone), and
    what lies between the last ack and the chain's start is one gap (an opaque front run,
    uplink/ring.py). A corrupt record at the very end is a torn tail: cut.
    """
    path = directory / DATA_NAME
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        data = b""  # killed between stream.json and the data file: nothing was spooled
    except OSError as e:
        raise SpoolError(f"cannot read {path}: {e}") from e
    slot_bytes = RECORD_BYTES + meta.frame_bytes
    # a truncated file reads as never written past its end (attach() extends it again)
    raw = memoryview(data.ljust(data_size(meta.slots, meta.frame_bytes), b"\0"))
    headers = [_unpack_header(bytes(raw[o : o + HEADER.size + 4])) for o in HEADER_OFFSETS]
    valid = [h for h in headers if h is not None and h[:2] == (meta.slots, meta.frame_bytes)]
    acked_seq, acked_sample = (0, 0)
    if valid:
        _, _, acked_seq, acked_sample, _ = max(valid, key=lambda h: h[4])
    slots: list[tuple[_Slot, SlotCopy | None]] = []
    for k in range(meta.slots):
        start = DATA_OFFSET + k * slot_bytes
        state, item = _parse_record(raw[start : start + slot_bytes], meta)
        if item is not None and item.seq % meta.slots != k:
            state, item = _Slot.CORRUPT, None
        slots.append((state, item))
    newest = max((i.seq for s, i in slots if i is not None and i.seq >= acked_seq), default=None)
    if newest is None:
        return Recovered(meta, RestoredSpan(acked_seq, acked_sample, acked_seq, [], acked_seq,
                                            acked_sample, meta.wall_time), 0, 0, 0)
    torn = 1 if slots[(newest + 1) % meta.slots][0] is _Slot.CORRUPT else 0
    chain: list[SlotCopy] = []  # consecutive seqs, newest first
    holes: list[int] = []  # corrupt seqs just below the chain's oldest item
    corrupt = 0
    seq = newest
    while seq >= acked_seq and newest - seq < meta.slots:
        state, item = slots[seq % meta.slots]
        if state is _Slot.CORRUPT:
            holes.append(seq)
            seq -= 1
            continue
        if item is None or item.seq != seq:
            break  # overwritten by a newer lap, or never written: older seqs are gone
        end = item.sample_pos + item.nsamples
        above = chain[-1].sample_pos if chain else end
        if holes:
            if above - end < len(holes):
                break  # fewer samples than items: cannot be gaps; the front gap takes them
            chain.extend(_gap_items(seq + 1, len(holes), end, above))
            corrupt += len(holes)
            holes = []
        elif end != above:
            break  # not contiguous (cannot happen in a spool this module wrote)
        chain.append(item)
        seq -= 1
    corrupt += len(holes)  # below the chain: inside the front gap
    items = chain[::-1]
    first = items[0].seq
    span = RestoredSpan(acked_seq, acked_sample, first, items, items[-1].seq + 1,
                        items[-1].sample_pos + items[-1].nsamples, meta.wall_time)
    return Recovered(meta, span, torn, corrupt, first - acked_seq)


def _gap_items(first_seq: int, count: int, start: int, end: int) -> list[SlotCopy]:
    """Gap items for `count` corrupt seqs from `first_seq`, covering samples [start, end)
    exactly, each at least one sample (newest first, like the chain)."""
    out = []
    for k in range(count):
        lo = start + (end - start) * k // count
        hi = start + (end - start) * (k + 1) // count
        out.append(SlotCopy(first_seq + k, SLOT_GAP, lo, hi - lo, b""))
    return out[::-1]

"""Write-ahead spool: the ring's unacknowledged audio on disk, so it outlives the process.

A spool is a directory holding one stream (docs/spool.md):

    stream.json   the stream: id, format, frame length, capacity, epoch and resume
                  credential, wall-clock time of sample 0 (mode 0600: it holds a secret)
    audio.spool   a preallocated on-disk mirror of the ring (same slot count), CRC'd records
    lock          flock()ed while a process uses the spool

``audio.spool`` layout (little-endian)::

    0, 512      two header copies (HEADER): magic, version, slots, frame_bytes, the last ack
                (acked_seq, acked_sample), a write counter, CRC-32; written alternately, so
                a torn header write leaves the other copy valid
    4096 + k*slot_bytes   slot k = seq % slots: RECORD (magic, kind, seq, sample_pos,
                nsamples, CRC-32 over the record header and its payload) + frame_bytes
                of payload room (a gap record has no payload)

Disk: ``4096 + slots * (32 + frame_bytes)`` bytes, allocated up front (``posix_fallocate``),
so a spool that opened can never run out of space later; it is the ring's memory size plus
32 bytes a frame (16 kHz mono int16: 32 KB of audio a second plus 1.6 KB; 48 kHz stereo
float32: 384 KB plus 1.6 KB).

The writer thread (never the audio callback) copies each item out of the ring and writes
it; only then does the ring let the uplink send it (``RingBuffer.enable_write_ahead``). So
whatever the server acknowledged is also in the spool, and a restarted capture replays from
wherever the server's welcome says (docs/protocol.md §2, §8). About once a second the header
records the ring's latest ack (records below it are not needed; an older one only means a
restart keeps and replays a little more, which the server's welcome trims). Records
that are lost anyway (overwritten by drop-oldest, or torn or corrupt) become an explicit gap,
never a splice (``recover``).

Durability: a process crash loses nothing that was written (the page cache outlives the
process). Power loss loses what was not yet synced: ``SyncPolicy`` — never, every
`interval` seconds (at most that much audio), or always (``fdatasync`` before the uplink may
send the record).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import struct
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from enum import Enum
from pathlib import Path

from uplink.audio import AudioFormat, SampleType
from uplink.ring import SLOT_AUDIO, SLOT_GAP, RestoredSpan, RingBuffer, SlotCopy

log = logging.getLogger("uplink.spool")

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
LOW_DISK_BYTES = 256 * 1024 * 1024  # free space below this after opening is reported
WRITER_IDLE_WAKE = 0.25  # s: the writer also wakes this often to record acks
HEADER_INTERVAL = 1.0  # s: the header's ack is rewritten at most this often


class SpoolError(Exception):
    """The spool cannot be used; the message says why and what to do."""


class SyncMode(Enum):
    NONE = "none"
    INTERVAL = "interval"
    ALWAYS = "always"


@dataclass(frozen=True, slots=True)
class SyncPolicy:
    """When the writer makes the spool survive a power loss (a crash needs no sync)."""

    mode: SyncMode = SyncMode.INTERVAL
    interval: float = 1.0

    @classmethod
    def parse(cls, text: str) -> SyncPolicy:
        """`none`, `always`, `interval` (1 s) or a number of seconds."""
        if text in (SyncMode.NONE.value, SyncMode.ALWAYS.value):
            return cls(SyncMode(text))
        if text == SyncMode.INTERVAL.value:
            return cls()
        try:
            seconds = float(text)
        except ValueError as e:
            raise ValueError(f"spool sync {text!r}: expected none, always, interval or "
                             "seconds") from e
        if not seconds > 0:
            raise ValueError(f"spool sync interval must be > 0 s (got {text})")
        return cls(SyncMode.INTERVAL, seconds)

    def describe(self) -> str:
        if self.mode is SyncMode.INTERVAL:
            return f"synced every {self.interval:g} s"
        return "synced before sending" if self.mode is SyncMode.ALWAYS else "not synced"


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


def _pack_header(slots: int, frame_bytes: int, acked_seq: int, acked_sample: int,
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


def _record_head(item: SlotCopy) -> bytes:
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


# -- the spool ---------------------------------------------------------------------------


@dataclass(slots=True)
class SpoolStats:
    records_written: int = 0
    bytes_written: int = 0
    syncs: int = 0
    last_sync: float | None = None
    errors: list[str] = field(default_factory=list)


class Spool:
    """An open spool directory: locked, its stream (if any) recovered.

    Lifecycle: `open` → (`recovered` tells the caller what an earlier process left) →
    `attach(ring, ...)` starts the writer → `finish()` once the server ended the stream
    (the files are removed) or `close()` to stop and keep them.
    """

    def __init__(self, directory: Path, sync: SyncPolicy,
                 on_problem: Callable[[str], None] | None = None) -> None:
        self.directory = directory
        self.sync = sync
        self.on_problem = on_problem  # called from the writer thread: keep it short
        self.meta: SpoolMeta | None = None
        self.recovered: Recovered | None = None
        self.error: str | None = None
        self.stats = SpoolStats()
        self._lock_fd: int | None = None
        self._fd: int | None = None
        self._ring: RingBuffer | None = None
        self._thread: threading.Thread | None = None
        # a binary semaphore, cheaper on the audio path than threading.Event (no Python-level
        # Condition): the producer releases it (once per push at most: already released is
        # fine), the writer acquires it; a wake-up is never lost, only merged
        self._signal = threading.Lock()
        self._signal.acquire()
        self._stop = False
        self._next_seq = 0
        self._header_counter = 0
        self._header_acked: tuple[int, int] | None = None
        self._header_at = -HEADER_INTERVAL
        #: the writer passes at most once per this many seconds (0: on every push). Each
        #: pass costs a thread wake-up; batching N frames per pass saves CPU but delays
        #: sending by up to this much (write-ahead: nothing is sent before it is written)
        self.batch_seconds = 0.0
        self._last_pass = 0.0
        self._meta_dirty = False
        self._meta_lock = threading.Lock()

    # -- opening ---------------------------------------------------------------------------

    @classmethod
    def open(cls, directory: str | os.PathLike[str], sync: SyncPolicy | None = None,
             on_problem: Callable[[str], None] | None = None) -> Spool:
        path = Path(directory)
        try:
            path.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as e:
            raise SpoolError(f"cannot create spool directory {path}: {e}") from e
        spool = cls(path, sync or SyncPolicy(), on_problem)
        spool._take_lock()
        try:
            meta = read_meta(path)
            if meta is not None and meta.ended:
                spool._remove_files()  # a stream that was ended leaves nothing to do
                meta = None
            if meta is not None:
                spool.meta = meta
                spool.recovered = recover(path, meta)
        except BaseException:
            spool.close()
            raise
        return spool

    def _take_lock(self) -> None:
        lock_path = self.directory / LOCK_NAME
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as e:
            os.close(fd)
            raise SpoolError(f"spool {self.directory} is in use by another process "
                             "(one capture per spool directory)") from e
        self._lock_fd = fd

    def create(self, stream_id: str, fmt: AudioFormat, frame_samples: int, slots: int,
               source: str = "") -> None:
        """Start a fresh spool for a new stream (preallocated: no ENOSPC later)."""
        if self.meta is not None:
            raise SpoolError(f"spool {self.directory} still holds stream {self.meta.stream_id}")
        meta = SpoolMeta(stream_id, fmt.sample_rate, fmt.channels, fmt.sample_type.value,
                         frame_samples, slots, time.time(), source)
        size = data_size(slots, meta.frame_bytes)
        path = self.directory / DATA_NAME
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.posix_fallocate(fd, 0, size)
            os.pwrite(fd, _pack_header(slots, meta.frame_bytes, 0, 0, 0), HEADER_OFFSETS[0])
            write_meta(self.directory, meta, sync=self.sync.mode is not SyncMode.NONE)
        except OSError as e:
            os.close(fd)
            with contextlib.suppress(OSError):
                path.unlink()
            with contextlib.suppress(OSError):
                (self.directory / META_NAME).unlink()
            free = _free_bytes(self.directory)
            raise SpoolError(f"cannot allocate the spool ({size / 1e6:.1f} MB) in "
                             f"{self.directory}: {e.strerror or e}"
                             + (f" ({free / 1e6:.1f} MB free)" if free is not None else "")
                             ) from e
        self._fd = fd
        self.meta = meta

    def low_disk_warning(self) -> str | None:
        free = _free_bytes(self.directory)
        if free is not None and free < LOW_DISK_BYTES:
            return (f"low free disk space: {free / 1e6:.0f} MB left where the spool is "
                    f"({self.directory})")
        return None

    # -- running ---------------------------------------------------------------------------

    def attach(self, ring: RingBuffer) -> None:
        """Restore what was recovered into `ring` (a new one with the spool's slot count),
        then spool everything pushed into it from now on."""
        meta = self.meta
        if meta is None:
            raise SpoolError("attach() before create() or open() of a stream")
        if ring.slots != meta.slots or ring.frame_samples != meta.frame_samples:
            raise SpoolError(f"the ring ({ring.slots} x {ring.frame_samples}) does not match "
                             f"the spool ({meta.slots} x {meta.frame_samples})")
        if self._fd is None:
            path = self.directory / DATA_NAME
            try:
                self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
                # a truncated spool gets its full size back before anything is written
                os.posix_fallocate(self._fd, 0, data_size(meta.slots, meta.frame_bytes))
            except OSError as e:
                raise SpoolError(f"cannot reopen {path}: {e.strerror or e}") from e
        ring.enable_write_ahead(self.wake)
        if self.recovered is not None:
            ring.restore(self.recovered.span)
            self._header_acked = (self.recovered.span.acked_seq,
                                  self.recovered.span.acked_sample)
        self._next_seq = ring.tail_seq
        self._ring = ring
        self._thread = threading.Thread(target=self._writer, name="spool-writer", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        """Something was pushed (or the ring closed): the writer has work. Any thread."""
        with contextlib.suppress(RuntimeError):  # already released: a wake-up is pending
            self._signal.release()

    def record_credential(self, epoch: int, credential: str) -> None:
        """The server created (or confirmed) the stream: keep what resumes it. Called on the
        event loop before any audio is sent on that connection, synchronously, so a crash
        after the first ack can always resume."""
        meta = self.meta
        if meta is None or self.error is not None:
            return
        if (meta.epoch, meta.credential) == (epoch, credential):
            return
        with self._meta_lock:
            meta.epoch, meta.credential = epoch, credential
            try:
                write_meta(self.directory, meta, sync=self.sync.mode is not SyncMode.NONE)
            except OSError as e:
                self._fail(f"cannot write {META_NAME}: {e}")

    def _writer(self) -> None:
        ring = self._ring
        assert ring is not None and self._fd is not None
        last_sync = time.monotonic()
        dirty = False
        while True:
            self._signal.acquire(timeout=WRITER_IDLE_WAKE)
            if self.batch_seconds > 0 and not self._stop:
                # trade latency for CPU: one pass (and one uplink wake-up) per batch
                time.sleep(max(0.0, self._last_pass + self.batch_seconds - time.monotonic()))
            self._last_pass = time.monotonic()
            stop = self._stop
            try:
                wrote = self._write_pending(ring, final=stop)
                dirty = dirty or wrote
                now = time.monotonic()
                policy = self.sync
                if dirty and (policy.mode is SyncMode.ALWAYS or (
                        policy.mode is SyncMode.INTERVAL and now - last_sync >= policy.interval)):
                    os.fdatasync(self._fd)
                    self.stats.syncs += 1
                    self.stats.last_sync = time.time()
                    last_sync, dirty = now, False
                ring.mark_spooled(self._next_seq)
            except OSError as e:
                self._fail(f"spool write failed: {e}")
                return
            if stop:
                return

    def _write_pending(self, ring: RingBuffer, final: bool = False) -> bool:
        fd = self._fd
        meta = self.meta
        assert fd is not None and meta is not None
        wrote = False
        if meta.wall_time is None and ring.wall_time is not None:
            with self._meta_lock:
                meta.wall_time = ring.wall_time
                write_meta(self.directory, meta, sync=False)
        acked = ring.acked_point
        now = time.monotonic()
        if acked != self._header_acked and (final or now - self._header_at >= HEADER_INTERVAL):
            # the ack says what a restart need not replay; a stale one is safe (recover()
            # keeps more, and the server's welcome trims it), so it is written at most once
            # a HEADER_INTERVAL: a 64-byte write per frame costs more than the frame's own
            self._header_at = now
            self._header_counter += 1
            offset = HEADER_OFFSETS[self._header_counter % 2]
            os.pwrite(fd, _pack_header(meta.slots, meta.frame_bytes, *acked,
                                       self._header_counter), offset)
            self._header_acked = acked
            wrote = True
        tail = ring.tail_seq
        slot_bytes = RECORD_BYTES + meta.frame_bytes
        buffers: list[bytes] = []  # header, payload, padding ... for consecutive slots
        first_slot = next_slot = -1
        for seq in range(self._next_seq, tail):
            item = ring.copy_item(seq)
            if item is None:
                continue  # acked or evicted before it could be written
            slot = seq % meta.slots
            if slot != next_slot or len(buffers) >= 3 * 256:
                self._flush(fd, buffers, first_slot, slot_bytes)
                buffers, first_slot = [], slot
            elif buffers and (pad := slot_bytes - RECORD_BYTES - len(buffers[-1])):
                # a short record leaves room in its slot: pad so the next lands in its own
                buffers.append(bytes(pad))
            buffers += [_record_head(item), item.payload]
            next_slot = slot + 1
        self._flush(fd, buffers, first_slot, slot_bytes)
        if tail > self._next_seq:
            wrote = True
            self.stats.records_written += tail - self._next_seq
        self._next_seq = tail
        return wrote

    def _flush(self, fd: int, buffers: list[bytes], slot: int, slot_bytes: int) -> None:
        if buffers:
            self.stats.bytes_written += os.pwritev(fd, buffers, DATA_OFFSET + slot * slot_bytes)

    def _fail(self, message: str) -> None:
        """The spool cannot continue: stream on from memory only, say so once."""
        if self.error is not None:
            return
        self.error = message
        self.stats.errors.append(message)
        ring = self._ring
        if ring is not None:
            ring.disable_write_ahead()
        log.warning("%s: audio is kept in memory only from now on", message)
        hook = self.on_problem
        if hook is not None:
            try:
                hook(f"{message}; the spool is off, audio is kept in memory only")
            except Exception:
                log.exception("spool problem hook failed")

    # -- ending ----------------------------------------------------------------------------

    def stop(self, timeout: float = 5.0) -> None:
        """Write what is pending and stop the writer (the files stay)."""
        thread = self._thread
        if thread is not None:
            self._stop = True
            self.wake()
            thread.join(timeout)
            self._thread = None

    def finish(self) -> None:
        """The server ended the stream: nothing in the spool is needed any more."""
        self.stop()
        if self.meta is not None:
            with contextlib.suppress(OSError), self._meta_lock:
                self.meta = replace(self.meta, ended=True)
                write_meta(self.directory, self.meta, sync=False)
            self._remove_files()
        # nothing is left to guard: a process that opened the old lock file first still
        # waits on our flock until close(); one that comes later creates a new one
        with contextlib.suppress(OSError):
            (self.directory / LOCK_NAME).unlink()
        self.close()

    def close(self) -> None:
        self.stop()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def _remove_files(self) -> None:
        for name in (DATA_NAME, META_NAME):
            with contextlib.suppress(FileNotFoundError):
                (self.directory / name).unlink()


def _free_bytes(directory: Path) -> int | None:
    try:
        st = os.statvfs(directory)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize

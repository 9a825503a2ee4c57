"""Write-ahead spool: the ring's unacknowledged audio on disk, so it outlives the process.

A spool is a directory holding one stream (docs/spool.md):

    stream.json   the stream: id, format, frame length, capacity, epoch and resume
                  credential, wall-clock time of sample 0 (mode 0600: it holds a secret)
    audio.spool   a preallocated on-disk mirror of the ring (same slot count), CRC'd records
    lock          flock()ed while a process uses the spool

``audio.spool``'s layout and the reading back after a crash: uplink/spoolfile.py.

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
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from enum import Enum
from pathlib import Path

from uplink.audio import AudioFormat
from uplink.ring import RingBuffer
from uplink.spoolfile import (
    DATA_NAME,
    DATA_OFFSET,
    HEADER_OFFSETS,
    LOCK_NAME,
    META_NAME,
    RECORD_BYTES,
    Recovered,
    SpoolError,
    SpoolMeta,
    data_size,
    pack_header,
    read_meta,
    record_head,
    recover,
    write_meta,
)

log = logging.getLogger("uplink.spool")

LOW_DISK_BYTES = 256 * 1024 * 1024  # free space below this after opening is reported
WRITER_IDLE_WAKE = 0.25  # s: the writer also wakes this often to record acks
HEADER_INTERVAL = 1.0  # s: the header's ack is rewritten at most this often


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
            os.pwrite(fd, pack_header(slots, meta.frame_bytes, 0, 0, 0), HEADER_OFFSETS[0])
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
        now = time.monotonic()
        acked = None
        if final or now - self._header_at >= HEADER_INTERVAL:
            # the ack says what a restart need not replay; a stale one is safe (recover()
            # keeps more, and the server's welcome trims it), so it is written at most once
            # a HEADER_INTERVAL: a 64-byte write per frame costs more than the frame's own
            self._header_at = now
            acked = ring.acked_point
        if acked is not None and acked != self._header_acked:
            self._header_counter += 1
            offset = HEADER_OFFSETS[self._header_counter % 2]
            os.pwrite(fd, pack_header(meta.slots, meta.frame_bytes, *acked,
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
            buffers += [record_head(item), item.payload]
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


__all__ = ["DATA_NAME", "DATA_OFFSET", "META_NAME", "RECORD_BYTES", "Recovered", "Spool",
           "SpoolError", "SpoolMeta", "SyncMode", "SyncPolicy", "data_size", "read_meta",
           "recover"]

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

The writer (never the audio callback) copies each item out of the ring and writes it; only
then does the ring let the uplink send it (``RingBuffer.enable_write_ahead``). So whatever
the server acknowledged is also in the spool, and a restarted capture replays from wherever
the server's welcome says (docs/protocol.md §2, §8).

Who writes: a spool attached on a running event loop (the uplink's: AsyncUplink, the
capture) writes each push on that loop, just before the uplink reads it. The loop wakes for
every frame anyway to send it, so the spool adds the write itself (copy, CRC, one
page-cache ``pwritev``) and not a thread wake-up per frame, which on a small VM costs about
as much again (docs/spool.md "Cost"). The ``spool-writer`` thread stays for what may block
or must not depend on the loop: ``fdatasync`` (`SyncPolicy`), a catch-up pass every
``WRITER_IDLE_WAKE`` (audio reaches the disk even while the loop is busy or gone), and the
final write on ``stop``. Without a running loop, once it is closed, or with ``--spool-sync
always`` (the sync must precede sending and must not block the loop), the thread writes
every push. Either way a pass writes everything pending in one ``pwritev`` — no timer, no
batching that would delay sending. About once a second the header
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

import asyncio
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
WRITER_IDLE_WAKE = 0.25  # s: the writer thread's catch-up pass (acks, audio the loop left)
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
        # one writer at a time (the loop or the thread); also guards _fd against close()
        self._write_lock = threading.Lock()
        self._next_seq = 0
        self._slots = self._slot_bytes = 0  # the meta's, for the per-frame path (attach)
        self._unsynced = False  # written since the last fdatasync
        self._header_counter = 0
        self._header_acked: tuple[int, int] | None = None
        self._header_at = -HEADER_INTERVAL
        # the uplink's event loop, if the pushes are written there (module docstring)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_write_pending = False  # set by the producer, cleared on the loop
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
        then spool everything pushed into it from now on.

        Called on a running event loop (the one the uplink runs on), the pushes are written
        on that loop; otherwise by the writer thread (module docstring)."""
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
        self._slots, self._slot_bytes = meta.slots, RECORD_BYTES + meta.frame_bytes
        self._ring = ring
        if self.sync.mode is not SyncMode.ALWAYS:
            with contextlib.suppress(RuntimeError):  # no running loop: the thread writes
                self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._writer, name="spool-writer", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        """Something was pushed (or the ring closed): the writer has work. Any thread."""
        loop = self._loop
        if loop is not None:
            if self._loop_write_pending:
                return  # a write is already queued on the loop: it takes this push too
            self._loop_write_pending = True
            try:
                loop.call_soon_threadsafe(self._write_on_loop)
                return
            except RuntimeError:  # the loop is closed: the thread writes from now on
                self._loop = None
        self._wake_thread()

    def _wake_thread(self) -> None:
        with contextlib.suppress(RuntimeError):  # already released: a wake-up is pending
            self._signal.release()

    def _write_on_loop(self) -> None:
        # cleared before reading the ring's tail: a push after this queues another write
        self._loop_write_pending = False
        self._write_and_release(final=False)

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
        policy = self.sync
        idle_wake = WRITER_IDLE_WAKE
        if policy.mode is SyncMode.INTERVAL:
            idle_wake = min(idle_wake, policy.interval)
        last_sync = time.monotonic()
        while True:
            self._signal.acquire(timeout=idle_wake)
            stop = self._stop
            if not self._write_and_release(final=stop):
                return
            now = time.monotonic()
            if (policy.mode is SyncMode.INTERVAL and self._unsynced
                    and now - last_sync >= policy.interval):
                # outside the write lock: a sync can take milliseconds, the loop's writes
                # must not wait for it. Cleared first: a write racing the sync sets it again
                self._unsynced = False
                last_sync = now
                if not self._sync():
                    return
            if stop:
                return

    def _write_and_release(self, final: bool) -> bool:
        """Write what is pending, then let the uplink send it (write-ahead). With
        SyncMode.ALWAYS (the thread only) it is synced first. False once the spool is off."""
        with self._write_lock:
            fd, ring = self._fd, self._ring
            if fd is None or ring is None or self.error is not None:
                return False
            try:
                if self._write_pending(ring, final):
                    self._unsynced = True
                if self.sync.mode is SyncMode.ALWAYS and self._unsynced:
                    self._unsynced = False
                    os.fdatasync(fd)
                    self._count_sync()
            except OSError as e:
                self._fail(f"spool write failed: {e}")
                return False
            ring.mark_spooled(self._next_seq)
        return True

    def _sync(self) -> bool:
        fd = self._fd
        if fd is None:
            return False
        try:
            os.fdatasync(fd)
        except OSError as e:
            with self._write_lock:
                self._fail(f"spool sync failed: {e}")
            return False
        self._count_sync()
        return True

    def _count_sync(self) -> None:
        self.stats.syncs += 1
        self.stats.last_sync = time.time()

    def _write_pending(self, ring: RingBuffer, final: bool = False) -> bool:
        """Write the records the ring got since the last pass (and the header when due).
        Runs once per frame: what it needs from the meta is cached by attach()."""
        fd = self._fd
        meta = self.meta
        assert fd is not None and meta is not None
        wrote = False
        if meta.wall_time is None and ring.wall_time is not None:
            with self._meta_lock:
                meta.wall_time = ring.wall_time
                write_meta(self.directory, meta, sync=False)
        now = time.monotonic()
        if final or now - self._header_at >= HEADER_INTERVAL:
            # the ack says what a restart need not replay; a stale one is safe (recover()
            # keeps more, and the server's welcome trims it), so it is written at most once
            # a HEADER_INTERVAL: a 64-byte write per frame costs more than the frame's own
            self._header_at = now
            acked = ring.acked_point
            if acked != self._header_acked:
                self._header_counter += 1
                offset = HEADER_OFFSETS[self._header_counter % 2]
                os.pwrite(fd, pack_header(meta.slots, meta.frame_bytes, *acked,
                                           self._header_counter), offset)
                self._header_acked = acked
                wrote = True
        tail = ring.tail_seq
        if tail > self._next_seq:
            self._write_records(ring, fd, tail)
            wrote = True
        return wrote

    def _write_records(self, ring: RingBuffer, fd: int, tail: int) -> None:
        slots, slot_bytes = self._slots, self._slot_bytes
        buffers: list[bytes] = []  # header, payload, padding ... for consecutive slots
        first_slot = next_slot = -1
        for seq in range(self._next_seq, tail):
            item = ring.copy_item(seq)
            if item is None:
                continue  # acked or evicted before it could be written
            slot = seq % slots
            if slot != next_slot or len(buffers) >= 3 * 256:
                self._flush(fd, buffers, first_slot)
                buffers, first_slot = [], slot
            elif pad := slot_bytes - RECORD_BYTES - len(buffers[-1]):
                # a short record leaves room in its slot: pad so the next lands in its own
                buffers.append(bytes(pad))
            buffers += [record_head(item), item.payload]
            next_slot = slot + 1
        self._flush(fd, buffers, first_slot)
        self.stats.records_written += tail - self._next_seq
        self._next_seq = tail

    def _flush(self, fd: int, buffers: list[bytes], slot: int) -> None:
        if buffers:
            self.stats.bytes_written += os.pwritev(fd, buffers,
                                                   DATA_OFFSET + slot * self._slot_bytes)

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
        self._loop = None  # from now on the thread takes any push (until close)
        if thread is not None:
            self._stop = True
            self._wake_thread()
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
        with self._write_lock:  # a write queued on the loop finds no fd, never a reused one
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

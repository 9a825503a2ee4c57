"""Cross-stream group commit: one syncfs(2) makes every dirty journal on a file system durable
(docs/storage.md "Group commit", docs/protocol.md §4).

Per-file fsync costs one disk flush per stream; with hundreds of live streams the flushes,
not Python, were the server's limit (docs/performance.md). syncfs flushes the whole file
system once for all of them.

Error reporting is the subtle part. Since Linux 5.8 syncfs reports a writeback error on the
file system once per open descriptor, counted from when that descriptor was opened; it does
not say which file failed. So:

- each file system gets one long-lived descriptor (`Device`), opened before the first journal
  on it and closed after the last one, so no error between a journal's open and its sync
  goes unseen;
- when syncfs fails, every journal in the batch is fsynced on its own (fsync reports its own
  file's errors), and the device's error generation goes up: a journal that was not in the
  batch gets its own fsync at its next sync too, because the error syncfs consumed may have
  been on its pages. Only journals whose own fsync then succeeds are durable.
"""

from __future__ import annotations

import ctypes
import logging
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .journal import Journal

log = logging.getLogger(__name__)

_libc = ctypes.CDLL(None, use_errno=True)
SYNCFS_AVAILABLE = hasattr(_libc, "syncfs")


class Device:
    """One file system holding journals: a descriptor for syncfs and its error generation."""

    def __init__(self, dev: int, fd: int) -> None:
        self.dev = dev
        self.fd = fd
        self.refs = 0
        self.error_generation = 0  # bumped by each failed syncfs

    def syncfs(self) -> None:
        if _libc.syncfs(self.fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"syncfs: {os.strerror(err)}")


class Devices:
    """Reference-counted `Device` per st_dev. Thread-safe (journals open in worker threads)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_dev: dict[int, Device] = {}

    def acquire(self, directory: Path) -> Device:
        """The device of `directory`; call before opening a journal in it."""
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        dev = os.fstat(fd).st_dev
        with self._lock:
            device = self._by_dev.get(dev)
            if device is None:
                device = self._by_dev[dev] = Device(dev, fd)
                fd = -1
            device.refs += 1
        if fd >= 0:
            os.close(fd)
        return device

    def release(self, device: Device) -> None:
        with self._lock:
            device.refs -= 1
            if device.refs > 0 or self._by_dev.get(device.dev) is not device:
                return
            del self._by_dev[device.dev]
        os.close(device.fd)  # nothing holds the file system busy (unmount works)

    def __len__(self) -> int:
        return len(self._by_dev)


DEVICES = Devices()


@dataclass(slots=True)
class SyncOutcome:
    """One journal's part in `sync_many`: durable if `error` is None; seconds it took."""

    seconds: float
    error: OSError | None = None


def sync_many(journals: Sequence[Journal]) -> list[SyncOutcome]:
    """Make every journal durable; one outcome per journal, in order. Runs in a worker thread.

    Only one `sync_many` may run at a time (the committer's single thread): the error
    generation bookkeeping below assumes it.
    """
    outcomes: list[SyncOutcome | None] = [None] * len(journals)
    groups: dict[Device, list[int]] = {}
    for i, j in enumerate(journals):
        if j.broken or not j.fsync_enabled:
            outcomes[i] = _fsync_one(j)  # raises JournalError / returns 0.0 as Journal.sync does
        elif j.error_generation != j.device.error_generation:
            outcomes[i] = _fsync_one(j)  # an earlier syncfs error may have been on its pages
        else:
            groups.setdefault(j.device, []).append(i)
    for device, members in groups.items():
        start = time.perf_counter()
        try:
            journals[members[0]]._syncfs()
        except OSError as e:
            device.error_generation += 1
            log.warning("syncfs failed (%s); fsyncing %d journals one by one", e, len(members))
            for i in members:
                outcomes[i] = _fsync_one(journals[i])
            continue
        seconds = time.perf_counter() - start
        for i in members:
            outcomes[i] = SyncOutcome(seconds)
    return [o if o is not None else SyncOutcome(0.0) for o in outcomes]


def _fsync_one(journal: Journal) -> SyncOutcome:
    generation = journal.device.error_generation
    try:
        seconds = journal.sync()
    except OSError as e:
        return SyncOutcome(0.0, e)
    journal.error_generation = generation
    return SyncOutcome(seconds)

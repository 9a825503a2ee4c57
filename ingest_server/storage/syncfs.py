"""File systems under the journals: one syncfs(2) descriptor and error generation each.

A leaf module (it imports nothing of the server): journals acquire their `Device` here when
they open, and the committer (ingest_server/commit.py, which explains group commit) calls
`Device.syncfs` through them. Per-file fsync costs one disk flush per stream; syncfs
flushes the whole file system once for all of them (docs/performance.md "Capacity").

syncfs is trusted only where it reports errors: Linux 5.8 made it report writeback errors
(once per open descriptor, counted from that descriptor's open) and 5.17 made it return the
file system's own `sync_fs` errors (the ext4/XFS journal commit). Before 5.17, and on file
systems not in SYNCFS_FILESYSTEMS (FUSE, for one, may answer syncfs without syncing), each
journal gets its own fsync instead. syncfs does not say which file failed, so:

- each file system gets one long-lived descriptor (`Device`), opened before the first journal
  on it and closed after the last one, so no error after a journal was opened goes unseen;
- when syncfs fails (commit.sync_many), every journal in the batch is fsynced on its own
  (fsync reports its own file's errors), and the device's error generation goes up: a
  journal that was not in the batch gets its own fsync at its next sync too, because the
  error syncfs consumed may have been on its pages. Only journals whose own fsync then succeeds are durable;
- a per-device lock makes syncfs, the generation bump and those fsyncs one step, even with
  several committers in one process (only one of them would see a given error).
"""

from __future__ import annotations

import ctypes
import logging
import os
import platform
import re
import threading
from pathlib import Path

log = logging.getLogger(__name__)

_libc = ctypes.CDLL(None, use_errno=True)
# File systems whose syncfs flushes data and metadata and reports errors (tmpfs: nothing to
# flush, kept so tests and RAM-backed data dirs take the same path).
SYNCFS_FILESYSTEMS = frozenset({"ext4", "xfs", "btrfs", "tmpfs"})
MIN_KERNEL = (5, 17)


def kernel_version(release: str | None = None) -> tuple[int, int]:
    m = re.match(r"(\d+)\.(\d+)", release if release is not None else platform.release())
    return (int(m.group(1)), int(m.group(2))) if m else (0, 0)


def syncfs_trustworthy() -> bool:
    """Linux >= 5.17 with syncfs in libc (see the module docstring)."""
    return (platform.system() == "Linux" and hasattr(_libc, "syncfs")
            and kernel_version() >= MIN_KERNEL)


def filesystem_type(dev: int) -> str:
    """The type of the mounted file system with device number `dev` ('' if not found)."""
    want = f"{os.major(dev)}:{os.minor(dev)}"
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                fields = line.split()
                if len(fields) > 4 and fields[2] == want and " - " in line:
                    return line.split(" - ", 1)[1].split()[0]
    except OSError:
        pass
    return ""


class Device:
    """One file system holding journals: a descriptor for syncfs and its error generation."""

    def __init__(self, dev: int, fd: int, fstype: str) -> None:
        self.dev = dev
        self.fd = fd
        self.fstype = fstype
        self.syncfs_capable = fstype in SYNCFS_FILESYSTEMS
        self.refs = 0
        self.error_generation = 0  # bumped by each failed syncfs
        self.lock = threading.Lock()  # syncfs + generation bump + fallback fsyncs: one step

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
                device = self._by_dev[dev] = Device(dev, fd, filesystem_type(dev))
                fd = -1
                if not device.syncfs_capable:
                    log.info("%s is on %s: journals there are fsynced one by one",
                             directory, device.fstype or "an unknown file system")
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

"""The data dir belongs to one server at a time: an exclusive OS lock on DATA/.lock.

Two servers on one data dir destroy acknowledged audio: the second "recovers" the first's
live streams, expires them, writes a WAV of what it saw and deletes the journals the first
is still appending to (docs/operations.md "One server per data dir"). So the server takes
this lock before anything reads or writes a stream, and holds it for its whole life.

`flock(2)` rather than a pid file: the kernel drops the lock when the process dies, however
it dies, so a SIGKILLed server never blocks its successor and there is nothing stale to clean
up. The file is never deleted (unlinking a lock file races with a process that has it open);
it holds the holder's pid, only for the error message. The descriptor is close-on-exec, so a
child process never inherits the lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import weakref
from pathlib import Path

from .store import StorageError

LOCK_NAME = ".lock"
_PID_READ_LIMIT = 32


class DataDirBusy(StorageError):
    """Another process holds the data dir; the message names its pid."""


class DataDirLock:
    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir)
        self.path = self.data_dir / LOCK_NAME
        self._fd: int | None = None
        self._finalizer: weakref.finalize[..., DataDirLock] | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> None:
        """Take the lock or raise DataDirBusy (held elsewhere) / StorageError (unusable dir)."""
        try:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as e:
            raise StorageError(f"data dir {self.data_dir} is not writable: cannot create "
                               f"its lock file: {e.strerror or e}") from e
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as e:
            holder = _read_pid(fd)
            os.close(fd)
            raise DataDirBusy(
                f"data dir {self.data_dir} is in use by another echopanel-ingest "
                f"(pid {holder}; lock file {self.path}): stop that server or use another "
                "--data-dir") from e
        except OSError as e:
            os.close(fd)
            raise StorageError(f"cannot lock {self.path}: {e.strerror or e}") from e
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError:
            pass  # the pid is only for the message a second server prints; the lock holds
        self._fd = fd
        # A service built but never started or stopped (tests) still lets the lock go when
        # it is garbage-collected; normally release() runs at shutdown.
        self._finalizer = weakref.finalize(self, os.close, fd)

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)  # no stale pid for the next reader
        os.close(fd)  # closing the last descriptor drops the flock


def _read_pid(fd: int) -> str:
    try:
        text = os.pread(fd, _PID_READ_LIMIT, 0).decode("ascii", "replace").strip()
    except OSError:
        return "unknown"
    return text if text.isdigit() else "unknown"

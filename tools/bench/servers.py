"""The two servers under test, each a subprocess on 127.0.0.1 with its own data dir.

- ours: the real ingest server (`tools.ingest_process.IngestServer`, i.e. `python -m
  ingest_server`), default configuration (durable acks, group commit across streams with
  one syncfs per batch);
- ours with `--sync-mode fsync` ("ours-fsync"): one fsync per stream, the earlier design,
  to show what the cross-stream group commit changed;
- ours with `--no-fsync` ("ours-nofsync"): a diagnostic that separates the cost of making
  audio durable from the rest of the server; its acks do not mean durable;
- the baseline receiver (`tools.bench.baseline`), with a per-connection fsync
  ("baseline", the issue's baseline) or with one syncfs for all streams ("baseline-global",
  the same durability strategy as ours).

Both expose `port`, `pid`, `start()`, `stop()` and work as context managers, so a benchmark
can run the same steps against either.
"""

from __future__ import annotations

import os
import queue
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from types import TracebackType
from typing import Literal, Protocol

from tools.bench.baseline import LISTENING_PREFIX as BASELINE_PREFIX
from tools.ingest_process import REPO_ROOT, IngestServer

Target = Literal["ours", "ours-fsync", "ours-nofsync", "baseline", "baseline-global"]


class BenchServer(Protocol):
    port: int

    @property
    def pid(self) -> int: ...

    def start(self) -> BenchServer: ...

    def stop(self, timeout: float = 20.0) -> int: ...

    def kill(self) -> None: ...


class OursServer(IngestServer):
    """IngestServer plus the pid (for /proc sampling)."""

    @property
    def pid(self) -> int:
        assert self.proc is not None, "server not started"
        return self.proc.pid

    def start(self) -> OursServer:
        super().start()
        return self

    def __enter__(self) -> OursServer:
        return self.start()


class BaselineServer:
    """`python -m tools.bench.baseline` as a subprocess; waits for its listening line."""

    def __init__(self, data_dir: Path, commit: str = "stream", startup_timeout: float = 20.0) -> None:
        self.data_dir = Path(data_dir)
        self.commit = commit
        self.port = 0
        self.startup_timeout = startup_timeout
        self.log_path = self.data_dir.parent / f"{self.data_dir.name}-baseline.log"
        self.proc: subprocess.Popen[str] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None, "server not started"
        return self.proc.pid

    def start(self) -> BaselineServer:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "tools.bench.baseline", "--port", str(self.port),
               "--data-dir", str(self.data_dir), "--commit", self.commit]
        with open(self.log_path, "a") as log:
            self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, text=True,
                                         cwd=REPO_ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        lines: queue.Queue[str | None] = queue.Queue()

        def pump(proc: subprocess.Popen[str]) -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                lines.put(line.rstrip("\n"))
            lines.put(None)

        threading.Thread(target=pump, args=(self.proc,), daemon=True).start()
        try:
            line = lines.get(timeout=self.startup_timeout)
        except queue.Empty:
            line = None
        if line is None or not line.startswith(BASELINE_PREFIX):
            self.kill()
            raise RuntimeError(f"baseline receiver did not start: {line!r}")
        self.port = int(line[len(BASELINE_PREFIX):].split("/")[2].rsplit(":", 1)[1])
        return self

    def stop(self, timeout: float = 20.0) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return -9

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def __enter__(self) -> BaselineServer:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def make_server(target: Target, data_dir: Path, args: tuple[str, ...] = ()) -> BenchServer:
    """A fresh (not yet started) server of either kind with `data_dir` emptied first."""
    shutil.rmtree(data_dir, ignore_errors=True)
    if target == "ours":
        return OursServer(data_dir, args=args)
    if target == "ours-fsync":
        return OursServer(data_dir, args=(*args, "--sync-mode", "fsync"))
    if target == "ours-nofsync":  # diagnostic only: acks no longer mean durable
        return OursServer(data_dir, args=(*args, "--no-fsync"))
    return BaselineServer(data_dir, commit="global" if target == "baseline-global" else "stream")


def remove_data(data_dir: Path) -> None:
    """Free the disk between steps (a capacity step writes ~32 KB/s per stream)."""
    shutil.rmtree(data_dir, ignore_errors=True)

"""Run the real ingest server (`python -m ingest_server`) as a subprocess on loopback.

    with IngestServer(tmp_path / "data") as server:      # waits for the listening line
        ws = websockets.sync.client.connect(server.url)   # ws://127.0.0.1:PORT/v1/stream
        httpx.get(server.http + "/v1/streams")
        server.kill(); server.start()                      # SIGKILL, then same port again
        server.restart()                                   # SIGTERM (graceful), start again

The port is picked once (a free port, or the one you pass) and kept across restarts, so
clients can reconnect to the same URL. stderr goes to `<data_dir>-server.log` beside the
data dir (appended across restarts) and its tail is quoted when start-up fails.

Used by the test suite (tests/support/server.py adds a pytest fixture), the chaos run and
the benchmarks.
"""

from __future__ import annotations

import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import urllib.parse
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

LISTENING_PREFIX = "echopanel-ingest listening on "
REPO_ROOT = Path(__file__).resolve().parents[1]


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class ServerError(RuntimeError):
    pass


SECRET_FLAGS = ("--token", "--webhook-secret", "--nats-token")
URL_FLAGS = ("--webhook", "--store")  # a URL may carry a credential in its query or userinfo


def _bare_url(url: str) -> str:
    """scheme://host[:port]/path; userinfo and query dropped (a server list stays a list)."""
    parts = urllib.parse.urlsplit(url)
    netloc = ",".join(hostport.rpartition("@")[2] for hostport in parts.netloc.split(","))
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def redacted_command(cmd: Sequence[str]) -> list[str]:
    """The command line as logged, with every credential hidden (token, webhook secret, NATS
    token; a webhook URL's query and userinfo), so the log beside the data dir holds none
    (tests grep it for every secret they used)."""
    out: list[str] = []
    for arg in cmd:
        flag, eq, value = arg.partition("=")
        if out and out[-1] in SECRET_FLAGS:
            out.append("<redacted>")
        elif out and out[-1] in URL_FLAGS:
            out.append(_bare_url(arg))
        elif eq and flag in SECRET_FLAGS:
            out.append(f"{flag}=<redacted>")
        elif eq and flag in URL_FLAGS:
            out.append(f"{flag}={_bare_url(value)}")
        else:
            out.append(arg)
    return out


class IngestServer:
    def __init__(self, data_dir: Path, port: int | None = None, *, args: Sequence[str] = (),
                 env: dict[str, str] | None = None, startup_timeout: float = 30.0) -> None:
        self.data_dir = Path(data_dir)
        self.port = free_port() if port is None else port  # 0: the server picks, we learn it
        self.host = "127.0.0.1"
        self.args = list(args)
        self.env = env
        self.startup_timeout = startup_timeout
        self.log_path = self.data_dir.parent / f"{self.data_dir.name}-server.log"
        self.proc: subprocess.Popen[str] | None = None
        self.stdout_lines: list[str] = []  # everything printed, listening line included

    @property
    def url(self) -> str:
        return f"ws://{self.host}:{self.port}/v1/stream"

    @property
    def http(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> IngestServer:
        if self.running:
            raise ServerError("server already running")
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "ingest_server", "--host", self.host,
               "--port", str(self.port), "--data-dir", str(self.data_dir), *self.args]
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **(self.env or {})}
        with open(self.log_path, "a") as log:
            log.write(f"--- {' '.join(redacted_command(cmd))}\n")
            log.flush()
            self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, text=True,
                                         cwd=REPO_ROOT, env=env)
        lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._pump, args=(self.proc, lines), daemon=True).start()
        try:
            line = lines.get(timeout=self.startup_timeout)
        except queue.Empty:
            self.kill()
            raise ServerError(f"no listening line within {self.startup_timeout} s\n"
                              + self.log_tail()) from None
        if line is None or not line.startswith(LISTENING_PREFIX):
            self.kill()
            raise ServerError(f"server did not start (stdout {line!r})\n{self.log_tail()}")
        # "... listening on ws://HOST:PORT/v1/stream (data dir DIR)": keep the real port.
        self.port = int(line[len(LISTENING_PREFIX):].split("/")[2].rsplit(":", 1)[1])
        return self

    def _pump(self, proc: subprocess.Popen[str], lines: queue.Queue[str | None]) -> None:
        """Read stdout to the end (so the server never blocks on a full pipe)."""
        assert proc.stdout is not None
        for line in proc.stdout:
            self.stdout_lines.append(line.rstrip("\n"))
            lines.put(line.rstrip("\n"))
        lines.put(None)

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM and wait; returns the exit status (0 for a clean shutdown)."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise ServerError(
                f"server ignored SIGTERM for {timeout} s\n{self.log_tail()}") from None

    def kill(self) -> None:
        """SIGKILL: a crash. Nothing is flushed, nothing is closed."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
        if self.proc is not None:
            self.proc.wait(10)

    def restart(self) -> IngestServer:
        self.stop()
        return self.start()

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text().splitlines()[-n:])
        except OSError:
            return "(no server log)"

    def __enter__(self) -> IngestServer:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self.running:
            self.stop()

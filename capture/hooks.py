"""`--on-event CMD`: run a command for each state change, with one JSON record on its stdin.

The records are the ones `--status-json` writes (capture/status.py `_emit_json`) for a state
change (`state`), an event such as a microphone loss or the drain starting (`event`), and
the end of the run (`exit`); the per-second `status` snapshots are not state changes and
start nothing. Each record already carries the stream id and the wall-clock time.

How CMD runs (docs/notifications.md, "Event hooks"):

- split with shlex, no shell: a record never reaches a shell parser, and quoting works
  as on a command line; `sh -c '…'` is there for whoever wants a shell;
- one hook at a time, in order, from one worker thread behind a bounded queue: the
  uplink and the status line never wait for a hook. A record that finds the queue full
  is dropped and counted (`HookStats.dropped`);
- stdout is discarded; stderr is kept (its first STDERR_LOG_CHARS characters) and logged
  with the exit status, at WARNING for a failure, INFO otherwise;
- a hook still running after `timeout` seconds is killed (SIGKILL to its process group:
  it runs in a session of its own, so a shell's children go too) and logged;
- the capture's credentials are not passed on: the hook's environment lacks
  ECHOPANEL_UPLINK_TOKEN and ECHOPANEL_TOKEN.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shlex
import signal
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

log = logging.getLogger(__name__)

#: the --status-json record types that are state changes (capture/status.py)
HOOK_RECORD_TYPES = frozenset({"state", "event", "exit"})
#: never handed to a hook (docs/operations.md, "Tokens")
SECRET_VARIABLES = ("ECHOPANEL_UPLINK_TOKEN", "ECHOPANEL_TOKEN")
STDERR_LOG_CHARS = 2000
DEFAULT_TIMEOUT = 10.0
DEFAULT_QUEUE = 64


class HookOutcome(StrEnum):
    OK = "ok"
    FAILED = "failed"  # a non-zero exit status, or killed by a signal
    TIMED_OUT = "timed-out"  # killed after the timeout
    NOT_STARTED = "not-started"  # the command could not be run (not found, not executable)


@dataclass(frozen=True, slots=True)
class HookResult:
    record_type: str
    outcome: HookOutcome
    returncode: int | None
    seconds: float
    stderr: str  # at most STDERR_LOG_CHARS characters, "…" marking a cut


@dataclass(frozen=True, slots=True)
class HookStats:
    ran: int
    failed: int  # FAILED and NOT_STARTED
    timed_out: int
    dropped: int  # records that found the queue full, or were still queued at close()


def parse_hook_command(text: str) -> list[str]:
    """`--on-event CMD` as an argument vector (shlex, POSIX rules); ValueError if empty or
    badly quoted."""
    try:
        argv = shlex.split(text)
    except ValueError as e:
        raise ValueError(f"--on-event {text!r}: {e}") from e
    if not argv:
        raise ValueError("--on-event needs a command")
    return argv


def hook_environment(environ: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in environ.items() if k not in SECRET_VARIABLES}


def _clip(text: str) -> str:
    text = text.strip()
    return text if len(text) <= STDERR_LOG_CHARS else text[:STDERR_LOG_CHARS] + "…"


class HookRunner:
    """Runs the hook for each state-change record; `record()` returns at once."""

    def __init__(self, command: str | Sequence[str], *, timeout: float = DEFAULT_TIMEOUT,
                 queue_size: int = DEFAULT_QUEUE, environ: Mapping[str, str] | None = None,
                 on_result: Callable[[HookResult], None] | None = None) -> None:
        self.argv = parse_hook_command(command) if isinstance(command, str) else list(command)
        if timeout <= 0 or queue_size <= 0:
            raise ValueError("timeout and queue_size must be positive")
        self.timeout = timeout
        self.queue_size = queue_size
        self.env = hook_environment(os.environ if environ is None else environ)
        self.on_result = on_result
        self._queue: deque[tuple[str, bytes]] = deque()
        self._cond = threading.Condition()
        self._closing = False
        self._abandon = threading.Event()
        self._running: subprocess.Popen[bytes] | None = None
        self._ran = self._failed = self._timed_out = self._dropped = 0
        self._thread = threading.Thread(target=self._run, name="on-event-hooks", daemon=True)

    # -- input (any thread) ---------------------------------------------------------------

    def record(self, record: Mapping[str, Any]) -> None:
        """A --status-json record; state changes are queued for the hook, the rest ignored."""
        kind = str(record.get("type", ""))
        if kind not in HOOK_RECORD_TYPES:
            return
        line = (json.dumps(dict(record)) + "\n").encode()
        with self._cond:
            if self._closing or len(self._queue) >= self.queue_size:
                self._dropped += 1
                return
            self._queue.append((kind, line))
            self._cond.notify()

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def close(self, timeout: float | None = None) -> HookStats:
        """Run what is queued (the `exit` record last), then stop. Blocks up to `timeout`
        seconds (default: the hook timeout plus one second; call it off the event loop);
        past it the running hook is killed and what is still queued is dropped."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        if self._thread.is_alive():
            self._thread.join(self.timeout + 1.0 if timeout is None else timeout)
        if self._thread.is_alive():
            self._abandon.set()
            self._kill_running()
            self._thread.join(5.0)
        return self.stats()

    def stats(self) -> HookStats:
        with self._cond:
            return HookStats(self._ran, self._failed, self._timed_out, self._dropped)

    # -- the worker -----------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closing:
                    self._cond.wait()
                if self._abandon.is_set() or not self._queue:
                    self._dropped += len(self._queue)
                    self._queue.clear()
                    return
                kind, line = self._queue.popleft()
            result = self._run_one(kind, line)
            with self._cond:
                self._ran += 1
                if result.outcome in (HookOutcome.FAILED, HookOutcome.NOT_STARTED):
                    self._failed += 1
                elif result.outcome is HookOutcome.TIMED_OUT:
                    self._timed_out += 1
            self._log(result)
            if self.on_result is not None:
                try:
                    self.on_result(result)
                except Exception:  # an observer's bug must not stop the hooks
                    log.exception("on_result callback failed")

    def _run_one(self, kind: str, line: bytes) -> HookResult:
        started = time.monotonic()
        try:
            proc = subprocess.Popen(self.argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.PIPE, env=self.env, close_fds=True,
                                    start_new_session=True)
        except OSError as e:
            return HookResult(kind, HookOutcome.NOT_STARTED, None, 0.0, _clip(str(e)))
        with self._cond:
            self._running = proc
        try:
            try:
                _, err = proc.communicate(line, timeout=self.timeout)
                timed_out = False
            except subprocess.TimeoutExpired:
                self._kill_running()
                timed_out = True
                err = self._drain(proc)
        finally:
            with self._cond:
                self._running = None
        seconds = time.monotonic() - started
        stderr = _clip(err.decode(errors="replace"))
        if timed_out or self._abandon.is_set():
            return HookResult(kind, HookOutcome.TIMED_OUT, proc.returncode, seconds, stderr)
        outcome = HookOutcome.OK if proc.returncode == 0 else HookOutcome.FAILED
        return HookResult(kind, outcome, proc.returncode, seconds, stderr)

    def _drain(self, proc: subprocess.Popen[bytes]) -> bytes:
        """What the killed hook wrote to stderr; a descendant that left the process group
        could hold the pipe open, so this waits a moment only."""
        try:
            _, err = proc.communicate(timeout=1.0)
            return err or b""
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            return b""

    def _kill_running(self) -> None:
        with self._cond:
            proc = self._running
        if proc is None:
            return
        # its own session, so its own process group: the hook and whatever it started
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)

    def _log(self, r: HookResult) -> None:
        tail = f"; stderr: {r.stderr}" if r.stderr else ""
        match r.outcome:
            case HookOutcome.OK:
                log.info("--on-event hook (%s record) exited 0 in %.2f s%s",
                         r.record_type, r.seconds, tail)
            case HookOutcome.FAILED:
                log.warning("--on-event hook (%s record) exited with status %s in %.2f s%s",
                            r.record_type, r.returncode, r.seconds, tail)
            case HookOutcome.TIMED_OUT:
                log.warning("--on-event hook (%s record) killed after %.1f s (timeout)%s",
                            r.record_type, r.seconds, tail)
            case HookOutcome.NOT_STARTED:
                log.warning("--on-event hook could not be run: %s", r.stderr)

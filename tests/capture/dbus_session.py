"""A real D-Bus session bus for tests, and a notification server on it that records what it
was sent (org.freedesktop.Notifications: Notify, GetCapabilities, GetServerInformation).

The bus is `dbus-daemon --session` on a socket in a temporary directory; the server speaks
through jeepney, the same library capture/notify.py uses, in a thread of the test process.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import pytest
from jeepney import HeaderFields, MessageType, new_error, new_method_return
from jeepney.bus_messages import message_bus
from jeepney.io.blocking import open_dbus_connection

from capture.notify import NOTIFICATIONS_NAME


def require_dbus_daemon() -> str:
    """dbus-daemon's path; skipped without it, except under CI=true (tools/dev.sh installs it)."""
    path = shutil.which("dbus-daemon")
    if path is None:
        if os.environ.get("CI") == "true":
            pytest.fail("dbus-daemon is missing (tools/dev.sh DEB_PACKAGES installs it)")
        pytest.skip("dbus-daemon is not installed")
    return path


class SessionBus:
    """`dbus-daemon --session --nofork` listening on `unix:path=DIR/bus`."""

    def __init__(self, directory: Path) -> None:
        self.socket = directory / "bus"
        self.address = f"unix:path={self.socket}"
        self._proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> SessionBus:
        self._proc = subprocess.Popen(
            [require_dbus_daemon(), "--session", "--nofork", "--nopidfile",
             f"--address={self.address}", "--print-address=1"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline()  # printed once it listens
        if not line:
            err = self._proc.stderr.read() if self._proc.stderr else b""
            raise RuntimeError(f"dbus-daemon did not start: {err.decode(errors='replace')}")
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._proc is not None:
            self._proc.terminate()
            self._proc.wait(5)
            for stream in (self._proc.stdout, self._proc.stderr):
                if stream is not None:
                    stream.close()


@dataclass(frozen=True)
class Received:
    app_name: str
    replaces_id: int
    summary: str
    body: str
    hints: dict[str, Any]
    expire_timeout: int
    id: int


class RecordingNotificationServer:
    """Owns org.freedesktop.Notifications on the bus and records every Notify call."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.received: list[Received] = []
        self.calls: list[str] = []
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._next_id = 1
        self._conn: Any = None
        self._thread = threading.Thread(target=self._serve, name="notification-server", daemon=True)

    def __enter__(self) -> RecordingNotificationServer:
        self._conn = open_dbus_connection(self.address)
        reply = self._conn.send_and_get_reply(message_bus.RequestName(NOTIFICATIONS_NAME), timeout=5)
        assert reply.body[0] == 1, "could not own org.freedesktop.Notifications"
        self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._stop.set()
        self._thread.join(5)
        self._conn.close()

    def wait_for(self, count: int, timeout: float = 5.0) -> list[Received]:
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self.received) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            return list(self.received)

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                msg = self._conn.receive(timeout=0.1)
            except TimeoutError:
                continue
            if msg.header.message_type is not MessageType.method_call:
                continue
            member = msg.header.fields.get(HeaderFields.member)
            with self._cond:
                self.calls.append(member)
            if member == "Notify":
                app, replaces, _icon, summary, body, _actions, hints, expire = msg.body
                with self._cond:
                    nid = replaces or self._next_id
                    if not replaces:
                        self._next_id += 1
                    self.received.append(Received(app, replaces, summary, body,
                                                  {k: v[1] for k, v in hints.items()}, expire, nid))
                    self._cond.notify_all()
                self._conn.send(new_method_return(msg, "u", (nid,)))
            elif member == "GetCapabilities":
                self._conn.send(new_method_return(msg, "as", (["body"],)))
            elif member == "GetServerInformation":
                self._conn.send(new_method_return(msg, "ssss", ("recorder", "tests", "1", "1.2")))
            else:
                self._conn.send(new_error(msg, "org.freedesktop.DBus.Error.UnknownMethod"))

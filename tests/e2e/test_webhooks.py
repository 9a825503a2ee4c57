"""Webhooks end to end (docs/webhooks.md): the real server process with --webhook, a real
HTTP receiver on 127.0.0.1 that verifies every Standard Webhooks signature, a real uplink.

1. A stream opens, loses its connection (chaos proxy: reset, then refused connects) while
   the capture overruns its buffer, resumes with a gap, and ends. The receiver answers the
   first attempts 500, 500, then 429 with Retry-After: every event arrives at least once,
   and deduped by id the receiver holds exactly opened, resumed, gap, finalized.
2. The receiver is down while a stream finalizes; the server restarts (SIGTERM, and SIGKILL
   once the event is in the outbox); the receiver comes up: the finalized webhook arrives
   after the restart with the id it had before.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.e2e.listen_support import FAST_UPLINK
from tools.chaos_proxy import ChaosProxyThread
from tools.ingest_process import IngestServer, free_port
from uplink import Uplink

SECRET = "e2e-webhook-secret-0123456789abcdef"
QUERY_SECRET = "query-credential-0123456789"
ENV = {"ECHOPANEL_WEBHOOK_SECRET": SECRET}
RATE = 16_000
WAIT = 30.0
TOLERANCE = 300  # seconds: the receiver refuses older timestamps (Standard Webhooks advice)


@dataclass(frozen=True)
class Delivery:
    path: str
    event_id: str
    body: dict[str, Any]


class Receiver:
    """A webhook receiver on 127.0.0.1 in a thread. `script` holds the answers to the first
    attempts, per path, as (status, headers); later attempts get 204. It verifies every
    signature and keeps what it accepted (2xx), duplicates included."""

    def __init__(self, port: int | None = None,
                 script: dict[str, list[tuple[int, dict[str, str]]]] | None = None) -> None:
        self.port = port or free_port()
        self.script = {k: list(v) for k, v in (script or {}).items()}
        self.accepted: list[Delivery] = []
        self.attempts: dict[str, int] = {}
        self.attempt_times: dict[str, list[float]] = {}
        self.bad: list[str] = []  # requests that failed verification
        self.cond = threading.Condition()
        self._server: ThreadingHTTPServer | None = None

    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                body = self.rfile.read(int(self.headers["content-length"]))
                status, headers = receiver.handle(self.path, dict(self.headers.items()), body)
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def handle(self, path: str, headers: dict[str, str], body: bytes
               ) -> tuple[int, dict[str, str]]:
        h = {k.lower(): v for k, v in headers.items()}
        route = path.split("?", 1)[0]
        with self.cond:
            self.attempts[route] = self.attempts.get(route, 0) + 1
            self.attempt_times.setdefault(route, []).append(time.monotonic())
            problem = verify(h, body)
            if problem:
                self.bad.append(problem)
                self.cond.notify_all()
                return 401, {}
            pending = self.script.get(route)
            status, extra = pending.pop(0) if pending else (204, {})
            if 200 <= status < 300:
                self.accepted.append(Delivery(route, h["webhook-id"], json.loads(body)))
            self.cond.notify_all()
            return status, extra

    def wait_for(self, done: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + WAIT
        with self.cond:
            while not done():
                left = deadline - time.monotonic()
                assert left > 0, f"timed out waiting for {what}; got {self.accepted}"
                self.cond.wait(left)

    def unique(self, route: str, stream_id: str) -> list[Delivery]:
        """Deduped by event id, in order of first arrival: what a backend acts on."""
        seen: dict[str, Delivery] = {}
        for d in self.accepted:
            if d.path == route and d.body["stream_id"] == stream_id:
                seen.setdefault(d.event_id, d)
        return list(seen.values())

    def types(self, route: str, stream_id: str) -> list[str]:
        return [d.body["type"] for d in self.unique(route, stream_id)]


def verify(headers: dict[str, str], body: bytes) -> str | None:
    """docs/webhooks.md "Verifying a signature", as written there."""
    event_id, timestamp = headers.get("webhook-id"), headers.get("webhook-timestamp")
    if not event_id or not timestamp or abs(time.time() - int(timestamp)) > TOLERANCE:
        return "missing or stale webhook-id / webhook-timestamp"
    signed = f"{event_id}.{timestamp}.".encode() + body
    expected = base64.b64encode(hmac.new(SECRET.encode(), signed, hashlib.sha256).digest())
    if not any(hmac.compare_digest(sig.partition(",")[2].encode(), expected)
               for sig in headers.get("webhook-signature", "").split()):
        return f"bad signature for {event_id}"
    if json.loads(body)["id"] != event_id:
        return "body id differs from webhook-id"
    return None


def pcm(seconds: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(-20000, 20000, int(RATE * seconds), dtype=np.int16)


def wait_until(done: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not done():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def details(server: IngestServer, stream_id: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"{server.http}/v1/streams/{stream_id}") as resp:
        found: dict[str, Any] = json.load(resp)
        return found


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver(script={"/hook": [(500, {}), (500, {}), (429, {"Retry-After": "1"})]})
    r.start()
    yield r
    r.stop()


def test_open_resume_gap_finalize_arrive_signed_through_failures(
        tmp_path: Path, receiver: Receiver) -> None:
    # From the environment: a credential in a URL stays off the command line (and out of
    # the command line tools/ingest_process.py writes to the log).
    hooks = f"{receiver.url}/hook?token={QUERY_SECRET},{receiver.url}/second"
    env = {**ENV, "ECHOPANEL_WEBHOOKS": hooks}
    sid = "hooked"
    with IngestServer(tmp_path / "data", env=env) as server, \
            ChaosProxyThread(target=("127.0.0.1", server.port)) as proxy:
        with Uplink(f"ws://127.0.0.1:{proxy.port}", stream_id=sid, rate=RATE,
                    buffer_seconds=0.5, config=FAST_UPLINK) as up:
            up.push(pcm(0.5, 1))
            wait_until(lambda: up.stats().counters.acked_sample >= RATE // 2, "first acks")
            proxy.refuse(60)  # the uplink cannot come back...
            proxy.reset()  # ...after its connection is cut
            up.push(pcm(2.0, 2))  # 2 s into a 0.5 s ring: 1.5 s become a gap
            proxy.end_refuse()
            up.push(pcm(0.5, 3))
            assert up.close(timeout=WAIT).ok
        recorded = details(server, sid)

        receiver.wait_for(lambda: "stream.finalized" in receiver.types("/hook", sid)
                          and "stream.finalized" in receiver.types("/second", sid),
                          "stream.finalized on both URLs")
        assert receiver.bad == []
        want = ["stream.opened", "stream.resumed", "stream.gap", "stream.finalized"]
        assert receiver.types("/hook", sid) == want
        assert receiver.types("/second", sid) == want
        # the failing first attempts were retried (500, 500, 429), the other URL unaffected
        assert receiver.attempts["/hook"] >= len(want) + 3
        times = receiver.attempt_times["/hook"]
        assert times[3] - times[2] >= 0.9  # Retry-After: 1 was honoured
        # the same event has the same id on every URL
        assert [d.event_id for d in receiver.unique("/hook", sid)] \
            == [d.event_id for d in receiver.unique("/second", sid)]

        opened, resumed, gap, finalized = (d.body for d in receiver.unique("/hook", sid))
        assert opened["sample_rate"] == RATE and opened["channels"] == 1
        assert opened["at_sample"] == 0
        [g] = recorded["gaps"]
        assert (gap["start_sample"], gap["end_sample"]) == (g["start_sample"], g["end_sample"])
        assert gap["samples"] == g["end_sample"] - g["start_sample"] >= RATE
        assert gap["seconds"] == pytest.approx(gap["samples"] / RATE)
        assert finalized["end_reason"] == "ended" and finalized["gaps"] == 1
        assert finalized["samples"] == finalized["at_sample"] == 3 * RATE
        assert finalized["gap_samples"] == gap["samples"]
        assert resumed["at_sample"] >= RATE // 2
    log = server.log_path.read_text()
    assert SECRET not in log and QUERY_SECRET not in log
    assert "HTTP 500" in log and "HTTP 429" in log


def outbox_ids(data: Path, stream_id: str, kind: str) -> list[str]:
    found = []
    for path in (data / ".webhooks").glob("*/events.jsonl"):
        for line in path.read_text().splitlines():
            event = json.loads(line)["event"]
            if event["stream_id"] == stream_id and event["type"] == kind:
                found.append(event["id"])
    return found


def finalize(server: IngestServer, stream_id: str) -> None:
    with Uplink(server.url, stream_id=stream_id, rate=RATE, config=FAST_UPLINK) as up:
        up.push(pcm(0.25))
        assert up.close(timeout=WAIT).ok


def finalized_after_restart(server: IngestServer, port: int, sid: str,
                            restart: Callable[[], object]) -> None:
    """The receiver is down while `sid` finalizes; once the event is in the outbox the
    server restarts; then the receiver comes up and gets it, with the same id."""
    data = server.data_dir
    finalize(server, sid)
    wait_until(lambda: bool(outbox_ids(data, sid, "stream.finalized")),
               "the finalized event in the outbox")
    [event_id] = outbox_ids(data, sid, "stream.finalized")
    restart()
    server.start()
    receiver = Receiver(port).start()
    try:
        receiver.wait_for(lambda: "stream.finalized" in receiver.types("/hook", sid),
                          f"{sid} finalized")
        assert receiver.bad == []
        assert receiver.types("/hook", sid) == ["stream.opened", "stream.finalized"]
        assert receiver.unique("/hook", sid)[-1].event_id == event_id
    finally:
        receiver.stop()


def test_finalized_webhook_survives_sigterm_and_sigkill(tmp_path: Path) -> None:
    port = free_port()  # the receiver's; nothing listens there yet: refused connects
    server = IngestServer(tmp_path / "data",
                          args=["--webhook", f"http://127.0.0.1:{port}/hook"], env=ENV).start()
    def sigterm() -> None:
        assert server.stop() == 0  # a clean shutdown: the outbox was flushed and closed

    try:
        finalized_after_restart(server, port, "before-term", sigterm)
        finalized_after_restart(server, port, "before-kill", server.kill)
    finally:
        server.stop()
    log = server.log_path.read_text()
    assert "undelivered events from before the restart will be re-sent" in log
    assert SECRET not in log

"""The hostile-input battery (docs/protocol.md §7 "What the server refuses"): every case over
a live connection to the real server process, each asserting

- the exact close code (and a reason),
- that a healthy stream streaming in parallel finished sample-exactly,
- that no stored byte of any other stream changed (SHA-256 of every file, before/after),
- that the misbehaving stream itself lost nothing (it resumes from where it was and ends),
- that the close was counted in /metrics and logged.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from websockets.exceptions import ConnectionClosed

from tests.support.server import IngestServer
from uplink.wire import (
    HEADER,
    CloseCode,
    End,
    Hello,
    Welcome,
    encode_audio,
    encode_control,
    encode_gap,
)

from .client import FMT, FRAME, Client, Closed, frames
from .harness import Bystander, scrape, snapshot, value
from .rawws import (
    OP_BINARY,
    OP_CONT,
    OP_PING,
    OP_TEXT,
    frame,
    open_websocket,
    read_frames_until_pong,
    rss_bytes,
    upgrade_request,
    wait_until_dropped,
)

TOKEN = "battery-token-0123456789"
RATE, BURST, MAX_SECONDS, MAX_GAPS = 200, 400, 60, 20
ARGS = ["--token", TOKEN, "--handshake-timeout", "1", "--idle-timeout", "10",
        "--max-message-rate", str(RATE), "--message-burst", str(BURST),
        "--max-stream-seconds", str(MAX_SECONDS), "--max-gaps", str(MAX_GAPS),
        "--profile", "development"]
F = frames(4, seed=50)  # the victim's audio: 2 frames before the bad input, 2 after
AUDIO_16K = '"format": {"sample_rate": 16000, "channels": 1, "sample_type": "int16"}'


def hello_text(**fields: object) -> str:
    obj: dict[str, object] = {"type": "hello", "protocol": 1, "stream_id": "h",
                              "format": FMT.to_json(), "frame_samples": FRAME, "resume": None}
    obj.update(fields)
    return json.dumps({k: v for k, v in obj.items() if v is not ...})


def sending(*messages: str | bytes) -> Callable[[Client, Welcome | None], None]:
    def act(c: Client, w: Welcome | None) -> None:
        for m in messages:
            c.send(m)
    return act


def invalid_utf8(c: Client, w: Welcome | None) -> None:
    c.ws.send(b'{"type": "ping", "t": \xff}', text=True)


def silent(c: Client, w: Welcome | None) -> None:
    pass


def flood(c: Client, w: Welcome | None) -> None:
    """Far more tiny messages than burst + rate x elapsed allows, as fast as possible."""
    start, count = time.monotonic(), 10 * BURST
    try:
        for i in range(count):
            c.send(f'{{"type":"ping","t":{i}}}')
    except ConnectionClosed:
        return  # the server cut us off mid-flood (it only does that past the limit)
    # Everything went out before the close arrived: make sure it really was a flood.
    allowed = BURST + RATE * (time.monotonic() - start)
    assert count > allowed


def end_then_item(c: Client, w: Welcome | None) -> None:
    c.send(encode_control(End(2, 2 * FRAME)))
    c.send(encode_audio(1, 2, 2 * FRAME, 1, F[2]))


def resume_forged(c: Client, w: Welcome | None) -> None:
    c.send(hello_text(stream_id="resting-open", resume={"epoch": 1, "credential": "f" * 43}))


@dataclass(frozen=True)
class Case:
    name: str
    code: int
    act: Callable[[Client, Welcome | None], None]
    # connect: a fresh connection (handshake cases). stream: a resumed connection whose
    # welcome said next_seq 2. finalized: a resumed connection to the ended victim.
    stage: str = "stream"
    ends_stream: bool = False  # the case legitimately finalizes the victim
    # Refused by the WebSocket layer (uvicorn/websockets) before the app sees the message:
    # its close may carry no reason (uvicorn's invalid-UTF-8 close does not).
    transport: bool = False


CASES = [
    # -- before / during the handshake (§2) --------------------------------------------------
    Case("binary-before-hello", 4400, sending(encode_audio(1, 0, 0, 1, F[0])), "connect"),
    Case("hello-not-json", 4400, sending("{hello"), "connect"),
    Case("hello-json-array", 4400, sending("[1, 2]"), "connect"),
    Case("hello-without-stream-id", 4400, sending(hello_text(stream_id=...)), "connect"),
    Case("hello-protocol-string", 4400, sending(hello_text(protocol="1")), "connect"),
    Case("hello-protocol-2", 1003, sending(hello_text(protocol=2)), "connect"),
    Case("hello-sample-rate-7", 1003, sending(hello_text(format={
        "sample_rate": 7, "channels": 1, "sample_type": "int16"})), "connect"),
    Case("hello-sample-type-int8", 1003, sending(hello_text(format={
        "sample_rate": 16000, "channels": 1, "sample_type": "int8"})), "connect"),
    Case("hello-channels-9", 1003, sending(hello_text(format={
        "sample_rate": 16000, "channels": 9, "sample_type": "int16"})), "connect"),
    Case("hello-frame-over-1s", 4400, sending(hello_text(frame_samples=16001)), "connect"),
    Case("hello-frames-too-short-for-rate", 4400, sending(hello_text(frame_samples=16)),
         "connect"),
    Case("hello-traversal-id", 4400, sending(hello_text(stream_id="../x")), "connect"),
    Case("hello-oversized", 1009, sending(hello_text(pad="x" * 5000)), "connect"),
    Case("hello-invalid-utf8", 1007, invalid_utf8, "connect", transport=True),
    Case("resume-unknown-stream", 4404, sending(hello_text(
        stream_id="never-was", resume={"epoch": 1, "credential": "c" * 43})), "connect"),
    Case("resume-forged-credential", 4409, resume_forged, "connect"),
    Case("slow-handshake", 4408, silent, "connect"),
    # -- control messages after the welcome (§2, §6) --------------------------------------
    Case("control-not-json", 1007, sending("{nope")),
    Case("control-not-object", 1007, sending('"ping"')),
    Case("control-unknown-type", 1007, sending('{"type": "shout"}')),
    Case("control-bad-field", 1007, sending('{"type": "ping", "t": "soon"}')),
    Case("control-second-hello", 1007, sending(encode_control(Hello("victim", FMT, FRAME)))),
    Case("control-ack-from-client", 1007, sending('{"type": "ack", "next_seq": 2, '
                                                  '"next_sample": 640}')),
    # JSON numbers a double cannot hold, or that JSON has no spelling for (§5): 1007, no
    # traceback (a 400-digit t was an OverflowError: 1011), no NaN echoed in a pong.
    Case("ping-t-400-digits", 1007, sending('{"type": "ping", "t": ' + "9" * 400 + "}")),
    Case("ping-t-nan", 1007, sending('{"type": "ping", "t": NaN}')),
    Case("ping-t-infinity", 1007, sending('{"type": "ping", "t": -Infinity}')),
    Case("ping-t-huge-float", 1007, sending('{"type": "ping", "t": 1e400}')),
    Case("control-oversized", 1009, sending('{"type": "ping", "t": 1, "pad": "'
                                            + "x" * 5000 + '"}')),
    Case("control-invalid-utf8", 1007, invalid_utf8, transport=True),
    Case("end-mismatch", 1002, sending(encode_control(End(3, 3 * FRAME)))),
    # -- binary items (§3) ----------------------------------------------------------------------
    Case("item-empty", 1007, sending(b"")),
    Case("item-short-header", 1007, sending(b"\x01\x00\x01\x00\x01")),
    Case("item-unknown-kind", 1007, sending(HEADER.pack(7, 0, 1, 1, 2, 2 * FRAME) + F[2])),
    Case("item-nonzero-flags", 1007, sending(HEADER.pack(1, 1, 1, 1, 2, 2 * FRAME) + F[2])),
    Case("item-count-zero", 1007, sending(HEADER.pack(1, 0, 0, 1, 2, 2 * FRAME) + F[2])),
    Case("item-half-sample", 1007, sending(encode_audio(1, 2, 2 * FRAME, 1, F[2] + b"\x00"))),
    Case("item-not-whole-frames", 1007, sending(encode_audio(1, 2, 2 * FRAME, 2, F[2][:-2]))),
    Case("item-frame-over-frame-samples", 1007,
         sending(encode_audio(1, 2, 2 * FRAME, 1, F[2] + b"\x00\x00"))),
    Case("item-gap-bad-payload", 1007, sending(encode_gap(1, 2, 2 * FRAME, 1, 0)[:-3])),
    Case("item-oversized", 1009, sending(encode_audio(1, 2, 2 * FRAME, 1, bytes(1 << 20))),
         transport=True),
    Case("seq-backwards-below-welcome", 1002, sending(encode_audio(1, 0, 0, 1, F[0]))),
    Case("seq-jump-without-gap", 1002, sending(encode_audio(1, 5, 5 * FRAME, 1, F[2]))),
    Case("sample-pos-mismatch", 1002, sending(encode_audio(1, 2, 2 * FRAME + 1, 1, F[2]))),
    Case("wrong-epoch", 1002, sending(encode_audio(9, 2, 2 * FRAME, 1, F[2]))),
    Case("gap-end-before-start", 1002, sending(encode_gap(1, 2, 2 * FRAME, 1, FRAME))),
    Case("gap-zero-samples", 1002, sending(encode_gap(1, 2, 2 * FRAME, 1, 2 * FRAME))),
    Case("past-max-stream-length", 1008,
         sending(encode_gap(1, 2, 2 * FRAME, 1, MAX_SECONDS * 16000 + 1))),
    Case("message-flood", 1008, flood),
    # -- end of stream (§6) --------------------------------------------------------------------
    Case("item-after-end", 1000, end_then_item, ends_stream=True),
    Case("item-to-finalized-stream", 4410, sending(encode_audio(1, 2, 2 * FRAME, 1, F[2])),
         "finalized"),
]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[IngestServer]:
    with IngestServer(tmp_path_factory.mktemp("battery") / "data", args=ARGS) as srv:
        # Streams at rest, which no case may touch: one open (disconnected), one ended.
        with Client(srv.url, TOKEN) as c:
            c.hello("resting-open")
            c.stream(0, frames(3, seed=51))
        with Client(srv.url, TOKEN) as c:
            c.hello("resting-ended")
            c.stream(0, frames(3, seed=52))
            c.end(3, 3 * FRAME)
        yield srv
    log = srv.log_path.read_text()
    assert TOKEN not in log and TOKEN not in "\n".join(srv.stdout_lines)
    # Every case ends in a documented close: none may be a handler crash.
    assert "Traceback" not in log and " ERROR " not in log, log[-3000:]


def eventually(check: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    """Wait for the server to get there (it counts a close after it has sent it)."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def stored_audio(server: IngestServer, sid: str) -> bytes:
    resp = httpx.get(f"{server.http}/v1/streams/{sid}/audio.wav",
                     headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
    assert resp.status_code == 200, resp.text
    return resp.content


def prepare_victim(server: IngestServer, sid: str, stage: str) -> Welcome | None:
    if stage == "connect":
        return None
    with Client(server.url, TOKEN) as c:
        w = c.hello(sid)
        c.stream(0, F[:2])
        if stage == "finalized":
            c.end(2, 2 * FRAME)
    return w


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_hostile_input_gets_its_documented_close_and_costs_nothing_else(
    server: IngestServer, case: Case
) -> None:
    victim = f"victim-{case.name}"
    w = prepare_victim(server, victim, case.stage)
    log_offset = server.log_path.stat().st_size
    with Bystander(server.url, f"bystander-{case.name}", TOKEN) as bystander:
        before = snapshot(server.data_dir, exclude={bystander.sid})
        metrics_before = scrape(server.http, TOKEN)
        with Client(server.url, TOKEN) as c:
            if w is not None:
                w2 = c.hello(victim, resume=w)
                assert w2.next_seq == 2 and w2.finalized == (case.stage == "finalized")
            case.act(c, w)
            closed = c.expect_close()
        assert closed.code == case.code, closed
        assert closed.reason or case.transport, "every close from the app says why"
        stored = bystander.finish()

    # The healthy neighbour stored every frame it sent, exactly.
    assert stored_audio(server, bystander.sid)[-len(stored) * FRAME * 2:] == b"".join(stored)
    # Nothing stored by anyone else changed (the victim's journal included).
    excluded = {bystander.sid} | ({victim} if case.ends_stream else set())
    assert snapshot(server.data_dir, exclude=excluded) == {
        k: v for k, v in before.items() if k.split("/")[0] not in excluded}
    assert not any(p.name.startswith(".") for p in (server.data_dir / "streams").iterdir())

    # The misbehaving stream lost nothing and goes on (or stays finalized) where it was.
    if w is not None:
        with Client(server.url, TOKEN) as c:
            w3 = c.hello(victim, resume=w)
            assert w3.next_seq == 2
            if not w3.finalized:
                c.stream(2, F[2:])
                c.end(4, 4 * FRAME)
        expected = F if not w3.finalized else F[:2]
        assert stored_audio(server, victim).endswith(b"".join(expected))

    # Counted (the bystander and the victim's own sessions add closes with 1000) and logged.
    label = str(case.code)
    want = value(metrics_before, "echopanel_closes_total", code=label) + 1

    def counted() -> bool:
        got = value(scrape(server.http, TOKEN), "echopanel_closes_total", code=label)
        return got == want if case.code != 1000 else got >= want

    eventually(counted, f"closes_total{{code={label}}}")
    if case.code != 1000:
        def logged() -> bool:
            with open(server.log_path) as f:
                f.seek(log_offset)
                return f"with {case.code}" in f.read()
        eventually(logged, f"a log line for {case.code}")


def test_every_documented_close_code_is_in_the_battery() -> None:
    """§7 codes a client can provoke; 1001/1011/1012/1013/4411 are tested elsewhere."""
    provoked = {c.code for c in CASES}
    assert provoked >= {1000, 1002, 1003, 1007, 1008, 1009, 4400, 4404, 4408, 4409, 4410}
    assert {int(c) for c in CloseCode} - provoked == {1001, 1011, 1012, 1013, 4411}


def test_protocol_doc_lists_every_case() -> None:
    doc = (Path(__file__).parents[2] / "docs" / "protocol.md").read_text()
    for case in CASES:
        assert f"`{case.name}`" in doc, f"docs/protocol.md §7 does not list {case.name}"


# A closing sanity check on the test's own tools: the snapshot really sees a changed byte.
def test_snapshot_detects_a_single_changed_byte(tmp_path: Path) -> None:
    stream = tmp_path / "streams" / "s"
    stream.mkdir(parents=True)
    (stream / "journal.bin").write_bytes(b"abc")
    before = snapshot(tmp_path)
    (stream / "journal.bin").write_bytes(b"abd")
    assert snapshot(tmp_path) != before


def test_closed_helper_reports_codes() -> None:
    assert Closed(4400, "x").code == 4400


# -- frame-level floods, gap records, upgrade requests (docs/operations.md "Hostile input") --
# Each with a healthy stream in parallel that must stay exact, and each must end in a drop
# the server decided on, counted and logged.


def closes(server: IngestServer, code: int) -> float:
    return value(scrape(server.http, TOKEN), "echopanel_closes_total", code=str(code))


def expect_drop_with(server: IngestServer, raw: socket.socket, code: int, before: float,
                     log_offset: int, timeout: float = 5.0) -> None:
    """The server let go of the connection (FIN or RST) without us reading a byte, and
    counted and logged the close."""
    wait_until_dropped(raw, timeout)
    eventually(lambda: closes(server, code) == before + 1, f"closes_total{{code={code}}}")

    def logged() -> bool:
        with open(server.log_path) as f:
            f.seek(log_offset)
            return f"with {code}" in f.read()
    eventually(logged, f"a log line for {code}")


def flood(raw: socket.socket, frame_bytes: bytes, count: int) -> int:
    """Send up to `count` copies in large writes; stop when the server stops taking them
    (send blocks past the socket timeout, or the connection is gone). Returns how many
    were sent."""
    batch = 256
    sent = 0
    try:
        while sent < count:
            raw.sendall(frame_bytes * batch)
            sent += batch
    except (TimeoutError, ConnectionError):
        pass
    return sent


def test_ping_flood_from_a_peer_that_never_reads_is_cut_off(server: IngestServer) -> None:
    """Pings take from the message rate limit: past the burst, 1008 and the peer is
    dropped, whether or not it reads. Before, every ping queued a pong without limit."""
    log_offset = server.log_path.stat().st_size
    before = closes(server, 1008)
    with Bystander(server.url, "bystander-ping-flood", TOKEN) as bystander:
        raw = open_websocket(server.host, server.port, TOKEN, rcvbuf=4096, timeout=2.0)
        with raw:
            raw.sendall(frame(OP_TEXT, hello_text(stream_id="ping-flooder").encode()))
            sent = flood(raw, frame(OP_PING, b"p" * 125), 50 * BURST)
            assert sent > BURST
            expect_drop_with(server, raw, 1008, before, log_offset)
        stored = bystander.finish()
    assert stored_audio(server, bystander.sid)[-len(stored) * FRAME * 2:] == b"".join(stored)


def test_a_message_in_millions_of_fragments_is_cut_off(server: IngestServer) -> None:
    """Continuation frames take from the message rate limit too: 1008 long before a
    message of 2-byte fragments reaches the size limit (before: accepted up to 1 MiB, one
    object per fragment, 27 MB for one message)."""
    log_offset = server.log_path.stat().st_size
    before = closes(server, 1008)
    with Bystander(server.url, "bystander-fragments", TOKEN) as bystander:
        raw = open_websocket(server.host, server.port, TOKEN, timeout=2.0)
        with raw:
            raw.sendall(frame(OP_TEXT, hello_text(stream_id="fragmenter").encode()))
            raw.sendall(frame(OP_BINARY, b"\x01\x00", fin=False))
            flood(raw, frame(OP_CONT, b"\x00\x00", fin=False), 100_000)
            expect_drop_with(server, raw, 1008, before, log_offset)
        stored = bystander.finish()
    assert stored_audio(server, bystander.sid)[-len(stored) * FRAME * 2:] == b"".join(stored)


def test_gap_records_per_stream_are_bounded(server: IngestServer) -> None:
    """MAX_GAPS one-sample gaps are stored; the next closes with 1008 and stores nothing.
    The stream resumes where it was and ends; its neighbour is exact."""
    sid, f = "gap-hoarder", frames(3, seed=53)
    with Bystander(server.url, "bystander-gaps", TOKEN) as bystander:
        with Client(server.url, TOKEN) as c:
            w = c.hello(sid)
            c.stream(0, f[:1])
            for i in range(MAX_GAPS):
                c.gap(1 + i, 1, FRAME + i, FRAME + i + 1)
            c.wait_acked(1 + MAX_GAPS)
            c.gap(1 + MAX_GAPS, 1, FRAME + MAX_GAPS, FRAME + MAX_GAPS + 1)
            closed = c.expect_close()
        assert closed.code == 1008 and "gap records" in closed.reason, closed
        with Client(server.url, TOKEN) as c:
            w2 = c.hello(sid, resume=w)
            assert (w2.next_seq, w2.next_sample) == (1 + MAX_GAPS, FRAME + MAX_GAPS)
            for i, audio in enumerate(f[1:]):
                c.audio(1 + MAX_GAPS + i, FRAME + MAX_GAPS + i * FRAME, [audio])
            c.end(3 + MAX_GAPS, 3 * FRAME + MAX_GAPS)
        stored = bystander.finish()
    assert stored_audio(server, bystander.sid)[-len(stored) * FRAME * 2:] == b"".join(stored)
    detail = httpx.get(f"{server.http}/v1/streams/{sid}", timeout=10,
                       headers={"Authorization": f"Bearer {TOKEN}"}).json()
    assert detail["gap_count"] == MAX_GAPS
    assert stored_audio(server, sid).endswith(b"".join(f[1:]))


@pytest.mark.parametrize(("status", "request_bytes"), [
    (431, upgrade_request("127.0.0.1", 1, TOKEN, extra=f"X-Big: {'x' * 9000}\r\n")),
    (431, upgrade_request("127.0.0.1", 1, TOKEN,
                          extra="".join(f"X-{i}: y\r\n" for i in range(200)))),
    (414, upgrade_request("127.0.0.1", 1, TOKEN, path="/v1/stream?" + "q" * 9000)),
], ids=["header-line-over-8k", "too-many-headers", "request-line-over-8k"])
def test_an_upgrade_request_too_large_is_answered_and_closed(
    server: IngestServer, status: int, request_bytes: bytes,
) -> None:
    """websockets refuses the request and prepares the answer; it must be sent and the
    socket closed (before: nothing was sent and the socket stayed open)."""
    with Bystander(server.url, f"bystander-{status}-{len(request_bytes)}", TOKEN) as bystander:
        with socket.create_connection((server.host, server.port), timeout=5) as s:
            s.sendall(request_bytes)
            answer = b""
            while chunk := s.recv(65536):  # until the server closes (a timeout fails)
                answer += chunk
        assert answer.startswith(f"HTTP/1.1 {status} ".encode()), answer[:200]
        stored = bystander.finish()
    assert stored_audio(server, bystander.sid)[-len(stored) * FRAME * 2:] == b"".join(stored)


# -- memory bounds, with limits so generous that only flow control stands in the way ----------

ROOMY = ["--token", TOKEN, "--max-message-rate", "1000000000", "--message-burst",
         "1000000000", "--idle-timeout", "30", "--profile", "development"]
MiB = 1 << 20


@pytest.fixture(scope="module")
def roomy_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[IngestServer]:
    with IngestServer(tmp_path_factory.mktemp("roomy") / "data", args=ROOMY) as srv:
        yield srv


def test_pongs_for_a_peer_that_never_reads_are_bounded(roomy_server: IngestServer) -> None:
    """Within the rate limit, a peer that pings and never reads stops being read once its
    pongs fill the write buffer: the server's memory stays flat (before: +165 MB in 6 s).
    A 64 MiB flood must stall long before it is all sent."""
    srv = roomy_server
    assert srv.proc is not None
    ping = frame(OP_PING, b"p" * 125)
    count = 64 * MiB // len(ping)
    with Bystander(srv.url, "bystander-pong-pressure", TOKEN) as bystander:
        raw = open_websocket(srv.host, srv.port, TOKEN, rcvbuf=4096, timeout=1.0)
        with raw:
            raw.sendall(frame(OP_TEXT, hello_text(stream_id="pong-hoarder").encode()))
            rss_before = rss_bytes(srv.proc.pid)
            sent = flood(raw, ping, count)
            grown = rss_bytes(srv.proc.pid) - rss_before
            assert sent < count // 4, f"{sent * len(ping) / MiB:.0f} MiB of pings taken"
            assert grown < 16 * MiB, f"server grew {grown / MiB:.1f} MiB"
        stored = bystander.finish()
    assert stored_audio(srv, bystander.sid)[-len(stored) * FRAME * 2:] == b"".join(stored)


def test_a_fragmented_message_costs_its_payload_not_an_object_per_fragment(
    roomy_server: IngestServer,
) -> None:
    """A 1,000,000-byte message in 2-byte fragments (500,000 frames): the server holds one
    buffer of the payload, not 500,000 objects (before: 27 MB for a 1 MB message)."""
    srv = roomy_server
    assert srv.proc is not None
    raw = open_websocket(srv.host, srv.port, TOKEN, timeout=20.0)
    with raw:
        raw.sendall(frame(OP_TEXT, hello_text(stream_id="fragments").encode()))
        read_frames_until_welcome = frame(OP_PING, b"w")  # the welcome comes first
        raw.sendall(read_frames_until_welcome)
        read_frames_until_pong(raw, b"w")
        rss_before = rss_bytes(srv.proc.pid)
        raw.sendall(frame(OP_BINARY, b"\x00\x00", fin=False))
        raw.sendall(frame(OP_CONT, b"\x00\x00", fin=False) * 499_999)
        raw.sendall(frame(OP_PING, b"done"))  # answered once every fragment was parsed
        read_frames_until_pong(raw, b"done")
        grown = rss_bytes(srv.proc.pid) - rss_before
    assert grown < 8 * MiB, f"server grew {grown / MiB:.1f} MiB for a 1 MB message"

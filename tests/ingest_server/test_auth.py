"""Authentication and stream ownership against the real server (docs/protocol.md §10):
missing, wrong and misplaced tokens; another client's credential; another token's stream;
path-traversal stream ids. All refused, and counted."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import httpx
import numpy as np
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from tests.support.server import IngestServer
from uplink.client import UplinkClient
from uplink.config import UplinkConfig
from uplink.errors import HandshakeRefused
from uplink.policy import BackoffConfig, RetryBudgetConfig
from uplink.ring import RingBuffer
from uplink.wire import CloseCode, Hello, encode_control

from .client import FMT, FRAME, Client, Closed, frames
from .harness import scrape, value

TOKEN_A = "token-A-0123456789abcdef"
TOKEN_B = "token-B-0123456789abcdef"  # from the token file
WRONG = "token-X-0123456789abcdef"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[IngestServer]:
    d = tmp_path_factory.mktemp("auth")
    token_file = d / "tokens"
    token_file.write_text(f"# fleet tokens\n\n{TOKEN_B}\n")
    token_file.chmod(0o600)
    args = ["--token", TOKEN_A, "--token-file", str(token_file), "--profile", "development"]
    with IngestServer(d / "data", args=args) as srv:
        yield srv
    # After every test of this module: no credential any of them used (in a URL, in a
    # header, right or wrong) appears in anything the server wrote (docs/operations.md).
    assert_no_credential_logged(srv, ALL_TOKENS)


def percent_encoded(text: str) -> str:
    return "".join(f"%{b:02X}" for b in text.encode())


def assert_no_credential_logged(srv: IngestServer, tokens: list[str]) -> None:
    written = srv.log_path.read_text() + "\n".join(srv.stdout_lines)
    assert "WebSocket /v1/stream" in written, "the server's request lines were not captured"
    for token in tokens:
        for form in (token, percent_encoded(token), token[:-1]):
            assert form not in written, f"a credential reached the server log: {form[:6]}..."


def upgrade_status(url: str, headers: dict[str, str] | None = None,
                   subprotocols: list[str] | None = None) -> tuple[int, dict[str, str]]:
    with pytest.raises(InvalidStatus) as e:
        connect(url, additional_headers=headers, subprotocols=subprotocols,  # type: ignore[arg-type]
                open_timeout=10, proxy=None)
    resp = e.value.response
    return resp.status_code, dict(resp.headers)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


REFUSALS: list[tuple[str, str, dict[str, str], int, str]] = [
    # name, query string, headers, status, metrics reason
    ("no-header", "", {}, 401, "missing"),
    ("wrong-token", "", bearer(WRONG), 403, "invalid"),
    ("basic-scheme", "", {"Authorization": "Basic dXNlcjpwYXNz"}, 401, "malformed"),
    ("empty-bearer", "", {"Authorization": "Bearer"}, 401, "malformed"),
    ("query-only", f"?token={TOKEN_A}", {}, 401, "in_url"),
    ("query-and-header", f"?access_token={TOKEN_A}", bearer(TOKEN_A), 401, "in_url"),
    ("token-as-query-value", f"?session={TOKEN_A}", bearer(TOKEN_A), 401, "in_url"),
    ("almost-right", "", bearer(TOKEN_A[:-1]), 403, "invalid"),
    ("wrong-token-in-query", f"?token={WRONG}", {}, 401, "in_url"),
    # A configured token anywhere in the query string, in any shape, with a valid header.
    ("token-bare-in-query", f"?{TOKEN_A}", bearer(TOKEN_A), 401, "in_url"),
    ("token-in-semicolon-pairs", f"?a=1;t={TOKEN_A};b=2", bearer(TOKEN_A), 401, "in_url"),
    ("bearer-token-in-a-value", f"?h=Bearer%20{TOKEN_B}", bearer(TOKEN_A), 401, "in_url"),
    ("token-percent-encoded", f"?v={percent_encoded(TOKEN_A)}", bearer(TOKEN_A), 401,
     "in_url"),
    ("token-encoded-twice", f"?v={percent_encoded(TOKEN_B).replace('%', '%25')}",
     bearer(TOKEN_A), 401, "in_url"),
    ("token-inside-a-word", f"?x=abc{TOKEN_A}def", bearer(TOKEN_A), 401, "in_url"),
]
ALL_TOKENS = [TOKEN_A, TOKEN_B, WRONG]


@pytest.mark.parametrize(("name", "query", "headers", "status", "reason"), REFUSALS,
                         ids=[r[0] for r in REFUSALS])
def test_websocket_upgrade_is_refused_before_accept(
    server: IngestServer, name: str, query: str, headers: dict[str, str], status: int,
    reason: str,
) -> None:
    before = scrape(server.http, TOKEN_A)
    got, response_headers = upgrade_status(server.url + query, headers)
    assert got == status
    assert response_headers.get("www-authenticate", "").startswith("Bearer")
    after = scrape(server.http, TOKEN_A)
    assert value(after, "echopanel_auth_failures_total", reason=reason) == value(
        before, "echopanel_auth_failures_total", reason=reason) + 1


def test_token_as_a_websocket_subprotocol_is_refused(server: IngestServer) -> None:
    assert upgrade_status(server.url, subprotocols=[TOKEN_A])[0] == 401


PROTECTED = ["/v1/streams", "/v1/streams/anything", "/v1/streams/anything/audio.wav", "/metrics"]


@pytest.mark.parametrize("path", PROTECTED)
@pytest.mark.parametrize(("name", "query", "headers", "status", "reason"), REFUSALS,
                         ids=[r[0] for r in REFUSALS])
def test_rest_api_is_refused(server: IngestServer, path: str, name: str, query: str,
                             headers: dict[str, str], status: int, reason: str) -> None:
    resp = httpx.get(server.http + path + query, headers=headers, timeout=10)
    assert resp.status_code == status, resp.text
    assert resp.headers["www-authenticate"].startswith("Bearer")
    assert TOKEN_A not in resp.text


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/openapi.json", "/docs"])
def test_probes_and_api_description_are_open(server: IngestServer, path: str) -> None:
    assert httpx.get(server.http + path, timeout=10).status_code == 200


def test_both_configured_tokens_work_end_to_end(server: IngestServer) -> None:
    for token, sid in [(TOKEN_A, "auth-a"), (TOKEN_B, "auth-b")]:
        f = frames(10, seed=40)
        with Client(server.url, token) as c:
            c.hello(sid)
            c.stream(0, f)
            c.end(10, 10 * FRAME)
        resp = httpx.get(f"{server.http}/v1/streams/{sid}/audio.wav", headers=bearer(token),
                         timeout=10)
        assert resp.status_code == 200
        assert resp.content[-10 * FRAME * 2:] == b"".join(f)


def test_only_the_credential_holder_with_the_creating_token_may_resume(
    server: IngestServer,
) -> None:
    f = frames(6, seed=41)
    with Client(server.url, TOKEN_A) as c:
        w = c.hello("owned-by-a")
        c.stream(0, f[:3])
    forged = replace(w, credential="another-clients-credential-xxxxxxxxxxxxxxxx")
    cases = [
        (TOKEN_A, forged, CloseCode.STREAM_CONFLICT),  # a guessed id: nothing
        (TOKEN_B, forged, CloseCode.STREAM_CONFLICT),  # same answer: no oracle for B
        (TOKEN_B, w, CloseCode.POLICY_VIOLATION),  # right credential, another token
        (TOKEN_B, None, CloseCode.STREAM_CONFLICT),  # creating the same id: taken
    ]
    for token, resume, code in cases:
        with Client(server.url, token) as c:
            with pytest.raises(Closed) as e:
                c.hello("owned-by-a", resume=resume)
            assert e.value.code == code, (token, e.value)
    with Client(server.url, TOKEN_A) as c:  # the owner carries on, from where it was
        assert c.hello("owned-by-a", resume=w).next_seq == 3
        c.stream(3, f[3:])
        c.end(6, 6 * FRAME)
    meta = json.loads((server.data_dir / "streams" / "owned-by-a" / "meta.json").read_text())
    assert len(meta["token_sha256"]) == 64 and TOKEN_A not in json.dumps(meta)


TRAVERSAL_IDS = ["../x", "..", "../../etc/passwd", "/etc/passwd", "%2e%2e", "%2e%2e%2fx",
                 "a/b", "a\\b", ".hidden", "a..b", "caf\u00e9", "\u0430dmin", "a\x00b", "a b",
                 "x" * 129, "x" * 1000, "-leading-dash", "\u202ertl"]


def test_path_traversal_ids_are_refused_in_the_handshake(server: IngestServer) -> None:
    before = sorted(p.name for p in server.data_dir.iterdir())
    for sid in TRAVERSAL_IDS:
        with Client(server.url, TOKEN_A) as c:
            c.send(encode_control(Hello(sid, FMT, FRAME)))
            closed = c.expect_close()
            assert closed.code == CloseCode.BAD_HANDSHAKE, (sid, closed)
    assert sorted(p.name for p in server.data_dir.iterdir()) == before
    assert not (server.data_dir.parent / "x").exists()


def raw_get(server: IngestServer, target: str, token: str = TOKEN_A) -> int:
    """An HTTP request with the target exactly as given (clients normalize dot segments)."""
    with socket.create_connection((server.host, server.port), timeout=10) as s:
        s.sendall(f"GET {target} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
                  "Connection: close\r\n\r\n".encode("latin-1"))
        head = s.recv(64).decode("latin-1")
    return int(head.split()[1])


@pytest.mark.parametrize("target", [
    "/v1/streams/../../etc/passwd", "/v1/streams/%2e%2e", "/v1/streams/%2e%2e/audio.wav",
    "/v1/streams/..%2f..%2fetc%2fpasswd/audio.wav", "/v1/streams/%2fetc%2fpasswd",
    "/v1/streams/a%00b", "/v1/streams/caf%C3%A9/audio.wav", "/v1/streams/" + "x" * 129,
    "/v1/streams/.hidden", "/v1/streams/a..b/audio.wav",
])
def test_path_traversal_ids_are_404_over_rest(server: IngestServer, target: str) -> None:
    assert raw_get(server, target) == 404


def uplink_result(url: str, token: str | None) -> HandshakeRefused:
    config = UplinkConfig(backoff=BackoffConfig(base=0.05, cap=0.1),
                          budget=RetryBudgetConfig(max_initial_attempts=3))

    async def run() -> HandshakeRefused:
        ring = RingBuffer(FMT, FRAME, 1.0)
        ring.push(bytes(FRAME * 2))
        client = UplinkClient(url, ring, "uplink-refused", config, token=token)
        result = await asyncio.wait_for(client.run(), 20)
        assert not result.ok and result.stats.ring.held_frames == 1  # audio kept
        assert isinstance(result.error, HandshakeRefused), result.error
        return result.error

    return asyncio.run(run())


def test_the_uplink_stops_at_once_on_a_missing_or_wrong_token(server: IngestServer) -> None:
    before = scrape(server.http, TOKEN_A)
    assert uplink_result(server.url, None).http_status == 401
    assert uplink_result(server.url, WRONG).http_status == 403
    after = scrape(server.http, TOKEN_A)
    # One attempt each: 401/403 are fatal (§7), the uplink does not retry them.
    for reason in ("missing", "invalid"):
        assert value(after, "echopanel_auth_failures_total", reason=reason) == value(
            before, "echopanel_auth_failures_total", reason=reason) + 1


def test_without_tokens_everything_is_open_and_the_start_up_says_so(tmp_path: Path) -> None:
    with IngestServer(tmp_path / "data", args=["--host", "127.0.0.1"]) as srv:
        f = frames(3, seed=42)
        with Client(srv.url) as c:
            c.hello("open-door")
            c.stream(0, f)
            c.end(3, 3 * FRAME)
        assert httpx.get(f"{srv.http}/v1/streams", timeout=10).status_code == 200
        assert httpx.get(f"{srv.http}/metrics", timeout=10).status_code == 200
        wav = httpx.get(f"{srv.http}/v1/streams/open-door/audio.wav", timeout=10).content
        assert np.array_equal(np.frombuffer(wav[-3 * FRAME * 2:], "<i2"),
                              np.frombuffer(b"".join(f), "<i2"))
    log = srv.log_path.read_text()
    assert "WARNING" in log and "AUTHENTICATION IS OFF" in log

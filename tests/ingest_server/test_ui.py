"""The web view's server side (ingest_server/ui.py, docs/ui.md): static files, the session
cookie for `<audio>`, the connection history and the level endpoints."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from ingest_server.auth import SessionSigner
from ingest_server.ui import MAX_WINDOWS, SESSION_COOKIE

from .client import FRAME, Client
from .harness import Running, in_process

TOKEN = "ui-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
LOUD = (16384).to_bytes(2, "little", signed=True) * FRAME  # a constant 0.5: -6.02 dBFS
QUIET = bytes(2 * FRAME)  # digital silence


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    with in_process(tmp_path_factory.mktemp("ui") / "data", tokens=(TOKEN,)) as running:
        yield running


@pytest.fixture(scope="module")
def reset_and_gap(srv: Running) -> str:
    """5 loud frames; the connection vanishes (1006); the resumed connection sends 2 loud
    frames twice (the second time they are replays, dropped: §4), a 2-frame gap and 3
    silent frames, and ends."""
    sid = "ui-reset-gap"
    with Client(srv.url, TOKEN) as c:
        welcome = c.hello(sid)
        c.stream(0, [LOUD] * 5)
        c.ws.socket.close()  # no close frame (a reset)
    srv.connections_finished(sid)
    with Client(srv.url, TOKEN) as c:
        c.hello(sid, resume=welcome)
        c.stream(5, [LOUD] * 2)
        for seq in (5, 6):  # already stored: dropped and counted, per item (§4)
            c.audio(seq, seq * FRAME, [LOUD])
        c.gap(7, 2, 7 * FRAME, 9 * FRAME)
        c.stream(9, [QUIET] * 3)
        c.end(12, 12 * FRAME)
    srv.connections_finished(sid)
    return sid


def test_static_files_are_served_without_auth_and_with_a_strict_policy(srv: Running) -> None:
    root = httpx.get(f"{srv.http}/ui", follow_redirects=False)
    assert root.status_code == 308 and root.headers["location"] == "/ui/"
    page = httpx.get(f"{srv.http}/ui/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in page.headers["content-security-policy"]
    assert 'src="app.js"' in page.text
    js = httpx.get(f"{srv.http}/ui/app.js")
    assert js.status_code == 200 and js.headers["content-type"].startswith("text/javascript")
    for missing in ["nope.js", "..%2Fui.py", "config.py"]:
        assert httpx.get(f"{srv.http}/ui/{missing}").status_code == 404
    assert httpx.get(f"{srv.http}/ui/config.json").json() == {"auth": True,
                                                               "session_ttl": 900.0}


def test_the_session_cookie_opens_only_the_audio_route(srv: Running, reset_and_gap: str) -> None:
    audio = f"{srv.http}/v1/ui/streams/{reset_and_gap}/audio.wav"
    assert httpx.post(f"{srv.http}/v1/ui/session").status_code == 401
    assert httpx.get(audio).status_code == 401
    made = httpx.post(f"{srv.http}/v1/ui/session", headers=AUTH)
    assert made.status_code == 204
    cookie = made.headers["set-cookie"]
    for attribute in ["HttpOnly", "SameSite=strict", "Path=/v1/ui", "Max-Age=900"]:
        assert attribute.lower() in cookie.lower()
    assert TOKEN not in cookie
    value = made.cookies[SESSION_COOKIE]
    jar = {SESSION_COOKIE: value}
    whole = httpx.get(audio, cookies=jar)
    assert whole.status_code == 200 and len(whole.content) == 44 + 12 * FRAME * 2
    part = httpx.get(audio, cookies=jar, headers={"Range": "bytes=44-99"})
    assert part.status_code == 206 and part.content == whole.content[44:100]
    assert httpx.head(audio, cookies=jar).headers["content-length"] == str(len(whole.content))
    # The same bytes as the REST route; the cookie opens nothing else, and a forged one fails.
    rest = httpx.get(f"{srv.http}/v1/streams/{reset_and_gap}/audio.wav", headers=AUTH)
    assert rest.content == whole.content
    assert httpx.get(f"{srv.http}/v1/streams", cookies=jar).status_code == 401
    forged = value.split(".")[0] + "." + "0" * 64
    assert httpx.get(audio, cookies={SESSION_COOKIE: forged}).status_code == 401
    # A token in the URL is refused even with a valid cookie (§10).
    assert httpx.get(audio + f"?x={TOKEN}", cookies=jar).status_code == 401


def test_sessions_expire_and_do_not_survive_a_new_key() -> None:
    signer = SessionSigner(ttl=60, key=b"k" * 32)
    value = signer.issue(now=1000.0)
    assert signer.valid(value, 1059.0)
    assert not signer.valid(value, 1060.0)
    assert not SessionSigner(ttl=60).valid(value, 1001.0)  # a restarted server
    assert not signer.valid("1060", 1001.0) and not signer.valid(None, 1001.0)
    assert not signer.valid("99999999999999." + value.split(".")[1], 1001.0)


def test_history_shows_the_reset_the_replays_the_gap_and_the_end(srv: Running,
                                                                  reset_and_gap: str) -> None:
    assert httpx.get(f"{srv.http}/v1/streams/{reset_and_gap}/history").status_code == 401
    body = httpx.get(f"{srv.http}/v1/streams/{reset_and_gap}/history", headers=AUTH).json()
    assert body["state"] == "finalized" and body["connected"] is False
    assert body["duplicates"] == 2 and body["dropped"] == 0
    entries = body["entries"]
    kinds = [e["kind"] for e in entries]
    assert kinds[:3] == ["connected", "disconnected", "connected"]
    assert entries[0]["first"] is True and entries[2]["first"] is False
    assert entries[1]["close_code"] in (1005, 1006)  # no close frame: abnormal
    assert entries[1]["replayed"] == 0
    gap = next(e for e in entries if e["kind"] == "gap")
    assert (gap["start_sample"], gap["end_sample"], gap["samples"]) == (7 * FRAME, 9 * FRAME,
                                                                        2 * FRAME)
    last_disconnect = [e for e in entries if e["kind"] == "disconnected"][-1]
    assert last_disconnect["replayed"] == 2
    assert entries[-1]["kind"] in ("finalized", "disconnected")
    assert next(e for e in entries if e["kind"] == "finalized")["end_reason"] == "ended"
    assert httpx.get(f"{srv.http}/v1/streams/nope/history", headers=AUTH).status_code == 404


def test_levels_are_rms_dbfs_per_window_with_gaps_as_null(srv: Running,
                                                          reset_and_gap: str) -> None:
    url = f"{srv.http}/v1/streams/{reset_and_gap}/levels"
    body = httpx.get(url, params={"step": FRAME / 16000}, headers=AUTH).json()
    assert body["step_samples"] == FRAME and body["samples"] == 12 * FRAME
    assert body["levels"] == [-6.02] * 7 + [None] * 2 + [-120.0] * 3
    default = httpx.get(url, headers=AUTH).json()  # at most MAX_WINDOWS windows
    assert default["step_samples"] == 2 and len(default["levels"]) == 6 * FRAME
    assert httpx.get(url, params={"step": 0}, headers=AUTH).status_code == 422
    assert httpx.get(url).status_code == 401


def test_levels_never_exceed_the_window_cap(tmp_path: Path) -> None:
    with in_process(tmp_path / "data") as running, Client(running.url) as c:
        c.hello("many-frames")
        c.stream(0, [LOUD] * 20)  # 6400 samples
        body = httpx.get(f"{running.http}/v1/streams/many-frames/levels",
                         params={"step": 1 / 16000}).json()
        assert len(body["levels"]) <= MAX_WINDOWS
        assert body["step_samples"] == 4 and set(body["levels"]) == {-6.02}

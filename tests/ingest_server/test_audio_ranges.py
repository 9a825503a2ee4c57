"""`GET /v1/streams/{id}/audio.wav` with `Range`, and `HEAD`, for open and finalized streams
(docs/operations.md "Downloading audio"): 206 with exactly the bytes of the whole body,
416 past the end, HEAD with the GET's headers and no body."""

from __future__ import annotations

import httpx
import pytest

from tests.support.server import IngestServer

from .client import FRAME, Client, frames

HEADER_BYTES = 44


@pytest.fixture(scope="module")
def streams(server: IngestServer) -> dict[str, bytes]:
    """One open stream (disconnected, so its durable prefix stays put) and one finalized;
    their whole WAVs."""
    with Client(server.url) as c:
        c.hello("ranges-open")
        c.stream(0, frames(7, seed=80))
    with Client(server.url) as c:
        c.hello("ranges-final")
        c.stream(0, frames(5, seed=81))
        c.end(5, 5 * FRAME)
    whole = {}
    for sid in ("ranges-open", "ranges-final"):
        resp = httpx.get(f"{server.http}/v1/streams/{sid}/audio.wav", timeout=10)
        assert resp.status_code == 200
        whole[sid] = resp.content
    assert len(whole["ranges-open"]) == HEADER_BYTES + 7 * FRAME * 2
    return whole


RANGES = [
    ("bytes=0-0", slice(0, 1)),
    ("bytes=100-999", slice(100, 1000)),
    ("bytes=44-", slice(44, None)),  # the audio alone
    ("bytes=-50", slice(-50, None)),
    ("bytes=1000-999999", slice(1000, None)),  # clipped at the end
    ("bytes=-999999", slice(0, None)),
]


@pytest.mark.parametrize("sid", ["ranges-open", "ranges-final"])
@pytest.mark.parametrize(("header", "part"), RANGES, ids=[r[0] for r in RANGES])
def test_a_range_gets_206_and_exactly_those_bytes(
    server: IngestServer, streams: dict[str, bytes], sid: str, header: str, part: slice,
) -> None:
    whole = streams[sid]
    resp = httpx.get(f"{server.http}/v1/streams/{sid}/audio.wav", headers={"Range": header},
                     timeout=10)
    assert resp.status_code == 206, resp.text
    expected = whole[part]
    assert resp.content == expected
    start = part.start if part.start is None or part.start >= 0 else len(whole) + part.start
    start = start or 0
    assert resp.headers["content-range"] == f"bytes {start}-{start + len(expected) - 1}/" \
        f"{len(whole)}"
    assert resp.headers["content-length"] == str(len(expected))


@pytest.mark.parametrize("sid", ["ranges-open", "ranges-final"])
def test_a_range_past_the_end_is_416(server: IngestServer, streams: dict[str, bytes],
                                     sid: str) -> None:
    size = len(streams[sid])
    resp = httpx.get(f"{server.http}/v1/streams/{sid}/audio.wav",
                     headers={"Range": f"bytes={size}-"}, timeout=10)
    assert resp.status_code == 416
    assert resp.headers["content-range"] == f"bytes */{size}"


def test_open_stream_ignores_what_it_cannot_serve_as_one_range(
    server: IngestServer, streams: dict[str, bytes],
) -> None:
    url = f"{server.http}/v1/streams/ranges-open/audio.wav"
    for headers in ({"Range": "bytes=0-1,5-9"}, {"Range": "pages=1-2"},
                    {"Range": "bytes=0-9", "If-Range": '"x"'}):
        resp = httpx.get(url, headers=headers, timeout=10)
        assert resp.status_code == 200 and resp.content == streams["ranges-open"], headers


@pytest.mark.parametrize("sid", ["ranges-open", "ranges-final"])
def test_head_has_the_get_headers_and_no_body(server: IngestServer, streams: dict[str, bytes],
                                              sid: str) -> None:
    url = f"{server.http}/v1/streams/{sid}/audio.wav"
    head = httpx.head(url, timeout=10)
    get = httpx.get(url, timeout=10)
    assert head.status_code == 200 and head.content == b""
    for name in ("content-length", "content-type", "content-disposition", "accept-ranges"):
        assert head.headers[name] == get.headers[name], name
    assert head.headers["content-length"] == str(len(streams[sid]))
    ranged = httpx.head(url, headers={"Range": "bytes=10-19"}, timeout=10)
    assert ranged.status_code == 206 and ranged.headers["content-length"] == "10"
    assert httpx.head(url.replace(sid, "no-such-stream"), timeout=10).status_code == 404

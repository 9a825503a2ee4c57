"""The WebSocket protocol (docs/protocol.md) and REST API against the real server process."""

from __future__ import annotations

import io
import json
from dataclasses import replace

import httpx
import numpy as np
import pytest
import soundfile as sf
from websockets.exceptions import InvalidStatus

from tests.support.server import IngestServer
from uplink.wire import (
    HEADER,
    CloseCode,
    Hello,
    Welcome,
    encode_audio,
    encode_control,
    encode_gap,
)

from .client import FMT, FRAME, Client, Closed, frames


def stored(server: IngestServer, sid: str) -> np.ndarray:
    """The stream's audio as served over REST, decoded by libsndfile (not our code)."""
    resp = httpx.get(f"{server.http}/v1/streams/{sid}/audio.wav", timeout=10)
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"] == "audio/wav"
    data, rate = sf.read(io.BytesIO(resp.content), dtype="int16")
    assert rate == FMT.sample_rate
    return np.asarray(data)


def pcm(*parts: bytes | int) -> np.ndarray:
    """Expected samples: bytes are audio, ints are that many samples of silence."""
    return np.concatenate([np.frombuffer(p, "<i2") if isinstance(p, bytes) else np.zeros(p, "<i2")
                           for p in parts])


def detail(server: IngestServer, sid: str) -> dict[str, object]:
    resp = httpx.get(f"{server.http}/v1/streams/{sid}", timeout=10)
    assert resp.status_code == 200, resp.text
    result: dict[str, object] = resp.json()
    return result


def test_stream_is_stored_sample_exactly(server: IngestServer) -> None:
    f = frames(50, seed=1)
    last = frames(1, seed=2)[0][: 123 * 2]  # the last frame of a stream may be shorter
    with Client(server.url) as c:
        w = c.hello("exact")
        assert (w.next_seq, w.resumed, w.finalized, w.epoch) == (0, False, False, 1)
        assert w.max_message_bytes == 1 << 20 and w.session_timeout == 60.0  # development
        c.stream(0, f)
        c.audio(50, 50 * FRAME, [last])
        ended = c.end(51, 50 * FRAME + 123)
    assert (ended.next_seq, ended.next_sample, ended.gaps) == (51, 50 * FRAME + 123, 0)
    assert np.array_equal(stored(server, "exact"), pcm(*f, last))
    on_disk = server.data_dir / "streams" / "exact"
    assert sorted(p.name for p in on_disk.iterdir()) == ["audio.wav", "meta.json"]
    meta = json.loads((on_disk / "meta.json").read_text())
    assert (meta["state"], meta["end_reason"], meta["frames"]) == ("finalized", "ended", 51)
    assert w.credential not in json.dumps(meta)  # only the hash is stored


def test_duplicates_are_dropped_and_reacked_and_straddling_items_trimmed(
    server: IngestServer,
) -> None:
    f = frames(20, seed=3)
    with Client(server.url) as c:
        c.hello("dups")
        c.stream(0, f[:10])
        c.audio(5, 5 * FRAME, [f[5]])  # duplicate, nothing pending: re-acked at once (§4)
        assert c.wait_acked(10).next_seq == 10
        c.audio(3, 3 * FRAME, f[3:7])  # coalesced duplicate run
        assert c.wait_acked(10).next_seq == 10
        c.audio(8, 8 * FRAME, f[8:16])  # straddles next_seq 10: only 10..15 are new
        assert c.wait_acked(16).next_sample == 16 * FRAME
        c.stream(16, f[16:])
        assert detail(server, "dups")["duplicates"] == 2  # items, not frames
        c.end(20, 20 * FRAME)
    assert np.array_equal(stored(server, "dups"), pcm(*f))


def test_gap_is_recorded_and_stored_as_silence(server: IngestServer) -> None:
    f = frames(8, seed=4)
    with Client(server.url) as c:
        c.hello("gappy")
        c.stream(0, f[:4])
        c.gap(4, 3, 4 * FRAME, 7 * FRAME + 50)  # seqs 4..6 lost, plus 50 extra samples
        c.wait_acked(7)
        for i, frame in enumerate(f[4:]):
            c.audio(7 + i, 7 * FRAME + 50 + i * FRAME, [frame])
        c.wait_acked(11)
        ended = c.end(11, 11 * FRAME + 50)
    assert ended.gaps == 1
    d = detail(server, "gappy")
    assert d["gaps"] == [{"first_seq": 4, "end_seq": 7, "start_sample": 4 * FRAME,
                          "end_sample": 7 * FRAME + 50, "started": None}]
    assert np.array_equal(stored(server, "gappy"), pcm(*f[:4], 3 * FRAME + 50, *f[4:]))


BAD_FIRST_MESSAGES: list[tuple[str | bytes, int]] = [
    ("{not json", CloseCode.BAD_HANDSHAKE),
    (encode_audio(1, 0, 0, 1, bytes(640)), CloseCode.BAD_HANDSHAKE),  # binary before hello
    ('{"type": "ping", "t": 1}', CloseCode.BAD_HANDSHAKE),
    ('{"type": "hello", "protocol": 1, "format": {"sample_rate": 16000, "channels": 1, '
     '"sample_type": "int16"}, "frame_samples": 320, "resume": null}', CloseCode.BAD_HANDSHAKE),
    ('{"type": "hello", "protocol": 2}', CloseCode.UNSUPPORTED_DATA),
    ('{"type": "hello", "protocol": 1, "stream_id": "x", "format": {"sample_rate": 7, '
     '"channels": 1, "sample_type": "int16"}, "frame_samples": 1, "resume": null}',
     CloseCode.UNSUPPORTED_DATA),
    ('{"type": "hello", "protocol": 1, "stream_id": "../../etc", "format": {"sample_rate": '
     '16000, "channels": 1, "sample_type": "int16"}, "frame_samples": 320, "resume": null}',
     CloseCode.BAD_HANDSHAKE),
]


def test_bad_handshakes_are_refused_while_another_stream_carries_on(server: IngestServer) -> None:
    f = frames(len(BAD_FIRST_MESSAGES) + 2, seed=5)
    with Client(server.url) as good:
        good.hello("bystander")
        good.stream(0, f[:1])
        for i, (message, code) in enumerate(BAD_FIRST_MESSAGES):
            with Client(server.url) as bad:
                bad.send(message)
                closed = bad.expect_close()
                assert closed.code == code, (message, closed)
                assert closed.reason
            good.stream(1 + i, f[1 + i: 2 + i])
        good.stream(len(f) - 1, f[-1:])
        good.end(len(f), len(f) * FRAME)
    assert np.array_equal(stored(server, "bystander"), pcm(*f))
    assert not (server.data_dir / "etc").exists()


def test_resume_refusals(server: IngestServer) -> None:
    with Client(server.url) as c:
        w = c.hello("owned")
        c.stream(0, frames(2, seed=6))
    forged = replace(w, credential="forged-credential")
    other_epoch = replace(w, epoch=7)
    cases: list[tuple[str, Welcome | None, int]] = [
        ("owned", None, CloseCode.STREAM_CONFLICT),  # create an existing id
        ("no-such-stream", w, CloseCode.UNKNOWN_STREAM),
        ("owned", forged, CloseCode.STREAM_CONFLICT),
        ("owned", other_epoch, CloseCode.STREAM_CONFLICT),
    ]
    for sid, resume, code in cases:
        with Client(server.url) as c:
            with pytest.raises(Closed) as e:
                c.hello(sid, resume=resume)
            assert e.value.code == code, (sid, e.value)
    with Client(server.url) as c:  # format differs from the stream's
        with pytest.raises(Closed) as e:
            c.hello("owned", resume=w, frame_samples=160)
        assert e.value.code == CloseCode.BAD_HANDSHAKE
    with Client(server.url) as c:  # the right credential still works, from where it was
        assert c.hello("owned", resume=w).next_seq == 2


def test_takeover_closes_the_old_connection_with_4411(server: IngestServer) -> None:
    f = frames(12, seed=7)
    with Client(server.url) as old, Client(server.url) as new:
        w = old.hello("taken-over")
        old.stream(0, f[:6])
        w2 = new.hello("taken-over", resume=w)
        assert w2.resumed and w2.next_seq == 6 and w2.credential == w.credential
        assert old.expect_close().code == CloseCode.SUPERSEDED
        new.stream(6, f[6:])
        new.end(12, 12 * FRAME)
    assert np.array_equal(stored(server, "taken-over"), pcm(*f))


VIOLATIONS: list[tuple[str, bytes | str, int]] = [
    ("jump", encode_audio(1, 3, 3 * FRAME, 1, bytes(640)), CloseCode.PROTOCOL_ERROR),
    ("sample", encode_audio(1, 2, 2 * FRAME + 1, 1, bytes(640)), CloseCode.PROTOCOL_ERROR),
    ("epoch", encode_audio(5, 2, 2 * FRAME, 1, bytes(640)), CloseCode.PROTOCOL_ERROR),
    ("gap-end", encode_gap(1, 2, 2 * FRAME, 1, 10), CloseCode.PROTOCOL_ERROR),
    ("flags", HEADER.pack(1, 4, 1, 1, 2, 2 * FRAME) + bytes(640), CloseCode.INVALID_PAYLOAD),
    ("long-frame", encode_audio(1, 2, 2 * FRAME, 1, bytes(642)), CloseCode.INVALID_PAYLOAD),
    ("odd-bytes", encode_audio(1, 2, 2 * FRAME, 1, bytes(639)), CloseCode.INVALID_PAYLOAD),
    ("huge", encode_audio(1, 2, 2 * FRAME, 1, bytes((1 << 20) + 2)), CloseCode.MESSAGE_TOO_BIG),
    ("unknown-type", '{"type": "shout"}', CloseCode.INVALID_PAYLOAD),
    ("second-hello", encode_control(Hello("x", FMT, FRAME)), CloseCode.INVALID_PAYLOAD),
    ("big-control", '{"type": "ping", "t": 1, "pad": "' + "x" * 5000 + '"}',
     CloseCode.MESSAGE_TOO_BIG),
    ("end-mismatch", '{"type": "end", "next_seq": 3, "next_sample": 960}',
     CloseCode.PROTOCOL_ERROR),
]


@pytest.mark.parametrize(("name", "message", "code"), VIOLATIONS, ids=[v[0] for v in VIOLATIONS])
def test_violations_close_with_documented_code_and_keep_stored_data(
    server: IngestServer, name: str, message: bytes | str, code: int
) -> None:
    sid = f"violation-{name}"
    f = frames(4, seed=8)
    with Client(server.url) as c:
        w = c.hello(sid)
        c.stream(0, f[:2])
        c.send(message)
        closed = c.expect_close()
    assert closed.code == code, closed
    with Client(server.url) as c:  # nothing of the bad item was stored; the stream goes on
        assert c.hello(sid, resume=w).next_seq == 2
        c.stream(2, f[2:])
        c.end(4, 4 * FRAME)
    assert np.array_equal(stored(server, sid), pcm(*f))


def test_finalized_stream_answers_end_and_refuses_items(server: IngestServer) -> None:
    f = frames(3, seed=9)
    with Client(server.url) as c:
        w = c.hello("done")
        c.stream(0, f)
        first = c.end(3, 3 * FRAME)
    with Client(server.url) as c:
        w2 = c.hello("done", resume=w)
        assert w2.finalized and (w2.next_seq, w2.next_sample) == (3, 3 * FRAME)
        assert c.end(3, 3 * FRAME) == first  # idempotent (§6)
    with Client(server.url) as c:
        c.hello("done", resume=w)
        c.audio(3, 3 * FRAME, frames(1, seed=10))
        assert c.expect_close().code == CloseCode.STREAM_FINALIZED


def test_rest_api(server: IngestServer) -> None:
    f = frames(5, seed=11)
    with Client(server.url) as c:
        c.hello("rest-open")
        c.stream(0, f)
        # An open stream's audio is what is durable so far.
        assert np.array_equal(stored(server, "rest-open"), pcm(*f))
        d = detail(server, "rest-open")
        assert d["state"] == "open" and d["connected"] is True and d["next_seq"] == 5
        assert d["samples"] == 5 * FRAME and d["duration_seconds"] == 0.1

    listing = httpx.get(f"{server.http}/v1/streams", timeout=10).json()["streams"]
    row = next(s for s in listing if s["stream_id"] == "rest-open")
    assert row["format"] == FMT.to_json() and row["frames"] == 5 and row["end_reason"] is None
    for bad in ["no-such", "..", "a..b"]:
        assert httpx.get(f"{server.http}/v1/streams/{bad}", timeout=10).status_code == 404
        assert httpx.get(f"{server.http}/v1/streams/{bad}/audio.wav",
                         timeout=10).status_code == 404
    health = httpx.get(f"{server.http}/healthz", timeout=10).json()
    assert health["status"] == "ok" and health["streams"]["total"] >= 1
    paths = httpx.get(f"{server.http}/openapi.json", timeout=10).json()["paths"]
    assert {"/v1/streams", "/v1/streams/{stream_id}", "/v1/streams/{stream_id}/audio.wav",
            "/healthz"} <= set(paths)


def test_websocket_upgrade_on_a_wrong_path_is_404(server: IngestServer) -> None:
    with pytest.raises(InvalidStatus) as e:
        Client(server.url.replace("/v1/stream", "/v1/nope"))
    assert e.value.response.status_code == 404

"""The connection core (ingest_server/core.py) on a float clock: every close code of
docs/protocol.md §7 and every state, with no socket, no event loop and no real time.

Close codes: 1000 end; 1001 and 1005 (the peer's) recorded; 1002 seq jump, epoch, end
mismatch; 1003 protocol version; 1007 malformed item or control; 1008 flood, stream length,
another token's stream, a peer not reading; 1009 oversized; 1011 internal error; 1012
shutdown, journals closed; 1013 storage failure (write, sync, registry), too many streams;
4400 bad hello; 4404 unknown stream; 4408 handshake and idle timeouts; 4409 conflict; 4410
items to a finalized stream; 4411 superseded.

The stream is an in-memory fake (the core's AttachedStream and StreamWriter protocols), so
these tests say what the core decides; tests/ingest_server/test_server.py and friends prove
the same against the real server."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import pytest

from ingest_server.config import ServerConfig
from ingest_server.core import (
    ACCEPTS,
    TRANSITIONS,
    Abort,
    Action,
    Attach,
    Close,
    Detach,
    Event,
    Finalize,
    FinalSync,
    IllegalEvent,
    RequestSync,
    Send,
    ServerCore,
    StartCommits,
    State,
)
from ingest_server.errors import BadInput, Refusal, StorageUnavailable
from ingest_server.metrics import Metrics
from ingest_server.storage.interface import (
    EndReason,
    Gap,
    Position,
    StreamMeta,
    StreamState,
)
from tests.support.clock import FakeClock
from uplink.audio import AudioFormat, SampleType
from uplink.wire import (
    Ack,
    CloseCode,
    End,
    Ended,
    Hello,
    Ping,
    Pong,
    Welcome,
    decode_control,
    encode_audio,
    encode_control,
    encode_gap,
)

FMT = AudioFormat(16000, 1, SampleType.INT16)
FRAME = 320
PAYLOAD = bytes(FRAME * FMT.block_align)
CONFIG = ServerConfig(handshake_timeout=5.0, idle_timeout=20.0, max_message_rate=100.0,
                      message_burst=10)


@dataclass
class MemoryWriter:
    """A StreamWriter that keeps nothing but positions (and can be made to fail)."""

    next_seq: int = 0
    next_sample: int = 0
    frames: int = 0
    gaps: list[Gap] = field(default_factory=list)
    size: int = 8
    fail: bool = False

    @property
    def position(self) -> Position:
        return Position(self.size, self.next_seq, self.next_sample, self.frames, len(self.gaps))

    def append_audio(self, seq: int, count: int, sample_pos: int, nsamples: int,
                     payload: bytes | memoryview) -> None:
        if self.fail:
            raise OSError(28, "No space left on device")
        self.next_seq, self.next_sample = seq + count, sample_pos + nsamples
        self.frames += count
        self.size += 40 + len(payload)

    def append_gap(self, seq: int, count: int, start_sample: int, end_sample: int) -> None:
        self.next_seq, self.next_sample = seq + count, end_sample
        self.gaps.append(Gap(seq, seq + count, start_sample, end_sample))
        self.size += 40

    def rollback(self, to: Position) -> None:
        raise AssertionError("the core never rolls back")

    def close(self) -> None:
        pass


@dataclass
class MemoryStream:
    meta: StreamMeta
    journal: MemoryWriter | None
    durable: Position
    duplicates: int = 0

    @property
    def stream_id(self) -> str:
        return self.meta.stream_id

    @property
    def finalized(self) -> bool:
        return self.meta.state is StreamState.FINALIZED

    def sync(self) -> Position:
        """What the flusher does: everything written becomes durable."""
        assert self.journal is not None
        self.durable = self.journal.position
        return self.durable


def open_stream(sid: str = "s1", finalized: bool = False) -> MemoryStream:
    meta = StreamMeta(sid, FMT, FRAME, 1, "0" * 64, "2026-01-01T00:00:00Z")
    if finalized:
        meta.state, meta.end_reason = StreamState.FINALIZED, EndReason.ENDED
        return MemoryStream(meta, None, Position(0, 0, 0))
    return MemoryStream(meta, MemoryWriter(), Position(8, 0, 0))


def hello(sid: str = "s1", frame_samples: int = FRAME) -> str:
    return encode_control(Hello(sid, FMT, frame_samples))


def audio(seq: int, count: int = 1) -> bytes:
    return encode_audio(1, seq, seq * FRAME, count, PAYLOAD * count)


def sent(actions: tuple[Action, ...]) -> list[object]:
    return [decode_control(a.text) for a in actions if isinstance(a, Send)]


def closed(actions: tuple[Action, ...]) -> tuple[int, str]:
    closes = [a for a in actions if isinstance(a, Close)]
    assert len(closes) == 1, actions
    return closes[0].code, closes[0].reason


class Harness:
    """A core, its clock, and what the adapter would do with Attach and RequestSync."""

    def __init__(self, config: ServerConfig = CONFIG) -> None:
        self.clock = FakeClock(100.0)
        self.metrics = Metrics()
        self.core = ServerCore(config, self.metrics, self.clock.now)

    def streaming(self, stream: MemoryStream | None = None) -> MemoryStream:
        stream = stream or open_stream()
        actions = self.core.receive_text(hello(stream.stream_id), self.clock.now)
        assert isinstance(actions[0], Attach) and self.core.state is State.ATTACHING
        actions = self.core.attached(stream, "cred", False, self.clock.now)
        welcome = sent(actions)[0]
        assert isinstance(welcome, Welcome) and welcome.next_seq == stream.durable.next_seq
        return stream


# -- §2 handshake ---------------------------------------------------------------------------


def test_hello_attaches_then_welcomes_and_starts_group_commit() -> None:
    h = Harness()
    assert h.core.state is State.AWAITING_HELLO
    (attach,) = h.core.receive_text(hello(), h.clock.now)
    assert isinstance(attach, Attach) and attach.hello.stream_id == "s1"
    actions = h.core.attached(open_stream(), "cred", False, h.clock.now)
    assert isinstance(actions[1], StartCommits) and h.core.state is State.STREAMING
    welcome = sent(actions)[0]
    assert isinstance(welcome, Welcome) and welcome.credential == "cred"
    assert (welcome.idle_timeout, welcome.finalized) == (CONFIG.idle_timeout, False)


@pytest.mark.parametrize(("first", "code"), [
    ("not json", CloseCode.BAD_HANDSHAKE),  # 4400: not a hello
    (encode_control(Ping(1.0)), CloseCode.BAD_HANDSHAKE),
    (json.dumps({"type": "hello", "protocol": 9, "stream_id": "s", "frame_samples": 320,
                 "format": {"sample_rate": 16000, "channels": 1, "sample_type": "int16"}}),
     CloseCode.UNSUPPORTED_DATA),  # 1003: a protocol version we do not speak
    ("x" * 70000, CloseCode.MESSAGE_TOO_BIG),  # 1009: an oversized control message
    (hello("a..b"), CloseCode.BAD_HANDSHAKE),  # invalid id
    (hello(frame_samples=16001), CloseCode.BAD_HANDSHAKE),  # > max_frame_seconds
    (hello(frame_samples=80), CloseCode.BAD_HANDSHAKE),  # 200 frames/s > half the rate limit
])
def test_a_bad_first_message_closes(first: str, code: int) -> None:
    h = Harness()
    actions = h.core.receive_text(first, h.clock.now)
    assert closed(actions)[0] == code and h.core.state is State.CLOSING
    assert h.core.close_code == code


def test_a_binary_first_message_is_4400() -> None:
    h = Harness()
    assert closed(h.core.receive_binary(audio(0), h.clock.now)) == (
        CloseCode.BAD_HANDSHAKE, "first message must be a text hello")


@pytest.mark.parametrize("error", [
    Refusal(CloseCode.UNKNOWN_STREAM, "unknown stream s1"),  # 4404
    Refusal(CloseCode.STREAM_CONFLICT, "wrong credential or epoch"),  # 4409
    Refusal(CloseCode.POLICY_VIOLATION, "stream belongs to another token"),  # 1008
    Refusal(CloseCode.TRY_AGAIN_LATER, "too many open streams (1)"),  # 1013
    Refusal(CloseCode.SERVICE_RESTART, "server shutting down"),  # 1012
    StorageUnavailable(),  # 1013 storage failure
])
def test_the_registry_refusing_closes_with_its_code(error: Refusal | StorageUnavailable) -> None:
    h = Harness()
    h.core.receive_text(hello(), h.clock.now)
    assert closed(h.core.failed(error)) == (error.code, error.reason)
    assert h.core.finished() == ()  # never attached: nothing to detach


def test_handshake_timeout_is_4408_and_also_covers_a_slow_attach() -> None:
    h = Harness()
    assert h.core.next_deadline() == 105.0
    assert h.core.tick(104.9) == ()
    h.core.receive_text(hello(), 101.0)  # the registry is slow (a takeover)
    assert h.core.next_deadline() == 105.0
    assert closed(h.core.tick(105.0)) == (CloseCode.HANDSHAKE_TIMEOUT, "no hello within 5 s")
    # the stream arrives after all: no welcome, and the adapter lets go of it when it finishes
    assert h.core.attached(open_stream(), "cred", False, 106.0) == ()
    assert h.core.finished() == (Detach(),)


def test_a_finalized_stream_is_read_only_4410_for_items() -> None:
    h = Harness()
    h.streaming(open_stream(finalized=True))
    assert h.core.state is State.READ_ONLY
    assert sent(h.core.receive_text(encode_control(Ping(2.0)), h.clock.now)) == [Pong(2.0)]
    assert closed(h.core.receive_binary(audio(0), h.clock.now)) == (
        CloseCode.STREAM_FINALIZED, "stream is finalized")


def test_end_on_a_finalized_stream_answers_ended_again() -> None:
    h = Harness()
    h.streaming(open_stream(finalized=True))
    (fin,) = h.core.receive_text(encode_control(End(0, 0)), h.clock.now)
    assert isinstance(fin, Finalize) and h.core.state is State.ENDING
    actions = h.core.finalized(Ended(0, 0, 0))
    assert sent(actions) == [Ended(0, 0, 0)] and closed(actions) == (1000, "stream ended")


# -- §3 items, §4 group commit and acks ------------------------------------------------------


def test_items_are_appended_and_one_sync_acks_a_batch() -> None:
    h = Harness()
    stream = h.streaming()
    assert h.core.receive_binary(audio(0), 100.1) == (RequestSync(100.1),)
    assert h.core.receive_binary(audio(1), 100.2) == ()  # rides the sync in flight
    assert stream.journal is not None and stream.journal.next_seq == 2
    actions = h.core.synced(stream.sync(), 100.3)
    assert sent(actions) == [Ack(2, 2 * FRAME)]  # one cumulative ack
    assert h.core.receive_binary(audio(2), 100.4) == (RequestSync(100.4),)


def test_items_written_during_a_sync_ask_for_the_next_one() -> None:
    h = Harness()
    stream = h.streaming()
    h.core.receive_binary(audio(0), 100.1)
    durable = stream.sync()  # the sync started here ...
    h.core.receive_binary(audio(1), 100.2)  # ... this item arrived while it ran
    actions = h.core.synced(durable, 100.3)
    assert sent(actions) == [Ack(1, FRAME)] and actions[-1] == RequestSync(100.2)
    assert sent(h.core.synced(stream.sync(), 100.4)) == [Ack(2, 2 * FRAME)]


def test_a_duplicate_is_reacked_at_once_only_when_nothing_is_pending() -> None:
    h = Harness()
    stream = h.streaming()
    h.core.receive_binary(audio(0, 2), 100.1)
    assert h.core.receive_binary(audio(0), 100.2) == ()  # the coming ack covers it
    h.core.synced(stream.sync(), 100.3)
    assert sent(h.core.receive_binary(audio(1), 100.4)) == [Ack(2, 2 * FRAME)]
    assert stream.duplicates == 2 and h.metrics.duplicates == 2


def test_a_gap_is_an_item_too() -> None:
    h = Harness()
    stream = h.streaming()
    h.core.receive_binary(encode_gap(1, 0, 0, 3, 5 * FRAME), 100.1)
    assert stream.journal is not None and stream.journal.next_sample == 5 * FRAME


@pytest.mark.parametrize(("item", "code"), [
    (audio(1), CloseCode.PROTOCOL_ERROR),  # 1002: seq jumps without a GAP
    (encode_audio(2, 0, 0, 1, PAYLOAD), CloseCode.PROTOCOL_ERROR),  # wrong epoch
    (b"\x01" * 10, CloseCode.INVALID_PAYLOAD),  # 1007: malformed header
    (encode_audio(1, 0, 0, 1, PAYLOAD + b"\x00"), CloseCode.INVALID_PAYLOAD),  # ragged
    (encode_audio(1, 0, 0, 1, b"\x00" * (CONFIG.max_message_bytes + 2)),
     CloseCode.MESSAGE_TOO_BIG),  # 1009
])
def test_bad_items_close_with_their_code(item: bytes, code: int) -> None:
    h = Harness()
    h.streaming()
    assert closed(h.core.receive_binary(item, 100.1))[0] == code
    assert h.core.receive_binary(audio(0), 100.2) == ()  # CLOSING: nothing more is processed


def test_a_stream_past_its_length_limit_is_1008() -> None:
    h = Harness(ServerConfig(max_stream_seconds=0.04))  # two frames
    h.streaming()
    h.core.receive_binary(audio(0, 2), 100.1)
    assert closed(h.core.receive_binary(audio(2), 100.2))[0] == CloseCode.POLICY_VIOLATION


def test_a_failed_journal_write_is_1013_and_counted() -> None:
    h = Harness()
    stream = h.streaming()
    assert stream.journal is not None
    stream.journal.fail = True
    assert closed(h.core.receive_binary(audio(0), 100.1)) == (1013, "storage failure")
    assert h.metrics.storage_errors["write"] == 1


def test_a_failed_sync_is_1013_and_acks_nothing() -> None:
    h = Harness()
    h.streaming()
    h.core.receive_binary(audio(0), 100.1)
    actions = h.core.sync_failed(StorageUnavailable())
    assert closed(actions) == (1013, "storage failure") and sent(actions) == []


def test_journals_closed_under_us_is_1012() -> None:
    h = Harness()
    stream = h.streaming()
    stream.journal = None  # the registry closed every journal: the server is stopping
    assert closed(h.core.receive_binary(audio(0), 100.1)) == (1012, "server restarting")


# -- §5 limits, §6 end ------------------------------------------------------------------------


def test_a_message_flood_is_1008() -> None:
    h = Harness()
    h.streaming()
    now = 100.0
    for _ in range(CONFIG.message_burst):
        assert h.core.receive_text(encode_control(Ping(1.0)), now)
    assert closed(h.core.receive_text(encode_control(Ping(1.0)), now)) == (
        CloseCode.POLICY_VIOLATION, "more than 100 messages/s")


def test_end_syncs_finalizes_answers_ended_and_closes_1000() -> None:
    h = Harness()
    stream = h.streaming()
    h.core.receive_binary(audio(0), 100.1)
    (fin,) = h.core.receive_text(encode_control(End(1, FRAME)), 100.2)
    assert fin == Finalize(End(1, FRAME)) and h.core.state is State.ENDING
    assert sent(h.core.synced(stream.sync(), 100.3)) == [Ack(1, FRAME)]  # the last sync
    actions = h.core.finalized(Ended(1, FRAME, 0))
    assert sent(actions) == [Ended(1, FRAME, 0)] and closed(actions) == (1000, "stream ended")
    assert h.core.close_code == CloseCode.NORMAL


def test_end_at_the_wrong_position_is_1002() -> None:
    h = Harness()
    h.streaming()
    h.core.receive_text(encode_control(End(5, 5 * FRAME)), 100.1)
    assert closed(h.core.failed(BadInput(1002, "end at seq 5")))[0] == 1002


def test_a_second_end_and_items_after_end_are_not_processed() -> None:
    h = Harness()
    h.streaming()
    h.core.receive_text(encode_control(End(0, 0)), 100.1)
    # (the adapter reads nothing while it finalizes; if it did, nothing would happen)
    assert h.core.receive_text(encode_control(End(0, 0)), 100.2) == ()
    assert h.core.receive_binary(audio(0), 100.2) == ()
    h.core.finalized(Ended(0, 0, 0))
    assert h.core.receive_text(encode_control(End(0, 0)), 100.3) == ()  # CLOSING


@pytest.mark.parametrize("text", [
    encode_control(Ack(0, 0)),  # a server message from the client: 1007
    '{"type": "nope"}',
])
def test_unexpected_control_messages_are_1007(text: str) -> None:
    h = Harness()
    h.streaming()
    assert closed(h.core.receive_text(text, 100.1))[0] == CloseCode.INVALID_PAYLOAD


# -- timers, takeover, shutdown, faults ----------------------------------------------------------


def test_idle_timeout_is_4408_and_any_message_counts_as_life() -> None:
    h = Harness()
    h.streaming()  # at 100.0
    assert h.core.next_deadline() == 120.0
    h.core.receive_text(encode_control(Ping(1.0)), 110.0)
    assert h.core.tick(120.0) == () and h.core.next_deadline() == 130.0
    assert closed(h.core.tick(130.0)) == (CloseCode.HANDSHAKE_TIMEOUT,
                                          "nothing received for 20 s")
    assert h.core.next_deadline() is None


def test_a_peer_that_stops_reading_is_dropped_and_counted_1008() -> None:
    h = Harness()
    h.streaming()
    h.core.send_started(101.0)  # an ack that never leaves
    h.core.receive_text(encode_control(Ping(1.0)), 115.0)  # it still sends to us
    assert h.core.next_deadline() == 121.0
    (abort,) = h.core.tick(121.0)
    assert isinstance(abort, Abort) and h.core.state is State.CLOSED
    assert h.core.close_code == CloseCode.POLICY_VIOLATION


def test_superseded_is_4411() -> None:
    h = Harness()
    h.streaming()
    assert closed(h.core.supersede()) == (4411, "superseded by a newer connection")
    assert h.core.supersede() == ()  # the first close wins


def test_shutdown_syncs_acks_and_closes_1012() -> None:
    h = Harness()
    stream = h.streaming()
    h.core.receive_binary(audio(0), 100.1)
    assert h.core.shutdown() == (FinalSync(),)
    assert h.core.receive_binary(audio(1), 100.2) == ()  # nothing more is processed
    actions = h.core.final_synced(stream.sync())
    assert sent(actions) == [Ack(1, FRAME)] and closed(actions) == (1012, "server restarting")


def test_shutdown_closes_1012_even_when_the_last_sync_fails() -> None:
    h = Harness()
    h.streaming()
    h.core.shutdown()
    assert closed(h.core.final_synced(None)) == (1012, "server restarting")


def test_shutdown_before_the_hello_just_closes() -> None:
    assert closed(Harness().core.shutdown()) == (1012, "server restarting")


def test_an_internal_error_is_1011() -> None:
    h = Harness()
    h.streaming()
    assert closed(h.core.internal_error()) == (1011, "internal server error")


def test_the_peers_close_code_is_recorded_1001_and_1005() -> None:
    h = Harness()
    h.streaming()
    assert h.core.peer_closed(1001) == () and h.core.state is State.CLOSED
    assert h.core.close_code == 1001 and h.core.finished() == (Detach(),)
    other = Harness()
    other.core.peer_closed(None)
    assert other.core.close_code == 1005


# -- the state machine itself ----------------------------------------------------------------------


def test_an_illegal_event_names_the_state() -> None:
    h = Harness()
    with pytest.raises(IllegalEvent, match="attached in state awaiting hello"):
        h.core.attached(open_stream(), "cred", False, 100.0)
    h.core.peer_closed(1000)
    with pytest.raises(IllegalEvent, match="text in state closed"):
        h.core.receive_text(encode_control(Ping(1.0)), 100.0)


def test_every_state_is_reachable_and_every_event_accepted_somewhere() -> None:
    reachable, todo = {State.AWAITING_HELLO}, [State.AWAITING_HELLO]
    while todo:
        for nxt in TRANSITIONS[todo.pop()] - reachable:
            reachable.add(nxt)
            todo.append(nxt)
    assert reachable == set(State)
    assert all(ACCEPTS[e] for e in Event)

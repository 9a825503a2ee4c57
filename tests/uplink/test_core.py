"""The sans-I/O core driven with no socket and a fake clock (time is an argument)."""

from __future__ import annotations

import json
import random
from dataclasses import replace

import pytest

from uplink import wire
from uplink.audio import AudioFormat, SampleType
from uplink.config import UplinkConfig
from uplink.core import (
    Action,
    CloseConnection,
    Failed,
    Finished,
    OpenConnection,
    SendBinary,
    SendText,
    State,
    StateChanged,
    UplinkCore,
)
from uplink.errors import (
    ConnectFailed,
    HandshakeRefused,
    LocalProtocolError,
    RetryBudgetExhausted,
    ServerProtocolError,
    StreamClosed,
    error_for_http_status,
)
from uplink.policy import Backoff, BackoffConfig, BreakerConfig, BreakerState, RetryBudgetConfig
from uplink.ring import OverflowPolicy, RingBuffer

FMT = AudioFormat(16_000, 1, SampleType.INT16)
FRAME = 320
WALL = 1_800_000_000.0  # the fake wall clock the test rings read


def make(
    frames: int = 0, capacity: float = 10.0, config: UplinkConfig | None = None, **kw: object
) -> UplinkCore:
    policy = kw.pop("policy", OverflowPolicy.DROP_OLDEST)
    ring = RingBuffer(FMT, FRAME, capacity, policy, wall_clock=lambda: WALL)  # type: ignore[arg-type]
    for i in range(frames):
        ring.push(bytes([i % 256]) * FRAME * 2)
    return UplinkCore(ring, "s1", config or UplinkConfig(), random.Random(42))


def welcome(next_seq: int = 0, next_sample: int | None = None, **kw: object) -> str:
    msg = wire.Welcome(
        stream_id="s1",
        epoch=1,
        credential="cred",
        next_seq=next_seq,
        next_sample=next_seq * FRAME if next_sample is None else next_sample,
        resumed=next_seq > 0,
        finalized=bool(kw.get("finalized", False)),
        max_message_bytes=int(kw.get("max_message_bytes", 1 << 20)),  # type: ignore[call-overload]
        max_inflight_frames=int(kw.get("window", 1024)),  # type: ignore[call-overload]
        idle_timeout=15.0,
        session_timeout=300.0,
    )
    return wire.encode_control(msg)


def ack(next_seq: int) -> str:
    return wire.encode_control(wire.Ack(next_seq, next_seq * FRAME))


def binaries(actions: list[Action]) -> list[wire.ItemHeader]:
    return [wire.decode_header(a.data) for a in actions if isinstance(a, SendBinary)]


def texts(actions: list[Action]) -> list[dict[str, object]]:
    return [json.loads(a.text) for a in actions if isinstance(a, SendText)]


def connect(core: UplinkCore, now: float = 0.0, **kw: object) -> list[Action]:
    if core.state is State.IDLE:
        assert OpenConnection() in core.start(now)
    hello = texts(core.connection_opened(now))
    if not hello:  # the hello waits (at most FIRST_FRAME_WAIT) for the first frame (§2)
        deadline = core.next_deadline()
        assert deadline is not None
        hello = texts(core.tick(deadline))
    assert hello[0]["type"] == "hello"
    return core.text_received(welcome(**kw), now)  # type: ignore[arg-type]


# -- handshake, window, acks, end of stream ---------------------------------------------


def test_handshake_sends_hello_then_streams_after_welcome() -> None:
    core = make(frames=3)
    actions = core.start(0.0)
    assert [type(a) for a in actions] == [StateChanged, OpenConnection]
    hello = texts(core.connection_opened(0.0))[0]
    assert hello == {
        "type": "hello",
        "protocol": 1,
        "stream_id": "s1",
        "format": {"sample_rate": 16000, "channels": 1, "sample_type": "int16"},
        "frame_samples": 320,
        "resume": None,
        "wall_time": WALL - 0.02,  # sample 0 was captured one frame before the first push
    }
    actions = core.text_received(welcome(), 0.0)
    assert core.state is State.STREAMING
    [item] = binaries(actions)
    assert (item.kind, item.seq, item.count, item.sample_pos, item.epoch) == (1, 0, 3, 0, 1)


def test_window_bounds_in_flight_and_acks_open_it() -> None:
    core = make(frames=10, config=UplinkConfig(window_frames=4))
    items = binaries(connect(core))
    assert sum(i.count for i in items) == 4 and core.in_flight == 4
    assert binaries(core.data_available(0.0)) == []
    items = binaries(core.text_received(ack(2), 0.1))
    assert [(i.seq, i.count) for i in items] == [(4, 2)]
    assert core.ring.first_seq() == 2 and core.counters.acked_seq == 2


def test_server_window_limit_wins_when_smaller() -> None:
    core = make(frames=10)
    items = binaries(connect(core, window=3))
    assert sum(i.count for i in items) == 3


def test_coalescing_respects_message_size_limit() -> None:
    core = make(frames=10)
    items = binaries(connect(core, max_message_bytes=wire.HEADER_SIZE + 3 * 640))
    assert [i.count for i in items] == [3, 3, 3, 1]


def test_end_of_stream_after_last_frame_and_finished_on_ended() -> None:
    core = make(frames=2)
    connect(core)
    core.ring.close()
    [end] = texts(core.data_available(0.0))
    assert end == {"type": "end", "next_seq": 2, "next_sample": 640}
    done = core.text_received(
        wire.encode_control(wire.Ended(2, 640, 0)), 0.1
    )
    assert Finished() in done and core.state is State.DONE


def test_live_frames_are_sent_one_per_message_as_they_arrive() -> None:
    core = make()
    connect(core)
    for i in range(3):
        core.ring.push(b"\x01" * 640)
        [item] = binaries(core.data_available(float(i)))
        assert (item.seq, item.count) == (i, 1)


# -- deadlines: ack timeout, heartbeat ----------------------------------------------------


def test_no_ack_within_deadline_drops_the_link_and_reconnects() -> None:
    cfg = UplinkConfig(ack_timeout=3.0)
    core = make(frames=1, config=cfg)
    connect(core, now=10.0)
    assert core.next_deadline() == pytest.approx(13.0)
    assert core.tick(12.9) == []
    actions = core.tick(13.0)
    assert isinstance(actions[0], CloseConnection)
    assert core.state is State.WAITING
    state = actions[-1]
    assert isinstance(state, StateChanged) and state.state.name == "reconnecting"
    assert "no ack" in state.state.reason


def test_idle_link_pings_and_drops_without_pong() -> None:
    cfg = UplinkConfig(heartbeat_interval=5.0, heartbeat_timeout=2.0)
    core = make(config=cfg)
    connect(core, now=0.0)
    assert core.next_deadline() == 5.0
    [ping] = texts(core.tick(5.0))
    assert ping["type"] == "ping"
    assert core.next_deadline() == 7.0
    core.text_received(wire.encode_control(wire.Pong(5.0)), 6.0)
    assert core.next_deadline() == 11.0  # next ping
    texts(core.tick(11.0))
    actions = core.tick(13.0)
    assert isinstance(actions[0], CloseConnection) and core.state is State.WAITING


# -- backoff, breaker, budget ------------------------------------------------------------


def test_backoff_ceilings_and_full_jitter_bounds() -> None:
    backoff = Backoff(BackoffConfig(base=0.5, cap=10.0, multiplier=2.0, jitter=1.0), random.Random(1))
    ceilings = [backoff.ceiling(n) for n in range(1, 8)]
    assert ceilings == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    for _ in range(200):
        backoff.reset()
        for n in range(1, 8):
            d = backoff.next_delay()
            assert 0.0 <= d <= backoff.ceiling(n)
    no_jitter = Backoff(BackoffConfig(base=1.0, jitter=0.0), random.Random(1))
    assert [no_jitter.next_delay() for _ in range(3)] == [1.0, 2.0, 4.0]


def test_refused_connections_back_off_then_breaker_opens() -> None:
    cfg = UplinkConfig(
        backoff=BackoffConfig(base=0.5, cap=10.0, jitter=0.0),
        breaker=BreakerConfig(failure_threshold=3, success_threshold=2, open_timeout=30.0),
        budget=RetryBudgetConfig(max_initial_attempts=0),
    )
    core = make(config=cfg)
    now = 0.0
    connect(core, now)  # an established stream: the breaker guards its server
    core.connection_closed(None, "", now)
    assert core._retry_at is not None
    now = core._retry_at
    core.tick(now)
    delays = []
    for _ in range(2):
        core.connection_failed(ConnectFailed("refused"), now)
        assert core._retry_at is not None
        delays.append(core._retry_at - now)
        now = core._retry_at
        assert OpenConnection() in core.tick(now)
    assert delays[0] == 1.0  # attempt 2 (the drop itself was attempt 1)
    assert core.breaker.times_opened == 1
    assert delays[1] == pytest.approx(30.0)  # held off until the breaker half-opens
    assert core.breaker.state is BreakerState.HALF_OPEN  # the trial connection is running
    # half-open trial succeeds: two acks close the breaker
    core.connection_opened(now)
    core.ring.push(b"\x00" * 640)
    core.ring.push(b"\x00" * 640)
    core.text_received(welcome(), now)
    core.text_received(ack(1), now)
    core.ring.push(b"\x00" * 640)
    core.data_available(now)
    core.text_received(ack(3), now)
    assert core.breaker.state is BreakerState.CLOSED
    assert core.backoff.attempt == 0  # reset: the link carried audio


def test_handshake_then_immediate_close_does_not_reset_backoff() -> None:
    cfg = UplinkConfig(backoff=BackoffConfig(jitter=0.0), budget=RetryBudgetConfig(0))
    core = make(config=cfg)
    connect(core)
    core.connection_closed(1011, "boom", 0.0)
    assert core.backoff.attempt == 1
    core.tick(10.0)
    core.connection_opened(10.0)
    core.text_received(welcome(), 10.0)
    core.connection_closed(1011, "boom", 10.0)
    assert core.backoff.attempt == 2  # the welcome alone did not count as success


def test_service_restart_reconnects_soon_without_escalating() -> None:
    core = make(config=UplinkConfig(backoff=BackoffConfig(soon=0.25)))
    connect(core)
    core.connection_closed(wire.CloseCode.SERVICE_RESTART, "restart", 5.0)
    assert core._retry_at is not None and 5.0 <= core._retry_at <= 5.25
    assert core.backoff.attempt == 0


def test_try_again_later_backs_off_further() -> None:
    core = make(config=UplinkConfig(backoff=BackoffConfig(jitter=0.0, base=0.5)))
    connect(core)
    core.connection_closed(wire.CloseCode.TRY_AGAIN_LATER, "disk full", 0.0)
    assert core.backoff.attempt == 2 and core._retry_at == pytest.approx(1.0)


def test_breaker_does_not_hold_off_the_first_connection() -> None:
    cfg = UplinkConfig(breaker=BreakerConfig(failure_threshold=2, open_timeout=30.0),
                       budget=RetryBudgetConfig(max_initial_attempts=0))
    core = make(config=cfg)
    core.start(0.0)
    now = 0.0
    for _ in range(5):
        core.connection_failed(ConnectFailed("refused"), now)
        assert core._retry_at is not None and core._retry_at - now <= 10.0
        now = core._retry_at
        assert OpenConnection() in core.tick(now)


def test_initial_attempt_budget() -> None:
    cfg = UplinkConfig(budget=RetryBudgetConfig(max_initial_attempts=3))
    core = make(config=cfg)
    core.start(0.0)
    now = 0.0
    for i in range(3):
        actions = core.connection_failed(ConnectFailed("refused"), now)
        if i < 2:
            now = core._retry_at or now
            core.tick(now)
    failed = [a for a in actions if isinstance(a, Failed)]
    assert failed and isinstance(failed[0].error, RetryBudgetExhausted)
    assert "3 attempts" in str(failed[0].error)
    assert core.state is State.FAILED


def test_outage_time_budget_for_established_stream() -> None:
    cfg = UplinkConfig(budget=RetryBudgetConfig(max_initial_attempts=0, max_outage=60.0))
    core = make(config=cfg)
    connect(core)
    now = 100.0
    core.connection_closed(None, "", now)
    while core.state is State.WAITING:
        now = core._retry_at or now
        core.tick(now)
        actions = core.connection_failed(ConnectFailed("refused"), now)
    assert now - 100.0 >= 60.0
    assert any(isinstance(a, Failed) for a in actions)


# -- fatal errors --------------------------------------------------------------------------


@pytest.mark.parametrize("code", [4409, 4404, 1008, 1002, 4400, 1003])
def test_fatal_close_codes_stop_without_retry(code: int) -> None:
    core = make(frames=2)
    connect(core)
    actions = core.connection_closed(code, "nope", 0.0)
    [failed] = [a for a in actions if isinstance(a, Failed)]
    # closed after the welcome: a stream that was flowing, not a refused handshake
    assert isinstance(failed.error, StreamClosed) and failed.error.code == code
    assert core.state is State.FAILED and OpenConnection() not in actions
    assert core.ring.stats().held_frames == 2  # the audio is kept


@pytest.mark.parametrize("code", [4409, 1008, 4400])
def test_fatal_close_before_the_welcome_is_a_refused_handshake(code: int) -> None:
    core = make(frames=2)
    core.start(0.0)
    core.connection_opened(0.0)
    actions = core.connection_closed(code, "nope", 0.1)
    [failed] = [a for a in actions if isinstance(a, Failed)]
    assert isinstance(failed.error, HandshakeRefused) and failed.error.code == code


@pytest.mark.parametrize("status,fatal", [(401, True), (403, True), (404, True), (503, False)])
def test_http_status_on_upgrade(status: int, fatal: bool) -> None:
    core = make()
    core.start(0.0)
    core.connection_failed(error_for_http_status(status), 0.0)
    assert (core.state is State.FAILED) == fatal


def test_server_losing_acked_audio_is_fatal() -> None:
    core = make(frames=4)
    connect(core)
    core.text_received(ack(3), 0.0)
    core.connection_closed(None, "", 0.0)
    core.tick(100.0)
    core.connection_opened(100.0)
    actions = core.text_received(welcome(next_seq=1), 100.0)
    [failed] = [a for a in actions if isinstance(a, Failed)]
    assert isinstance(failed.error, ServerProtocolError)


def test_illegal_transition_names_the_state() -> None:
    core = make()
    with pytest.raises(LocalProtocolError, match="IDLE"):
        core.connection_opened(0.0)


# -- resume, replay, gaps ------------------------------------------------------------------


def test_resume_trims_to_server_next_seq_and_replays_in_order() -> None:
    core = make(frames=6)
    connect(core)
    core.text_received(ack(2), 0.0)
    core.connection_closed(None, "", 1.0)
    core.tick(100.0)
    hello = texts(core.connection_opened(100.0))[0]
    assert hello["resume"] == {"epoch": 1, "credential": "cred"}
    items = binaries(core.text_received(welcome(next_seq=4), 100.0))
    assert [(i.seq, i.count) for i in items] == [(4, 2)]
    assert core.ring.first_seq() == 4
    assert core.counters.frames_replayed == 2
    assert core.counters.reconnects == 1
    assert core.counters.recovery_times == [pytest.approx(99.0)]


def test_overflow_during_outage_is_reported_as_a_gap_first() -> None:
    core = make(capacity=0.1)  # 5 slots
    connect(core)
    for _ in range(2):
        core.ring.push(b"\x01" * 640)
    core.data_available(0.0)
    core.connection_closed(None, "", 0.0)
    for _ in range(6):  # 8 frames into 5 slots: seqs 0..2 evicted
        core.ring.push(b"\x02" * 640)
    assert core.ring.frames_evicted == 3 and core.ring.frames_dropped == 0
    core.tick(100.0)
    core.connection_opened(100.0)
    # the server had received seq 0 before the outage
    actions = core.text_received(welcome(next_seq=1), 100.0)
    items = binaries(actions)
    gap = items[0]
    assert (gap.kind, gap.seq, gap.count, gap.sample_pos) == (wire.KIND_GAP, 1, 2, 320)
    gap_msg = next(a for a in actions if isinstance(a, SendBinary))
    assert wire.decode_gap_end(gap_msg.data) == 960
    assert (items[1].kind, items[1].seq) == (wire.KIND_AUDIO, 3)
    core.text_received(ack(3), 100.1)
    # counted exactly when the server acknowledged the gap: it had one of the three
    assert (core.ring.frames_dropped, core.ring.samples_dropped) == (2, 640)


def test_drop_while_streaming_sends_a_gap_with_the_exact_sample_position() -> None:
    core = make(capacity=0.1, config=UplinkConfig(window_frames=2))  # 5 slots
    connect(core)
    for _ in range(2):
        core.ring.push(b"\x01" * 640)
    assert sum(i.count for i in binaries(core.data_available(0.0))) == 2  # 0, 1 in flight
    for _ in range(6):  # seqs 2..7: evicts 0, 1 (in flight) and 2 (never sent)
        core.ring.push(b"\x02" * 640)
    actions = core.text_received(ack(1), 0.1)  # the server had seq 0
    [gap] = binaries(actions)  # the window has room for one item
    # the GAP starts at the send cursor, with that seq's own sample position (§3)
    assert (gap.kind, gap.seq, gap.count, gap.sample_pos) == (wire.KIND_GAP, 2, 1, 640)
    [audio] = binaries(core.text_received(ack(3), 0.2))  # seq 1 had arrived, seq 2 is a gap
    assert (audio.kind, audio.seq, audio.sample_pos) == (wire.KIND_AUDIO, 3, 960)
    assert (core.ring.frames_dropped, core.ring.samples_dropped) == (1, 320)
    assert (core.ring.frames_dropped, core.ring.samples_dropped) == (1, 320)


def test_evicted_frames_that_reached_the_server_are_not_counted_as_lost() -> None:
    core = make(capacity=0.1)  # 5 slots
    connect(core)
    for _ in range(5):
        core.ring.push(b"\x01" * 640)
    core.data_available(0.0)  # seqs 0..4 in flight
    for _ in range(3):
        core.ring.push(b"\x02" * 640)  # evicts 0..2, which are in flight
    assert core.ring.frames_evicted == 3
    core.text_received(ack(5), 0.1)  # the server had them all
    assert core.ring.frames_dropped == 0


def test_a_gap_longer_than_a_message_can_carry_is_split() -> None:
    ring = RingBuffer(FMT, FRAME, 0.1)  # 5 slots
    for _ in range(wire.MAX_COUNT + 10):
        ring.push(b"\x01" * 640)
    run = ring.read(0, 10, 1 << 20)
    assert run is not None and run.count == wire.MAX_COUNT
    nxt = ring.read(wire.MAX_COUNT, 10, 1 << 20)
    assert nxt is not None and nxt.seq == wire.MAX_COUNT and nxt.sample_pos == wire.MAX_COUNT * FRAME


def test_finalized_stream_with_undelivered_audio_fails_clearly() -> None:
    core = make(frames=3)
    core.start(0.0)
    core.connection_opened(0.0)
    actions = core.text_received(welcome(finalized=True), 0.0)
    [failed] = [a for a in actions if isinstance(a, Failed)]
    assert "finalized" in str(failed.error)


def test_lost_ended_is_recovered_by_resending_end() -> None:
    core = make(frames=1)
    connect(core)
    core.ring.close()
    core.data_available(0.0)
    core.connection_closed(None, "", 0.5)
    core.tick(100.0)
    core.connection_opened(100.0)
    actions = core.text_received(welcome(next_seq=1, finalized=True), 100.0)
    assert texts(actions)[-1]["type"] == "end"
    assert Finished() in core.text_received(wire.encode_control(wire.Ended(1, 320, 0)), 100.1)


def test_config_is_replaceable() -> None:
    assert replace(UplinkConfig(), ack_timeout=1.0).ack_timeout == 1.0


def test_idle_pings_come_before_the_servers_idle_timeout() -> None:
    core = make(config=UplinkConfig(heartbeat_interval=30.0))  # production-like
    connect(core, now=0.0)  # the server announces idle_timeout 15 s
    assert core.next_deadline() == 7.5

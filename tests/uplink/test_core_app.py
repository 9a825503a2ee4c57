"""What the application gets from the core: retry after a fatal error, exact gaps, the
hello's wall-clock time and labels, errors that cannot fix themselves (fake clock)."""

from __future__ import annotations

import random

import pytest

from tests.uplink.test_core import FMT, FRAME, WALL, ack, binaries, connect, make, texts, welcome
from uplink import wire
from uplink.config import UplinkConfig
from uplink.core import (
    FIRST_FRAME_WAIT,
    Failed,
    Finished,
    GapMismatch,
    GapRecorded,
    OpenConnection,
    State,
    StateChanged,
    UplinkCore,
)
from uplink.errors import (
    AddressUnresolvable,
    ConnectFailed,
    HandshakeRefused,
    RetryBudgetExhausted,
    error_for_http_status,
)
from uplink.policy import BreakerConfig, RetryBudgetConfig
from uplink.ring import GapReason, OverflowPolicy, RingBuffer

# -- retry after a fatal error (issue 10 defect 7) ---------------------------------------


def test_retry_after_a_fatal_refusal_resumes_with_the_same_credential_and_replays() -> None:
    core = make(frames=4)
    connect(core)
    core.text_received(ack(1), 0.1)
    core.connection_closed(None, "", 1.0)
    core.tick(5.0)
    core.connection_failed(error_for_http_status(403, "bad token"), 5.0)
    assert core.state is State.FAILED and core.ring.stats().held_frames == 3
    actions = core.retry(60.0)  # the application fixed the token
    assert OpenConnection() in actions and core.state is State.CONNECTING
    assert core.error is None
    hello = texts(core.connection_opened(60.0))[0]
    assert hello["resume"] == {"epoch": 1, "credential": "cred"}
    items = binaries(core.text_received(welcome(next_seq=1), 60.0))
    assert [(i.seq, i.count) for i in items] == [(1, 3)]
    core.text_received(ack(4), 60.1)
    core.ring.close()
    core.data_available(60.1)
    done = core.text_received(wire.encode_control(wire.Ended(4, 4 * FRAME, 0, 0, ())), 60.2)
    assert Finished() in done and core.state is State.DONE


def test_retry_after_a_spent_budget_gets_a_fresh_budget() -> None:
    core = make(frames=1, config=UplinkConfig(budget=RetryBudgetConfig(max_initial_attempts=1)))
    core.start(0.0)
    actions = core.connection_failed(ConnectFailed("connection refused"), 0.0)
    [failed] = [a for a in actions if isinstance(a, Failed)]
    assert isinstance(failed.error, RetryBudgetExhausted)
    assert OpenConnection() in core.retry(10.0)
    actions = core.connection_failed(ConnectFailed("connection refused"), 10.0)
    assert core.state is State.FAILED  # one attempt again, not zero


def test_retry_is_only_for_a_failed_core() -> None:
    core = make()
    with pytest.raises(Exception, match="FAILED"):
        core.retry(0.0)


# -- errors that cannot fix themselves (defect 6) ----------------------------------------


def test_unresolvable_host_is_fatal_before_the_first_connection() -> None:
    core = make()
    core.start(0.0)
    actions = core.connection_failed(ConnectFailed("name does not resolve", unresolved=True), 0.0)
    [failed] = [a for a in actions if isinstance(a, Failed)]
    assert isinstance(failed.error, AddressUnresolvable)
    assert "check the server address" in str(failed.error)


def test_unresolvable_host_is_retried_on_an_established_stream() -> None:
    core = make(frames=1)
    connect(core)
    core.connection_closed(None, "", 1.0)
    core.tick(10.0)
    core.connection_failed(ConnectFailed("name does not resolve", unresolved=True), 10.0)
    assert core.state is State.WAITING


def test_circuit_open_is_never_shown_before_the_stream_was_established() -> None:
    cfg = UplinkConfig(breaker=BreakerConfig(failure_threshold=2),
                       budget=RetryBudgetConfig(max_initial_attempts=0))
    core = make(config=cfg)
    core.start(0.0)
    now = 0.0
    for _ in range(6):
        for action in core.connection_failed(ConnectFailed("connection refused"), now):
            if isinstance(action, StateChanged):
                assert "[circuit open]" not in action.state.reason
        now = core._retry_at or now
        core.tick(now)


# -- gaps reach the application ------------------------------------------------------------


def overflowed_core() -> UplinkCore:
    """Seqs 1..2 (samples 320..960) evicted during an outage; the server had seq 0."""
    core = make(capacity=0.1)  # 5 slots
    connect(core)
    for _ in range(2):
        core.ring.push(b"\x01" * 640)
    core.data_available(0.0)
    core.connection_closed(None, "", 0.0)
    for _ in range(6):
        core.ring.push(b"\x02" * 640)
    core.tick(100.0)
    core.connection_opened(100.0)
    core.text_received(welcome(next_seq=1), 100.0)
    return core


def test_an_acknowledged_gap_is_reported_with_its_exact_range() -> None:
    core = overflowed_core()
    actions = core.text_received(ack(3), 100.1)
    gaps = [a for a in actions if isinstance(a, GapRecorded)]
    assert gaps == [GapRecorded(320, 640, GapReason.BUFFER_OVERFLOW)]
    assert core.gaps_acked == [(320, 960)]


def test_a_source_gap_is_reported_with_its_reason() -> None:
    core = make()
    connect(core)
    core.ring.push(b"\x01" * 640)
    core.ring.push_gap(100)
    core.data_available(0.0)
    actions = core.text_received(ack(2), 0.1)
    assert [a for a in actions if isinstance(a, GapRecorded)] == [
        GapRecorded(320, 100, GapReason.SOURCE)
    ]


def ack_all(core: UplinkCore) -> None:
    while core.counters.acked_seq < core.ring.tail_seq:
        core.text_received(ack(core._send_seq), 100.1)


def end_with(core: UplinkCore, ended: wire.Ended) -> list[object]:
    core.ring.close()
    core.data_available(100.2)
    return list(core.text_received(wire.encode_control(ended), 100.3))


def test_ended_that_agrees_with_our_gaps_is_quiet() -> None:
    core = overflowed_core()
    ack_all(core)
    actions = end_with(core, wire.Ended(8, 8 * FRAME, 1, 640, ((320, 960),)))
    assert Finished() in actions and core.gap_mismatch is None
    assert not [a for a in actions if isinstance(a, GapMismatch)]


def test_ended_that_disagrees_with_our_gaps_is_reported_loudly() -> None:
    core = overflowed_core()
    ack_all(core)
    actions = end_with(core, wire.Ended(8, 8 * FRAME, 2, 960, ((320, 960), (1000, 1320))))
    [mismatch] = [a for a in actions if isinstance(a, GapMismatch)]
    assert "2 gaps" in mismatch.detail and "960 gap samples" in mismatch.detail
    assert core.gap_mismatch == mismatch.detail
    assert Finished() in actions  # the stream is done; the mismatch is reported, not hidden


def test_an_old_server_without_gap_totals_is_not_a_mismatch() -> None:
    core = overflowed_core()
    ack_all(core)
    end_with(core, wire.Ended(8, 8 * FRAME, 1))
    assert core.gap_mismatch is None


# -- hello: wall-clock time of sample 0 and labels (§2) ----------------------------------


def test_hello_waits_for_the_first_frame_to_carry_its_wall_time() -> None:
    core = make()
    core.start(0.0)
    assert core.connection_opened(0.0) == []
    assert core.next_deadline() == FIRST_FRAME_WAIT
    core.ring.push(b"\x00" * 640)
    [hello] = texts(core.data_available(0.05))
    assert hello["wall_time"] == WALL - 0.02


def test_hello_without_a_frame_goes_after_the_wait_without_wall_time() -> None:
    core = make()
    core.start(0.0)
    core.connection_opened(0.0)
    [hello] = texts(core.tick(FIRST_FRAME_WAIT))
    assert "wall_time" not in hello
    assert core.next_deadline() == FIRST_FRAME_WAIT + core.config.handshake_timeout


def test_labels_go_into_the_hello_and_are_validated_up_front() -> None:
    ring = RingBuffer(FMT, FRAME, 1.0, OverflowPolicy.DROP_OLDEST, wall_clock=lambda: WALL)
    ring.push(b"\x00" * 640)
    core = UplinkCore(ring, "s1", UplinkConfig(), random.Random(1), labels={"room": "b12"})
    core.start(0.0)
    [hello] = texts(core.connection_opened(0.0))
    assert hello["labels"] == {"room": "b12"}
    with pytest.raises(ValueError, match="label"):
        UplinkCore(ring, "s1", UplinkConfig(), labels={"bad key!": "x"})
    with pytest.raises(ValueError):
        UplinkCore(ring, "s1", UplinkConfig(), labels={f"k{i}": "v" for i in range(100)})


def test_fatal_http_refusal_keeps_everything_in_the_ring() -> None:
    core = make(frames=3)
    core.start(0.0)
    core.connection_failed(error_for_http_status(401), 0.0)
    assert isinstance(core.error, HandshakeRefused)
    assert core.ring.stats().held_frames == 3

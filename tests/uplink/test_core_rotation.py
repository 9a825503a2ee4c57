"""Several servers: the core rotates through them and backs off per failed round
(docs/resilience.md, "Several servers"), on a fake clock."""

from __future__ import annotations

import random
from dataclasses import replace

from tests.support.clock import FakeClock
from tests.uplink.test_core import FMT, FRAME, WALL, ack, texts, welcome
from uplink.config import UplinkConfig
from uplink.core import Action, OpenConnection, Phase, State, StateChanged, UplinkCore
from uplink.errors import ConnectFailed, error_for_http_status
from uplink.policy import BreakerConfig, BreakerState, RetryBudgetConfig, ServerRotation
from uplink.ring import RingBuffer

SERVERS = ("ws://a/v1/stream", "ws://b/v1/stream", "ws://c/v1/stream")
REFUSED = ConnectFailed("connection refused")


def make(config: UplinkConfig | None = None, servers: tuple[str, ...] = SERVERS) -> UplinkCore:
    ring = RingBuffer(FMT, FRAME, 10.0, wall_clock=lambda: WALL)
    for _ in range(4):
        ring.push(b"\x00" * FRAME * 2)
    return UplinkCore(ring, "s1", config or UplinkConfig(), random.Random(7), servers=servers)


def opened(actions: list[Action]) -> int | None:
    """The server index an OpenConnection asks for, if any."""
    found = [a.server for a in actions if isinstance(a, OpenConnection)]
    return found[0] if found else None


def states(actions: list[Action]) -> list[StateChanged]:
    return [a for a in actions if isinstance(a, StateChanged)]


def establish(core: UplinkCore, now: float) -> None:
    """Handshake on the current server and let an ack prove the link (it carried audio)."""
    assert texts(core.connection_opened(now))[0]["type"] == "hello"
    core.text_received(welcome(), now)
    core.text_received(ack(1), now)
    assert core.state is State.STREAMING


def fail_until_waiting(core: UplinkCore, clock: FakeClock) -> list[int]:
    """Refuse every attempt until the core backs off: the servers it tried, in order."""
    tried = [core.rotation.index]
    while True:
        core.connection_failed(REFUSED, clock.now)
        if core.next_deadline() != clock.now:
            return tried
        nxt = opened(core.tick(clock.now))  # the next server is due at once
        assert nxt is not None
        tried.append(nxt)


def test_rotation_moves_on_after_each_failure_and_completes_rounds() -> None:
    rotation = ServerRotation(3)
    assert [rotation.failed() for _ in range(6)] == [False, False, True] * 2
    assert rotation.index == 0
    rotation.failed()
    rotation.connected()  # b works: the next round starts from b
    assert rotation.index == 1
    assert [rotation.failed() for _ in range(3)] == [False, False, True]
    single = ServerRotation(1)
    assert all(single.failed() for _ in range(3)) and single.index == 0


def test_a_refused_first_server_moves_to_the_next_at_once() -> None:
    clock = FakeClock(0.0)
    core = make()
    assert opened(core.start(clock.now)) == 0
    actions = core.connection_failed(REFUSED, clock.now)
    # no wait: the next server is due now (next_deadline == now), not after a backoff
    assert core.state is State.WAITING and core.next_deadline() == clock.now
    assert states(actions)[0].state.server == SERVERS[1]
    assert opened(core.tick(clock.now)) == 1
    establish(core, clock.now)
    assert core.public.phase is Phase.CONNECTED and core.public.server == SERVERS[1]


def test_a_full_failed_round_backs_off_as_one_server_does() -> None:
    clock = FakeClock(0.0)
    core = make()
    core.start(clock.now)
    assert fail_until_waiting(core, clock) == [0, 1, 2]
    first_wait = core.next_deadline()
    assert first_wait is not None and first_wait > clock.now
    assert core.backoff.attempt == 1  # one round = one backoff step
    clock.now = first_wait
    assert opened(core.tick(clock.now)) == 0  # the next round starts again with a
    assert fail_until_waiting(core, clock) == [0, 1, 2]
    assert core.backoff.attempt == 2


def test_the_attempt_budget_counts_rounds() -> None:
    clock = FakeClock(0.0)
    config = replace(UplinkConfig(), budget=RetryBudgetConfig(max_initial_attempts=2))
    core = make(config)
    core.start(clock.now)
    attempts = 1
    while core.state is not State.FAILED:
        core.connection_failed(REFUSED, clock.now)
        deadline = core.next_deadline()
        if core.state is State.WAITING and deadline is not None:
            clock.now = deadline
            core.tick(clock.now)
            attempts += 1
    assert attempts == 6  # two rounds of three servers
    assert core.error is not None and "each a round of all 3 servers" in str(core.error)


def test_a_lost_link_moves_to_the_next_server_within_the_restart_grace() -> None:
    clock = FakeClock(0.0)
    core = make()
    core.start(clock.now)
    establish(core, clock.now)  # on a
    clock.advance(5.0)
    core.connection_closed(None, "", clock.now)  # a dies (abnormal closure)
    assert core.next_deadline() == clock.now and core.public.server == SERVERS[1]
    assert opened(core.tick(clock.now)) == 1
    core.connection_failed(REFUSED, clock.now)  # b refuses: c at once
    assert core.next_deadline() == clock.now
    assert opened(core.tick(clock.now)) == 2
    core.connection_failed(REFUSED, clock.now)  # c refuses: the round is over
    deadline = core.next_deadline()
    assert deadline is not None
    # restart grace: a first-step delay, not escalated, breaker not fed
    assert 0 <= deadline - clock.now <= core.config.backoff.base
    assert core.backoff.attempt == 0 and core.breaker.failures == 0
    clock.now = deadline
    assert opened(core.tick(clock.now)) == 0


def test_the_breaker_counts_failed_rounds_not_attempts() -> None:
    clock = FakeClock(0.0)
    config = replace(UplinkConfig(), breaker=BreakerConfig(failure_threshold=2,
                                                           restart_grace=0.0))
    core = make(config)
    core.start(clock.now)
    establish(core, clock.now)
    busy = error_for_http_status(503, "busy")
    core.connection_closed(None, "", clock.now)
    rounds = 0
    while core.breaker.state is BreakerState.CLOSED:
        deadline = core.next_deadline()
        assert deadline is not None
        clock.now = deadline
        assert opened(core.tick(clock.now)) is not None
        core.connection_failed(busy, clock.now)
        if core.rotation.failed_in_round == 0:
            rounds += 1
    # the loss of a counted as the first failure of round 1; round 2 opened the breaker
    assert rounds == 2 and core.breaker.failures == 2


def test_one_server_is_the_single_server_policy() -> None:
    clock = FakeClock(0.0)
    core = make(servers=("ws://only/v1/stream",))
    core.start(clock.now)
    core.connection_failed(REFUSED, clock.now)
    deadline = core.next_deadline()
    assert deadline is not None and deadline > clock.now and core.backoff.attempt == 1
    assert core.public.server == "ws://only/v1/stream"
    clock.now = deadline
    assert core.tick(clock.now)[-1] == OpenConnection()

"""Restarts are not failures: the real core on a fake clock against a server that goes away
for 1–8 s (docs/resilience.md, "Restarts are not failures"; issue 10 defect 2)."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest

from tests.uplink.test_core import FMT, FRAME, ack, connect, welcome
from uplink import wire
from uplink.config import PROFILES, UplinkConfig
from uplink.core import OpenConnection, State, StateChanged, UplinkCore
from uplink.errors import ConnectFailed
from uplink.policy import BreakerState, RetryBudgetConfig
from uplink.ring import RingBuffer

LOST_AT = 100.0


def healthy_core(config: UplinkConfig, seed: int) -> UplinkCore:
    """An established stream whose link carried audio (an ack advanced)."""
    ring = RingBuffer(FMT, FRAME, 10.0, wall_clock=lambda: 0.0)
    core = UplinkCore(ring, "s1", config, random.Random(seed))
    ring.push(b"\x00" * FRAME * 2)
    connect(core, now=0.0)
    core.text_received(ack(1), 0.1)
    return core


def reconnect_delay(config: UplinkConfig, down_for: float, seed: int, close: int | None) -> float:
    """Seconds from the server's return to the client's next connection attempt."""
    core = healthy_core(config, seed)
    core.connection_closed(close, "", LOST_AT)
    back = LOST_AT + down_for
    while True:
        now = core.next_deadline()
        assert now is not None and core.state is State.WAITING
        if OpenConnection() not in core.tick(now):
            continue  # the breaker held the attempt back
        if now >= back:
            return now - back
        core.connection_failed(ConnectFailed("connection refused"), now)


@pytest.mark.parametrize("profile", ["live", "production"])
def test_a_restart_of_1_to_8_s_is_reached_within_one_backoff_step(profile: str) -> None:
    config = PROFILES[profile]
    rng = random.Random(2026)
    for seed in range(150):
        down_for = rng.uniform(1.0, 8.0)
        close = rng.choice([None, wire.CloseCode.SERVICE_RESTART])  # SIGKILL or SIGTERM
        late = reconnect_delay(config, down_for, seed, close)
        assert late <= config.backoff.base, (seed, down_for, close, late)


def test_the_old_policy_opened_the_breaker_during_restarts() -> None:
    """The same runs without the restart grace: what the issue measured."""
    old = replace(PROFILES["live"], breaker=replace(PROFILES["live"].breaker, restart_grace=0.0))
    late = [reconnect_delay(old, 5.0, seed, None) for seed in range(50)]
    assert max(late) > 5.0  # held off by the open breaker (10 s) or an escalated backoff


def test_a_server_that_stays_down_still_opens_the_breaker() -> None:
    config = replace(PROFILES["live"], budget=RetryBudgetConfig(max_initial_attempts=0))
    core = healthy_core(config, seed=7)
    core.connection_closed(None, "", LOST_AT)
    now = LOST_AT
    attempts: list[float] = []
    reasons: list[str] = []
    while now < LOST_AT + 120.0:
        deadline = core.next_deadline()
        assert deadline is not None
        now = deadline
        if OpenConnection() in core.tick(now):
            attempts.append(now)
            for action in core.connection_failed(ConnectFailed("connection refused"), now):
                if isinstance(action, StateChanged):
                    reasons.append(action.state.reason)
    grace_end = LOST_AT + config.breaker.restart_grace
    assert core.breaker.times_opened >= 1
    assert any("[circuit open]" in r for r in reasons)
    # within the grace: frequent probes; after it: the breaker spaces them by its timeout
    late = [t for t in attempts if t > grace_end + 40.0]
    gaps = [b - a for a, b in zip(late, late[1:], strict=False)]
    assert gaps and min(gaps) >= config.breaker.open_timeout - 1e-9
    assert core.breaker.state in (BreakerState.OPEN, BreakerState.HALF_OPEN)


def test_a_link_that_never_carries_audio_does_not_renew_the_grace() -> None:
    """A crash-looping server (accepts, then dies) gets the normal escalation after the grace."""
    config = replace(PROFILES["live"], budget=RetryBudgetConfig(max_initial_attempts=0))
    core = healthy_core(config, seed=3)
    core.connection_closed(None, "", LOST_AT)
    now = LOST_AT
    while now < LOST_AT + 60.0:
        deadline = core.next_deadline()
        assert deadline is not None
        now = deadline
        if OpenConnection() in core.tick(now):
            core.connection_opened(now)
            core.text_received(welcome(next_seq=1), now)
            core.connection_closed(None, "", now)  # died before carrying any audio
    assert core.breaker.times_opened >= 1


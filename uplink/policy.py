"""Reconnection policy: backoff with jitter, circuit breaker, restart grace, retry budget.

All of them take time (`now`, seconds on any monotonic scale) and randomness as inputs, so they
are tested with a fake clock and a seeded `random.Random`, without sleeping.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from enum import Enum


@dataclass(frozen=True, slots=True)
class BackoffConfig:
    base: float = 0.5  # first retry ceiling: live audio wants to be back within a second
    cap: float = 10.0  # modest cap: a 10 s hole is the most we add on top of an outage
    multiplier: float = 2.0
    jitter: float = 1.0  # 1.0 = full jitter (uniform in [0, ceiling]); 0 = no jitter
    soon: float = 0.25  # ceiling for "retry soon" closes (service restart, going away)


class Backoff:
    """Exponential backoff with jitter.

    The ceiling for attempt n (1-based) is ``min(cap, base * multiplier**(n-1))``; the delay
    is ``ceiling * (1 - jitter * U)`` with U uniform in [0, 1). With full jitter (the
    default) reconnecting clients spread over the whole window instead of stampeding.
    """

    def __init__(self, config: BackoffConfig, rng: random.Random) -> None:
        self.config = config
        self.rng = rng
        self.attempt = 0

    def ceiling(self, attempt: int) -> float:
        c = self.config
        return min(c.cap, c.base * c.multiplier ** max(0, attempt - 1))

    def next_delay(self, steps: int = 1) -> float:
        """Escalate by `steps` attempts and return the delay before the next try."""
        self.attempt += steps
        ceiling = self.ceiling(self.attempt)
        return ceiling * (1.0 - self.config.jitter * self.rng.random())

    def first_step_delay(self) -> float:
        """A delay drawn from the first step's ceiling (`base`), without escalating.

        Used within the restart grace: a server that is coming back is tried at least once
        per `base` seconds, so it is reached within one backoff step of its return.
        """
        return self.ceiling(1) * (1.0 - self.config.jitter * self.rng.random())

    def soon_delay(self) -> float:
        """Delay for a planned restart: small, jittered, does not escalate."""
        return self.config.soon * self.rng.random()

    def reset(self) -> None:
        self.attempt = 0


class BreakerState(Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half-open"


@dataclass(frozen=True, slots=True)
class BreakerConfig:
    failure_threshold: int = 5
    success_threshold: int = 2
    open_timeout: float = 30.0
    #: seconds after losing a healthy link (it carried audio, or the server said 1001/1012)
    #: during which refused connects are not failures (see RestartGrace); 0 = no grace
    restart_grace: float = 15.0


class CircuitBreaker:
    """Closed → (failures ≥ threshold) → open → (open_timeout) → half-open → closed.

    While open, no connection is attempted before `open_until`; in half-open one trial
    connection runs: `success_threshold` successes close the breaker, one failure reopens it.
    """

    def __init__(self, config: BreakerConfig) -> None:
        self.config = config
        self.state = BreakerState.CLOSED
        self.failures = 0
        self.successes = 0
        self.opened_at: float | None = None
        self.times_opened = 0

    @property
    def open_until(self) -> float | None:
        if self.state is BreakerState.OPEN and self.opened_at is not None:
            return self.opened_at + self.config.open_timeout
        return None

    def allow(self, now: float) -> bool:
        """May a connection be attempted now? Moves open → half-open when the timeout passed."""
        if self.state is BreakerState.OPEN:
            until = self.open_until
            if until is not None and now >= until:
                self.state = BreakerState.HALF_OPEN
                self.successes = 0
                return True
            return False
        return True

    def reset(self) -> None:
        """Closed, no failures counted (an application-requested retry)."""
        self.state = BreakerState.CLOSED
        self.failures = 0
        self.successes = 0
        self.opened_at = None

    def record_success(self) -> None:
        if self.state is BreakerState.HALF_OPEN:
            self.successes += 1
            if self.successes >= self.config.success_threshold:
                self.state = BreakerState.CLOSED
                self.failures = 0
        elif self.state is BreakerState.CLOSED:
            self.failures = 0

    def record_failure(self, now: float) -> None:
        if self.state is BreakerState.HALF_OPEN:
            self._open(now)
        elif self.state is BreakerState.CLOSED:
            self.failures += 1
            if self.failures >= self.config.failure_threshold:
                self._open(now)

    def _open(self, now: float) -> None:
        self.state = BreakerState.OPEN
        self.opened_at = now
        self.successes = 0
        self.times_opened += 1


class RestartGrace:
    """A server that just went away from a healthy stream is most likely restarting.

    Measured on the real core (tools/bench/restart.py), counting the refused connects of an
    ordinary 3–5 s restart as breaker failures opened the breaker in 28–78 % of restarts and
    held the client off for up to `open_timeout` after the server was back. Within the grace
    that follows the loss of a healthy link, restart symptoms (refused, reset, abnormal
    closure) neither escalate the backoff nor feed the breaker; retries stay at the first
    step's jittered delay. The grace is not renewed by a link that never carried audio, so
    a server that stays down (or crash-loops) is back under the normal escalation and the
    breaker once the grace has run out.
    """

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.until: float | None = None

    def begin(self, now: float) -> None:
        if self.seconds > 0:
            self.until = now + self.seconds

    def covers(self, now: float) -> bool:
        return self.until is not None and now < self.until


@dataclass(frozen=True, slots=True)
class RetryBudgetConfig:
    max_initial_attempts: int = 15  # before the first successful handshake; 0 = unlimited
    max_outage: float | None = None  # seconds an established stream may stay down; None = ∞


class RetryBudget:
    """Attempt-based for the first connection, time-based once the stream is established."""

    def __init__(self, config: RetryBudgetConfig) -> None:
        self.config = config
        self.established = False
        self.initial_attempts = 0
        self.outage_started: float | None = None

    def connected(self) -> None:
        self.established = True
        self.outage_started = None

    def restart(self) -> None:
        """The application fixed the cause of a failure and retries: a fresh budget."""
        self.initial_attempts = 0
        self.outage_started = None

    def link_lost(self, now: float) -> None:
        if self.outage_started is None:
            self.outage_started = now

    def attempt_failed(self) -> None:
        if not self.established:
            self.initial_attempts += 1

    def exhausted(self, now: float) -> str | None:
        """None while retries remain; otherwise why the budget is spent."""
        c = self.config
        if not self.established:
            if c.max_initial_attempts and self.initial_attempts >= c.max_initial_attempts:
                return f"could not connect after {self.initial_attempts} attempts"
            return None
        if c.max_outage is not None and self.outage_started is not None:
            down = now - self.outage_started
            if down >= c.max_outage:
                return f"link down for {down:.1f} s (limit {c.max_outage:g} s)"
        return None


class ServerRotation:
    """Which of several server URLs to try, and when a whole round of them has failed.

    As MQTT and NATS clients do (docs/resilience.md, "Several servers"): the URL that works
    is kept; a failed attempt or a lost link moves to the next URL in the list, round-robin,
    starting with the first one listed. Only a failure that completes a round (every URL
    failed in turn since the last successful handshake) is a failure for the backoff, the
    breaker and the retry budget; within a round the next URL is tried at once. With one URL
    every failure completes a round: the policy is exactly the single-server one.
    """

    def __init__(self, count: int) -> None:
        if count < 1:
            raise ValueError("at least one server")
        self.count = count
        self.index = 0  # the URL in use, or the next one to try
        self.failed_in_round = 0

    def connected(self) -> None:
        """A handshake succeeded on the current URL: a new round starts from it."""
        self.failed_in_round = 0

    def failed(self) -> bool:
        """The current URL failed or its link was lost: move on. True when this completes a
        round (back off as for one server), False when another URL is due at once."""
        self.index = (self.index + 1) % self.count
        self.failed_in_round += 1
        if self.failed_in_round >= self.count:
            self.failed_in_round = 0
            return True
        return False

    def reset(self) -> None:
        """A fresh round (the application retries after a fatal error), same URL."""
        self.failed_in_round = 0

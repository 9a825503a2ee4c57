"""Retry timing for webhook deliveries (docs/webhooks.md "Retries").

The same policy as the uplink's reconnects (uplink/policy.py `Backoff`, which the server may
not import: tests/ingest_server/test_layering.py): exponential backoff with full jitter. The
ceiling for attempt n (1-based) is ``min(cap, base * multiplier**(n-1))``; the delay is
``ceiling * (1 - jitter * U)`` with U uniform in [0, 1). The parameters differ: a webhook
receiver is not live audio, so the cap is a minute, not ten seconds.

`RetrySchedule` turns attempt outcomes into the clock time of the next attempt. Time and
randomness are inputs (a clock function, a `random.Random`), so the schedule is tested on a
fake clock without sleeping (tests/ingest_server/test_webhooks_policy.py).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from enum import Enum

MAX_RETRY_AFTER = 600.0  # seconds: a receiver's Retry-After is honoured up to this


@dataclass(frozen=True, slots=True)
class BackoffConfig:
    base: float = 0.5  # first retry ceiling: a receiver that blipped gets the event at once
    cap: float = 60.0  # a receiver that is down is tried at least once a minute
    multiplier: float = 2.0
    jitter: float = 1.0  # 1.0 = full jitter (uniform in [0, ceiling]); 0 = no jitter


class Backoff:
    """Exponential backoff with jitter (the shape of uplink/policy.py `Backoff`)."""

    def __init__(self, config: BackoffConfig, rng: random.Random) -> None:
        self.config = config
        self.rng = rng
        self.attempt = 0

    def ceiling(self, attempt: int) -> float:
        c = self.config
        return min(c.cap, c.base * c.multiplier ** max(0, attempt - 1))

    def next_delay(self) -> float:
        """Escalate by one attempt and return the delay before the next try."""
        self.attempt += 1
        return self.ceiling(self.attempt) * (1.0 - self.config.jitter * self.rng.random())

    def reset(self) -> None:
        self.attempt = 0


class Outcome(Enum):
    DELIVERED = "delivered"  # 2xx
    RETRY = "retry"  # 5xx, 408, 429, no answer (connection error, timeout)
    PERMANENT = "permanent"  # any other answer: retrying the same request cannot help


RETRYABLE_4XX = frozenset({408, 429})


def classify(status: int | None) -> Outcome:
    """`status` None: no HTTP answer at all (refused, reset, timed out, TLS failure)."""
    if status is None or status >= 500 or status in RETRYABLE_4XX:
        return Outcome.RETRY
    if 200 <= status < 300:
        return Outcome.DELIVERED
    return Outcome.PERMANENT  # 3xx (redirects are not followed), 4xx


def parse_retry_after(value: str | None, wall_now: float) -> float | None:
    """Retry-After (RFC 9110 §10.2.3) in seconds from now: delay-seconds or an HTTP date.
    None when absent or unreadable; capped at MAX_RETRY_AFTER."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        seconds = float(value)
    else:
        try:
            seconds = parsedate_to_datetime(value).timestamp() - wall_now
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
    return min(max(0.0, seconds), MAX_RETRY_AFTER)


class RetrySchedule:
    """When the head event of one URL's queue is attempted next (`due`, on `clock`).

    A failure escalates the backoff; a Retry-After replaces the drawn delay (the receiver
    knows best when it is back). Success or a permanent failure resets it: the next event
    starts from the first step.
    """

    def __init__(self, config: BackoffConfig, rng: random.Random,
                 clock: Callable[[], float]) -> None:
        self.backoff = Backoff(config, rng)
        self.clock = clock
        self.due = clock()
        self.retries = 0  # failed attempts of the current head event

    def failed(self, retry_after: float | None = None) -> float:
        """A retryable failure: returns the delay chosen (the next attempt is at `due`)."""
        drawn = self.backoff.next_delay()
        delay = drawn if retry_after is None else retry_after
        self.retries += 1
        self.due = self.clock() + delay
        return delay

    def settled(self) -> None:
        """The head event is done (delivered or given up): the next one goes at once."""
        self.backoff.reset()
        self.retries = 0
        self.due = self.clock()

    def wait(self) -> float:
        """Seconds until the next attempt is due (0 when it is due now)."""
        return max(0.0, self.due - self.clock())

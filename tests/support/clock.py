"""The one fake clock of the server tests: a float you move by hand."""

from __future__ import annotations


class FakeClock:
    """`clock()` returns `now`; `advance(s)` moves it. Pass it where a clock is injected
    (sessions.Registry, service.IngestService) or read `now` as the `now` of core events."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> float:
        self.now += seconds
        return self.now

"""Webhooks: stream events POSTed to configured URLs (STUB: being built; docs/webhooks.md)."""

from __future__ import annotations

from concurrent.futures import Executor
from pathlib import Path

from .config import ServerConfig
from .events import EventBus


class WebhookDispatcher:
    def __init__(self, config: ServerConfig, events: EventBus, outbox_dir: Path,
                 executor: Executor) -> None:
        self.config = config
        self.events = events
        self.outbox_dir = outbox_dir
        self.executor = executor

    async def start(self) -> None:
        """Load the persisted outbox, subscribe to the bus, start delivering."""

    async def stop(self) -> None:
        """Stop delivering; what is undelivered stays in the outbox for the next start."""

"""Per-stream connection history for the web view's continuity timeline (STUB: being built).

Subscribes to the event bus (events.py) and keeps, per stream, at most
`config.history_limit` entries (docs/notifications.md "Web view").
"""

from __future__ import annotations

from .events import EventBus


class ConnectionHistory:
    def __init__(self, events: EventBus, limit: int) -> None:
        self.events = events
        self.limit = limit

    def start(self) -> None:
        """Subscribe to every stream's events (called before the first connection)."""

    async def stop(self) -> None:
        """Unsubscribe and end the consuming task."""

    def of(self, stream_id: str) -> list[dict[str, object]] | None:
        """The stream's history entries, oldest first; None if unknown."""
        return None

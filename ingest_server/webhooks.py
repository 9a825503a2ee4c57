"""Webhooks: stream events POSTed to each configured URL, signed, retried, at least once
(docs/webhooks.md).

    event bus (events.py) ──drain──▶ Outbox (outbox.py: memory + fsynced JSON lines, per URL)
                                        └──▶ one delivery task per URL ──POST──▶ receiver

The bus never waits for us (a subscriber that falls behind is cut off), so the consumer
only turns events into payloads and appends them to the outbox, which is synchronous; the
outbox's own task writes them to disk in batches, in the IO executor. Delivery reads from
the outbox, never from the bus: an event counts as sent only once a receiver said 2xx, and
what was not sent when the server stopped (or crashed) is sent after the restart, with the
same id and the same bytes.

Per URL, events go out one at a time, in the order they happened: a receiver sees
`stream.opened` before that stream's `stream.finalized`. The price is head-of-line
blocking: while one event is being retried, later events for that URL wait. URLs are
independent: a receiver that is down delays nobody else.

Retries follow backoff.py (the uplink's policy shape). Signatures follow the Standard
Webhooks specification (https://www.standardwebhooks.com): `webhook-id`,
`webhook-timestamp` and `webhook-signature: v1,<base64 HMAC-SHA256 of "id.timestamp.body">`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import hmac
import json
import logging
import random
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path

import httpx

from .backoff import BackoffConfig, Outcome, RetrySchedule, classify, parse_retry_after
from .config import ServerConfig
from .events import EventBus, EventKind, StreamEvent, Subscription
from .outbox import Entry, Outbox, UrlQueue, payload_bytes
from .storage.store import META, Store, StreamMeta

log = logging.getLogger(__name__)

TIMEOUT = httpx.Timeout(10.0, connect=5.0)  # per attempt; a slow receiver is retried later
USER_AGENT = "echopanel-ingest-webhooks/1"
SECRET_PREFIX = "whsec_"  # Standard Webhooks: the rest is the base64 key
MIN_SUBSCRIPTION_LIMIT = 1024
SHUTDOWN_POLL = 0.1  # seconds: between looks at the closed bus until stop() (shutdown only)
FACTS_CACHED = 4096  # streams whose sample rate we remember (meta.json is read once each)


class WebhookType(StrEnum):
    """The payload's `type` (docs/webhooks.md "Events")."""

    OPENED = "stream.opened"
    RESUMED = "stream.resumed"
    GAP = "stream.gap"
    FINALIZED = "stream.finalized"  # ended by its uplink (§6)
    EXPIRED = "stream.expired"  # finalized by the session timeout (§2)
    STORAGE_FAILED = "stream.storage_failed"


_TYPES: dict[EventKind, WebhookType] = {
    EventKind.OPENED: WebhookType.OPENED,
    EventKind.RESUMED: WebhookType.RESUMED,
    EventKind.GAP: WebhookType.GAP,
    EventKind.STORAGE_FAILED: WebhookType.STORAGE_FAILED,
}
# DISCONNECTED is not sent: a dropped link either comes back (stream.resumed) or the
# stream expires (stream.expired); a graceful restart would otherwise send one per stream.


def webhook_type(event: StreamEvent) -> WebhookType | None:
    if event.kind is EventKind.FINALIZED:
        return WebhookType.EXPIRED if event.end_reason == "expired" else WebhookType.FINALIZED
    return _TYPES.get(event.kind)


@dataclass(frozen=True, slots=True)
class StreamFacts:
    """What the bus event does not carry, read from the stream's meta.json."""

    sample_rate: int
    channels: int
    meta: StreamMeta


def facts_of(meta: StreamMeta) -> StreamFacts:
    return StreamFacts(meta.format.sample_rate, meta.format.channels, meta)


def new_event_id() -> str:
    """Unique per event; fixed when the event enters the outbox, so the same on every
    attempt, to every URL, and across restarts (receivers dedupe by it)."""
    return "evt_" + uuid.uuid4().hex


def iso_time(wall: float) -> str:
    return datetime.fromtimestamp(wall, UTC).isoformat(timespec="milliseconds") \
        .replace("+00:00", "Z")


def build_payload(event: StreamEvent, kind: WebhookType, event_id: str,
                  facts: StreamFacts | None) -> dict[str, object]:
    """The JSON body (every field is in docs/webhooks.md, with an example)."""
    rate = facts.sample_rate if facts is not None else None
    body: dict[str, object] = {"id": event_id, "type": kind.value, "stream_id": event.stream_id,
                               "time": iso_time(event.wall_time), "at_sample": event.at_sample}
    if rate is not None:
        body["sample_rate"] = rate
        body["at_seconds"] = round(event.at_sample / rate, 6)
    if kind is WebhookType.OPENED and facts is not None:
        body["channels"] = facts.channels
        if facts.meta.labels:
            body["labels"] = facts.meta.labels
    if event.duplicates is not None and kind is WebhookType.RESUMED:
        body["duplicates"] = event.duplicates
    if event.gap is not None:
        g = event.gap
        body.update(start_sample=g.start_sample, end_sample=g.end_sample,
                    first_seq=g.first_seq, end_seq=g.end_seq,
                    samples=g.end_sample - g.start_sample)
        if rate is not None:
            body["seconds"] = round((g.end_sample - g.start_sample) / rate, 6)
    if kind in (WebhookType.FINALIZED, WebhookType.EXPIRED):
        body["end_reason"] = event.end_reason
        body["samples"] = event.at_sample
        if facts is not None:
            gaps = facts.meta.gaps
            lost = sum(g.end_sample - g.start_sample for g in gaps)
            body["frames"] = facts.meta.frames
            body["gaps"] = len(gaps)
            body["gap_samples"] = lost
            if rate is not None:
                body["gap_seconds"] = round(lost / rate, 6)
    if event.detail is not None:
        body["detail"] = event.detail
    return body


# -- signatures (Standard Webhooks) -----------------------------------------------------------

def signing_key(secret: str) -> bytes:
    """A `whsec_<base64>` secret is the base64 key (as Standard Webhooks libraries expect);
    any other secret is used as its UTF-8 bytes."""
    if secret.startswith(SECRET_PREFIX):
        with contextlib.suppress(binascii.Error, ValueError):
            return base64.b64decode(secret[len(SECRET_PREFIX):], validate=True)
    return secret.encode()


def sign(key: bytes, event_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` value: `v1,` + base64(HMAC-SHA256(key, "id.timestamp.body"))."""
    signed = f"{event_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


def request_headers(key: bytes | None, entry: Entry, timestamp: int) -> dict[str, str]:
    headers = {"content-type": "application/json", "user-agent": USER_AGENT,
               "webhook-id": entry.event_id, "webhook-timestamp": str(timestamp)}
    if key is not None:
        headers["webhook-signature"] = sign(key, entry.event_id, timestamp, entry.body)
    return headers


# -- the dispatcher ---------------------------------------------------------------------------

@dataclass(slots=True)
class EndpointStats:
    endpoint: str  # scheme://host[:port]/path: no query, no credentials
    delivered: int = 0  # events a receiver answered 2xx
    retried: int = 0  # attempts that failed and were retried (5xx, 408, 429, no answer)
    failed: int = 0  # events given up: the receiver answered another 4xx (or 3xx)
    dropped: int = 0  # events dropped undelivered: the outbox was full
    queued: int = 0  # events waiting (in memory and on disk)


@dataclass(slots=True)
class WebhookStats:
    endpoints: list[EndpointStats] = field(default_factory=list)
    lost: int = 0  # times the bus cut the consumer off (events then lost; should stay 0)
    outbox_write_errors: int = 0

    def total(self, name: str) -> int:
        return sum(int(getattr(e, name)) for e in self.endpoints)


@dataclass(frozen=True, slots=True)
class Attempt:
    outcome: Outcome
    status: int | None  # None: no HTTP answer
    retry_after: float | None  # seconds, from a retryable answer's Retry-After
    answer: str  # for the log: "HTTP 503", or the exception type ("ConnectError")


class WebhookDispatcher:
    def __init__(self, config: ServerConfig, events: EventBus, outbox_dir: Path,
                 executor: Executor, *, clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time, rng: random.Random | None = None,
                 backoff: BackoffConfig | None = None,
                 transport: httpx.AsyncBaseTransport | None = None,
                 describe: Callable[[str], StreamMeta | None] | None = None) -> None:
        """`describe(stream_id)`: the stream's current meta, for the payload's format and
        totals (the registry's, so any storage backend works); without it the local
        store's meta.json is read in the executor."""
        self.config = config
        self.events = events
        self.outbox_dir = outbox_dir
        self.executor = executor
        self.clock = clock
        self.wall = wall
        self.rng = rng or random.Random()
        self.backoff = backoff or BackoffConfig()
        self.transport = transport
        self.describe = describe
        self.key = signing_key(config.webhook_secret) if config.webhook_secret else None
        self.store = Store(config.data_dir, fsync=False)  # read-only use: meta.json
        self.outbox: Outbox | None = None
        self.lost = 0
        self._delivery: dict[str, EndpointStats] = {}
        self._sub: Subscription | None = None
        self._client: httpx.AsyncClient | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._drain_task: asyncio.Task[None] | None = None
        self._facts: dict[str, StreamFacts] = {}
        self._take_lock = asyncio.Lock()
        self._stopping = asyncio.Event()

    @property
    def urls(self) -> Sequence[str]:
        return self.config.webhooks

    async def start(self) -> None:
        """Load the persisted outbox, subscribe to the bus, start delivering."""
        if not self.urls:
            return  # no webhooks: no subscription, no task, no directory
        if self.key is None:
            log.warning("webhooks are sent unsigned: no --webhook-secret "
                        "(ECHOPANEL_WEBHOOK_SECRET) is set")
        # Subscribe first: nothing published while the outbox loads is missed.
        self._sub = self.events.subscribe(None, self._subscription_limit())
        await asyncio.get_running_loop().run_in_executor(
            self.executor, lambda: self.outbox_dir.mkdir(parents=True, exist_ok=True))
        outbox = Outbox(self.urls, self.outbox_dir, self.config.webhook_outbox_limit,
                        self.executor, fsync=self.config.fsync)
        await outbox.load()
        outbox.start()
        self.outbox = outbox
        self._client = httpx.AsyncClient(timeout=TIMEOUT, verify=True, follow_redirects=False,
                                         transport=self.transport)
        self._drain_task = asyncio.create_task(self._drain(), name="webhook-drain")
        for queue in outbox.queues:
            self._delivery[queue.url] = EndpointStats(queue.label)
            self._tasks.append(asyncio.create_task(self._deliver(queue),
                                                   name=f"webhook {queue.label}"))
        log.info("webhooks: %d URL(s) (%s), outbox %s, %d events queued", len(self.urls),
                 ", ".join(q.label for q in outbox.queues), self.outbox_dir, outbox.size)

    async def stop(self) -> None:
        """Stop delivering; what is undelivered stays in the outbox for the next start.

        Everything published before this call is on disk when it returns."""
        if self.outbox is None or self._sub is None:
            return
        self._stopping.set()
        self._sub.end()  # the drain task takes what is queued and returns
        if self._drain_task is not None:
            await self._drain_task
        await self._take_pending()  # published after the bus closed
        self._sub.close()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.outbox.close()
        if self._client is not None:
            await self._client.aclose()
        log.info("webhooks stopped: %d events queued for the next start", self.outbox.size)

    async def sync(self) -> None:
        """Wait until every event published so far is in the outbox on disk."""
        if self.outbox is None or self._sub is None:
            return
        await self._take_pending()
        await self.outbox.sync()

    def stats(self) -> WebhookStats:
        stats = WebhookStats(lost=self.lost,
                             outbox_write_errors=self.outbox.flush_errors if self.outbox else 0)
        if self.outbox is not None:
            for queue in self.outbox.queues:
                s = self._delivery[queue.url]
                s.dropped, s.queued = queue.dropped, len(queue.entries)
                stats.endpoints.append(EndpointStats(s.endpoint, s.delivered, s.retried,
                                                     s.failed, s.dropped, s.queued))
        return stats

    # -- bus → outbox --------------------------------------------------------------------------

    async def _drain(self) -> None:
        while True:
            sub = self._sub
            assert sub is not None
            await sub.changed()
            try:
                await self._take_pending()
            except Exception:  # a bug here must not silence every later webhook
                log.exception("webhooks: could not queue events")
            if sub.overflowed:
                # Cannot happen while the outbox keeps up (adding is synchronous); if it
                # does, the events in between are lost: say so and listen again.
                self.lost += 1
                log.error("webhooks fell too far behind the event bus: events were lost")
                sub.close()
                self._sub = self.events.subscribe(None, self._subscription_limit())
                continue
            if sub.ended:
                await self._drain_until_stopped()
                return

    async def _drain_until_stopped(self) -> None:
        """The bus closed (shutdown began: service.close_connections) but the registry still
        publishes while connections end; a `finalized` among them goes to the outbox on disk
        at once rather than at `stop()`. An ended subscription cannot be waited on, so it is
        polled, for the few seconds a shutdown lasts."""
        while not self._stopping.is_set():
            await self._take_pending()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), SHUTDOWN_POLL)

    def _subscription_limit(self) -> int:
        return max(MIN_SUBSCRIPTION_LIMIT, self.config.webhook_outbox_limit)

    async def _take_pending(self) -> None:
        """Move what the subscription holds into the outbox. One batch at a time (the lock is
        FIFO), so events enter the outbox in the order they were published."""
        async with self._take_lock:
            if self._sub is not None:
                await self._take(self._sub.pending())

    async def _take(self, events: list[StreamEvent]) -> None:
        wanted = [(e, kind) for e in events if (kind := webhook_type(e)) is not None]
        if not wanted or self.outbox is None:
            return
        need = {e.stream_id for e, kind in wanted
                if e.stream_id not in self._facts or kind in (WebhookType.FINALIZED,
                                                              WebhookType.EXPIRED,
                                                              WebhookType.OPENED)}
        if need:
            if self.describe is not None:  # in memory: no IO
                found = {sid: facts_of(meta) for sid in need
                         if (meta := self.describe(sid)) is not None}
            else:
                found = await asyncio.get_running_loop().run_in_executor(
                    self.executor, self._read_facts, sorted(need))
            if len(self._facts) + len(found) > FACTS_CACHED:
                self._facts.clear()
            self._facts.update(found)
        for event, kind in wanted:
            event_id = new_event_id()
            payload = build_payload(event, kind, event_id, self._facts.get(event.stream_id))
            self.outbox.add(event_id, payload_bytes(payload))

    def _read_facts(self, stream_ids: list[str]) -> dict[str, StreamFacts]:
        found: dict[str, StreamFacts] = {}
        for stream_id in stream_ids:
            try:
                path = self.store.stream_dir(stream_id) / META
                meta = StreamMeta.from_json(json.loads(path.read_bytes()))
            except (OSError, ValueError) as e:
                log.debug("webhooks: no meta.json for %s (%s): payload without format",
                          stream_id, e)
                continue
            found[stream_id] = facts_of(meta)
        return found

    # -- outbox → receiver ---------------------------------------------------------------------

    async def _deliver(self, queue: UrlQueue) -> None:
        assert self.outbox is not None
        stats = self._delivery[queue.url]
        schedule = RetrySchedule(self.backoff, self.rng, self.clock)
        current: Entry | None = None
        while True:
            entry = queue.head()
            if entry is None:
                await self.outbox.wait_for_events()
                continue
            if entry is not current:  # a new head (or the old one was dropped)
                current = entry
                schedule.settled()
            wait = schedule.wait()
            if wait > 0:
                await asyncio.sleep(wait)
                continue  # the head may have been dropped meanwhile
            attempt = await self._attempt(queue.url, entry)
            ctx = {"webhook": queue.label, "status": attempt.status, "event_id": entry.event_id}
            if attempt.outcome is Outcome.RETRY:
                stats.retried += 1
                delay = schedule.failed(attempt.retry_after)
                log.warning("webhook %s: %s for %s (attempt %d); retrying in %.1f s",
                            queue.label, attempt.answer, entry.event_id, schedule.retries,
                            delay, extra={"ctx": ctx})
                continue
            if attempt.outcome is Outcome.DELIVERED:
                stats.delivered += 1
            else:
                stats.failed += 1
                log.error("webhook %s: %s for %s: not retried, event dropped", queue.label,
                          attempt.answer, entry.event_id, extra={"ctx": ctx})
            queue.settle(entry)
            self.outbox.changed()

    async def _attempt(self, url: str, entry: Entry) -> Attempt:
        assert self._client is not None
        headers = request_headers(self.key, entry, int(self.wall()))
        try:
            async with self._client.stream("POST", url, content=entry.body,
                                           headers=headers) as response:
                status = response.status_code
                retry_after = parse_retry_after(response.headers.get("retry-after"),
                                                self.wall())
        except Exception as e:
            # httpx.HTTPError mostly (refused, reset, timeout, TLS): retried. Its message
            # may quote the URL, so only the type is kept.
            return Attempt(Outcome.RETRY, None, None, type(e).__name__)
        outcome = classify(status)
        return Attempt(outcome, status, retry_after if outcome is Outcome.RETRY else None,
                       f"HTTP {status}")

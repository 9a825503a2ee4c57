"""Prometheus metrics at `/metrics` (docs/operations.md "Metrics").

Cheap by construction: counters are plain ints that only the event loop thread changes, and
a collector turns them into metric families at scrape time, so an item costs a few integer
additions (no lock, no label lookup). The two histograms are observed once per fsync batch,
not per item. Gauges (connections, streams, journal bytes) are read from the live state at
scrape time. Every app gets its own CollectorRegistry, so one process can hold several apps.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from uplink.wire import CloseCode

from .auth import AUTH_FAILURE_REASONS

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                   5.0, 10.0)
BATCH_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)
# Close codes get a label each; anything else a peer sends is "other" (bounded cardinality).
KNOWN_CLOSE_CODES = frozenset({*(int(c) for c in CloseCode), 1005, 1006})
REJECTIONS = ("max_connections", "per_token")
STORAGE_OPS = ("create", "write", "fsync", "finalize", "delete")


@dataclass(frozen=True, slots=True)
class Gauges:
    connections: int
    streams_open: int
    streams_finalized: int
    streams_connected: int
    journal_bytes: int


@dataclass(frozen=True, slots=True)
class WebhookTotals:
    """Summed over every webhook URL (no URL label: a URL may carry a credential)."""

    delivered: int = 0
    retried: int = 0
    failed: int = 0
    dropped: int = 0
    lost: int = 0
    queued: int = 0


class Metrics:
    def __init__(self) -> None:
        # -- counters (event loop thread only) --
        self.messages_received = 0  # every WebSocket message after the upgrade
        self.items_received = 0  # binary items
        self.bytes_received = 0  # binary item bytes, headers included
        self.frames_received = 0  # AUDIO frames received, duplicates included
        self.frames_stored = 0
        self.duplicates = 0  # items dropped because every seq was already stored (§3)
        self.gaps = 0  # GAP records stored
        self.journal_bytes_written = 0
        self.streams_created = 0
        self.resumes = 0
        self.takeovers = 0
        self.streams_ended = 0
        self.streams_expired = 0
        self.streams_deleted = 0  # retention
        self.closes: dict[str, int] = {str(c): 0 for c in sorted(KNOWN_CLOSE_CODES)}
        self.closes["other"] = 0
        self.auth_failures = dict.fromkeys(AUTH_FAILURE_REASONS, 0)
        self.rejections = dict.fromkeys(REJECTIONS, 0)
        self.storage_errors = dict.fromkeys(STORAGE_OPS, 0)
        # -- histograms (thread-safe; observed per batch) --
        self.registry = CollectorRegistry(auto_describe=True)
        self.ack_latency = Histogram(
            "echopanel_ack_latency_seconds",
            "Oldest item of a batch: received -> its ack sent (includes the fsync).",
            buckets=LATENCY_BUCKETS, registry=self.registry)
        self.fsync_latency = Histogram(
            "echopanel_fsync_seconds", "Duration of one group commit (syncfs, or one fsync).",
            buckets=LATENCY_BUCKETS, registry=self.registry)
        self.commit_batch = Histogram(
            "echopanel_commit_batch_journals",
            "Journals made durable by one group commit (one syncfs, or 1 with --sync-mode fsync).",
            buckets=BATCH_BUCKETS, registry=self.registry)
        self._gauges: Callable[[], Gauges] = lambda: Gauges(0, 0, 0, 0, 0)
        self._webhooks: Callable[[], WebhookTotals] | None = None  # None: no webhooks set
        self.registry.register(_Collector(self))

    def close(self, code: int | None) -> None:
        key = str(code) if code in KNOWN_CLOSE_CODES else "other"
        self.closes[key] += 1

    def watch(self, gauges: Callable[[], Gauges]) -> None:
        """Where the gauges come from (the service's live state)."""
        self._gauges = gauges

    def watch_webhooks(self, totals: Callable[[], WebhookTotals]) -> None:
        """Where the webhook counters come from (webhooks.py's stats, read at scrape time)."""
        self._webhooks = totals

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


def _counter(name: str, doc: str, value: int) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)


def _labelled(name: str, doc: str, label: str, values: dict[str, int]) -> CounterMetricFamily:
    family = CounterMetricFamily(name, doc, labels=[label])
    for key, value in values.items():
        family.add_metric([key], value)
    return family


def _gauge(name: str, doc: str, value: int) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


class _Collector(Collector):
    def __init__(self, m: Metrics) -> None:
        self._m = m

    def collect(self) -> Iterator[Metric]:
        m = self._m
        yield _counter("echopanel_messages_received", "WebSocket messages received.",
                       m.messages_received)
        yield _counter("echopanel_items_received", "Binary items received.", m.items_received)
        yield _counter("echopanel_bytes_received", "Bytes of binary items received.",
                       m.bytes_received)
        yield _counter("echopanel_frames_received",
                       "Audio frames received, duplicates included.", m.frames_received)
        yield _counter("echopanel_frames_stored", "Audio frames appended to journals.",
                       m.frames_stored)
        yield _counter("echopanel_duplicates_dropped",
                       "Items dropped because the server already held them.", m.duplicates)
        yield _counter("echopanel_gaps", "GAP records stored.", m.gaps)
        yield _counter("echopanel_journal_written_bytes", "Bytes appended to journals.",
                       m.journal_bytes_written)
        yield _counter("echopanel_streams_created", "Streams created.", m.streams_created)
        yield _counter("echopanel_resumes", "Successful resumes of an existing stream.",
                       m.resumes)
        yield _counter("echopanel_takeovers",
                       "Resumes that superseded a live connection (4411).", m.takeovers)
        yield _counter("echopanel_streams_ended", "Streams finalized by end.", m.streams_ended)
        yield _counter("echopanel_streams_expired", "Streams finalized by the session timeout.",
                       m.streams_expired)
        yield _counter("echopanel_streams_deleted", "Finalized streams deleted by retention.",
                       m.streams_deleted)
        yield _labelled("echopanel_closes", "WebSocket connections ended, by close code "
                        "(the server's, else the peer's; 1006: no close frame).", "code",
                        m.closes)
        yield _labelled("echopanel_auth_failures", "Requests refused by authentication.",
                        "reason", m.auth_failures)
        yield _labelled("echopanel_upgrades_rejected", "WebSocket upgrades refused by a "
                        "connection limit (503 overall, 429 per token).", "limit", m.rejections)
        yield _labelled("echopanel_storage_errors", "Failed storage operations.", "op",
                        m.storage_errors)
        g = m._gauges()
        yield _gauge("echopanel_connections", "Open WebSocket connections.", g.connections)
        streams = GaugeMetricFamily("echopanel_streams", "Streams held, by state.",
                                    labels=["state"])
        streams.add_metric(["open"], g.streams_open)
        streams.add_metric(["finalized"], g.streams_finalized)
        yield streams
        yield _gauge("echopanel_streams_connected", "Streams with a live connection.",
                     g.streams_connected)
        yield _gauge("echopanel_journal_bytes", "Bytes in the journals of open streams.",
                     g.journal_bytes)
        if m._webhooks is not None:
            w = m._webhooks()
            yield _counter("echopanel_webhooks_delivered", "Webhook events a receiver "
                           "answered with 2xx (docs/webhooks.md).", w.delivered)
            yield _counter("echopanel_webhooks_retried", "Webhook attempts that failed and "
                           "will be retried (5xx, 408, 429, no answer).", w.retried)
            yield _counter("echopanel_webhooks_failed", "Webhook events given up: the "
                           "receiver answered another 4xx.", w.failed)
            yield _counter("echopanel_webhooks_dropped", "Webhook events dropped undelivered "
                           "because the outbox was full.", w.dropped)
            yield _counter("echopanel_webhooks_lost", "Times the event bus cut the webhook "
                           "consumer off (its events were lost; should stay 0).", w.lost)
            yield _gauge("echopanel_webhook_outbox_events", "Webhook events waiting in the "
                         "outbox.", w.queued)

"""/metrics, parsed by the Prometheus client's own parser, counts exactly what the test did
(docs/operations.md "Metrics"). A fresh app per test: each has its own registry."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from websockets.exceptions import InvalidStatus

from ingest_server.storage.journal import FILE_MAGIC, RECORD_HEADER_SIZE
from uplink.wire import encode_audio, encode_gap

from .client import FRAME, Client, frames
from .harness import WAIT, free_port, in_process, scrape, value

TOKEN = "metrics-token-0123456789"
FRAME_BYTES = FRAME * 2


def test_counters_match_what_the_clients_did(tmp_path: Path) -> None:
    f = frames(20, seed=80)
    sent_bytes = 0
    with in_process(tmp_path / "data", tokens=(TOKEN,)) as srv:
        with Client(srv.url, TOKEN) as a:
            a.hello("a")
            a.stream(0, f[:10])  # 10 items, 10 frames
            a.audio(8, 8 * FRAME, [f[8]])  # duplicate: 1 item, 1 frame
            a.wait_acked(10)
            a.audio(3, 3 * FRAME, f[3:6])  # duplicate run: 1 item, 3 frames
            a.wait_acked(10)
            a.gap(10, 3, 10 * FRAME, 13 * FRAME)  # 1 item, a gap of 3 seqs
            a.audio(13, 13 * FRAME, f[10:12])  # 1 item, 2 frames coalesced
            a.wait_acked(15)
            a.end(15, 15 * FRAME)
            sent_bytes += 10 * (24 + FRAME_BYTES) + (24 + FRAME_BYTES) + (24 + 3 * FRAME_BYTES)
            sent_bytes += len(encode_gap(1, 10, 0, 3, 0)) + 24 + 2 * FRAME_BYTES
        with Client(srv.url, TOKEN) as b:
            wb = b.hello("b")
            b.stream(0, f[:3])
        with Client(srv.url, TOKEN) as b:  # a resume
            b.hello("b", resume=wb)
            b.stream(3, f[3:5])
            b.end(5, 5 * FRAME)
            sent_bytes += 5 * (24 + FRAME_BYTES)
        with Client(srv.url, TOKEN) as bad:
            bad.hello("c")
            bad.send(encode_audio(1, 0, 0, 1, f[0]) + b"\x00")  # half a sample: 1007
            bad.expect_close()
            sent_bytes += 24 + FRAME_BYTES + 1
        for headers in ({}, {"Authorization": "Bearer wrong-token-0123456789"}):
            with pytest.raises(InvalidStatus):
                Client(srv.url, headers=headers)
        assert httpx.get(f"{srv.http}/v1/streams?token={TOKEN}", timeout=WAIT).status_code == 401
        srv.connections_finished()
        m = scrape(srv.http, TOKEN)

    def total(name: str, **labels: str) -> float:
        return value(m, f"echopanel_{name}_total", **labels)

    assert total("streams_created") == 3
    assert total("resumes") == 1
    assert total("takeovers") == 0
    assert total("items_received") == 10 + 2 + 1 + 1 + 3 + 2 + 1
    assert total("frames_received") == 10 + 1 + 3 + 2 + 3 + 2
    assert total("frames_stored") == 10 + 2 + 3 + 2
    assert total("duplicates_dropped") == 2
    assert total("gaps") == 1
    assert total("bytes_received") == sent_bytes
    stored_records = 10 + 1 + 1 + 3 + 2  # a: 10 + gap + coalesced pair; b: 3 + 2
    assert total("journal_written_bytes") == stored_records * RECORD_HEADER_SIZE + (
        10 + 2 + 3 + 2) * FRAME_BYTES
    assert total("streams_ended") == 2
    # Every connection is counted once, by what ended it: 2 x 1000 by the server after
    # `ended`, 1 x 1000 from the client that left, 1 x 1007 for the bad item. Refused
    # upgrades never became connections.
    assert total("closes", code="1000") == 3
    assert total("closes", code="1007") == 1
    assert sum(v for (n, _), v in m.items() if n == "echopanel_closes_total") == 4
    assert total("auth_failures", reason="missing") == 1
    assert total("auth_failures", reason="invalid") == 1
    assert total("auth_failures", reason="in_url") == 1
    assert total("upgrades_rejected", limit="max_connections") == 0
    # Histograms: one observation per fsync batch / ack, at least one each.
    fsyncs = value(m, "echopanel_fsync_seconds_count")
    acks = value(m, "echopanel_ack_latency_seconds_count")
    assert 1 <= acks <= 10 + 1 + 1 + 3 + 2 and fsyncs >= 1
    assert value(m, "echopanel_ack_latency_seconds_bucket", le="+Inf") == acks
    assert value(m, "echopanel_fsync_seconds_sum") >= 0
    # Gauges, read from the live state: c stays open with an empty journal.
    assert value(m, "echopanel_connections") == 0
    assert value(m, "echopanel_streams", state="open") == 1
    assert value(m, "echopanel_streams", state="finalized") == 2
    assert value(m, "echopanel_streams_connected") == 0
    assert value(m, "echopanel_journal_bytes") == len(FILE_MAGIC)


def test_open_journal_bytes_and_connections_are_live(tmp_path: Path) -> None:
    with in_process(tmp_path / "data") as srv, Client(srv.url) as c:
        c.hello("live")
        c.stream(0, frames(4, seed=81))
        m = scrape(srv.http)
        assert value(m, "echopanel_connections") == 1
        assert value(m, "echopanel_streams_connected") == 1
        assert value(m, "echopanel_journal_bytes") == len(FILE_MAGIC) + 4 * (
            RECORD_HEADER_SIZE + FRAME_BYTES)


def test_metrics_need_a_token_unless_made_public(tmp_path: Path) -> None:
    with in_process(tmp_path / "a", tokens=(TOKEN,)) as srv:
        assert httpx.get(f"{srv.http}/metrics", timeout=WAIT).status_code == 401
        assert scrape(srv.http, TOKEN)
    with in_process(tmp_path / "b", tokens=(TOKEN,), public_metrics=True) as srv:
        assert httpx.get(f"{srv.http}/metrics", timeout=WAIT).status_code == 200
        assert httpx.get(f"{srv.http}/v1/streams", timeout=WAIT).status_code == 401


def test_every_documented_metric_is_exposed(tmp_path: Path) -> None:
    doc = (Path(__file__).parents[2] / "docs" / "operations.md").read_text()
    with in_process(tmp_path / "data") as srv:
        names = {name for name, _ in scrape(srv.http) if name.startswith("echopanel_")}
    families = {n.removesuffix("_total").removesuffix("_bucket").removesuffix("_count")
                .removesuffix("_sum").removesuffix("_created") for n in names}
    for family in families:
        assert f"`{family}" in doc, f"docs/operations.md does not document {family}"


def test_webhook_counters_appear_with_webhooks(tmp_path: Path) -> None:
    """With --webhook, /metrics carries the dispatcher's totals (docs/webhooks.md
    "Monitoring"); a receiver that refuses every connection keeps the event queued."""
    import time

    doc = (Path(__file__).parents[2] / "docs" / "operations.md").read_text()
    refused = f"http://127.0.0.1:{free_port()}/hook"  # nobody listens there
    with in_process(tmp_path / "data", webhooks=(refused,)) as srv, Client(srv.url) as c:
        c.hello("hooked")
        c.stream(0, frames(2, seed=82))
        deadline = time.monotonic() + WAIT
        while True:
            m = scrape(srv.http)
            if value(m, "echopanel_webhooks_retried_total") >= 1 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert value(m, "echopanel_webhooks_retried_total") >= 1
        assert value(m, "echopanel_webhook_outbox_events") == 1  # stream.opened, waiting
        assert value(m, "echopanel_webhooks_delivered_total") == 0
        names = {name for name, _ in m if "webhook" in name}
        assert all(refused not in name for name in names)
    for family in ("echopanel_webhooks_delivered", "echopanel_webhooks_retried",
                   "echopanel_webhooks_failed", "echopanel_webhooks_dropped",
                   "echopanel_webhooks_lost", "echopanel_webhook_outbox_events"):
        assert f"`{family}" in doc, family

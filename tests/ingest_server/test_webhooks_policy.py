"""Webhook signatures (Standard Webhooks known vector), the retry classification, Retry-After
and the backoff schedule on a fake clock (ingest_server/backoff.py, webhooks.py)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import random
import re
import time
from datetime import UTC, datetime
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import pytest

from ingest_server.backoff import (
    MAX_RETRY_AFTER,
    Backoff,
    BackoffConfig,
    Outcome,
    RetrySchedule,
    classify,
    parse_retry_after,
)
from ingest_server.events import EventKind, StreamEvent
from ingest_server.outbox import Entry, endpoint_label
from ingest_server.storage.interface import Gap
from ingest_server.webhooks import (
    WebhookType,
    build_payload,
    request_headers,
    sign,
    signing_key,
    webhook_type,
)
from tests.support.clock import FakeClock


def test_signature_matches_the_standard_webhooks_known_vector() -> None:
    # The reference vector of the Standard Webhooks libraries (and Svix's).
    key = signing_key("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
    got = sign(key, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, b'{"test": 2432232314}')
    assert got == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_a_plain_secret_is_its_utf8_bytes_and_the_docs_verifier_accepts_it() -> None:
    secret = "plain-secret-0123456789"
    assert signing_key(secret) == secret.encode()
    entry = Entry(1, "evt_1", b'{"id":"evt_1"}')
    headers = request_headers(signing_key(secret), entry, 1700000000)
    assert headers["webhook-id"] == "evt_1" and headers["webhook-timestamp"] == "1700000000"
    # docs/webhooks.md "Verifying a signature", as written there
    signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + entry.body
    expected = base64.b64encode(hmac.new(secret.encode(), signed, hashlib.sha256).digest())
    assert any(hmac.compare_digest(sig.split(",", 1)[1].encode(), expected)
               for sig in headers["webhook-signature"].split())
    assert "webhook-signature" not in request_headers(None, entry, 1700000000)


@pytest.mark.parametrize("status,outcome", [
    (200, Outcome.DELIVERED), (204, Outcome.DELIVERED), (299, Outcome.DELIVERED),
    (None, Outcome.RETRY), (500, Outcome.RETRY), (503, Outcome.RETRY), (408, Outcome.RETRY),
    (429, Outcome.RETRY), (301, Outcome.PERMANENT), (400, Outcome.PERMANENT),
    (401, Outcome.PERMANENT), (404, Outcome.PERMANENT), (410, Outcome.PERMANENT)])
def test_classification(status: int | None, outcome: Outcome) -> None:
    assert classify(status) is outcome


def test_retry_after_seconds_dates_and_garbage() -> None:
    now = 1_700_000_000.0
    assert parse_retry_after(None, now) is None
    assert parse_retry_after("3", now) == 3.0
    assert parse_retry_after(" 0 ", now) == 0.0
    assert parse_retry_after("999999", now) == MAX_RETRY_AFTER
    date = format_datetime(datetime.fromtimestamp(now + 42, UTC), usegmt=True)
    assert parse_retry_after(date, now) == pytest.approx(42.0)
    past = format_datetime(datetime.fromtimestamp(now - 42, UTC), usegmt=True)
    assert parse_retry_after(past, now) == 0.0
    assert parse_retry_after("soon", now) is None
    assert parse_retry_after("-5", now) is None


def test_backoff_ceilings_double_up_to_the_cap() -> None:
    b = Backoff(BackoffConfig(base=0.5, cap=60.0, jitter=0.0), random.Random(1))
    assert [b.next_delay() for _ in range(10)] == [0.5, 1, 2, 4, 8, 16, 32, 60, 60, 60]
    b.reset()
    assert b.next_delay() == 0.5


def test_full_jitter_stays_within_the_ceiling() -> None:
    b = Backoff(BackoffConfig(), random.Random(7))
    for attempt in range(1, 12):
        delay = b.next_delay()
        assert 0 < delay <= b.ceiling(attempt)


def test_retry_schedule_on_a_fake_clock() -> None:
    clock = FakeClock(100.0)
    s = RetrySchedule(BackoffConfig(base=1.0, cap=8.0, jitter=0.0), random.Random(0), clock)
    assert s.wait() == 0.0  # the first attempt goes at once
    due = []
    for _ in range(5):
        s.failed()
        due.append(s.due)
        assert s.wait() == due[-1] - clock.now
        clock.now = s.due  # the attempt happens exactly when due, and fails again
    assert due == [101.0, 103.0, 107.0, 115.0, 123.0]
    assert s.retries == 5
    s.failed(retry_after=30.0)  # the receiver knows when it is back: that replaces the draw
    assert s.due == clock.now + 30.0
    clock.advance(10)
    assert s.wait() == 20.0
    clock.advance(20)
    s.settled()  # delivered: the next event starts afresh
    assert s.retries == 0 and s.wait() == 0.0
    s.failed()
    assert s.due == clock.now + 1.0


def test_payloads_name_the_event_and_carry_the_gap_in_samples_and_seconds() -> None:
    gap = Gap(first_seq=10, end_seq=14, start_sample=3200, end_sample=8000)
    event = StreamEvent(EventKind.GAP, "s1", 9600, 1_700_000_000.25, gap=gap)
    assert webhook_type(event) is WebhookType.GAP
    body = build_payload(event, WebhookType.GAP, "evt_x", None)
    assert body == {"id": "evt_x", "type": "stream.gap", "stream_id": "s1",
                    "time": "2023-11-14T22:13:20.250Z", "at_sample": 9600,
                    "start_sample": 3200, "end_sample": 8000, "first_seq": 10, "end_seq": 14,
                    "samples": 4800}
    ended = StreamEvent(EventKind.FINALIZED, "s1", 16000, 0.0, end_reason="ended")
    expired = StreamEvent(EventKind.FINALIZED, "s1", 16000, 0.0, end_reason="expired")
    assert webhook_type(ended) is WebhookType.FINALIZED
    assert webhook_type(expired) is WebhookType.EXPIRED
    assert webhook_type(StreamEvent(EventKind.DISCONNECTED, "s1", 0, 0.0)) is None


def test_endpoint_labels_never_carry_credentials() -> None:
    assert endpoint_label("https://user:pw@hooks.example:8443/in?token=abc#x") \
        == "https://hooks.example:8443/in"
    assert endpoint_label("http://[::1]/") == "http://[::1]/"
    assert endpoint_label("http://h") == "http://h/"


DOCS = Path(__file__).resolve().parents[2] / "docs" / "webhooks.md"


def test_the_documented_verifier_and_example_request_are_right() -> None:
    """docs/webhooks.md: its Python verifier, run as written, accepts what the server sends
    and rejects a changed body; its example request's signature is the real one."""
    text = DOCS.read_text()
    [code] = re.findall(r"```python\n(.*?)```", text, re.S)
    namespace: dict[str, Any] = {}
    exec(code, namespace)
    verify = namespace["verify"]
    key = signing_key("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
    entry = Entry(1, "evt_1", b'{"id":"evt_1","type":"stream.opened"}')
    headers = request_headers(key, entry, int(time.time()))
    assert verify(key, headers, entry.body)
    assert not verify(key, headers, entry.body + b" ")
    assert not verify(b"another key", headers, entry.body)
    stale = request_headers(key, entry, int(time.time()) - 3600)
    assert not verify(key, stale, entry.body)

    request = re.search(r"```\nPOST .*?\n\n(.*?)\n```", text, re.S)
    assert request is not None
    head, body = request.group(0).split("\n\n", 1)
    fields = dict(line.split(": ", 1) for line in head.splitlines()[2:])
    body_bytes = body.removesuffix("\n```").encode()
    assert int(fields["content-length"]) == len(body_bytes)
    assert sign(key, fields["webhook-id"], int(fields["webhook-timestamp"]), body_bytes) \
        == fields["webhook-signature"]

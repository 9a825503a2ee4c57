"""Every log line is redacted (docs/operations.md "Tokens"): query strings, bearer values and
configured tokens, in the message, the structured fields and the exception text."""

from __future__ import annotations

import json
import logging

import pytest

from ingest_server.logs import REDACTED, JsonFormatter, RedactSecrets

TOKEN = "log-token-0123456789abcdef"


def render(record: logging.LogRecord, formatter: logging.Formatter) -> str:
    assert RedactSecrets([TOKEN]).filter(record)
    return formatter.format(record)


def record(msg: str, *args: object, exc: BaseException | None = None,
           ctx: dict[str, object] | None = None) -> logging.LogRecord:
    exc_info = (type(exc), exc, exc.__traceback__) if exc is not None else None
    rec = logging.LogRecord("uvicorn.error", logging.INFO, __file__, 1, msg, args, exc_info)
    if ctx is not None:
        rec.ctx = ctx
    return rec


@pytest.mark.parametrize("formatter", [logging.Formatter("%(message)s"), JsonFormatter()],
                         ids=["text", "json"])
def test_uvicorn_request_lines_lose_their_query_string(formatter: logging.Formatter) -> None:
    for path in (f"/v1/stream?token={TOKEN}", "/v1/stream?sid=x&k=wrong-secret-value-123",
                 "/?wrong-secret-value-123"):
        line = render(record('%s - "WebSocket %s" %d', "127.0.0.1:5", path, 401), formatter)
        assert f"?{REDACTED}" in line and TOKEN not in line
        assert "wrong-secret" not in line


def test_tokens_bearer_values_fields_and_tracebacks_are_redacted() -> None:
    try:
        raise ValueError(f"bad request ws://h:1/v1/stream?t={TOKEN}")
    except ValueError as e:
        exc = e
    line = render(record("saw Authorization: Bearer some-wrong-token-value and %s", TOKEN,
                         exc=exc, ctx={"reason": f"token {TOKEN}", "code": 1008}),
                  JsonFormatter())
    obj = json.loads(line)
    assert TOKEN not in line and "some-wrong-token-value" not in line
    assert obj["message"] == f"saw Authorization: Bearer {REDACTED} and {REDACTED}"
    assert obj["reason"] == f"token {REDACTED}" and obj["code"] == 1008
    assert "ValueError: bad request ws://h:1/v1/stream?" + REDACTED in obj["exception"]


def test_ordinary_lines_are_unchanged() -> None:
    line = render(record("connection refused — is echopanel-ingest running? %s", "yes"),
                  logging.Formatter("%(message)s"))
    assert line == "connection refused — is echopanel-ingest running? yes"

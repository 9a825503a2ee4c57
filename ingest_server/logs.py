"""Logging to stderr: readable text by default, or one JSON object per line (--log-format json).

Structured fields travel in `extra={"ctx": {...}}` (stream_id, peer, token label, close code,
reason...). The text format shows the message, which already names what matters; the JSON
format adds the fields as top-level keys, for log pipelines to index.

No credential reaches a log line (docs/operations.md "Tokens"). Clients put tokens in URLs
even though the server refuses them there (401), and uvicorn's request lines ('"WebSocket
/v1/stream?token=..." 401') print the whole URL. So every record, from any logger, passes
`RedactSecrets` on its way to the handler: query strings become `?<redacted>`, whatever
follows "Bearer " becomes `<redacted>`, and so does any configured token wherever it
appears. The message, the structured fields and the exception text are all redacted.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Iterable
from datetime import UTC, datetime

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_RESERVED = ("ts", "level", "logger", "message")
REDACTED = "<redacted>"
# A query string after a path ("/v1/stream?token=x", "//host?x"): up to the next blank or
# quote, which is where uvicorn's request lines and our messages end a URL.
_QUERY = re.compile(r"(/[^\s\"'?]*)\?[^\s\"']+")
_BEARER = re.compile(r"(?i)(bearer(?:\s|%20|\+)+)[^\s\"',;]+")


class RedactSecrets(logging.Filter):
    """Rewrites each record so that no query string, bearer value or token survives."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        # Longest first, so a token that contains another is replaced whole.
        self._secrets = sorted({s for s in secrets if s}, key=len, reverse=True)

    def redact(self, text: str) -> str:
        text = _QUERY.sub(rf"\1?{REDACTED}", text)
        text = _BEARER.sub(rf"\1{REDACTED}", text)
        for secret in self._secrets:
            text = text.replace(secret, REDACTED)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = self.redact(message)
        if clean != message or record.args:
            record.msg, record.args = clean, None
        ctx = getattr(record, "ctx", None)
        if isinstance(ctx, dict):
            record.ctx = {k: self.redact(v) if isinstance(v, str) else v
                          for k, v in ctx.items()}
        if record.exc_info and not record.exc_text:
            # Formatters reuse exc_text when it is set: format it once, redacted.
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.redact(record.exc_text)
        if record.stack_info:
            record.stack_info = self.redact(record.stack_info)
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        obj: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        ctx = getattr(record, "ctx", None)
        if isinstance(ctx, dict):
            for key, value in ctx.items():
                if key not in _RESERVED and value is not None:
                    obj[key] = value
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            obj["exception"] = record.exc_text
        return json.dumps(obj, default=str)


def setup_logging(level: str, fmt: str, secrets: Iterable[str] = ()) -> None:
    """`secrets`: the configured tokens, redacted from every line wherever they appear."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    handler.addFilter(RedactSecrets(secrets))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())

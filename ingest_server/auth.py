"""Bearer-token authentication of the WebSocket upgrade and the REST API (docs/protocol.md
§10, docs/operations.md "Tokens").

- A token travels only in `Authorization: Bearer <token>` (RFC 6750 §2.1). A request with a
  token in its URL is refused with 401 even if its header is fine: URLs end up in proxy and
  access logs. "In its URL": a token-like query parameter name (`?token=...`), or a
  configured token anywhere in the query string, in any shape (`?TOKEN`, `a=1;t=TOKEN`,
  `x=Bearer%20TOKEN`, percent-encoded once or more), found after percent-decoding.
- No usable header: 401 (with `WWW-Authenticate`). A well-formed but unknown token: 403.
- The presented token is hashed (SHA-256) and compared with every configured token's digest
  by `hmac.compare_digest`, without an early exit: the time taken says nothing about which
  token matched or how close a guess was.
- A token is known by its SHA-256 hex digest: per-token connection limits, stream ownership
  (`token_sha256` in meta.json) and logs (first 8 hex digits only) never see the token.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl, unquote, unquote_plus

log = logging.getLogger(__name__)

MIN_TOKEN_LENGTH = 16
# RFC 6750 b64token: what may follow "Bearer " without quoting.
TOKEN_RE = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
# Query parameters that clients commonly (and wrongly) use for credentials.
QUERY_TOKEN_KEYS = frozenset({"token", "access_token", "bearer", "auth", "authorization",
                              "api_key", "apikey", "key", "jwt", "password"})
REALM = 'Bearer realm="echopanel-ingest"'
AUTH_FAILURE_REASONS = ("missing", "malformed", "in_url", "invalid")


class TokenError(ValueError):
    """A configured token or token file is unusable; the message says why (never the token)."""


def validate_token(token: str) -> None:
    if len(token) < MIN_TOKEN_LENGTH:
        raise TokenError(f"tokens must be at least {MIN_TOKEN_LENGTH} characters; make one "
                         "with: python -c 'import secrets; print(secrets.token_urlsafe(32))'")
    if TOKEN_RE.fullmatch(token) is None:
        raise TokenError("tokens may only contain A-Z a-z 0-9 - . _ ~ + / (and trailing =)")


def split_tokens(text: str) -> list[str]:
    """`ECHOPANEL_TOKEN`: one token or several, comma-separated."""
    return [t.strip() for t in text.split(",") if t.strip()]


def read_token_file(path: Path) -> list[str]:
    """One token per line; blank lines and lines starting with '#' are ignored."""
    try:
        text = path.read_text()
        mode = path.stat().st_mode
    except OSError as e:
        raise TokenError(f"cannot read token file {path}: {e.strerror or e}") from None
    tokens = [line.strip() for line in text.splitlines()
              if line.strip() and not line.strip().startswith("#")]
    if not tokens:
        raise TokenError(f"token file {path} holds no tokens")
    for i, token in enumerate(tokens):
        try:
            validate_token(token)
        except TokenError as e:
            raise TokenError(f"token file {path}, token #{i + 1}: {e}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("token file %s is readable by other users (chmod 600 it)", path)
    return tokens


def token_sha256(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is connecting: the SHA-256 of their token, or None when authentication is off."""

    token_sha256: str | None

    @property
    def label(self) -> str:
        """For logs: enough to tell tokens apart, useless to an attacker."""
        return f"token:{self.token_sha256[:8]}" if self.token_sha256 else "anonymous"


ANONYMOUS = Principal(None)


@dataclass(frozen=True, slots=True)
class Denial:
    status: int  # 401 or 403
    reason: str  # one of AUTH_FAILURE_REASONS (a metrics label)
    detail: str

    @property
    def headers(self) -> dict[str, str]:
        if self.status == 401:
            return {"WWW-Authenticate": REALM}
        return {"WWW-Authenticate": REALM + ', error="invalid_token"'}


# Percent-decoding rounds tried on a query string (a token encoded twice is still found).
MAX_DECODE_ROUNDS = 4


def query_decodings(query_string: str) -> set[str]:
    """The query string as sent and percent-decoded (with '+' kept, and as a space), each
    repeatedly until nothing changes: every form in which a token could be hidden."""
    forms = {query_string}
    for decode in (unquote, unquote_plus):
        text = query_string
        for _ in range(MAX_DECODE_ROUNDS):
            decoded = decode(text)
            if decoded == text:
                break
            forms.add(decoded)
            text = decoded
    return forms


class Authenticator:
    def __init__(self, tokens: Sequence[str]) -> None:
        self._digests = [hashlib.sha256(t.encode()).digest() for t in tokens]
        # Kept only to find a token pasted into a URL (_token_in_query); never logged.
        self._tokens = tuple(tokens)

    @property
    def enabled(self) -> bool:
        return bool(self._digests)

    def _match(self, presented: str) -> str | None:
        """The matching token's hex digest. Constant time in the presented token's value."""
        digest = hashlib.sha256(presented.encode("utf-8", "replace")).digest()
        matched: bytes | None = None
        for known in self._digests:  # no early exit
            if hmac.compare_digest(digest, known):
                matched = known
        return matched.hex() if matched is not None else None

    def check(self, authorization: Sequence[str], query_string: str) -> Principal | Denial:
        """`authorization`: every Authorization header value of the request."""
        if not self.enabled:
            return ANONYMOUS
        if query_string and self._token_in_query(query_string):
            return Denial(401, "in_url", "send the token in the Authorization header, never "
                          "in the URL")
        if not authorization:
            return Denial(401, "missing", "missing 'Authorization: Bearer <token>' header")
        if len(authorization) > 1:
            return Denial(401, "malformed", "more than one Authorization header")
        scheme, _, token = authorization[0].strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return Denial(401, "malformed", "the Authorization header must be "
                          "'Bearer <token>'")
        matched = self._match(token)
        if matched is None:
            return Denial(403, "invalid", "token not accepted")
        return Principal(matched)

    def _token_in_query(self, query_string: str) -> bool:
        if any(key.lower() in QUERY_TOKEN_KEYS
               for key, _ in parse_qsl(query_string, keep_blank_values=True)):
            return True
        # A substring search, not a parse: `?TOKEN`, `;`-separated pairs and a token inside
        # a value ("Bearer TOKEN") all count. The answer only chooses between two refusals
        # or lets the header check decide, so it is no better an oracle than the header.
        forms = query_decodings(query_string)
        return any(token in form for form in forms for token in self._tokens)


class SessionSigner:
    """Short-lived sessions for the web view's `<audio>` element (docs/ui.md "Auth").

    An `<audio>` element cannot send an Authorization header, and a token must never be in
    a URL (§10). So the page, holding the token, trades it once for a session: an HMAC-
    signed expiry time, with a key made at start-up and never stored (a restart or the TTL
    ends every session). The cookie holds no token and nothing derived from one; it only
    says "a valid token asked for this until then". It is accepted for reading audio only
    (GET / HEAD on the web view's audio route, ui.py).
    """

    def __init__(self, ttl: float, key: bytes | None = None) -> None:
        self.ttl = ttl
        self._key = key if key is not None else secrets.token_bytes(32)

    def _sign(self, expires: int) -> str:
        return hmac.new(self._key, str(expires).encode(), hashlib.sha256).hexdigest()

    def issue(self, now: float) -> str:
        expires = int(now + self.ttl)
        return f"{expires}.{self._sign(expires)}"

    def valid(self, value: str | None, now: float) -> bool:
        if not value:
            return False
        expires_text, _, signature = value.partition(".")
        if not expires_text.isdigit() or len(expires_text) > 12:
            return False
        expires = int(expires_text)
        return hmac.compare_digest(signature, self._sign(expires)) and now < expires

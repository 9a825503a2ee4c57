"""The uplink's exception hierarchy: retriable versus fatal is a type, not a string.

    UplinkError
    ├── RetriableError          the uplink reconnects (backoff, breaker)
    │   ├── ConnectFailed       refused, reset, timeout, HTTP 5xx on the upgrade; DNS on an
    │   │                       established stream
    │   ├── ConnectionDropped   the link closed with a retriable code, or abnormally
    │   └── LinkDead            no ack / no pong within the deadline (zombie link)
    └── FatalError              the uplink stops, says why, and keeps the buffered audio
        ├── Refused             the server refused the stream for good (code / HTTP status)
        │   ├── HandshakeRefused HTTP 401/403/404 on the upgrade, a fatal close before the
        │   │                    welcome, or a welcome saying the stream is finalized
        │   └── StreamClosed    a fatal close code on an established stream (4411 taken
        │                       over, 1008 policy, 4410 finalized, 1002 protocol error …)
        ├── TlsFailure          certificate verification failed, or TLS against a plain server
        ├── AddressUnresolvable the host name does not resolve (before the first connection)
        ├── ServerProtocolError the server broke protocol v1 (or lost acknowledged audio)
        ├── RetryBudgetExhausted gave up after the configured attempts / outage time
        └── Interrupted         the user stopped the uplink before everything was delivered

The asyncio layer translates socket and websockets exceptions into these at the boundary
(``raise ConnectFailed(...) from e``) so the sans-I/O core only ever sees this hierarchy.
"""

from __future__ import annotations

from uplink.wire import CloseCode, Retry, retry_for_close


class UplinkError(Exception):
    """Base class of everything the uplink raises or reports."""


class RetriableError(UplinkError):
    """The link failed in a way that reconnecting can fix."""

    #: escalate backoff (True) or reconnect soon with a small jittered delay (False)
    escalate: bool = True

    @property
    def restart_symptom(self) -> bool:
        """What a restarting server looks like from outside (refused, reset, abnormal close).

        Within the restart grace these neither escalate the backoff nor count against the
        breaker (docs/resilience.md, "Restarts are not failures"). An answer from a server
        that is up (HTTP 503, close 1013) is never one: it asked us to back off.
        """
        return False


class FatalError(UplinkError):
    """Reconnecting cannot fix this; the user must act."""


class ConnectFailed(RetriableError):
    """Opening the connection failed (refused, reset, DNS, timeout, HTTP 5xx).

    `http_status` is set when the server answered the upgrade (it is up, just busy);
    `unresolved` when the host name did not resolve (the core makes that fatal before the
    stream was ever established: the address is wrong, retrying cannot fix it).
    """

    def __init__(
        self, message: str, *, http_status: int | None = None, unresolved: bool = False
    ) -> None:
        super().__init__(message)
        self.http_status = http_status
        self.unresolved = unresolved

    @property
    def restart_symptom(self) -> bool:
        return self.http_status is None and not self.unresolved


class ConnectionDropped(RetriableError):
    """An established connection closed with a retriable code or without a close frame."""

    def __init__(self, message: str, code: int | None = None, escalate: bool = True) -> None:
        super().__init__(message)
        self.code = code
        self.escalate = escalate

    @property
    def restart_symptom(self) -> bool:
        return self.code is None  # abnormal closure: the process died (SIGKILL, crash)


class LinkDead(RetriableError):
    """Zombie link: no ack or pong within its deadline (docs/protocol.md §8)."""


class Refused(FatalError):
    """The server refused the stream for good; `code` is the close code, `http_status` the
    answer to the upgrade (one of them is set)."""

    def __init__(
        self, message: str, code: int | None = None, http_status: int | None = None
    ) -> None:
        super().__init__(message)
        self.code = code
        self.http_status = http_status


class HandshakeRefused(Refused):
    """Refused before streaming: HTTP 401/403/404 on the upgrade, a fatal close code before
    the welcome, or a welcome for a finalized stream."""


class StreamClosed(Refused):
    """A stream that was flowing was closed with a fatal code (docs/protocol.md §7): taken
    over by another connection (4411), a policy or protocol violation, a finalized stream."""


class ServerProtocolError(FatalError):
    """The server sent something protocol v1 does not allow."""


class TlsFailure(FatalError):
    """TLS cannot work with this configuration: a certificate the client does not trust, or
    TLS spoken to a plain server. The message says what to do (--cafile, or ws://)."""


class AddressUnresolvable(FatalError):
    """The server's host name does not resolve and no stream was established yet."""


class RetryBudgetExhausted(FatalError):
    """The retry budget (attempts before the first connection, or outage time) ran out."""


class Interrupted(FatalError):
    """The user gave up waiting (e.g. a second Ctrl-C); the audio stays in the ring."""


class LocalProtocolError(RuntimeError):
    """The core was driven through an illegal transition (a bug in the I/O layer)."""


def error_for_close(code: int | None, reason: str, *, streaming: bool = False) -> UplinkError:
    """Classify a WebSocket close (docs/protocol.md §7); `streaming`: after the welcome."""
    name = _close_name(code)
    text = f"server closed the connection: {name}" + (f" ({reason})" if reason else "")
    match retry_for_close(code):
        case Retry.FATAL:
            fatal = StreamClosed if streaming else HandshakeRefused
            return fatal(text, code=code)
        case Retry.SOON:
            return ConnectionDropped(text, code=code, escalate=False)
        case _:
            return ConnectionDropped(text, code=code, escalate=True)


def error_for_http_status(status: int, detail: str = "") -> UplinkError:
    """Classify an HTTP answer to the upgrade request."""
    text = f"server answered the WebSocket upgrade with HTTP {status}" + (
        f": {detail}" if detail else ""
    )
    if status >= 500 or status == 429:
        return ConnectFailed(text, http_status=status)
    return HandshakeRefused(text, http_status=status)


def _close_name(code: int | None) -> str:
    if code is None:
        return "no close frame (abnormal closure)"
    try:
        return f"{code} {CloseCode(code).name.lower().replace('_', ' ')}"
    except ValueError:
        return str(code)

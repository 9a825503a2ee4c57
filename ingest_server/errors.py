"""The server's errors: every way a connection can be made to close, with its close code.

    Exception
     ├── WireError (uplink/wire.py)      the client sent a malformed or illegal message; it
     │                                   carries its own close code (1002, 1003, 1007, 1008,
     │                                   1009, 4400); the connection core maps it
     └── ClosingError                    the connection closes with `code` and `reason`
          ├── BadInput                   a request the protocol forbids or this server
          │                              does not admit (1002 end mismatch, 4400 a hello
          │                              whose frames are too long or too short)
          ├── Refusal                    the registry says no: unknown stream (4404), wrong
          │                              credential or id taken (4409), another token's
          │                              stream (1008), too many streams (1013), shutting
          │                              down (1012), a resume in another format (4400)
          ├── StorageUnavailable         storage failed under this request: 1013 "storage
          │                              failure", the client backs off, resumes, replays
          └── TakenOver                  a shared store (JetStream) fenced this node's
                                         writer: another node took the stream over; 4411,
                                         as for a newer connection on this node (§2)

    OSError                              storage code raises these; `storage_failure`
                                         below is the one place they become
                                         StorageUnavailable (docs/storage.md "Disk faults"),
                                         or TakenOver for StreamFenced

Section numbers: docs/protocol.md (§7 lists the close codes).
"""

from __future__ import annotations

import logging
from types import TracebackType

from uplink.wire import CloseCode

from .storage.interface import StreamFenced

log = logging.getLogger(__name__)

STORAGE_FAILURE = "storage failure"  # the §7 reason of every 1013 a storage fault causes


class ClosingError(Exception):
    """The connection closes with `code` and `reason` (§7); the reason goes on the wire."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class BadInput(ClosingError):
    """The client asked for something the protocol forbids here."""


class Refusal(ClosingError):
    """The registry refuses a request (the stream, its credential, the server's limits)."""


Refused = Refusal


class StorageUnavailable(ClosingError):
    """A storage operation failed: 1013, so the client retries later (§7)."""

    def __init__(self, reason: str = STORAGE_FAILURE) -> None:
        super().__init__(CloseCode.TRY_AGAIN_LATER, reason)


class TakenOver(ClosingError):
    """Another node took the stream over (shared store): 4411, the code for "a newer
    connection took the stream over" (§7). The client's newer connection is elsewhere."""

    def __init__(self) -> None:
        super().__init__(CloseCode.SUPERSEDED, "stream taken over by another server")


class StorageGuard:
    """`with guard:` turns an OSError from a storage call into StorageUnavailable (1013),
    keeping the cause: the one place that mapping happens. Reusable, so the per-item write
    path makes one per connection and allocates nothing per message.

    `what` names the operation in the log line ("journal write", "finalization"); `op`, if
    given, is counted in `counts` (Metrics.storage_errors); leave it out where the storage
    layer counted already. `passthrough` lists OSErrors the caller handles itself (a stream
    directory that already exists is a conflict, not a fault).
    """

    __slots__ = ("counts", "op", "passthrough", "stream_id", "what")

    def __init__(self, what: str, *, counts: dict[str, int] | None = None,
                 op: str | None = None, stream_id: str | None = None,
                 passthrough: tuple[type[OSError], ...] = ()) -> None:
        self.what = what
        self.counts = counts
        self.op = op
        self.stream_id = stream_id
        self.passthrough = passthrough

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 tb: TracebackType | None) -> None:
        if error is None or not isinstance(error, OSError) \
                or isinstance(error, self.passthrough):
            return
        sid = self.stream_id
        if isinstance(error, StreamFenced):  # not a fault: the stream lives on elsewhere
            log.info("%s: stream %s was taken over by another server", self.what, sid,
                     extra={"ctx": {"stream_id": sid, "event": "fenced"}})
            raise TakenOver() from error
        if self.op is not None and self.counts is not None:
            self.counts[self.op] = self.counts.get(self.op, 0) + 1
        log.error("%s failed%s: %s", self.what, f" for stream {sid}" if sid else "", error,
                  extra={"ctx": {"stream_id": sid, "error": str(error)}})
        raise StorageUnavailable() from error


storage_failure = StorageGuard  # `with storage_failure("stream creation", ...):` at a call

"""The server's side of one connection, sans-I/O: events in, actions out; time is an input.

The asyncio adapter (connection.py) owns the WebSocket, the timer, the registry and the
flusher. It calls one event method per thing that happened, passing `now` where time
matters, and carries out the returned actions in order. Nothing here awaits, sleeps, reads a
clock or touches a socket, so every close code and every state is tested by feeding events
(tests/ingest_server/test_core.py). The one call out is the synchronous journal append of
an item (items.ItemRules.apply on the stream's writer, docs/storage.md): one `writev`, no
fsync, so the receive path stays O(1) per message (docs/performance.md).

    AWAITING_HELLO ─hello─► ATTACHING ─attached─► STREAMING ──end──► ENDING ─finalized─► CLOSING
                                          └─(finalized stream)─► READ_ONLY ──end──┘
    STREAMING, ENDING ─shutdown─► SHUTTING_DOWN ─final_synced─► CLOSING (other states: 1012)
    any state ─a close of ours (error, timeout, superseded)─► CLOSING
    any state ─peer_closed, or Abort─► CLOSED           CLOSING: messages are ignored (§7)

What each message does in each state (section numbers: docs/protocol.md):

    state            text (hello / ping / end)                binary (an item)
    AWAITING_HELLO   a hello this server admits → Attach;     4400 (§2: hello first)
                     else 4400 (1003 version or format,
                     1009 oversized)
    ATTACHING        — (the adapter reads nothing meanwhile)  —
    STREAMING        ping → pong; end → Finalize;             append (§3) → RequestSync if none
                     anything else 1007 (1009 oversized)      in flight; duplicate → re-ack at
                                                              once if none (§4); bad item →
                                                              1002/1007/1008/1009 (items.py);
                                                              failed write → 1013
    READ_ONLY        ping → pong; end → Finalize (`ended`     4410 (stream finalized)
                     again, §6)
    ENDING, SHUTTING_DOWN, CLOSING: ignored; CLOSED: IllegalEvent (the adapter stops reading)

Answers to the adapter's work: `attached` → welcome (+ StartCommits if open); `failed` (a
refusal or storage failure from the registry) → its code; `synced` → one cumulative ack;
`sync_failed` → 1013; `finalized` → `ended`, then 1000; `supersede` → 4411;
`internal_error` → 1011.

Every message first takes a token from the §5 bucket (1008 when empty), except the hello.
Deadlines (`next_deadline`, checked by `tick`): no hello (and stream) within
handshake_timeout → 4408; nothing received for idle_timeout → 4408; a send stuck for
idle_timeout (the peer stopped reading its socket) → Abort, recorded as 1008.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Protocol

from uplink.wire import (
    HEADER_SIZE,
    STREAM_ID_PATTERN,
    Ack,
    CloseCode,
    End,
    Ended,
    Hello,
    Ping,
    Pong,
    Welcome,
    WireError,
    decode_control,
    encode_control,
    is_valid_stream_id,
)

from .config import ServerConfig
from .errors import BadInput, ClosingError, Refusal, StorageGuard
from .items import ItemRules
from .metrics import Metrics
from .storage.interface import Position, StreamMeta, StreamWriter

DEFAULT_RATE = 1000.0  # ServerConfig's defaults, until the connection configures the budget
DEFAULT_BURST = 2000
INTERNAL_ERROR_REASON = "internal server error"


class MessageBudget:
    """The §5 message rate limit of one connection: a token bucket of `burst` messages,
    refilled at `rate` per second. The core takes one per message, our WebSocket protocol
    (wsprotocol.py) one per control or continuation frame, so a flood of any kind of frame
    meets the same limit."""

    __slots__ = ("burst", "last", "rate", "tokens")

    def __init__(self, rate: float = DEFAULT_RATE, burst: int = DEFAULT_BURST,
                 now: float = 0.0) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.tokens = float(burst)
        self.last = now

    def configure(self, rate: float, burst: int) -> None:
        self.rate, self.burst = rate, float(burst)
        self.tokens = min(self.tokens, self.burst)

    def take(self, now: float) -> bool:
        """One message at `now` (loop time). False: over the limit, nothing taken."""
        tokens = self.tokens + (now - self.last) * self.rate
        if tokens > self.burst:
            tokens = self.burst
        self.last = now
        if tokens < 1.0:
            self.tokens = tokens
            return False
        self.tokens = tokens - 1.0
        return True


# -- states and the one place that checks them -----------------------------------------


class State(Enum):
    __hash__ = object.__hash__  # members are singletons: identity hash, in C (per message)

    AWAITING_HELLO = "awaiting hello"
    ATTACHING = "attaching"  # hello admissible; the registry creates, resumes or takes over
    STREAMING = "streaming"  # an open stream: items, pings, end
    READ_ONLY = "read-only"  # attached to a finalized stream: pings and end only (§6)
    ENDING = "ending"  # end received: last sync, finalization, `ended`, close 1000
    SHUTTING_DOWN = "shutting down"  # server stopping: last sync and ack, then 1012
    CLOSING = "closing"  # we closed: nothing more is processed
    CLOSED = "closed"  # the peer closed, or the transport is gone


class Event(Enum):
    __hash__ = object.__hash__

    TEXT = "text"
    BINARY = "binary"
    ATTACHED = "attached"
    SYNCED = "synced"
    SYNC_FAILED = "sync failed"
    FINALIZED = "finalized"
    FINAL_SYNCED = "final synced"
    FAILED = "failed"  # a refusal or storage failure from the adapter's registry call
    SUPERSEDE = "supersede"
    SHUTDOWN = "shutdown"
    PEER_CLOSED = "peer closed"
    TICK = "tick"


_OPEN = (State.AWAITING_HELLO, State.ATTACHING, State.STREAMING, State.READ_ONLY,
         State.ENDING, State.SHUTTING_DOWN)
_ANY = frozenset(State)
_WHILE_OPEN = frozenset(_OPEN)

# Which events each state accepts (anything else is a bug in the adapter: IllegalEvent).
ACCEPTS: dict[Event, frozenset[State]] = {
    Event.TEXT: frozenset(_OPEN) - {State.ATTACHING} | {State.CLOSING},
    Event.BINARY: frozenset(_OPEN) - {State.ATTACHING} | {State.CLOSING},
    Event.ATTACHED: frozenset({State.ATTACHING, State.CLOSING}),
    # the flusher reports after every sync; a close does not wait for it
    Event.SYNCED: frozenset({State.STREAMING, State.ENDING, State.SHUTTING_DOWN,
                             State.CLOSING, State.CLOSED}),
    Event.SYNC_FAILED: frozenset({State.STREAMING, State.ENDING, State.SHUTTING_DOWN,
                                  State.CLOSING, State.CLOSED}),
    Event.FINALIZED: frozenset({State.ENDING, State.SHUTTING_DOWN, State.CLOSING,
                                State.CLOSED}),
    Event.FINAL_SYNCED: frozenset({State.SHUTTING_DOWN, State.CLOSING, State.CLOSED}),
    Event.FAILED: _ANY,
    Event.SUPERSEDE: _ANY,
    Event.SHUTDOWN: _ANY,
    Event.PEER_CLOSED: _ANY,
    Event.TICK: _ANY,
}

# Which state may follow which (checked on every change of state).
TRANSITIONS: dict[State, frozenset[State]] = {
    State.AWAITING_HELLO: frozenset({State.ATTACHING, State.CLOSING, State.CLOSED}),
    State.ATTACHING: frozenset({State.STREAMING, State.READ_ONLY, State.CLOSING,
                                State.CLOSED}),
    State.STREAMING: frozenset({State.ENDING, State.SHUTTING_DOWN, State.CLOSING,
                                State.CLOSED}),
    State.READ_ONLY: frozenset({State.ENDING, State.SHUTTING_DOWN, State.CLOSING,
                                State.CLOSED}),
    State.ENDING: frozenset({State.CLOSING, State.CLOSED}),
    State.SHUTTING_DOWN: frozenset({State.CLOSING, State.CLOSED}),
    State.CLOSING: frozenset({State.CLOSED}),
    State.CLOSED: frozenset(),
}


class IllegalEvent(RuntimeError):
    """An event the current state does not accept: a bug in the adapter, not the peer."""


# -- what the core needs from the stream it is attached to ------------------------------


class AttachedStream(Protocol):
    """The registry's stream (stream.Stream), as far as one connection sees it."""

    duplicates: int  # items dropped as duplicates (REST details)

    @property
    def stream_id(self) -> str: ...

    @property
    def meta(self) -> StreamMeta: ...

    @property
    def durable(self) -> Position: ...

    @property
    def finalized(self) -> bool: ...

    @property
    def journal(self) -> StreamWriter | None: ...


# -- actions ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Send:
    text: str


@dataclass(frozen=True, slots=True)
class Close:
    """Send a close frame; the core is CLOSING already."""

    code: int
    reason: str


@dataclass(frozen=True, slots=True)
class Abort:
    """Drop the transport without a close handshake (the peer does not read)."""

    why: str


@dataclass(frozen=True, slots=True)
class Attach:
    """Ask the registry for the stream (§2); answer with `attached` or `failed`."""

    hello: Hello


@dataclass(frozen=True, slots=True)
class StartCommits:
    """The stream is open: start group commit for it (the flusher); `attached` said so."""


@dataclass(frozen=True, slots=True)
class RequestSync:
    """Make everything written durable (group commit, commit.py); answer with `synced` or
    `sync_failed`. `since`: receive time of the oldest item it covers (ack latency)."""

    since: float | None


@dataclass(frozen=True, slots=True)
class Finalize:
    """§6: last sync, then finalize at `end`'s position; answer `finalized` or `failed`."""

    end: End


@dataclass(frozen=True, slots=True)
class FinalSync:
    """Server stopping: one last sync; answer with `final_synced` (None: it failed)."""


@dataclass(frozen=True, slots=True)
class Detach:
    """The connection is done with the stream: the session timeout starts (§2)."""


Action = Send | Close | Abort | Attach | StartCommits | RequestSync | Finalize | FinalSync | Detach
NOTHING: tuple[Action, ...] = ()
_START_COMMITS = StartCommits()
_FINAL_SYNC = FinalSync()


def check_hello(hello: Hello, config: ServerConfig) -> None:
    """What this server admits (§2, §5), before the registry is asked: 4400 otherwise."""
    if not is_valid_stream_id(hello.stream_id):
        raise BadInput(CloseCode.BAD_HANDSHAKE,
                      f"invalid stream id: it must match {STREAM_ID_PATTERN}")
    fmt = hello.format
    if hello.frame_samples > fmt.sample_rate * config.max_frame_seconds:
        raise BadInput(CloseCode.BAD_HANDSHAKE,
                      f"frame_samples over {config.max_frame_seconds:g} s of audio")
    if HEADER_SIZE + hello.frame_samples * fmt.block_align > config.max_message_bytes:
        raise BadInput(CloseCode.BAD_HANDSHAKE, "one frame would exceed max_message_bytes")
    # §5: live streaming sends one message per frame; it must fit in half the rate limit.
    if fmt.sample_rate / hello.frame_samples > config.max_message_rate / 2:
        raise BadInput(CloseCode.BAD_HANDSHAKE,
                      f"frames too short: at most {config.max_message_rate / 2:g} frames/s")


def parse_hello(text: object) -> Hello:
    """The first message must be a valid text hello (§2): else 4400 (1003 for a version or
    format we do not support, 1009 for an oversized message, as the codec decides)."""
    if not isinstance(text, str):
        raise WireError("first message must be a text hello", CloseCode.BAD_HANDSHAKE)
    try:
        ctl = decode_control(text)
    except WireError as e:
        if e.close_code == CloseCode.INVALID_PAYLOAD:
            raise WireError(f"bad hello: {e}", CloseCode.BAD_HANDSHAKE) from e
        raise
    if not isinstance(ctl, Hello):
        raise WireError(f"first message must be hello, not {type(ctl).__name__.lower()}",
                        CloseCode.BAD_HANDSHAKE)
    return ctl


class ServerCore:
    """One connection's protocol state. `now` is the adapter's monotonic (loop) time."""

    def __init__(self, config: ServerConfig, metrics: Metrics, now: float,
                 budget: MessageBudget | None = None) -> None:
        self.config = config
        self.metrics = metrics
        self.state = State.AWAITING_HELLO
        self.stream: AttachedStream | None = None
        self.credential: str | None = None
        self.resumed = False
        self.close_code: int | None = None  # what ended the connection (ours or the peer's)
        self.budget = budget if budget is not None else MessageBudget(now=now)
        self.budget.configure(config.max_message_rate, config.message_burst)
        self._handshake_deadline = now + config.handshake_timeout
        self._last_rx = now
        self._rules: ItemRules | None = None
        self._durable_seq = 0  # what the last ack (or the welcome) promised
        self._sync_outstanding = False  # a RequestSync not yet answered (§4 group commit)
        self._oldest_unsynced: float | None = None
        self._sending = 0  # sends in progress, and since when (a peer that stopped reading)
        self._send_since = 0.0
        self._write_guard: StorageGuard | None = None

    def __repr__(self) -> str:
        sid = self.stream.stream_id if self.stream is not None else "-"
        return f"<ServerCore {sid} {self.state.value}>"

    # -- the one check ---------------------------------------------------------------------

    def _accept(self, event: Event) -> None:
        if self.state not in ACCEPTS[event]:
            raise IllegalEvent(f"{event.value} in state {self.state.value}")

    def _go(self, new: State) -> None:
        if new is not self.state:
            if new not in TRANSITIONS[self.state]:
                raise IllegalEvent(f"{self.state.value} -> {new.value}")
            self.state = new

    def _close(self, code: int, reason: str) -> tuple[Action, ...]:
        """Our close (§7): the first close wins, and nothing is processed after it."""
        if self.state in (State.CLOSING, State.CLOSED):
            return NOTHING
        self._go(State.CLOSING)
        if self.close_code is None:
            self.close_code = code
        return (Close(code, reason),)

    def _closing_error(self, error: ClosingError | WireError) -> tuple[Action, ...]:
        if isinstance(error, WireError):
            return self._close(error.close_code, str(error))
        return self._close(error.code, error.reason)

    # -- messages ----------------------------------------------------------------------------

    def receive_text(self, text: str, now: float) -> tuple[Action, ...]:
        self._accept(Event.TEXT)
        state = self.state
        if state is State.AWAITING_HELLO:
            return self._on_hello(text)
        if not self._admit(now):
            return self._flooded()
        if state is State.STREAMING or state is State.READ_ONLY:
            try:
                return self._on_control(text)
            except (WireError, ClosingError) as e:
                return self._closing_error(e)
        return NOTHING  # ENDING, SHUTTING_DOWN, CLOSING: nothing more is processed

    def receive_binary(self, data: bytes, now: float) -> tuple[Action, ...]:
        self._accept(Event.BINARY)
        state = self.state
        if state is State.AWAITING_HELLO:
            self.metrics.messages_received += 1
            return self._close(CloseCode.BAD_HANDSHAKE, "first message must be a text hello")
        if state is State.STREAMING:  # the hot path: _admit, inlined
            self.metrics.messages_received += 1
            if not self.budget.take(now):
                return self._flooded()
            self._last_rx = now
            try:
                return self._on_item(data, now)
            except (WireError, ClosingError) as e:
                return self._closing_error(e)
        if not self._admit(now):
            return self._flooded()
        if state is State.READ_ONLY:
            return self._close(CloseCode.STREAM_FINALIZED, "stream is finalized")
        return NOTHING

    def _admit(self, now: float) -> bool:
        """Count the message and take its token (§5); it also counts as life (idle timer)."""
        if self.state is State.CLOSING or self.state is State.SHUTTING_DOWN:
            return True  # nothing is processed: no limit to enforce
        self.metrics.messages_received += 1
        if not self.budget.take(now):
            return False
        self._last_rx = now
        return True

    def _flooded(self) -> tuple[Action, ...]:
        return self._close(CloseCode.POLICY_VIOLATION,
                           f"more than {self.config.max_message_rate:g} messages/s")

    def _on_hello(self, text: str) -> tuple[Action, ...]:
        self.metrics.messages_received += 1
        try:
            hello = parse_hello(text)
            check_hello(hello, self.config)
        except (WireError, ClosingError) as e:
            return self._closing_error(e)
        self._go(State.ATTACHING)
        return (Attach(hello),)

    def _on_control(self, text: str) -> tuple[Action, ...]:
        ctl = decode_control(text)  # 1007 malformed / unknown, 1009 oversized
        if isinstance(ctl, Ping):
            return (Send(encode_control(Pong(ctl.t))),)
        if isinstance(ctl, End):
            self._go(State.ENDING)
            return (Finalize(ctl),)
        raise WireError(f"unexpected {type(ctl).__name__.lower()} message")

    def _on_item(self, data: bytes, now: float) -> tuple[Action, ...]:
        stream, rules, guard = self.stream, self._rules, self._write_guard
        assert stream is not None and rules is not None and guard is not None
        journal = stream.journal
        if journal is None:  # journals are closed: the server is shutting down
            raise Refusal(CloseCode.SERVICE_RESTART, "server restarting")
        with guard:  # OSError: the journal cut the partial record off; nothing acked (§4)
            written = rules.apply(journal, data)
        if written:
            if self._oldest_unsynced is None:
                self._oldest_unsynced = now
            return self._request_sync()
        stream.duplicates += 1
        # §4: a duplicate is re-acked at once if nothing is pending, else the next ack covers it.
        if self._sync_outstanding:
            return NOTHING
        return (self._ack(stream.durable),)

    def _request_sync(self) -> tuple[Action, ...]:
        """One sync in flight at a time: items arriving meanwhile ride the next one (§4)."""
        if self._sync_outstanding:
            return NOTHING
        self._sync_outstanding = True
        since, self._oldest_unsynced = self._oldest_unsynced, None
        return (RequestSync(since),)

    def _ack(self, durable: Position) -> Send:
        self._durable_seq = durable.next_seq
        return Send(encode_control(Ack(durable.next_seq, durable.next_sample)))

    # -- answers to the adapter's work ---------------------------------------------------------

    def attached(self, stream: AttachedStream, credential: str, resumed: bool,
                 now: float) -> tuple[Action, ...]:
        """The registry gave us the stream (§2): welcome, then items."""
        self._accept(Event.ATTACHED)
        self.stream, self.credential, self.resumed = stream, credential, resumed
        if self.state is State.CLOSING:  # timed out or superseded while waiting for it
            return NOTHING
        cfg, meta, durable = self.config, stream.meta, stream.durable
        self._last_rx = now
        self._durable_seq = durable.next_seq
        self._rules = ItemRules.for_stream(meta, durable.next_seq, cfg, self.metrics)
        self._write_guard = StorageGuard("journal write", counts=self.metrics.storage_errors,
                                         op="write", stream_id=stream.stream_id)
        welcome = Send(encode_control(Welcome(
            stream_id=stream.stream_id, epoch=meta.epoch, credential=credential,
            next_seq=durable.next_seq, next_sample=durable.next_sample,
            resumed=resumed, finalized=stream.finalized,
            max_message_bytes=cfg.max_message_bytes, max_inflight_frames=cfg.max_inflight_frames,
            idle_timeout=cfg.idle_timeout, session_timeout=cfg.session_timeout,
        )))
        if stream.finalized:
            self._go(State.READ_ONLY)
            return (welcome,)
        self._go(State.STREAMING)
        return (welcome, _START_COMMITS)

    def failed(self, error: ClosingError | WireError) -> tuple[Action, ...]:
        """The adapter's registry call (attach, end) refused, or storage failed under it."""
        self._accept(Event.FAILED)
        return self._closing_error(error)

    def synced(self, durable: Position, now: float) -> tuple[Action, ...]:
        """A RequestSync is done: ack what became durable (one cumulative ack, §4)."""
        self._accept(Event.SYNCED)
        stream = self.stream
        actions: tuple[Action, ...] = NOTHING
        if durable.next_seq > self._durable_seq and self.state is not State.CLOSING \
                and self.state is not State.CLOSED:
            actions = (self._ack(durable),)
        self._sync_outstanding = False
        journal = stream.journal if stream is not None else None
        if self.state is State.STREAMING and journal is not None \
                and journal.next_seq != durable.next_seq:
            actions += self._request_sync()  # written during that sync: the next batch
        else:
            self._oldest_unsynced = None  # that sync covered them all
        return actions

    def sync_failed(self, error: ClosingError) -> tuple[Action, ...]:
        """A sync failed: nothing it covered is acked; the client resumes and replays (§4)."""
        self._accept(Event.SYNC_FAILED)
        self._sync_outstanding = False
        return self._closing_error(error)

    def finalized(self, ended: Ended) -> tuple[Action, ...]:
        """§6: the stream is finalized at the end's position: `ended`, then 1000."""
        self._accept(Event.FINALIZED)
        if self.state is not State.ENDING:
            return NOTHING
        return (Send(encode_control(ended)), *self._close(CloseCode.NORMAL, "stream ended"))

    # -- the server and the registry ---------------------------------------------------------

    def supersede(self) -> tuple[Action, ...]:
        """A newer connection takes the stream over (§2): 4411."""
        self._accept(Event.SUPERSEDE)
        return self._close(CloseCode.SUPERSEDED, "superseded by a newer connection")

    def shutdown(self) -> tuple[Action, ...]:
        """Server stopping: make what we wrote durable, ack it, close with 1012 (§7)."""
        self._accept(Event.SHUTDOWN)
        if self.state is State.STREAMING or self.state is State.ENDING:
            self._go(State.SHUTTING_DOWN)
            return (_FINAL_SYNC,)
        return self._close(CloseCode.SERVICE_RESTART, "server restarting")

    def final_synced(self, durable: Position | None) -> tuple[Action, ...]:
        self._accept(Event.FINAL_SYNCED)
        if self.state is not State.SHUTTING_DOWN:
            return NOTHING
        ack: tuple[Action, ...] = ()
        if durable is not None and durable.next_seq > self._durable_seq:
            ack = (self._ack(durable),)
        return (*ack, *self._close(CloseCode.SERVICE_RESTART, "server restarting"))

    def internal_error(self) -> tuple[Action, ...]:
        """A bug under this connection: 1011, never the server or another stream (§7)."""
        self._accept(Event.FAILED)
        return self._close(CloseCode.INTERNAL_ERROR, INTERNAL_ERROR_REASON)

    def peer_closed(self, code: int | None) -> tuple[Action, ...]:
        """The peer's close frame (or the transport is gone: 1006 / 1005)."""
        self._accept(Event.PEER_CLOSED)
        if self.close_code is None:
            self.close_code = code if code is not None else 1005
        self._go(State.CLOSED)
        return NOTHING

    def finished(self) -> tuple[Action, ...]:
        """The adapter is done and the last sync ran: let go of the stream (a successor
        that superseded us waits for exactly this, §2)."""
        if self.close_code is None:
            self.close_code = 1006
        return (Detach(),) if self.stream is not None else NOTHING

    # -- sends and time ----------------------------------------------------------------------

    def send_started(self, now: float) -> None:
        if not self._sending:
            self._send_since = now
        self._sending += 1

    def send_finished(self) -> None:
        self._sending -= 1

    def next_deadline(self) -> float | None:
        state = self.state
        if state is State.CLOSING or state is State.CLOSED or state is State.SHUTTING_DOWN:
            return None
        idle = self.config.idle_timeout
        if state is State.AWAITING_HELLO or state is State.ATTACHING:
            deadline = self._handshake_deadline
        else:
            deadline = self._last_rx + idle
        if self._sending:
            deadline = min(deadline, self._send_since + idle)
        return deadline

    def tick(self, now: float) -> tuple[Action, ...]:
        self._accept(Event.TICK)
        state, cfg = self.state, self.config
        if state is State.CLOSING or state is State.CLOSED or state is State.SHUTTING_DOWN:
            return NOTHING  # a shutdown has its own grace period (service.py)
        if self._sending and now >= self._send_since + cfg.idle_timeout:
            self.close_code = CloseCode.POLICY_VIOLATION
            self._go(State.CLOSED)
            return (Abort(f"nothing could be sent for {cfg.idle_timeout:g} s "
                          "(peer not reading)"),)
        if state is State.AWAITING_HELLO or state is State.ATTACHING:
            if now >= self._handshake_deadline:
                return self._close(CloseCode.HANDSHAKE_TIMEOUT,
                                   f"no hello within {cfg.handshake_timeout:g} s")
            return NOTHING
        if now >= self._last_rx + cfg.idle_timeout:
            return self._close(CloseCode.HANDSHAKE_TIMEOUT,
                               f"nothing received for {cfg.idle_timeout:g} s")
        return NOTHING


__all__ = [
    "ACCEPTS", "NOTHING", "TRANSITIONS", "Abort", "Action", "Attach", "AttachedStream",
    "Close", "Detach", "Event", "FinalSync", "Finalize", "IllegalEvent", "MessageBudget",
    "RequestSync", "Send", "ServerCore", "StartCommits", "State", "check_hello",
    "parse_hello",
]

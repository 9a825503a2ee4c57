"""The sans-I/O uplink: events in, actions out; time and randomness are inputs.

The asyncio layer (uplink/client.py) owns the socket and the sleeps. It calls one event
method per thing that happened, passing `now`, and carries out the actions returned, in
order. Nothing here blocks, sleeps, reads a clock or touches a socket, so every behaviour —
handshake, window, acks, end of stream, reconnection, backoff, breaker, deadlines, resume
and gap reporting — is tested by feeding events (tests/uplink/test_core.py).

    IDLE ─start─► CONNECTING ─opened─► HANDSHAKING ─welcome─► STREAMING ─ended─► DONE
                      ▲                     │                     │
                      │ retry due           │ lost / timeout      │ lost / timeout
                      └──── WAITING ◄───────┴─────────────────────┘
                 any state ─fatal / budget spent─► FAILED ─retry─► CONNECTING
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from enum import Enum, StrEnum

from uplink import wire
from uplink.audio import AudioFormat
from uplink.config import UplinkConfig
from uplink.errors import (
    AddressUnresolvable,
    ConnectFailed,
    ConnectionDropped,
    FatalError,
    HandshakeRefused,
    Interrupted,
    LinkDead,
    LocalProtocolError,
    RetriableError,
    RetryBudgetExhausted,
    ServerProtocolError,
    UplinkError,
    error_for_close,
)
from uplink.policy import (
    Backoff,
    BreakerState,
    CircuitBreaker,
    RestartGrace,
    RetryBudget,
    ServerRotation,
)
from uplink.ring import AudioRun, GapReason, GapRun, RingBuffer

# §2: a hello waits this long at most for the first frame, so that it can carry the
# wall-clock time of sample 0 (the stream's capture_started is set only on creation)
FIRST_FRAME_WAIT = 1.0


class State(Enum):
    IDLE = "idle"
    CONNECTING = "connecting"
    HANDSHAKING = "handshaking"
    STREAMING = "streaming"
    WAITING = "waiting"  # backing off before the next attempt
    DONE = "done"
    FAILED = "failed"


# -- what the application sees ----------------------------------------------------------


class Phase(StrEnum):
    """Where the uplink is, as the application sees it (values are what status lines and
    JSON records print)."""

    DISCONNECTED = "disconnected"  # not started yet
    CONNECTING = "connecting"
    CONNECTED = "connected"
    RECONNECTING = "reconnecting"  # waiting before the next attempt (attempt, retry_at)
    DONE = "done"  # the server acknowledged end-of-stream
    FAILED = "failed"  # fatal (reason); the audio stays in the ring for retry()

    @property
    def final(self) -> bool:
        """No further change follows unless the application calls retry()."""
        return self in (Phase.DONE, Phase.FAILED)


@dataclass(frozen=True, slots=True)
class ConnectionState:
    """A phase plus what goes with it: the attempt and next retry while reconnecting, the
    reason when reconnecting or failed, and the server URL: the one in use (connecting,
    connected), the one tried next (reconnecting) or the last one tried (failed, done)."""

    phase: Phase
    attempt: int = 0
    retry_at: float | None = None
    reason: str = ""
    server: str = ""

    @property
    def name(self) -> Phase:
        """The phase (kept under its old name; a Phase compares equal to its string)."""
        return self.phase

    def describe(self, now: float) -> str:
        if self.phase is Phase.RECONNECTING and self.retry_at is not None:
            wait = max(0.0, self.retry_at - now)
            return f"reconnecting (attempt {self.attempt}, next try in {wait:.1f} s): {self.reason}"
        if self.phase is Phase.FAILED:
            return f"failed: {self.reason}"
        return self.phase.value


@dataclass(slots=True)
class Counters:
    frames_sent: int = 0
    frames_replayed: int = 0
    messages_sent: int = 0
    reconnects: int = 0
    connections: int = 0
    acked_seq: int = 0  # next_seq of the last ack (everything below is durable)
    acked_sample: int = 0
    recovery_times: list[float] = field(default_factory=list)


# -- actions ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OpenConnection:
    """Open a connection to server number `server` of the list (docs/resilience.md,
    "Several servers"); always 0 with one server."""

    server: int = 0


@dataclass(frozen=True, slots=True)
class SendText:
    text: str


@dataclass(frozen=True, slots=True)
class SendBinary:
    data: bytes


@dataclass(frozen=True, slots=True)
class CloseConnection:
    """Drop the current connection; the core already moved on (no further event needed)."""

    code: int
    reason: str


@dataclass(frozen=True, slots=True)
class StateChanged:
    state: ConnectionState


@dataclass(frozen=True, slots=True)
class Finished:
    """The server acked end-of-stream: everything is durable."""


@dataclass(frozen=True, slots=True)
class Failed:
    error: FatalError


@dataclass(frozen=True, slots=True)
class GapRecorded:
    """The server acknowledged a GAP: samples [start_sample, start_sample+samples) are lost."""

    start_sample: int
    samples: int
    reason: GapReason


@dataclass(frozen=True, slots=True)
class GapMismatch:
    """The server's `ended` gap totals disagree with the GAPs it acknowledged to us (§6)."""

    detail: str


Action = (
    OpenConnection | SendText | SendBinary | CloseConnection | StateChanged | Finished | Failed
    | GapRecorded | GapMismatch
)


@dataclass(frozen=True, slots=True)
class _GapInFlight:
    first_seq: int
    end_seq: int
    start_sample: int
    end_sample: int
    reason: GapReason


class UplinkCore:
    def __init__(
        self,
        ring: RingBuffer,
        stream_id: str,
        config: UplinkConfig,
        rng: random.Random | None = None,
        labels: dict[str, str] | None = None,
        servers: Sequence[str] = ("",),
    ) -> None:
        if labels:
            wire.validate_labels(labels)
        #: the server URLs, in rotation order; the core only names them in states
        self.servers = tuple(servers)
        self.rotation = ServerRotation(len(self.servers))
        self.ring = ring
        self.stream_id = stream_id
        self.labels = dict(labels) if labels else None
        self.format: AudioFormat = ring.format
        self.config = config
        self.state = State.IDLE
        self.backoff = Backoff(config.backoff, rng or random.Random())
        self.breaker = CircuitBreaker(config.breaker)
        self.budget = RetryBudget(config.budget)
        self.grace = RestartGrace(config.breaker.restart_grace)
        self.counters = Counters()
        self.epoch: int | None = None
        self.credential: str | None = None
        self.public = ConnectionState(Phase.DISCONNECTED)
        self.error: FatalError | None = None
        self.last_error: UplinkError | None = None
        # per-connection state
        self._send_seq = 0  # next seq to send on this connection
        self._window = config.window_frames
        self._server_idle = float("inf")  # the server's idle timeout, from welcome (§2)
        self._max_payload = config.max_coalesce_bytes
        self._end_sent = False
        self._carried_audio = False  # this connection advanced an ack or answered a ping
        self._ack_deadline: float | None = None
        self._ping_at: float | None = None
        self._pong_deadline: float | None = None
        self._handshake_deadline: float | None = None
        self._retry_at: float | None = None
        self._lost_at: float | None = None
        self._highest_sent = 0
        self._gaps_in_flight: list[_GapInFlight] = []  # GAP items sent, not yet acked
        self.gaps_acked: list[tuple[int, int]] = []  # (start, end sample) the server recorded
        self.gap_mismatch: str | None = None
        self._hello_due: float | None = None  # hello deferred until the first frame (§2)

    # -- events ---------------------------------------------------------------------------

    def start(self, now: float) -> list[Action]:
        self._expect(State.IDLE)
        return self._attempt(now)

    def connection_opened(self, now: float) -> list[Action]:
        """TCP and the WebSocket upgrade succeeded: say hello (§2).

        A hello that creates the stream carries the wall-clock time of sample 0, which
        exists once the first frame was pushed: until then (at most FIRST_FRAME_WAIT) the
        hello waits for it.
        """
        self._expect(State.CONNECTING)
        self.state = State.HANDSHAKING
        if self.epoch is None and self.ring.wall_time is None and not self.ring.closed:
            self._hello_due = now + FIRST_FRAME_WAIT
            return []
        return self._send_hello(now)

    def _send_hello(self, now: float) -> list[Action]:
        self._hello_due = None
        self._handshake_deadline = now + self.config.handshake_timeout
        resume = None
        if self.epoch is not None and self.credential is not None:
            resume = wire.Resume(self.epoch, self.credential)
        hello = wire.Hello(self.stream_id, self.format, self.ring.frame_samples, resume,
                           wall_time=self.ring.wall_time, labels=self.labels)
        return [SendText(wire.encode_control(hello))]

    def connection_failed(self, error: UplinkError, now: float) -> list[Action]:
        """Opening failed (refused, DNS, timeout, HTTP status on the upgrade)."""
        self._expect(State.CONNECTING)
        if isinstance(error, ConnectFailed) and error.unresolved and not self.budget.established:
            # before any stream existed the address itself is wrong: retrying cannot fix it
            # (on an established stream a DNS hiccup is retried like any outage)
            fatal = AddressUnresolvable(f"{error} — check the server address")
            fatal.__cause__ = error
            return self._link_failed(fatal, now)
        return self._link_failed(error, now)

    def connection_closed(self, code: int | None, reason: str, now: float) -> list[Action]:
        """The open connection ended (close frame received, or abnormal closure)."""
        if self.state not in (State.HANDSHAKING, State.STREAMING):
            return []  # we had already dropped it ourselves
        streaming = self.state is State.STREAMING
        return self._link_failed(error_for_close(code, reason, streaming=streaming), now)

    def text_received(self, text: str, now: float) -> list[Action]:
        if self.state not in (State.HANDSHAKING, State.STREAMING):
            return []
        try:
            msg = wire.decode_control(text)
        except wire.WireError as e:
            return self._fail(ServerProtocolError(f"server sent a bad message: {e}"), now)
        self._pong_deadline = None  # anything received proves the link is alive
        if self.state is State.HANDSHAKING:
            if not isinstance(msg, wire.Welcome):
                return self._fail(ServerProtocolError(f"expected welcome, got {msg!r}"), now)
            return self._on_welcome(msg, now)
        match msg:
            case wire.Ack():
                return self._on_ack(msg, now)
            case wire.Pong():
                self._mark_healthy()
                self._schedule_ping(now)
                return self._pump(now)
            case wire.Ended():
                return self._on_ended(msg, now)
            case _:
                return self._fail(ServerProtocolError(f"unexpected message {msg!r}"), now)

    def data_available(self, now: float) -> list[Action]:
        """The ring got new frames (or was closed): send what the window allows."""
        if self.state is State.STREAMING:
            return self._pump(now)
        first_frame = self.ring.wall_time is not None or self.ring.closed
        if self.state is State.HANDSHAKING and self._hello_due is not None and first_frame:
            return self._send_hello(now)
        return []

    def tick(self, now: float) -> list[Action]:
        """A deadline passed (the I/O layer calls this at `next_deadline()`)."""
        if self.state is State.WAITING:
            if self._retry_at is not None and now >= self._retry_at:
                return self._attempt(now)
            return []
        if self.state is State.HANDSHAKING:
            if self._hello_due is not None:
                return self._send_hello(now) if now >= self._hello_due else []
            if self._handshake_deadline is not None and now >= self._handshake_deadline:
                return self._drop(LinkDead("no welcome within the handshake timeout"), now)
            return []
        if self.state is not State.STREAMING:
            return []
        if self._ack_deadline is not None and now >= self._ack_deadline:
            what = "ended" if self._end_sent and self._in_flight() == 0 else "ack"
            return self._drop(LinkDead(f"no {what} within the deadline: link is dead"), now)
        if self._pong_deadline is not None and now >= self._pong_deadline:
            return self._drop(LinkDead("no pong within the heartbeat timeout"), now)
        if self._ping_at is not None and now >= self._ping_at and self._in_flight() == 0:
            self._ping_at = None
            self._pong_deadline = now + self.config.heartbeat_timeout
            return [SendText(wire.encode_control(wire.Ping(now)))]
        return []

    def next_deadline(self) -> float | None:
        """When `tick` must next be called (None: only on events)."""
        match self.state:
            case State.WAITING:
                return self._retry_at
            case State.HANDSHAKING:
                return self._hello_due if self._hello_due is not None else self._handshake_deadline
            case State.STREAMING:
                candidates = [self._ack_deadline, self._pong_deadline]
                if self._in_flight() == 0:
                    candidates.append(self._ping_at)
                live = [t for t in candidates if t is not None]
                return min(live) if live else None
        return None

    def stop(self, now: float, reason: str) -> list[Action]:
        """Give up now (the user insisted): fail with `reason`, keep the audio."""
        if self.state in (State.DONE, State.FAILED):
            return []
        return self._fail(Interrupted(reason), now)

    def retry(self, now: float) -> list[Action]:
        """FAILED → CONNECTING: the application fixed the cause (e.g. a new token).

        The ring kept everything not acked; the same epoch and credential resume the stream
        and replay it (§8). The budget, backoff and breaker start afresh: the user acted.
        """
        self._expect(State.FAILED)
        self.error = None
        self.ring.clear_abort()
        self.budget.restart()
        self.backoff.reset()
        self.breaker.reset()
        self.rotation.reset()
        return self._attempt(now)

    # -- derived state --------------------------------------------------------------------

    @property
    def in_flight(self) -> int:
        return self._in_flight()

    @property
    def server(self) -> str:
        """The server URL in use, or the one tried next."""
        return self.servers[self.rotation.index]

    def _in_flight(self) -> int:
        return self._send_seq - self.counters.acked_seq if self.state is State.STREAMING else 0

    # -- handshake, acks, end (§2, §4, §6) ----------------------------------------------

    def _on_welcome(self, msg: wire.Welcome, now: float) -> list[Action]:
        if msg.stream_id != self.stream_id:
            return self._fail(ServerProtocolError("welcome names another stream"), now)
        if self.epoch is not None and msg.epoch != self.epoch:
            return self._fail(ServerProtocolError("server changed the stream's epoch"), now)
        first = self.ring.first_seq()
        if msg.next_seq < first:
            return self._fail(
                ServerProtocolError(
                    f"server needs seq {msg.next_seq} but acknowledged up to {first}: "
                    "it lost acknowledged audio"
                ),
                now,
            )
        if msg.next_seq > self.ring.tail_seq:
            return self._fail(ServerProtocolError("server claims frames never sent"), now)
        self.epoch, self.credential = msg.epoch, msg.credential
        first_connection = self.counters.connections == 0
        self.counters.connections += 1
        if not first_connection:
            self.counters.reconnects += 1
        if self._lost_at is not None:
            self.counters.recovery_times.append(now - self._lost_at)
            self._lost_at = None
        self.budget.connected()
        self.rotation.connected()
        actions: list[Action] = self._apply_ack(msg.next_seq, msg.next_sample)
        self._gaps_in_flight.clear()  # the server never saw them: they are sent again
        self._send_seq = msg.next_seq
        self._end_sent = False
        self._carried_audio = False
        # never more in flight than the ring can hold for replay
        self._window = max(1, min(self.config.window_frames, msg.max_inflight_frames, self.ring.slots))
        self._server_idle = msg.idle_timeout if msg.idle_timeout > 0 else float("inf")
        self._max_payload = min(
            self.config.max_coalesce_bytes, msg.max_message_bytes - wire.HEADER_SIZE
        )
        self._handshake_deadline = None
        self._ack_deadline = None
        self._pong_deadline = None
        self.state = State.STREAMING
        actions.append(self._publish(ConnectionState(Phase.CONNECTED)))
        if msg.finalized and not (self.ring.closed and msg.next_seq == self.ring.tail_seq):
            return actions + self._fail(
                _finalized_error(msg.next_seq, self.ring.tail_seq), now
            )
        self._schedule_ping(now)
        return actions + self._pump(now)

    def _on_ack(self, msg: wire.Ack, now: float) -> list[Action]:
        if msg.next_seq > self._send_seq:
            return self._fail(ServerProtocolError("ack beyond what was sent"), now)
        actions: list[Action] = []
        if msg.next_seq > self.counters.acked_seq:
            actions = self._apply_ack(msg.next_seq, msg.next_sample)
            self._mark_healthy()
            if self._in_flight():
                self._ack_deadline = now + self.config.ack_timeout
            elif self._end_sent:
                self._ack_deadline = now + self.config.end_timeout
            else:
                self._ack_deadline = None
        self._schedule_ping(now)
        return actions + self._pump(now)

    def _apply_ack(self, next_seq: int, next_sample: int) -> list[Action]:
        actions: list[Action] = []
        if self._gaps_in_flight:
            # a GAP the server acknowledged is a recorded loss: count it exactly and tell the
            # application its exact range (§8)
            for gap in self._gaps_in_flight:
                if gap.end_seq <= next_seq:
                    self.ring.confirm_gap(gap.first_seq, gap.end_seq)
                    self.gaps_acked.append((gap.start_sample, gap.end_sample))
                    samples = gap.end_sample - gap.start_sample
                    actions.append(GapRecorded(gap.start_sample, samples, gap.reason))
            self._gaps_in_flight = [g for g in self._gaps_in_flight if g.end_seq > next_seq]
        self.ring.ack(next_seq, next_sample)
        self.counters.acked_seq = max(self.counters.acked_seq, next_seq)
        self.counters.acked_sample = max(self.counters.acked_sample, next_sample)
        return actions

    def _on_ended(self, msg: wire.Ended, now: float) -> list[Action]:
        if not self._end_sent or msg.next_seq != self.ring.tail_seq:
            return self._fail(ServerProtocolError("unexpected ended"), now)
        actions = self._apply_ack(msg.next_seq, msg.next_sample)
        self.gap_mismatch = _check_gaps(self.gaps_acked, msg)
        if self.gap_mismatch is not None:
            actions.append(GapMismatch(self.gap_mismatch))
        self.state = State.DONE
        return actions + [self._publish(ConnectionState(Phase.DONE)), Finished()]

    def _pump(self, now: float) -> list[Action]:
        """Send runs from the ring while the window allows; then `end` if input is over."""
        actions: list[Action] = []
        epoch = self.epoch or 0
        while self.state is State.STREAMING and not self._end_sent:
            room = self._window - self._in_flight()
            if room <= 0:
                break
            run = self.ring.read(self._send_seq, room, self._max_payload)
            if run is None:
                if self.ring.closed and self._send_seq == self.ring.tail_seq:
                    end = wire.End(self.ring.tail_seq, self.ring.next_sample)
                    actions.append(SendText(wire.encode_control(end)))
                    self._end_sent = True
                    self._arm_ack_deadline(now, self.config.end_timeout)
                break
            if isinstance(run, AudioRun):
                data = wire.encode_audio(epoch, run.seq, run.sample_pos, run.count, run.payload)
                self.counters.frames_sent += run.count
                replayed = min(run.seq + run.count, self._highest_sent) - run.seq
                if replayed > 0:
                    self.counters.frames_replayed += replayed
            else:
                assert isinstance(run, GapRun)
                data = wire.encode_gap(epoch, run.seq, run.sample_pos, run.count, run.end_sample)
                self._gaps_in_flight.append(_GapInFlight(
                    run.seq, run.seq + run.count, run.sample_pos, run.end_sample, run.reason))
            self._highest_sent = max(self._highest_sent, run.seq + run.count)
            self._send_seq = run.seq + run.count
            self.counters.messages_sent += 1
            actions.append(SendBinary(data))
            self._arm_ack_deadline(now, self.config.ack_timeout)
        return actions

    def _arm_ack_deadline(self, now: float, timeout: float) -> None:
        if self._ack_deadline is None:
            self._ack_deadline = now + timeout
        self._ping_at = None
        self._pong_deadline = None

    def _schedule_ping(self, now: float) -> None:
        if self._in_flight() == 0 and not self._end_sent:
            # never let an idle link reach the server's idle timeout (it closes with 4408)
            self._ping_at = now + min(self.config.heartbeat_interval, self._server_idle / 2)

    def _mark_healthy(self) -> None:
        """The link demonstrably works: reset backoff, feed the breaker (once per link)."""
        if not self._carried_audio:
            self._carried_audio = True
            self.backoff.reset()
        self.breaker.record_success()

    # -- failure and reconnection (docs/resilience.md) --------------------------------------

    def _drop(self, error: RetriableError, now: float) -> list[Action]:
        """We decided the link is dead: close it ourselves and schedule a retry."""
        return [CloseConnection(1001, str(error)[:120])] + self._link_failed(error, now)

    def _link_failed(self, error: UplinkError, now: float) -> list[Action]:
        self.last_error = error
        if isinstance(error, FatalError):
            return self._fail(error, now)
        assert isinstance(error, RetriableError)
        if self.state in (State.HANDSHAKING, State.STREAMING) and (
            self._carried_audio or not error.escalate
        ):
            # a healthy link was lost, or the server announced a restart (1001/1012): what
            # follows is most likely a restart, not an outage (policy.RestartGrace)
            self.grace.begin(now)
        self._carried_audio = False  # only a link that carries audio again renews the grace
        self.budget.link_lost(now)
        if self._lost_at is None:
            self._lost_at = now
        self._ack_deadline = self._pong_deadline = self._ping_at = None
        self._handshake_deadline = self._hello_due = None
        # several servers: the next one is tried at once; only a failure that completes a
        # round of all of them is a failure for the policy below (policy.ServerRotation)
        round_over = self.rotation.failed()
        if not round_over:
            delay = 0.0
        elif not error.escalate:
            delay = self.backoff.soon_delay()
        elif error.restart_symptom and self.grace.covers(now):
            delay = self.backoff.first_step_delay()
        else:
            self.budget.attempt_failed()
            if self.budget.established:
                # the breaker protects a server we were streaming to; before the first
                # connection the attempt budget decides (a wrong address should fail fast)
                self.breaker.record_failure(now)
            steps = 2 if isinstance(error, ConnectionDropped) and error.code == 1013 else 1
            delay = self.backoff.next_delay(steps)
        spent = self.budget.exhausted(now)
        if spent is not None and not self.budget.established and self.rotation.count > 1:
            spent += f" (each a round of all {self.rotation.count} servers)"
        if spent is not None:
            return self._fail(RetryBudgetExhausted(f"{spent}; last error: {error}"), now)
        retry_at = now + delay
        until = self.breaker.open_until if self.budget.established else None
        if until is not None:
            retry_at = max(retry_at, until)
        self._retry_at = retry_at
        self.state = State.WAITING
        attempt = max(1, self.backoff.attempt)
        reason = str(error)
        if self.budget.established and self.breaker.state is BreakerState.OPEN:
            reason += " [circuit open]"
        return [self._publish(ConnectionState(Phase.RECONNECTING, attempt, retry_at, reason))]

    def _attempt(self, now: float) -> list[Action]:
        if self.budget.established and not self.breaker.allow(now):
            until = self.breaker.open_until
            self._retry_at = until if until is not None else now
            self.state = State.WAITING
            return []
        self.state = State.CONNECTING
        self._retry_at = None
        return [self._publish(ConnectionState(Phase.CONNECTING, self.backoff.attempt)),
                OpenConnection(self.rotation.index)]

    def _fail(self, error: FatalError, now: float) -> list[Action]:
        del now
        prior = self.state
        self.state = State.FAILED
        self.error = error
        self.ring.abort()  # wake a producer waiting for space; the audio stays in the ring
        actions: list[Action] = []
        if prior in (State.HANDSHAKING, State.STREAMING):
            code = 1002 if isinstance(error, ServerProtocolError) else 1001
            actions.append(CloseConnection(code, str(error)[:120]))
        actions += [self._publish(ConnectionState(Phase.FAILED, reason=str(error))), Failed(error)]
        return actions

    def _publish(self, state: ConnectionState) -> StateChanged:
        state = replace(state, server=self.server)
        self.public = state
        return StateChanged(state)

    def _expect(self, *states: State) -> None:
        if self.state not in states:
            names = ", ".join(s.name for s in states)
            raise LocalProtocolError(f"event not allowed in state {self.state.name} (needs {names})")


def _finalized_error(next_seq: int, tail: int) -> FatalError:
    return HandshakeRefused(
        f"stream was already finalized by the server (it holds {next_seq} of {tail} frames)",
        code=wire.CloseCode.STREAM_FINALIZED,
    )


def _check_gaps(acked: list[tuple[int, int]], ended: wire.Ended) -> str | None:
    """Compare the GAPs the server acknowledged to us with its `ended` totals (§6).

    None when they agree (or an old server sent no totals); otherwise what differs.
    """
    if ended.gap_samples is None:
        return None
    ours = sum(end - start for start, end in acked)
    problems = []
    if ended.gaps != len(acked):
        problems.append(f"server records {ended.gaps} gaps, we had {len(acked)} acknowledged")
    if ended.gap_samples != ours:
        problems.append(f"server records {ended.gap_samples} gap samples, we counted {ours}")
    listed = list(ended.gap_list)
    if listed != acked[: len(listed)]:
        problems.append(f"gap ranges differ: server {listed[:3]}…, ours {acked[:3]}…")
    return "; ".join(problems) or None

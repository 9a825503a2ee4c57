"""Desktop notifications from the capture: told when the link is lost, back, or given up on.

A person who started a capture and switched windows does not see the status line; a
notification tells them what they would otherwise miss (docs/notifications.md):

- **connection lost**: only once the link has been down longer than `down_threshold`
  (5 s), so a blip the uplink rides out (docs/resilience.md) costs nobody's attention;
- **connection restored**: only after a "lost" was shown, `restore_settle` (1 s) after the
  reconnect, with how long it was down and how much audio the outage cost (the server's
  ack of the gap it left);
- **gave up**: the reason and what was kept (capture/undelivered.py);
- **audio dropped**: seconds the server recorded as gaps that no other notice announced;
- **microphone lost / back**: from the microphone's `on_event` messages.

Throttled: at most one notice per `throttle` seconds (30) per kind. What the throttle held
back is not lost: a connection or microphone notice that is still true when its window
ends goes out then (so the desktop never shows "lost" while the link is up), dropped
seconds add up into one later notice, and the next notice that goes out says what was not
shown in the meantime.

Two layers, so the rules are tested on a fake clock and the uplink never waits:

- `NoticePolicy`: pure logic, every input carries `now`; `next_deadline()` says when
  `tick(now)` must run (the same shape as uplink/core.py `tick()` / `next_deadline()`).
- `Notifier`: the thread-safe front the CLI calls from the event loop and the microphone's
  monitor thread. Inputs go into a bounded queue (full: the input is dropped and counted)
  and one worker thread runs the policy and sends through a `NotificationBackend`.
  `DbusNotifications` speaks org.freedesktop.Notifications on the session bus with
  jeepney; with no bus, or no notification server on it, sending stops silently and the
  status line is all there is.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import Enum, IntEnum, StrEnum
from typing import Any, Protocol

from uplink.core import ConnectionState, Phase
from uplink.ring import GapReason

log = logging.getLogger(__name__)

APP_NAME = "echopanel-capture"
NOTIFICATIONS_NAME = "org.freedesktop.Notifications"
NOTIFICATIONS_PATH = "/org/freedesktop/Notifications"
SESSION_BUS_VARIABLE = "DBUS_SESSION_BUS_ADDRESS"


class NoticeKind(StrEnum):
    CONNECTION_LOST = "connection-lost"
    CONNECTION_RESTORED = "connection-restored"
    GAVE_UP = "gave-up"
    AUDIO_DROPPED = "audio-dropped"
    MICROPHONE_LOST = "microphone-lost"
    MICROPHONE_BACK = "microphone-back"

    @property
    def family(self) -> str:
        """Notices of one family replace each other on screen (Notify's replaces_id): the
        "restored" bubble takes the place of the "lost" one instead of stacking."""
        if self in (NoticeKind.MICROPHONE_LOST, NoticeKind.MICROPHONE_BACK):
            return "microphone"
        if self is NoticeKind.AUDIO_DROPPED:
            return "audio"
        return "connection"


class Urgency(IntEnum):
    """The freedesktop "urgency" hint (Desktop Notifications Specification, "Urgency")."""

    LOW = 0
    NORMAL = 1
    CRITICAL = 2


_CATEGORY = {
    NoticeKind.CONNECTION_LOST: "network.disconnected",
    NoticeKind.CONNECTION_RESTORED: "network.connected",
    NoticeKind.GAVE_UP: "network.error",
    NoticeKind.AUDIO_DROPPED: "transfer.error",
    NoticeKind.MICROPHONE_LOST: "device.removed",
    NoticeKind.MICROPHONE_BACK: "device.added",
}


@dataclass(frozen=True, slots=True)
class Notice:
    kind: NoticeKind
    summary: str
    body: str
    urgency: Urgency = Urgency.NORMAL

    @property
    def category(self) -> str:
        return _CATEGORY[self.kind]


@dataclass(frozen=True, slots=True)
class NoticeRules:
    #: a link down for less than this is a blip: nobody is told
    down_threshold: float = 5.0
    #: at most one notice of a kind per this many seconds
    throttle: float = 30.0
    #: "restored" waits this long after the reconnect, for the ack of the gap the outage
    #: left (if any) to arrive, so one notice says both; a link down again by then needs none
    restore_settle: float = 1.0

    def __post_init__(self) -> None:
        if min(self.down_threshold, self.throttle, self.restore_settle) < 0:
            raise ValueError("down_threshold, throttle and restore_settle must not be negative")


# -- the microphone's messages --------------------------------------------------------------


class MicrophoneChange(Enum):
    LOST = "lost"
    BACK = "back"


@dataclass(frozen=True, slots=True)
class MicrophoneEvent:
    change: MicrophoneChange
    detail: str
    gap_samples: int = 0


# The exact texts capture/microphone.py `_recover` / `_monitor_loop` emit through on_event;
# tests/capture/test_notify.py pins them. "retrying in" lines say the device is still lost.
_MIC_LOST = re.compile(r"^microphone (?P<name>.+?) lost \((?P<reason>.*)\); "
                       r"(?P<then>reopening|not reopening)")
_MIC_ENDED = re.compile(r"^microphone capture ended: (?P<reason>.*)")
_MIC_BACK = re.compile(r"^microphone (?P<name>.+?) back after (?P<seconds>[0-9.]+) s; "
                       r"recorded a gap of (?P<samples>\d+) samples")


def classify_microphone(message: str) -> MicrophoneEvent | None:
    """A microphone `on_event` message as a change of the device's state, or None."""
    if m := _MIC_LOST.match(message):
        then = "reopening it" if m["then"] == "reopening" else "not reopening it"
        return MicrophoneEvent(MicrophoneChange.LOST, f"{m['name']}: {m['reason']}; {then}")
    if m := _MIC_ENDED.match(message):
        return MicrophoneEvent(MicrophoneChange.LOST, f"capture ended: {m['reason']}")
    if m := _MIC_BACK.match(message):
        return MicrophoneEvent(MicrophoneChange.BACK,
                               f"{m['name']} back after {float(m['seconds']):.1f} s",
                               int(m["samples"]))
    return None


# -- the rules ------------------------------------------------------------------------------


_DOWN_PHASES = (Phase.DISCONNECTED, Phase.CONNECTING, Phase.RECONNECTING)


@dataclass(slots=True)
class _Unshown:
    """What the throttle kept off the screen since the last notice went out."""

    connection_losses: int = 0
    down_seconds: float = 0.0
    microphone_losses: int = 0
    since: float | None = None

    def describe(self, now: float) -> str:
        parts = []
        if self.connection_losses:
            parts.append(f"{_plural(self.connection_losses, 'connection loss', 'connection losses')} "
                         f"({self.down_seconds:.0f} s down in all)")
        if self.microphone_losses:
            parts.append(_plural(self.microphone_losses, "microphone loss", "microphone losses"))
        if not parts or self.since is None:
            return ""
        return f"Not shown in the last {now - self.since:.0f} s: " + ", ".join(parts) + "."

    def add(self, now: float) -> None:
        if self.since is None:
            self.since = now


def _plural(n: int, one: str, many: str) -> str:
    return f"1 {one}" if n == 1 else f"{n} {many}"


class NoticePolicy:
    """What to tell, and when. Pure: every input carries `now` (a monotonic clock).

    The connection and the microphone are each a small state machine of "what is true"
    versus "what the desktop last showed"; `tick` sends the notice that makes the two
    agree once it is due (the link down past the threshold; back for `restore_settle`)
    and its kind's throttle window is closed. A notice held back is decided afresh when it
    falls due, against whatever is true by then. Every input first runs the deadlines that
    passed before it happened, so a late worker tells the same story as a punctual one.

    What an outage cost is known only from the server's gap acks (the ring counts a drop
    once the server recorded it, uplink/ring.py); the uplink sends the GAP first after a
    reconnect (docs/protocol.md §8), so its ack normally lands within the settle time and
    "restored" can say it. Buffer-overflow gaps acked while the desktop shows "lost" are
    told by the "restored" notice; any other gap no notice announced is "audio dropped".
    """

    def __init__(self, rules: NoticeRules, sample_rate: int) -> None:
        self.rules = rules
        self.sample_rate = sample_rate
        self._ever_connected = False
        self._down_since: float | None = None  # the link left "connected" (or never got there)
        self._up_since: float | None = None
        self._down_reason = ""
        self._last_down_for = 0.0
        self._shown_down = False  # the desktop's last connection notice said "lost"
        self._outage_shown = False  # this outage had its "lost" notice
        self._outage_loss = 0  # gap samples acked while the desktop showed "lost"
        self._link_final = False
        self._mic_down = False
        self._mic_detail = ""
        self._mic_gap_samples = 0
        self._shown_mic_down = False
        self._mic_loss_shown = True
        self._pending_drop_samples = 0
        self._pending_drops = 0
        #: source-gap samples a "microphone back" already announced: the server's gap ack
        #: that follows is absorbed instead of told twice
        self._announced_source = 0
        self._last_sent: dict[NoticeKind, float] = {}
        self._unshown = _Unshown()
        self._finished = False

    # -- inputs ---------------------------------------------------------------------------

    def state(self, state: ConnectionState, now: float) -> list[Notice]:
        notices = self.tick(now)
        if self._finished:
            return notices
        phase = state.phase
        if phase is Phase.CONNECTED:
            self._ever_connected = True
            self._up_since = now
            if self._down_since is not None:
                self._end_outage(now)
        elif phase in _DOWN_PHASES and not self._link_final:
            self._up_since = None
            if self._down_since is None:
                self._down_since = now
                self._outage_shown = False
            if state.reason:
                self._down_reason = state.reason
        elif phase.final:
            # DONE needs nothing; FAILED is told by finished(), which knows what was kept
            self._link_final = True
            self._down_since = self._up_since = None
        return notices + self.tick(now)

    def gap(self, samples: int, reason: GapReason, now: float) -> list[Notice]:
        """The server acknowledged a gap (UplinkClient.on_gap)."""
        notices = self.tick(now)
        if self._finished or samples <= 0:
            return notices
        if reason is GapReason.SOURCE:
            absorbed = min(samples, self._announced_source)
            self._announced_source -= absorbed
            samples -= absorbed
        if samples and self._shown_down and reason is GapReason.BUFFER_OVERFLOW:
            self._outage_loss += samples
        elif samples:
            self._pending_drop_samples += samples
            self._pending_drops += 1
        return notices + self.tick(now)

    def microphone(self, message: str, now: float) -> list[Notice]:
        notices = self.tick(now)
        event = classify_microphone(message)
        if self._finished or event is None:
            return notices
        if event.change is MicrophoneChange.LOST:
            if not self._mic_down:
                self._mic_loss_shown = False
            self._mic_down = True
        else:
            if not self._mic_loss_shown:
                self._unshown.microphone_losses += 1
                self._unshown.add(now)
            self._mic_down = False
            self._mic_gap_samples = event.gap_samples
        self._mic_detail = event.detail
        return notices + self.tick(now)

    def finished(self, ok: bool, reason: str, kept: str | None, undelivered_seconds: float,
                 now: float) -> list[Notice]:
        """The run is over (after the CLI kept the undelivered audio). Told at once, past
        any throttle, as the last things this capture says: audio dropped that no notice
        told yet, and a failure with what was kept."""
        notices = self.tick(now)
        if self._finished:
            return notices
        self._link_final = True
        self._down_since = self._up_since = None
        if ok and self._shown_down:
            # delivered in the end, so back before the settle time ran out: say so now
            notices.append(self._send(self._build(NoticeKind.CONNECTION_RESTORED, now), now))
        if self._outage_loss:
            self._pending_drop_samples += self._outage_loss
            self._pending_drops += 1
            self._outage_loss = 0
        if self._pending_drop_samples:
            notices.append(self._send(self._drop_notice(), now))
        if not ok:
            if undelivered_seconds > 0 and kept:
                what = f"{undelivered_seconds:.1f} s of audio not delivered, kept in {kept}."
            elif undelivered_seconds > 0:
                what = f"{undelivered_seconds:.1f} s of audio not delivered and not kept."
            else:
                what = "Everything captured was delivered."
            notices.append(self._send(Notice(NoticeKind.GAVE_UP, "Audio upload gave up",
                                             f"{_sentence(reason)} {what}", Urgency.CRITICAL), now))
        self._finished = True
        return notices

    # -- time -----------------------------------------------------------------------------

    def next_deadline(self) -> float | None:
        """When tick() may have something to send: a notice falling due (the threshold, the
        settle time) or a throttle window closing on one. After a tick, in the future."""
        deadlines = [max(due, self._window_end(kind)) for kind, due in self._candidates()]
        return min(deadlines) if deadlines else None

    def tick(self, now: float) -> list[Notice]:
        return [self._send(self._build(kind, now), now)
                for kind, due in self._candidates()
                if due <= now and self._window_end(kind) <= now]

    # -- internals ------------------------------------------------------------------------

    def _candidates(self) -> list[tuple[NoticeKind, float]]:
        """The notices that would make the desktop agree with what is true, each with the
        time it falls due."""
        wanted: list[tuple[NoticeKind, float]] = []
        if self._finished:
            return wanted
        if not self._shown_down:
            if self._down_since is not None:
                wanted.append((NoticeKind.CONNECTION_LOST,
                               self._down_since + self.rules.down_threshold))
        elif self._up_since is not None:
            wanted.append((NoticeKind.CONNECTION_RESTORED,
                           self._up_since + self.rules.restore_settle))
        if self._mic_down and not self._shown_mic_down:
            wanted.append((NoticeKind.MICROPHONE_LOST, float("-inf")))
        elif not self._mic_down and self._shown_mic_down:
            wanted.append((NoticeKind.MICROPHONE_BACK, float("-inf")))
        if self._pending_drop_samples:
            wanted.append((NoticeKind.AUDIO_DROPPED, float("-inf")))
        return wanted

    def _window_end(self, kind: NoticeKind) -> float:
        last = self._last_sent.get(kind)
        return float("-inf") if last is None else last + self.rules.throttle

    def _end_outage(self, now: float) -> None:
        assert self._down_since is not None
        down_for = now - self._down_since
        if down_for >= self.rules.down_threshold and not self._outage_shown:
            self._unshown.connection_losses += 1
            self._unshown.down_seconds += down_for
            self._unshown.add(now)
        self._last_down_for = down_for
        self._down_since = None

    def _build(self, kind: NoticeKind, now: float) -> Notice:
        match kind:
            case NoticeKind.CONNECTION_LOST:
                assert self._down_since is not None
                title = "Connection lost" if self._ever_connected else "Cannot reach the server"
                why = f": {self._down_reason}" if self._down_reason else ""
                body = (f"Down for {_duration(now - self._down_since)}{_sentence(why)} "
                        "Audio is buffered and will be sent when the link is back.")
                return Notice(kind, title, body, Urgency.NORMAL)
            case NoticeKind.CONNECTION_RESTORED:
                body = f"Down for {_duration(self._last_down_for)}; "
                if self._outage_loss:
                    body += (f"{self._outage_loss / self.sample_rate:.1f} s of audio dropped (the "
                             "buffer was full), recorded as a gap.")
                    self._outage_loss = 0
                else:
                    body += "no audio lost so far."
                return Notice(kind, "Connection restored", body, Urgency.LOW)
            case NoticeKind.MICROPHONE_LOST:
                self._mic_loss_shown = True
                return Notice(kind, "Microphone lost", _sentence(self._mic_detail), Urgency.NORMAL)
            case NoticeKind.MICROPHONE_BACK:
                gap = self._mic_gap_samples
                self._announced_source += gap
                return Notice(kind, "Microphone back",
                              f"{self._mic_detail}; {gap / self.sample_rate:.1f} s of audio "
                              "missing, recorded as a gap.", Urgency.LOW)
            case NoticeKind.AUDIO_DROPPED:
                return self._drop_notice()
        raise ValueError(f"{kind} is not built by tick()")  # GAVE_UP: finished() builds it

    def _drop_notice(self) -> Notice:
        seconds = self._pending_drop_samples / self.sample_rate
        times = "" if self._pending_drops == 1 else f" in {self._pending_drops} gaps"
        body = f"{seconds:.1f} s of audio lost{times}, recorded as silence in the stored stream."
        self._pending_drop_samples = self._pending_drops = 0
        return Notice(NoticeKind.AUDIO_DROPPED, "Audio dropped", body, Urgency.NORMAL)

    def _send(self, notice: Notice, now: float) -> Notice:
        """Book a notice as shown: the view it leaves, its throttle window, and the summary of
        what was not shown since the last one."""
        self._last_sent[notice.kind] = now
        match notice.kind:
            case NoticeKind.CONNECTION_LOST:
                self._shown_down = self._outage_shown = True
            case NoticeKind.CONNECTION_RESTORED:
                self._shown_down = False
            case NoticeKind.MICROPHONE_LOST:
                self._shown_mic_down = True
            case NoticeKind.MICROPHONE_BACK:
                self._shown_mic_down = False
        summary = self._unshown.describe(now)
        self._unshown = _Unshown()
        if summary:
            notice = Notice(notice.kind, notice.summary, f"{notice.body}\n{summary}", notice.urgency)
        return notice


def _duration(seconds: float) -> str:
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 120:
        return f"{seconds:.0f} s"
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes} min {secs} s"


def _sentence(text: str) -> str:
    """`text` ending in one full stop (reasons may end in "?" or "." already)."""
    text = text.rstrip()
    return text if text.endswith((".", "?", "!")) else text + "."


# -- delivery -------------------------------------------------------------------------------


class NotificationsUnavailable(Exception):
    """No session bus, or nothing on it shows notifications."""


class NotificationBackend(Protocol):
    def send(self, notice: Notice, replaces_id: int) -> int:
        """Show `notice` (in place of notification `replaces_id` when not 0); its id.
        Raises NotificationsUnavailable when notifications cannot be shown at all."""
        ...

    def close(self) -> None: ...


class DbusNotifications:
    """org.freedesktop.Notifications.Notify on the session bus, through jeepney.

    Connects on the first notice, in the notifier's worker thread; every call has a
    timeout, so a wedged bus holds up only that thread."""

    def __init__(self, address: str, *, app_name: str = APP_NAME, timeout: float = 2.0,
                 expire_ms: int = -1) -> None:
        self.address = address
        self.app_name = app_name
        self.timeout = timeout
        self.expire_ms = expire_ms  # -1: the server's default
        self._conn: Any = None

    def send(self, notice: Notice, replaces_id: int) -> int:
        from jeepney import DBusAddress, DBusErrorResponse, new_method_call
        from jeepney.io.blocking import open_dbus_connection
        from jeepney.wrappers import unwrap_msg

        try:
            if self._conn is None:
                self._conn = open_dbus_connection(self.address, auth_timeout=self.timeout)
            target = DBusAddress(NOTIFICATIONS_PATH, bus_name=NOTIFICATIONS_NAME,
                                 interface=NOTIFICATIONS_NAME)
            hints = {"urgency": ("y", int(notice.urgency)), "category": ("s", notice.category)}
            call = new_method_call(target, "Notify", "susssasa{sv}i",
                                   (self.app_name, replaces_id, "", notice.summary, notice.body,
                                    [], hints, self.expire_ms))
            reply = self._conn.send_and_get_reply(call, timeout=self.timeout)
            return int(unwrap_msg(reply)[0])
        except (OSError, KeyError, ValueError, RuntimeError, TimeoutError, DBusErrorResponse) as e:
            self.close()
            raise NotificationsUnavailable(f"desktop notifications unavailable: {e}") from e

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()


@dataclass(frozen=True, slots=True)
class NotifierStats:
    sent: int
    inputs_dropped: int  # the input queue was full
    unavailable: bool  # the backend failed; nothing more is sent


_Input = Callable[[NoticePolicy, float], list[Notice]]


class Notifier:
    """The thread-safe front: `state`, `gap`, `microphone`, `finished` return at once.

    One worker thread owns the policy and the backend. Inputs carry the clock reading of
    the moment they happened, so a slow send never shifts the threshold or the throttle.
    """

    def __init__(self, backend: NotificationBackend, policy: NoticePolicy, *,
                 clock: Callable[[], float] = time.monotonic, queue_size: int = 256) -> None:
        self.backend = backend
        self.policy = policy
        self.clock = clock
        self.queue_size = queue_size
        self._inputs: deque[tuple[_Input, float]] = deque()
        self._cond = threading.Condition()
        self._busy = False
        self._closing = False
        self._sent = 0
        self._dropped = 0
        self._unavailable = False
        self._replaces: dict[str, int] = {}
        self._thread = threading.Thread(target=self._run, name="notifier", daemon=True)

    # -- inputs (any thread) --------------------------------------------------------------

    def state(self, state: ConnectionState) -> None:
        """UplinkClient.on_state listener."""
        self._put(lambda p, now: p.state(state, now))

    def gap(self, start_sample: int, samples: int, reason: GapReason) -> None:
        """UplinkClient.on_gap hook."""
        self._put(lambda p, now: p.gap(samples, reason, now))

    def microphone(self, message: str) -> None:
        """A MicrophoneSource on_event message (other messages are ignored)."""
        self._put(lambda p, now: p.microphone(message, now))

    def finished(self, ok: bool, reason: str = "", kept: str | None = None,
                 undelivered_seconds: float = 0.0) -> None:
        self._put(lambda p, now: p.finished(ok, reason, kept, undelivered_seconds, now))

    def tick(self) -> None:
        """Wake the worker to check deadlines now (tests on a fake clock)."""
        self._put(lambda p, now: p.tick(now))

    def _put(self, item: _Input) -> None:
        with self._cond:
            if self._closing:
                return
            if len(self._inputs) >= self.queue_size:
                self._dropped += 1
                return
            self._inputs.append((item, self.clock()))
            self._cond.notify()

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def close(self, timeout: float = 3.0) -> None:
        """Send what is queued (the "gave up" notice last of all), then stop; blocks up to
        `timeout` (call it off the event loop)."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        if self._thread.is_alive():
            self._thread.join(timeout)
        self.backend.close()

    def wait_idle(self, timeout: float) -> bool:
        """True once every input so far was handled (tests)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._inputs or self._busy:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True

    def stats(self) -> NotifierStats:
        with self._cond:
            return NotifierStats(self._sent, self._dropped, self._unavailable)

    # -- the worker -----------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._inputs and not self._closing:
                    deadline = self.policy.next_deadline()
                    if deadline is not None and deadline <= self.clock():
                        break
                    wait = None if deadline is None else min(1.0, deadline - self.clock())
                    self._cond.wait(wait)
                if not self._inputs and self._closing:
                    return
                batch = list(self._inputs)
                self._inputs.clear()
                self._busy = True
            try:
                notices = []
                for item, at in batch:
                    notices += item(self.policy, at)
                notices += self.policy.tick(self.clock())
                for notice in notices:
                    self._deliver(notice)
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()

    def _deliver(self, notice: Notice) -> None:
        if self._unavailable:
            return
        family = notice.kind.family
        try:
            self._replaces[family] = self.backend.send(notice, self._replaces.get(family, 0))
        except NotificationsUnavailable as e:
            # the status line stays: one debug line, no more tries (docs/notifications.md)
            log.debug("%s", e)
            with self._cond:
                self._unavailable = True
            return
        with self._cond:
            self._sent += 1


def session_bus_address(environ: Mapping[str, str]) -> str | None:
    """The desktop session bus, when there is one: only its address in the environment
    counts (a headless service has none, and then nobody would see a notification)."""
    return environ.get(SESSION_BUS_VARIABLE) or None


def build_notifier(enabled: bool | None, *, microphone: bool, sample_rate: int,
                   environ: Mapping[str, str] | None = None,
                   rules: NoticeRules | None = None,
                   clock: Callable[[], float] = time.monotonic) -> Notifier | None:
    """`--notify` (True), `--no-notify` (False) or neither (None: on for microphone capture
    when a desktop session bus is present). None when notifications are off or there is no
    bus; otherwise a started Notifier."""
    address = session_bus_address(os.environ if environ is None else environ)
    if enabled is False or (enabled is None and not microphone):
        return None
    if address is None:
        if enabled:
            log.info("--notify: no D-Bus session bus (%s is not set); notifications off",
                     SESSION_BUS_VARIABLE)
        return None
    policy = NoticePolicy(rules or NoticeRules(), sample_rate)
    notifier = Notifier(DbusNotifications(address), policy, clock=clock)
    notifier.start()
    return notifier

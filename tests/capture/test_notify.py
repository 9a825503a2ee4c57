"""Desktop notifications (capture/notify.py, docs/notifications.md).

The rules on a fake clock (NoticePolicy), then the whole Notifier against a real session
bus (dbus-daemon started by the test) with a notification server that records what it got.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from capture.notify import (
    DbusNotifications,
    MicrophoneChange,
    Notice,
    NoticeKind,
    NoticePolicy,
    NoticeRules,
    NotificationsUnavailable,
    Notifier,
    Urgency,
    build_notifier,
    classify_microphone,
)
from tests.capture.dbus_session import RecordingNotificationServer, SessionBus
from uplink.core import ConnectionState, Phase
from uplink.ring import GapReason

RATE = 16_000
CONNECTING = ConnectionState(Phase.CONNECTING)
CONNECTED = ConnectionState(Phase.CONNECTED)


def reconnecting(reason: str = "connection reset") -> ConnectionState:
    return ConnectionState(Phase.RECONNECTING, attempt=1, retry_at=0.0, reason=reason)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Driver:
    """Runs a NoticePolicy as the notifier's worker would: every deadline on time."""

    def __init__(self) -> None:
        self.policy = NoticePolicy(NoticeRules(down_threshold=5.0, throttle=30.0,
                                               restore_settle=1.0), RATE)
        self.now = 0.0
        self.sent: list[tuple[float, Notice]] = []

    def advance_to(self, t: float) -> None:
        while (deadline := self.policy.next_deadline()) is not None and deadline <= t:
            assert deadline >= self.now, "a deadline in the past would spin the worker"
            self.now = deadline
            self._record(self.policy.tick(deadline))
        self.now = t

    def at(self, t: float, call: str, *args: object) -> None:
        self.advance_to(t)
        self._record(getattr(self.policy, call)(*args, t))

    def _record(self, notices: list[Notice]) -> None:
        self.sent += [(self.now, n) for n in notices]

    def kinds(self) -> list[NoticeKind]:
        return [n.kind for _, n in self.sent]


# -- the rules ------------------------------------------------------------------------------


def test_a_blip_shorter_than_the_threshold_is_not_told() -> None:
    d = Driver()
    d.at(0, "state", CONNECTING)
    d.at(0.5, "state", CONNECTED)
    d.at(10, "state", reconnecting())
    d.at(14.9, "state", CONNECTED)
    d.advance_to(100)
    assert d.sent == []


def test_lost_after_the_threshold_then_restored_with_the_downtime() -> None:
    d = Driver()
    d.at(0, "state", CONNECTED)
    d.at(10, "state", reconnecting("no ack for 4.0 s"))
    d.at(11, "state", CONNECTING)
    d.at(12, "state", reconnecting("connection refused"))
    d.advance_to(20)
    assert [(t, n.kind) for t, n in d.sent] == [(15.0, NoticeKind.CONNECTION_LOST)]
    lost = d.sent[0][1]
    assert lost.summary == "Connection lost"
    assert lost.body == ("Down for 5.0 s: connection refused. Audio is buffered and will be sent "
                         "when the link is back.")
    d.at(22.5, "state", CONNECTED)
    d.advance_to(40)
    assert [(t, n.kind) for t, n in d.sent][1] == (23.5, NoticeKind.CONNECTION_RESTORED)
    restored = d.sent[1][1]
    assert restored.body == "Down for 12 s; no audio lost so far."
    assert restored.urgency is Urgency.LOW


def test_never_connected_says_cannot_reach_the_server() -> None:
    d = Driver()
    d.at(0, "state", CONNECTING)
    d.at(1, "state", reconnecting("connection refused"))
    d.advance_to(6)
    assert [n.summary for _, n in d.sent] == ["Cannot reach the server"]


def test_a_flapping_minute_is_two_notices_not_twenty_and_ends_true() -> None:
    d = Driver()
    d.at(0, "state", CONNECTED)
    # down 7 s, up 3 s, ten times over: every outage passes the threshold
    for i in range(10):
        d.at(10 * i + 1, "state", reconnecting())
        d.at(10 * i + 8, "state", CONNECTED)
    d.advance_to(200)
    kinds = d.kinds()
    assert kinds[:2] == [NoticeKind.CONNECTION_LOST, NoticeKind.CONNECTION_RESTORED]
    for kind in (NoticeKind.CONNECTION_LOST, NoticeKind.CONNECTION_RESTORED):
        times = [t for t, n in d.sent if n.kind is kind]
        assert all(b - a >= 30 for a, b in zip(times, times[1:], strict=False)), times
    # at most one of each per 30 s window: ≤ 2 × ceil(100 / 30) in all, far from twenty
    assert len(d.sent) <= 8
    # the desktop ends agreeing with the truth (connected): the last notice is "restored"
    assert kinds[-1] is NoticeKind.CONNECTION_RESTORED
    # and the throttle's summary told what was not shown
    summaries = [n.body for _, n in d.sent if "Not shown in the last" in n.body]
    assert summaries and "connection losses" in summaries[0]


def test_a_lost_notice_held_by_the_throttle_goes_out_when_the_window_ends_if_still_down() -> None:
    d = Driver()
    d.at(0, "state", CONNECTED)
    d.at(1, "state", reconnecting())  # lost at 6
    d.at(8, "state", CONNECTED)  # restored at 8
    d.at(10, "state", reconnecting())  # past the threshold at 15: held until 36
    d.advance_to(35.9)
    assert d.kinds() == [NoticeKind.CONNECTION_LOST, NoticeKind.CONNECTION_RESTORED]
    d.advance_to(60)
    assert [(t, n.kind) for t, n in d.sent][2] == (36.0, NoticeKind.CONNECTION_LOST)
    assert d.sent[2][1].body.startswith("Down for 26 s")


def test_restored_waits_for_the_outage_gap_ack_and_says_what_was_dropped() -> None:
    d = Driver()
    d.at(0, "state", CONNECTED)
    d.at(1, "state", reconnecting())
    d.at(200, "state", CONNECTED)
    d.at(200.2, "gap", 3 * RATE, GapReason.BUFFER_OVERFLOW)  # the GAP goes first (§8)
    d.advance_to(201.5)
    assert [(t, n.kind) for t, n in d.sent][1] == (201.0, NoticeKind.CONNECTION_RESTORED)
    assert d.sent[1][1].body == ("Down for 3 min 19 s; 3.0 s of audio dropped (the buffer was "
                                 "full), recorded as a gap.")
    # dropped after the settle time (the ring still full): told on its own
    d.at(203, "gap", RATE // 2, GapReason.BUFFER_OVERFLOW)
    d.advance_to(300)
    assert d.kinds() == [NoticeKind.CONNECTION_LOST, NoticeKind.CONNECTION_RESTORED,
                         NoticeKind.AUDIO_DROPPED]
    assert d.sent[2][1].body.startswith("0.5 s of audio lost,")


def test_a_link_down_again_within_the_settle_time_is_not_restored() -> None:
    d = Driver()
    d.at(0, "state", CONNECTED)
    d.at(1, "state", reconnecting())
    d.at(10, "state", CONNECTED)
    d.at(10.5, "state", reconnecting())
    d.advance_to(20)
    assert d.kinds() == [NoticeKind.CONNECTION_LOST]


def test_unannounced_gaps_are_told_and_add_up_under_the_throttle() -> None:
    d = Driver()
    d.at(0, "gap", RATE // 2, GapReason.SOURCE)
    d.at(1, "gap", RATE, GapReason.SOURCE)
    d.at(2, "gap", RATE, GapReason.BUFFER_OVERFLOW)
    d.advance_to(100)
    assert [(t, n.kind) for t, n in d.sent] == [(0, NoticeKind.AUDIO_DROPPED),
                                                (30.0, NoticeKind.AUDIO_DROPPED)]
    assert d.sent[0][1].body.startswith("0.5 s of audio lost,")
    assert d.sent[1][1].body.startswith("2.0 s of audio lost in 2 gaps")


# the exact messages capture/microphone.py emits (its _recover and _monitor_loop)
MIC_LOST = "microphone 'USB Mic' lost (no audio for 1.2 s); reopening in 0.50 s (attempt 1)"
MIC_RETRY = "microphone 'USB Mic': retrying in 1.00 s (attempt 2)"
MIC_BACK = "microphone 'USB Mic' back after 2.40 s; recorded a gap of 38400 samples"
MIC_GONE = "microphone 'USB Mic' lost (the stream is no longer active); not reopening"


def test_microphone_messages_are_classified() -> None:
    lost = classify_microphone(MIC_LOST)
    assert lost is not None and lost.change is MicrophoneChange.LOST
    assert lost.detail == "'USB Mic': no audio for 1.2 s; reopening it"
    assert classify_microphone(MIC_RETRY) is None
    back = classify_microphone(MIC_BACK)
    assert back is not None and back.change is MicrophoneChange.BACK and back.gap_samples == 38400
    gone = classify_microphone(MIC_GONE)
    assert gone is not None and gone.detail.endswith("not reopening it")
    ended = classify_microphone("microphone capture ended: sink failed: RingClosed()")
    assert ended is not None and ended.change is MicrophoneChange.LOST
    assert classify_microphone("capture stopped after --duration: delivering what is buffered") is None


def test_microphone_lost_and_back_and_its_gap_is_told_once() -> None:
    d = Driver()
    d.at(0, "microphone", MIC_LOST)
    d.at(1, "microphone", MIC_RETRY)
    d.at(2.4, "microphone", MIC_BACK)
    d.at(3, "gap", 38400, GapReason.SOURCE)
    d.advance_to(100)
    assert d.kinds() == [NoticeKind.MICROPHONE_LOST, NoticeKind.MICROPHONE_BACK]
    assert "2.4 s of audio missing" in d.sent[1][1].body


def test_gave_up_is_told_at_once_with_what_was_kept() -> None:
    d = Driver()
    d.at(0, "state", CONNECTED)
    d.at(1, "state", reconnecting())
    d.at(20, "state", ConnectionState(Phase.FAILED, reason="retry budget exhausted"))
    d.at(20.1, "finished", False, "retry budget exhausted", "/tmp/x.undelivered.wav", 19.0)
    d.advance_to(100)
    assert d.kinds() == [NoticeKind.CONNECTION_LOST, NoticeKind.GAVE_UP]
    gave_up = d.sent[1][1]
    assert gave_up.urgency is Urgency.CRITICAL
    assert gave_up.body == ("retry budget exhausted. 19.0 s of audio not delivered, kept in "
                            "/tmp/x.undelivered.wav.")
    d.at(101, "state", CONNECTED)  # nothing after the end
    assert len(d.sent) == 2


def test_a_run_that_ends_before_the_settle_time_still_says_restored() -> None:
    d = Driver()
    d.at(0, "state", CONNECTED)
    d.at(1, "state", reconnecting())
    d.at(9, "state", CONNECTED)
    d.at(9.1, "gap", RATE, GapReason.BUFFER_OVERFLOW)
    d.at(9.3, "state", ConnectionState(Phase.DONE))
    d.at(9.4, "finished", True, "", None, 0.0)
    d.advance_to(100)
    assert d.kinds() == [NoticeKind.CONNECTION_LOST, NoticeKind.CONNECTION_RESTORED]
    assert "1.0 s of audio dropped" in d.sent[1][1].body


def test_build_notifier_decides_from_the_flags_and_the_bus() -> None:
    bus = {"DBUS_SESSION_BUS_ADDRESS": "unix:path=/nonexistent/bus"}
    assert build_notifier(None, microphone=True, sample_rate=RATE, environ={}) is None
    assert build_notifier(True, microphone=True, sample_rate=RATE, environ={}) is None
    assert build_notifier(None, microphone=False, sample_rate=RATE, environ=bus) is None
    assert build_notifier(False, microphone=True, sample_rate=RATE, environ=bus) is None
    for enabled, mic in ((None, True), (True, False)):
        notifier = build_notifier(enabled, microphone=mic, sample_rate=RATE, environ=bus)
        assert notifier is not None
        notifier.close(1.0)


# -- the notifier on a real session bus -----------------------------------------------------


@pytest.fixture
def bus(tmp_path: Path) -> Iterator[SessionBus]:
    with SessionBus(tmp_path) as b:
        yield b


def notifier_on(address: str, clock: FakeClock) -> Notifier:
    policy = NoticePolicy(NoticeRules(), RATE)
    n = Notifier(DbusNotifications(address), policy, clock=clock)
    n.start()
    return n


def test_one_notice_when_down_one_when_back_on_a_real_bus(bus: SessionBus) -> None:
    clock = FakeClock()
    start = clock.now

    def at(t: float, *inputs: ConnectionState) -> None:
        clock.now = start + t
        for state in inputs:
            n.state(state)
        n.tick()  # the worker's deadline check, on the fake clock
        assert n.wait_idle(5)

    with RecordingNotificationServer(bus.address) as server:
        n = notifier_on(bus.address, clock)
        try:
            at(0, CONNECTING, CONNECTED)
            # a 20 s outage: twenty state changes as the uplink retries, one tick a second
            for t in range(1, 21):
                at(t, CONNECTING if t % 2 == 0 else reconnecting("connection refused"))
            at(21, CONNECTED)
            # then a flapping quarter minute: two more 7 s and 4.5 s outages, then steady
            at(22, reconnecting())
            at(29, CONNECTED)
            at(29.5, reconnecting())
            at(34, CONNECTED)
            for t in range(35, 70):
                at(t)
            got = server.wait_for(2)
            assert [r.summary for r in got] == ["Connection lost", "Connection restored"]
            lost, restored = got
            assert lost.app_name == "echopanel-capture"
            assert lost.body.startswith("Down for 5.0 s: connection refused.")
            assert lost.hints == {"urgency": int(Urgency.NORMAL), "category": "network.disconnected"}
            # "restored" replaces the "lost" bubble rather than stacking under it
            assert restored.replaces_id == lost.id
            assert restored.body == "Down for 20 s; no audio lost so far."
            # the next notice carries the throttle's summary of what was not shown
            at(70, reconnecting("connection reset"))
            at(75)
            got = server.wait_for(3)
            assert len(got) == 3 and got[2].summary == "Connection lost"
            assert got[2].body.endswith("Not shown in the last 46 s: 1 connection loss (7 s down in all).")
            n.finished(False, "retry budget exhausted", "/data/x.wav", 6.0)
        finally:
            n.close(5)
        got = server.wait_for(4)
        assert got[3].summary == "Audio upload gave up"
        assert got[3].hints["urgency"] == int(Urgency.CRITICAL)
        assert n.stats().sent == 4 and not n.stats().unavailable


def test_no_bus_degrades_silently(tmp_path: Path) -> None:
    clock = FakeClock()
    n = notifier_on(f"unix:path={tmp_path}/no-bus-here", clock)
    n.state(reconnecting())
    clock.now += 10
    n.tick()
    n.state(CONNECTED)
    n.finished(False, "gave up", None, 1.0)
    assert n.wait_idle(5)
    n.close(5)
    assert n.stats().sent == 0 and n.stats().unavailable


def test_a_bus_without_a_notification_server_degrades_silently(bus: SessionBus) -> None:
    backend = DbusNotifications(bus.address)
    with pytest.raises(NotificationsUnavailable, match="ServiceUnknown"):
        backend.send(Notice(NoticeKind.GAVE_UP, "x", "y"), 0)
    clock = FakeClock()
    n = notifier_on(bus.address, clock)
    n.finished(False, "gave up", None, 0.0)
    n.close(5)
    assert n.stats().unavailable and n.stats().sent == 0


class StuckBackend:
    """A bus that never answers: the notifier's inputs must still return at once."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.entered = threading.Event()

    def send(self, notice: Notice, replaces_id: int) -> int:
        self.entered.set()
        self.release.wait(10)
        return 1

    def close(self) -> None:
        pass


def test_a_stuck_bus_never_blocks_the_caller_and_overflow_is_counted() -> None:
    backend, clock = StuckBackend(), FakeClock()
    n = Notifier(backend, NoticePolicy(NoticeRules(), RATE), clock=clock, queue_size=8)
    n.start()
    n.finished(False, "gave up", None, 0.0)
    assert backend.entered.wait(5)
    started = time.monotonic()
    for _ in range(100):
        n.state(reconnecting())
    assert time.monotonic() - started < 0.5
    assert n.stats().inputs_dropped == 92
    backend.release.set()
    n.close(5)

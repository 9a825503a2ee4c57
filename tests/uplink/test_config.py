"""Uplink configuration: profile, then ECHOPANEL_UPLINK_* environment, then flags."""

from __future__ import annotations

import pytest

from uplink.config import PROFILES, build_config


def test_profiles_follow_the_research_note() -> None:
    assert PROFILES["development"].backoff.cap == 10.0
    assert PROFILES["production"].backoff.cap == 60.0
    assert PROFILES["production"].heartbeat_interval == 30.0
    assert build_config().backoff.base == 0.5  # live: a quick first retry


def test_environment_then_flags_override_the_profile() -> None:
    env = {"ECHOPANEL_UPLINK_ACK_TIMEOUT": "1.5", "ECHOPANEL_UPLINK_BACKOFF_CAP": "20",
           "ECHOPANEL_UPLINK_MAX_OUTAGE": "never", "ECHOPANEL_ACK_TIMEOUT": "99"}
    cfg = build_config("production", {"backoff_cap": "7", "window_frames": 64}, environ=env)
    assert cfg.ack_timeout == 1.5  # env (the server's ECHOPANEL_ACK_TIMEOUT is not ours)
    assert cfg.backoff.cap == 7.0  # the flag wins over the env
    assert cfg.budget.max_outage is None
    assert cfg.window_frames == 64
    assert cfg.heartbeat_interval == 30.0  # the profile's


def test_unknown_profile_and_option_are_errors() -> None:
    with pytest.raises(ValueError, match="profile"):
        build_config("fast")
    with pytest.raises(ValueError, match="option"):
        build_config("live", {"nope": 1})

"""Uplink configuration: profile, then ECHOPANEL_UPLINK_* environment, then flags."""

from __future__ import annotations

import pytest

from uplink.config import PROFILES, UplinkConfig, build_config
from uplink.policy import BackoffConfig


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


@pytest.mark.parametrize("name,value,says", [
    ("buffer_seconds", "0", "--buffer-seconds must be greater than 0"),
    ("ack_timeout", "-1", "--ack-timeout must be greater than 0"),
    ("window_frames", "0", "--window-frames must be at least 1"),
    ("backoff_jitter", "2", "--backoff-jitter must be between 0 and 1"),
    ("breaker_failures", "0", "--breaker-failures must be at least 1"),
    ("heartbeat_timeout", "nan", "--heartbeat-timeout"),
    ("window_frames", "1.5", "--window-frames: '1.5' is not a whole number"),
    ("connect_timeout", "soon", "--connect-timeout: 'soon' is not a number"),
])
def test_bad_flag_values_name_the_flag(name: str, value: str, says: str) -> None:
    with pytest.raises(ValueError) as caught:
        build_config("live", {name: value}, environ={})
    assert says in str(caught.value)
    assert "buffer_seconds" not in str(caught.value)  # never the internal field name


def test_bad_environment_values_name_the_variable() -> None:
    env = {"ECHOPANEL_UPLINK_BUFFER_SECONDS": "0"}
    with pytest.raises(ValueError, match="ECHOPANEL_UPLINK_BUFFER_SECONDS must be greater"):
        build_config("live", environ=env)
    env = {"ECHOPANEL_UPLINK_MAX_ATTEMPTS": "many"}
    with pytest.raises(ValueError, match="ECHOPANEL_UPLINK_MAX_ATTEMPTS: 'many' is not"):
        build_config("live", environ=env)


def test_restart_grace_is_a_tuning_option() -> None:
    assert build_config("live", {"restart_grace": "0"}).breaker.restart_grace == 0.0
    assert build_config("production").breaker.restart_grace == 30.0
    assert build_config("live").breaker.restart_grace == 15.0


@pytest.mark.parametrize("kwargs,field", [
    ({"ack_timeout": -1}, "ack_timeout"),
    ({"window_frames": 0}, "window_frames"),
    ({"buffer_seconds": 0}, "buffer_seconds"),
])
def test_a_config_built_in_code_is_checked_too(kwargs: dict[str, float], field: str) -> None:
    with pytest.raises(ValueError, match=f"UplinkConfig.{field} "):
        UplinkConfig(**kwargs)  # type: ignore[arg-type]


def test_a_bad_section_value_names_the_section() -> None:
    with pytest.raises(ValueError, match=r"UplinkConfig.backoff.jitter must be between 0 and 1"):
        UplinkConfig(backoff=BackoffConfig(jitter=2.0))

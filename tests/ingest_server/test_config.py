"""Configuration precedence: defaults < profile < ECHOPANEL_* env < CLI flags."""

from __future__ import annotations

from pathlib import Path

import pytest

from ingest_server.config import ConfigError, ServerConfig, load_config


def test_defaults_are_the_production_profile() -> None:
    cfg = load_config([], environ={})
    assert cfg == ServerConfig()
    assert (cfg.profile, cfg.session_timeout, cfg.idle_timeout) == ("production", 300.0, 15.0)
    assert (cfg.handshake_timeout, cfg.max_message_bytes, cfg.max_inflight_frames) == (
        10.0, 1 << 20, 1024)


def test_profile_env_and_cli_precedence(tmp_path: Path) -> None:
    assert load_config(["--profile", "development"], environ={}).session_timeout == 60.0
    env = {"ECHOPANEL_PROFILE": "development", "ECHOPANEL_SESSION_TIMEOUT": "90",
           "ECHOPANEL_FSYNC": "off", "ECHOPANEL_DATA_DIR": str(tmp_path)}
    cfg = load_config([], environ=env)
    assert (cfg.profile, cfg.session_timeout, cfg.fsync, cfg.data_dir) == (
        "development", 90.0, False, tmp_path)
    cfg = load_config(["--session-timeout", "5", "--fsync", "--port", "0"], environ=env)
    assert (cfg.session_timeout, cfg.fsync, cfg.port) == (5.0, True, 0)


@pytest.mark.parametrize(
    ("argv", "env"),
    [
        (["--idle-timeout", "0"], {}),
        ([], {"ECHOPANEL_PROFILE": "staging"}),
        ([], {"ECHOPANEL_FSYNC": "maybe"}),
        ([], {"ECHOPANEL_MAX_MESSAGE_BYTES": "10"}),
    ],
)
def test_invalid_values_are_config_errors(argv: list[str], env: dict[str, str]) -> None:
    with pytest.raises(ConfigError):
        load_config(argv, environ=env)

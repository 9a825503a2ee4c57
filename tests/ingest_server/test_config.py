"""Configuration precedence: defaults < profile < ECHOPANEL_* env < CLI flags."""

from __future__ import annotations

from pathlib import Path

import pytest

from ingest_server.config import ConfigError, ServerConfig, load_config, parse_bool


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
        ([], {"ECHOPANEL_SYNC_MODE": "never"}),
    ],
)
def test_invalid_values_are_config_errors(argv: list[str], env: dict[str, str]) -> None:
    with pytest.raises(ConfigError):
        load_config(argv, environ=env)


def test_sync_mode_from_env_and_flag() -> None:
    assert load_config([], environ={}).sync_mode == "auto"
    assert load_config([], environ={"ECHOPANEL_SYNC_MODE": "fsync"}).sync_mode == "fsync"
    assert load_config(["--sync-mode", "syncfs"],
                       environ={"ECHOPANEL_SYNC_MODE": "fsync"}).sync_mode == "syncfs"
    with pytest.raises(SystemExit):  # argparse refuses an unknown choice
        load_config(["--sync-mode", "never"], environ={})


T1, T2, T3 = "cfg-token-1-0123456789", "cfg-token-2-0123456789", "cfg-token-3-0123456789"


def test_tokens_from_flags_file_and_env(tmp_path: Path) -> None:
    token_file = tmp_path / "tokens"
    token_file.write_text(f"# comment\n{T2}\n\n  {T3}  \n")
    token_file.chmod(0o600)
    assert load_config([], environ={}).tokens == ()
    assert load_config([], environ={"ECHOPANEL_TOKEN": f"{T1}, {T2}"}).tokens == (T1, T2)
    env = {"ECHOPANEL_TOKEN": T1, "ECHOPANEL_TOKEN_FILE": str(token_file)}
    assert load_config([], environ=env).tokens == (T1, T2, T3)
    # Flags win as a whole: the environment's tokens are not added to them.
    assert load_config(["--token", T3], environ=env).tokens == (T3,)
    cfg = load_config(["--token", T1, "--token", T1, "--token-file", str(token_file)],
                      environ=env)
    assert cfg.tokens == (T1, T2, T3)  # duplicates dropped
    assert T1 not in repr(cfg) and "tokens" not in repr(cfg)


@pytest.mark.parametrize(("argv", "env", "message"), [
    (["--token", "short"], {}, "at least 16"),
    (["--token", "has space in it 0123456"], {}, "may only contain"),
    ([], {"ECHOPANEL_TOKEN": "bad token with spaces 01"}, "may only contain"),
    (["--token-file", "/nonexistent/tokens"], {}, "cannot read token file"),
    (["--log-format", "xml"], {}, None),
    ([], {"ECHOPANEL_LOG_FORMAT": "xml"}, "log_format"),
    (["--max-connections", "0"], {}, "max_connections"),
    ([], {"ECHOPANEL_MAX_MESSAGE_RATE": "0"}, "max_message_rate"),
    (["--retention-days", "-1"], {}, "retention_days"),
])
def test_bad_tokens_and_limits_are_config_errors(
    argv: list[str], env: dict[str, str], message: str | None
) -> None:
    if message is None:  # argparse rejects it itself (choices)
        with pytest.raises(SystemExit):
            load_config(argv, environ=env)
        return
    with pytest.raises(ConfigError, match=message) as e:
        load_config(argv, environ=env)
    assert "0123456" not in str(e.value)  # error messages never echo a token


def test_empty_token_file_is_an_error(tmp_path: Path) -> None:
    empty = tmp_path / "tokens"
    empty.write_text("# nothing yet\n")
    with pytest.raises(ConfigError, match="holds no tokens"):
        load_config(["--token-file", str(empty)], environ={})


def test_limits_defaults_and_overrides() -> None:
    cfg = load_config([], environ={})
    assert (cfg.max_connections, cfg.max_connections_per_token, cfg.max_streams) == (
        1024, 256, 1000)
    assert (cfg.max_stream_seconds, cfg.max_message_rate, cfg.message_burst) == (
        86400.0, 1000.0, 2000)
    assert (cfg.retention_days, cfg.public_metrics, cfg.log_format) == (0.0, False, "text")
    env = {"ECHOPANEL_MAX_STREAMS": "5", "ECHOPANEL_PUBLIC_METRICS": "yes",
           "ECHOPANEL_RETENTION_DAYS": "30"}
    cfg = load_config(["--max-connections", "10", "--log-format", "json",
                       "--no-public-metrics"], environ=env)
    assert (cfg.max_streams, cfg.max_connections, cfg.retention_days) == (5, 10, 30.0)
    assert (cfg.public_metrics, cfg.log_format) == (False, "json")


def test_version_flag_prints_the_installed_package_version(
        capsys: pytest.CaptureFixture[str]) -> None:
    import importlib.metadata

    with pytest.raises(SystemExit) as e:
        load_config(["--version"], environ={})
    assert e.value.code == 0
    assert capsys.readouterr().out.strip() == (
        f"echopanel-ingest {importlib.metadata.version('echopanel-uplink')}")


def test_help_shows_every_default_with_its_unit() -> None:
    from ingest_server.config import build_parser

    parser = build_parser()
    flags = {a.option_strings[0]: a.help or "" for a in parser._actions
             if a.option_strings and a.dest not in ("help", "version")}
    singular = {"webhooks": "webhook"}  # repeatable flags are named for one value
    assert {"--" + singular.get(f, f).replace("_", "-") for f in ServerConfig.__slots__
            if f != "tokens"} <= set(flags)
    for flag, text in flags.items():
        assert "(default: " in text, flag
    assert "(default: 15 s)" in flags["--idle-timeout"]
    assert "(default: development 60 s, production 300 s)" in flags["--session-timeout"]
    assert "(default: 1048576 bytes)" in flags["--max-message-bytes"]
    assert "(default: 10000 gaps)" in flags["--max-gaps"]
    assert "(default: on)" in flags["--fsync"] and "(default: ./data)" in flags["--data-dir"]
    assert "(default: 1000 messages/s)" in flags["--max-message-rate"]
    parser.format_help()  # every help string survives argparse's %-formatting


@pytest.mark.parametrize(("text", "expected"), [
    ("1", True), ("true", True), (" YES ", True), ("On", True),
    ("0", False), ("false", False), ("no", False), ("OFF", False),
])
def test_booleans_have_one_syntax(text: str, expected: bool) -> None:
    assert parse_bool(text) is expected


@pytest.mark.parametrize("text", ["", "2", "y", "enabled", "none"])
def test_anything_else_is_an_error_naming_the_variable(text: str) -> None:
    with pytest.raises(ValueError, match="not a boolean"):
        parse_bool(text)
    with pytest.raises(ConfigError, match="ECHOPANEL_PUBLIC_METRICS"):
        load_config([], {"ECHOPANEL_PUBLIC_METRICS": text})


def test_store_webhooks_and_secrets() -> None:
    cfg = load_config(["--webhook", "http://127.0.0.1:9/hook", "--webhook", "https://h.example/x",
                       "--store", "nats://127.0.0.1:4222,127.0.0.1:4223",
                       "--profile", "development"],
                      {"ECHOPANEL_WEBHOOK_SECRET": "s" * 20, "ECHOPANEL_NATS_TOKEN": "n" * 20})
    assert cfg.webhooks == ("http://127.0.0.1:9/hook", "https://h.example/x")
    assert cfg.store.startswith("nats://") and (cfg.replicas, cfg.min_replicas) == (1, 1)
    assert set(cfg.secrets) == {"s" * 20, "n" * 20}
    assert "s" * 20 not in repr(cfg) and "n" * 20 not in repr(cfg)
    assert load_config([], {}).min_replicas == 3  # production
    env = load_config([], {"ECHOPANEL_WEBHOOKS": "http://a/1, http://b/2"})
    assert env.webhooks == ("http://a/1", "http://b/2")


@pytest.mark.parametrize(("argv", "message"), [
    (["--store", "redis://x:1"], "store must be"),
    (["--store", "nats://"], "store must be"),
    (["--webhook", "ftp://x/y"], "http:// or https://"),
    (["--webhook", "http:///nohost?secret=abc"], "http:// or https://"),
    (["--webhook", "http://x/y", "--webhook-secret", "short"], "at least 16"),
    (["--lease-seconds", "0"], "lease_seconds must be positive"),
    (["--history-limit", "0"], "history_limit must be at least 1"),
])
def test_bad_store_and_webhook_settings(argv: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message) as err:
        load_config(argv, {})
    assert "secret=abc" not in str(err.value)


def test_listening_line_names_the_store_without_credentials() -> None:
    from ingest_server.cli import where_stored

    assert where_stored(ServerConfig(data_dir=Path("d"))) == "data dir d"
    line = where_stored(ServerConfig(store="nats://user:pw-secret@a:4222,b:4223", node_name="n1"))
    assert line == "store nats://a:4222,b:4223 as n1"

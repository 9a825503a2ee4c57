"""`--server` on both commands: commas, repeats, ECHOPANEL_SERVER, and refusals that never
echo a credential (docs/capture.md, "Several servers")."""

from __future__ import annotations

import argparse

import pytest

from capture import cli
from uplink import listen_cli
from uplink.config import UplinkConfig


@pytest.fixture
def captured(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, ...]]:
    """Stand in for the capture run: record the server list main() resolved."""
    seen: list[tuple[str, ...]] = []

    async def fake_run(args: argparse.Namespace, config: UplinkConfig) -> int:
        del config
        seen.append(tuple(args.server))
        return 0

    monkeypatch.setattr(cli, "run_capture", fake_run)
    return seen


def test_commas_and_repeats_make_one_list(captured: list[tuple[str, ...]]) -> None:
    assert cli.main(["--server", "ws://a:1,ws://b:1", "--server", "c:1", "--input", "x.wav"]) == 0
    assert captured == [("ws://a:1/v1/stream", "ws://b:1/v1/stream", "ws://c:1/v1/stream")]


def test_the_environment_gives_the_comma_form_and_the_flag_wins(
        captured: list[tuple[str, ...]], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ECHOPANEL_SERVER", "ws://e1:1,ws://e2:1")
    cli.main(["--input", "x.wav"])
    cli.main(["--server", "ws://flag:1", "--input", "x.wav"])
    assert captured == [("ws://e1:1/v1/stream", "ws://e2:1/v1/stream"),
                        ("ws://flag:1/v1/stream",)]


def test_one_default_server_as_before(captured: list[tuple[str, ...]],
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ECHOPANEL_SERVER", raising=False)
    cli.main(["--input", "x.wav"])
    assert captured == [("ws://127.0.0.1:8765/v1/stream",)]


@pytest.mark.parametrize("main", [
    lambda url: cli.main(["--server", url, "--input", "x.wav"]),
    lambda url: listen_cli.main(["--server", url, "--stream-id", "s"]),
])
@pytest.mark.parametrize("url", ["ws://me:hunter2-secret@h:1", "ws://h:1?token=hunter2-secret",
                                 "ws://a:1,wss://b:1"])
def test_a_bad_list_is_a_usage_error_without_the_secret(
        main: object, url: str, captured: list[tuple[str, ...]],
        capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(url)  # type: ignore[operator]
    assert exit_info.value.code == 2 and captured == []
    err = capsys.readouterr().err
    assert "hunter2" not in err and "server URL" in err


def test_every_tuning_flag_shows_its_default_and_unit() -> None:
    """Issue 15 item 5: --help names each tuning flag's default (per profile) and unit."""
    from capture.cli import build_parser

    actions = {a.option_strings[0]: a.help or "" for a in build_parser()._actions
               if a.option_strings}
    from uplink.config import flat_option_names

    for name in flat_option_names():
        text = actions["--" + name.replace("_", "-")]
        assert "(default: " in text, name
    assert actions["--buffer-seconds"].endswith(
        "(default: live 120 s, development 60 s, production 300 s)")
    assert actions["--frame-ms"].endswith("(default: 20 ms)")
    assert actions["--max-outage"].endswith("(default: none)")
    build_parser().format_help()  # every help string survives argparse's %-formatting


def test_listen_has_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        listen_cli.build_parser().parse_args(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.startswith("echopanel-listen ")

"""Several server URLs: parsing and the rules every list must meet (uplink/config.py)."""

from __future__ import annotations

import pytest

from uplink.config import endpoint_url, listen_servers, redact_url, server_urls, split_servers


def test_commas_and_repeats_give_one_entry_per_server_in_order() -> None:
    assert split_servers("ws://a:1, ws://b:2") == ["ws://a:1", "ws://b:2"]
    assert split_servers(["ws://a:1", "ws://b:2,ws://c:3"]) == ["ws://a:1", "ws://b:2",
                                                                "ws://c:3"]
    assert server_urls("ws://a:1,b:2/v1/stream") == ("ws://a:1/v1/stream",
                                                     "ws://b:2/v1/stream")


def test_one_url_is_what_it_always_was() -> None:
    assert server_urls("ws://h:1") == (endpoint_url("ws://h:1"),) == ("ws://h:1/v1/stream",)
    assert server_urls("wss://h/custom/path") == ("wss://h/custom/path",)


@pytest.mark.parametrize(("servers", "says"), [
    ("ws://a:1,", "empty server URL"),
    ([], "no server URL"),
    ("ws://a:1,wss://b:1", "mix ws:// and wss://"),
    ("ws://a:1/x,ws://b:1", "different paths"),
    ("ws://a:1,a:1/v1/stream", "listed twice"),
    ("http://a:1", "ws:// or wss://"),
])
def test_a_bad_list_is_refused_saying_why(servers: str | list[str], says: str) -> None:
    with pytest.raises(ValueError, match=says):
        server_urls(servers)


@pytest.mark.parametrize("url", [
    "ws://user:s3cret-pass@h:1",
    "ws://h:1/v1/stream?token=s3cret-pass",
    "ws://h:1,ws://u:s3cret-pass@h2:1",
])
def test_credentials_in_a_url_are_refused_without_repeating_them(url: str) -> None:
    with pytest.raises(ValueError) as info:
        server_urls(url)
    assert "s3cret" not in str(info.value)
    assert "--token" in str(info.value)
    with pytest.raises(ValueError) as listen_info:
        listen_servers(url)
    assert "s3cret" not in str(listen_info.value)


def test_redact_url_hides_userinfo_and_query() -> None:
    assert redact_url("ws://u:p@h:1/x?token=t#f") == "ws://***@h:1/x?***"
    assert redact_url("ws://h:1/x") == "ws://h:1/x"


def test_listener_servers_accept_http_and_either_path_form() -> None:
    assert listen_servers("http://a:1/, ws://b:1/v1/stream") == ("ws://a:1", "ws://b:1")
    with pytest.raises(ValueError, match="mix"):
        listen_servers("https://a:1,ws://b:1")

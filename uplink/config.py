"""Uplink configuration: one typed place, with profiles and env/flag overrides.

Profiles are the table in docs/resilience.md, "Profiles"; ``live`` (the default) is tuned for live audio:
a 0.5 s first retry and a 10 s cap, because every second of outage is a second of audio the
ring has to hold and the server has to catch up on.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any
from urllib.parse import urlsplit

from uplink import wire
from uplink.policy import BackoffConfig, BreakerConfig, RetryBudgetConfig


@dataclass(frozen=True, slots=True)
class UplinkConfig:
    buffer_seconds: float = 120.0  # ring capacity (see uplink/ring.py for the byte arithmetic)
    frame_ms: float = 20.0
    window_frames: int = 1024  # max frames sent but not acked (the server may lower it)
    # per AUDIO message during catch-up; 64 KiB crosses even a 400 kbit/s uplink well within
    # ack_timeout, so coalescing never makes a slow link look dead
    max_coalesce_bytes: int = 64 * 1024
    connect_timeout: float = 5.0  # TCP + WebSocket upgrade
    handshake_timeout: float = 5.0  # hello → welcome
    ack_timeout: float = 3.0  # frames in flight and no ack progress → dead link
    heartbeat_interval: float = 5.0  # idle link: ping this often
    heartbeat_timeout: float = 3.0  # … and expect the pong within this
    end_timeout: float = 10.0  # end → ended (the server finalizes the WAV meanwhile)
    backoff: BackoffConfig = field(default_factory=BackoffConfig)
    breaker: BreakerConfig = field(default_factory=BreakerConfig)
    budget: RetryBudgetConfig = field(default_factory=RetryBudgetConfig)

    def __post_init__(self) -> None:
        # built in code (the embedding API, tests) the same rules hold as for flags and
        # variables: ack_timeout=-1 or window_frames=0 is refused here, naming the field
        check_config(self)


_SECTIONS = ("backoff", "breaker", "budget")

# Flat names for flags and ECHOPANEL_UPLINK_* environment variables → (section, field).
_FLAT: dict[str, tuple[str | None, str]] = {
    **{f.name: (None, f.name) for f in fields(UplinkConfig) if f.name not in _SECTIONS},
    "backoff_base": ("backoff", "base"),
    "backoff_cap": ("backoff", "cap"),
    "backoff_multiplier": ("backoff", "multiplier"),
    "backoff_jitter": ("backoff", "jitter"),
    "breaker_failures": ("breaker", "failure_threshold"),
    "breaker_successes": ("breaker", "success_threshold"),
    "breaker_open_timeout": ("breaker", "open_timeout"),
    "restart_grace": ("breaker", "restart_grace"),
    "max_attempts": ("budget", "max_initial_attempts"),
    "max_outage": ("budget", "max_outage"),
}


def _positive(v: float) -> str | None:
    return None if v > 0 else "must be greater than 0"


def _at_least(low: float) -> Callable[[float], str | None]:
    return lambda v: None if v >= low else f"must be at least {low:g}"


def _fraction(v: float) -> str | None:
    return None if 0 <= v <= 1 else "must be between 0 and 1"


# What each value must satisfy; a value outside is refused naming its flag or variable.
_RULES: dict[str, Callable[[float], str | None]] = {
    "buffer_seconds": _positive,
    "frame_ms": _positive,
    "window_frames": _at_least(1),
    "max_coalesce_bytes": _at_least(1024),
    "connect_timeout": _positive,
    "handshake_timeout": _positive,
    "ack_timeout": _positive,
    "heartbeat_interval": _positive,
    "heartbeat_timeout": _positive,
    "end_timeout": _positive,
    "backoff_base": _positive,
    "backoff_cap": _positive,
    "backoff_multiplier": _at_least(1),
    "backoff_jitter": _fraction,
    "breaker_failures": _at_least(1),
    "breaker_successes": _at_least(1),
    "breaker_open_timeout": _positive,
    "restart_grace": _at_least(0),
    "max_attempts": _at_least(0),  # 0 = never give up
    "max_outage": _positive,  # or none/never/inf: never give up
}


# What each flat option means and its unit, for --help (capture/cli.py); option_help adds the
# default of every profile, read from PROFILES, so help and behaviour cannot disagree.
_HELP: dict[str, tuple[str, str]] = {
    "buffer_seconds": ("audio the ring holds while the link is down (uplink/ring.py)", "s"),
    "frame_ms": ("audio per frame", "ms"),
    "window_frames": ("frames sent but not yet acked (the server may lower it)", "frames"),
    "max_coalesce_bytes": ("largest AUDIO message while catching up", "bytes"),
    "connect_timeout": ("TCP + TLS + WebSocket upgrade", "s"),
    "handshake_timeout": ("hello → welcome", "s"),
    "ack_timeout": ("frames in flight and no ack progress this long: the link is dead", "s"),
    "heartbeat_interval": ("ping an idle link this often", "s"),
    "heartbeat_timeout": ("... and expect the pong within", "s"),
    "end_timeout": ("end → ended (the server finalizes meanwhile)", "s"),
    "backoff_base": ("first retry's ceiling (full jitter below it)", "s"),
    "backoff_cap": ("largest retry delay", "s"),
    "backoff_multiplier": ("the ceiling grows by this per failed attempt", "×"),
    "backoff_jitter": ("1 = full jitter, 0 = none", ""),
    "breaker_failures": ("failed attempts (rounds of all servers) that open the breaker",
                         "attempts"),
    "breaker_successes": ("healthy handshakes that close it again", "handshakes"),
    "breaker_open_timeout": ("the breaker stays open this long before one probe", "s"),
    "restart_grace": ("after a healthy link is lost, refusals this long count as a restart, "
                      "not as failures (docs/resilience.md)", "s"),
    "max_attempts": ("failed rounds before the first handshake before giving up (0: never)",
                     "attempts"),
    "max_outage": ("seconds an established stream may stay down before giving up "
                   "(none: never)", "s"),
}


def option_default(name: str, profile: str) -> Any:
    section, attr = _FLAT[name]
    config = PROFILES[profile]
    return getattr(config if section is None else getattr(config, section), attr)


def option_help(name: str) -> str:
    """`meaning (unit; default: live X, development Y, production Z)` for --help."""
    meaning, unit = _HELP[name]

    def show(value: Any) -> str:
        if value is None:
            return "none"
        text = f"{value:g}" if isinstance(value, float) else str(value)
        return f"{text} {unit}".rstrip() if unit and unit != "×" else text + unit

    defaults = {p: show(option_default(name, p)) for p in PROFILES}
    if len(set(defaults.values())) == 1:
        default = next(iter(defaults.values()))
    else:
        default = ", ".join(f"{p} {v}" for p, v in defaults.items())
    return f"{meaning} (default: {default})".replace("%", "%%")


def check_config(config: UplinkConfig) -> None:
    """Raise ValueError naming the first field that breaks its rule (`_RULES`)."""
    for name, (section, attr) in _FLAT.items():
        target: Any = config if section is None else getattr(config, section)
        value = getattr(target, attr)
        if value is None:  # max_outage: never give up
            continue
        problem = _RULES[name](value)
        if problem is not None:
            where = attr if section is None else f"{section}.{attr}"
            raise ValueError(f"UplinkConfig.{where} {problem} (got {value!r})")


PROFILES: dict[str, UplinkConfig] = {
    # a short open timeout: a breaker that holds a live stream off for 30 s costs 30 s of
    # buffer; 10 s matches the backoff cap
    "live": UplinkConfig(breaker=BreakerConfig(open_timeout=10.0)),
    # docs/resilience.md "Profiles", development column
    "development": UplinkConfig(
        buffer_seconds=60.0,
        heartbeat_interval=10.0,
        heartbeat_timeout=5.0,
        backoff=BackoffConfig(base=1.0, cap=10.0),
        breaker=BreakerConfig(failure_threshold=3),
        budget=RetryBudgetConfig(max_initial_attempts=5),
    ),
    # docs/resilience.md "Profiles", production column (ack_timeout stays short: while audio flows the
    # ack stream, not the 30 s heartbeat, is what detects a dead link)
    "production": UplinkConfig(
        buffer_seconds=300.0,
        heartbeat_interval=30.0,
        heartbeat_timeout=10.0,
        ack_timeout=5.0,
        backoff=BackoffConfig(base=1.0, cap=60.0),
        # a production server restarts with more streams to recover: a longer grace
        breaker=BreakerConfig(failure_threshold=5, restart_grace=30.0),
        budget=RetryBudgetConfig(max_initial_attempts=15),
    ),
}


# -- server URLs (docs/resilience.md, "Several servers") ---------------------------------

Servers = str | Sequence[str]


def split_servers(server: Servers) -> list[str]:
    """`"ws://A,ws://B"`, `["ws://A", "ws://B,ws://C"]` → one entry per server, in order.

    The comma form is what ECHOPANEL_SERVER and one --server take; a sequence is what
    repeated --server flags and the Python API give. Empty entries are refused.
    """
    parts = [server] if isinstance(server, str) else list(server)
    if not parts:
        raise ValueError("no server URL given")
    entries: list[str] = []
    for part in parts:
        if not isinstance(part, str):
            raise ValueError(f"a server URL is a string, not {type(part).__name__}")
        for entry in part.split(","):
            entry = entry.strip()
            if not entry:
                raise ValueError(f"empty server URL in {redact_url(part)!r} (a stray comma?)")
            entries.append(entry)
    return entries


def redact_url(url: str) -> str:
    """The URL with any userinfo and query replaced by `***`: safe for messages and logs."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    rest, qmark, _ = rest.partition("#")[0].partition("?")
    authority, slash, path = rest.partition("/")
    if "@" in authority:
        authority = "***@" + authority.rsplit("@", 1)[1]
    return f"{scheme}{sep}{authority}{slash}{path}" + ("?***" if qmark else "")


def _refuse_secrets(url: str) -> None:
    """A credential in a URL would end up in status lines, logs and process listings: the
    token goes in a header (--token), never in the URL. The message shows no secret."""
    if "@" in url.partition("://")[2].partition("/")[0]:
        raise ValueError(f"server URL {redact_url(url)} carries credentials (user:password@): "
                         "pass the token with --token / ECHOPANEL_UPLINK_TOKEN (token=) instead")
    if "?" in url or "#" in url:
        raise ValueError(f"server URL {redact_url(url)} has a query or fragment: server URLs "
                         "take none (a token goes in --token / token=)")


def endpoint_url(server: str) -> str:
    """`ws://host:port` gets the protocol's path; a URL with a path is used as given."""
    _refuse_secrets(server)
    scheme, sep, rest = server.partition("://")
    if not sep:
        scheme, rest = "ws", server
    if scheme not in ("ws", "wss"):
        raise ValueError(f"server URL must start with ws:// or wss://, not {scheme}://")
    host, slash, path = rest.partition("/")
    if not host:
        raise ValueError(f"server URL {server!r} has no host")
    if not slash or not path:
        return f"{scheme}://{host}{wire.ENDPOINT_PATH}"
    return f"{scheme}://{host}/{path}"


def _same_scheme_and_path(urls: Sequence[str]) -> None:
    """Every server of a list is a node of the same service: the same scheme (a token must
    never go in clear to one node and over TLS to another) and the same path; and each one
    once (a duplicate would get two turns per round)."""
    first = urlsplit(urls[0])
    seen: set[str] = set()
    for url in urls:
        parts = urlsplit(url)
        if parts.scheme != first.scheme:
            raise ValueError(f"server URLs mix {first.scheme}:// and {parts.scheme}:// "
                             f"({urls[0]}, {url}): all servers use the same scheme")
        if parts.path != first.path:
            raise ValueError(f"server URLs have different paths ({urls[0]}, {url}): all "
                             "servers use the same path")
        if url in seen:
            raise ValueError(f"server URL {url} is listed twice")
        seen.add(url)


def server_urls(server: Servers) -> tuple[str, ...]:
    """The uplink's endpoint URLs, in the order given, checked (ValueError says why)."""
    urls = tuple(endpoint_url(entry) for entry in split_servers(server))
    _same_scheme_and_path(urls)
    return urls


def listen_servers(server: Servers) -> tuple[str, ...]:
    """Listener base URLs (ws://, wss://, http:// or https://, any path prefix), checked like
    the uplink's: no credentials, one scheme (http counts as ws), one path, no duplicates."""
    urls: list[str] = []
    for entry in split_servers(server):
        _refuse_secrets(entry)
        parts = urlsplit(entry if "://" in entry else f"ws://{entry}")
        scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
        if scheme not in ("ws", "wss") or not parts.netloc:
            raise ValueError(f"server URL {entry!r} must be ws://HOST:PORT (or wss://, "
                             "http://, https://)")
        path = parts.path.rstrip("/").removesuffix(wire.ENDPOINT_PATH)  # either form
        urls.append(f"{scheme}://{parts.netloc}{path}")
    _same_scheme_and_path(urls)
    return tuple(urls)


def flat_option_names() -> list[str]:
    return list(_FLAT)


def flag_name(name: str) -> str:
    return f"--{name.replace('_', '-')}"


def env_name(name: str) -> str:
    return f"ECHOPANEL_UPLINK_{name.upper()}"


def build_config(
    profile: str = "live",
    overrides: dict[str, Any] | None = None,
    environ: dict[str, str] | None = None,
) -> UplinkConfig:
    """Profile, then ECHOPANEL_UPLINK_<NAME> environment variables, then explicit overrides.

    The UPLINK_ prefix keeps the client's settings apart from the server's ECHOPANEL_<NAME>
    (both have e.g. a handshake timeout, with different meanings).
    """
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r} (choose from {', '.join(PROFILES)})")
    config = PROFILES[profile]
    env = os.environ if environ is None else environ
    merged: dict[str, tuple[Any, str]] = {}  # name → (value, where it came from)
    for name in _FLAT:
        raw = env.get(env_name(name))
        if raw is not None and raw != "":
            merged[name] = (raw, env_name(name))
    for name, value in (overrides or {}).items():
        if name not in _FLAT:
            raise ValueError(f"unknown uplink option {name!r}")
        if value is not None:
            merged[name] = (value, flag_name(name))
    for name, (value, source) in merged.items():
        config = _set(config, name, value, source)
    return config


def _set(config: UplinkConfig, name: str, value: Any, source: str) -> UplinkConfig:
    """Convert and check one value; errors name the flag or variable it came from."""
    section, attr = _FLAT[name]
    target: Any = config if section is None else getattr(config, section)
    current = getattr(target, attr)
    integer = isinstance(current, int) and not isinstance(current, bool)
    if isinstance(value, str) and value.strip().lower() in ("none", "never", "inf") and (
        attr == "max_outage"
    ):
        value = None
    elif isinstance(value, str | int | float) and not isinstance(value, bool):
        try:
            value = int(value) if integer else float(value)
        except ValueError:
            kind = "a whole number" if integer else "a number"
            raise ValueError(f"{source}: {value!r} is not {kind}") from None
        if not math.isfinite(value):
            raise ValueError(f"{source}: {value!r} must be a finite number")
        problem = _RULES[name](value)
        if problem is not None:
            raise ValueError(f"{source} {problem} (got {value:g})")
    else:
        raise ValueError(f"{source}: {value!r} is not a number")
    updated = replace(target, **{attr: value})
    return updated if section is None else replace(config, **{section: updated})

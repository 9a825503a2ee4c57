"""Server configuration: one typed dataclass, two profiles, overridable by env and CLI.

Precedence, lowest first: dataclass defaults < profile < `ECHOPANEL_<NAME>` env vars < CLI
flags. The limits announced in `welcome` come from here (docs/protocol.md §2, §5).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from uplink.wire import DEFAULT_MAX_MESSAGE_BYTES, HEADER_SIZE

ENV_PREFIX = "ECHOPANEL_"

# Only what differs from the dataclass defaults (which are the production values, §5).
PROFILES: dict[str, dict[str, Any]] = {
    "development": {"session_timeout": 60.0},
    "production": {"session_timeout": 300.0},
}
DEFAULT_PROFILE = "production"


class ConfigError(ValueError):
    """A configuration value is invalid; the message names it."""


@dataclass(frozen=True, slots=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8765
    data_dir: Path = field(default_factory=lambda: Path("data"))
    handshake_timeout: float = 10.0
    idle_timeout: float = 15.0
    session_timeout: float = 300.0
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    max_inflight_frames: int = 1024
    max_frame_seconds: float = 1.0
    # False skips os.fsync (benchmarks only): acks then no longer mean durable (§4).
    fsync: bool = True
    profile: str = DEFAULT_PROFILE
    log_level: str = "info"

    def __post_init__(self) -> None:
        if self.profile not in PROFILES:
            raise ConfigError(f"profile must be one of {sorted(PROFILES)}, not {self.profile!r}")
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"port {self.port} outside 0..65535")
        for name in ("handshake_timeout", "idle_timeout", "session_timeout", "max_frame_seconds"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be positive")
        if self.max_message_bytes <= HEADER_SIZE:
            raise ConfigError(f"max_message_bytes must exceed the {HEADER_SIZE}-byte item header")
        if self.max_inflight_frames < 1:
            raise ConfigError("max_inflight_frames must be at least 1")
        object.__setattr__(self, "data_dir", Path(self.data_dir))


_HELP = {
    "host": "interface to listen on (default 127.0.0.1)",
    "port": "TCP port; 0 picks a free one (default 8765)",
    "data_dir": "where streams are stored (default ./data)",
    "handshake_timeout": "seconds to wait for hello before closing with 4408 (default 10)",
    "idle_timeout": "seconds of silence before closing with 4408 (default 15)",
    "session_timeout": "seconds a disconnected stream stays resumable (production 300, "
    "development 60)",
    "max_message_bytes": "largest binary message accepted; larger ones close with 1009",
    "max_inflight_frames": "client window announced in welcome (default 1024)",
    "max_frame_seconds": "longest frame_samples a hello may announce (default 1.0 s)",
    "fsync": "fsync before acking (default on; off is for benchmarks only)",
    "profile": "preset of defaults (default production)",
    "log_level": "debug, info, warning or error (default info)",
}


def _parse_bool(text: str) -> bool:
    low = text.strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"not a boolean: {text!r}")


def _converter(name: str) -> Any:
    """The parser for a field, from the type of its default (keeps the dataclass the only list)."""
    sample = getattr(ServerConfig(), name)
    if isinstance(sample, bool):
        return _parse_bool
    if isinstance(sample, Path):
        return Path
    return type(sample)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="echopanel-ingest",
        description="echopanel ingest server: durable WebSocket audio ingest (protocol v1).",
        epilog=f"Every option can also be set by an environment variable {ENV_PREFIX}<NAME>, "
        f"e.g. {ENV_PREFIX}SESSION_TIMEOUT=120. Command-line flags win.",
    )
    for f in fields(ServerConfig):
        flag = "--" + f.name.replace("_", "-")
        if f.name == "profile":
            parser.add_argument(flag, choices=sorted(PROFILES), default=None, help=_HELP[f.name])
        elif f.name == "fsync":
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None,
                                help=_HELP[f.name])
        else:
            parser.add_argument(flag, type=_converter(f.name), default=None, help=_HELP[f.name],
                                metavar=f.name.upper())
    return parser


def load_config(
    argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None
) -> ServerConfig:
    """Build the config from the profile, the environment and the command line."""
    env = os.environ if environ is None else environ
    ns = build_parser().parse_args(argv)
    profile = ns.profile or env.get(ENV_PREFIX + "PROFILE") or DEFAULT_PROFILE
    if profile not in PROFILES:
        raise ConfigError(f"profile must be one of {sorted(PROFILES)}, not {profile!r}")
    values: dict[str, Any] = dict(PROFILES[profile])
    for f in fields(ServerConfig):
        if f.name == "profile":
            continue
        raw = env.get(ENV_PREFIX + f.name.upper())
        if raw is not None:
            try:
                values[f.name] = _converter(f.name)(raw)
            except ValueError as e:
                raise ConfigError(f"{ENV_PREFIX}{f.name.upper()}: {e}") from e
        cli = getattr(ns, f.name)
        if cli is not None:
            values[f.name] = cli
    return ServerConfig(profile=profile, **values)

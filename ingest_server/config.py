"""Server configuration: one typed dataclass, two profiles, overridable by env and CLI.

Precedence, lowest first: dataclass defaults < profile < `ECHOPANEL_<NAME>` env vars < CLI
flags. The limits announced in `welcome` come from here (docs/protocol.md §2, §5); every
limit and its default is listed in docs/operations.md.

Tokens are the exception to the one-flag-per-field rule: `--token` is repeatable, and
`--token-file FILE` adds one token per line; without either flag, `ECHOPANEL_TOKEN`
(comma-separated) and `ECHOPANEL_TOKEN_FILE` are used. Tokens never appear in `repr()`.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from uplink.wire import DEFAULT_MAX_MESSAGE_BYTES, HEADER_SIZE

from .auth import TokenError, read_token_file, split_tokens, validate_token

ENV_PREFIX = "ECHOPANEL_"
LOG_FORMATS = ("text", "json")
SYNC_MODES = ("auto", "syncfs", "fsync")  # auto: syncfs where the platform has it (commit.py)

# Only what differs from the dataclass defaults (which are the production values, §5).
PROFILES: dict[str, dict[str, Any]] = {
    "development": {"session_timeout": 60.0, "replicas": 1, "min_replicas": 1},
    "production": {"session_timeout": 300.0, "replicas": 3, "min_replicas": 3},
}
STORE_SCHEMES = ("nats://", "tls://")  # --store: a NATS server list (docs/scale-out.md)
WEBHOOK_SCHEMES = ("http", "https")
MIN_WEBHOOK_SECRET = 16  # characters, like a token: an HMAC key must not be guessable
DEFAULT_PROFILE = "production"


class ConfigError(ValueError):
    """A configuration value is invalid; the message names it."""


@dataclass(frozen=True, slots=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8765
    data_dir: Path = field(default_factory=lambda: Path("data"))
    # Bearer tokens; empty: authentication off (allowed for local use, warned about loudly).
    tokens: tuple[str, ...] = field(default=(), repr=False)
    handshake_timeout: float = 10.0
    idle_timeout: float = 15.0
    session_timeout: float = 300.0
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    max_inflight_frames: int = 1024
    max_frame_seconds: float = 1.0
    max_connections: int = 1024
    max_connections_per_token: int = 256
    max_streams: int = 1000  # open streams (connected or resumable), each holds a journal fd
    max_stream_seconds: float = 86400.0  # also capped by what one WAV file can hold
    max_message_rate: float = 1000.0  # messages per second per connection, sustained
    message_burst: int = 2000  # ... and in a burst
    # Gap records one stream may hold: each is kept in memory, in meta.json and in every
    # details response, so a client sending tiny gaps must not grow them without end.
    max_gaps: int = 10000
    retention_days: float = 0.0  # 0: keep finalized streams forever
    # a live listener whose send is blocked this long is closed with 4429 (protocol §11.5)
    listener_stall_timeout: float = 10.0
    # Connection-history entries (connected / disconnected intervals, replays) kept per
    # stream for the web view's timeline; the oldest go first (docs/ui.md).
    history_limit: int = 500
    # -- storage backend (docs/scale-out.md). Empty: the local journal under data_dir.
    store: str = ""
    replicas: int = 3  # replicas of the JetStream audio stream when this server creates it
    min_replicas: int = 3  # refuse to start when the audio stream has fewer (§ "Durability")
    lease_seconds: float = 10.0  # a node's ownership of a stream lapses this long unrenewed
    node_name: str = ""  # this node in leases and logs; empty: HOST:PORT
    nats_creds: str = ""  # NATS credentials file (.creds); empty: none
    nats_token: str = field(default="", repr=False)  # NATS auth token; empty: none
    # -- webhooks (docs/webhooks.md): POST stream events to each URL, signed with the secret
    webhooks: tuple[str, ...] = ()
    webhook_secret: str = field(default="", repr=False)
    webhook_outbox_limit: int = 10000  # events kept undelivered (on disk) before the oldest go
    public_metrics: bool = False  # True: /metrics needs no token
    # False skips os.fsync (benchmarks only): acks then no longer mean durable (§4).
    fsync: bool = True
    sync_mode: str = "auto"
    profile: str = DEFAULT_PROFILE
    log_level: str = "info"
    log_format: str = "text"

    def __post_init__(self) -> None:
        if self.profile not in PROFILES:
            raise ConfigError(f"profile must be one of {sorted(PROFILES)}, not {self.profile!r}")
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"port {self.port} outside 0..65535")
        for name in ("handshake_timeout", "idle_timeout", "session_timeout", "max_frame_seconds",
                     "max_stream_seconds", "max_message_rate", "listener_stall_timeout",
                     "lease_seconds"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be positive")
        for name in ("max_inflight_frames", "max_connections", "max_connections_per_token",
                     "max_streams", "message_burst", "max_gaps", "history_limit", "replicas",
                     "min_replicas", "webhook_outbox_limit"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1")
        if self.max_message_bytes <= HEADER_SIZE:
            raise ConfigError(f"max_message_bytes must exceed the {HEADER_SIZE}-byte item header")
        if not self.retention_days >= 0:
            raise ConfigError("retention_days must be 0 (off) or positive")
        if self.sync_mode not in SYNC_MODES:
            raise ConfigError(f"sync_mode must be one of {list(SYNC_MODES)}")
        if self.log_format not in LOG_FORMATS:
            raise ConfigError(f"log_format must be one of {list(LOG_FORMATS)}")
        tokens = tuple(self.tokens)
        for i, token in enumerate(tokens):
            try:
                validate_token(token)
            except TokenError as e:
                raise ConfigError(f"token #{i + 1}: {e}") from None
        object.__setattr__(self, "tokens", tokens)
        object.__setattr__(self, "data_dir", Path(self.data_dir))
        if self.store and not (self.store.startswith(STORE_SCHEMES)
                               and self.store.split("://", 1)[1].strip(",")):
            raise ConfigError("store must be empty (the local journal) or "
                              "nats://HOST:PORT[,HOST:PORT...]")
        webhooks = tuple(self.webhooks)
        for url in webhooks:
            check_webhook_url(url)
        object.__setattr__(self, "webhooks", webhooks)
        if self.webhook_secret and len(self.webhook_secret) < MIN_WEBHOOK_SECRET:
            raise ConfigError(f"webhook_secret must be at least {MIN_WEBHOOK_SECRET} characters")

    @property
    def secrets(self) -> tuple[str, ...]:
        """Every credential this config holds: redacted from each log line (logs.py)."""
        return tuple(s for s in (*self.tokens, self.webhook_secret, self.nats_token) if s)


def check_webhook_url(url: str) -> None:
    """A webhook is an absolute http(s) URL with a host; the message never echoes the URL's
    query or credentials (it may carry a secret)."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in WEBHOOK_SCHEMES or not parts.hostname:
        raise ConfigError(f"webhook {parts.scheme or '?'}://{parts.hostname or '?'}...: "
                          "must be an absolute http:// or https:// URL")


# What each flag means and the unit of its value; `--help` appends the default from the
# dataclass (or the profiles), so the two can never disagree.
_HELP: dict[str, tuple[str, str]] = {
    "host": ("interface to listen on", ""),
    "port": ("TCP port; 0 picks a free one", ""),
    "data_dir": ("where streams are stored (one server per data dir: DATA/.lock)", ""),
    "handshake_timeout": ("seconds to wait for hello before closing with 4408", " s"),
    "idle_timeout": ("seconds of silence before closing with 4408", " s"),
    "session_timeout": ("seconds a disconnected stream stays resumable", " s"),
    "max_message_bytes": ("largest binary message accepted; larger ones close with 1009",
                          " bytes"),
    "max_inflight_frames": ("client window announced in welcome", " frames"),
    "max_frame_seconds": ("longest frame_samples a hello may announce", " s"),
    "max_connections": ("WebSocket connections at once; more get HTTP 503", ""),
    "max_connections_per_token": ("connections at once per token; more get HTTP 429", ""),
    "max_streams": ("open streams (connected or resumable); a new one past it closes with "
                    "1013", ""),
    "max_stream_seconds": ("longest stream; audio past it closes with 1008", " s"),
    "max_message_rate": ("messages per second per connection, sustained (control frames "
                         "and fragments count); more close with 1008", " messages/s"),
    "message_burst": ("messages a connection may send at once above the rate", " messages"),
    "max_gaps": ("gap records one stream may hold; a gap past it closes with 1008",
                 " gaps"),
    "retention_days": ("delete finalized streams this many days after they ended "
                       "(0: never)", " days"),
    "listener_stall_timeout": ("seconds a live listener may stop reading before it is closed "
                               "with 4429", " s"),
    "history_limit": ("connection-history entries kept per stream for the /ui timeline",
                      " entries"),
    "store": ("where audio is stored: empty for the local journal in the data dir, or "
              "nats://HOST:PORT[,HOST:PORT...] for NATS JetStream (docs/scale-out.md)", ""),
    "replicas": ("replicas of the JetStream audio stream when this server creates it", ""),
    "min_replicas": ("refuse to start when the JetStream audio stream has fewer replicas", ""),
    "lease_seconds": ("how long a node's ownership of a stream lasts unrenewed (JetStream)",
                      " s"),
    "node_name": ("this node's name in leases and logs (JetStream)", ""),
    "nats_creds": ("NATS credentials file (.creds) for the JetStream store", ""),
    "nats_token": ("NATS auth token for the JetStream store (prefer ECHOPANEL_NATS_TOKEN)", ""),
    "webhooks": ("POST stream events to this URL (repeatable; docs/webhooks.md)", ""),
    "webhook_secret": ("HMAC-SHA256 key signing webhook bodies (at least 16 characters; "
                       "prefer ECHOPANEL_WEBHOOK_SECRET)", ""),
    "webhook_outbox_limit": ("webhook events kept undelivered before the oldest are dropped",
                             " events"),
    "public_metrics": ("serve /metrics without a token", ""),
    "fsync": ("fsync before acking (off is for benchmarks only)", ""),
    "sync_mode": ("how acked audio is made durable: syncfs (one flush for all streams), "
                  "fsync (one per stream) or auto (syncfs on Linux)", ""),
    "profile": ("preset of defaults", ""),
    "log_level": ("debug, info, warning or error", ""),
    "log_format": ("text or json (one object per line)", ""),
}


def _default_text(name: str) -> str:
    """The default as --help shows it, with its unit; per profile where they differ."""
    _, unit = _HELP[name]
    default = getattr(ServerConfig(), name)
    per_profile = {p: v[name] for p, v in PROFILES.items() if name in v}
    if per_profile:
        return ", ".join(f"{p} {v:g}{unit}" for p, v in per_profile.items())
    if isinstance(default, bool):
        return "on" if default else "off"
    if isinstance(default, float):
        return f"{default:g}{unit}"
    if isinstance(default, Path) and not default.is_absolute():
        return f"./{default}"
    if name == "store" and not default:
        return "the local journal"
    if name == "node_name" and not default:
        return "HOST:PORT"
    if default in ("", ()):
        return "none"
    return f"{default}{unit}"


def _help(name: str) -> str:
    # argparse expands %-formats in help strings.
    return f"{_HELP[name][0]} (default: {_default_text(name)})".replace("%", "%%")


TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("0", "false", "no", "off")


def parse_bool(text: str) -> bool:
    """The one boolean syntax of the server's options (flags and ECHOPANEL_* variables):
    surrounding whitespace ignored, case-insensitive, 1/true/yes/on or 0/false/no/off.
    Anything else (the empty string too) is a ValueError; load_config prefixes it with the
    variable's name. The client (uplink/config.py) follows the same rules."""
    low = text.strip().lower()
    if low in TRUE_WORDS:
        return True
    if low in FALSE_WORDS:
        return False
    raise ValueError(f"not a boolean: {text!r} (use one of {'/'.join(TRUE_WORDS)} or "
                     f"{'/'.join(FALSE_WORDS)})")


def _converter(name: str) -> Any:
    """The parser for a field, from the type of its default (keeps the dataclass the only list)."""
    sample = getattr(ServerConfig(), name)
    if isinstance(sample, bool):
        return parse_bool
    if isinstance(sample, Path):
        return Path
    return type(sample)


def package_version() -> str:
    try:
        return importlib.metadata.version("echopanel-uplink")
    except importlib.metadata.PackageNotFoundError:
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="echopanel-ingest",
        description="echopanel ingest server: durable WebSocket audio ingest (protocol v1).",
        epilog=f"Every option can also be set by an environment variable {ENV_PREFIX}<NAME>, "
        f"e.g. {ENV_PREFIX}SESSION_TIMEOUT=120. Command-line flags win. Tokens: "
        f"{ENV_PREFIX}TOKEN (comma-separated) and {ENV_PREFIX}TOKEN_FILE, used only when "
        "neither --token nor --token-file is given. See docs/operations.md.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")
    parser.add_argument("--token", action="append", default=None, metavar="TOKEN",
                        help="accept this bearer token (repeatable; at least 16 characters) "
                        "(default: none: authentication off)")
    parser.add_argument("--token-file", action="append", default=None, type=Path,
                        metavar="FILE", help="accept every token in FILE (one per line, "
                        "'#' comments); repeatable (default: none)")
    for f in fields(ServerConfig):
        flag = "--" + f.name.replace("_", "-")
        if f.name == "tokens":
            continue
        if f.name == "webhooks":
            parser.add_argument("--webhook", dest="webhooks", action="append", default=None,
                                metavar="URL", help=_help(f.name))
            continue
        if f.name == "profile":
            parser.add_argument(flag, choices=sorted(PROFILES), default=None, help=_help(f.name))
        elif f.name == "log_format":
            parser.add_argument(flag, choices=LOG_FORMATS, default=None, help=_help(f.name))
        elif f.name == "sync_mode":
            parser.add_argument(flag, choices=SYNC_MODES, default=None, help=_help(f.name))
        elif f.name in ("fsync", "public_metrics"):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None,
                                help=_help(f.name))
        else:
            parser.add_argument(flag, type=_converter(f.name), default=None, help=_help(f.name),
                                metavar=f.name.upper())
    return parser


def _load_tokens(cli_tokens: list[str] | None, cli_files: list[Path] | None,
                 env: Mapping[str, str]) -> tuple[str, ...]:
    """Flags win as a whole: with any --token/--token-file the environment is not read."""
    try:
        if cli_tokens or cli_files:
            tokens = list(cli_tokens or [])
            for path in cli_files or []:
                tokens += read_token_file(path)
        else:
            tokens = split_tokens(env.get(ENV_PREFIX + "TOKEN", ""))
            file_name = env.get(ENV_PREFIX + "TOKEN_FILE")
            if file_name:
                tokens += read_token_file(Path(file_name))
    except TokenError as e:
        raise ConfigError(str(e)) from None
    return tuple(dict.fromkeys(tokens))  # duplicates removed, order kept


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
        if f.name in ("profile", "tokens"):
            continue
        raw = env.get(ENV_PREFIX + f.name.upper())
        if f.name == "webhooks":  # ECHOPANEL_WEBHOOKS: comma-separated
            raw = env.get(ENV_PREFIX + "WEBHOOKS", env.get(ENV_PREFIX + "WEBHOOK"))
            if raw is not None:
                values[f.name] = tuple(u.strip() for u in raw.split(",") if u.strip())
            if ns.webhooks:
                values[f.name] = tuple(ns.webhooks)
            continue
        if raw is not None:
            try:
                values[f.name] = _converter(f.name)(raw)
            except ValueError as e:
                raise ConfigError(f"{ENV_PREFIX}{f.name.upper()}: {e}") from e
        cli = getattr(ns, f.name)
        if cli is not None:
            values[f.name] = cli
    values["tokens"] = _load_tokens(ns.token, ns.token_file, env)
    return ServerConfig(profile=profile, **values)

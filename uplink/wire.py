"""Protocol v1 wire format: binary item messages, JSON control messages, close codes.

Pure functions and dataclasses, no I/O. This module and uplink/audio.py are the contract of
both ends: the uplink and the ingest server both use them (the server imports nothing else
from uplink/), so the two sides cannot drift apart. The normative description is
docs/protocol.md; section numbers below refer to it.
"""

from __future__ import annotations

import json
import math
import re
import struct
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

from uplink.audio import AudioFormat, AudioFormatError

PROTOCOL_VERSION = 1
ENDPOINT_PATH = "/v1/stream"

# §3 binary item header: kind u8, flags u8, count u16, epoch u32, seq u64, sample_pos u64.
HEADER = struct.Struct("<BBHIQQ")
HEADER_SIZE = HEADER.size  # 24 bytes
GAP_PAYLOAD = struct.Struct("<Q")  # end_sample
MAX_COUNT = 0xFFFF
MAX_U64 = (1 << 64) - 1

KIND_AUDIO = 0x01
KIND_GAP = 0x02

# §5 default limits the server announces in `welcome`.
DEFAULT_MAX_MESSAGE_BYTES = 1 << 20
MAX_CONTROL_BYTES = 4096
STREAM_ID_MAX_LEN = 128
# §1: what a stream id may be. It names a directory on the server, so it is checked on both
# ends: the capture refuses a bad id before connecting, the server answers 4400.
STREAM_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
_STREAM_ID_RE = re.compile(STREAM_ID_PATTERN)
# §2 hello labels: a few short key/values stored with the stream and shown by the REST API.
MAX_LABELS = 16
LABEL_KEY_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
_LABEL_KEY_RE = re.compile(LABEL_KEY_PATTERN)
MAX_LABEL_VALUE = 256
# §6 `ended` lists at most this many gaps (the control message stays under 4 KiB); `gaps`
# always holds the full count and `gap_samples` the full total.
MAX_ENDED_GAPS = 64
# JSON numbers we accept: finite, and integers no larger than a double holds exactly (§5).
MAX_JSON_INT = 1 << 53
MAX_WALL_TIME = 253402300799.0  # 9999-12-31T23:59:59Z, the last instant ISO 8601 can write


def is_valid_stream_id(stream_id: str) -> bool:
    """§1 pattern, ASCII only, and no '..' (harmless in one path component, never worth it)."""
    return (stream_id.isascii() and _STREAM_ID_RE.fullmatch(stream_id) is not None
            and ".." not in stream_id)


class CloseCode(IntEnum):
    """WebSocket close codes used by protocol v1 (§7)."""

    NORMAL = 1000  # stream ended and acked
    GOING_AWAY = 1001  # peer is going away: retry soon
    PROTOCOL_ERROR = 1002  # fatal
    UNSUPPORTED_DATA = 1003  # fatal: unsupported protocol version or audio format
    INVALID_PAYLOAD = 1007  # fatal: malformed message
    POLICY_VIOLATION = 1008  # fatal: auth / ownership / limits policy
    MESSAGE_TOO_BIG = 1009  # fatal
    INTERNAL_ERROR = 1011  # retriable with backoff
    SERVICE_RESTART = 1012  # retriable soon (server restarting)
    TRY_AGAIN_LATER = 1013  # retriable with growing backoff (overload, disk full)
    BAD_HANDSHAKE = 4400  # fatal: hello missing, malformed or inconsistent
    UNKNOWN_STREAM = 4404  # fatal: resume of a stream the server does not know
    HANDSHAKE_TIMEOUT = 4408  # retriable: no hello / nothing received within the deadline
    STREAM_CONFLICT = 4409  # fatal: stream id taken, or wrong resume credential/epoch
    STREAM_FINALIZED = 4410  # fatal: stream already finalized (ended or expired)
    SUPERSEDED = 4411  # fatal for the old connection: a newer connection took the stream over


class Retry(IntEnum):
    """How a client reacts to a close (§7)."""

    DONE = 0
    SOON = 1  # small delay with jitter, backoff not escalated
    BACKOFF = 2  # exponential backoff, counts toward the circuit breaker
    FATAL = 3  # stop, report, keep the buffered audio


RETRY_POLICY: dict[int, Retry] = {
    CloseCode.NORMAL: Retry.DONE,
    CloseCode.GOING_AWAY: Retry.SOON,
    CloseCode.SERVICE_RESTART: Retry.SOON,
    CloseCode.INTERNAL_ERROR: Retry.BACKOFF,
    CloseCode.TRY_AGAIN_LATER: Retry.BACKOFF,
    CloseCode.HANDSHAKE_TIMEOUT: Retry.BACKOFF,
    CloseCode.PROTOCOL_ERROR: Retry.FATAL,
    CloseCode.UNSUPPORTED_DATA: Retry.FATAL,
    CloseCode.INVALID_PAYLOAD: Retry.FATAL,
    CloseCode.POLICY_VIOLATION: Retry.FATAL,
    CloseCode.MESSAGE_TOO_BIG: Retry.FATAL,
    CloseCode.BAD_HANDSHAKE: Retry.FATAL,
    CloseCode.UNKNOWN_STREAM: Retry.FATAL,
    CloseCode.STREAM_CONFLICT: Retry.FATAL,
    CloseCode.STREAM_FINALIZED: Retry.FATAL,
    CloseCode.SUPERSEDED: Retry.FATAL,
}


def retry_for_close(code: int | None) -> Retry:
    """Unknown codes and abnormal closure (1006, no code) are network trouble: back off."""
    if code is None:
        return Retry.BACKOFF
    return RETRY_POLICY.get(code, Retry.BACKOFF)


class WireError(ValueError):
    """A message violates protocol v1; `close_code` says how the receiver closes (§7)."""

    def __init__(self, message: str, close_code: int = CloseCode.INVALID_PAYLOAD) -> None:
        super().__init__(message)
        self.close_code = close_code


# ---------------------------------------------------------------------------------------
# Binary items (§3)


@dataclass(frozen=True, slots=True)
class ItemHeader:
    kind: int
    count: int
    epoch: int
    seq: int
    sample_pos: int


def encode_audio(epoch: int, seq: int, sample_pos: int, count: int, payload: bytes) -> bytes:
    """One AUDIO message: `count` consecutive frames of equal length, concatenated."""
    return HEADER.pack(KIND_AUDIO, 0, count, epoch, seq, sample_pos) + payload


def encode_gap(epoch: int, seq: int, sample_pos: int, count: int, end_sample: int) -> bytes:
    """One GAP message: seqs [seq, seq+count) carry no audio; samples up to end_sample are lost."""
    return HEADER.pack(KIND_GAP, 0, count, epoch, seq, sample_pos) + GAP_PAYLOAD.pack(end_sample)


def decode_header(data: bytes | bytearray | memoryview) -> ItemHeader:
    """Parse and check the fixed header. Raises WireError only."""
    if len(data) < HEADER_SIZE:
        raise WireError(f"binary message of {len(data)} bytes is shorter than the header")
    kind, flags, count, epoch, seq, sample_pos = HEADER.unpack_from(data)
    if kind not in (KIND_AUDIO, KIND_GAP):
        raise WireError(f"unknown item kind 0x{kind:02x}")
    if flags != 0:
        raise WireError(f"reserved flags 0x{flags:02x} must be zero")
    if count == 0:
        raise WireError("item count must be at least 1")
    if seq + count > MAX_U64:
        raise WireError("seq range overflows 64 bits")
    return ItemHeader(kind, count, epoch, seq, sample_pos)


def audio_frame_bytes(header: ItemHeader, payload_len: int, block_align: int) -> int:
    """Bytes per frame of an AUDIO item, checking the payload splits into whole sample frames."""
    frame_bytes, rest = divmod(payload_len, header.count)
    if rest or frame_bytes == 0 or frame_bytes % block_align:
        raise WireError(
            f"payload of {payload_len} bytes is not {header.count} whole frames of "
            f"{block_align}-byte samples"
        )
    return frame_bytes


def decode_gap_end(data: bytes | bytearray | memoryview) -> int:
    if len(data) != HEADER_SIZE + GAP_PAYLOAD.size:
        raise WireError("GAP item must carry exactly one u64 end_sample")
    (end_sample,) = GAP_PAYLOAD.unpack_from(data, HEADER_SIZE)
    return int(end_sample)


# ---------------------------------------------------------------------------------------
# Control messages (§2, §4, §6): UTF-8 JSON objects with a "type" field.


@dataclass(frozen=True, slots=True)
class Resume:
    epoch: int
    credential: str


@dataclass(frozen=True, slots=True)
class Hello:
    stream_id: str
    format: AudioFormat
    frame_samples: int
    resume: Resume | None = None
    protocol: int = PROTOCOL_VERSION
    #: wall-clock time (POSIX seconds, UTC) at which sample 0 was captured (§2, optional)
    wall_time: float | None = None
    #: free-form key/values stored with the stream (§2, optional; at most MAX_LABELS)
    labels: dict[str, str] | None = None


@dataclass(frozen=True, slots=True)
class Welcome:
    stream_id: str
    epoch: int
    credential: str
    next_seq: int
    next_sample: int
    resumed: bool
    finalized: bool
    max_message_bytes: int
    max_inflight_frames: int
    idle_timeout: float
    session_timeout: float
    protocol: int = PROTOCOL_VERSION


@dataclass(frozen=True, slots=True)
class Ack:
    next_seq: int
    next_sample: int


@dataclass(frozen=True, slots=True)
class End:
    next_seq: int
    next_sample: int


@dataclass(frozen=True, slots=True)
class Ended:
    next_seq: int
    next_sample: int
    gaps: int  # how many gaps the stream records
    #: total samples in all gaps (absent from old servers: None)
    gap_samples: int | None = None
    #: (start_sample, end_sample) of the first MAX_ENDED_GAPS gaps, in order (§6)
    gap_list: tuple[tuple[int, int], ...] = ()


@dataclass(frozen=True, slots=True)
class Ping:
    t: float


@dataclass(frozen=True, slots=True)
class Pong:
    t: float


Control = Hello | Welcome | Ack | End | Ended | Ping | Pong


def encode_control(msg: Control) -> str:
    obj: dict[str, Any]
    match msg:
        case Hello():
            obj = {
                "type": "hello",
                "protocol": msg.protocol,
                "stream_id": msg.stream_id,
                "format": msg.format.to_json(),
                "frame_samples": msg.frame_samples,
                "resume": None
                if msg.resume is None
                else {"epoch": msg.resume.epoch, "credential": msg.resume.credential},
            }
            if msg.wall_time is not None:
                obj["wall_time"] = msg.wall_time
            if msg.labels:
                obj["labels"] = dict(msg.labels)
        case Welcome():
            obj = {
                "type": "welcome",
                "protocol": msg.protocol,
                "stream_id": msg.stream_id,
                "epoch": msg.epoch,
                "credential": msg.credential,
                "next_seq": msg.next_seq,
                "next_sample": msg.next_sample,
                "resumed": msg.resumed,
                "finalized": msg.finalized,
                "limits": {
                    "max_message_bytes": msg.max_message_bytes,
                    "max_inflight_frames": msg.max_inflight_frames,
                    "idle_timeout": msg.idle_timeout,
                    "session_timeout": msg.session_timeout,
                },
            }
        case Ack():
            obj = {"type": "ack", "next_seq": msg.next_seq, "next_sample": msg.next_sample}
        case End():
            obj = {"type": "end", "next_seq": msg.next_seq, "next_sample": msg.next_sample}
        case Ended():
            obj = {
                "type": "ended",
                "next_seq": msg.next_seq,
                "next_sample": msg.next_sample,
                "gaps": msg.gaps,
            }
            if msg.gap_samples is not None:
                obj["gap_samples"] = msg.gap_samples
                obj["gap_list"] = [list(g) for g in msg.gap_list[:MAX_ENDED_GAPS]]
        case Ping():
            obj = {"type": "ping", "t": msg.t}
        case Pong():
            obj = {"type": "pong", "t": msg.t}
    return json.dumps(obj, separators=(",", ":"))


def _int(obj: dict[str, Any], key: str, lo: int = 0, hi: int = MAX_U64) -> int:
    v = obj.get(key)
    if type(v) is not int or not (lo <= v <= hi):
        raise WireError(f"{obj.get('type')}.{key} must be an integer in {lo}..{hi}")
    return v


def _num(obj: dict[str, Any], key: str) -> float:
    """A finite number. A 400-digit integer or NaN must be a 1007, never an OverflowError
    escaping the decoder, nor a value echoed back as invalid JSON (§5)."""
    v = obj.get(key)
    if type(v) is int:
        if not -MAX_JSON_INT <= v <= MAX_JSON_INT:
            raise WireError(f"{obj.get('type')}.{key} is out of range")
        return float(v)
    if type(v) is not float or not math.isfinite(v):
        raise WireError(f"{obj.get('type')}.{key} must be a finite number")
    return v


def _reject_constant(name: str) -> Any:
    raise WireError(f"control message contains {name}, which is not JSON")


def _str(obj: dict[str, Any], key: str, max_len: int = 256) -> str:
    v = obj.get(key)
    if not isinstance(v, str) or not (0 < len(v) <= max_len):
        raise WireError(f"{obj.get('type')}.{key} must be a string of 1..{max_len} characters")
    return v


def decode_control(text: str | bytes) -> Control:
    """Parse one control message. Raises WireError only (never KeyError, TypeError...)."""
    # §5 counts bytes: a str of MAX_CONTROL_BYTES characters can be four times as many bytes.
    if len(text) > MAX_CONTROL_BYTES or (
        isinstance(text, str) and len(text.encode("utf-8", "surrogatepass")) > MAX_CONTROL_BYTES
    ):
        raise WireError(f"control message over {MAX_CONTROL_BYTES} bytes", CloseCode.MESSAGE_TOO_BIG)
    try:
        # NaN / Infinity are Python extensions, not JSON: refused where they stand (§5)
        obj = json.loads(text, parse_constant=_reject_constant)
    except WireError:
        raise
    except (ValueError, RecursionError) as e:
        raise WireError(f"control message is not JSON: {e}") from e
    if not isinstance(obj, dict):
        raise WireError("control message must be a JSON object")
    kind = obj.get("type")
    if kind == "hello":
        return _decode_hello(obj)
    if kind == "ack":
        return Ack(_int(obj, "next_seq"), _int(obj, "next_sample"))
    if kind == "end":
        return End(_int(obj, "next_seq"), _int(obj, "next_sample"))
    if kind == "ping":
        return Ping(_num(obj, "t"))
    if kind == "pong":
        return Pong(_num(obj, "t"))
    if kind == "ended":
        return _decode_ended(obj)
    if kind == "welcome":
        return _decode_welcome(obj)
    raise WireError(f"unknown control message type {kind!r}")


def _decode_hello(obj: dict[str, Any]) -> Hello:
    version = obj.get("protocol")
    if type(version) is not int:
        raise WireError("hello.protocol must be an integer", CloseCode.BAD_HANDSHAKE)
    if version != PROTOCOL_VERSION:
        raise WireError(
            f"protocol version {version} not supported (server speaks {PROTOCOL_VERSION})",
            CloseCode.UNSUPPORTED_DATA,
        )
    try:
        fmt = AudioFormat.from_json(obj.get("format"))
    except AudioFormatError as e:
        raise WireError(f"unsupported audio format: {e}", CloseCode.UNSUPPORTED_DATA) from e
    resume_obj = obj.get("resume")
    resume = None
    if resume_obj is not None:
        if not isinstance(resume_obj, dict):
            raise WireError("hello.resume must be an object or null", CloseCode.BAD_HANDSHAKE)
        resume = Resume(_int(resume_obj, "epoch", 1, 0xFFFFFFFF), _str(resume_obj, "credential"))
    wall_time = None
    if obj.get("wall_time") is not None:
        wall_time = _num(obj, "wall_time")
        if not 0 <= wall_time <= MAX_WALL_TIME:
            raise WireError("hello.wall_time must be POSIX seconds between 1970 and 9999",
                            CloseCode.BAD_HANDSHAKE)
    return Hello(
        stream_id=_str(obj, "stream_id", STREAM_ID_MAX_LEN),
        format=fmt,
        frame_samples=_int(obj, "frame_samples", 1, 1 << 20),
        resume=resume,
        protocol=version,
        wall_time=wall_time,
        labels=_labels(obj.get("labels")),
    )


def validate_labels(labels: dict[str, str]) -> None:
    """Raise ValueError saying what is wrong with `labels` (§2); used by both ends."""
    if len(labels) > MAX_LABELS:
        raise ValueError(f"at most {MAX_LABELS} labels")
    for key, value in labels.items():
        if not isinstance(key, str) or _LABEL_KEY_RE.fullmatch(key) is None:
            raise ValueError(f"label key {key!r} must match {LABEL_KEY_PATTERN}")
        if not isinstance(value, str) or len(value) > MAX_LABEL_VALUE:
            raise ValueError(f"label {key!r}: value must be a string of at most "
                             f"{MAX_LABEL_VALUE} characters")


def _labels(raw: object) -> dict[str, str] | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise WireError("hello.labels must be an object", CloseCode.BAD_HANDSHAKE)
    try:
        validate_labels(raw)
    except ValueError as e:
        raise WireError(f"hello.labels: {e}", CloseCode.BAD_HANDSHAKE) from None
    return dict(raw)


def _decode_ended(obj: dict[str, Any]) -> Ended:
    gap_samples = None
    gap_list: list[tuple[int, int]] = []
    if "gap_samples" in obj:
        gap_samples = _int(obj, "gap_samples")
        raw = obj.get("gap_list")
        if not isinstance(raw, list) or len(raw) > MAX_ENDED_GAPS:
            raise WireError(f"ended.gap_list must be a list of at most {MAX_ENDED_GAPS} gaps")
        for item in raw:
            if (not isinstance(item, list) or len(item) != 2
                    or any(type(x) is not int or not 0 <= x <= MAX_U64 for x in item)
                    or item[0] >= item[1]):
                raise WireError("ended.gap_list items must be [start_sample, end_sample]")
            gap_list.append((item[0], item[1]))
    return Ended(_int(obj, "next_seq"), _int(obj, "next_sample"), _int(obj, "gaps"),
                 gap_samples, tuple(gap_list))


def _decode_welcome(obj: dict[str, Any]) -> Welcome:
    limits = obj.get("limits")
    if not isinstance(limits, dict):
        raise WireError("welcome.limits must be an object")
    return Welcome(
        stream_id=_str(obj, "stream_id", STREAM_ID_MAX_LEN),
        epoch=_int(obj, "epoch", 1, 0xFFFFFFFF),
        credential=_str(obj, "credential"),
        next_seq=_int(obj, "next_seq"),
        next_sample=_int(obj, "next_sample"),
        resumed=bool(obj.get("resumed")),
        finalized=bool(obj.get("finalized")),
        max_message_bytes=_int(limits, "max_message_bytes", HEADER_SIZE + 1),
        max_inflight_frames=_int(limits, "max_inflight_frames", 1),
        idle_timeout=_num(limits, "idle_timeout"),
        session_timeout=_num(limits, "session_timeout"),
        protocol=_int(obj, "protocol"),
    )

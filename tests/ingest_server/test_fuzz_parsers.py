"""Property tests of everything that parses client input: whatever arrives, the parsers raise
WireError (which carries the close code) and nothing else, and a refused item writes nothing.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from ingest_server.core import parse_hello
from ingest_server.items import ItemRules
from ingest_server.metrics import Metrics
from ingest_server.storage import Journal
from uplink.wire import (
    HEADER,
    HEADER_SIZE,
    KIND_AUDIO,
    MAX_CONTROL_BYTES,
    CloseCode,
    ItemHeader,
    WireError,
    audio_frame_bytes,
    decode_control,
    decode_gap_end,
    decode_header,
    encode_audio,
)

from .client import FRAME, frames

SETTINGS = settings(max_examples=300, deadline=None)
CLOSE_CODES = {int(c) for c in CloseCode}

u8 = st.integers(0, 0xFF)
u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFFFFFF)
u64 = st.integers(0, (1 << 64) - 1)
small_seq = st.integers(0, 8)


def refused(fn: Any, *args: Any) -> WireError | None:
    """Call fn; WireError is an allowed outcome (returned), anything else fails the test."""
    try:
        fn(*args)
    except WireError as e:
        assert e.close_code in CLOSE_CODES
        assert str(e)
        return e
    return None


@SETTINGS
@given(st.binary(max_size=3 * HEADER_SIZE))
def test_decode_header_raises_only_wire_error(data: bytes) -> None:
    refused(decode_header, data)
    refused(decode_header, memoryview(data))
    refused(decode_gap_end, data)


@SETTINGS
@given(u8, u8, u16, u32, u64, u64)
def test_decode_header_of_any_field_values(kind: int, flags: int, count: int, epoch: int,
                                           seq: int, sample_pos: int) -> None:
    data = HEADER.pack(kind, flags, count, epoch, seq, sample_pos)
    e = refused(decode_header, data)
    valid = kind in (1, 2) and flags == 0 and count >= 1 and seq + count <= (1 << 64) - 1
    assert (e is None) == valid


@SETTINGS
@given(st.integers(1, 0xFFFF), st.integers(0, 1 << 21), st.integers(1, 32))
def test_audio_frame_bytes_raises_only_wire_error(count: int, payload_len: int,
                                                  block_align: int) -> None:
    header = ItemHeader(KIND_AUDIO, count, 1, 0, 0)
    try:
        n = audio_frame_bytes(header, payload_len, block_align)
    except WireError:
        return
    assert n > 0 and n % block_align == 0 and n * count == payload_len


@SETTINGS
@given(st.one_of(st.text(max_size=2 * MAX_CONTROL_BYTES), st.binary(max_size=512)))
def test_decode_control_raises_only_wire_error(text: str | bytes) -> None:
    refused(decode_control, text)
    refused(parse_hello, text)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                 max_size=4),
    max_leaves=12,
)
FIELDS = ["protocol", "stream_id", "format", "frame_samples", "resume", "next_seq",
          "next_sample", "t", "gaps", "epoch", "credential", "limits", "sample_rate",
          "channels", "sample_type"]


@SETTINGS
@given(st.sampled_from(["hello", "ack", "end", "ping", "pong", "ended", "welcome", "x"]),
       st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=8))
def test_control_messages_with_any_field_values(kind: str, fields: dict[str, Any]) -> None:
    text = json.dumps({"type": kind, **fields})
    refused(decode_control, text)


@SETTINGS
@given(st.integers(), st.text(max_size=140), json_values,
       st.dictionaries(st.sampled_from(["sample_rate", "channels", "sample_type"]), json_values),
       st.one_of(st.none(), st.dictionaries(st.sampled_from(["epoch", "credential"]),
                                            json_values)))
def test_hello_with_any_field_values(protocol: int, sid: str, frame_samples: Any,
                                     fmt: dict[str, Any], resume: Any) -> None:
    text = json.dumps({"type": "hello", "protocol": protocol, "stream_id": sid,
                       "format": fmt, "frame_samples": frame_samples, "resume": resume})
    refused(parse_hello, text)


# -- the server's item parser, over a real journal -------------------------------------------


def check_item(data: bytes, prefill: int, min_seq: int) -> None:
    """Apply `data` to a journal holding `prefill` frames; a refusal must write nothing."""
    with tempfile.TemporaryDirectory() as d:
        journal = Journal.create(Path(d) / "journal.bin")
        try:
            for i, f in enumerate(frames(prefill, seed=1)):
                journal.append_audio(i, 1, i * FRAME, FRAME, f)
            rules = ItemRules(epoch=1, block_align=2, frame_samples=FRAME,
                              max_message_bytes=1 << 20, min_seq=min(min_seq, prefill),
                              max_samples=1 << 40, metrics=Metrics())
            before = journal.position
            if refused(rules.apply, journal, data) is not None:
                assert journal.position == before
                assert (Path(d) / "journal.bin").stat().st_size == before.size
        finally:
            journal.close()


@SETTINGS
@given(st.binary(max_size=4 * HEADER_SIZE), small_seq, small_seq)
def test_item_parser_on_random_bytes(data: bytes, prefill: int, min_seq: int) -> None:
    check_item(data, prefill, min_seq)


@SETTINGS
@given(st.integers(1, 2), st.integers(0, 1), st.integers(0, 4), st.integers(0, 2), small_seq,
       st.integers(0, 10 * FRAME), st.integers(0, 5 * FRAME * 2 + 3), small_seq, small_seq)
def test_item_parser_on_plausible_items(kind: int, flags: int, count: int, epoch: int,
                                        seq: int, sample_pos: int, payload_len: int,
                                        prefill: int, min_seq: int) -> None:
    data = HEADER.pack(kind, flags, count, epoch, seq, sample_pos) + bytes(payload_len)
    check_item(data, prefill, min_seq)


def test_a_valid_item_is_accepted_by_the_same_harness() -> None:
    """The property tests above would pass vacuously if every item were refused."""
    with tempfile.TemporaryDirectory() as d:
        journal = Journal.create(Path(d) / "journal.bin")
        rules = ItemRules(epoch=1, block_align=2, frame_samples=FRAME, max_message_bytes=1 << 20,
                          min_seq=0, max_samples=1 << 40, metrics=Metrics())
        assert rules.apply(journal, encode_audio(1, 0, 0, 1, frames(1, seed=2)[0]))
        journal.close()


def test_control_size_limit_counts_bytes_not_characters() -> None:
    ping = '{"type": "ping", "t": 1, "pad": "%s"}'
    assert refused(decode_control, ping % ("\u00e9" * 2000)) is None  # 4000 bytes: fine
    e = refused(decode_control, ping % ("\U0001f600" * 1100))  # 1100 characters, 4400 bytes
    assert e is not None and e.close_code == CloseCode.MESSAGE_TOO_BIG

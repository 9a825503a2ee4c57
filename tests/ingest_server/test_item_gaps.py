"""Gap items (docs/protocol.md §3, docs/operations.md "Limits"): a gap covers at least one
sample, and a stream holds at most `max_gaps` gap records. Refused gaps write nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from ingest_server.config import ServerConfig, load_config
from ingest_server.items import ItemRules
from ingest_server.metrics import Metrics
from ingest_server.storage import Journal
from uplink.wire import CloseCode, WireError, encode_audio, encode_gap

FRAME = 320


def rules(max_gaps: int = 10000) -> ItemRules:
    return ItemRules(epoch=1, block_align=2, frame_samples=FRAME, max_message_bytes=1 << 20,
                     min_seq=0, max_samples=1 << 40, metrics=Metrics(), max_gaps=max_gaps)


def refused(j: Journal, r: ItemRules, data: bytes) -> int:
    before = j.position
    with pytest.raises(WireError) as e:
        r.apply(j, data)
    assert j.position == before  # nothing written
    return e.value.close_code


def test_a_gap_must_cover_at_least_one_sample(tmp_path: Path) -> None:
    j, r = Journal.create(tmp_path / "journal.bin"), rules()
    assert r.apply(j, encode_audio(1, 0, 0, 1, bytes(2 * FRAME)))
    assert refused(j, r, encode_gap(1, 1, FRAME, 1, FRAME)) == CloseCode.PROTOCOL_ERROR
    assert refused(j, r, encode_gap(1, 1, FRAME, 5, FRAME)) == CloseCode.PROTOCOL_ERROR
    assert r.apply(j, encode_gap(1, 1, FRAME, 1, FRAME + 1))  # one sample: fine
    assert j.gaps[-1].end_sample - j.gaps[-1].start_sample == 1


def test_gap_records_per_stream_are_bounded(tmp_path: Path) -> None:
    j, r = Journal.create(tmp_path / "journal.bin"), rules(max_gaps=3)
    for i in range(3):
        assert r.apply(j, encode_gap(1, i, i, 1, i + 1))
    assert refused(j, r, encode_gap(1, 3, 3, 1, 4)) == CloseCode.POLICY_VIOLATION
    assert len(j.gaps) == 3
    assert r.apply(j, encode_audio(1, 3, 3, 1, bytes(2 * FRAME)))  # audio goes on
    assert not r.apply(j, encode_gap(1, 2, 2, 1, 3))  # a duplicate gap is still re-acked


def test_max_gaps_is_a_limit_with_a_flag_and_a_default() -> None:
    assert ServerConfig().max_gaps == 10000
    assert load_config(["--max-gaps", "5"], environ={}).max_gaps == 5
    assert load_config([], environ={"ECHOPANEL_MAX_GAPS": "7"}).max_gaps == 7
    with pytest.raises(ValueError, match="max_gaps"):
        ServerConfig(max_gaps=0)

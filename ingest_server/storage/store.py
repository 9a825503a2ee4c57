"""On-disk layout of the data directory (docs/storage.md).

    DATA/streams/<stream_id>/journal.bin   append-only records (journal.py), while open
    DATA/streams/<stream_id>/meta.json     identity, format, credential hash, state, totals
    DATA/streams/<stream_id>/audio.wav     written at finalization (gaps as silence)

Every whole-file write is atomic (tmp + fsync + rename + fsync dir), so a crash leaves either
the old or the new version; a write that fails (disk full) removes what it left behind, so
the next attempt starts clean. Stream ids are checked against a strict pattern before they
become a path, so no id can escape the data directory.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from uplink.audio import AudioFormat
from uplink.wire import is_valid_stream_id

from .journal import FILE_MAGIC, Gap, Journal, JournalError, Position
from .reader import DurableReader, JournalReader, WavReader
from .wav import JournalWav, fsync_dir, write_file_atomic

log = logging.getLogger(__name__)

JOURNAL = "journal.bin"
META = "meta.json"
AUDIO = "audio.wav"
META_VERSION = 1
TRASH_PREFIX = ".trash-"  # a deleted stream's directory, renamed away before its removal


class StorageError(Exception):
    """The data directory cannot be used; the message says which and why."""


def utc_now(timestamp: float | None = None) -> str:
    """ISO 8601 UTC with milliseconds: now, or the given POSIX time (tests pass a fake one)."""
    when = datetime.now(UTC) if timestamp is None else datetime.fromtimestamp(timestamp, UTC)
    return when.isoformat(timespec="milliseconds")


def parse_utc(text: str) -> float:
    """The POSIX time of a timestamp written by `utc_now`."""
    return datetime.fromisoformat(text).timestamp()


class StreamState(StrEnum):
    """meta.json "state" (values are the file format: docs/storage.md)."""

    OPEN = "open"
    FINALIZED = "finalized"


class EndReason(StrEnum):
    """meta.json "end_reason" of a finalized stream: the client's `end` (§6) or expiry (§2)."""

    ENDED = "ended"
    EXPIRED = "expired"


@dataclass(slots=True)
class StreamMeta:
    """meta.json. Totals and gaps are authoritative once finalized; while open the journal is."""

    stream_id: str
    format: AudioFormat
    frame_samples: int
    epoch: int
    credential_sha256: str
    created: str
    state: StreamState = StreamState.OPEN
    end_reason: EndReason | None = None
    ended: str | None = None
    next_seq: int = 0
    next_sample: int = 0
    frames: int = 0
    gaps: list[Gap] = field(default_factory=list)
    # SHA-256 of the bearer token that created the stream; only that token may resume it.
    # None: created while authentication was off (docs/operations.md, "Tokens").
    token_sha256: str | None = None
    # protocol §2 hello extras: the capture's wall-clock time of sample 0 (ISO 8601 UTC) and
    # its labels; both None when the capture did not send them (older clients)
    capture_started: str | None = None
    labels: dict[str, str] | None = None
    # how often the stream was reopened after expiring (protocol.md §2 "Expired streams")
    reopened: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "version": META_VERSION,
            "stream_id": self.stream_id,
            "format": self.format.to_json(),
            "frame_samples": self.frame_samples,
            "epoch": self.epoch,
            "credential_sha256": self.credential_sha256,
            "token_sha256": self.token_sha256,
            "created": self.created,
            "ended": self.ended,
            "state": self.state,
            "end_reason": self.end_reason,
            "next_seq": self.next_seq,
            "next_sample": self.next_sample,
            "frames": self.frames,
            "gaps": [g.to_json() for g in self.gaps],
            "capture_started": self.capture_started,
            "labels": self.labels,
            "reopened": self.reopened,
        }

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> StreamMeta:
        try:
            if obj["version"] != META_VERSION:
                raise ValueError(f"meta version {obj['version']!r} not supported")
            return cls(
                stream_id=str(obj["stream_id"]),
                format=AudioFormat.from_json(obj["format"]),
                frame_samples=int(obj["frame_samples"]),
                epoch=int(obj["epoch"]),
                credential_sha256=str(obj["credential_sha256"]),
                created=str(obj["created"]),
                ended=obj.get("ended"),
                state=StreamState(obj["state"]),
                end_reason=None if obj.get("end_reason") is None
                else EndReason(obj["end_reason"]),
                next_seq=int(obj["next_seq"]),
                next_sample=int(obj["next_sample"]),
                frames=int(obj["frames"]),
                gaps=[Gap(**g) for g in obj["gaps"]],
                token_sha256=obj.get("token_sha256"),
                capture_started=obj.get("capture_started"),
                labels=obj.get("labels"),
                reopened=int(obj.get("reopened", 0)),
            )
        except (KeyError, TypeError) as e:
            raise ValueError(f"malformed meta.json: {e!r}") from e


def is_reopenable(meta: StreamMeta) -> bool:
    """An expired stream may be continued by its credential holder; an ended one never."""
    return meta.state is StreamState.FINALIZED and meta.end_reason is EndReason.EXPIRED


class Store:
    shared = False  # one server per data dir (storage/lock.py): every stream is in memory

    def __init__(self, data_dir: Path, *, fsync: bool = True) -> None:
        self.root = Path(data_dir)
        self.streams_dir = self.root / "streams"
        self.fsync = fsync

    def check_writable(self) -> None:
        """Fail at start-up, with the path in the message, rather than on the first stream."""
        probe = self.streams_dir / ".write-probe"
        try:
            self.streams_dir.mkdir(parents=True, exist_ok=True)
            with open(probe, "wb") as f:
                f.write(b"ok")
                os.fsync(f.fileno())
            probe.unlink()
        except OSError as e:
            raise StorageError(f"data dir {self.root} is not writable: {e}") from e

    def stream_dir(self, stream_id: str) -> Path:
        if not is_valid_stream_id(stream_id):
            raise ValueError(f"invalid stream id {stream_id!r}")
        return self.streams_dir / stream_id

    def journal_path(self, stream_id: str) -> Path:
        return self.stream_dir(stream_id) / JOURNAL

    def wav_path(self, stream_id: str) -> Path:
        return self.stream_dir(stream_id) / AUDIO

    def create(self, meta: StreamMeta) -> Journal:
        """Make the stream durable (journal, meta, directory entry) before its welcome (§2).

        Raises FileExistsError if the directory exists (the id is taken, §2 → 4409). Any
        other failure (disk full) removes the half-made directory, so the client's retry
        can create the stream instead of finding its id taken.
        """
        d = self.stream_dir(meta.stream_id)
        d.mkdir()
        journal: Journal | None = None
        try:
            journal = Journal.create(d / JOURNAL, fsync=self.fsync)
            self.write_meta(meta)
            if self.fsync:
                fsync_dir(self.streams_dir)
        except BaseException:
            if journal is not None:
                journal.close()
            shutil.rmtree(d, ignore_errors=True)
            raise
        return journal

    def write_meta(self, meta: StreamMeta) -> None:
        body = json.dumps(meta.to_json(), indent=1).encode() + b"\n"
        write_file_atomic(self.stream_dir(meta.stream_id) / META, iter([body]), fsync=self.fsync)

    def finalize(self, meta: StreamMeta, journal: Journal) -> None:
        """WAV first, then meta (the commit point), then drop the journal (docs/storage.md).

        `meta` already carries the final state and totals. A crash before the meta rename
        leaves an open stream whose WAV is rewritten when it is finalized again. An *expired*
        stream keeps its journal: the holder of its resume credential may still reopen it
        (`reopen`, protocol.md §2 "Expired streams"), and the journal is what appends go on.
        """
        d = self.stream_dir(meta.stream_id)
        write_file_atomic(d / AUDIO, JournalWav(d / JOURNAL, meta.format, journal.position),
                          fsync=self.fsync)
        self.write_meta(meta)  # committed: from here on, failures only leave litter
        journal.close()
        if is_reopenable(meta):
            return
        try:
            (d / JOURNAL).unlink()
            if self.fsync:
                fsync_dir(d)
        except OSError as e:  # recovery removes a finalized stream's leftover journal
            log.warning("%s: cannot remove the journal after finalizing: %s", d, e)

    def reopen(self, meta: StreamMeta) -> tuple[StreamMeta, Journal]:
        """Make an expired stream open again for its credential holder (protocol.md §2).

        The journal is opened (and checked against the totals meta.json recorded) before
        anything changes; meta.json back in state `open` is the commit point; the stale
        audio.wav goes last (a crash in between leaves an open stream with a WAV beside it,
        which its next finalization rewrites). Raises FileNotFoundError when the journal is
        gone (an expiry by an older server): the stream stays finalized.
        """
        d = self.stream_dir(meta.stream_id)
        journal = Journal.open(d / JOURNAL, meta.format.block_align, fsync=self.fsync)
        try:
            pos = journal.position
            if (pos.next_seq, pos.next_sample) != (meta.next_seq, meta.next_sample):
                raise JournalError(
                    f"{d / JOURNAL} ends at seq {pos.next_seq} sample {pos.next_sample}, "
                    f"meta.json at seq {meta.next_seq} sample {meta.next_sample}")
            reopened = replace(meta, state=StreamState.OPEN, end_reason=None, ended=None,
                               reopened=meta.reopened + 1)
            self.write_meta(reopened)
        except BaseException:
            journal.close()
            raise
        try:
            (d / AUDIO).unlink(missing_ok=True)
        except OSError as e:
            log.warning("%s: cannot remove the stale audio.wav after reopening: %s", d, e)
        return reopened, journal

    def delete(self, stream_id: str) -> None:
        """Remove a finalized stream (retention). The rename makes it atomic: a crash leaves
        either the stream or a `.trash-*` directory that recovery finishes removing."""
        d = self.stream_dir(stream_id)
        trash = self.streams_dir / f"{TRASH_PREFIX}{stream_id}"
        if trash.exists():
            shutil.rmtree(trash)
        os.rename(d, trash)
        if self.fsync:
            fsync_dir(self.streams_dir)
        shutil.rmtree(trash)

    def open_wav(self, meta: StreamMeta, upto: Position) -> JournalWav:
        """A WAV of an open stream's journal up to `upto` (its durable position)."""
        return JournalWav(self.journal_path(meta.stream_id), meta.format, upto)

    def open_reader(self, meta: StreamMeta, start_sample: int) -> DurableReader:
        """Durable audio from `start_sample` on (live listeners, reader.py): the journal
        while the stream is open, audio.wav once it is finalized. FileNotFoundError: the
        stream is finalizing (journal gone, meta not yet finalized here) or deleted."""
        if meta.state is StreamState.FINALIZED:
            return WavReader(self.wav_path(meta.stream_id), meta.format, meta.gaps,
                             meta.next_sample, start_sample)
        return JournalReader(self.journal_path(meta.stream_id), meta.format, start_sample)

    def lookup(self, stream_id: str) -> StreamMeta | None:
        """meta.json of a stream, or None (no such stream, or not yet created)."""
        try:
            return StreamMeta.from_json(json.loads((self.stream_dir(stream_id) / META)
                                                   .read_text()))
        except FileNotFoundError:
            return None

    def holds(self, writer: Journal) -> bool:
        return not writer.broken  # nobody else writes a local journal

    def recover(self) -> list[tuple[StreamMeta, Journal | None]]:
        """Every stream on disk; open ones come with their recovered journal."""
        self.streams_dir.mkdir(parents=True, exist_ok=True)
        found: list[tuple[StreamMeta, Journal | None]] = []
        for d in sorted(self.streams_dir.iterdir()):
            if not d.is_dir():
                continue
            if d.name.startswith(TRASH_PREFIX):  # a deletion interrupted by a crash
                shutil.rmtree(d, ignore_errors=True)
                continue
            if not is_valid_stream_id(d.name):
                log.warning("ignoring %s: not a valid stream id", d)
                continue
            try:
                item = self._recover_one(d)
            except (OSError, ValueError) as e:
                # One damaged stream must not keep the server (and every other stream) down.
                log.error("cannot recover stream %s, skipping it: %s", d.name, e)
                continue
            if item is not None:
                found.append(item)
        return found

    def _recover_one(self, d: Path) -> tuple[StreamMeta, Journal | None] | None:
        for tmp in d.glob("*.tmp"):
            tmp.unlink()  # an atomic write that never reached its rename
        if not (d / META).exists():
            self._remove_unborn(d)
            return None
        meta = StreamMeta.from_json(json.loads((d / META).read_text()))
        if meta.stream_id != d.name:
            raise ValueError(f"meta.json names stream {meta.stream_id!r}")
        if meta.state is StreamState.FINALIZED:
            if is_reopenable(meta):  # an expired stream keeps its journal (`finalize`)
                return meta, None
            if (d / JOURNAL).exists():  # crashed between the meta commit and the unlink
                (d / JOURNAL).unlink()
            return meta, None
        if not (d / JOURNAL).exists():
            raise JournalError(f"{d / JOURNAL} is missing")
        return meta, Journal.open(d / JOURNAL, meta.format.block_align, fsync=self.fsync)

    def _remove_unborn(self, d: Path) -> None:
        """A crash during creation, before meta.json: no welcome was sent, nothing acked."""
        journal = d / JOURNAL
        if journal.exists() and journal.stat().st_size > len(FILE_MAGIC):
            raise JournalError(f"{d} has journal records but no meta.json")
        log.warning("removing %s: stream creation did not complete", d)
        shutil.rmtree(d)

"""What the server needs from storage: the contract a storage backend implements.

The connection core (ingest_server/core.py) and its adapter (connection.py) know only these
protocols; the registry (sessions.py) and the per-stream group commit (stream.py) call them.
The first implementation is the local one: a journal per stream (storage/journal.py), the
stream directories and meta.json (storage/store.py), WAV export (storage/wav.py), and group
commit over fsync or syncfs (ingest_server/commit.py, whose docstring explains group
commit). A second backend (a replicated log, for one) implements the same three protocols;
core.py and connection.py do not change.

    StreamStorage.create / reopen / recover   open or resume a stream   → StreamWriter
    StreamWriter.append_audio / append_gap    append items (in order, no fsync; §3)
    Committer.submit(writer)                  make everything appended so far durable,
                                              answered by a future (§4: acks wait on it)
    StreamWriter.rollback(durable)            after a failed sync: forget what it covered
    StreamStorage.open_wav(meta, upto)        read durable audio as WAV bytes (REST)
    StreamStorage.open_reader(meta, sample)   read durable audio from a sample on, gaps as
                                              gaps (live listeners, storage/reader.py)
    StreamStorage.finalize / delete           §6 end, expiry; retention
    StreamStorage.shared / lookup / holds     several servers share the storage (JetStream,
                                              docs/scale-out.md): a stream is looked
                                              up in the store, not only in memory, and a
                                              writer can lose its stream to another node
    SharedStorage.take                        make this node the stream's writer (fencing)

Data types (`Position`, `Gap`, `StreamMeta`, `StreamState`, `EndReason`) are shared by
every backend; they are defined next to the local implementation and re-exported here.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol

from .journal import Gap, Position
from .reader import AudioPiece, DurableReader, GapPiece, Piece
from .store import EndReason, StreamMeta, StreamState


class StreamFenced(OSError):
    """Another node took the stream over (a shared store, docs/scale-out.md): this
    writer may never write again. The connection closes with 4411 (§7 SUPERSEDED: a newer
    connection took the stream over), never 1013: retrying here cannot help."""


class StreamWriter(Protocol):
    """An open stream's append side. Not thread-safe: the event loop appends; only the
    committer's sync may run elsewhere meanwhile."""

    next_seq: int
    next_sample: int
    frames: int
    gaps: list[Gap]

    @property
    def position(self) -> Position: ...

    def append_audio(self, seq: int, count: int, sample_pos: int, nsamples: int,
                     payload: bytes | memoryview) -> None: ...

    def append_gap(self, seq: int, count: int, start_sample: int, end_sample: int) -> None: ...

    def rollback(self, to: Position) -> None: ...

    def close(self) -> None: ...


class Committer(Protocol):
    """Durability: `submit(writer)` completes once everything appended to `writer` before
    the call is durable, or fails with the OSError that made it fail. The caller holds the
    stream's sync lock (no other sync, cut or close of that writer meanwhile) and must not
    cancel the future."""

    def submit(self, writer: Any) -> asyncio.Future[Any]: ...

    def close(self) -> None: ...


class DurableAudio(Protocol):
    """A range of durable audio as WAV bytes, read lazily; close() frees it. `size`: the
    WAV's byte size, known before reading (the header is written first, never patched)."""

    size: int

    def __iter__(self) -> Iterator[bytes]: ...

    def close(self) -> None: ...


class StreamStorage(Protocol):
    """Streams as a whole. Calls block (the registry runs them in its IO threads). A
    `writer` argument is one this storage returned (hence `Any`: each backend takes its own)."""

    def create(self, meta: StreamMeta) -> StreamWriter: ...

    def reopen(self, meta: StreamMeta) -> tuple[StreamMeta, StreamWriter]: ...

    def finalize(self, meta: StreamMeta, writer: Any) -> None: ...

    def delete(self, stream_id: str) -> None: ...

    def recover(self) -> Sequence[tuple[StreamMeta, StreamWriter | None]]: ...

    def open_wav(self, meta: StreamMeta, upto: Position) -> DurableAudio: ...

    def open_reader(self, meta: StreamMeta, start_sample: int) -> DurableReader: ...

    # False for the local journal: this process is the only writer and holds every stream
    # in memory. True when other servers write the same storage (JetStream).
    shared: bool

    def lookup(self, stream_id: str) -> StreamMeta | None:
        """The stored metadata of a stream, or None (no such stream)."""
        ...

    def holds(self, writer: Any) -> bool:
        """Whether `writer` may still append (False once another node took its stream)."""
        ...


class SharedStorage(StreamStorage, Protocol):
    """A store several ingest servers share (storage/jetstream). Streams are not recovered
    at start-up; a node `take`s one when its capture resumes there."""

    @property
    def committer(self) -> Committer: ...

    def healthy(self) -> bool:
        """Connected to the storage service right now (readiness)."""
        ...

    def take(self, meta: StreamMeta, *, reopen: bool = False) -> tuple[StreamMeta, Any]:
        """Become the stream's only writer; returns the stored meta and a writer at the
        durable tail. FileNotFoundError: the stream is gone; OSError: retry later."""
        ...

    def durable_position(self, meta: StreamMeta) -> Position: ...

    def list_streams(self) -> list[tuple[StreamMeta, Position]]: ...

    def tail_of(self, meta: StreamMeta) -> tuple[Position, bool]:
        """The durable position and whether the stream was finalized there (END)."""
        ...

    def watch(self, stream_id: str, on_message: Callable[[], None]) -> Callable[[], None]:
        """Wake-up hints (from another thread) when the stream is written; returns stop."""
        ...

    def share_event(self, payload: bytes) -> None:
        """Hand one event (events.py, encoded) to every other node; never blocks, and a
        payload lost on the way costs only that notification (not audio)."""
        ...

    def shared_events(self, on_payload: Callable[[bytes], None]) -> Callable[[], None]:
        """Call `on_payload` (from another thread) with every event another node shares;
        returns the function that stops it."""
        ...

    def orphans(self, now: float, idle_seconds: float) -> list[StreamMeta]:
        """Open streams whose owner lease nobody renewed for `idle_seconds` (wall time)."""
        ...

    def close(self) -> None: ...


__all__ = ["AudioPiece", "Committer", "DurableAudio", "DurableReader", "EndReason", "Gap",
           "GapPiece", "Piece", "Position", "SharedStorage", "StreamFenced", "StreamMeta",
           "StreamState", "StreamStorage", "StreamWriter"]

"""Live fan-out: one journal read and one encoded WebSocket message per durable advance,
written to every listener waiting at that position (docs/listeners.md "Cost").

Without it, each of N live listeners of a stream woke on every sync, read the new record
from the journal, built its own binary message and sent it through the ASGI layers: ~47 µs
per listener per 20 ms frame, on the event loop that also sends the uplink's acks
(docs/performance.md "Live listeners"). Here a listener that has sent everything durable
*parks* in its stream's `Fanout` (a `Seat`). On each advance of `Stream.durable`, the
fan-out task (one per stream with listeners) reads the new pieces once with its own
`JournalReader` (the *head*), encodes each as a complete WebSocket frame once (immutable
`bytes`: a transport that cannot send at once keeps a reference or a copy of it), and writes
those frames straight to the transport of every seat at the head's position, BATCH seats per
event-loop iteration.

A seat goes back to its listener's own loop (`Seat.woken`) whenever sharing is not the
simple case, so every guarantee stays where it was (docs/protocol.md §11):
- its socket is over the write buffer's high-water mark, closing or closed: the listener's
  own send waits, under the stall watchdog (4429), with its memory bound (listen.py);
- the advance holds a gap record, or more than one read's budget (listen.CHUNK_BYTES): the
  listener reads and sends gaps as gap messages, in order, and catches up itself;
- the stream is finalized, finalizing or no longer in the registry: the listener sends
  `end` or closes (4404);
- the seat is neither at the head's position nor at the new durable end (a seat that parked
  at a durable position the head has not reached yet just waits for the head).
The listener leaves its seat itself for its own events (§11.4 `state` messages) and when it
ends. `Seat.mark` then says where its reader continues: the sample the fan-out carried it
to and the journal offset of the record holding it (no rescan of the journal).

Acks first: the task wakes through `Stream.durable_changed()`, whose callbacks run after the
flusher's step that sent the ack (stream.py), and it yields to the loop between batches, so
a capture's next frame is read and acked between two batches of writes.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .storage.interface import AudioPiece, Position
from .storage.reader import JournalReader, ReadMark
from .stream import Stream
from .wsprotocol import IngestWebSocketProtocol, connection_extension

log = logging.getLogger(__name__)

BATCH = 16  # seats written per event-loop iteration: ~16 send() calls, ~0.2 ms
AUDIO_HEADER = struct.Struct("<Q")  # §11.3: the first sample frame of a binary message
_OP_BINARY_FIN = 0x82


def audio_frame(piece: AudioPiece) -> bytes:
    """The whole server-to-client WebSocket frame (RFC 6455 §5.2: FIN, binary, unmasked, no
    extension: the server never negotiates compression, cli.py) of one §11.3 audio message."""
    size = AUDIO_HEADER.size + len(piece.data)
    if size < 126:
        head = struct.pack("!BB", _OP_BINARY_FIN, size)
    elif size < 1 << 16:
        head = struct.pack("!BBH", _OP_BINARY_FIN, 126, size)
    else:
        head = struct.pack("!BBQ", _OP_BINARY_FIN, 127, size)
    return b"".join((head, AUDIO_HEADER.pack(piece.start_sample), piece.data))


class DirectSocket:
    """A listener's WebSocket as a pipe for whole frames built elsewhere. Only used while
    the listener itself sends nothing (it is parked); the protocol's own pings and close
    frame are whole frames too, so frames never interleave. Uncompressed frames are valid
    even if permessage-deflate were negotiated (RFC 7692 §6: RSV1 clear)."""

    def __init__(self, protocol: IngestWebSocketProtocol) -> None:
        self._protocol = protocol

    @classmethod
    def of(cls, scope: Mapping[str, Any]) -> DirectSocket | None:
        """The connection behind an ASGI WebSocket scope, when it is our own protocol
        (wsprotocol.py puts itself in the scope extension); any other server gets None
        (listeners never park)."""
        ext = connection_extension(scope)
        protocol = ext.get("protocol") if ext else None
        return cls(protocol) if isinstance(protocol, IngestWebSocketProtocol) else None

    def writable(self) -> bool:
        """Open, and under the write buffer's high-water mark: a write now cannot grow the
        buffer past the listener's memory bound (listen.MEMORY_BOUND)."""
        p = self._protocol
        return (p.handshake_complete and not p.close_sent and not p.disconnected
                and p.writable.is_set() and not p.transport.is_closing())

    def write(self, frames: list[bytes]) -> None:
        transport = self._protocol.transport
        for frame in frames:
            transport.write(frame)


@dataclass(eq=False, slots=True)
class Seat:
    """A parked listener. The fan-out moves `mark` (its position: the next sample to send,
    and where a reader of the journal stands for it) as it writes to `socket`."""

    socket: DirectSocket
    mark: ReadMark
    woken: asyncio.Future[None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future())


class Fanout:
    """The live listeners of one open stream that have sent everything durable."""

    def __init__(self, stream: Stream, open_head: Callable[[int], JournalReader | None],
                 count_sent: Callable[[int, int], None], read_bytes: int,
                 listed: Callable[[], bool] = lambda: True) -> None:
        self.stream = stream
        self._listed = listed  # the registry still has this stream (not deleted, not moved)
        self.members = 0  # listeners of the stream (parked or not): the hub closes us at 0
        self._open_head = open_head
        self._count_sent = count_sent
        self._read_bytes = read_bytes  # one read's budget, as each listener's own
        self._seats: dict[Seat, None] = {}  # insertion order: written in the order parked
        self._head: JournalReader | None = None
        self._head_of: object = None  # the journal the head reads (a reopen replaces it)
        self._delivering = False
        self._seen = stream.durable  # now, not when the task first runs: no advance missed
        self._task = asyncio.create_task(self._run())

    # -- the listener's side --------------------------------------------------------------

    def park(self, socket: DirectSocket, mark: ReadMark) -> Seat:
        """A listener whose reader stands at `mark` (it read up to the durable end) waits
        here until `Seat.woken`."""
        head = self._current_head()
        if head is None:
            if self.stream.journal is not None:
                head = self._head = self._open_head(mark.sample)
                self._head_of = self.stream.journal
            if head is not None:
                head.seek(mark)  # at its record: a new reader would scan the whole journal
        elif head.sample != mark.sample and not self._delivering \
                and not any(s.mark.sample == head.sample for s in self._seats):
            head.seek(mark)  # nobody is at the head: follow the newcomer instead
        seat = Seat(socket, mark)
        self._seats[seat] = None
        return seat

    def start_mark(self, sample: int) -> ReadMark | None:
        """Where a new reader of this journal can start to reach `sample` (a record at or
        before it), if the shared reader knows one; None: start from the file's start."""
        head = self._current_head()
        if head is None or head.sample > sample:
            return None
        return ReadMark(head.mark.offset, sample)

    def leave(self, seat: Seat) -> None:
        """The listener runs its own loop again; the fan-out no longer touches `seat`."""
        self._seats.pop(seat, None)

    def close(self) -> None:
        """No listeners left (or the server stops): the task ends at its next await."""
        self._task.cancel()
        self._release(list(self._seats))
        self._close_head()

    # -- the fan-out task -----------------------------------------------------------------

    async def _run(self) -> None:
        stream, seen = self.stream, self._seen
        while True:
            if stream.durable is seen:
                await stream.durable_changed()  # resolved after the flusher sent its ack
            seen = stream.durable
            if not self._seats:
                continue
            try:
                await self._advance(seen)
            except Exception as e:
                # The shared read failed (OSError): each listener reads for itself and
                # reports it (listen.py closes with 1013); the next parked listener reopens
                # the head. Anything else is a bug, but must not leave anyone parked forever.
                if not isinstance(e, OSError):
                    log.exception("fan-out of %s failed", stream.stream_id)
                self._release(list(self._seats))
                self._close_head()

    async def _advance(self, upto: Position) -> None:
        head = self._current_head()
        stream = self.stream
        if head is None or stream.finalized or stream.journal is None or not self._listed():
            self._release(list(self._seats))  # `end` or 4404 is for their own loops
            self._close_head()  # a parked listener reopens it on whatever file is current
            return
        start = head.sample
        group = [s for s in self._seats if s.mark.sample == start]
        # A seat elsewhere: parked ahead of the head (at `upto`: nothing to send yet) or
        # left behind by an advance the head could not share: it reads for itself.
        self._release([s for s in self._seats
                       if s.mark.sample != start and s.mark.sample != upto.next_sample])
        if not group or upto.next_sample <= start:
            return
        pieces = head.read(upto, self._read_bytes)
        audio = [p for p in pieces if isinstance(p, AudioPiece)]
        if head.sample != upto.next_sample or len(audio) != len(pieces):
            self._release(group)  # a gap, or a large advance: each listener's own loop
            return
        frames = [audio_frame(p) for p in audio]
        audio_bytes = sum(len(p.data) for p in audio)
        end = head.mark
        self._delivering = True
        try:
            for i, seat in enumerate(group):
                if i and i % BATCH == 0:
                    await asyncio.sleep(0)  # let the loop read (and ack) a capture's frame
                if seat not in self._seats:
                    continue  # it left meanwhile, still at `start`
                if seat.socket.writable():
                    seat.socket.write(frames)
                    seat.mark = end
                    self._count_sent(len(frames), audio_bytes)
                else:
                    self._release([seat])  # its own send waits, under the stall watchdog
        finally:
            self._delivering = False

    def _release(self, seats: list[Seat]) -> None:
        for seat in seats:
            self._seats.pop(seat, None)
            if not seat.woken.done():
                seat.woken.set_result(None)

    def _current_head(self) -> JournalReader | None:
        """The shared reader, if it still reads the stream's current journal."""
        if self._head is not None and self.stream.journal is not self._head_of:
            self._close_head()  # finalized, or reopened after it expired (a new journal)
        return self._head

    def _close_head(self) -> None:
        if self._head is not None:
            self._head.close()
            self._head = None

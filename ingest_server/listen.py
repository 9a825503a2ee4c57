"""Live listeners: `GET /v1/streams/{id}/listen?from=...` (WebSocket, docs/protocol.md §11).

A listener is sent a stream's *durable* audio as it becomes durable, from a sample position
on: nothing it receives can later disappear, nothing is sent twice on one connection, gaps
come as events with their exact sample ranges, and a listener that reconnects with
`from=<the next sample it needs>` continues exactly there (docs/listeners.md).

None can hurt ingest (docs/listeners.md "Cost"):
- audio is read from storage (`StreamStorage.open_reader`: the journal, or audio.wav once
  finalized) up to `Stream.durable`, never from the uplink's path, in pieces of at most
  CHUNK_BYTES; a backlog larger than INLINE_BYTES is read in this module's own thread, not
  the event loop and not the IO threads that run the fsyncs;
- a listener learns that audio became durable from `Stream.durable_changed()`, a future the
  stream resolves after the sync (the flusher sends its ack before any listener runs);
- a listener that has sent everything durable parks in its stream's fan-out (fanout.py):
  one read and one encoded message per advance for all of them, written to their sockets
  a batch per loop iteration; anything but plain audio to a socket that can take it (a
  gap, a full socket, the end, a `state` event) sends it back to its own loop below;
- a listener's memory is bounded: one piece being read (CHUNK_BYTES) plus the transport's
  write buffer (64 KiB high-water mark plus the one message that crossed it), plus its
  bookkeeping: MEMORY_BOUND below, measured by `python -m tools.bench --only listeners`;
- a listener that stops reading (a send blocked for `listener_stall_timeout`) is closed
  with 4429 and its socket dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
from concurrent.futures import ThreadPoolExecutor
from enum import Enum

from starlette.websockets import WebSocket, WebSocketDisconnect

from uplink.wire import CloseCode

from .config import ServerConfig
from .events import EventBus, EventKind, Subscription
from .fanout import AUDIO_HEADER, DirectSocket, Fanout
from .sessions import Registry
from .storage.interface import AudioPiece, DurableReader, GapPiece, Piece, StreamStorage
from .storage.reader import JournalReader
from .stream import Stream
from .wsprotocol import abort_callback

log = logging.getLogger(__name__)

LISTEN_VERSION = 1
CHUNK_BYTES = 32 * 1024  # audio per binary message, at most
INLINE_BYTES = 64 * 1024  # a backlog up to this is read on the loop (page cache: µs)
READ_THREADS = 2
CLOSE_TIMEOUT = 1.0  # a stalled listener's close frame: then the socket is dropped
MEMORY_BOUND = CHUNK_BYTES + 64 * 1024 + CHUNK_BYTES + 16 * 1024  # piece, buffer, overshoot, rest

STALLED = 4429  # §11.5: the listener stopped reading for listener_stall_timeout
STREAM_GONE = 4404  # §11.5: the stream was deleted (retention) while listening

_SEND_ERRORS = (RuntimeError, OSError, WebSocketDisconnect)
_STATES = {EventKind.OPENED: "connected", EventKind.RESUMED: "resumed",
           EventKind.DISCONNECTED: "disconnected"}


class FromError(ValueError):
    """A `from` value the server does not understand (HTTP 400 before the upgrade)."""


def parse_from(text: str | None, sample_rate: int, durable_sample: int) -> int:
    """§11.1 `from`: `start` (default), `live` (the durable end now), a sample frame
    number, or seconds as `12.5s`."""
    if text is None or text == "start":
        return 0
    if text == "live":
        return durable_sample
    try:
        if text.endswith("s"):
            seconds = float(text[:-1])
            if not math.isfinite(seconds) or seconds < 0:
                raise ValueError(text)
            return round(seconds * sample_rate)
        sample = int(text)
    except ValueError:
        raise FromError(f"from must be start, live, a sample number or seconds like 12.5s, "
                        f"not {text[:40]!r}") from None
    if sample < 0:
        raise FromError("from must not be negative")
    return sample


class ListenerState(Enum):
    __hash__ = object.__hash__

    CATCHING_UP = "catching up"  # more is durable than was sent
    LIVE = "live"  # everything durable was sent; waiting for the next sync
    ENDED = "ended"  # `end` sent
    CLOSED = "closed"


class Listener:
    def __init__(self, hub: ListenerHub, ws: WebSocket, stream: Stream, start: int) -> None:
        self.hub = hub
        self.ws = ws
        self.stream = stream
        self.sample = start  # the next sample frame to send
        self.state = ListenerState.CATCHING_UP
        self.close_code: int | None = None
        self._loop = asyncio.get_running_loop()
        self._reader: DurableReader | None = None
        self._reader_finalized = False
        self._send_since: float | None = None  # loop time a blocked send started
        self._timer: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[None] | None = None
        self._drop_transport = abort_callback(ws.scope)
        self._socket = DirectSocket.of(ws.scope)  # None: not our protocol, never parks

    # -- lifecycle ---------------------------------------------------------------------

    async def run(self) -> None:
        self._task = asyncio.current_task()
        stream = self.stream
        sub = self.hub.events.subscribe(stream.stream_id, remote=True)  # relay.py
        receiver = asyncio.create_task(self._receive())
        try:
            await self.ws.accept()
            await self._send_text({
                "type": "listening", "version": LISTEN_VERSION, "stream_id": stream.stream_id,
                "format": stream.meta.format.to_json(), "start_sample": self.sample,
                "durable_sample": stream.durable.next_sample, "state": stream.meta.state.value,
                "connected": stream.owner is not None})
            await self._follow(sub)
        except asyncio.CancelledError:
            # the peer left, we dropped it, or the server is stopping: this task is done
            current = asyncio.current_task()
            if current is not None:
                current.uncancel()
        except _SEND_ERRORS:
            pass  # the peer is gone
        except OSError as e:  # a storage read failed: the listener resumes later
            log.error("listener of %s failed to read: %s", stream.stream_id, e)
            await self._close(CloseCode.TRY_AGAIN_LATER, "cannot read the stream right now")
        except Exception:
            log.exception("listener of %s failed", stream.stream_id)
            await self._close(CloseCode.INTERNAL_ERROR, "internal server error")
        finally:
            self.state = ListenerState.CLOSED
            sub.close()
            receiver.cancel()
            if self._timer is not None:
                self._timer.cancel()
            if self._reader is not None:
                self._reader.close()

    async def _receive(self) -> None:
        """Read (and ignore) whatever the listener sends, to see it leave (§11.2)."""
        with contextlib.suppress(*_SEND_ERRORS):
            while (await self.ws.receive())["type"] != "websocket.disconnect":
                pass
        if self._task is not None and self.state is not ListenerState.ENDED:
            self._task.cancel()

    async def _follow(self, sub: Subscription) -> None:
        stream, registry = self.stream, self.hub.registry
        while True:
            await self._send_states(sub)
            if registry.streams.get(stream.stream_id) is not stream:
                await self._close(STREAM_GONE, "stream deleted")
                return
            seen = stream.durable
            pieces = await self._read()
            if pieces:
                self.state = ListenerState.CATCHING_UP
                for piece in pieces:
                    await self._send_piece(piece)
                if (self.sample < seen.next_sample or stream.durable is not seen
                        or stream.finalized):
                    continue  # more to read, or the end to send
            elif stream.finalized and self.sample >= stream.durable.next_sample:
                self.state = ListenerState.ENDED
                await self._send_text({"type": "end", "next_sample": stream.durable.next_sample,
                                       "end_reason": str(stream.meta.end_reason)})
                await self._close(CloseCode.NORMAL, "stream ended")
                return
            elif stream.durable is not seen:
                continue  # it moved while we read
            # everything durable was sent: wait for more (the peer leaving cancels this task)
            self.state = ListenerState.LIVE
            await self._wait_live(sub)

    async def _wait_live(self, sub: Subscription) -> None:
        """Park in the stream's fan-out, which sends what becomes durable, until something
        needs this loop: our own events, or anything the fan-out does not share."""
        stream, reader, socket = self.stream, self._reader, self._socket
        fanout = self.hub.fanouts.get(stream)
        if (fanout is None or socket is None or not isinstance(reader, JournalReader)
                or reader.sample != self.sample or stream.finalized):
            await asyncio.wait([stream.durable_changed(), sub.changed()],
                               return_when=asyncio.FIRST_COMPLETED)
            return
        seat = fanout.park(socket, reader.mark)
        try:
            await asyncio.wait([seat.woken, sub.changed()], return_when=asyncio.FIRST_COMPLETED)
        finally:
            fanout.leave(seat)  # from here on only this loop sends: frames never interleave
            if seat.mark.sample != self.sample:
                self.sample = seat.mark.sample
                reader.seek(seat.mark)

    async def _read(self) -> list[Piece]:
        stream = self.stream
        finalized = stream.finalized
        if self._reader is None or self._reader_finalized != finalized:
            if self._reader is not None:
                self._reader.close()
                self._reader = None
            try:
                self._reader = self.hub.store.open_reader(stream.meta, self.sample)
            except FileNotFoundError:
                return []  # finalizing right now: the next durable change says it is done
            self._reader_finalized = finalized
            fanout = self.hub.fanouts.get(stream)
            start = fanout.start_mark(self.sample) if fanout is not None else None
            if start is not None and isinstance(self._reader, JournalReader):
                # `from=live` on a long stream: start at the shared reader's record instead
                # of scanning every record header from the file's start, on the loop
                self._reader.seek(start)
        upto = stream.durable
        reader = self._reader
        behind = (upto.next_sample - self.sample) * stream.meta.format.block_align
        if behind <= INLINE_BYTES:
            return reader.read(upto, CHUNK_BYTES)
        return await self._loop.run_in_executor(self.hub.executor, reader.read, upto,
                                                CHUNK_BYTES)

    async def _send_piece(self, piece: Piece) -> None:
        if isinstance(piece, AudioPiece):
            await self._send(AUDIO_HEADER.pack(piece.start_sample) + piece.data)
            self.sample = piece.start_sample + len(piece.data) // self.stream.meta.format.block_align
            self.hub.bytes_sent += len(piece.data)
            return
        assert isinstance(piece, GapPiece)
        gap = piece.gap
        await self._send_text({"type": "gap", "start_sample": piece.start_sample,
                               "end_sample": piece.end_sample,
                               "recorded_start_sample": gap.start_sample,
                               "recorded_end_sample": gap.end_sample,
                               "first_seq": gap.first_seq, "end_seq": gap.end_seq})
        self.sample = piece.end_sample

    async def _send_states(self, sub: Subscription) -> None:
        for event in sub.pending():
            state = _STATES.get(event.kind)
            if state is not None:
                await self._send_text({"type": "state", "state": state,
                                       "at_sample": event.at_sample})

    # -- sending, the stall watchdog, closing -------------------------------------------

    async def _send_text(self, body: dict[str, object]) -> None:
        await self._send(json.dumps(body, separators=(",", ":")))

    async def _send(self, message: bytes | str) -> None:
        self._send_since = self._loop.time()
        if self._timer is None:
            self._timer = self._loop.call_at(self._send_since + self.hub.stall_timeout,
                                             self._check_stall)
        try:
            if isinstance(message, bytes):
                await self.ws.send_bytes(message)
            else:
                await self.ws.send_text(message)
        finally:
            self._send_since = None

    def _check_stall(self) -> None:
        """One timer per listener, re-armed only while a send is pending (as connection.py)."""
        self._timer = None
        since = self._send_since
        if since is None:
            return
        deadline = since + self.hub.stall_timeout
        if self._loop.time() < deadline:
            self._timer = self._loop.call_at(deadline, self._check_stall)
            return
        self.hub.stalled += 1
        log.warning("listener of %s stopped reading for %g s; closing with %d",
                    self.stream.stream_id, self.hub.stall_timeout, STALLED)
        task = asyncio.create_task(self._drop_stalled())
        self.hub.background.add(task)
        task.add_done_callback(self.hub.background.discard)

    async def _drop_stalled(self) -> None:
        if self._task is not None:
            self._task.cancel()  # stop the blocked send first
        await self._close(STALLED, "listener stopped reading")

    async def _close(self, code: int, reason: str) -> None:
        if self.close_code is not None:
            return
        self.close_code = code
        try:
            await asyncio.wait_for(self.ws.close(code, reason), CLOSE_TIMEOUT)
        except (TimeoutError, *_SEND_ERRORS):
            if self._drop_transport is not None:
                self._drop_transport()  # it does not read: free the socket and its buffer

    async def shutdown(self) -> None:
        """Server stopping: 1012; the listener resumes from its position after the restart."""
        await self._close(CloseCode.SERVICE_RESTART, "server restarting")
        if self._task is not None:
            self._task.cancel()  # after the close frame: the handler's return ends the socket


class ListenerHub:
    """Every live listener of the server, its read thread and its counters."""

    def __init__(self, registry: Registry, store: StreamStorage, config: ServerConfig) -> None:
        self.registry = registry
        self.store = store
        self.events: EventBus = registry.events
        self.stall_timeout = config.listener_stall_timeout
        self.executor = ThreadPoolExecutor(READ_THREADS, thread_name_prefix="ingest-listen")
        self.listeners: set[Listener] = set()
        self.fanouts: dict[Stream, Fanout] = {}  # per stream with listeners
        self.background: set[asyncio.Task[None]] = set()
        self.bytes_sent = 0  # audio bytes sent to listeners
        self.shared_messages = 0  # audio messages the fan-outs wrote (one read, one encoding)
        self.stalled = 0

    async def serve(self, ws: WebSocket, stream: Stream, start: int) -> None:
        listener = Listener(self, ws, stream, start)
        self.listeners.add(listener)
        fanout = self.fanouts.get(stream)
        if fanout is None:
            fanout = self.fanouts[stream] = Fanout(
                stream, lambda sample: self._open_head(stream, sample), self._count_sent,
                CHUNK_BYTES, lambda: self.registry.streams.get(stream.stream_id) is stream)
        fanout.members += 1
        try:
            await listener.run()
        finally:
            self.listeners.discard(listener)
            fanout.members -= 1
            if fanout.members == 0 and self.fanouts.get(stream) is fanout:
                del self.fanouts[stream]
                fanout.close()

    def _open_head(self, stream: Stream, sample: int) -> JournalReader | None:
        try:
            reader = self.store.open_reader(stream.meta, sample)
        except FileNotFoundError:
            return None  # finalizing: the listeners see it at the next durable change
        if isinstance(reader, JournalReader):
            return reader
        reader.close()
        return None

    def _count_sent(self, messages: int, audio_bytes: int) -> None:
        self.shared_messages += messages
        self.bytes_sent += audio_bytes

    async def close(self) -> None:
        await asyncio.gather(*(li.shutdown() for li in list(self.listeners)),
                             return_exceptions=True)
        fanouts, self.fanouts = list(self.fanouts.values()), {}
        for fanout in fanouts:
            fanout.close()
        self.executor.shutdown(wait=True)

"""The live fan-out (fanout.py): one read and one encoded frame per durable advance for
every parked listener, batches per loop iteration, after the ack, and every case it does
not share handed back to the listener's own loop with the right reader position. Unit
level (a journal on disk, a stand-in stream and sockets); the end-to-end check with real
sockets is the last test."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, cast

from websockets.frames import Frame, Opcode
from websockets.sync.client import connect

from ingest_server.fanout import AUDIO_HEADER, BATCH, DirectSocket, Fanout, Seat, audio_frame
from ingest_server.storage import Journal
from ingest_server.storage.journal import Position
from ingest_server.storage.reader import AudioPiece, JournalReader
from ingest_server.stream import Stream
from uplink.audio import AudioFormat, SampleType

from .client import Client, frames
from .harness import in_process

FMT = AudioFormat(16000, 1, SampleType.INT16)
WAIT = 10.0


def pcm(start: int, n: int) -> bytes:
    return b"".join(((start + i) % 65536).to_bytes(2, "little") for i in range(n))


class FakeStream:
    """What the fan-out uses of `Stream`: `durable`, its change futures, the journal."""

    def __init__(self, journal: Journal) -> None:
        self.journal: Journal | None = journal
        self.finalized = False
        self._durable = journal.position
        self._waiters: list[asyncio.Future[None]] = []

    @property
    def durable(self) -> Position:
        return self._durable

    @durable.setter
    def durable(self, position: Position) -> None:
        self._durable = position
        waiters, self._waiters = self._waiters, []
        for w in waiters:
            if not w.done():
                w.set_result(None)

    def durable_changed(self) -> asyncio.Future[None]:
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        return waiter


class FakeSocket:
    def __init__(self, log: list[str] | None = None, name: str = "") -> None:
        self.frames: list[bytes] = []
        self.open = True
        self.log, self.name = log, name

    def writable(self) -> bool:
        return self.open

    def write(self, frames: list[bytes]) -> None:
        self.frames.extend(frames)
        if self.log is not None:
            self.log.append(self.name)

    def audio(self, first: int) -> bytes:
        """The PCM of every frame written from sample `first` on (checking each frame's
        sample position)."""
        out = bytearray()
        for frame in self.frames:
            payload = frame[2:] if frame[1] < 126 else frame[4:]
            (start,) = AUDIO_HEADER.unpack_from(payload)
            assert start == first + len(out) // FMT.block_align
            out += payload[AUDIO_HEADER.size:]
        return bytes(out)


class Setup:
    def __init__(self, tmp_path: Path) -> None:
        self.path = tmp_path / "journal.bin"
        self.journal = Journal.create(self.path, fsync=False)
        self.stream = FakeStream(self.journal)
        self.sent: list[tuple[int, int]] = []
        self.fanout = Fanout(cast(Stream, self.stream), self.open_head,
                             lambda m, b: self.sent.append((m, b)), 32 * 1024)
        self.seq = 0
        self.sample = 0

    def open_head(self, sample: int) -> JournalReader:
        return JournalReader(self.path, FMT, sample)

    def append(self, n: int) -> None:
        self.journal.append_audio(self.seq, 1, self.sample, n, pcm(self.sample, n))
        self.seq += 1
        self.sample += n

    def gap(self, n: int) -> None:
        self.journal.append_gap(self.seq, 1, self.sample, self.sample + n)
        self.seq += 1
        self.sample += n

    def sync(self) -> None:
        self.stream.durable = self.journal.position

    def park(self, socket: FakeSocket) -> tuple[Seat, JournalReader]:
        """A listener that read everything durable itself, then parked."""
        reader = JournalReader(self.path, FMT, 0)
        while reader.read(self.stream.durable, 1 << 20):
            pass
        return self.fanout.park(cast(DirectSocket, socket), reader.mark), reader


def in_loop(test: Callable[[Path], Awaitable[None]]) -> Callable[[Path], None]:
    @functools.wraps(test)
    def run(tmp_path: Path) -> None:
        asyncio.run(asyncio.wait_for(test(tmp_path), WAIT))  # type: ignore[arg-type]
    return run


async def settle() -> None:
    for _ in range(2 + 200 // BATCH):
        await asyncio.sleep(0)


def test_audio_frame_is_what_websockets_would_send() -> None:
    for n in (0, 58, 59, 1000, 40000):  # 7-bit, 16-bit and 64-bit payload lengths
        piece = AudioPiece(12345, pcm(0, n // 2) + b"x" * (n % 2))
        payload = AUDIO_HEADER.pack(12345) + piece.data
        expected = Frame(Opcode.BINARY, payload).serialize(mask=False, extensions=[])
        assert audio_frame(piece) == expected


@in_loop
async def test_one_read_one_frame_for_every_parked_listener(tmp_path: Path) -> None:
    s = Setup(tmp_path)
    s.append(320)
    s.sync()
    sockets = [FakeSocket() for _ in range(40)]
    seats = [s.park(sock)[0] for sock in sockets]
    head: Any = s.fanout._head
    assert head.mark == seats[0].mark  # the shared reader starts at the record, no rescan
    for _ in range(5):
        s.append(320)
        s.sync()
        await settle()
    for sock in sockets:
        assert sock.audio(320) == pcm(320, 5 * 320)
        assert len(sock.frames) == 5
    # the same bytes object went to every socket: encoded once
    assert all(sock.frames[0] is sockets[0].frames[0] for sock in sockets)
    assert isinstance(sockets[0].frames[0], bytes)
    assert all(seat.mark.sample == 6 * 320 and not seat.woken.done() for seat in seats)
    assert s.sent == [(1, 640)] * 40 * 5
    s.fanout.close()


@in_loop
async def test_batches_yield_to_the_loop_and_run_after_the_syncing_step(tmp_path: Path) -> None:
    s = Setup(tmp_path)
    log: list[str] = []
    sockets = [FakeSocket(log, f"l{i}") for i in range(2 * BATCH + 1)]
    for sock in sockets:
        s.park(sock)
    s.append(320)
    s.sync()
    log.append("ack")  # what the flusher does right after the sync, in the same step
    writes_per_step = []
    while sum(writes_per_step) < len(sockets):
        before = len(log)
        await asyncio.sleep(0)  # one loop iteration: a capture's frame could be acked here
        writes_per_step.append(len(log) - before)
    assert log[0] == "ack"  # the sync's own step ended before any listener was written
    assert log[1:] == [f"l{i}" for i in range(len(sockets))]  # in the order they parked
    assert max(writes_per_step) == BATCH and len(writes_per_step) >= 3
    s.fanout.close()


@in_loop
async def test_a_full_socket_is_released_at_its_position(tmp_path: Path) -> None:
    s = Setup(tmp_path)
    s.append(320)
    s.sync()
    fast, slow = FakeSocket(), FakeSocket()
    fast_seat, _ = s.park(fast)
    slow_seat, reader = s.park(slow)
    slow.open = False  # over the high-water mark: its own send must wait (stall watchdog)
    s.append(320)
    s.sync()
    await asyncio.wait_for(slow_seat.woken, WAIT)
    assert slow.frames == [] and slow_seat.mark.sample == 320
    assert reader.sample == 320  # its own reader is still where it was: nothing skipped
    await settle()
    assert fast_seat.mark.sample == 640 and fast.audio(320) == pcm(320, 320)
    s.fanout.close()


@in_loop
async def test_a_gap_goes_back_to_each_listener_and_they_resume_exactly(tmp_path: Path) -> None:
    s = Setup(tmp_path)
    s.append(320)
    s.sync()
    sock = FakeSocket()
    seat, reader = s.park(sock)
    s.append(320)
    s.sync()
    await settle()
    assert seat.mark.sample == 640 and reader.sample == 320  # the fan-out carried it
    s.gap(100)
    s.append(320)
    s.sync()
    await asyncio.wait_for(seat.woken, WAIT)
    s.fanout.leave(seat)
    # the listener resumes from the fan-out's mark: the gap, then the audio after it
    reader.seek(seat.mark)
    pieces = reader.read(s.stream.durable, 1 << 20)
    assert [type(p).__name__ for p in pieces] == ["GapPiece", "AudioPiece"]
    assert pieces[0].start_sample == 640 and pieces[1].start_sample == 740
    assert isinstance(pieces[1], AudioPiece) and pieces[1].data == pcm(740, 320)
    s.fanout.close()


@in_loop
async def test_finalizing_and_a_failed_read_release_everyone(tmp_path: Path) -> None:
    s = Setup(tmp_path)
    s.append(320)
    s.sync()
    seat, _ = s.park(FakeSocket())
    s.stream.finalized = True
    s.sync()
    await asyncio.wait_for(seat.woken, WAIT)
    s.stream.finalized = False
    seat, _ = s.park(FakeSocket())  # reopens the head it closed
    head: Any = s.fanout._head
    assert head is not None
    head.close()  # the next read fails (EBADF)
    s.append(320)
    s.sync()
    await asyncio.wait_for(seat.woken, WAIT)
    assert seat.mark.sample == 320
    s.fanout.close()


@in_loop
async def test_a_stream_gone_from_the_registry_releases_everyone(tmp_path: Path) -> None:
    s = Setup(tmp_path)
    listed = [True]
    s.fanout.close()
    s.fanout = Fanout(cast(Stream, s.stream), s.open_head, lambda m, b: None, 32 * 1024,
                      lambda: listed[0])
    seat, _ = s.park(FakeSocket())
    listed[0] = False  # deleted: the listener's own loop closes with 4404
    s.append(320)
    s.sync()
    await asyncio.wait_for(seat.woken, WAIT)
    assert seat.mark.sample == 0
    s.fanout.close()


@in_loop
async def test_a_newcomer_starts_at_the_shared_readers_record(tmp_path: Path) -> None:
    s = Setup(tmp_path)
    for _ in range(50):
        s.append(320)
    s.sync()
    seat, reader = s.park(FakeSocket())
    assert s.fanout.start_mark(0) is None  # before the head: from the file's start
    start = s.fanout.start_mark(50 * 320)  # `from=live`: no scan of 50 record headers
    assert start is not None and start == seat.mark
    s.append(320)
    s.sync()
    await settle()
    assert s.fanout.start_mark(50 * 320) is None  # the head moved on to 51 * 320
    newcomer = JournalReader(s.path, FMT, 51 * 320)  # `from=live` now
    mark = s.fanout.start_mark(51 * 320)
    assert mark is not None and mark == seat.mark
    newcomer.seek(mark)
    s.append(320)
    s.sync()
    [piece] = newcomer.read(s.stream.durable, 1 << 20)
    assert isinstance(piece, AudioPiece) and piece.data == pcm(51 * 320, 320)
    # a reopened stream has a new journal: the old offsets mean nothing there
    s.stream.journal = Journal.create(tmp_path / "other.bin", fsync=False)
    assert s.fanout.start_mark(50 * 320) is None
    s.fanout.close()


@in_loop
async def test_close_releases_and_stops(tmp_path: Path) -> None:
    s = Setup(tmp_path)
    seat, _ = s.park(FakeSocket())
    s.fanout.close()
    await asyncio.wait_for(seat.woken, WAIT)


def test_live_listeners_share_and_get_the_source_exactly(tmp_path: Path) -> None:
    """Real server, real sockets: 5 listeners at the live end get every frame through the
    fan-out, byte-identical; a sixth connects later and catches up by itself."""
    with in_process(tmp_path / "data") as srv:
        hub = srv.service.listeners
        audio = frames(30, seed=7)
        url = srv.url.replace("/v1/stream", "/v1/streams/s1/listen?from=start")
        with Client(srv.url) as client:
            client.hello("s1")
            client.stream(0, audio[:1])  # the stream exists: listeners may connect
            listeners = [connect(url, compression=None, legacy=True) for _ in range(5)]
            for ws in listeners:
                assert '"listening"' in str(ws.recv(WAIT))
            for k in range(1, len(audio)):
                client.stream(k, audio[k:k + 1])  # one frame, one sync, one ack
                if k == 20:
                    listeners.append(connect(url, compression=None, legacy=True))
                    assert '"listening"' in str(listeners[-1].recv(WAIT))
            total = sum(len(f) for f in audio)
            for ws in listeners:
                out = bytearray()
                while len(out) < total:
                    msg = ws.recv(WAIT)
                    assert isinstance(msg, bytes), msg
                    (start,) = AUDIO_HEADER.unpack_from(msg)
                    assert start * FMT.block_align == len(out)  # in order, nothing twice
                    out += msg[AUDIO_HEADER.size:]
                assert bytes(out) == b"".join(audio)
                ws.close()
        assert hub.shared_messages >= 5 * 20  # the live ones were fed by the fan-out

"""The baseline: a minimal sender and receiver built directly on `websockets`.

No reliability features at all: no handshake, no resume, no replay, no window, no dedupe,
no CRC, no JSON, no sessions. What it keeps is what makes an ack mean "durable", exactly
like the ingest server: the receiver appends each message's payload to a file with one
`os.write`, fsyncs in a worker thread with group commit (one fsync covers everything
written before it started), and then acks cumulatively by seq. It marks what Python,
`websockets` and this machine allow; our pipeline is reported as a ratio to it.

Wire format (binary only):

    client -> server   seq u64 | count u32 | payload      (`count` frames, concatenated)
    server -> client   next_seq u64                       (every seq below it is fsync'd)

Endpoint: ``ws://127.0.0.1:PORT/<stream_id>``; the file is ``DATA_DIR/<stream_id>.pcm``.

Run the receiver by hand::

    python -m tools.bench.baseline --port 9100 --data-dir /tmp/baseline-data
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import os
import re
import resource
import signal
import struct
import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

ITEM = struct.Struct("<QI")  # seq, count
ACK = struct.Struct("<Q")  # next_seq
LISTENING_PREFIX = "baseline listening on "
STREAM_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
MAX_MESSAGE_BYTES = 1 << 20
IO_THREADS = 16  # as the ingest server (ingest_server/service.py)


# -- receiver ---------------------------------------------------------------------------


class _Stream:
    """One connection's file and its written / durable positions (in seqs)."""

    def __init__(self, ws: ServerConnection, fd: int) -> None:
        self.ws = ws
        self.fd = fd
        self.written = 0
        self.durable = 0

    async def ack(self, upto: int) -> None:
        self.durable = upto
        with contextlib.suppress(ConnectionClosed):
            await self.ws.send(ACK.pack(upto))


class _Receiver:
    """`commit="stream"`: each connection has its own group-commit flusher (as ours does).

    `commit="global"`: one flusher for the whole process makes every dirty file durable with
    a single syncfs(2) and then acks each stream what that covered — cross-stream group
    commit, the change proposed for the ingest server (docs/performance.md).
    """

    def __init__(self, data_dir: Path, commit: str) -> None:
        self.data_dir = data_dir
        self.commit = commit
        self.executor = ThreadPoolExecutor(IO_THREADS, thread_name_prefix="baseline-io")
        self._dirty: set[_Stream] = set()
        self._wake = asyncio.Event()
        self._global: asyncio.Task[None] | None = None
        self._dir_fd = os.open(data_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)

    async def handle(self, ws: ServerConnection) -> None:
        stream_id = ws.request.path.lstrip("/") if ws.request is not None else ""
        if STREAM_ID_RE.fullmatch(stream_id) is None:
            await ws.close(1008, "bad stream id")
            return
        fd = os.open(self.data_dir / f"{stream_id}.pcm",
                     os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND | os.O_CLOEXEC, 0o644)
        stream = _Stream(ws, fd)
        if self.commit == "global":
            if self._global is None:
                self._global = asyncio.create_task(self._global_flusher())
            await self._receive(stream, self._mark_dirty)
            while stream.durable != stream.written and not self._global.done():
                await asyncio.sleep(0.001)  # the next global commit covers it
            os.close(fd)
            return
        wake = asyncio.Event()
        task = asyncio.create_task(self._stream_flusher(stream, wake))
        try:
            await self._receive(stream, lambda _: wake.set())
        finally:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
            if stream.written != stream.durable:
                await asyncio.get_running_loop().run_in_executor(self.executor, os.fsync, fd)
            os.close(fd)

    async def _receive(self, stream: _Stream, written: Callable[[_Stream], None]) -> None:
        with contextlib.suppress(ConnectionClosed):
            async for message in stream.ws:
                if not isinstance(message, bytes):
                    continue
                seq, count = ITEM.unpack_from(message)
                os.write(stream.fd, memoryview(message)[ITEM.size:])
                stream.written = seq + count
                written(stream)

    async def _stream_flusher(self, stream: _Stream, wake: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await wake.wait()
            wake.clear()
            target = stream.written
            if target != stream.durable:
                await loop.run_in_executor(self.executor, os.fsync, stream.fd)
                await stream.ack(target)

    def _mark_dirty(self, stream: _Stream) -> None:
        self._dirty.add(stream)
        self._wake.set()

    async def _global_flusher(self) -> None:
        loop = asyncio.get_running_loop()
        libc = ctypes.CDLL(None, use_errno=True)
        while True:
            await self._wake.wait()
            self._wake.clear()
            batch = [(s, s.written) for s in self._dirty]
            self._dirty.clear()
            if not batch:
                continue
            rc = await loop.run_in_executor(self.executor, libc.syncfs, self._dir_fd)
            if rc != 0:
                raise OSError(ctypes.get_errno(), "syncfs failed")
            for stream, upto in batch:
                await stream.ack(upto)


async def serve_forever(host: str, port: int, data_dir: Path, commit: str = "stream") -> None:
    data_dir.mkdir(parents=True, exist_ok=True)
    receiver = _Receiver(data_dir, commit)
    stop = asyncio.get_running_loop().create_future()
    for sig in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set_result, None)
    async with serve(receiver.handle, host, port, compression=None, ping_interval=None,
                     max_size=MAX_MESSAGE_BYTES, server_header=None) as server:
        real_port = next(iter(server.sockets)).getsockname()[1]
        print(f"{LISTENING_PREFIX}ws://{host}:{real_port}/ (data dir {data_dir})", flush=True)
        await stop
    receiver.executor.shutdown(wait=True)


def raise_fd_limit() -> None:
    """Many streams need more descriptors than the usual soft limit (as the ingest server)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else 65536
    if soft != resource.RLIM_INFINITY and soft < target:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--data-dir", type=Path, required=True)
    ap.add_argument("--commit", choices=("stream", "global"), default="stream",
                    help="fsync per connection (like the ingest server; default) or one "
                    "syncfs for all streams")
    args = ap.parse_args(argv)
    if args.host not in ("127.0.0.1", "::1", "localhost"):
        print("the baseline receiver is loopback-only", file=sys.stderr)
        return 2
    raise_fd_limit()
    asyncio.run(serve_forever(args.host, args.port, args.data_dir, args.commit))
    return 0


# -- sender -----------------------------------------------------------------------------


async def send_backlog(port: int, stream_id: str, payload: bytes, frame_bytes: int,
                       frames_per_message: int) -> tuple[float, float]:
    """Send `payload` (whole frames) as fast as possible; return (connect_s, transfer_s).

    transfer_s runs from the open connection to the ack covering the last frame.
    """
    t0 = time.perf_counter()
    async with connect(f"ws://127.0.0.1:{port}/{stream_id}", compression=None, proxy=None,
                       ping_interval=None, max_size=MAX_MESSAGE_BYTES, close_timeout=1.0) as ws:
        t1 = time.perf_counter()
        total = len(payload) // frame_bytes
        step = frames_per_message * frame_bytes
        view = memoryview(payload)
        seq = 0

        async def acks() -> None:
            async for msg in ws:
                assert isinstance(msg, bytes)
                if ACK.unpack(msg)[0] >= total:
                    return

        waiter = asyncio.create_task(acks())
        for off in range(0, len(payload), step):
            chunk = view[off : off + step]
            count = len(chunk) // frame_bytes
            await ws.send(ITEM.pack(seq, count) + chunk)
            seq += count
        await waiter
        t2 = time.perf_counter()
    return t1 - t0, t2 - t1


async def send_live(port: int, stream_id: str, frame: bytes, frames: int,
                    period: float) -> list[float]:
    """Send one frame every `period` seconds; per-frame send-to-ack seconds, in seq order."""
    sent_at: deque[float] = deque()
    latencies: list[float] = []
    async with connect(f"ws://127.0.0.1:{port}/{stream_id}", compression=None, proxy=None,
                       ping_interval=None, max_size=MAX_MESSAGE_BYTES, close_timeout=1.0) as ws:

        async def acks() -> None:
            acked = 0
            async for msg in ws:
                assert isinstance(msg, bytes)
                (next_seq,) = ACK.unpack(msg)
                now = time.perf_counter()
                while acked < next_seq:
                    latencies.append(now - sent_at.popleft())
                    acked += 1
                if acked >= frames:
                    return

        waiter = asyncio.create_task(acks())
        start = time.perf_counter()
        for seq in range(frames):
            delay = start + seq * period - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            sent_at.append(time.perf_counter())
            await ws.send(ITEM.pack(seq, 1) + frame)
        await asyncio.wait_for(waiter, 10.0)
    return latencies


if __name__ == "__main__":
    sys.exit(main())

"""`echopanel-listen` (also `python -m uplink.listen`): write a stream to a file or stdout
while it is captured (docs/listeners.md).

    echopanel-listen --stream-id X --output - | sox -t raw -r 16000 -e signed -b 16 -c 1 - out.wav
    echopanel-listen --stream-id X --output X.wav          # rerun after a kill: it continues
    echopanel-listen --follow-new recordings/               # every new stream, one file each

Gaps are written as silence (so the output lines up sample for sample with the stream and
with the server's audio.wav) and reported on stderr. The listener reconnects and resumes on
its own (uplink/listen.py); rerun on an existing output file, it continues after the last
whole sample frame in it. Exit status: 0 after the stream's end, 1 on a fatal refusal
(unknown stream, bad token), 2 on a usage error, 130 on Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.metadata
import json
import logging
import os
import random
import re
import struct
import sys
import threading
import urllib.request
from pathlib import Path
from typing import Any, BinaryIO

from .audio import AudioFormat, wav_header
from .config import Servers, listen_servers
from .listen import Chunk, ChunkKind, ListenConfig, ListenError, ListenStream
from .policy import Backoff, BackoffConfig

DEFAULT_SERVER = "ws://127.0.0.1:8765"
TOKEN_ENV = "ECHOPANEL_LISTEN_TOKEN"
SERVER_ENV = "ECHOPANEL_SERVER"
HEADER_EVERY = 1.0  # seconds between WAV header updates: a killed listener leaves a valid file


class Output:
    """A WAV or raw file (or stdout) that grows chunk by chunk, gaps as silence."""

    def __init__(self, target: BinaryIO, fmt: AudioFormat, *, wav: bool, seekable: bool,
                 frames: int) -> None:
        self.target = target
        self.fmt = fmt
        self.wav = wav and seekable
        self.frames = frames  # sample frames in the file
        self._header_at = 0.0
        if wav and frames == 0:
            # a pipe cannot be patched at the end: announce the largest size (the usual
            # convention for streamed WAV; readers stop at the end of the pipe)
            target.write(wav_header(fmt, 0 if seekable else (0xFFFFFF00 // fmt.block_align)))
        elif wav and not seekable:
            raise ValueError("cannot continue a WAV on a pipe")

    def write(self, chunk: Chunk, now: float) -> None:
        if chunk.kind is ChunkKind.AUDIO:
            self.target.write(chunk.data)
        elif chunk.kind is ChunkKind.GAP:
            silence = chunk.frames * self.fmt.block_align
            while silence:
                n = min(silence, 1 << 20)
                self.target.write(bytes(n))
                silence -= n
        else:
            return
        self.frames = chunk.end
        if self.wav and now - self._header_at >= HEADER_EVERY:
            self.finish_header()
            self._header_at = now

    def finish_header(self) -> None:
        self.target.flush()
        if not self.wav:
            return
        end = self.target.tell()
        self.target.seek(0)
        self.target.write(wav_header(self.fmt, self.frames))
        self.target.seek(end)
        self.target.flush()


def existing_frames(path: Path, fmt_hint: AudioFormat | None) -> tuple[int, AudioFormat | None]:
    """Whole sample frames already in `path` (a WAV we wrote, or raw with `fmt_hint`); a torn
    last frame (a kill mid-write) is cut off."""
    size = path.stat().st_size
    if path.suffix.lower() == ".wav":
        with open(path, "rb") as f:
            head = f.read(4096)
        data_at, fmt = _parse_wav(head)
        frames = (size - data_at) // fmt.block_align
        with open(path, "r+b") as f:
            f.truncate(data_at + frames * fmt.block_align)
        return frames, fmt
    if fmt_hint is None:
        raise ValueError("a raw file is continued only with the stream's format known")
    frames = size // fmt_hint.block_align
    with open(path, "r+b") as f:
        f.truncate(frames * fmt_hint.block_align)
    return frames, fmt_hint


def _parse_wav(head: bytes) -> tuple[int, AudioFormat]:
    if head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        raise ValueError("not a WAV file")
    at, block_align, rate, channels = 12, 0, 0, 0
    while at + 8 <= len(head):
        cid, size = head[at:at + 4], struct.unpack_from("<I", head, at + 4)[0]
        if cid == b"fmt ":
            _, channels, rate, _, block_align, bits = struct.unpack_from("<HHIIHH", head, at + 8)
        elif cid == b"data":
            if not block_align:
                raise ValueError("WAV data before its format")
            dtype = {2: "int16", 3: "int24"}.get(block_align // channels, "int32")
            if bits == 32 and head.find(b"fact") != -1:
                dtype = "float32"
            return at + 8, AudioFormat.from_json({"sample_rate": rate, "channels": channels,
                                                  "sample_type": dtype})
        at += 8 + size + (size & 1)
    raise ValueError("no data chunk in the WAV header")


def http_base(server: str) -> str:
    """A listener base URL (ws://H:P[/prefix]) → the REST API's base (http://H:P[/prefix])."""
    base = server.replace("ws://", "http://", 1).replace("wss://", "https://", 1).rstrip("/")
    return base.removesuffix("/v1/stream")


def stream_format(server: Servers, stream_id: str, token: str | None) -> AudioFormat:
    """The stream's format from the REST API (to continue a raw file): the first server that
    answers (any node serves it, docs/scale-out.md)."""
    error: OSError | None = None
    for base in map(http_base, listen_servers(server)):
        req = urllib.request.Request(f"{base}/v1/streams/{stream_id}",
                                     headers={"Authorization": f"Bearer {token}"} if token else {})
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return AudioFormat.from_json(json.load(resp)["format"])
        except OSError as e:
            error = e
    assert error is not None
    raise error


async def listen_to_file(server: Servers, stream_id: str, output: str, *, fmt_name: str,
                         start: int | str | None, token: str | None, config: ListenConfig,
                         quiet: bool = False) -> int:
    loop = asyncio.get_running_loop()
    to_stdout = output == "-"
    wav = fmt_name == "wav" if fmt_name else (not to_stdout and output.lower().endswith(".wav"))
    frames = 0
    fmt: AudioFormat | None = None
    path = None if to_stdout else Path(output)
    if path is not None and start is None and path.exists() and path.stat().st_size:
        hint = None if wav else stream_format(server, stream_id, token)
        frames, fmt = existing_frames(path, hint)
        say(quiet, f"continuing {path} after its {frames} sample frames")
        start = frames
    stream = ListenStream(server, stream_id, 0 if start is None else start, token=token,
                          config=config)
    target: BinaryIO
    if to_stdout:
        target = sys.stdout.buffer
    else:
        assert path is not None
        target = open(path, "r+b" if frames else "wb")  # noqa: SIM115 - closed below
        target.seek(0, os.SEEK_END)
    out: Output | None = None
    try:
        async for chunk in stream:
            if out is None:
                assert stream.fmt is not None
                if fmt is not None and fmt != stream.fmt:
                    raise ListenError(f"{output} holds {fmt}, the stream is {stream.fmt}")
                out = Output(target, stream.fmt, wav=wav, seekable=not to_stdout,
                             frames=frames)
            if chunk.kind is ChunkKind.GAP:
                say(quiet, f"gap: samples {chunk.position}..{chunk.end} were lost by the "
                           "capture (written as silence)")
            elif chunk.kind is ChunkKind.STATE:
                say(quiet, f"capture {chunk.state} at sample {chunk.position}")
            elif chunk.kind is ChunkKind.END:
                say(quiet, f"stream {chunk.end_reason} at sample {chunk.position}")
            out.write(chunk, loop.time())
    finally:
        if out is not None:
            out.finish_header()
        await stream.aclose()
        if not to_stdout:
            target.close()
    return 0


def say(quiet: bool, text: str) -> None:
    if not quiet:
        print(f"echopanel-listen: {text}", file=sys.stderr, flush=True)


async def follow_new(server: Servers, directory: Path, *, token: str | None,
                     config: ListenConfig, quiet: bool) -> int:
    """Every stream the server announces (the snapshot's open ones, then each `opened`) is
    written to DIRECTORY/<stream_id>.wav, each by its own listener, until Ctrl-C."""
    directory.mkdir(parents=True, exist_ok=True)
    events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    loop = asyncio.get_running_loop()
    stop = threading.Event()
    bases = [http_base(url) for url in listen_servers(server)]

    def read_events() -> None:
        backoff = Backoff(BackoffConfig(), random.Random())
        turn = 0
        while not stop.is_set():
            base = bases[turn % len(bases)]  # several servers: the next one after a failure
            req = urllib.request.Request(f"{base}/v1/events", headers=(
                {"Authorization": f"Bearer {token}"} if token else {}))
            try:
                with urllib.request.urlopen(req, timeout=60) as resp:
                    backoff.reset()
                    for raw in resp:
                        line = raw.decode().rstrip("\n")
                        if line.startswith("data: "):
                            loop.call_soon_threadsafe(events.put_nowait, json.loads(line[6:]))
                        if stop.is_set():
                            return
            except OSError as e:
                say(quiet, f"event stream from {base}: {e}; reconnecting")
            turn += 1
            if turn % len(bases) == 0:  # a whole round failed: back off (one server: always)
                stop.wait(backoff.next_delay())

    threading.Thread(target=read_events, daemon=True, name="listen-events").start()
    running: dict[str, asyncio.Task[int]] = {}

    def begin(stream_id: str) -> None:
        task = running.get(stream_id)
        if task is not None and not task.done():
            return
        say(quiet, f"new stream {stream_id} -> {directory / (stream_id + '.wav')}")
        running[stream_id] = asyncio.create_task(listen_to_file(
            server, stream_id, str(directory / f"{stream_id}.wav"), fmt_name="wav",
            start=None, token=token, config=config, quiet=quiet))

    try:
        while True:
            event = await events.get()
            if event.get("type") == "snapshot":
                for s in event.get("streams", []):
                    begin(str(s["stream_id"]))
            elif event.get("event") in ("opened", "resumed"):
                begin(str(event["stream_id"]))
    finally:
        stop.set()
        for task in running.values():
            task.cancel()
        await asyncio.gather(*running.values(), return_exceptions=True)


def _version() -> str:
    try:
        return importlib.metadata.version("echopanel-uplink")
    except importlib.metadata.PackageNotFoundError:  # a source tree that is not installed
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="echopanel-listen",
        description="Write a stream to a file or stdout while it is captured, exactly once: "
        "reconnects and resumes by sample position; gaps are written as silence.")
    p.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    p.add_argument("--server", action="append", default=None, metavar="URL[,URL...]",
                   help="the ingest server; several (comma-separated or repeated) are nodes "
                   "of one service: the listener keeps the one that works and resumes on the "
                   f"next (env {SERVER_ENV}, comma form; default: {DEFAULT_SERVER})")
    p.add_argument("--stream-id", help="the stream to listen to")
    p.add_argument("--token", default=os.environ.get(TOKEN_ENV),
                   help=f"bearer token (default: ${TOKEN_ENV})")
    p.add_argument("--from", dest="start", default=None,
                   help="where to start: start (default), live, a sample number, or seconds "
                   "like 12.5s; default for an existing --output file: after its last sample")
    p.add_argument("--output", default="-", help="FILE.wav, FILE.raw, or - for stdout "
                   "(default: -)")
    p.add_argument("--format", choices=("wav", "raw"), default=None,
                   help="output format (default: wav for *.wav files, raw otherwise)")
    p.add_argument("--follow-new", metavar="DIR", type=Path,
                   help="write every stream the server announces to DIR/<stream_id>.wav")
    p.add_argument("--wait", action="store_true",
                   help="wait for a stream that does not exist yet instead of exiting 1")
    p.add_argument("--quiet", action="store_true", help="no messages on stderr")
    return p


_START = re.compile(r"start|live|\d+|\d+(\.\d+)?s")


def parse_start(text: str | None) -> int | str | None:
    """`--from`: start, live, a sample number or seconds like 12.5s (docs/protocol.md §11);
    anything else is a usage error here, before any connection."""
    if text is None:
        return None
    if _START.fullmatch(text) is None:
        raise ValueError(f"--from {text!r}: use start, live, a sample number or seconds "
                         "like 12.5s")
    return int(text) if text.isdigit() else text


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        start = parse_start(args.start)
        servers = listen_servers(args.server or [os.environ.get(SERVER_ENV) or DEFAULT_SERVER])
    except ValueError as e:
        parser.error(str(e))
    if not args.quiet:  # say why it is waiting: refused, retrying in 0.4 s, ...
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("echopanel-listen: %(message)s"))
        listen_log = logging.getLogger("uplink.listen")
        listen_log.addHandler(handler)
        listen_log.setLevel(logging.INFO)
        listen_log.propagate = False
    config = ListenConfig(wait_for_stream=args.wait or args.follow_new is not None)
    try:
        if args.follow_new is not None:
            return asyncio.run(follow_new(servers, args.follow_new, token=args.token,
                                          config=config, quiet=args.quiet))
        if not args.stream_id:
            print("echopanel-listen: --stream-id (or --follow-new DIR) is required",
                  file=sys.stderr)
            return 2
        return asyncio.run(listen_to_file(servers, args.stream_id, args.output,
                                          fmt_name=args.format or "", token=args.token,
                                          start=start, config=config,
                                          quiet=args.quiet))
    except ListenError as e:
        print(f"echopanel-listen: {e}", file=sys.stderr)
        return 1
    except (ValueError, OSError) as e:
        print(f"echopanel-listen: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    finally:
        with contextlib.suppress(OSError):
            sys.stdout.flush()

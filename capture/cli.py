"""`echopanel-capture`: a source → frame cutter → ring → uplink, wired and supervised.

Exit status: 0 only after the server acked end-of-stream; 1 on a fatal error (one line on
stderr saying why, and how much audio was not delivered); 2 on bad usage; 130 when a second
Ctrl-C abandoned the drain.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import secrets
import signal
import sys
import time
from collections.abc import Sequence
from typing import Any, TextIO

from capture.frames import FrameCutter
from capture.source import Source, SourceError
from uplink.client import UplinkClient, UplinkResult, endpoint_url
from uplink.config import PROFILES, UplinkConfig, build_config, flat_option_names
from uplink.core import ConnectionState
from uplink.ring import OverflowPolicy, RingBuffer

PROG = "echopanel-capture"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Stream audio (a WAV file or the microphone) to an echopanel ingest server, "
        "losslessly, through disconnects.",
    )
    p.add_argument("--server", default=os.environ.get("ECHOPANEL_SERVER", "ws://127.0.0.1:8765"),
                   help="ws://HOST:PORT (the endpoint path is added) or a full ws:// URL "
                   "(env ECHOPANEL_SERVER; default %(default)s)")
    p.add_argument("--stream-id", help="stream id (default: a new one, printed on stdout)")
    p.add_argument("--input", metavar="FILE.wav", help="stream this WAV file instead of a microphone")
    p.add_argument("--speed", type=float, default=1.0,
                   help="file playback speed: 1 = real time, 0 = as fast as the link allows")
    p.add_argument("--token", default=os.environ.get("ECHOPANEL_TOKEN"),
                   help="bearer token for the server (env ECHOPANEL_TOKEN)")
    p.add_argument("--profile", choices=sorted(PROFILES), default=os.environ.get("ECHOPANEL_PROFILE", "live"),
                   help="uplink defaults (env ECHOPANEL_PROFILE; default %(default)s)")
    p.add_argument("--overflow", choices=[o.value for o in OverflowPolicy],
                   help="when the buffer is full: block the source or drop the oldest audio "
                   "(default: block for --speed 0, drop-oldest for live sources)")
    p.add_argument("--quiet", action="store_true", help="print nothing but errors")
    tuning = p.add_argument_group("uplink tuning (each also ECHOPANEL_<NAME>)")
    for name in flat_option_names():
        tuning.add_argument(f"--{name.replace('_', '-')}", dest=f"opt_{name}", metavar="VALUE")
    return p


def make_stream_id() -> str:
    return time.strftime("capture-%Y%m%d-%H%M%S-") + secrets.token_hex(3)


def open_source(args: argparse.Namespace) -> Source:
    if args.input:
        from capture.wav_source import WavFileSource

        return WavFileSource(args.input, speed=args.speed)
    raise SourceError("no --input given (microphone capture is not available in this build)")


class StatusPrinter:
    """State changes on stderr, one line each (the live panel lives in capture.status)."""

    def __init__(self, out: TextIO, started: float, quiet: bool) -> None:
        self.out = out
        self.started = started
        self.quiet = quiet

    def __call__(self, state: ConnectionState) -> None:
        if self.quiet:
            return
        now = time.monotonic()
        print(f"[{now - self.started:7.2f}s] {state.describe(now)}", file=self.out, flush=True)


async def run_capture(args: argparse.Namespace, config: UplinkConfig) -> int:
    source = open_source(args)
    fmt = source.format
    frame_samples = max(1, round(fmt.sample_rate * config.frame_ms / 1000))
    if args.overflow:
        policy = OverflowPolicy(args.overflow)
    else:
        policy = OverflowPolicy.BLOCK if args.input and args.speed == 0 else OverflowPolicy.DROP_OLDEST
    ring = RingBuffer(fmt, frame_samples, config.buffer_seconds, policy)
    stream_id = args.stream_id or make_stream_id()
    client = UplinkClient(args.server, ring, stream_id, config, token=args.token)
    started = time.monotonic()
    client.on_state(StatusPrinter(sys.stderr, started, args.quiet))
    print(f"stream_id: {stream_id}", flush=True)
    if not args.quiet:
        print(
            f"{PROG}: {source.description} → {client.url} "
            f"(buffer {ring.capacity_seconds:.0f} s = {ring.memory_bytes / 1e6:.1f} MB, {policy.value})",
            file=sys.stderr,
            flush=True,
        )

    loop = asyncio.get_running_loop()
    interrupts = 0

    def on_interrupt() -> None:
        nonlocal interrupts
        interrupts += 1
        if interrupts == 1:
            held = ring.stats().buffered_seconds
            print(f"\n{PROG}: stopping capture, delivering {held:.1f} s still buffered "
                  "(Ctrl-C again to quit at once)", file=sys.stderr, flush=True)
            source.stop()
        else:
            client.give_up("interrupted before everything was delivered")

    with contextlib.suppress(NotImplementedError):
        loop.add_signal_handler(signal.SIGINT, on_interrupt)
        loop.add_signal_handler(signal.SIGTERM, on_interrupt)
    source.start(FrameCutter(ring))
    try:
        result = await client.run()
    finally:
        source.stop()
        await asyncio.to_thread(source.wait, 5.0)
    return report(result, source, started, interrupts, args.quiet)


def report(result: UplinkResult, source: Source, started: float, interrupts: int, quiet: bool) -> int:
    s = result.stats
    c = s.counters
    elapsed = time.monotonic() - started
    if result.ok:
        if not quiet:
            fmt = source.format
            print(
                f"{PROG}: done in {elapsed:.1f} s: {c.acked_seq} frames "
                f"({c.acked_sample / fmt.sample_rate:.2f} s of audio) acked by the server; "
                f"{c.reconnects} reconnects, {c.frames_replayed} frames replayed, "
                f"{s.ring.frames_dropped} frames dropped",
                file=sys.stderr,
            )
        if source.error is not None:
            print(f"{PROG}: warning: source stopped early: {source.error}", file=sys.stderr)
        return 0
    held = s.ring.buffered_seconds
    print(
        f"{PROG}: error: {result.error}; {held:.2f} s of captured audio "
        f"({s.ring.held_frames} frames) not delivered",
        file=sys.stderr,
    )
    return 130 if interrupts >= 2 else 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    overrides: dict[str, Any] = {
        name: getattr(args, f"opt_{name}") for name in flat_option_names()
        if getattr(args, f"opt_{name}") is not None
    }
    try:
        endpoint_url(args.server)
        config = build_config(args.profile, overrides)
    except ValueError as e:
        parser.error(str(e))
    try:
        return asyncio.run(run_capture(args, config))
    except SourceError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())

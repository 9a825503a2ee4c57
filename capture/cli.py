"""`echopanel-capture`: a source → frame cutter → ring → uplink, wired and supervised.

Exit status: 0 only after the server acked end-of-stream; 1 on a fatal error (one line on
stderr saying why, and how much audio was not delivered); 2 on bad usage; 3 when everything
captured was delivered but the source itself failed early (e.g. a read error in the file);
130 when a second Ctrl-C abandoned the drain.
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
from collections.abc import Callable, Sequence
from typing import Any, TextIO

from capture.frames import FrameCutter
from capture.source import FrameSink, Source, SourceError
from capture.status import StatusReporter
from capture.tee import TeeSink
from uplink.audio import SampleType
from uplink.client import UplinkClient, UplinkResult, endpoint_url
from uplink.config import PROFILES, UplinkConfig, build_config, flat_option_names
from uplink.ring import OverflowPolicy, RingBuffer

PROG = "echopanel-capture"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Stream audio (the microphone or a WAV file) to an echopanel ingest server, "
        "losslessly, through disconnects.",
    )
    env = os.environ.get
    p.add_argument("--server", default=env("ECHOPANEL_SERVER", "ws://127.0.0.1:8765"),
                   help="ws://HOST:PORT (the endpoint path is added) or a full ws:// URL "
                   "(env ECHOPANEL_SERVER; default %(default)s)")
    p.add_argument("--stream-id", help="stream id (default: a new one, printed on stdout)")
    p.add_argument("--token", default=env("ECHOPANEL_TOKEN"),
                   help="bearer token for the server (env ECHOPANEL_TOKEN)")
    p.add_argument("--profile", choices=sorted(PROFILES), default=env("ECHOPANEL_UPLINK_PROFILE", "live"),
                   help="uplink defaults (env ECHOPANEL_UPLINK_PROFILE; default %(default)s)")
    p.add_argument("--duration", type=float, metavar="SECONDS",
                   help="stop capturing after this long (then deliver what is buffered)")
    p.add_argument("--tee", metavar="FILE.wav", help="also keep a local copy of what was captured")
    p.add_argument("--overflow", choices=[o.value for o in OverflowPolicy],
                   help="when the buffer is full: block the source or drop the oldest audio "
                   "(default: block for a file at --speed 0, drop-oldest for live sources)")
    out = p.add_argument_group("output")
    out.add_argument("--quiet", action="store_true", help="print nothing but errors")
    out.add_argument("--status", choices=["auto", "panel", "lines"], default="auto",
                     help="live panel (terminal) or one line per state change "
                     "(default: panel when stderr is a terminal)")
    out.add_argument("--status-json", metavar="PATH",
                     help="write JSON-lines status records to PATH ('-' for stderr)")
    src = p.add_argument_group("file input")
    src.add_argument("--input", metavar="FILE.wav", help="stream this WAV file instead of a microphone")
    src.add_argument("--speed", type=float, default=1.0,
                     help="file playback speed: 1 = real time, 0 = as fast as the link allows")
    mic = p.add_argument_group("microphone (used when --input is not given)")
    mic.add_argument("--list-devices", action="store_true", help="list input devices and exit")
    mic.add_argument("--device", metavar="NAME_OR_INDEX",
                     help="input device by index or name substring (default: the default input)")
    mic.add_argument("--rate", type=int, default=16_000, help="sample rate (default %(default)s)")
    mic.add_argument("--channels", type=int, default=1, help="channels (default %(default)s)")
    mic.add_argument("--dtype", choices=[t.value for t in SampleType], default="int16",
                     help="sample type (default %(default)s)")
    mic.add_argument("--blocksize", type=int, help="samples per callback (default: one frame)")
    mic.add_argument("--latency", default="0.1",
                     help="PortAudio input latency: seconds, 'low' or 'high' (default %(default)s)")
    tuning = p.add_argument_group("uplink tuning (each also env ECHOPANEL_UPLINK_<NAME>)")
    for name in flat_option_names():
        tuning.add_argument(f"--{name.replace('_', '-')}", dest=f"opt_{name}", metavar="VALUE")
    return p


def make_stream_id() -> str:
    return time.strftime("capture-%Y%m%d-%H%M%S-") + secrets.token_hex(3)


def list_devices() -> int:
    from capture.microphone import list_input_devices

    devices = list_input_devices()
    if not devices:
        print("no audio input devices (stream a file with --input FILE.wav)")
        return 1
    print(f"{'':2}{'index':>5}  {'channels':>8}  {'default rate':>12}  name")
    for d in devices:
        mark = "*" if d.is_default else " "
        print(f"{mark:2}{d.index:>5}  {d.max_input_channels:>8}  {d.default_samplerate:>12.0f}  "
              f"{d.name} ({d.hostapi})")
    print("(* = default input; select with --device INDEX or --device NAME_SUBSTRING)")
    return 0


def open_source(
    args: argparse.Namespace,
    frame_samples_for: Callable[[int], int],
    on_event: Callable[[str], None],
) -> Source:
    if args.input:
        from capture.wav_source import WavFileSource

        return WavFileSource(args.input, speed=args.speed)
    from capture.microphone import MicrophoneSource

    device: int | str | None = args.device
    if isinstance(device, str) and device.isdigit():
        device = int(device)
    latency: float | str = args.latency if args.latency in ("low", "high") else float(args.latency)
    return MicrophoneSource(
        device=device,
        sample_rate=args.rate,
        channels=args.channels,
        sample_type=args.dtype,
        blocksize=args.blocksize or frame_samples_for(args.rate),
        latency=latency,
        on_event=on_event,
    )


async def run_capture(args: argparse.Namespace, config: UplinkConfig) -> int:
    def frame_samples_for(rate: int) -> int:
        return max(1, round(rate * config.frame_ms / 1000))

    reporter: StatusReporter | None = None
    pending_events: list[str] = []

    def on_event(message: str) -> None:
        if reporter is not None:
            reporter.event(message)
        else:
            pending_events.append(message)

    source = open_source(args, frame_samples_for, on_event)
    fmt = source.format
    live = not args.input
    if args.overflow:
        policy = OverflowPolicy(args.overflow)
        if live and policy is OverflowPolicy.BLOCK:
            raise SourceError("a microphone cannot wait: --overflow block needs --input")
    else:
        policy = OverflowPolicy.BLOCK if args.input and args.speed == 0 else OverflowPolicy.DROP_OLDEST
    ring = RingBuffer(fmt, frame_samples_for(fmt.sample_rate), config.buffer_seconds, policy)
    stream_id = args.stream_id or make_stream_id()
    client = UplinkClient(args.server, ring, stream_id, config, token=args.token)

    json_out: TextIO | None = None
    if args.status_json:
        json_out = sys.stderr if args.status_json == "-" else open(args.status_json, "a")  # noqa: SIM115
    mode = "quiet" if args.quiet else args.status
    if mode == "auto":
        mode = "panel" if sys.stderr.isatty() else "lines"
    reporter = StatusReporter(client, mode, json_out=json_out,
                              source_stats=getattr(source, "stats", None))

    sink: FrameSink = FrameCutter(ring)
    tee = TeeSink(sink, args.tee, fmt) if args.tee else None
    source.start(tee or sink)  # opens the device: errors surface here, before anything runs
    print(f"stream_id: {stream_id}", flush=True)
    if not args.quiet:
        print(f"{PROG}: {source.description} → {client.url}\n"
              f"{PROG}: buffer {ring.capacity_seconds:.0f} s = {ring.memory_bytes / 1e6:.1f} MB "
              f"({policy.value} when full)", file=sys.stderr, flush=True)
    reporter.start()
    for message in pending_events:
        reporter.event(message)

    loop = asyncio.get_running_loop()
    interrupts = 0
    stopping = False

    def stop_capture() -> None:
        nonlocal stopping
        if stopping:
            return
        stopping = True
        reporter.draining()
        # stopping a microphone joins its monitor thread: keep the event loop free
        loop.run_in_executor(None, source.stop)

    def on_interrupt() -> None:
        nonlocal interrupts
        interrupts += 1
        if not stopping:
            stop_capture()
        else:
            interrupts = max(interrupts, 2)
            client.give_up("interrupted before everything was delivered")

    with contextlib.suppress(NotImplementedError):
        loop.add_signal_handler(signal.SIGINT, on_interrupt)
        loop.add_signal_handler(signal.SIGTERM, on_interrupt)
    timer = loop.call_later(args.duration, stop_capture) if args.duration else None
    try:
        result = await client.run()
    finally:
        if timer is not None:
            timer.cancel()
        await asyncio.to_thread(source.stop)
        await asyncio.to_thread(source.wait, 5.0)
        await reporter.stop()
        if tee is not None:
            await asyncio.to_thread(tee.wait, 10.0)
        if json_out is not None and json_out is not sys.stderr:
            json_out.close()
    if tee is not None and tee.error is not None:
        print(f"{PROG}: warning: --tee {args.tee}: {tee.error}", file=sys.stderr)
    return report(result, source, interrupts, args.quiet)


def report(result: UplinkResult, source: Source, interrupts: int, quiet: bool) -> int:
    s = result.stats
    c = s.counters
    rate = source.format.sample_rate
    if result.ok:
        if not quiet:
            print(
                f"{PROG}: done: {c.acked_seq} frames ({c.acked_sample / rate:.2f} s of audio) "
                f"acked by the server; {c.reconnects} reconnects, {c.frames_replayed} frames "
                f"replayed, {s.ring.frames_dropped} frames dropped",
                file=sys.stderr,
            )
        if source.error is not None:
            print(f"{PROG}: error: the source stopped early: {source.error} (what it captured "
                  "was delivered)", file=sys.stderr)
            return 3
        return 0
    print(
        f"{PROG}: error: {result.error}; {s.ring.buffered_seconds:.2f} s of captured audio "
        f"({s.ring.held_frames} frames) not delivered",
        file=sys.stderr,
    )
    return 130 if interrupts >= 2 else 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.list_devices:
            return list_devices()
    except SourceError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 1
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
    except (SourceError, ValueError, OSError) as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())

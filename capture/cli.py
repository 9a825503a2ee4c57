"""`echopanel-capture`: a source → frame cutter → ring → uplink, wired and supervised.

Exit status (docs/capture.md "Exit status"):

- 0: the server acked end-of-stream and no audio was lost;
- 1: a fatal error — one line saying why, how much audio was not delivered and where it was
  kept (capture/undelivered.py);
- 2: bad usage (including a --stream-id outside the protocol's pattern);
- 3: everything captured was delivered, but the source itself failed early (a read error);
- 4: delivered, but audio was lost on the way — frames the full ring dropped (recorded as
  gaps) or gaps the source reported (microphone overflows, device loss); one line says what;
- 130: a second Ctrl-C abandoned the drain (the undelivered audio is kept as for 1).

With a spool (docs/spool.md) the undelivered audio stays in the spool instead: running
again with the same spool resumes the stream, `--drain` delivers it without capturing.

Human output goes to stderr, except with `--status-json -`: then stderr carries only JSON
lines and the human lines go to stdout, so a supervisor can parse stderr as it is.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import IntEnum
from importlib import metadata
from pathlib import Path
from typing import Any, TextIO

from capture.hooks import HookRunner, parse_hook_command
from capture.notify import build_notifier
from capture.source import FrameSink, Source, SourceError
from capture.spool import ResumeSink, dead_time_samples, default_spool_dir, list_spool
from capture.status import StatusReporter
from capture.tee import TeeSink
from capture.undelivered import (
    UndeliveredAudio,
    default_path,
    first_unacked_sample,
    write_undelivered,
)
from uplink.audio import SampleType
from uplink.client import UplinkResult
from uplink.config import (
    PROFILES,
    UplinkConfig,
    build_config,
    flat_option_names,
    option_help,
    server_urls,
)
from uplink.embed import AsyncUplink, new_stream_id
from uplink.ring import OverflowPolicy, RingBuffer
from uplink.spool import Recovered, Spool, SpoolError, SyncMode, SyncPolicy
from uplink.wire import STREAM_ID_PATTERN, is_valid_stream_id, validate_labels

PROG = "echopanel-capture"
DEFAULT_SERVER = "ws://127.0.0.1:8765"
UNNAMED_SPOOL = "unnamed"  # the default spool of a capture without --stream-id
DISTRIBUTION = "echopanel-uplink"


class ExitStatus(IntEnum):
    OK = 0
    FATAL = 1
    USAGE = 2
    SOURCE_FAILED = 3
    AUDIO_LOST = 4
    ABANDONED = 130


def package_version() -> str:
    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:  # running from a source tree that is not installed
        return "unknown"


def parse_label(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Stream audio (the microphone or a WAV file) to an echopanel ingest server, "
        "losslessly, through disconnects.",
    )
    env = os.environ.get
    p.add_argument("--server", action="append", default=None, metavar="URL[,URL...]",
                   help="ws://HOST:PORT (the endpoint path is added) or a full ws:// URL; "
                   "several (comma-separated or repeated) are nodes of one service: the "
                   "capture keeps the one that works and moves to the next on a reconnect "
                   f"(env ECHOPANEL_SERVER, comma form; default {DEFAULT_SERVER})")
    p.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")
    p.add_argument("--stream-id", help="stream id matching " + STREAM_ID_PATTERN.replace("%", "%%")
                   + " (default: a new one, printed on stdout)")
    p.add_argument("--token", default=None,
                   help="bearer token for the server (env ECHOPANEL_UPLINK_TOKEN; "
                   "ECHOPANEL_TOKEN is read too when it holds a single token)")
    p.add_argument("--cafile", default=env("ECHOPANEL_CAFILE"), metavar="PATH",
                   help="PEM bundle of CA certificates to trust for wss:// (a private CA; "
                   "env ECHOPANEL_CAFILE)")
    p.add_argument("--label", action="append", type=parse_label, default=[], metavar="KEY=VALUE",
                   help="a label stored with the stream (repeatable)")
    p.add_argument("--profile", choices=sorted(PROFILES), default=env("ECHOPANEL_UPLINK_PROFILE", "live"),
                   help="uplink defaults (env ECHOPANEL_UPLINK_PROFILE; default %(default)s)")
    p.add_argument("--duration", type=float, metavar="SECONDS",
                   help="stop capturing after this many seconds of audio (a file: audio "
                   "seconds at any --speed; the microphone: wall-clock), then deliver what is "
                   "buffered")
    p.add_argument("--tee", metavar="FILE.wav", help="also keep a local copy of what was captured "
                   "(crash-safe: its header is kept valid about every second)")
    p.add_argument("--undelivered", metavar="PATH.wav",
                   help="where to keep audio that could not be delivered after a fatal error "
                   "(default: beside --tee, else the current directory, named "
                   "[TEE.]undelivered-STREAM-from-SAMPLE.wav)")
    p.add_argument("--overflow", choices=[o.value for o in OverflowPolicy],
                   help="when the buffer is full: block the source or drop the oldest audio "
                   "(default: block for --input at any --speed, drop-oldest for the "
                   "microphone; drop-oldest with --input simulates a live source)")
    out = p.add_argument_group("output")
    out.add_argument("--quiet", action="store_true", help="print nothing but errors")
    out.add_argument("--status", choices=["auto", "panel", "lines"], default="auto",
                     help="live panel (terminal) or one line per state change "
                     "(default: panel when stderr is a terminal)")
    out.add_argument("--status-json", metavar="PATH",
                     help="write JSON-lines status records to PATH ('-' for stderr)")
    out.add_argument("--notify", action=argparse.BooleanOptionalAction, default=None,
                     help="desktop notifications: connection lost (after 5 s), restored, gave "
                     "up, audio dropped, microphone lost/back; at most one per 30 s per kind "
                     "(default: on for the microphone when a desktop session bus is present)")
    out.add_argument("--on-event", metavar="CMD",
                     help="run CMD (split like a shell would, no shell) for each state change, "
                     "one --status-json record on its stdin; killed after 10 s")
    sp = p.add_argument_group("spool: captured audio survives a crash (docs/spool.md)")
    sp.add_argument("--spool", metavar="DIR",
                    help="keep unacknowledged audio in this directory, so a capture that "
                    "crashed or was killed continues the same stream when run again "
                    f"(default for the microphone: {default_spool_dir()}/STREAM_ID, or "
                    f"/{UNNAMED_SPOOL} without --stream-id; off for --input)")
    sp.add_argument("--no-spool", action="store_true",
                    help="no spool, not even the microphone's default one")
    sp.add_argument("--spool-sync", metavar="MODE",
                    help="none, always (fdatasync before sending) or a number of seconds "
                    "between syncs: what a power loss can cost (a crash needs no sync; "
                    "default: 1 for the microphone, none for --input)")
    sp.add_argument("--drain", action="store_true",
                    help="capture nothing: deliver what the spool holds and end its stream")
    sp.add_argument("--list-spool", action="store_true",
                    help="show what the spool (default: every spool in the default directory) "
                    "holds — stream id, seconds pending, age — and exit")
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
        tuning.add_argument(f"--{name.replace('_', '-')}", dest=f"opt_{name}", metavar="VALUE",
                            help=option_help(name))
    return p


def token_from_env(environ: Mapping[str, str]) -> str | None:
    """The capture's one token: ECHOPANEL_UPLINK_TOKEN, else ECHOPANEL_TOKEN when it holds a
    single token. On the server ECHOPANEL_TOKEN is a comma-separated list of every token it
    accepts; a capture must never send such a list (docs/operations.md, "Tokens")."""
    token = environ.get("ECHOPANEL_UPLINK_TOKEN") or None
    if token is not None:
        return token
    shared = environ.get("ECHOPANEL_TOKEN") or None
    if shared is not None and "," in shared:
        raise ValueError("ECHOPANEL_TOKEN holds a comma-separated list (the server's form); "
                         "give this capture its own token in ECHOPANEL_UPLINK_TOKEN or --token")
    return shared


def list_devices() -> int:
    from capture.devices import list_input_devices

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

        source = WavFileSource(args.input, speed=args.speed)
        if args.duration is not None:
            # audio seconds, not wall-clock: `--speed 0 --duration 5` sends exactly 5 s
            source.max_samples = round(args.duration * source.format.sample_rate)
        return source
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


def overflow_policy(args: argparse.Namespace) -> OverflowPolicy:
    """A file never drops by default, at any --speed: it can wait, so it waits.

    Only a microphone cannot wait (its callback would stall); `--overflow drop-oldest` with
    `--input` deliberately simulates one.
    """
    if args.overflow:
        policy = OverflowPolicy(args.overflow)
        if not args.input and policy is OverflowPolicy.BLOCK:
            raise SourceError("a microphone cannot wait: --overflow block needs --input")
        return policy
    return OverflowPolicy.BLOCK if args.input else OverflowPolicy.DROP_OLDEST


@dataclass(frozen=True, slots=True)
class Loss:
    """Audio the stored stream lacks although the run was delivered (exit status 4)."""

    ring_frames: int  # frames the full ring dropped, confirmed as gaps by the server
    ring_samples: int
    source_gaps: int  # gaps the source reported (microphone overflow, device loss)
    source_samples: int
    #: input overflows whose length the device timestamps could not tell: audio was lost,
    #: but the stream has no gap for it (capture/microphone.py `_on_status`)
    unmeasured_overflows: int = 0
    #: the dead time of a capture resumed from its spool, recorded as one gap
    dead_gaps: int = 0
    dead_samples: int = 0
    #: gaps an earlier (crashed) run had spooled, or corrupt spool records, sent now
    earlier_samples: int = 0

    @property
    def samples(self) -> int:
        return self.ring_samples + self.source_samples + self.dead_samples + self.earlier_samples

    @property
    def anything(self) -> bool:
        return bool(self.samples or self.unmeasured_overflows)

    def describe(self, rate: int) -> str:
        parts = []
        if self.ring_frames:
            parts.append(f"{self.ring_frames} frames ({self.ring_samples / rate:.2f} s) dropped "
                         "while the buffer was full")
        if self.source_gaps:
            parts.append(f"{self.source_gaps} gaps ({self.source_samples / rate:.2f} s) "
                         "reported by the source")
        if self.dead_gaps:
            parts.append(f"{self.dead_samples / rate:.2f} s while the capture was not running "
                         "(resumed from its spool)")
        if self.earlier_samples:
            parts.append(f"{self.earlier_samples / rate:.2f} s in gaps from before the restart "
                         "(spooled by the crashed run, or corrupt spool records)")
        if self.unmeasured_overflows:
            parts.append(f"{self.unmeasured_overflows} input overflows of unknown length "
                         "(not in the stored timeline)")
        head = f"audio was lost: {self.samples / rate:.2f} s in all" if self.samples else (
            "audio was lost")
        tail = " (gaps are stored as silence and listed by the server)" if self.samples else ""
        return f"{head} — " + "; ".join(parts) + tail


class DrainSource(Source):
    """`--drain`: no audio at all; the uplink delivers what the spool restored into the
    ring, then ends the stream."""

    def __init__(self, recovered: Recovered, directory: Path) -> None:
        self.format = recovered.meta.format
        self.description = (f"spool {directory} (stream {recovered.meta.stream_id}, "
                            f"{recovered.pending_seconds:.2f} s pending)")

    def start(self, sink: FrameSink) -> None:
        sink.close()

    def stop(self) -> None:
        pass

    def wait(self, timeout: float | None = None) -> bool:
        return True


def spool_directory(args: argparse.Namespace) -> Path | None:
    """--spool DIR; else the microphone's default: one directory per stream id under the
    user's data directory (an unnamed stream uses `unnamed`), so the same command line
    finds the same spool again, and captures with different ids never share one."""
    if args.no_spool:
        return None
    if args.spool:
        return Path(args.spool).expanduser()
    if args.input and not args.drain:
        return None
    return default_spool_dir() / (args.stream_id or UNNAMED_SPOOL)


def spool_sync(args: argparse.Namespace) -> SyncPolicy:
    if args.spool_sync:
        return SyncPolicy.parse(args.spool_sync)
    return SyncPolicy(SyncMode.NONE) if args.input else SyncPolicy()


class Events:
    """Notes from any thread (microphone monitor, spool writer): held until the status
    reporter exists, then passed on to it."""

    def __init__(self) -> None:
        self._reporter: StatusReporter | None = None
        self._pending: list[str] = []
        self._listeners: list[Callable[[str], None]] = []

    def event(self, message: str) -> None:
        for listener in self._listeners:
            listener(message)
        reporter = self._reporter
        if reporter is not None:
            reporter.event(message)
        else:
            self._pending.append(message)

    def also(self, listener: Callable[[str], None]) -> None:
        """Hand every note to `listener` too (the desktop notifier), from now on."""
        self._listeners.append(listener)

    def attach(self, reporter: StatusReporter) -> None:
        self._reporter = reporter
        for message in self._pending:
            reporter.event(message)
        self._pending.clear()


@dataclass(slots=True)
class Resume:
    """A capture continuing the stream of a crashed one (from its spool)."""

    recovered: Recovered
    dead_samples: int | None = None  # known once the first block arrived (microphone)
    resume_sink: ResumeSink | None = None

    @property
    def dead(self) -> int:
        if self.resume_sink is not None:
            return self.resume_sink.dead.samples or 0
        return self.dead_samples or 0


async def run_capture(args: argparse.Namespace, config: UplinkConfig) -> int:
    def frame_samples_for(rate: int) -> int:
        return max(1, round(rate * config.frame_ms / 1000))

    # with `--status-json -` the JSON owns stderr: human lines go to stdout instead
    human: TextIO = sys.stdout if args.status_json == "-" else sys.stderr
    events = Events()
    on_event = events.event
    spool_dir = spool_directory(args)
    spool: Spool | None = None
    if spool_dir is not None:
        spool = Spool.open(spool_dir, spool_sync(args), on_problem=on_event)
    try:
        return await capture_with_spool(args, config, spool, spool_dir, human, events,
                                        frame_samples_for)
    finally:
        if spool is not None:
            spool.close()  # idempotent: finish() already closed an ended stream's spool


async def capture_with_spool(args: argparse.Namespace, config: UplinkConfig,
                             spool: Spool | None, spool_dir: Path | None, human: TextIO,
                             events: Events, frame_samples_for: Callable[[int], int]) -> int:
    on_event = events.event
    recovered = spool.recovered if spool is not None else None
    if args.drain:
        if recovered is None or spool_dir is None:
            print(f"{PROG}: nothing to drain: spool {spool_dir} holds no stream", file=human)
            return ExitStatus.OK
        source: Source = DrainSource(recovered, spool_dir)
    else:
        source = open_source(args, frame_samples_for, on_event)
    fmt = source.format
    policy = overflow_policy(args) if not args.drain else OverflowPolicy.BLOCK
    stream_id = args.stream_id or (recovered.meta.stream_id if recovered else new_stream_id())
    spool_source = f"file:{args.input}" if args.input else "microphone"

    def build(with_spool: Spool | None) -> AsyncUplink:
        # the embedding API is the capture's own path: one ring, cutter and client
        # (docs/embedding.md); the spool hangs off the same ring (docs/spool.md)
        return AsyncUplink(args.server, stream_id=stream_id, rate=fmt.sample_rate,
                           channels=fmt.channels, dtype=fmt.sample_type, token=args.token,
                           config=config, overflow=policy, cafile=args.cafile,
                           labels=dict(args.label) or None, spool=with_spool,
                           spool_source=spool_source)

    try:
        uplink = build(spool)
    except SpoolError as e:
        if spool is None or recovered is not None:
            raise
        # no room for a new spool: capture anyway, from memory, and say so (never a crash)
        on_event(f"{e}; capturing without a spool (audio is kept in memory only)")
        spool.close()
        spool = None
        uplink = build(None)
    ring, client, cutter = uplink.ring, uplink.client, uplink.sink
    if spool is not None:
        low = spool.low_disk_warning()
        if low is not None:
            on_event(low)

    json_out: TextIO | None = None
    if args.status_json:
        json_out = sys.stderr if args.status_json == "-" else open(args.status_json, "a")  # noqa: SIM115
    mode = "quiet" if args.quiet else args.status
    if mode == "auto":
        mode = "panel" if human.isatty() else "lines"
    resume = Resume(recovered) if recovered is not None and not args.drain else None

    def spool_status() -> dict[str, Any]:
        if spool is None:
            return {}
        spooled = ring.spooled_seq
        return {"spool": str(spool.directory), "spool_error": spool.error,
                "spool_behind_frames": 0 if spooled is None else ring.tail_seq - spooled,
                "resumed": recovered is not None,
                "seconds_dead": round(resume.dead / fmt.sample_rate, 3) if resume else 0.0}

    # docs/notifications.md: desktop notices and --on-event hooks, each on its own thread
    notifier = None if args.drain else build_notifier(
        args.notify, microphone=not args.input, sample_rate=fmt.sample_rate)
    if notifier is not None:
        client.on_state(notifier.state)
        client.on_gap = notifier.gap
        events.also(notifier.microphone)
    hooks = HookRunner(args.on_event) if args.on_event else None
    if hooks is not None:
        hooks.start()
        hook_log = logging.getLogger("capture.hooks")  # its warnings go with the human lines
        handler = logging.StreamHandler(human)
        handler.setFormatter(logging.Formatter(f"{PROG}: %(message)s"))
        hook_log.addHandler(handler)
        hook_log.setLevel(logging.WARNING)
        hook_log.propagate = False
    reporter = StatusReporter(client, mode, stream_id=stream_id, json_out=json_out, err=human,
                              source_stats=getattr(source, "stats", None),
                              spool_status=spool_status if spool is not None else None,
                              on_record=hooks.record if hooks is not None else None)

    sink: FrameSink = cutter
    tee = TeeSink(sink, args.tee, fmt) if args.tee else None
    outer: FrameSink = tee or sink
    if resume is not None:
        outer = start_resumed(resume, source, outer, fmt.sample_rate, fmt.block_align)
    source.start(outer)  # opens the device: errors surface here, before anything runs
    print(f"stream_id: {stream_id}", flush=True)
    if not args.quiet:
        rotation = " (then the others in turn on a reconnect)" if len(client.urls) > 1 else ""
        print(f"{PROG}: {source.description} → {', '.join(client.urls)}{rotation}\n"
              f"{PROG}: buffer {ring.capacity_seconds:.0f} s = {ring.memory_bytes / 1e6:.1f} MB "
              f"({policy.value} when full)", file=human, flush=True)
        if spool is not None:
            print(f"{PROG}: spool {spool.directory} ({spool.sync.describe()})", file=human,
                  flush=True)
        if recovered is not None:
            print(f"{PROG}: {describe_recovery(recovered, resume, fmt.sample_rate)}",
                  file=human, flush=True)
    reporter.start()
    events.attach(reporter)

    loop = asyncio.get_running_loop()
    interrupts = 0
    stopping = False

    def stop_capture(message: str) -> None:
        nonlocal stopping
        if stopping:
            return
        stopping = True
        reporter.draining(message)
        # stopping a microphone joins its monitor thread: keep the event loop free
        loop.run_in_executor(None, source.stop)

    def on_interrupt() -> None:
        nonlocal interrupts
        interrupts += 1
        if not stopping:
            stop_capture("capture stopped: delivering what is buffered "
                         "(Ctrl-C again to quit at once)")
        else:
            interrupts = max(interrupts, 2)
            client.give_up("interrupted before everything was delivered")

    with contextlib.suppress(NotImplementedError):
        loop.add_signal_handler(signal.SIGINT, on_interrupt)
        loop.add_signal_handler(signal.SIGTERM, on_interrupt)
    # a file counts --duration in audio seconds (WavFileSource.max_samples); a microphone
    # produces audio at wall-clock speed, so a timer is the same thing
    timer = None
    if args.duration and not args.input and not args.drain:
        timer = loop.call_later(args.duration, stop_capture,
                                "capture stopped after --duration: delivering what is buffered")
    try:
        result = await uplink.run()
    finally:
        if timer is not None:
            timer.cancel()
        await asyncio.to_thread(source.stop)
        await asyncio.to_thread(source.wait, 5.0)
        if tee is not None:
            await asyncio.to_thread(tee.wait, 10.0)
        await reporter.stop()  # the panel ends before the summary lines below
    try:
        if tee is not None and tee.error is not None:
            print(f"{PROG}: warning: --tee {args.tee}: {tee.error}", file=human)
        kept: UndeliveredAudio | OSError | Path | None = None
        spool_kept = spool is not None and spool.error is None
        if spool is not None:
            await asyncio.to_thread(spool.finish if result.ok else spool.close)
            if result.ok and not args.spool:
                with contextlib.suppress(OSError):
                    spool.directory.rmdir()  # a default per-stream directory, now empty
        if not result.ok:
            if spool_kept:
                assert spool is not None
                kept = spool.directory
            else:
                kept = await asyncio.to_thread(keep_undelivered, ring, args, stream_id, source)
        loss = measure_loss(result, uplink, source, resume)
        status = report(result, source, loss, kept, interrupts, args.quiet, human)
        reporter.finished(int(status), **summary_fields(result, loss, kept, fmt.sample_rate))
        if notifier is not None:
            notifier.finished(result.ok, "" if result.error is None else str(result.error),
                              kept=None if kept is None or isinstance(kept, OSError)
                              else str(getattr(kept, "path", kept)),
                              undelivered_seconds=result.stats.ring.buffered_seconds)
        return status
    finally:
        if notifier is not None:
            await asyncio.to_thread(notifier.close, 3.0)
        if hooks is not None:
            hook_stats = await asyncio.to_thread(hooks.close)
            if hook_stats.dropped or hook_stats.failed or hook_stats.timed_out:
                print(f"{PROG}: warning: --on-event: {hook_stats.ran} hooks ran, "
                      f"{hook_stats.failed} failed, {hook_stats.timed_out} timed out, "
                      f"{hook_stats.dropped} dropped (queue full)", file=human)
        if json_out is not None and json_out is not sys.stderr:
            json_out.close()


def start_resumed(resume: Resume, source: Source, sink: FrameSink, rate: int,
                  block_align: int) -> FrameSink:
    """Continue a crashed capture's stream: the time it was dead becomes one gap.

    A microphone measures it when its first block arrives (ResumeSink). A file read in real
    time stands in for a live source: the gap is the wall-clock dead time and the file
    continues that much further on, so stored audio stays where the source had it. A file
    read as fast as possible (--speed 0) had no dead time: it continues where it stopped.
    """
    from capture.wav_source import WavFileSource

    end = resume.recovered.span.end_sample
    if isinstance(source, WavFileSource):
        gap = dead_time_samples(resume.recovered, time.time(), rate) if source.speed > 0 else 0
        resume.dead_samples = gap
        source.start_sample = end + gap
        sink.gap(gap)
        return sink
    resume.resume_sink = ResumeSink(sink, resume.recovered, rate, block_align)
    return resume.resume_sink


def describe_recovery(recovered: Recovered, resume: Resume | None, rate: int) -> str:
    meta = recovered.meta
    text = (f"resuming stream {meta.stream_id} from its spool: "
            f"{recovered.pending_seconds:.2f} s not yet acknowledged")
    if resume is not None and resume.dead_samples is not None:
        text += f"; {resume.dead_samples / rate:.2f} s of dead time recorded as a gap"
    elif resume is not None:
        text += "; the time the capture was not running is recorded as a gap"
    problems = recovered.problems()
    if recovered.lost_front:
        problems.append(f"{recovered.lost_front} frames the spool no longer held are a gap")
    if not meta.credential:
        problems.append("the server never confirmed the stream: it is created now")
    return text + "".join(f"; {p}" for p in problems)


def measure_loss(result: UplinkResult, uplink: AsyncUplink, source: Source,
                 resume: Resume | None) -> Loss:
    cutter = uplink.sink
    dead = resume.dead if resume is not None else 0
    dead_gaps = 1 if dead else 0
    ring = result.stats.ring
    source_gaps = cutter.gaps - dead_gaps
    source_samples = cutter.samples_gapped - dead
    recorded = sum(end - start for start, end in uplink.client.core.gaps_acked)
    earlier = 0
    if uplink.spool is not None and uplink.spool.recovered is not None:
        earlier = max(0, recorded - ring.samples_dropped - source_samples - dead)
    return Loss(ring.frames_dropped, ring.samples_dropped, source_gaps, source_samples,
                unmeasured_overflows(source), dead_gaps, dead, earlier)


def unmeasured_overflows(source: Source) -> int:
    stats = getattr(source, "stats", None)  # only the microphone has these counters
    if stats is None:
        return 0
    snapshot = stats()
    return max(0, int(snapshot.overflows) - int(snapshot.overflow_gaps))


def keep_undelivered(ring: RingBuffer, args: argparse.Namespace, stream_id: str,
                     source: Source) -> UndeliveredAudio | OSError | None:
    """Write the ring's undelivered span to a WAV (capture/undelivered.py).

    A file source without --tee or --undelivered writes nothing: the input file itself holds
    all of it (and what was never read), so the error line points into it instead — no
    stray copy in the current directory.
    """
    from capture.wav_source import WavFileSource

    if isinstance(source, WavFileSource) and not (args.tee or args.undelivered):
        start = first_unacked_sample(ring)
        if start is None:
            start = ring.next_sample
        total = source.info.n_sample_frames
        if source.max_samples is not None:
            total = min(total, source.max_samples)
        if start >= total:
            return None
        return UndeliveredAudio(Path(args.input), start, total - start, in_source=True)

    def path_for(start_sample: int) -> Path:
        if args.undelivered:
            return Path(args.undelivered)
        return default_path(stream_id, args.tee, start_sample)

    try:
        return write_undelivered(ring, path_for)
    except OSError as e:  # reported in the error line; the exit status stays the fatal one
        return e


def summary_fields(result: UplinkResult, loss: Loss,
                   kept: UndeliveredAudio | OSError | Path | None, rate: int) -> dict[str, Any]:
    c = result.stats.counters
    fields: dict[str, Any] = {
        "ok": result.ok,
        "error": None if result.error is None else str(result.error),
        "server": result.stats.state.server,  # the last one used (credential-free: config.py)
        "frames_delivered": delivered_frames(result, loss),
        "seconds_delivered": round((c.acked_sample - loss.samples) / rate, 3),
        "frames_dropped": loss.ring_frames,
        "seconds_lost": round(loss.samples / rate, 3),
        "source_gaps": loss.source_gaps,
        "unmeasured_overflows": loss.unmeasured_overflows,
        "seconds_dead": round(loss.dead_samples / rate, 3),
        "undelivered_seconds": round(result.stats.ring.buffered_seconds, 3),
    }
    if isinstance(kept, Path):
        fields["undelivered_spool"] = str(kept)
    if isinstance(kept, UndeliveredAudio):
        fields["undelivered_path"] = str(kept.path)
        fields["undelivered_start_sample"] = kept.start_sample
    return fields


def delivered_frames(result: UplinkResult, loss: Loss) -> int:
    """Audio frames the server holds: every acked seq is one audio frame, one source gap, or
    one dropped frame folded into a ring gap (docs/protocol.md §8)."""
    acked = result.stats.counters.acked_seq
    if not result.ok:
        return max(0, acked - loss.ring_frames)  # source gaps may be among the unacked
    return max(0, acked - loss.ring_frames - loss.source_gaps - loss.dead_gaps)


def report(result: UplinkResult, source: Source, loss: Loss,
           kept: UndeliveredAudio | OSError | Path | None, interrupts: int, quiet: bool,
           out: TextIO) -> ExitStatus:
    s = result.stats
    c = s.counters
    rate = source.format.sample_rate
    if result.ok:
        if not quiet:
            print(
                f"{PROG}: done: {delivered_frames(result, loss)} frames "
                f"({(c.acked_sample - loss.samples) / rate:.2f} s of audio) delivered and acked "
                f"by the server, {loss.ring_frames} frames dropped; {c.reconnects} reconnects, "
                f"{c.frames_replayed} frames replayed",
                file=out,
            )
        status = ExitStatus.OK
        if loss.anything:
            print(f"{PROG}: warning: {loss.describe(rate)}", file=out)
            status = ExitStatus.AUDIO_LOST
        if source.error is not None:
            print(f"{PROG}: error: the source stopped early: {source.error} (what it captured "
                  "was delivered)", file=out)
            status = ExitStatus.SOURCE_FAILED
        return status
    if isinstance(kept, UndeliveredAudio) and kept.in_source:
        where = (f"it is still in {kept.path} from sample {kept.start_sample} "
                 f"({kept.start_sample / rate:.2f} s) on")
    elif isinstance(kept, UndeliveredAudio):
        where = (f"kept in {kept.path} (starts at sample {kept.start_sample}, "
                 f"{kept.start_sample / rate:.2f} s into the stream)")
    elif isinstance(kept, Path):
        where = (f"kept in the spool {kept} (run again with the same spool to continue the "
                 "stream, or --drain to deliver it)")
    elif isinstance(kept, OSError):
        where = f"could not keep it: {kept}"
    else:
        where = "nothing to keep"
    hint = ""
    if getattr(result.error, "code", None) == 4409:
        # §2: the id is taken by a stream this run cannot resume (its credential is elsewhere)
        hint = (" — the server already has this stream id; an interrupted capture continues "
                "only with its spool (--spool DIR)")
    print(
        f"{PROG}: error: {result.error}{hint}; {s.ring.buffered_seconds:.2f} s of captured audio "
        f"({s.ring.held_frames} frames) not delivered: {where}",
        file=out,
    )
    return ExitStatus.ABANDONED if interrupts >= 2 else ExitStatus.FATAL


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.list_devices:
            return list_devices()
    except SourceError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return ExitStatus.FATAL
    if args.no_spool and (args.spool or args.drain or args.list_spool):
        parser.error("--no-spool contradicts --spool, --drain and --list-spool")
    if args.drain and args.input:
        parser.error("--drain delivers a spool without capturing: it takes no --input")
    if args.spool_sync is not None:
        try:
            SyncPolicy.parse(args.spool_sync)
        except ValueError as e:
            parser.error(f"--spool-sync: {e}")
    if args.list_spool:
        # without --spool: every spool under the default directory
        root = default_spool_dir()
        dirs = ([Path(args.spool).expanduser()] if args.spool else
                sorted(d for d in root.iterdir() if d.is_dir()) if root.is_dir() else [])
        try:
            print("\n".join(line for d in dirs for line in list_spool(d))
                  or f"no spools under {root}")
        except SpoolError as e:
            print(f"{PROG}: error: {e}", file=sys.stderr)
            return ExitStatus.FATAL
        return ExitStatus.OK
    if args.stream_id is not None and not is_valid_stream_id(args.stream_id):
        parser.error(f"--stream-id {args.stream_id!r} is not a valid stream id: it must match "
                     f"{STREAM_ID_PATTERN} (docs/protocol.md §1)")
    if args.duration is not None and not args.duration > 0:
        parser.error("--duration must be a positive number of seconds")
    try:
        validate_labels(dict(args.label))
    except ValueError as e:
        parser.error(f"--label: {e}")
    if args.on_event is not None:
        try:
            parse_hook_command(args.on_event)
        except ValueError as e:
            parser.error(str(e))
    if args.token is None:
        try:
            args.token = token_from_env(os.environ)
        except ValueError as e:
            parser.error(str(e))
    overrides: dict[str, Any] = {
        name: getattr(args, f"opt_{name}") for name in flat_option_names()
        if getattr(args, f"opt_{name}") is not None
    }
    try:
        # --server (repeatable, commas) wins over ECHOPANEL_SERVER; checked before anything
        # runs: credentials in a URL, mixed schemes or paths are a usage error
        args.server = server_urls(
            args.server or [os.environ.get("ECHOPANEL_SERVER") or DEFAULT_SERVER])
        config = build_config(args.profile, overrides)
    except ValueError as e:
        parser.error(str(e))
    try:
        return asyncio.run(run_capture(args, config))
    except (SourceError, SpoolError, ValueError, OSError) as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return ExitStatus.FATAL
    except KeyboardInterrupt:
        return ExitStatus.ABANDONED


if __name__ == "__main__":
    sys.exit(main())

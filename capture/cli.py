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

Human output goes to stderr, except with `--status-json -`: then stderr carries only JSON
lines and the human lines go to stdout, so a supervisor can parse stderr as it is.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import IntEnum
from importlib import metadata
from pathlib import Path
from typing import Any, TextIO

from capture.source import FrameSink, Source, SourceError
from capture.status import StatusReporter
from capture.tee import TeeSink
from capture.undelivered import (
    UndeliveredAudio,
    default_path,
    first_unacked_sample,
    write_undelivered,
)
from uplink.audio import SampleType
from uplink.client import UplinkResult, endpoint_url
from uplink.config import PROFILES, UplinkConfig, build_config, flat_option_names
from uplink.embed import AsyncUplink, new_stream_id
from uplink.ring import OverflowPolicy, RingBuffer
from uplink.wire import STREAM_ID_PATTERN, is_valid_stream_id, validate_labels

PROG = "echopanel-capture"
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
    p.add_argument("--server", default=env("ECHOPANEL_SERVER", "ws://127.0.0.1:8765"),
                   help="ws://HOST:PORT (the endpoint path is added) or a full ws:// URL "
                   "(env ECHOPANEL_SERVER; default %(default)s)")
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

    @property
    def samples(self) -> int:
        return self.ring_samples + self.source_samples

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
        if self.unmeasured_overflows:
            parts.append(f"{self.unmeasured_overflows} input overflows of unknown length "
                         "(not in the stored timeline)")
        head = f"audio was lost: {self.samples / rate:.2f} s in all" if self.samples else (
            "audio was lost")
        tail = " (gaps are stored as silence and listed by the server)" if self.samples else ""
        return f"{head} — " + "; ".join(parts) + tail


async def run_capture(args: argparse.Namespace, config: UplinkConfig) -> int:
    def frame_samples_for(rate: int) -> int:
        return max(1, round(rate * config.frame_ms / 1000))

    # with `--status-json -` the JSON owns stderr: human lines go to stdout instead
    human: TextIO = sys.stdout if args.status_json == "-" else sys.stderr
    reporter: StatusReporter | None = None
    pending_events: list[str] = []

    def on_event(message: str) -> None:
        if reporter is not None:
            reporter.event(message)
        else:
            pending_events.append(message)

    source = open_source(args, frame_samples_for, on_event)
    fmt = source.format
    policy = overflow_policy(args)
    stream_id = args.stream_id or new_stream_id()
    # the embedding API is the capture's own path: one ring, cutter and client (docs/embedding.md)
    uplink = AsyncUplink(args.server, stream_id=stream_id, rate=fmt.sample_rate,
                         channels=fmt.channels, dtype=fmt.sample_type, token=args.token,
                         config=config, overflow=policy, cafile=args.cafile,
                         labels=dict(args.label) or None)
    ring, client, cutter = uplink.ring, uplink.client, uplink.sink

    json_out: TextIO | None = None
    if args.status_json:
        json_out = sys.stderr if args.status_json == "-" else open(args.status_json, "a")  # noqa: SIM115
    mode = "quiet" if args.quiet else args.status
    if mode == "auto":
        mode = "panel" if human.isatty() else "lines"
    reporter = StatusReporter(client, mode, stream_id=stream_id, json_out=json_out, err=human,
                              source_stats=getattr(source, "stats", None))

    sink: FrameSink = cutter
    tee = TeeSink(sink, args.tee, fmt) if args.tee else None
    source.start(tee or sink)  # opens the device: errors surface here, before anything runs
    print(f"stream_id: {stream_id}", flush=True)
    if not args.quiet:
        print(f"{PROG}: {source.description} → {client.url}\n"
              f"{PROG}: buffer {ring.capacity_seconds:.0f} s = {ring.memory_bytes / 1e6:.1f} MB "
              f"({policy.value} when full)", file=human, flush=True)
    reporter.start()
    for message in pending_events:
        reporter.event(message)

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
    if args.duration and not args.input:
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
        kept: UndeliveredAudio | OSError | None = None
        if not result.ok:
            kept = await asyncio.to_thread(keep_undelivered, ring, args, stream_id, source)
        loss = Loss(result.stats.ring.frames_dropped, result.stats.ring.samples_dropped,
                    cutter.gaps, cutter.samples_gapped, unmeasured_overflows(source))
        status = report(result, source, loss, kept, interrupts, args.quiet, human)
        reporter.finished(int(status), **summary_fields(result, loss, kept, fmt.sample_rate))
        return status
    finally:
        if json_out is not None and json_out is not sys.stderr:
            json_out.close()


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


def summary_fields(result: UplinkResult, loss: Loss, kept: UndeliveredAudio | OSError | None,
                   rate: int) -> dict[str, Any]:
    c = result.stats.counters
    fields: dict[str, Any] = {
        "ok": result.ok,
        "error": None if result.error is None else str(result.error),
        "frames_delivered": delivered_frames(result, loss),
        "seconds_delivered": round((c.acked_sample - loss.samples) / rate, 3),
        "frames_dropped": loss.ring_frames,
        "seconds_lost": round(loss.samples / rate, 3),
        "source_gaps": loss.source_gaps,
        "unmeasured_overflows": loss.unmeasured_overflows,
        "undelivered_seconds": round(result.stats.ring.buffered_seconds, 3),
    }
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
    return acked - loss.ring_frames - loss.source_gaps


def report(result: UplinkResult, source: Source, loss: Loss,
           kept: UndeliveredAudio | OSError | None, interrupts: int, quiet: bool,
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
    elif isinstance(kept, OSError):
        where = f"could not keep it: {kept}"
    else:
        where = "nothing to keep"
    print(
        f"{PROG}: error: {result.error}; {s.ring.buffered_seconds:.2f} s of captured audio "
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
    if args.stream_id is not None and not is_valid_stream_id(args.stream_id):
        parser.error(f"--stream-id {args.stream_id!r} is not a valid stream id: it must match "
                     f"{STREAM_ID_PATTERN} (docs/protocol.md §1)")
    if args.duration is not None and not args.duration > 0:
        parser.error("--duration must be a positive number of seconds")
    try:
        validate_labels(dict(args.label))
    except ValueError as e:
        parser.error(f"--label: {e}")
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
        endpoint_url(args.server)
        config = build_config(args.profile, overrides)
    except ValueError as e:
        parser.error(str(e))
    try:
        return asyncio.run(run_capture(args, config))
    except (SourceError, ValueError, OSError) as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return ExitStatus.FATAL
    except KeyboardInterrupt:
        return ExitStatus.ABANDONED


if __name__ == "__main__":
    sys.exit(main())

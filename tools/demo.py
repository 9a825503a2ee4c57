"""The README's main command: start an ingest server, stream audio to it, show where it landed.

    bash tools/dev.sh demo [--speed 1] [--data-dir ./data] [--seconds 10] [--no-serve]

Streams the microphone when one is available (for --seconds), otherwise the bundled speech
recording, and says which it chose. Then checks the stored audio against the source, prints
the curl commands that fetch it, and keeps the server running until Ctrl-C so they work
(when run from a terminal; `--no-serve` or a non-interactive run stops it at once).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

from capture.wav_source import bundled_recording
from capture.wavfile import read_wav

LISTENING = re.compile(r"listening on (ws://\S+)")


def free_port(preferred: int) -> int:
    for port in (preferred, 0):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return int(s.getsockname()[1])
    raise RuntimeError("no free port")


def microphone_available() -> str | None:
    """A description of the default input device, or None (no PortAudio, no device)."""
    try:
        from capture.devices import list_input_devices
    except ImportError:
        return None
    try:
        devices = list_input_devices()
    except Exception:
        return None
    default = [d for d in devices if getattr(d, "is_default", False)] or devices
    return default[0].name if default else None


def start_server(data_dir: Path, port: int) -> tuple[subprocess.Popen[str], str]:
    cmd = [sys.executable, "-m", "ingest_server", "--host", "127.0.0.1", "--port", str(port),
           "--data-dir", str(data_dir)]
    log_path = data_dir.parent / "ingest-server.log"
    print(f"[demo] server log: {log_path}")
    with open(log_path, "a") as log:
        server = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, text=True)
    assert server.stdout is not None
    for line in server.stdout:
        print(f"[demo] server: {line.rstrip()}")
        if m := LISTENING.search(line):
            return server, m.group(1)
    raise SystemExit(f"[demo] the ingest server exited with status {server.wait()}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", type=Path, default=Path("data"))
    ap.add_argument("--port", type=int, default=8765)
    ap.add_argument("--speed", type=float, default=1.0, help="file playback speed (1 = real time)")
    ap.add_argument("--seconds", type=float, default=10.0, help="microphone capture length")
    ap.add_argument("--input", type=Path, help="stream this WAV instead of mic / bundled recording")
    ap.add_argument("--serve", action=argparse.BooleanOptionalAction, default=None,
                    help="keep the server running until Ctrl-C afterwards "
                    "(default: when stdin is a terminal)")
    args = ap.parse_args()
    serve = sys.stdin.isatty() if args.serve is None else args.serve

    data_dir = args.data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    port = free_port(args.port)
    server, url = start_server(data_dir, port)
    http = url.replace("ws://", "http://").split("/v1/")[0]
    try:
        capture = [sys.executable, "-m", "capture", "--server", url]
        mic = None if args.input else microphone_available()
        source_path: Path | None = None
        tee_path: Path | None = None
        if mic:
            print(f"[demo] microphone found ({mic}): capturing {args.seconds:g} s from it")
            tee_path = data_dir.parent / "demo-mic-tee.wav"
            capture += ["--duration", str(args.seconds), "--tee", str(tee_path)]
        else:
            source_path = args.input or bundled_recording()
            why = "as asked" if args.input else "no microphone found"
            print(f"[demo] {why}: streaming {source_path} at speed {args.speed:g}")
            capture += ["--input", str(source_path), "--speed", str(args.speed)]
        proc = subprocess.run(capture, stdout=subprocess.PIPE, text=True)
        if mic and proc.returncode != 0 and "stream_id:" not in proc.stdout:
            source_path = bundled_recording()
            print(f"[demo] the microphone could not be opened: streaming {source_path} instead")
            capture = [sys.executable, "-m", "capture", "--server", url, "--input", str(source_path),
                       "--speed", str(args.speed)]
            proc = subprocess.run(capture, stdout=subprocess.PIPE, text=True)
        sys.stdout.write("".join(f"[demo] capture: {line}\n" for line in proc.stdout.splitlines()))
        if proc.returncode != 0:
            print(f"[demo] capture failed with status {proc.returncode}")
            return proc.returncode
        stream_id = proc.stdout.split("stream_id:", 1)[1].split()[0]
        with urllib.request.urlopen(f"{http}/v1/streams/{stream_id}") as resp:
            details = json.load(resp)
        wav_path = data_dir / "streams" / stream_id / "audio.wav"
        print(f"[demo] stored: {json.dumps(details, indent=2)}")
        reference = source_path or tee_path
        if reference is not None:
            _, sent = read_wav(reference)
            _, stored = read_wav(wav_path)
            what = "the source" if source_path else f"the local --tee copy {reference}"
            verdict = f"sample-identical to {what}" if sent == stored else f"DIFFERENT from {what}"
            print(f"[demo] stored audio is {verdict} ({len(stored)} bytes)")
        print(f"[demo] the audio landed in {wav_path}")
        fetch = [f"curl -f -o {stream_id}.wav {http}/v1/streams/{stream_id}/audio.wav",
                 f"curl -f {http}/v1/streams"]
        if not serve:
            print("[demo] the demo server stops now; to fetch the audio over HTTP, run it "
                  "again on the same data dir and ask it:")
            print(f"[demo]   bash tools/dev.sh serve --port {port} --data-dir {data_dir} &")
            for line in fetch:
                print(f"[demo]   {line}")
            return 0
        print("[demo] the server keeps running; in another terminal:")
        for line in fetch:
            print(f"[demo]   {line}")
        print("[demo] Ctrl-C stops it")
        try:
            server.wait()
        except KeyboardInterrupt:
            print()
        return 0
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())

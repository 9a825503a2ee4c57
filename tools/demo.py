"""The README's main command: start an ingest server, stream audio to it, show where it landed.

    bash tools/dev.sh demo [--speed 1] [--data-dir ./data] [--seconds 10] [--no-serve]
    bash tools/dev.sh demo --cluster [--kill-after 4]

Streams the microphone when one is available (for --seconds), otherwise the bundled speech
recording, and says which it chose. Then checks the stored audio against the source, prints
the curl commands that fetch it, and keeps the server running until Ctrl-C so they work
(when run from a terminal; `--no-serve` or a non-interactive run stops it at once).

`--cluster` runs the scale-out setup instead (tools/cluster.py: 3 NATS nodes, 3 ingest
nodes, the balancer) and streams through the balancer at real time, saying how to kill
the node that holds the capture (or doing it itself after `--kill-after` seconds) and what
to look at; at the end the stored audio is fetched from a node and compared to the source.
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
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from capture.wav_source import bundled_recording
from capture.wavfile import read_wav
from tools.cluster import Cluster, describe

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


def cluster_demo(args: argparse.Namespace, data_dir: Path) -> int:
    """Stream through the balancer of a loopback cluster while a node may die (docs/scale-out.md)."""
    source_path = args.input or bundled_recording()
    stream_id = time.strftime("cluster-demo-%Y%m%d-%H%M%S")
    base = Path(tempfile.mkdtemp(prefix="cluster-", dir=data_dir))  # fresh NATS and nodes
    print(f"[demo] starting the cluster in {base} (3 NATS nodes, 3 ingest nodes, balancer)")
    with Cluster(base, nodes=3, nats_nodes=3) as cluster:
        for line in describe(cluster):
            print(f"[demo] {line}")
        print(f"[demo] streaming {source_path} at speed {args.speed:g} (1 = real time) "
              f"through the balancer {cluster.balancer_url}")
        print("[demo] to kill the node that holds the capture, in another terminal: "
              "kill -9 <its pid above> (the balancer sends the first connection to node0)")
        print("[demo] look at: the capture's 'reconnecting' then 'connected' lines (it resumed "
              "on another node through the balancer), its final 'done' line (0 frames "
              "dropped), and the comparison with the source below")
        capture = [sys.executable, "-m", "capture", "--server", cluster.balancer_url,
                   "--input", str(source_path), "--speed", str(args.speed),
                   "--stream-id", stream_id, "--status", "lines"]
        proc = subprocess.Popen(capture, stdout=subprocess.PIPE, text=True)
        if args.kill_after is not None:
            threading.Thread(target=kill_serving_node, args=(cluster, args.kill_after, proc),
                             daemon=True).start()
        out, _ = proc.communicate()
        sys.stdout.write("".join(f"[demo] capture: {line}\n" for line in out.splitlines()))
        if proc.returncode != 0:
            print(f"[demo] capture failed with status {proc.returncode}")
            return proc.returncode
        target = data_dir / f"{stream_id}.wav"
        served_by = fetch_from_any_node(cluster, stream_id, target)
        if served_by is None:
            print("[demo] no node serves the stream's audio (with the local store each node "
                  "holds only its own streams: the JetStream store makes every node serve it)")
            return 1
        _, sent = read_wav(source_path)
        _, stored = read_wav(target)
        verdict = "sample-identical to" if sent == stored else "DIFFERENT from"
        print(f"[demo] {served_by} served {target}: {verdict} the source ({len(stored)} bytes)")
        return 0 if sent == stored else 1


def kill_serving_node(cluster: Cluster, after: float, proc: subprocess.Popen[str]) -> None:
    """SIGKILL the ingest node the capture's connection went to, `after` seconds in."""
    assert cluster.balancer is not None
    time.sleep(after)
    if proc.poll() is not None:
        return
    used = cluster.balancer.stats.per_backend
    for i, node in enumerate(cluster.nodes):
        if used.get(f"127.0.0.1:{node.port}"):
            print(f"[demo] --kill-after: kill -9 node{i} (pid "
                  f"{node.proc.pid if node.proc else '?'}) now", flush=True)
            cluster.kill_node(i)
            return


def fetch_from_any_node(cluster: Cluster, stream_id: str, target: Path) -> str | None:
    """Download the stream's WAV from the first node that serves it; its name, or None."""
    for i, node in enumerate(cluster.nodes):
        if not node.running:
            continue
        try:
            with urllib.request.urlopen(f"{node.http}/v1/streams/{stream_id}/audio.wav",
                                        timeout=30) as resp:
                target.write_bytes(resp.read())
        except (urllib.error.URLError, OSError):
            continue
        return f"node{i} ({node.http})"
    return None


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
    ap.add_argument("--cluster", action="store_true",
                    help="run the loopback cluster (NATS JetStream, 3 ingest nodes, a balancer) "
                    "and stream through the balancer (docs/scale-out.md)")
    ap.add_argument("--kill-after", type=float, metavar="SECONDS",
                    help="with --cluster: SIGKILL the node holding the capture after this long")
    args = ap.parse_args()
    serve = sys.stdin.isatty() if args.serve is None else args.serve

    data_dir = args.data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    if args.kill_after is not None and not args.cluster:
        ap.error("--kill-after needs --cluster")
    if args.cluster:
        return cluster_demo(args, data_dir)
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

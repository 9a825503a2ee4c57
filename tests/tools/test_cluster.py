"""tools/cluster.py: NATS, ingest nodes and the balancer start, serve, lose a node and stop.

The pieces are wired, the balancer spreads connections and steps over a dead node, a
capture through the balancer survives the SIGKILL of its node (it resumes on another one:
the JetStream store), and `python -m tools.cluster` stops everything on SIGTERM.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

from capture.wavfile import read_wav
from tests.e2e.conftest import stored_equals_source
from tests.e2e.test_capture_cli import Capture
from tools.chaos_run import make_recording
from tools.cluster import Cluster, commands
from tools.ingest_process import REPO_ROOT
from uplink.embed import Uplink


def send(url: str, stream_id: str, clip: Path) -> None:
    fmt, data = read_wav(clip)
    with Uplink(url, stream_id=stream_id, rate=fmt.sample_rate, dtype="int16") as up:
        up.push(data)


def test_the_balancer_spreads_streams_and_steps_over_a_dead_node(tmp_path: Path) -> None:
    clip = make_recording(tmp_path / "clip.wav", 0.5)
    with Cluster(tmp_path / "cluster", nodes=2, nats_nodes=1) as cluster:
        assert cluster.nats.urls.startswith("nats://127.0.0.1:")
        assert len(cluster.node_urls) == 2 and cluster.balancer is not None
        send(cluster.balancer_url, "spread-1", clip)
        send(cluster.balancer_url, "spread-2", clip)
        ports = [str(node.port) for node in cluster.nodes]
        assert cluster.balancer.stats.per_backend == {f"127.0.0.1:{p}": 1 for p in ports}

        cluster.kill_node(0)
        send(cluster.balancer_url, "spread-3", clip)  # node0's turn: skipped, node1 serves
        assert cluster.balancer.stats.skipped == 1
        cluster.start_node(0)
        assert str(cluster.nodes[0].port) == ports[0]  # same port: the balancer's backend
        send(cluster.balancer_url, "spread-4", clip)  # node1's turn
        send(cluster.balancer_url, "spread-5", clip)  # node0's turn: it is back
        assert cluster.balancer.stats.per_backend == {f"127.0.0.1:{ports[0]}": 2,
                                                      f"127.0.0.1:{ports[1]}": 3}
        # the commands to paste name the balancer first, then the rotation form
        paste = commands(cluster)
        assert cluster.balancer_url in paste[0] and ",".join(cluster.node_urls) in paste[2]


def test_a_capture_through_the_balancer_survives_the_kill_of_its_node(tmp_path: Path) -> None:
    clip = make_recording(tmp_path / "clip.wav", 6.0)
    with Cluster(tmp_path / "cluster", nodes=2, nats_nodes=1,
                 extra_args=["--lease-seconds", "2"]) as cluster:
        cap = Capture("--server", cluster.balancer_url, "--input", str(clip), "--speed", "1",
                      "--stream-id", "through-lb")
        cap.wait_for(lambda r: r["type"] == "status" and r["acked_seconds"] >= 0.5,
                     "audio acked by the first node")
        assert cluster.balancer is not None
        assert cluster.balancer.stats.per_backend == {f"127.0.0.1:{cluster.nodes[0].port}": 1}
        cluster.kill_node(0)  # the node holding the capture (the balancer's first turn)
        code, _ = cap.finish()
        assert code == 0, (cap.records[-3:], cap.not_json)
        states = [r for r in cap.records if r["type"] == "state"]
        assert [r["state"] for r in states].count("connected") >= 2
        exit_record = cap.records[-1]
        assert exit_record["type"] == "exit" and exit_record["frames_dropped"] == 0
        cluster.start_node(0)  # back with nothing in memory: it serves the stream anyway
        stored = tmp_path / "stored.wav"
        with urllib.request.urlopen(
                f"{cluster.nodes[0].http}/v1/streams/through-lb/audio.wav", timeout=30) as r:
            stored.write_bytes(r.read())
    stored_equals_source(stored, clip)


def test_the_command_stops_everything_on_sigterm(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tools.cluster", "--nodes", "1", "--nats", "1", "--port", "0",
         "--dir", str(tmp_path / "c")],
        cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert proc.stdout is not None
    out = []
    for line in proc.stdout:
        out.append(line)
        if "Ctrl-C stops everything" in line:
            break
    text = "".join(out)
    assert re.search(r"cluster: balancer  ws://127\.0\.0\.1:\d+/v1/stream", text), text
    pids = [int(p) for p in re.findall(r"pid (\d+)", text)]
    assert pids, text
    proc.send_signal(signal.SIGTERM)
    rest, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, text + rest
    assert "cluster: stopping" in rest
    for pid in pids:  # the ingest node is gone (reaped by the cluster)
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(
            f"/proc/{pid}/status").read_text().lower()

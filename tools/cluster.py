"""The scale-out setup on one machine: a NATS JetStream cluster, ingest nodes, a balancer.

    python -m tools.cluster [--nodes 3] [--nats 3] [--port 8765] [--dir DIR]

starts on loopback a 3-node NATS cluster (tools/nats_cluster.py), ingest nodes storing in
it (`python -m ingest_server --store nats://... --node-name nodeN`, run by
tools/ingest_process.py) and the TCP balancer in front of them (tools/balancer.py), prints
the addresses with a capture and a listen command to paste, and stops everything on Ctrl-C
or SIGTERM. A capture streams through the balancer; kill a node and it resumes on another
one (docs/scale-out.md).

For tests and the demo (`bash tools/dev.sh demo --cluster`)::

    with Cluster(tmp_path, nodes=3) as cluster:
        Uplink(cluster.balancer_url, ...)        # or cluster.node_urls: the rotation form
        cluster.kill_node(0); cluster.start_node(0)
        cluster.nats.kill(1)                    # a JetStream node
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shlex
import signal
import sys
import tempfile
import threading
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from types import FrameType, TracebackType
from typing import TYPE_CHECKING

from tools.balancer import BalancerThread
from tools.ingest_process import IngestServer

if TYPE_CHECKING:  # imported when the cluster starts: needs the `cluster` extra
    from tools.nats_cluster import NatsCluster

HOST = "127.0.0.1"


class Cluster:
    """`nats_nodes` JetStream nodes, `nodes` ingest nodes and a balancer, all on loopback.

    Every ingest node gets `--store` with all NATS URLs, `--node-name nodeN`, `--profile`,
    `--replicas` = the NATS cluster's size (every node holds the audio) and `extra_args`;
    its data dir is `base_dir/nodeN` and its log `base_dir/nodeN-server.log`.
    """

    def __init__(self, base_dir: Path, *, nodes: int = 3, nats_nodes: int = 3,
                 profile: str = "development", balancer_port: int = 0,
                 extra_args: Sequence[str] = (), sync_always: bool = False) -> None:
        if nodes < 1 or nats_nodes < 1:
            raise ValueError("a cluster has at least one ingest node and one NATS node")
        self.base_dir = Path(base_dir)
        self.profile = profile
        self.nats_nodes = nats_nodes
        self.extra_args = list(extra_args)
        self.sync_always = sync_always  # NATS `sync_interval: always` (docs/scale-out.md)
        self._node_count = nodes
        self._balancer_port = balancer_port
        self._nats: NatsCluster | None = None
        self.nodes: list[IngestServer] = []
        self.balancer: BalancerThread | None = None

    # -- addresses -----------------------------------------------------------------------

    @property
    def nats(self) -> NatsCluster:
        if self._nats is None:
            raise RuntimeError("the cluster is not started")
        return self._nats

    @property
    def balancer_url(self) -> str:
        """The uplink URL through the balancer: what a capture is given."""
        if self.balancer is None:
            raise RuntimeError("the cluster is not started")
        return f"ws://{HOST}:{self.balancer.port}/v1/stream"

    @property
    def balancer_http(self) -> str:
        """The REST API through the balancer (any node answers, docs/scale-out.md)."""
        return self.balancer_url.replace("ws://", "http://").removesuffix("/v1/stream")

    @property
    def node_urls(self) -> list[str]:
        """Each ingest node's uplink URL (the capture's rotation form takes them all)."""
        return [node.url for node in self.nodes]

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> Cluster:
        from tools.nats_cluster import NatsCluster  # the `cluster` extra's nats-server

        self.base_dir.mkdir(parents=True, exist_ok=True)
        try:
            self._nats = NatsCluster(self.base_dir / "nats", size=self.nats_nodes,
                                     sync_always=self.sync_always)
            self._nats.start_all()
            for i in range(self._node_count):
                node = IngestServer(self.base_dir / f"node{i}", args=[
                    "--store", self._nats.urls, "--node-name", f"node{i}",
                    "--profile", self.profile, "--replicas", str(self.nats_nodes),
                    *self.extra_args])
                self.nodes.append(node)
                node.start()
            self.balancer = BalancerThread([(HOST, node.port) for node in self.nodes],
                                           port=self._balancer_port).start()
        except BaseException:
            self.stop()
            raise
        return self

    def kill_node(self, i: int) -> None:
        """SIGKILL ingest node i (a crash); its port stays reserved for start_node(i)."""
        self.nodes[i].kill()

    def start_node(self, i: int) -> None:
        """Start ingest node i again, on the same port (the balancer's backend)."""
        self.nodes[i].start()

    def holder(self, stream_id: str) -> int | None:
        """The ingest node a capture of `stream_id` is connected to right now (its REST
        details say `connected`: true only on that node), or None (between connections)."""
        for i, node in enumerate(self.nodes):
            if not node.running:
                continue
            try:
                with urllib.request.urlopen(f"{node.http}/v1/streams/{stream_id}",
                                            timeout=2) as resp:
                    if json.load(resp).get("connected"):
                        return i
            except (OSError, ValueError):
                continue  # not known yet, or this node is paused / restarting
        return None

    def pause_node(self, i: int) -> None:
        """SIGSTOP ingest node i: a frozen process (GC pause, VM freeze) that keeps its
        sockets open and will carry on where it stopped (split brain, docs/scale-out.md)."""
        proc = self.nodes[i].proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGSTOP)

    def resume_node(self, i: int) -> None:
        """SIGCONT ingest node i after pause_node(i)."""
        proc = self.nodes[i].proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGCONT)

    def wait_ready(self) -> None:
        """After kills: every ingest node is running again (restarted on its port) and
        every running NATS node is current with a meta leader. Stream leaders may still be
        electing: takes fail with 1013 for a few seconds, which the uplink rides out."""
        for i, node in enumerate(self.nodes):
            if not node.running:
                self.start_node(i)
        self.nats.wait_ready()

    def stop(self) -> None:
        """Balancer, ingest nodes (SIGTERM), then NATS; what never started is skipped."""
        if self.balancer is not None:
            self.balancer.stop()
        for i in range(len(self.nodes)):
            self.resume_node(i)  # a paused node cannot act on SIGTERM
        for node in self.nodes:
            with contextlib.suppress(Exception):
                node.stop()
        if self._nats is not None:
            self._nats.stop()

    def __enter__(self) -> Cluster:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def commands(cluster: Cluster, python: str = sys.executable) -> list[str]:
    """What to paste: a capture through the balancer, a listener, the rotation form."""
    from capture.wav_source import bundled_recording

    def script(name: str, module: str) -> str:
        exe = Path(python).parent / name
        return shlex.quote(str(exe)) if exe.exists() else f"{shlex.quote(python)} -m {module}"

    capture, listen = script("echopanel-capture", "capture"), script("echopanel-listen",
                                                                     "uplink.listen")
    recording = shlex.quote(str(bundled_recording()))
    return [
        f"{capture} --server {cluster.balancer_url} --input {recording} --speed 1 "
        "--stream-id cluster-1",
        f"{listen} --server {cluster.balancer_url} --stream-id cluster-1 --wait "
        "--output cluster-1.wav",
        f"{capture} --server {','.join(cluster.node_urls)} --input {recording} "
        "--stream-id cluster-2",
    ]


def describe(cluster: Cluster) -> list[str]:
    lines = [f"balancer  {cluster.balancer_url}  (round-robin over the ingest nodes)"]
    for i, node in enumerate(cluster.nodes):
        pid = node.proc.pid if node.proc is not None else "-"
        lines.append(f"node{i}     {node.url}  pid {pid}  log {node.log_path}")
    lines.append(f"NATS      {cluster.nats.urls}")
    lines.append(f"data      {cluster.base_dir}")
    return lines


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tools.cluster", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nodes", type=int, default=3, help="ingest nodes (default %(default)s)")
    p.add_argument("--nats", type=int, default=3, help="NATS nodes (default %(default)s)")
    p.add_argument("--port", type=int, default=8765,
                   help="the balancer's port (default %(default)s; 0: any free port)")
    p.add_argument("--dir", type=Path, default=None,
                   help="where the nodes keep their data and logs (default: a new "
                   "temporary directory, kept afterwards)")
    p.add_argument("--profile", choices=("development", "production"), default="development",
                   help="the ingest nodes' profile (default %(default)s)")
    p.add_argument("--sync-always", action="store_true",
                   help="NATS fsyncs every JetStream write (sync_interval: always, the "
                   "production setting, docs/scale-out.md)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    base = args.dir or Path(tempfile.mkdtemp(prefix="echopanel-cluster-"))
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        del signum, frame
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)
    print(f"cluster: starting {args.nats} NATS nodes, {args.nodes} ingest nodes and the "
          f"balancer in {base} ...", flush=True)
    with Cluster(base, nodes=args.nodes, nats_nodes=args.nats, profile=args.profile,
                 balancer_port=args.port, sync_always=args.sync_always) as cluster:
        for line in describe(cluster):
            print(f"cluster: {line}")
        paste = commands(cluster)
        print("\nStream the bundled recording through the balancer:\n  " + paste[0])
        print("Listen to it (from any node, through the balancer):\n  " + paste[1])
        print("Without the balancer, the capture rotates through the nodes itself:\n  "
              + paste[2])
        print("Kill a node mid-stream (kill -9 PID above): the capture resumes on another "
              "one.\nCtrl-C stops everything.", flush=True)
        while not stop.wait(0.5):
            pass
        print("\ncluster: stopping", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

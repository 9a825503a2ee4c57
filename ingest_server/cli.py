"""`echopanel-ingest`: run the ingest server under uvicorn.

Prints exactly one line to stdout once it accepts connections (tests and tools wait for it):

    echopanel-ingest listening on ws://HOST:PORT/v1/stream (data dir DIR)
    echopanel-ingest listening on ws://HOST:PORT/v1/stream (store nats://H:P,... as NODE)

Logs go to stderr (text, or JSON with --log-format json). Without tokens the server says
loudly that anyone who can reach it may stream and read audio. SIGTERM / SIGINT: stop taking
streams, fsync and ack what was received, close every live WebSocket with 1012 (§7), exit 0.
A second SIGINT forces the exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import resource
import signal
import socket
import sys
from collections.abc import Iterator, Sequence

import uvicorn
from fastapi import FastAPI

from uplink.wire import ENDPOINT_PATH

from .app import create_app
from .config import ConfigError, ServerConfig, load_config
from .logs import setup_logging
from .service import IngestService
from .storage import StorageError
from .wsprotocol import WS_PROTOCOL

log = logging.getLogger("ingest_server")


class _Server(uvicorn.Server):
    """uvicorn with our own signal handling and a listening line with the real port.

    uvicorn's handler would re-raise the signal after shutting down (exit status -15, not 0)
    and would close WebSockets without first making their data durable and acked.
    """

    def __init__(self, config: uvicorn.Config, service: IngestService, ours: ServerConfig) -> None:
        super().__init__(config)
        self._service = service
        self._ours = ours
        self._stopping: asyncio.Task[None] | None = None

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            host, port = self.servers[0].sockets[0].getsockname()[:2]
            print(f"echopanel-ingest listening on ws://{host}:{port}{ENDPOINT_PATH} "
                  f"({where_stored(self._ours)})", flush=True)

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._on_signal, sig)
        try:
            yield
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)

    def _on_signal(self, sig: int) -> None:
        if self._stopping is not None:
            if sig == signal.SIGINT:
                self.force_exit = True
            return
        log.info("%s: shutting down", signal.Signals(sig).name)
        self._stopping = asyncio.create_task(self._graceful())

    async def _graceful(self) -> None:
        try:
            await self._service.close_connections()
        except Exception:
            log.exception("closing connections failed")
        finally:
            self.should_exit = True  # uvicorn: stop listening, run the lifespan shutdown


def where_stored(config: ServerConfig) -> str:
    """`data dir DIR`, or `store nats://h:p,... as NODE` (never a URL's userinfo)."""
    if not config.store:
        return f"data dir {config.data_dir}"
    scheme, _, hosts = config.store.partition("://")
    bare = ",".join(h.rpartition("@")[2] for h in hosts.split(","))
    return f"store {scheme}://{bare} as {config.node_name or f'{config.host}:{config.port}'}"


def uvicorn_config(app: FastAPI, config: ServerConfig) -> uvicorn.Config:
    """How the ingest app is served (shared with in-process tests)."""
    return uvicorn.Config(
        app,
        host=config.host,
        port=config.port,
        ws=WS_PROTOCOL,  # uvicorn's websockets-sansio, lighter read flow control
        ws_max_size=config.max_message_bytes,  # larger binary messages: 1009 (§5)
        ws_ping_interval=None,  # liveness is the protocol's own ping and acks (§6, §8)
        ws_ping_timeout=None,
        ws_per_message_deflate=False,  # §1: PCM does not compress
        lifespan="on",
        log_config=None,  # keep our stderr logging; stdout carries only the listening line
        log_level=config.log_level,
        access_log=False,
        timeout_graceful_shutdown=10,
    )


def _raise_fd_limit() -> None:
    """Each live stream holds a socket and a journal descriptor: 1000 streams need more than
    the usual soft limit of 1024, so take what the hard limit allows."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as e:
            log.warning("cannot raise the open-file limit from %d: %s", soft, e)


M_MMAP_THRESHOLD = -3  # mallopt(3)
MMAP_THRESHOLD = 128 * 1024


def _pin_mmap_threshold() -> None:
    """Keep glibc from raising its mmap threshold after large frees (mallopt(3)).

    By default glibc moves the threshold up each time a large mmapped block is freed, and
    serves later large buffers from the heap, where they leave holes between long-lived
    objects: RSS then climbs after every replay burst and never comes back (measured: +1.25
    MiB over 57 resumes; pinned at the default 128 KiB: +0.12 MiB, flat; docs/performance.md
    "Footprint"). Blocks of 128 KiB and more are then always mmapped and returned when freed.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        if not libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD):
            log.warning("mallopt(M_MMAP_THRESHOLD) failed; memory may creep after resumes")
    except (OSError, AttributeError):
        pass  # not glibc: nothing to pin


def _announce_auth(config: ServerConfig) -> None:
    if config.tokens:
        log.info("authentication on: %d token(s) accepted", len(config.tokens))
        return
    exposed = config.host not in ("127.0.0.1", "::1", "localhost")
    log.warning(
        "AUTHENTICATION IS OFF: no tokens configured (--token, --token-file or "
        "ECHOPANEL_TOKEN). Anyone who can reach %s:%d can stream audio and download every "
        "stream.%s", config.host, config.port,
        " The server listens beyond loopback: do not run it like this on a network."
        if exposed else " Fine for local use only.")


def main(argv: Sequence[str] | None = None) -> int:
    try:
        config = load_config(argv)
    except ConfigError as e:
        print(f"echopanel-ingest: {e}", file=sys.stderr)
        return 2
    setup_logging(config.log_level, config.log_format, config.secrets)
    _raise_fd_limit()
    _pin_mmap_threshold()
    try:
        # Takes the data-dir lock first (storage/lock.py): a second server on the same dir
        # stops here with one line naming the holder's pid.
        app = create_app(config)
    except (StorageError, ConfigError) as e:
        print(f"echopanel-ingest: {e}", file=sys.stderr)
        return 2
    _announce_auth(config)  # after the start-up errors, so a refusal is the only line
    uv = uvicorn_config(app, config)
    server = _Server(uv, app.state.ingest, config)
    server.run()
    return 0 if server.started else 1

"""The NATS connection, on its own event loop in its own thread.

The storage contract (storage/interface.py) is blocking: the registry calls it from IO
threads, but REST handlers and live listeners also call `open_wav` / `open_reader` / `read`
on the server's event loop. nats-py is asyncio. Running the client on a private loop makes
every blocking call safe from any thread (a call from the server's loop waits one round
trip; it can never deadlock on itself), and the commit path crosses threads in bulk
(publisher.py: one wake-up carries every queued batch over, one carries every result back).

nats-py is imported here, lazily (the `cluster` extra): the base install never loads it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")

CONNECT_TIMEOUT = 10.0
CALL_TIMEOUT = 15.0
BATCH_TIMEOUT = 5.0  # every NATS request has its own shorter timeout; this is the backstop
INSTALL_HINT = "pip install echopanel-uplink[cluster]"


class NatsMissing(RuntimeError):
    """nats-py is not installed."""


def import_nats() -> Any:
    try:
        import nats  # noqa: PLC0415 - optional dependency, loaded only for --store nats://
    except ImportError as e:
        raise NatsMissing(f"--store nats:// needs the NATS client: {INSTALL_HINT}") from e
    return nats


def server_urls(store: str) -> list[str]:
    """`nats://H:P,H:P` (or `tls://...`) as the client's server list."""
    scheme, rest = store.split("://", 1)
    return [f"{scheme}://{hostport.strip()}" for hostport in rest.split(",") if hostport.strip()]


def without_userinfo(url: str) -> str:
    """`nats://user:secret@host:port` as `nats://host:port`: URLs go into messages."""
    scheme, _, rest = url.partition("://")
    return f"{scheme}://{rest.rpartition('@')[2]}"


class NatsLink:
    """One NATS connection (reconnecting across the cluster's nodes) on a private loop."""

    def __init__(self, store: str, *, token: str = "", creds: str = "",
                 name: str = "echopanel-ingest",
                 connect_timeout: float = CONNECT_TIMEOUT) -> None:
        self._nats = import_nats()
        import nats.js.errors  # noqa: PLC0415

        self.errors: Any = nats.js.errors
        self.servers = server_urls(store)
        self._token = token
        self._creds = creds
        self._name = name
        self.connect_timeout = connect_timeout  # NATS may still be starting: keep trying
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run_loop, name="ingest-nats", daemon=True)
        self._thread.start()
        self.nc: Any = None
        self.js: Any = None
        self._closing = False

    def _run_loop(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def connect(self) -> None:
        self.call(self._connect(), self.connect_timeout + 5)

    async def _connect(self) -> None:
        options: dict[str, Any] = {
            "servers": self.servers, "name": self._name,
            "connect_timeout": min(2.0, self.connect_timeout), "max_reconnect_attempts": -1,
            "reconnect_time_wait": 0.25, "allow_reconnect": True,
            "error_cb": self._on_error, "disconnected_cb": self._on_disconnected,
            "reconnected_cb": self._on_reconnected,
        }
        if self._token:
            options["token"] = self._token
        if self._creds:
            options["user_credentials"] = self._creds
        try:
            self.nc = await asyncio.wait_for(self._nats.connect(**options),
                                           self.connect_timeout)
        except Exception as e:  # never echo the options: they hold the token
            where = ", ".join(without_userinfo(url) for url in self.servers)
            raise OSError(f"cannot connect to NATS at {where}: {type(e).__name__}") from None
        self.js = self.nc.jetstream()

    async def _on_error(self, e: Exception) -> None:
        log.warning("NATS: %s", type(e).__name__)

    async def _on_disconnected(self) -> None:
        if self._closing:
            return
        log.warning("NATS: disconnected; reconnecting")

    async def _on_reconnected(self) -> None:
        url = getattr(self.nc, "connected_url", None)
        log.info("NATS: reconnected to %s:%s", getattr(url, "hostname", "?"),
                 getattr(url, "port", "?"))

    async def get_msg(self, stream: str, **query: Any) -> Any:
        """A message by sequence or subject: a direct get (any replica answers) first; while
        the replicas' direct-get responders are not up (a new stream, an election), the
        stream leader's API answers instead."""
        try:
            return await self.js.get_msg(stream, direct=True, **query)
        except self._nats.errors.NoRespondersError:
            return await self.js.get_msg(stream, direct=False, **query)

    async def get_batch(self, stream: str, subject: str, seq: int, batch: int,
                        max_bytes: int) -> list[Any] | None:
        """Up to `batch` messages on `subject` from sequence `seq` on (at most about
        `max_bytes`), in one batched direct get (NATS >= 2.11): one round trip instead of
        one per message. [] when there is none; None when batching is unavailable (no
        direct-get responders right now): the caller gets one message at a time."""
        inbox = self.nc.new_inbox()
        sub = await self.nc.subscribe(inbox)
        request = json.dumps({"seq": seq, "next_by_subj": subject, "batch": batch,
                              "max_bytes": max_bytes}).encode()
        try:
            await self.nc.publish(f"$JS.API.DIRECT.GET.{stream}", request, reply=inbox)
            messages: list[Any] = []
            while True:
                try:
                    msg = await sub.next_msg(timeout=BATCH_TIMEOUT)
                except self._nats.errors.TimeoutError:
                    if messages:
                        raise OSError("a batched read of JetStream stopped half way") from None
                    return None  # nobody answered
                status = (msg.headers or {}).get("Status")
                if status in ("204", "404"):  # end of batch; no (more) message
                    return messages
                if status == "503":
                    return None
                if status:
                    raise OSError(f"JetStream batched read failed: status {status}")
                messages.append(msg)
        finally:
            await sub.unsubscribe()

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = CALL_TIMEOUT) -> T:
        """Run `coro` on the NATS loop and wait for it (from any thread but that loop's)."""
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise OSError("NATS request timed out") from None
        except self._nats.errors.Error as e:
            # the storage contract speaks OSError (errors.storage_failure maps it to 1013)
            detail = getattr(e, "description", None) or type(e).__name__
            raise OSError(f"NATS: {detail}") from e

    def spawn(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def close(self) -> None:
        self._closing = True
        if self.nc is not None:
            try:
                self.call(self.nc.close(), 5)
            except Exception as e:  # shutting down: nothing left to protect
                log.warning("closing the NATS connection: %s", type(e).__name__)
            self.nc = None
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)

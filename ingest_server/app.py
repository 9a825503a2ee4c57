"""FastAPI application: the protocol v1 WebSocket endpoint plus the REST API."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI, WebSocket
from fastapi.responses import PlainTextResponse

from uplink.wire import ENDPOINT_PATH

from . import api
from .config import ServerConfig
from .service import IngestService


def create_app(config: ServerConfig, *, clock: Callable[[], float] = time.monotonic) -> FastAPI:
    """Build the app. Raises storage.StorageError at once if the data dir is unusable.

    `clock` (monotonic seconds) drives session expiry; tests inject a fake one.
    """
    service = IngestService(config, clock=clock)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await service.start()  # recover streams before accepting connections
        try:
            yield
        finally:
            await service.stop()  # 1012 to live connections, fsync and close journals

    app = FastAPI(
        title="echopanel ingest server",
        summary="Durable, exactly-once audio ingest over WebSocket (protocol v1).",
        description=f"Stream audio over the WebSocket at `{ENDPOINT_PATH}` "
        "(see docs/protocol.md); read it back here.",
        version="1",
        lifespan=lifespan,
    )
    app.state.ingest = service
    app.include_router(api.router)

    @app.websocket(ENDPOINT_PATH)
    async def stream_endpoint(websocket: WebSocket) -> None:
        await service.handle(websocket)

    @app.websocket("/{path:path}")
    async def unknown_path(websocket: WebSocket) -> None:
        # Starlette would answer 403; a 404 tells a client it has the wrong URL (§7: fatal).
        await websocket.send_denial_response(
            PlainTextResponse(f"no WebSocket endpoint here; use {ENDPOINT_PATH}", 404))

    return app

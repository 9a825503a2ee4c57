"""FastAPI application: the protocol v1 WebSocket endpoint plus the REST API."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import APIRouter, Depends, FastAPI, WebSocket

from uplink.wire import ENDPOINT_PATH

from . import api, ui
from .config import ServerConfig
from .service import IngestService, deny, quiet_uvicorn_denials


def create_app(config: ServerConfig, *, clock: Callable[[], float] = time.monotonic,
               wall: Callable[[], float] = time.time) -> FastAPI:
    """Build the app. Raises storage.StorageError at once if the data dir is unusable.

    `clock` (monotonic seconds) drives session expiry and `wall` (POSIX seconds) timestamps
    and retention; tests inject fake ones.
    """
    service = IngestService(config, clock=clock, wall=wall)
    quiet_uvicorn_denials()

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
        "(see docs/protocol.md); read it back here. With tokens configured, every endpoint "
        "but /healthz and /readyz needs `Authorization: Bearer <token>`.",
        version="1",
        lifespan=lifespan,
    )
    app.state.ingest = service
    app.include_router(api.public)
    app.include_router(api.router)
    if config.public_metrics:
        app.add_api_route("/metrics", api.metrics, methods=["GET"], **api.METRICS_ROUTE)
    else:
        metrics = APIRouter(dependencies=[Depends(api.require_token)],
                            responses=api.AUTH_RESPONSES)
        metrics.add_api_route("/metrics", api.metrics, methods=["GET"], **api.METRICS_ROUTE)
        app.include_router(metrics)
    ui.install(app, service)  # the web view at /ui and its endpoints (docs/ui.md)

    @app.websocket(ENDPOINT_PATH)
    async def stream_endpoint(websocket: WebSocket) -> None:
        await service.handle(websocket)

    @app.websocket("/v1/streams/{stream_id}/listen")
    async def listen_endpoint(websocket: WebSocket, stream_id: str) -> None:
        await service.handle_listen(websocket, stream_id)  # §11 live listeners

    @app.websocket("/{path:path}")
    async def unknown_path(websocket: WebSocket) -> None:
        # Starlette would answer 403; a 404 tells a client it has the wrong URL (§7: fatal).
        await deny(websocket, 404, f"no WebSocket endpoint here; use {ENDPOINT_PATH}")

    return app

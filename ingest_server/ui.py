"""The web view (docs/ui.md): its static files at /ui and the endpoints only it needs.

- `GET /ui/`: index.html, app.js, style.css from the package (no build step). Served without
  authentication: they hold no data; every data request of the page sends the bearer token.
- `GET /v1/streams/{id}/history`: the stream's connection history (history.py).
- `GET /v1/streams/{id}/levels?step=S`: RMS level per window of the durable audio.
- `POST /v1/ui/session`: trades the bearer token for a short-lived session cookie, accepted
  only by `GET|HEAD /v1/ui/streams/{id}/audio.wav` (the same answer as the REST audio route,
  Range included): an `<audio>` element cannot send a header, and a token never goes in a
  URL (§10, auth.SessionSigner).
"""

from __future__ import annotations

import asyncio
import math
import time
from pathlib import Path
from typing import Annotated

import numpy as np
import numpy.typing as npt
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request, Security
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, Response
from fastapi.security import APIKeyCookie, HTTPAuthorizationCredentials

from uplink.audio import AudioFormat, SampleType

from . import api
from .auth import Denial, SessionSigner
from .service import IngestService
from .storage import is_valid_stream_id
from .storage.interface import AudioPiece, Position, StreamMeta, StreamStorage
from .stream import Stream

STATIC_DIR = Path(__file__).parent / "ui"
STATIC_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml"}
# The page loads nothing but its own files and talks only to this server.
STATIC_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
    "connect-src 'self'; media-src 'self'; img-src 'self'; base-uri 'none'; "
    "form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}

SESSION_COOKIE = "echopanel_ui"
SESSION_PATH = "/v1/ui"  # the cookie is sent to the audio route and the session route only
SESSION_TTL = 900.0  # seconds; the page renews it every SESSION_TTL / 3 while open

MAX_WINDOWS = 2000  # levels per request, whatever `step` asks: the response stays small
READ_CHUNK = 1 << 20  # bytes of audio per read: the memory a level computation holds
MAX_LEVEL_JOBS = 2  # level computations at a time (each one reads a stream's whole audio)
FLOOR_DBFS = -120.0  # digital silence (the log of 0) is shown as this
FULL_SCALE = {SampleType.INT16: 2.0**15, SampleType.INT24: 2.0**23, SampleType.INT32: 2.0**31,
              SampleType.FLOAT32: 1.0}


def _service(request: Request) -> IngestService:
    service: IngestService = request.app.state.ingest
    return service


def _stream(service: IngestService, stream_id: str) -> Stream:
    """A stream this server holds (the history and the levels are this node's view)."""
    stream = service.registry.streams.get(stream_id) if is_valid_stream_id(stream_id) else None
    if stream is None:
        raise HTTPException(404, f"unknown stream {stream_id!r}")
    return stream


# -- static files ------------------------------------------------------------------------------

static = APIRouter(include_in_schema=False)


@static.get("/ui")
async def ui_root() -> RedirectResponse:
    return RedirectResponse("/ui/", status_code=308)  # relative module URLs resolve under /ui/


@static.get("/ui/config.json")
async def ui_config(request: Request) -> JSONResponse:
    """What the page must know before its first data request (no data, so no auth): whether
    to ask for a token, which avoids a 401 the browser would log as an error."""
    return JSONResponse({"auth": _service(request).auth.enabled, "session_ttl": SESSION_TTL},
                        headers=STATIC_HEADERS)


@static.get("/ui/")
@static.get("/ui/{name}")
async def ui_file(name: str = "index.html") -> FileResponse:
    path = STATIC_DIR / name
    # Only the files shipped in the package, by exact name: no path ever leaves STATIC_DIR.
    if "/" in name or path.suffix not in STATIC_TYPES or not path.is_file():
        raise HTTPException(404, "no such file")
    return FileResponse(path, media_type=STATIC_TYPES[path.suffix], headers=STATIC_HEADERS)


# -- session cookie for <audio> ----------------------------------------------------------------

def _sessions(request: Request) -> SessionSigner:
    signer: SessionSigner = request.app.state.ui_sessions
    return signer


# For the OpenAPI page only: the audio route takes the bearer header or the session cookie
# (the checks below read the raw request, like api.require_token).
_session_cookie = APIKeyCookie(name=SESSION_COOKIE, auto_error=False, scheme_name="uiSession",
                               description="The web view's session cookie (POST /v1/ui/session)")


async def require_token_or_session(
    request: Request,
    _credentials: Annotated[HTTPAuthorizationCredentials | None, Security(api.bearer)],
    _cookie: Annotated[str | None, Security(_session_cookie)],
) -> None:
    """The bearer header as everywhere (§10), or else a valid session cookie. A token in the
    URL is refused even with a valid cookie; refusals are counted like the REST API's."""
    service = _service(request)
    result = service.auth.check(request.headers.getlist("authorization"), request.url.query)
    if not isinstance(result, Denial):
        return
    if result.reason == "missing" and _sessions(request).valid(
            request.cookies.get(SESSION_COOKIE), time.time()):
        return
    service.metrics.auth_failures[result.reason] += 1
    raise HTTPException(result.status, result.detail, headers=result.headers)


session_router = APIRouter(dependencies=[Depends(api.require_token)],
                           responses=api.AUTH_RESPONSES, tags=["web view"])


@session_router.post("/v1/ui/session", status_code=204, response_class=Response,
                     summary="Web view: a session cookie for its <audio> element")
async def new_session(request: Request) -> Response:
    """Sets an HttpOnly, SameSite=Strict cookie (Path=/v1/ui) valid for SESSION_TTL
    seconds, accepted only by `GET|HEAD /v1/ui/streams/{id}/audio.wav` (docs/ui.md)."""
    response = Response(status_code=204)
    response.set_cookie(SESSION_COOKIE, _sessions(request).issue(time.time()),
                        max_age=int(SESSION_TTL), path=SESSION_PATH, httponly=True,
                        samesite="strict", secure=request.url.scheme == "https")
    return response


audio_router = APIRouter(dependencies=[Depends(require_token_or_session)],
                         responses=api.AUTH_RESPONSES, tags=["web view"])
UI_AUDIO_ROUTE = {**api.AUDIO_ROUTE, "path": "/v1/ui/streams/{stream_id}/audio.wav"}


@audio_router.head(**UI_AUDIO_ROUTE)
@audio_router.get(**UI_AUDIO_ROUTE)
async def ui_audio(stream_id: str, request: Request) -> Response:
    """`/v1/streams/{id}/audio.wav` for the web view's `<audio>` (bearer header or session
    cookie): the same bytes, Range and HEAD."""
    return await api.get_audio(stream_id, request)


# -- history and levels ------------------------------------------------------------------------

router = APIRouter(dependencies=[Depends(api.require_token)], responses=api.AUTH_RESPONSES,
                   tags=["web view"])


@router.get("/v1/streams/{stream_id}/history", responses=api.NOT_FOUND,
            summary="Connection history of a stream (the web view's timeline)")
async def history(stream_id: str, request: Request) -> dict[str, object]:
    """Entries oldest first (docs/ui.md): connected, disconnected (close code, items
    replayed), gap (exact samples), finalized, storage_failed. In memory since `since`."""
    service = _service(request)
    stream = _stream(service, stream_id)
    recorded = service.history.of(stream_id)
    return {
        "stream_id": stream_id,
        "since": round(service.history.since, 3),
        "connected": stream.owner is not None,
        "state": stream.meta.state.value,
        "duplicates": stream.duplicates,
        "session_timeout": service.config.session_timeout,
        "limit": service.history.limit,
        "dropped": recorded.dropped if recorded else 0,
        "entries": [e.to_json() for e in recorded.entries] if recorded else [],
    }


@router.get("/v1/streams/{stream_id}/levels", responses={
    **api.NOT_FOUND, 503: {"model": api.ErrorModel, "description": "The stream is being "
                           "finalized right now: try again"}},
    summary="RMS level (dBFS) per window of a stream's durable audio")
async def levels(stream_id: str, request: Request,
                 step: Annotated[float | None, Query(gt=0, le=86400)] = None
                 ) -> dict[str, object]:
    """`step` seconds per window (default: the duration / MAX_WINDOWS), widened so there are
    at most MAX_WINDOWS. A window wholly inside gaps is `null`. Cost: one sequential read of
    the durable audio, READ_CHUNK bytes at a time, in the IO threads (docs/ui.md)."""
    service = _service(request)
    stream = _stream(service, stream_id)
    meta, upto = stream.meta, stream.durable
    rate = meta.format.sample_rate
    samples = upto.next_sample
    step_samples = max(1, round(step * rate)) if step is not None else 1
    step_samples = max(step_samples, math.ceil(samples / MAX_WINDOWS))
    async with request.app.state.ui_level_jobs:
        try:
            values = await asyncio.get_running_loop().run_in_executor(
                service.executor, window_levels, service.store, meta, upto, step_samples)
        except FileNotFoundError:  # finalized between the lookup and the open
            raise HTTPException(503, "the stream is being finalized: try again",
                                headers={"Retry-After": "1"}) from None
    return {"stream_id": stream_id, "sample_rate": rate, "samples": samples,
            "step_samples": step_samples, "step_seconds": step_samples / rate,
            "levels": values}


def decode(data: bytes, fmt: AudioFormat) -> npt.NDArray[np.float64]:
    """Interleaved little-endian samples as floats in [-1, 1), one row per sample frame."""
    kind = fmt.sample_type
    if kind is SampleType.INT24:
        b = np.frombuffer(data, np.uint8).reshape(-1, 3).astype(np.int32)
        raw = (b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)) << 8 >> 8  # sign-extend
    else:
        dtype = {SampleType.INT16: "<i2", SampleType.INT32: "<i4", SampleType.FLOAT32: "<f4"}
        raw = np.frombuffer(data, dtype[kind])
    return (raw.astype(np.float64) / FULL_SCALE[kind]).reshape(-1, fmt.channels)


def window_levels(store: StreamStorage, meta: StreamMeta, upto: Position,
                  step_samples: int) -> list[float | None]:
    """RMS in dBFS of each `step_samples` window of the audio up to `upto`, all channels
    together; None for a window without audio (gaps). Blocking: run it in a thread."""
    windows = math.ceil(upto.next_sample / step_samples)
    squares = np.zeros(windows)
    counts = np.zeros(windows, dtype=np.int64)
    reader = store.open_reader(meta, 0)
    try:
        while pieces := reader.read(upto, READ_CHUNK):
            for piece in pieces:
                if not isinstance(piece, AudioPiece):
                    continue
                per_frame = np.mean(np.square(decode(piece.data, meta.format)), axis=1)
                index = (piece.start_sample + np.arange(len(per_frame))) // step_samples
                squares += np.bincount(index, weights=per_frame, minlength=windows)[:windows]
                counts += np.bincount(index, minlength=windows)[:windows]
    finally:
        reader.close()
    return [None if n == 0 else round(_dbfs(s / n), 2) for s, n in zip(squares, counts,
                                                                      strict=True)]


def _dbfs(mean_square: float) -> float:
    return max(FLOOR_DBFS, 10 * math.log10(mean_square)) if mean_square > 0 else FLOOR_DBFS


def install(app: FastAPI, service: IngestService) -> None:
    """Add the web view to the app (called by app.create_app)."""
    app.state.ui_sessions = SessionSigner(SESSION_TTL)
    app.state.ui_level_jobs = asyncio.Semaphore(MAX_LEVEL_JOBS)
    # Histories of streams retention deleted are dropped (history.py): it checks the registry.
    if service.history.streams is None:
        service.history.streams = service.registry.streams
    app.include_router(static)
    app.include_router(session_router)
    app.include_router(audio_router)
    app.include_router(router)

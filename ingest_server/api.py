"""REST API: list streams, inspect one, download its audio; health, readiness, metrics.
Read-only.

Authentication (docs/protocol.md §10): every endpoint under /v1 (and /metrics unless
--public-metrics) needs `Authorization: Bearer <token>` when tokens are configured: 401
without a usable header or with a token in the URL, 403 for an unknown token. /healthz,
/readyz and the API description (/docs, /openapi.json) are open: probes carry no tokens
and none of them returns stream data.

Handlers are `async` on purpose: they read the registry, which only the event loop mutates.
A WAV body is produced by a sync iterator, which Starlette runs in its thread pool.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from typing import Annotated, Any, Literal, TypeVar

from fastapi import APIRouter, Depends, HTTPException, Request, Security
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel

from .auth import Denial
from .discovery import event_stream
from .metrics import CONTENT_TYPE
from .service import IngestService
from .storage import Gap, Store, StreamMeta, is_valid_stream_id, parse_utc, utc_now
from .storage.interface import DurableAudio, Position, SharedStorage, StreamState
from .stream import Stream

T = TypeVar("T")

bearer = HTTPBearer(auto_error=False, scheme_name="bearer",
                     description="A token configured with --token, --token-file or "
                     "ECHOPANEL_TOKEN (not needed when the server runs without tokens).")


class ErrorModel(BaseModel):
    detail: str


AUTH_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorModel,
          "description": "No usable `Authorization: Bearer` header, or a token in the URL"},
    403: {"model": ErrorModel, "description": "Token not accepted"},
}
NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorModel, "description": "Unknown stream, or an invalid stream id"},
}


async def require_token(
    request: Request,
    _credentials: Annotated[HTTPAuthorizationCredentials | None, Security(bearer)],
) -> None:
    """Checks the raw request (not just what HTTPBearer parsed, which is for the docs)."""
    result = _service(request).authenticate(request.headers.getlist("authorization"),
                                            request.url.query)
    if isinstance(result, Denial):
        raise HTTPException(result.status, result.detail, headers=result.headers)


public = APIRouter()
router = APIRouter(dependencies=[Depends(require_token)], responses=AUTH_RESPONSES)


class AudioFormatModel(BaseModel):
    sample_rate: int
    channels: int
    sample_type: Literal["int16", "int24", "int32", "float32"]


class GapModel(BaseModel):
    """Seqs [first_seq, end_seq) carry no audio; samples [start_sample, end_sample) are silence."""

    first_seq: int
    end_seq: int
    start_sample: int
    end_sample: int
    #: wall-clock time of the gap's first sample (capture_started + start_sample / rate,
    #: protocol §2); None when the capture did not send its wall-clock time
    started: datetime | None = None


class StreamSummary(BaseModel):
    stream_id: str
    state: Literal["open", "finalized"]
    end_reason: Literal["ended", "expired"] | None
    format: AudioFormatModel
    frame_samples: int
    frames: int
    samples: int
    duration_seconds: float
    gap_count: int
    created: datetime
    ended: datetime | None
    #: the capture's wall-clock time of sample 0 (hello `wall_time`, protocol §2)
    capture_started: datetime | None
    labels: dict[str, str]


class StreamDetail(StreamSummary):
    next_seq: int
    connected: bool
    duplicates: int
    #: how often the stream was reopened after it had expired (protocol §2)
    reopened: int
    gaps: list[GapModel]


class StreamList(BaseModel):
    streams: list[StreamSummary]


class StreamCounts(BaseModel):
    total: int
    open: int
    finalized: int
    connected: int


class Health(BaseModel):
    status: Literal["ok"]
    streams: StreamCounts


class ReadyChecks(BaseModel):
    storage: bool
    shutting_down: bool


class Ready(BaseModel):
    status: Literal["ready", "not ready"]
    detail: str
    checks: ReadyChecks


def _service(request: Request) -> IngestService:
    service: IngestService = request.app.state.ingest
    return service


@dataclass(frozen=True, slots=True)
class StoredStream:
    """A stream as a shared store (JetStream) describes it: the KV metadata and the durable
    position of its subject's tail. Any node answers REST from this, not from memory."""

    meta: StreamMeta
    durable: Position
    connected: bool = False
    duplicates: int = 0

    @property
    def stream_id(self) -> str:
        return self.meta.stream_id

    @property
    def frames(self) -> int:
        return self.durable.frames

    @property
    def gaps(self) -> list[Gap]:
        return self.meta.gaps  # the KV checkpoint (writer.py): durable gaps, in order

    @property
    def finalized(self) -> bool:
        return self.meta.state is StreamState.FINALIZED


StreamView = Stream | StoredStream


async def _in_thread(service: IngestService, fn: Callable[..., T], *args: object) -> T:
    """A blocking store call (NATS round trips) off the event loop."""
    return await asyncio.get_running_loop().run_in_executor(service.executor, fn, *args)


async def _stored(service: IngestService, shared: SharedStorage, stream_id: str
                  ) -> StoredStream:
    meta = await _in_thread(service, shared.lookup, stream_id) \
        if is_valid_stream_id(stream_id) else None
    if meta is None:
        raise HTTPException(404, f"unknown stream {stream_id!r}")
    local = service.registry.streams.get(stream_id)
    if local is not None and local.journal is not None and shared.holds(local.journal):
        # this node writes it: memory is exact (the same as the tail, and no round trip)
        return StoredStream(meta, local.durable, local.owner is not None, local.duplicates)
    durable = await _in_thread(service, shared.durable_position, meta)
    return StoredStream(meta, durable, connected=False)


def _summary(stream: StreamView) -> dict[str, object]:
    meta = stream.meta
    # Durable positions: what a resuming client would be told (§2).
    samples = stream.durable.next_sample
    return {
        "stream_id": stream.stream_id,
        "state": meta.state,
        "end_reason": meta.end_reason,
        "format": meta.format.to_json(),
        "frame_samples": meta.frame_samples,
        "frames": stream.frames,
        "samples": samples,
        "duration_seconds": samples / meta.format.sample_rate,
        "gap_count": len(stream.gaps),
        "created": meta.created,
        "ended": meta.ended,
        "capture_started": meta.capture_started,
        "labels": meta.labels or {},
    }


def _lookup(service: IngestService, stream_id: str) -> Stream:
    stream = service.registry.streams.get(stream_id) if is_valid_stream_id(stream_id) else None
    if stream is None:
        raise HTTPException(404, f"unknown stream {stream_id!r}")
    return stream


@public.get("/healthz", response_model=Health, summary="Liveness: the process serves requests")
async def healthz(request: Request) -> Health:
    streams = list(_service(request).registry.streams.values())
    finalized = sum(1 for s in streams if s.finalized)
    return Health(status="ok", streams=StreamCounts(
        total=len(streams), open=len(streams) - finalized, finalized=finalized,
        connected=sum(1 for s in streams if s.owner is not None)))


@public.get("/readyz", response_model=Ready,
            responses={503: {"model": Ready, "description": "Not ready: shutting down, or the "
                                                            "data dir is not writable"}},
            summary="Readiness: send new streams here")
async def readyz(request: Request) -> Response:
    r = await _service(request).readiness()
    body = Ready(status="ready" if r.ready else "not ready", detail=r.detail,
                 checks=ReadyChecks(storage=r.storage, shutting_down=r.shutting_down))
    return JSONResponse(body.model_dump(), status_code=200 if r.ready else 503)


async def metrics(request: Request) -> Response:
    """Prometheus text exposition (docs/operations.md, "Metrics")."""
    return Response(_service(request).metrics.exposition(), media_type=CONTENT_TYPE)


METRICS_ROUTE: dict[str, Any] = {
    "response_class": Response,
    "summary": "Prometheus metrics",
    "responses": {200: {"content": {CONTENT_TYPE: {}},
                        "description": "Prometheus text format 0.0.4"}},
}


@router.get("/v1/streams", response_model=StreamList)
async def list_streams(request: Request,
                       state: Literal["open", "finalized"] | None = None) -> StreamList:
    """Every stream, or those in one `state` (`?state=open`: the ones to listen to)."""
    service = _service(request)
    views: list[StreamView]
    if service.shared is not None:  # every node lists every stream (the KV bucket)
        views = [StoredStream(meta, pos) for meta, pos
                 in await _in_thread(service, service.shared.list_streams)]
    else:
        views = list(service.registry.streams.values())
    streams = sorted((s for s in views if state is None or s.meta.state.value == state),
                     key=lambda s: s.stream_id)
    return StreamList.model_validate({"streams": [_summary(s) for s in streams]})


@router.get("/v1/streams/{stream_id}", response_model=StreamDetail, responses=NOT_FOUND)
async def get_stream(stream_id: str, request: Request) -> StreamDetail:
    service = _service(request)
    stream: StreamView
    if service.shared is not None:
        # `connected`: a capture on THIS node; one on another node shows there
        stream = await _stored(service, service.shared, stream_id)
    else:
        stream = _lookup(service, stream_id)
    return StreamDetail.model_validate({
        **_summary(stream),
        "next_seq": stream.durable.next_seq,
        "connected": stream.connected if isinstance(stream, StoredStream)
        else stream.owner is not None,
        "duplicates": stream.duplicates,
        "reopened": stream.meta.reopened,
        "gaps": [_gap(g, stream.meta) for g in stream.gaps],
    })


@router.get("/v1/events", response_class=StreamingResponse,
            responses={200: {"content": {"text/event-stream": {}},
                             "description": "Server-Sent Events: a `snapshot` of the open "
                             "streams, then `stream` events (opened, resumed, disconnected, "
                             "gap, finalized); docs/protocol.md §11.4"}},
            summary="Discovery: stream events as Server-Sent Events")
async def events(request: Request) -> StreamingResponse:
    service = _service(request)
    registry, shared = service.registry, service.shared
    list_shared = None if shared is None else partial(_in_thread, service, shared.list_streams)
    return StreamingResponse(event_stream(registry, registry.events, list_shared=list_shared),
                             media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def _gap(gap: Gap, meta: StreamMeta) -> dict[str, object]:
    started = None
    if meta.capture_started is not None:
        started = utc_now(parse_utc(meta.capture_started)
                          + gap.start_sample / meta.format.sample_rate)
    return {**gap.to_json(), "started": started}


AUDIO_ROUTE: dict[str, Any] = dict(
    path="/v1/streams/{stream_id}/audio.wav",
    response_class=Response,
    responses={
        200: {"content": {"audio/wav": {}},
              "description": "Finalized: the stored file. Open: what is durable so far. "
                             "Gaps are silence. HEAD: the same headers, no body."},
        206: {"content": {"audio/wav": {}},
              "description": "The single byte range asked for with `Range: bytes=...` "
                             "(finalized and open streams)"},
        416: {"description": "The range starts past the end of the audio"},
        **NOT_FOUND,
    },
)


@router.head(**AUDIO_ROUTE)  # its own route: one operation id per method in the API spec
@router.get(**AUDIO_ROUTE)
async def get_audio(stream_id: str, request: Request) -> Response:
    service = _service(request)
    headers = {"Content-Disposition": f'attachment; filename="{stream_id}.wav"'}
    if service.shared is not None:  # built from the subject on demand, on any node
        stored = await _stored(service, service.shared, stream_id)
        wav = await _in_thread(service, service.shared.open_wav, stored.meta, stored.durable)
        return _journal_wav_response(wav, request, headers)
    stream = _lookup(service, stream_id)
    if stream.journal is not None:
        try:
            wav = service.store.open_wav(stream.meta, stream.durable)
        except FileNotFoundError:
            pass  # finalized (journal removed) between the check and the open: serve the file
        else:
            return _journal_wav_response(wav, request, headers)
    assert isinstance(service.store, Store)
    path = service.store.wav_path(stream_id)
    if not stream.finalized or not path.exists():
        raise HTTPException(404, f"stream {stream_id!r} has no audio yet")
    # Starlette answers Range (206 / 416), If-Range and HEAD for a file itself.
    return FileResponse(path, media_type="audio/wav", headers=headers)


_RANGE = re.compile(r"bytes=(\d*)-(\d*)")


def requested_range(request: Request, size: int) -> tuple[int, int] | None:
    """The one byte range [start, end) asked for, or None for the whole body.

    RFC 9110 §14.2: a server may ignore Range, so several ranges, a malformed header and
    any If-Range (an open stream's bytes have no validator: its header grows with it) get
    the whole body. A range starting at or past the end raises 416.
    """
    header = request.headers.get("range")
    if header is None or "if-range" in request.headers:
        return None
    m = _RANGE.fullmatch(header.strip())
    if m is None or (not m[1] and not m[2]):
        return None
    if not m[1]:  # bytes=-N: the last N bytes
        suffix = int(m[2])
        if suffix == 0:
            raise _unsatisfiable(size)
        return max(size - suffix, 0), size
    start = int(m[1])
    end = size if not m[2] else min(int(m[2]) + 1, size)
    if start >= size or end <= start:
        raise _unsatisfiable(size)
    return start, end


def _unsatisfiable(size: int) -> HTTPException:
    return HTTPException(416, "range not satisfiable",
                         headers={"Content-Range": f"bytes */{size}"})


def _journal_wav_response(wav: DurableAudio, request: Request,
                          headers: dict[str, str]) -> Response:
    """An open stream's WAV (what is durable so far), whole, as one range, or as HEAD."""
    headers["Accept-Ranges"] = "bytes"
    try:
        byte_range = requested_range(request, wav.size)
    except HTTPException:
        wav.close()
        raise
    status, (start, end) = 200, (0, wav.size)
    if byte_range is not None:
        status, (start, end) = 206, byte_range
        headers["Content-Range"] = f"bytes {start}-{end - 1}/{wav.size}"
    headers["Content-Length"] = str(end - start)
    if request.method == "HEAD":
        wav.close()
        return Response(status_code=status, media_type="audio/wav", headers=headers)
    body = iter(wav) if byte_range is None else _slice(wav, start, end)
    return StreamingResponse(body, status_code=status, media_type="audio/wav",
                             headers=headers)


def _slice(wav: DurableAudio, start: int, end: int) -> Iterator[bytes]:
    """Bytes [start, end) of the WAV. The journal is read from its start up to `end` (its
    records have no index by byte offset), so a range costs reading what precedes it."""
    chunks = iter(wav)
    pos = 0
    try:
        for chunk in chunks:
            n = len(chunk)
            if pos + n > start:
                yield chunk[max(start - pos, 0):min(end - pos, n)]
            pos += n
            if pos >= end:
                break
    finally:
        close = getattr(chunks, "close", None)  # a generator: runs JournalWav's cleanup
        if close is not None:
            close()
        wav.close()

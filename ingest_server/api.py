"""REST API: list streams, inspect one, download its audio, health. Read-only.

Handlers are `async` on purpose: they read the registry, which only the event loop mutates.
A WAV body is produced by a sync iterator, which Starlette runs in its thread pool.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import FileResponse, Response, StreamingResponse
from pydantic import BaseModel

from .service import IngestService
from .sessions import Stream
from .storage import is_valid_stream_id

router = APIRouter()


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


class StreamDetail(StreamSummary):
    next_seq: int
    connected: bool
    duplicates: int
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


def _service(request: Request) -> IngestService:
    service: IngestService = request.app.state.ingest
    return service


def _summary(stream: Stream) -> dict[str, object]:
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
    }


def _lookup(service: IngestService, stream_id: str) -> Stream:
    stream = service.registry.streams.get(stream_id) if is_valid_stream_id(stream_id) else None
    if stream is None:
        raise HTTPException(404, f"unknown stream {stream_id!r}")
    return stream


@router.get("/healthz", response_model=Health)
async def healthz(request: Request) -> Health:
    streams = list(_service(request).registry.streams.values())
    finalized = sum(1 for s in streams if s.finalized)
    return Health(status="ok", streams=StreamCounts(
        total=len(streams), open=len(streams) - finalized, finalized=finalized,
        connected=sum(1 for s in streams if s.owner is not None)))


@router.get("/v1/streams", response_model=StreamList)
async def list_streams(request: Request) -> StreamList:
    streams = sorted(_service(request).registry.streams.values(), key=lambda s: s.stream_id)
    return StreamList.model_validate({"streams": [_summary(s) for s in streams]})


@router.get("/v1/streams/{stream_id}", response_model=StreamDetail,
            responses={404: {"description": "Unknown stream"}})
async def get_stream(stream_id: str, request: Request) -> StreamDetail:
    stream = _lookup(_service(request), stream_id)
    return StreamDetail.model_validate({
        **_summary(stream),
        "next_seq": stream.durable.next_seq,
        "connected": stream.owner is not None,
        "duplicates": stream.duplicates,
        "gaps": [g.to_json() for g in stream.gaps],
    })


@router.get(
    "/v1/streams/{stream_id}/audio.wav",
    response_class=Response,
    responses={
        200: {"content": {"audio/wav": {}},
              "description": "Finalized: the stored file. Open: what is durable so far. "
                             "Gaps are silence."},
        404: {"description": "Unknown stream"},
    },
)
async def get_audio(stream_id: str, request: Request) -> Response:
    service = _service(request)
    stream = _lookup(service, stream_id)
    headers = {"Content-Disposition": f'attachment; filename="{stream_id}.wav"'}
    if stream.journal is not None:
        try:
            wav = service.store.open_wav(stream.meta, stream.durable)
        except FileNotFoundError:
            pass  # finalized (journal removed) between the check and the open: serve the file
        else:
            headers["Content-Length"] = str(wav.size)
            return StreamingResponse(iter(wav), media_type="audio/wav", headers=headers)
    path = service.store.wav_path(stream_id)
    if not stream.finalized or not path.exists():
        raise HTTPException(404, f"stream {stream_id!r} has no audio yet")
    return FileResponse(path, media_type="audio/wav", headers=headers)

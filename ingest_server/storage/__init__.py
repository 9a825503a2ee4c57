"""Durable per-stream storage: journal, metadata, WAV export (docs/storage.md)."""

from .journal import Gap, Journal, JournalError, Position
from .store import (
    EndReason,
    StorageError,
    Store,
    StreamMeta,
    StreamState,
    is_valid_stream_id,
    parse_utc,
    utc_now,
)
from .wav import JournalWav, max_wav_samples, wav_size

__all__ = [
    "EndReason",
    "Gap",
    "Journal",
    "JournalError",
    "JournalWav",
    "Position",
    "StorageError",
    "Store",
    "StreamMeta",
    "StreamState",
    "is_valid_stream_id",
    "max_wav_samples",
    "parse_utc",
    "utc_now",
    "wav_size",
]

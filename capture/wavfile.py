"""Minimal RIFF/WAVE reading and writing for the sample types protocol v1 carries.

Audio is never converted: `read_wav` returns the data chunk's bytes exactly as stored
(little-endian, interleaved), because those bytes go on the wire unchanged (docs/protocol.md
§1). Anything the protocol cannot carry losslessly (8-bit, float64, compressed codecs) is
rejected with a `WavError` that names the problem and how to convert the file, instead of
being silently transcoded.
"""

from __future__ import annotations

import os
import secrets
import struct
from dataclasses import dataclass
from pathlib import Path

from uplink.audio import (  # the WAV header writer is shared with the ingest server
    WAVE_FORMAT_EXTENSIBLE,
    WAVE_FORMAT_IEEE_FLOAT,
    WAVE_FORMAT_PCM,
    AudioFormat,
    AudioFormatError,
    SampleType,
    wav_header,
)
from uplink.audio import (
    WAVE_GUID_TAIL as _GUID_TAIL,
)

StrPath = str | os.PathLike[str]

# Data chunk sizes that streaming writers leave when they cannot seek back to patch the
# header: 0 and 0xFFFFFFFF (common; the latter is never a valid size for our formats) and
# 0x7FFFF000 (sox writing to a pipe).
_SIZE_UNPATCHED = 0xFFFFFFFF
_SIZE_SOX_PIPE = 0x7FFFF000

_PCM_TYPES = {16: SampleType.INT16, 24: SampleType.INT24, 32: SampleType.INT32}

_CODEC_NAMES = {
    0x0002: "Microsoft ADPCM",
    0x0006: "A-law",
    0x0007: "mu-law",
    0x0011: "IMA ADPCM",
    0x0031: "GSM 6.10",
    0x0050: "MPEG",
    0x0055: "MPEG layer 3",
}


class WavError(ValueError):
    """The file is not a WAV the uplink can stream unchanged; the message says why."""


@dataclass(frozen=True, slots=True)
class WavInfo:
    """Where the audio is: `data_bytes` bytes at `data_offset`, whole sample frames."""

    format: AudioFormat
    n_sample_frames: int
    data_offset: int
    data_bytes: int

    @property
    def duration_seconds(self) -> float:
        return self.n_sample_frames / self.format.sample_rate


def read_wav_info(path: StrPath) -> WavInfo:
    """Parse the headers of `path` (reads only the chunk headers and `fmt `, not the audio).

    Raises WavError for anything unsupported or malformed, OSError if it cannot be opened.
    """
    with open(path, "rb") as f:
        file_size = os.fstat(f.fileno()).st_size
        riff = f.read(12)
        if len(riff) < 12:
            raise WavError(f"truncated RIFF header: file has only {len(riff)} bytes")
        magic, riff_size, wave = struct.unpack("<4sI4s", riff)
        if magic in (b"RIFX", b"RF64", b"BW64"):
            raise WavError(
                f"{magic.decode()} files are not supported, only RIFF/WAVE (little-endian, "
                "up to 4 GiB)"
            )
        if magic != b"RIFF" or wave != b"WAVE":
            raise WavError("not a RIFF/WAVE file")
        fmt: AudioFormat | None = None
        while True:
            offset = f.tell()
            header = f.read(8)
            if len(header) == 0:
                missing = "fmt" if fmt is None else "data"
                if riff_size + 8 > file_size:
                    raise WavError(
                        f"truncated file: ends at byte {file_size} before the {missing} chunk"
                    )
                raise WavError(f"no {missing} chunk")
            if len(header) < 8:
                raise WavError(f"truncated chunk header at byte {offset}")
            chunk_id, size = struct.unpack("<4sI", header)
            body_offset = offset + 8
            remaining = file_size - body_offset
            if chunk_id == b"fmt ":
                if size > remaining:
                    raise WavError(f"truncated fmt chunk: {size} bytes declared, {remaining} left")
                fmt = _parse_fmt(f.read(size))
            elif chunk_id == b"data":
                if fmt is None:
                    raise WavError("data chunk comes before the fmt chunk")
                data_bytes = _data_size(size, remaining, riff_size, file_size, fmt)
                return WavInfo(fmt, data_bytes // fmt.block_align, body_offset, data_bytes)
            elif size > remaining:
                name = chunk_id.decode("latin-1")
                raise WavError(f"truncated {name!r} chunk: {size} bytes declared, {remaining} left")
            f.seek(body_offset + size + (size & 1))  # chunks are padded to even length


def _data_size(size: int, remaining: int, riff_size: int, file_size: int, fmt: AudioFormat) -> int:
    """Bytes of audio in a data chunk declaring `size`, with `remaining` bytes in the file."""
    align = fmt.block_align
    # An empty data chunk is genuine if the RIFF size accounts for exactly the whole file
    # (other chunks follow it); a streaming writer leaves the RIFF size unpatched too.
    genuinely_empty = size == 0 and riff_size + 8 == file_size
    if (
        size == _SIZE_UNPATCHED
        or (size == _SIZE_SOX_PIPE and size > remaining)
        or (size == 0 and not genuinely_empty)
    ):
        # The writer never patched the header: the audio is the rest of the file, cut to
        # whole sample frames (a recorder may have stopped mid-frame).
        return remaining - remaining % align
    if size > remaining:
        raise WavError(
            f"truncated file: data chunk declares {size} bytes but only {remaining} follow"
        )
    if size % align:
        raise WavError(
            f"data chunk of {size} bytes is not a whole number of {align}-byte sample frames"
        )
    return size


def _parse_fmt(body: bytes) -> AudioFormat:
    if len(body) < 16:
        raise WavError(f"fmt chunk too short ({len(body)} bytes, need 16)")
    tag, channels, rate, _byte_rate, block_align, bits = struct.unpack_from("<HHIIHH", body)
    if tag == WAVE_FORMAT_EXTENSIBLE:
        if len(body) < 40:
            raise WavError(f"WAVE_FORMAT_EXTENSIBLE fmt chunk too short ({len(body)} bytes)")
        tag, guid_tail = struct.unpack_from("<H14s", body, 24)
        if guid_tail != _GUID_TAIL:
            raise WavError("WAVE_FORMAT_EXTENSIBLE with an unknown subformat GUID")
    sample_type = _sample_type(tag, bits)
    try:
        fmt = AudioFormat(rate, channels, sample_type)
    except AudioFormatError as e:
        raise WavError(f"unsupported format: {e}") from e
    if block_align != fmt.block_align:
        raise WavError(
            f"block align {block_align} does not match {channels} ch x {bits} bit "
            f"({fmt.block_align} bytes)"
        )
    return fmt


def _sample_type(tag: int, bits: int) -> SampleType:
    if tag == WAVE_FORMAT_PCM:
        if bits == 8:
            raise WavError(
                "8-bit PCM is not supported (unsigned, too coarse for the protocol's sample "
                "types); convert it, e.g. `sox in.wav -b 16 out.wav`"
            )
        if bits in _PCM_TYPES:
            return _PCM_TYPES[bits]
        raise WavError(f"{bits}-bit PCM is not supported (only 16, 24 or 32 bit)")
    if tag == WAVE_FORMAT_IEEE_FLOAT:
        if bits == 32:
            return SampleType.FLOAT32
        if bits == 64:
            raise WavError(
                "float64 samples are not supported; convert to float32, e.g. "
                "`sox in.wav -e floating-point -b 32 out.wav`"
            )
        raise WavError(f"{bits}-bit float is not supported (only 32 bit)")
    name = _CODEC_NAMES.get(tag, "unknown codec")
    raise WavError(
        f"compressed WAV (format tag 0x{tag:04X}, {name}) is not supported; only PCM and IEEE "
        "float are streamed unchanged. Convert it, e.g. `sox in.wav -e signed -b 16 out.wav`"
    )


def read_wav(path: StrPath) -> tuple[AudioFormat, bytes]:
    """The format and the raw data bytes of `path` (whole file in memory: for small files)."""
    info = read_wav_info(path)
    with open(path, "rb") as f:
        f.seek(info.data_offset)
        data = f.read(info.data_bytes)
    if len(data) != info.data_bytes:
        raise WavError(f"file shrank while reading: {len(data)} of {info.data_bytes} bytes")
    return info.format, data


def write_wav(path: StrPath, fmt: AudioFormat, data: bytes | bytearray | memoryview) -> None:
    """Write `data` (raw interleaved samples of `fmt`) as a WAV file, atomically.

    The file appears complete or not at all: it is written to a temporary file in the same
    directory, fsynced, then renamed over `path`.
    """
    view = memoryview(data).cast("B")
    if view.nbytes % fmt.block_align:
        raise ValueError(
            f"{view.nbytes} bytes is not a whole number of {fmt.block_align}-byte sample frames"
        )
    target = Path(path)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "xb") as f:  # plain open: permissions follow the umask, like any file
            f.write(wav_header(fmt, view.nbytes // fmt.block_align))
            f.write(view)
            if view.nbytes & 1:
                f.write(b"\0")  # RIFF pads chunks to even length
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise

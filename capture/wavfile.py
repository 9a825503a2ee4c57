"""Minimal RIFF/WAVE header writing (reading lives beside it; see read_wav)."""

from __future__ import annotations

import struct

from uplink.audio import AudioFormat, SampleType

WAVE_FORMAT_PCM = 0x0001
WAVE_FORMAT_IEEE_FLOAT = 0x0003
WAVE_FORMAT_EXTENSIBLE = 0xFFFE
_GUID_TAIL = b"\x00\x00\x00\x00\x10\x00\x80\x00\x00\xaa\x00\x38\x9b\x71"


def wav_header(fmt: AudioFormat, n_sample_frames: int) -> bytes:
    """Header for a standard WAV holding `n_sample_frames` of `fmt`, data chunk last.

    int16 mono/stereo uses plain PCM; float32 uses IEEE float (with a `fact` chunk); int24,
    int32 and more than two channels use WAVE_FORMAT_EXTENSIBLE, as the format requires.
    """
    bits = fmt.sample_type.bytes_per_sample * 8
    data_bytes = n_sample_frames * fmt.block_align
    is_float = fmt.sample_type is SampleType.FLOAT32
    extensible = not is_float and (bits > 16 or fmt.channels > 2)
    if is_float and fmt.channels > 2:
        extensible = True
    base = struct.pack(
        "<HHIIHH",
        WAVE_FORMAT_EXTENSIBLE if extensible else (WAVE_FORMAT_IEEE_FLOAT if is_float else WAVE_FORMAT_PCM),
        fmt.channels,
        fmt.sample_rate,
        fmt.bytes_per_second,
        fmt.block_align,
        bits,
    )
    if extensible:
        sub = WAVE_FORMAT_IEEE_FLOAT if is_float else WAVE_FORMAT_PCM
        mask = (1 << fmt.channels) - 1 if fmt.channels <= 18 else 0
        fmt_body = base + struct.pack("<HHI", 22, bits, mask) + struct.pack("<H", sub) + _GUID_TAIL
    elif is_float:
        fmt_body = base + struct.pack("<H", 0)
    else:
        fmt_body = base
    chunks = b"fmt " + struct.pack("<I", len(fmt_body)) + fmt_body
    if is_float or extensible:
        chunks += b"fact" + struct.pack("<II", 4, n_sample_frames & 0xFFFFFFFF)
    chunks += b"data" + struct.pack("<I", min(data_bytes, 0xFFFFFFFF))
    riff_size = 4 + len(chunks) + data_bytes + (data_bytes & 1)
    return b"RIFF" + struct.pack("<I", min(riff_size, 0xFFFFFFFF)) + b"WAVE" + chunks

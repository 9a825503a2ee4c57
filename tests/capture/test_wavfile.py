"""capture.wavfile against libsndfile: every supported layout, odd files, and rejections."""

from __future__ import annotations

import shutil
import struct
import subprocess
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from hypothesis import given, settings
from hypothesis import strategies as st

from capture.wavfile import (
    WAVE_FORMAT_EXTENSIBLE,
    WavError,
    read_wav,
    read_wav_info,
    wav_header,
    write_wav,
)
from tests.capture.wavgen import (
    SF_DTYPE,
    chunk,
    decode_raw,
    make_samples,
    raw_bytes,
    riff,
    split_chunks,
    write_with_soundfile,
)
from uplink.audio import AudioFormat, SampleType

FRAMES = 1001  # odd: int16/int24 mono data chunks get a pad byte

# -- reading what libsndfile writes ----------------------------------------------------------


@pytest.mark.parametrize("container", ["WAV", "WAVEX"])
@pytest.mark.parametrize("sample_type", list(SampleType))
@pytest.mark.parametrize("channels", [1, 2, 6, 8])
@pytest.mark.parametrize("rate", [8000, 44100, 48000, 96000, 192000])
def test_read_matches_soundfile(
    tmp_path: Path, rate: int, channels: int, sample_type: SampleType, container: str
) -> None:
    samples = make_samples(rate + channels, FRAMES, channels, sample_type)
    path = write_with_soundfile(tmp_path / "x.wav", samples, rate, sample_type, container)
    if container == "WAVEX":
        assert struct.unpack_from("<H", path.read_bytes(), 20)[0] == WAVE_FORMAT_EXTENSIBLE

    fmt, data = read_wav(path)
    info = read_wav_info(path)

    assert fmt == AudioFormat(rate, channels, sample_type)
    assert info.format == fmt
    assert info.n_sample_frames == FRAMES
    assert info.data_bytes == len(data) == FRAMES * fmt.block_align
    assert data == raw_bytes(samples, sample_type)
    decoded, sf_rate = sf.read(path, dtype=SF_DTYPE[sample_type], always_2d=True)
    assert sf_rate == rate
    np.testing.assert_array_equal(decode_raw(data, channels, sample_type), decoded)


def _stereo_int16(tmp_path: Path, frames: int = 500) -> tuple[Path, bytes]:
    samples = make_samples(7, frames, 2, SampleType.INT16)
    path = write_with_soundfile(tmp_path / "s.wav", samples, 16000, SampleType.INT16)
    return path, raw_bytes(samples, SampleType.INT16)


def _with_chunks(path: Path, before_data: list[bytes], after_data: Sequence[bytes] = ()) -> bytes:
    parts = split_chunks(path.read_bytes())
    out = []
    for cid, body in parts:
        if cid == b"data":
            out.extend(before_data)
        out.append(chunk(cid, body))
        if cid == b"data":
            out.extend(after_data)
    return riff(out)


def test_skips_unknown_chunks_before_and_after_data(tmp_path: Path) -> None:
    path, expected = _stereo_int16(tmp_path)
    info_list = chunk(b"LIST", b"INFOINAM" + struct.pack("<I", 5) + b"title\0")  # odd: padded
    odd = chunk(b"junk", b"abc")
    blob = _with_chunks(path, [info_list, odd, chunk(b"bext", bytes(602))], [info_list])
    out = tmp_path / "chunks.wav"
    out.write_bytes(blob)

    assert read_wav(out) == (AudioFormat(16000, 2, SampleType.INT16), expected)
    np.testing.assert_array_equal(  # libsndfile agrees the file is well formed
        sf.read(out, dtype="int16")[0], decode_raw(expected, 2, SampleType.INT16)
    )


def test_reads_float_file_with_fact_and_peak_and_metadata(tmp_path: Path) -> None:
    samples = make_samples(3, 777, 2, SampleType.FLOAT32)
    path = tmp_path / "meta.wav"
    with sf.SoundFile(path, "w", 44100, 2, subtype="FLOAT", format="WAV") as f:
        f.title = "echopanel"
        f.artist = "tests"
        f.write(samples)
    ids = [cid for cid, _ in split_chunks(path.read_bytes())]
    assert {b"fact", b"PEAK", b"LIST"} <= set(ids)

    fmt, data = read_wav(path)
    assert fmt == AudioFormat(44100, 2, SampleType.FLOAT32)
    assert data == raw_bytes(samples, SampleType.FLOAT32)


# -- streaming writers that never patched the sizes ------------------------------------------


@pytest.mark.parametrize("riff_size", [0, 0xFFFFFFFF, None])
@pytest.mark.parametrize("data_size", [0, 0xFFFFFFFF])
def test_unpatched_data_size_means_rest_of_file(
    tmp_path: Path, data_size: int, riff_size: int | None
) -> None:
    path, expected = _stereo_int16(tmp_path)
    blob = bytearray(path.read_bytes())
    assert blob[36:40] == b"data"
    blob[40:44] = struct.pack("<I", data_size)
    if riff_size is not None:
        blob[4:8] = struct.pack("<I", riff_size)
    blob += b"\x01\x02\x03"  # a recorder stopped mid-frame: not a whole sample frame
    path.write_bytes(blob)

    info = read_wav_info(path)
    assert info.n_sample_frames == 500
    assert read_wav(path)[1] == expected


def test_sox_writing_to_a_pipe(tmp_path: Path) -> None:
    sox = shutil.which("sox")
    if sox is None:
        pytest.skip("sox not installed")
    cmd = [sox, "-n", "-r", "8000", "-c", "2", "-b", "16", "-t", "wav", "-", "synth", "0.5",
           "sine", "440"]
    blob = subprocess.run(cmd, capture_output=True, check=True).stdout
    path = tmp_path / "piped.wav"
    path.write_bytes(blob)

    fmt, data = read_wav(path)
    assert fmt == AudioFormat(8000, 2, SampleType.INT16)
    assert len(data) == 4000 * 4
    assert data == blob[44:]


def test_genuinely_empty_data_chunk_followed_by_other_chunks(tmp_path: Path) -> None:
    fmt = AudioFormat(16000, 1, SampleType.INT16)
    blob = wav_header(fmt, 0) + chunk(b"LIST", b"INFOjunk")
    blob = blob[:4] + struct.pack("<I", len(blob) - 8) + blob[8:]
    path = tmp_path / "empty.wav"
    path.write_bytes(blob)
    assert read_wav(path) == (fmt, b"")


# -- rejections --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("subtype", "container", "message"),
    [
        ("PCM_U8", "WAV", "8-bit"),
        ("PCM_U8", "WAVEX", "8-bit"),
        ("DOUBLE", "WAV", "float64"),
        ("DOUBLE", "WAVEX", "float64"),
        ("ULAW", "WAV", "compressed"),
        ("ALAW", "WAVEX", "compressed"),
        ("IMA_ADPCM", "WAV", "compressed"),
        ("MS_ADPCM", "WAV", "compressed"),
        ("GSM610", "WAV", "compressed"),
    ],
)
def test_rejects_unsupported_encodings(
    tmp_path: Path, subtype: str, container: str, message: str
) -> None:
    path = tmp_path / "bad.wav"
    channels = 1 if subtype == "GSM610" else 2
    sf.write(path, np.zeros((800, channels), np.float32), 8000, subtype=subtype, format=container)
    with pytest.raises(WavError, match=message):
        read_wav_info(path)
    with pytest.raises(WavError, match=message):
        read_wav(path)


def test_rejects_unsupported_rate_and_channels(tmp_path: Path) -> None:
    path = tmp_path / "nine.wav"
    sf.write(path, np.zeros((10, 9), np.int16), 16000, subtype="PCM_16")
    with pytest.raises(WavError, match="channels"):
        read_wav_info(path)
    sf.write(path, np.zeros((10, 1), np.int16), 4000, subtype="PCM_16")
    with pytest.raises(WavError, match="sample rate"):
        read_wav_info(path)


@pytest.mark.parametrize("cut", [0, 3, 11, 12, 16, 20, 35, 40, 43, 44 + 101, 44 + 1999])
def test_rejects_truncated_files(tmp_path: Path, cut: int) -> None:
    path, _ = _stereo_int16(tmp_path)
    assert read_wav_info(path).data_offset == 44
    path.write_bytes(path.read_bytes()[:cut])
    with pytest.raises(WavError, match="truncated"):
        read_wav(path)


def test_rejects_truncated_extensible_fmt(tmp_path: Path) -> None:
    fmt = AudioFormat(48000, 2, SampleType.INT24)
    blob = wav_header(fmt, 0)
    fmt_body = split_chunks(blob)[0][1]
    path = tmp_path / "short_fmt.wav"
    path.write_bytes(riff([chunk(b"fmt ", fmt_body[:30]), chunk(b"data", b"")]))
    with pytest.raises(WavError, match="EXTENSIBLE fmt chunk too short"):
        read_wav_info(path)


@pytest.mark.parametrize(
    ("blob", "message"),
    [
        (b"hello, this is not a wav file at all", "not a RIFF/WAVE"),
        (b"RIFX" + bytes(40), "RIFX"),
        (b"RF64" + bytes(40), "RF64"),
        (riff([chunk(b"LIST", b"INFO")]), "no fmt chunk"),
        (riff([chunk(b"data", bytes(4))]), "before the fmt"),
        (riff([chunk(b"fmt ", bytes(14)), chunk(b"data", b"")]), "fmt chunk too short"),
    ],
)
def test_rejects_malformed_files(tmp_path: Path, blob: bytes, message: str) -> None:
    path = tmp_path / "bad.wav"
    path.write_bytes(blob)
    with pytest.raises(WavError, match=message):
        read_wav_info(path)


def test_rejects_unknown_extensible_subformat_and_bad_block_align(tmp_path: Path) -> None:
    fmt = AudioFormat(48000, 2, SampleType.INT24)
    good = wav_header(fmt, 0)
    path = tmp_path / "x.wav"
    path.write_bytes(good[:46] + b"\x99" + good[47:])  # inside the subformat GUID tail
    with pytest.raises(WavError, match="subformat GUID"):
        read_wav_info(path)
    path.write_bytes(good[:32] + struct.pack("<H", 5) + good[34:])
    with pytest.raises(WavError, match="block align"):
        read_wav_info(path)


def test_rejects_data_that_is_not_whole_frames(tmp_path: Path) -> None:
    fmt = AudioFormat(16000, 2, SampleType.INT16)
    blob = wav_header(fmt, 0)[:-8] + chunk(b"data", bytes(6))
    path = tmp_path / "x.wav"
    path.write_bytes(blob)
    with pytest.raises(WavError, match="whole number"):
        read_wav_info(path)


_valid_header = wav_header(AudioFormat(16000, 2, SampleType.INT24), 4) + bytes(24)


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        st.binary(max_size=120).map(lambda b: b"RIFF" + b[:4] + b"WAVE" + b[4:]),
        st.lists(st.tuples(st.integers(0, len(_valid_header) - 1), st.integers(0, 255)),
                 min_size=1, max_size=6).map(
            lambda edits: bytes(_mutate(_valid_header, edits))
        ),
        st.integers(0, len(_valid_header)).map(lambda n: _valid_header[:n]),
    )
)
def test_garbage_raises_only_wav_error(
    tmp_path_factory: pytest.TempPathFactory, blob: bytes
) -> None:
    path = tmp_path_factory.getbasetemp() / "fuzz.wav"
    path.write_bytes(blob)
    try:
        info = read_wav_info(path)
    except WavError:
        return
    assert info.data_bytes == info.n_sample_frames * info.format.block_align
    assert info.data_offset + info.data_bytes <= len(blob)
    assert read_wav(path)[1] == blob[info.data_offset : info.data_offset + info.data_bytes]


def _mutate(blob: bytes, edits: list[tuple[int, int]]) -> bytearray:
    out = bytearray(blob)
    for pos, value in edits:
        out[pos] = value
    return out


# -- writing -----------------------------------------------------------------------------------


@pytest.mark.parametrize("sample_type", list(SampleType))
@pytest.mark.parametrize("channels", [1, 2, 6, 8])
@pytest.mark.parametrize("rate", [8000, 44100, 192000])
def test_write_round_trip_through_soundfile(
    tmp_path: Path, rate: int, channels: int, sample_type: SampleType
) -> None:
    samples = make_samples(channels * 10 + rate, FRAMES, channels, sample_type)
    fmt = AudioFormat(rate, channels, sample_type)
    path = tmp_path / "out.wav"
    write_wav(path, fmt, raw_bytes(samples, sample_type))

    assert path.stat().st_size % 2 == 0  # odd data chunks are padded
    decoded, sf_rate = sf.read(path, dtype=SF_DTYPE[sample_type], always_2d=True)
    assert sf_rate == rate
    np.testing.assert_array_equal(decoded, samples)
    assert read_wav(path) == (fmt, raw_bytes(samples, sample_type))
    assert [p.name for p in tmp_path.iterdir()] == ["out.wav"]  # no temp file left behind


def test_write_replaces_existing_file_and_accepts_buffers(tmp_path: Path) -> None:
    fmt = AudioFormat(16000, 1, SampleType.INT16)
    path = tmp_path / "out.wav"
    path.write_bytes(b"old contents")
    samples = make_samples(1, 101, 1, SampleType.INT16)
    write_wav(path, fmt, memoryview(samples.data))  # an int16 buffer, not bytes
    assert read_wav(path) == (fmt, samples.tobytes())
    write_wav(path, fmt, b"")
    assert read_wav(path) == (fmt, b"")
    assert sf.info(path).frames == 0


def test_write_rejects_partial_sample_frames(tmp_path: Path) -> None:
    fmt = AudioFormat(16000, 2, SampleType.INT24)
    with pytest.raises(ValueError, match="whole number"):
        write_wav(tmp_path / "x.wav", fmt, bytes(7))
    assert list(tmp_path.iterdir()) == []

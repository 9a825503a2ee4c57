"""Audio input devices on PortAudio (sounddevice), imported lazily: enumeration, selection
by index or name, format probing, and PortAudio re-scans.

Importing this module needs neither sounddevice nor PortAudio; `import_sounddevice()` imports them
when a function talks to a device, and a missing PortAudio becomes a SourceError that says
which system package to install. capture/microphone.py captures from what this module finds.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from types import ModuleType

from capture.source import SourceError
from uplink.audio import SampleType

PORTAUDIO_MISSING = (
    "PortAudio not found: install the system package libportaudio2 "
    "(Debian/Ubuntu: apt-get install libportaudio2)"
)
NO_INPUT_DEVICE = "no audio input device found; stream a file instead with --input FILE.wav"
COMMON_RATES = (8000, 16000, 22050, 32000, 44100, 48000, 96000)

PORTAUDIO_DTYPES: dict[SampleType, str] = {
    SampleType.INT16: "int16",
    SampleType.INT24: "int24",
    SampleType.INT32: "int32",
    SampleType.FLOAT32: "float32",
}

# Guards PortAudio (re)initialisation against concurrent device queries.
PORTAUDIO_LOCK = threading.RLock()


def import_sounddevice() -> ModuleType:
    """Import sounddevice, turning a missing PortAudio into a SourceError."""
    try:
        import sounddevice
    except OSError as e:  # sounddevice raises OSError('PortAudio library not found')
        raise SourceError(PORTAUDIO_MISSING) from e
    except ImportError as e:
        raise SourceError(
            "the Python package sounddevice is not installed (pip install sounddevice); "
            f"{PORTAUDIO_MISSING}"
        ) from e
    return sounddevice


def rescan_devices() -> None:
    """Make PortAudio enumerate devices again (it does so only at initialisation).

    Closes every PortAudio stream open in this process.
    """
    sd = import_sounddevice()
    with PORTAUDIO_LOCK:
        sd._terminate()
        sd._initialize()


@dataclass(frozen=True, slots=True)
class DeviceInfo:
    index: int
    name: str
    max_input_channels: int
    default_samplerate: float
    is_default: bool
    hostapi: str = ""

    def __str__(self) -> str:
        star = "*" if self.is_default else " "
        return (
            f"{star}{self.index:3d} {self.name} ({self.hostapi}, "
            f"{self.max_input_channels} in, {self.default_samplerate:g} Hz)"
        )


def list_input_devices() -> list[DeviceInfo]:
    """Every PortAudio device with at least one input channel."""
    sd = import_sounddevice()
    with PORTAUDIO_LOCK:
        return input_devices(sd)


def input_devices(sd: ModuleType) -> list[DeviceInfo]:
    try:
        default_index = int(sd.query_devices(kind="input")["index"])
    except (sd.PortAudioError, ValueError, KeyError, TypeError):
        default_index = -1
    hostapis = [h["name"] for h in sd.query_hostapis()]
    out = []
    for d in sd.query_devices():
        if d["max_input_channels"] <= 0:
            continue
        h = d.get("hostapi", -1)
        out.append(
            DeviceInfo(
                index=int(d["index"]),
                name=str(d["name"]),
                max_input_channels=int(d["max_input_channels"]),
                default_samplerate=float(d["default_samplerate"]),
                is_default=int(d["index"]) == default_index,
                hostapi=hostapis[h] if 0 <= h < len(hostapis) else "",
            )
        )
    return out


def pick_device(devices: list[DeviceInfo], spec: int | str | None) -> DeviceInfo:
    """Resolve a device spec (index, name substring, None = default) among input devices."""
    if not devices:
        raise SourceError(NO_INPUT_DEVICE)
    available = "; ".join(f"{d.index}: {d.name}" for d in devices)
    if isinstance(spec, str) and spec.strip().isdigit():
        spec = int(spec.strip())
    if spec is None:
        for d in devices:
            if d.is_default:
                return d
        raise SourceError(
            f"no default audio input device; choose one with --device (inputs: {available})"
        )
    if isinstance(spec, int):
        for d in devices:
            if d.index == spec:
                return d
        raise SourceError(f"no audio input device with index {spec} (inputs: {available})")
    want = spec.casefold()
    exact = [d for d in devices if d.name.casefold() == want]
    if exact:
        return exact[0]
    matches = [d for d in devices if want in d.name.casefold()]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise SourceError(f"no audio input device matching {spec!r} (inputs: {available})")
    names = "; ".join(f"{d.index}: {d.name}" for d in matches)
    raise SourceError(f"{spec!r} matches several input devices ({names}); be more specific")


def supported_formats(
    check: Callable[[int, str], bool],
    rates: Iterable[int] = COMMON_RATES,
    dtypes: Iterable[str] = tuple(PORTAUDIO_DTYPES.values()),
) -> dict[int, list[str]]:
    """{rate: [sample types]} for which ``check(rate, dtype)`` is true."""
    dts = list(dtypes)
    out: dict[int, list[str]] = {}
    for rate in rates:
        ok = [dt for dt in dts if check(rate, dt)]
        if ok:
            out[rate] = ok
    return out


def describe_supported(table: dict[int, list[str]], channels: int) -> str:
    """Human summary of a supported_formats() table, grouped by identical type lists."""
    ch = f"{channels} channel{'s' if channels != 1 else ''}"
    if not table:
        return (
            f"None of the common rates ({', '.join(map(str, COMMON_RATES))} Hz) works with "
            f"{ch} in any sample type"
        )
    groups: dict[tuple[str, ...], list[int]] = {}
    for rate, types in table.items():
        groups.setdefault(tuple(types), []).append(rate)
    parts = [
        f"{', '.join(map(str, rates))} Hz x {', '.join(types)}" for types, rates in groups.items()
    ]
    return f"Supported with {ch}: " + "; ".join(parts)

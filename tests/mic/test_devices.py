"""Device listing, selection and format errors on the real PortAudio -> ALSA -> PulseAudio stack."""

from __future__ import annotations

import pytest

from capture.microphone import MicrophoneSource, list_input_devices
from capture.source import SourceError
from tools.virtual_mic import ALSA_DEVICE, PROBE_DEVICE, SOURCE_DESCRIPTION, VirtualMic

from .conftest import RecordingSink


def test_lists_the_virtual_mic(mic: VirtualMic) -> None:
    devices = {d.name: d for d in list_input_devices()}
    assert ALSA_DEVICE in devices, devices
    d = devices[ALSA_DEVICE]
    assert d.max_input_channels >= 1
    assert d.default_samplerate > 0
    assert d.hostapi == "ALSA"
    # PortAudio's default input is the pulse plugin ("default"), recording the server's
    # default source, which is the virtual mic.
    defaults = [d for d in devices.values() if d.is_default]
    assert len(defaults) == 1 and defaults[0].name in ("default", "pulse")
    assert "echopanel_mic" in mic.pactl("get-default-source")
    assert SOURCE_DESCRIPTION in mic.pactl("list", "sources")


@pytest.mark.parametrize("spec", ["ECHOPANEL_MIC", "Panel_Mi", ALSA_DEVICE])
def test_select_by_name_substring(mic: VirtualMic, spec: str) -> None:
    src = MicrophoneSource(device=spec)
    sink = RecordingSink(src.format.block_align)
    src.start(sink)
    try:
        assert src.device_info is not None and src.device_info.name == ALSA_DEVICE
        sink.wait_samples(800, timeout=5)
    finally:
        src.stop()
    assert sink.closed and not sink.errors
    assert src.wait(0)


def test_select_by_index_and_default(mic: VirtualMic) -> None:
    devices = list_input_devices()
    want = next(d for d in devices if d.name == ALSA_DEVICE)
    for spec, expect in ((want.index, ALSA_DEVICE), (str(want.index), ALSA_DEVICE)):
        src = MicrophoneSource(device=spec)
        sink = RecordingSink(src.format.block_align)
        src.start(sink)
        src.stop()
        assert src.device_info is not None and src.device_info.name == expect
    src = MicrophoneSource()  # the default input: the pulse plugin -> default source
    sink = RecordingSink(src.format.block_align)
    src.start(sink)
    try:
        sink.wait_samples(800, timeout=5)
    finally:
        src.stop()
    assert src.device_info is not None and src.device_info.is_default


def test_unknown_and_ambiguous_names(mic: VirtualMic) -> None:
    with pytest.raises(SourceError, match="no audio input device matching 'nosuchmic'") as e:
        MicrophoneSource(device="nosuchmic").start(RecordingSink(2))
    assert ALSA_DEVICE in str(e.value)  # lists what there is
    # "echopanel" matches echopanel_mic and echopanel_mono_probe
    with pytest.raises(SourceError, match="matches several input devices") as e:
        MicrophoneSource(device="echopanel").start(RecordingSink(2))
    assert ALSA_DEVICE in str(e.value) and PROBE_DEVICE in str(e.value)
    with pytest.raises(SourceError, match="no audio input device with index 999"):
        MicrophoneSource(device=999).start(RecordingSink(2))


def test_bad_format_lists_supported_formats(mic: VirtualMic) -> None:
    probe = next(d for d in list_input_devices() if d.name == PROBE_DEVICE)
    assert probe.max_input_channels == 1
    sink = RecordingSink(4)
    src = MicrophoneSource(device=PROBE_DEVICE, channels=2)
    with pytest.raises(SourceError) as e:
        src.start(sink)
    msg = str(e.value)
    assert f"{PROBE_DEVICE!r}" in msg, msg
    assert "cannot capture 16000 Hz, 2 ch, int16" in msg, msg
    assert "Invalid number of channels" in msg, msg
    assert "at most 1 input channel" in msg, msg
    assert "Supported with 1 channel: " in msg, msg
    for rate in ("8000", "16000", "22050", "32000", "44100", "48000", "96000"):
        assert rate in msg, msg
    for dtype in ("int16", "int24", "int32", "float32"):
        assert dtype in msg, msg
    assert not sink.closed and not sink.audio

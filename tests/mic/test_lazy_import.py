"""Importing the microphone module needs no PortAudio; its absence gives advice, not a trace."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from capture.microphone import NO_INPUT_DEVICE, PORTAUDIO_MISSING

ROOT = Path(__file__).resolve().parents[2]


def _run(code: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_import_does_not_load_sounddevice() -> None:
    r = _run(
        """
        import sys
        import capture.microphone as m
        src = m.MicrophoneSource(device="anything", sample_rate=48000, sample_type="int24")
        assert src.blocksize == 960, src.blocksize
        loaded = sorted(k for k in sys.modules if "sounddevice" in k)
        assert not loaded, loaded
        print("ok")
        """
    )
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


def test_missing_portaudio_is_a_clear_source_error() -> None:
    # sounddevice raises OSError('PortAudio library not found') when find_library fails
    r = _run(
        """
        import ctypes.util
        real = ctypes.util.find_library
        ctypes.util.find_library = lambda name: None if name == "portaudio" else real(name)
        from capture.microphone import MicrophoneSource, list_input_devices
        from capture.source import SourceError
        for call in (list_input_devices, lambda: MicrophoneSource().start(None)):
            try:
                call()
            except SourceError as e:
                print(e)
            else:
                raise SystemExit("no SourceError")
        """
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [PORTAUDIO_MISSING, PORTAUDIO_MISSING]
    assert "apt-get install libportaudio2" in PORTAUDIO_MISSING


@pytest.mark.skipif(Path("/dev/snd").exists(), reason="this machine has sound hardware")
def test_no_input_device_at_all(tmp_path: Path) -> None:
    (tmp_path / "client.conf").write_text("autospawn = no\n")
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("PULSE_", "ALSA_", "XDG_"))
    }
    env.update(
        PULSE_SERVER=f"unix:{tmp_path}/no-such-server",
        PULSE_CLIENTCONFIG=str(tmp_path / "client.conf"),
        PULSE_RUNTIME_PATH=str(tmp_path),  # keeps libpulse out of ~/.config/pulse
        PULSE_COOKIE=str(tmp_path / "cookie"),
    )
    r = _run(
        """
        from capture.microphone import MicrophoneSource, list_input_devices
        from capture.source import SourceError
        assert list_input_devices() == [], list_input_devices()
        try:
            MicrophoneSource().start(None)
        except SourceError as e:
            print(e)
        """,
        env=env,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == NO_INPUT_DEVICE

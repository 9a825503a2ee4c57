"""A real PulseAudio virtual microphone, for tests and demos.

``VirtualMic`` starts a private ``pulseaudio`` daemon, builds a "microphone" out of a null
sink's monitor (``module-null-sink`` + ``module-remap-source``), and points ALSA (and so
PortAudio / sounddevice) at it through ALSA's pulse plugin. Whatever is played into the sink
(``play()``, i.e. ``paplay``) comes out of the microphone::

    paplay ─► echopanel_sink ─► .monitor ─► echopanel_mic ─► ALSA pulse plugin ─► PortAudio
              (null sink)                   (remap source,    (PCM "echopanel_mic",
                                             "EchoPanel        or "default"/"pulse")
                                             Virtual Mic")

Command line (the daemon outlives the command; ``eval`` the output to use it in a shell)::

    eval "$(python -m tools.virtual_mic up)"    # prints `export ...` lines
    python -m tools.virtual_mic play capture/data/speech_16k_mono.wav
    python -m tools.virtual_mic down

What works on Debian 12 (PulseAudio 16.1, alsa-plugins 1.2.7, libportaudio2 19.6), as root,
with no sound hardware — verified by hand while writing this module:

- ``pulseaudio --daemonize=no --exit-idle-time=-1 --disallow-exit -n`` runs as root without
  ``--system``; it only warns ("not intended to be run as root"). It needs a writable
  runtime dir (``XDG_RUNTIME_DIR`` / ``PULSE_RUNTIME_PATH``) and writes its state (cookie,
  ``<machine-id>-runtime`` link) under ``$HOME/.config/pulse`` unless ``PULSE_STATE_PATH``
  and ``HOME`` point elsewhere: we give the daemon a private temp dir for all of them.
- ``-n`` loads no default.pa, so the native protocol is loaded on the command line
  (``--load=module-native-protocol-unix auth-anonymous=1 socket=...``); the other modules
  are loaded with ``pactl`` once ``pactl info`` answers (readiness is polled, bounded).
- Clients connect with ``PULSE_SERVER=unix:<socket>`` alone (no ``XDG_RUNTIME_DIR``), but
  as root without a runtime dir libpulse creates ``~/.config/pulse/<machine-id>-runtime``
  (plain ``import sounddevice`` does it on this machine), so ``env`` also has
  ``PULSE_RUNTIME_PATH``; ``PULSE_COOKIE`` keeps it from creating ``~/.config/pulse/cookie``
  (the socket is anonymous-auth inside a 0700 dir, so the cookie's content is irrelevant),
  and ``PULSE_CLIENTCONFIG`` (``autospawn = no``) keeps clients from spawning a daemon of
  their own while ours is down. Nothing is written outside the temp dir.
- ``module-remap-source ... source_properties="device.description='EchoPanel Virtual Mic'"``
  — the proplist value needs the inner quotes; ``source_properties=device.description=X\\ Y``
  fails with "Invalid properties".
- PortAudio reaches PulseAudio only through ALSA's pulse plugin. Debian already ships a hook
  (``/etc/alsa/conf.d/99-pulse.conf``) that makes ``pcm.!default`` the pulse plugin when a
  server is reachable (it honours ``PULSE_SERVER``), and ``50-pulseaudio.conf`` defines
  ``pcm.pulse``; so with only ``PULSE_SERVER`` set, PortAudio lists "pulse" and "default".
  We also write our own asoundrc and load it after the system config with
  ``ALSA_CONFIG_PATH=/usr/share/alsa/alsa.conf:<dir>/asoundrc`` (narrower than changing
  ``HOME``): it sets ``pcm.!default``/``ctl.!default`` to the pulse plugin explicitly (for
  systems without the hook) and adds a PCM named ``echopanel_mic`` (``type pulse``,
  ``device echopanel_mic``), which PortAudio lists under that name: selecting the virtual
  mic by name works without touching the server's default source.
- Device names seen by PortAudio: ``echopanel_mic``, ``pulse``, ``default`` (all "ALSA",
  32 in / 32 out, default rate 44100). "pulse" and "default" record from ``PULSE_SOURCE`` if
  set (verified), else from the server's default source (we set it to ``echopanel_mic``).
  The friendly description is a PulseAudio property: ``pactl list sources`` shows it,
  PortAudio does not.
- The pulse plugin accepts every rate 1..384000 Hz, 1..32 channels and every PortAudio
  sample type (PulseAudio resamples and remixes), so no valid ``AudioFormat`` is ever
  refused by "pulse"/"default"/"echopanel_mic". To exercise format errors there is an
  optional mono-only PCM (``format_probe_device=True``): ``echopanel_mono_probe``, a
  ``type multi`` with one channel over ``mmap_emul`` over the pulse plugin. PortAudio lists
  it with 1 input channel and ``check_input_settings(channels=2)`` fails on it. **It is for
  format probing only**: a PortAudio stream on it hangs (arecord works; PortAudio's mmap path
  over ``mmap_emul`` does not). Generic ALSA plugins (route, multi, linear, speex...)
  directly over the pulse plugin fail with "no configurations available" (they need mmap).
- PortAudio enumerates devices once, in ``Pa_Initialize`` (``import sounddevice``): the
  environment must be in place before that; afterwards a re-scan needs
  ``sd._terminate(); sd._initialize()`` (``activate()`` does it if sounddevice is loaded).
  A re-scan closes every open PortAudio stream in the process.
- Device loss: PulseAudio >= 14 *rescues* capture streams when their source goes away — it
  moves them to the new default source (here the sink's monitor), and PortAudio never
  notices. Killing the client's source output does not help either: PortAudio's ALSA xrun
  recovery re-prepares the PCM and the pulse plugin silently reconnects. So
  ``unload_source()`` removes the remap source *and* the null sink; with no source left to
  rescue to, the PortAudio stream ends within ~25 ms (``active`` false, finished callback
  runs; poll error in pa_linux_alsa.c), and opening ``echopanel_mic`` fails ("No such
  entity") until ``load_source()``.
- Overruns are invisible on this path: a callback blocked for 0.5 s loses ~0.4 s of audio
  with no ``input_overflow`` flag and no jump in ``inputBufferAdcTime``. The ALSA
  ``'low'``/``'high'`` latencies of these devices are both 0.04 s.
- Start-up: an idle null sink renders in 2-second blocks ("configured 2000000 usec"), and a
  new recording stream on the remap source waits for the current block to end: 0-2 s
  before its first callback (the sink's monitor itself answers at once). A silent
  low-latency player (``pacat`` from /dev/zero, 20 ms) kept on the sink, plus one
  suspend/resume of the sink once it is connected (a new latency applies only from the
  next block), brings that to 10-150 ms; ``warm_up()`` then checks, bounded, that the mic
  delivers audio.
- Fidelity: with sink, source and capture all at 16 kHz int16 mono the path is bit-exact.
  The default sink rate is 48 kHz (PulseAudio resamples, as with most real microphones):
  a 16 kHz capture then lands on one of three 48 kHz phases, i.e. 0 or 1/3 sample late
  (normalized correlation with a 0.2-4 kHz chirp: 1.000 or 0.953), no sample lost.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

SINK_NAME = "echopanel_sink"
SOURCE_NAME = "echopanel_mic"
SOURCE_DESCRIPTION = "EchoPanel Virtual Mic"
SINK_DESCRIPTION = "EchoPanel Virtual Mic Input"
#: PortAudio device name of the ALSA PCM that records from SOURCE_NAME.
ALSA_DEVICE = "echopanel_mic"
#: Mono-only PCM for format-error tests (format_probe_device=True); never stream from it.
PROBE_DEVICE = "echopanel_mono_probe"

_SYSTEM_ALSA_CONFIGS = ("/usr/share/alsa/alsa.conf", "/usr/local/share/alsa/alsa.conf")
_PR_SET_PDEATHSIG = 1
_STATE_FILE = "virtual_mic.json"


class VirtualMicError(RuntimeError):
    """The PulseAudio harness could not be started or driven; the message says why."""


def _die_with_parent() -> None:  # runs in the child between fork and exec
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def _asoundrc(probe_device: bool) -> str:
    text = f"""\
# Written by tools/virtual_mic.py; loaded after the system config via ALSA_CONFIG_PATH.
pcm.!default {{
    type pulse
    hint {{ show on description "PulseAudio (echopanel virtual mic server)" }}
}}
ctl.!default {{
    type pulse
}}
pcm.{ALSA_DEVICE} {{
    type pulse
    device {SOURCE_NAME}
    hint {{ show on description "{SOURCE_DESCRIPTION}" }}
}}
ctl.{ALSA_DEVICE} {{
    type pulse
}}
"""
    if probe_device:
        text += f"""\
# Format probing only (1 channel): PortAudio streams on mmap_emul hang.
pcm.{PROBE_DEVICE} {{
    type multi
    slaves.a {{ pcm {{ type mmap_emul slave.pcm {ALSA_DEVICE} }} channels 1 }}
    bindings.0 {{ slave a channel 0 }}
}}
"""
    return text


class VirtualMic:
    """A private PulseAudio server whose default source is a virtual microphone.

    Use as a context manager (or ``start()`` / ``stop()``). ``env`` holds the variables a
    process needs to use this server through PortAudio or libpulse; ``activate()`` applies
    them to the current process (re-scanning PortAudio if it is already loaded).
    """

    def __init__(
        self,
        *,
        rate: int = 48_000,
        channels: int = 1,
        base_dir: str | os.PathLike[str] | None = None,
        startup_timeout: float = 10.0,
        format_probe_device: bool = False,
        die_with_parent: bool = True,
        keep_dir: bool = False,
    ) -> None:
        self.rate = rate
        self.channels = channels
        self.startup_timeout = startup_timeout
        self.format_probe_device = format_probe_device
        self._die_with_parent = die_with_parent
        self._given_dir = Path(base_dir) if base_dir is not None else None
        self._keep_dir = keep_dir or base_dir is not None
        self.dir = Path()
        self.env: dict[str, str] = {}
        self._proc: subprocess.Popen[bytes] | None = None
        self._keepalive: subprocess.Popen[bytes] | None = None
        self._pid: int | None = None
        self._sink_module: int | None = None
        self._source_module: int | None = None
        self._saved_env: dict[str, str | None] | None = None
        self._log_file: Any = None

    # -- paths -------------------------------------------------------------------------
    @property
    def runtime_dir(self) -> Path:
        return self.dir / "run"

    @property
    def socket_path(self) -> Path:
        return self.runtime_dir / "pulse" / "native"

    @property
    def asoundrc_path(self) -> Path:
        return self.dir / "asoundrc"

    @property
    def log_path(self) -> Path:
        return self.dir / "pulseaudio.log"

    @property
    def pid(self) -> int | None:
        return self._pid

    @property
    def running(self) -> bool:
        if self._proc is not None:
            return self._proc.poll() is None
        return self._pid is not None and _pid_alive(self._pid)

    @property
    def source_loaded(self) -> bool:
        return self._source_module is not None

    # -- lifecycle ---------------------------------------------------------------------
    def start(self) -> VirtualMic:
        if self._pid is not None:
            raise VirtualMicError("virtual mic already started")
        if shutil.which("pulseaudio") is None or shutil.which("pactl") is None:
            raise VirtualMicError(
                "pulseaudio/pactl not found: install the Debian packages pulseaudio and "
                "pulseaudio-utils (plus libasound2-plugins for ALSA's pulse plugin)"
            )
        if self._given_dir is not None:
            self.dir = self._given_dir
            self.dir.mkdir(parents=True, exist_ok=True)
        else:
            self.dir = Path(tempfile.mkdtemp(prefix="echopanel-vmic-"))
        try:
            self._start_daemon()
            self._wait_ready()
            self.load_source()
        except BaseException:
            self.stop()
            raise
        return self

    def _prepare_dirs(self) -> None:
        for sub in ("run", "run/pulse", "state", "home", "home/.config"):
            (self.dir / sub).mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.dir, 0o700)
        self.asoundrc_path.write_text(_asoundrc(self.format_probe_device))
        (self.dir / "client.conf").write_text("autospawn = no\n")
        system_conf = os.environ.get("ALSA_CONFIG_PATH") or next(
            (p for p in _SYSTEM_ALSA_CONFIGS if os.path.exists(p)), ""
        )
        alsa_path = ":".join(p for p in (system_conf, str(self.asoundrc_path)) if p)
        self.env = {
            "PULSE_SERVER": f"unix:{self.socket_path}",
            "PULSE_RUNTIME_PATH": str(self.runtime_dir / "pulse"),
            "PULSE_COOKIE": str(self.dir / "cookie"),
            "PULSE_CLIENTCONFIG": str(self.dir / "client.conf"),
            "PULSE_SINK": SINK_NAME,
            "PULSE_SOURCE": SOURCE_NAME,
            "ALSA_CONFIG_PATH": alsa_path,
        }

    def _daemon_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PULSE_")}
        env.update(
            HOME=str(self.dir / "home"),
            XDG_CONFIG_HOME=str(self.dir / "home" / ".config"),
            XDG_RUNTIME_DIR=str(self.runtime_dir),
            PULSE_RUNTIME_PATH=str(self.runtime_dir / "pulse"),
            PULSE_STATE_PATH=str(self.dir / "state"),
        )
        return env

    def _start_daemon(self) -> None:
        self._prepare_dirs()
        cmd = [
            "pulseaudio",
            "--daemonize=no",
            "--system=no",
            "--exit-idle-time=-1",
            "--disallow-exit",
            "-n",
            "--realtime=no",
            "--log-target=stderr",
            "--log-time=yes",
            f"--load=module-native-protocol-unix auth-anonymous=1 socket={self.socket_path}",
        ]
        self._log_file = open(self.log_path, "ab")  # noqa: SIM115 (closed in stop())
        self._proc = subprocess.Popen(
            cmd,
            env=self._daemon_env(),
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a Ctrl-C in the terminal must not race our cleanup
            preexec_fn=_die_with_parent if self._die_with_parent else None,
        )
        self._pid = self._proc.pid

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        last = ""
        while True:
            if not self.running:
                raise VirtualMicError(
                    f"pulseaudio exited during start-up:\n{self.log_tail()}"
                )
            r = self._run(["pactl", "info"], check=False, timeout=5)
            if r.returncode == 0 and "Server Name" in r.stdout:
                return
            last = (r.stderr or r.stdout).strip()
            if time.monotonic() >= deadline:
                raise VirtualMicError(
                    f"pulseaudio did not answer `pactl info` within {self.startup_timeout} s "
                    f"({last}):\n{self.log_tail()}"
                )
            time.sleep(0.05)  # readiness probe interval

    def stop(self) -> None:
        """Stop the daemon (SIGTERM, then SIGKILL) and remove the temp dir.

        Restores the environment but does not re-scan PortAudio (its device list keeps the
        dead server's devices; ``rescan_portaudio()`` if the process goes on using audio).
        Re-scanning without a pulse server makes libpulse create ~/.config/pulse.
        """
        self.deactivate(rescan=False)
        self._stop_keepalive()
        if self._pid is not None:
            _terminate(self._pid, self._proc)
        self._proc = None
        self._pid = None
        self._sink_module = self._source_module = None
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        if not self._keep_dir and self.dir != Path() and self.dir.exists():
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> VirtualMic:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- driving the server ------------------------------------------------------------
    def client_env(self) -> dict[str, str]:
        """The full environment for a child process that should use this server."""
        return {**os.environ, **self.env}

    def _run(
        self, cmd: Sequence[str], *, check: bool = True, timeout: float = 10
    ) -> subprocess.CompletedProcess[str]:
        r = subprocess.run(
            list(cmd),
            env=self.client_env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )
        if check and r.returncode != 0:
            raise VirtualMicError(
                f"{' '.join(cmd)} failed ({r.returncode}): {(r.stderr or r.stdout).strip()}\n"
                f"{self.log_tail()}"
            )
        return r

    def pactl(self, *args: str) -> str:
        return self._run(["pactl", *args]).stdout

    def load_source(self, *, warm_up: bool = True) -> None:
        """(Re)create the sink and the virtual microphone; make them the defaults."""
        if self._sink_module is None:
            self._sink_module = int(
                self.pactl(
                    "load-module",
                    "module-null-sink",
                    f"sink_name={SINK_NAME}",
                    f"rate={self.rate}",
                    f"channels={self.channels}",
                    f"sink_properties=\"device.description='{SINK_DESCRIPTION}'\"",
                ).strip()
            )
        if self._source_module is None:
            self._source_module = int(
                self.pactl(
                    "load-module",
                    "module-remap-source",
                    f"master={SINK_NAME}.monitor",
                    f"source_name={SOURCE_NAME}",
                    f"source_properties=\"device.description='{SOURCE_DESCRIPTION}'\"",
                ).strip()
            )
        self.pactl("set-default-sink", SINK_NAME)
        self.pactl("set-default-source", SOURCE_NAME)
        self._start_keepalive()
        if warm_up:
            self.warm_up()

    def _restart_sink_clock(self, timeout: float = 2.0) -> None:
        """Once the keepalive stream is connected, suspend and resume the sink.

        The sink applies a new latency only after its current (2 s) block: a suspend/resume
        cycle starts a fresh one at the keepalive's 20 ms.
        """
        deadline = time.monotonic() + timeout
        while "echopanel-vmic-keepalive" not in self.pactl("list", "sink-inputs"):
            if time.monotonic() >= deadline:
                return  # no harm: the first stream just waits up to 2 s
            time.sleep(0.01)  # readiness probe interval
        self.pactl("suspend-sink", SINK_NAME, "1")
        self.pactl("suspend-sink", SINK_NAME, "0")

    def _start_keepalive(self) -> None:
        """Play silence into the sink at 20 ms latency for as long as the sink exists.

        An idle null sink renders in 2-second blocks, so a new recording stream on the
        remap source waits up to 2 s for its first block (measured: 0-2 s, ~1 s typical);
        one low-latency client keeps the sink's block short. Mixing in zeros changes no
        sample.
        """
        self._stop_keepalive()
        zero = open("/dev/zero", "rb")  # noqa: SIM115 (the child holds its own copy)
        try:
            self._keepalive = subprocess.Popen(
                [
                    "pacat",
                    "--playback",
                    f"--device={SINK_NAME}",
                    "--raw",
                    "--format=s16le",
                    f"--rate={self.rate}",
                    f"--channels={self.channels}",
                    "--latency-msec=20",
                    "--client-name=echopanel-vmic-keepalive",
                ],
                env=self.client_env(),
                stdin=zero,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
                preexec_fn=_die_with_parent if self._die_with_parent else None,
            )
        finally:
            zero.close()
        self._restart_sink_clock()

    def _stop_keepalive(self) -> None:
        k, self._keepalive = self._keepalive, None
        if k is not None and k.poll() is None:
            k.kill()
        if k is not None:
            k.wait()

    def warm_up(self, timeout: float = 5.0) -> float:
        """Record from the mic until the first bytes arrive; returns the seconds it took."""
        t0 = time.monotonic()
        proc = subprocess.Popen(
            ["parec", f"--device={SOURCE_NAME}", "--latency-msec=20", "--raw"],
            env=self.client_env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        try:
            assert proc.stdout is not None
            ready, _, _ = select.select([proc.stdout], [], [], timeout)
            if not ready or not os.read(proc.stdout.fileno(), 64):
                raise VirtualMicError(
                    f"the virtual mic delivered no audio within {timeout} s:\n{self.log_tail()}"
                )
        finally:
            proc.kill()
            proc.wait()
        return time.monotonic() - t0

    def unload_source(self) -> None:
        """Make the microphone disappear, as an unplugged device does.

        Removes the remap source and the null sink: with any source left, PulseAudio would
        move the capture stream there and PortAudio would never see a loss.
        """
        self._stop_keepalive()
        if self._source_module is not None:
            self.pactl("unload-module", str(self._source_module))
            self._source_module = None
        if self._sink_module is not None:
            self.pactl("unload-module", str(self._sink_module))
            self._sink_module = None

    def sources(self) -> list[str]:
        out = self.pactl("list", "short", "sources")
        return [line.split("\t")[1] for line in out.splitlines() if "\t" in line]

    def play(
        self, path: str | os.PathLike[str], *, wait: bool = False, timeout: float | None = None
    ) -> subprocess.Popen[bytes]:
        """Play an audio file into the sink (so out of the microphone) with ``paplay``.

        Returns the ``paplay`` process; with ``wait=True`` waits for it and raises
        VirtualMicError if it failed.
        """
        proc = subprocess.Popen(
            ["paplay", f"--device={SINK_NAME}", os.fspath(path)],
            env=self.client_env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        if wait:
            try:
                _, err = proc.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                raise VirtualMicError(f"paplay {path} did not finish in {timeout} s") from None
            if proc.returncode != 0:
                raise VirtualMicError(f"paplay {path} failed: {err.decode(errors='replace')}")
        return proc

    # -- the current process -----------------------------------------------------------
    def activate(self) -> None:
        """Apply ``env`` to this process; re-scan PortAudio if sounddevice is loaded."""
        if self._saved_env is None:
            self._saved_env = {k: os.environ.get(k) for k in self.env}
        os.environ.update(self.env)
        rescan_portaudio()

    def deactivate(self, *, rescan: bool = True) -> None:
        """Undo ``activate()``: restore the previous values (and re-scan PortAudio)."""
        if self._saved_env is None:
            return
        for k, v in self._saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        self._saved_env = None
        if rescan:
            rescan_portaudio()

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no pulseaudio log)"
        return "\n".join(text.splitlines()[-lines:])

    def exports(self) -> str:
        return "".join(f"export {k}={_shell_quote(v)}\n" for k, v in self.env.items())


def rescan_portaudio() -> None:
    """Re-enumerate PortAudio devices if sounddevice is loaded (closes its open streams)."""
    sd = sys.modules.get("sounddevice")
    if sd is None:
        return
    try:
        from capture.devices import rescan_devices
    except ImportError:  # pragma: no cover - tools used outside the project
        sd._terminate()
        sd._initialize()
    else:
        rescan_devices()


def _shell_quote(s: str) -> str:
    import shlex

    return shlex.quote(s)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _terminate(pid: int, proc: subprocess.Popen[bytes] | None, timeout: float = 5.0) -> None:
    def gone() -> bool:
        if proc is not None:
            return proc.poll() is not None
        return not _pid_alive(pid)

    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, timeout)):
        if gone():
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        if proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=wait)
        else:
            deadline = time.monotonic() + wait
            while not gone() and time.monotonic() < deadline:
                time.sleep(0.05)  # not our child: poll for its exit


# -- command line ---------------------------------------------------------------------
def _default_cli_dir() -> Path:
    return Path(tempfile.gettempdir()) / f"echopanel-virtual-mic-{os.getuid()}"


def _read_state(d: Path) -> dict[str, Any] | None:
    try:
        state = json.loads((d / _STATE_FILE).read_text())
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) else None


def _state_alive(state: Mapping[str, Any]) -> bool:
    pid = state.get("pid")
    if not isinstance(pid, int) or not _pid_alive(pid):
        return False
    env = {**os.environ, **state.get("env", {})}
    r = subprocess.run(["pactl", "info"], env=env, capture_output=True, timeout=5)
    return r.returncode == 0


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m tools.virtual_mic",
        description="A PulseAudio virtual microphone (null sink monitor remapped as a source).",
    )
    p.add_argument("--dir", type=Path, default=None, help="state directory")
    sub = p.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("up", help="start the server; print `export` lines for eval")
    up.add_argument("--rate", type=int, default=48_000)
    up.add_argument("--channels", type=int, default=1)
    sub.add_parser("down", help="stop the server and remove its directory")
    sub.add_parser("status", help="say whether it runs; list its sources")
    play = sub.add_parser("play", help="play an audio file into the microphone")
    play.add_argument("file")
    args = p.parse_args(argv)
    d: Path = args.dir or _default_cli_dir()
    state = _read_state(d)
    alive = state is not None and _state_alive(state)

    if args.cmd == "up":
        if state is not None and alive:
            env = state["env"]
        else:
            if state is not None:  # stale: a previous server died
                shutil.rmtree(d, ignore_errors=True)
            vm = VirtualMic(
                rate=args.rate, channels=args.channels, base_dir=d, die_with_parent=False
            )
            vm.start()
            env = vm.env
            (d / _STATE_FILE).write_text(json.dumps({"pid": vm.pid, "env": env}))
        sys.stdout.write("".join(f"export {k}={_shell_quote(v)}\n" for k, v in env.items()))
        print(
            f"# virtual mic up ({d}); PortAudio devices: {ALSA_DEVICE!r}, 'default', 'pulse'",
            file=sys.stderr,
        )
        return 0
    if args.cmd == "down":
        if state is not None and isinstance(state.get("pid"), int):
            _terminate(state["pid"], None)
        if d.exists():
            shutil.rmtree(d, ignore_errors=True)
        print("# virtual mic down", file=sys.stderr)
        return 0
    if not alive or state is None:
        print("virtual mic is not running (start it with: up)", file=sys.stderr)
        return 1
    env = {**os.environ, **state["env"]}
    if args.cmd == "status":
        out = subprocess.run(
            ["pactl", "list", "short", "sources"], env=env, capture_output=True, text=True
        ).stdout
        print(f"running, pid {state['pid']}, dir {d}\n{out}", end="")
        return 0
    # play
    return subprocess.run(["paplay", f"--device={SINK_NAME}", args.file], env=env).returncode


if __name__ == "__main__":
    sys.exit(main())

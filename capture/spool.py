"""The capture's side of the write-ahead spool (uplink/spool.py, docs/spool.md).

- where the spool lives by default (microphone capture: on, under the user's data
  directory; `--input`: off unless `--spool DIR`);
- the dead time of a crashed capture: the wall-clock time between the last spooled sample
  and the first new one is pushed as a gap before the new audio (docs/protocol.md §2: the
  stream's timeline is `wall_time + sample / rate`, so it stays aligned to the clock);
- `--list-spool`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from capture.source import FrameSink
from uplink.spool import Recovered, SpoolError, read_meta, recover


def default_spool_dir(environ: dict[str, str] | None = None) -> Path:
    """$XDG_DATA_HOME/echopanel/spool, else ~/.local/share/echopanel/spool."""
    env = os.environ if environ is None else environ
    base = env.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "echopanel" / "spool"


def dead_time_samples(recovered: Recovered, now: float, rate: int) -> int:
    """Samples between the last spooled one and `now` (0 if the spool has no clock)."""
    end = recovered.end_wall_time
    if end is None:
        return 0
    return max(0, round((now - end) * rate))


@dataclass(slots=True)
class DeadTime:
    """The gap a restart recorded (None until the first block told when it starts)."""

    samples: int | None = None


class ResumeSink:
    """Wraps the real sink: before the first block of a restarted live capture, push the
    dead time as a gap — measured when that block arrives (minus its own duration), so a
    device that takes a while to open does not shorten the gap. Runs on the audio path:
    one clock read and one ring push, once."""

    def __init__(self, inner: FrameSink, recovered: Recovered, rate: int, block_align: int,
                 clock: Callable[[], float] = time.time) -> None:
        self.inner = inner
        self.dead = DeadTime()
        self._recovered = recovered
        self._rate = rate
        self._align = block_align
        self._clock = clock

    def _first(self, block_samples: int) -> None:
        if self.dead.samples is None:
            now = self._clock() - block_samples / self._rate
            self.dead.samples = dead_time_samples(self._recovered, now, self._rate)
            self.inner.gap(self.dead.samples)

    def write(self, block: bytes | bytearray | memoryview) -> None:
        self._first(memoryview(block).nbytes // self._align)
        self.inner.write(block)

    def gap(self, nsamples: int) -> None:
        self._first(0)
        self.inner.gap(nsamples)

    def close(self) -> None:
        self.inner.close()


def list_spool(directory: Path, now: float | None = None) -> list[str]:
    """Lines for `--list-spool`: what the spool holds and how old it is."""
    meta = read_meta(directory)
    if meta is None:
        return [f"{directory}: empty (nothing pending)"]
    rec = recover(directory, meta)
    now = time.time() if now is None else now
    try:
        age = now - (directory / "audio.spool").stat().st_mtime
    except OSError:
        age = now - meta.created
    state = "resumable" if meta.credential else "never reached the server"
    lines = [
        f"{directory}:",
        f"  stream_id  {meta.stream_id} ({state})",
        f"  pending    {rec.pending_seconds:.2f} s not acknowledged by the server "
        f"(up to sample {rec.span.end_sample}, {meta.format})",
        f"  age        {_age(age)} since the last write",
        f"  source     {meta.source or '-'}",
    ]
    lines += [f"  note       {p}" for p in rec.problems()]
    return lines


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


__all__ = ["DeadTime", "ResumeSink", "SpoolError", "dead_time_samples", "default_spool_dir",
           "list_spool"]

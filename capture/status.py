"""What the user sees while capturing: a live panel, plain state lines, or JSON lines.

- `panel` (stderr is a terminal): one line redrawn ~8 times a second with rich — connection
  state, an input level meter in dBFS with a clip indicator, buffer fill, acked position,
  reconnects, replays and drops — with state changes and device events printed above it.
- `lines` (stderr is not a terminal): one line per state change or event.
- `quiet`: nothing.
- `--status-json PATH` (or `-` for stderr) adds machine-readable JSON lines for supervisors:
  a `status` record every second, one record per state change or event, and one `exit`
  record last. Every record carries the stream id and the wall-clock time. With `-` the
  JSON owns stderr and the CLI sends its human lines to stdout (see capture/cli.py).

All of it runs on the event loop; the level meter reads the newest frame from the ring
(`RingBuffer.latest_audio`), never from the audio callback.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TextIO

from rich.console import Console
from rich.live import Live
from rich.text import Text

from capture.levels import SILENCE_DBFS, Level, measure
from uplink.client import UplinkClient
from uplink.core import ConnectionState, Phase

METER_WIDTH = 24
METER_FLOOR_DBFS = -60.0
CLIP_HOLD_SECONDS = 2.0
_STATE_STYLE = {
    "connected": "bold green",
    "connecting": "yellow",
    "reconnecting": "bold yellow",
    "failed": "bold red",
    "done": "bold cyan",
    "disconnected": "dim",
}


def meter_bar(dbfs: float, width: int = METER_WIDTH) -> str:
    fill = (max(METER_FLOOR_DBFS, min(0.0, dbfs)) - METER_FLOOR_DBFS) / -METER_FLOOR_DBFS
    full = round(fill * width)
    return "█" * full + "·" * (width - full)


def clock_text(seconds: float) -> str:
    minutes, secs = divmod(max(0.0, seconds), 60)
    return f"{int(minutes):02d}:{secs:05.2f}"


@dataclass
class StatusReporter:
    client: UplinkClient
    mode: str  # panel | lines | quiet
    stream_id: str = ""
    json_out: TextIO | None = None
    err: TextIO | None = None
    refresh_hz: float = 8.0
    #: the microphone's counters (overflows, device errors, reopens), when there is one
    source_stats: Callable[[], Any] | None = None
    #: the spool's fields for status records (capture/cli.py), when a spool is on
    spool_status: Callable[[], dict[str, Any]] | None = None
    #: also handed every state / event / exit record (capture/hooks.py HookRunner.record)
    on_record: Callable[[dict[str, Any]], None] | None = None

    def __post_init__(self) -> None:
        self._started = time.monotonic()
        self._phase = "capturing"
        self._level = Level(SILENCE_DBFS, SILENCE_DBFS, False)
        self._clip_until = 0.0
        # soft_wrap: in lines mode a state change stays one line, whatever the width
        self._console = Console(file=self.err, stderr=self.err is None, highlight=False,
                                soft_wrap=True)
        self._live: Live | None = None
        # connection tries counted here, not taken from the core's backoff step (which a
        # restart grace keeps at 1 and "connecting" reports as 0): `attempt` is the try in
        # progress or, while reconnecting, the try that comes next; 1 after each connection
        self._attempt = 0
        self._next_attempt = 1
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.client.on_state(self.on_state)

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        if self.mode == "panel":
            self._live = Live(self._render(), console=self._console, auto_refresh=False,
                              transient=False)
            self._live.start()
        self._task = asyncio.create_task(self._tick())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self._sample()
        self._emit_json("status")
        if self._live is not None:
            self._live.update(self._render(), refresh=True)
            self._live.stop()

    def draining(self, message: str) -> None:
        """Capture stopped; the uplink drains the ring. `message` says why (and, after a
        Ctrl-C only, how to quit at once)."""
        self._phase = "draining"
        self.event(message)

    def finished(self, exit_status: int, **fields: Any) -> None:
        """The last JSON record: the exit status and what the final summary says."""
        self._emit_json("exit", exit_status=exit_status, **fields)

    # -- events (any thread) --------------------------------------------------------------

    def on_state(self, state: ConnectionState) -> None:
        if state.phase in (Phase.CONNECTING, Phase.RECONNECTING):
            self._attempt = self._next_attempt
            if state.phase is Phase.CONNECTING:
                self._next_attempt += 1
        elif state.phase is Phase.CONNECTED:
            self._next_attempt = 1
        self._say(self._describe(state), style=_STATE_STYLE.get(state.phase, ""))
        self._emit_json("state", state=state.phase, attempt=self._attempt, reason=state.reason,
                        server=state.server)

    def _describe(self, state: ConnectionState) -> str:
        # with several servers each line names the one it is about (docs/capture.md)
        several = len(self.client.urls) > 1
        if state.phase is Phase.RECONNECTING and state.retry_at is not None:
            wait = max(0.0, state.retry_at - time.monotonic())
            where = f" {state.server}" if several else ""
            return (f"reconnecting (attempt {self._attempt}, next try{where} in {wait:.1f} s): "
                    f"{state.reason}")
        text = state.describe(time.monotonic())
        if several and state.phase in (Phase.CONNECTING, Phase.CONNECTED):
            text += f" to {state.server}"
        return text

    def event(self, message: str) -> None:
        """A note from another thread (e.g. the microphone monitor): marshal to the loop."""
        loop = self._loop
        if loop is not None and loop.is_running():
            loop.call_soon_threadsafe(self._event, message)
        else:
            self._event(message)

    def _event(self, message: str) -> None:
        self._say(message, style="magenta")
        self._emit_json("event", message=message)

    def _say(self, message: str, style: str = "") -> None:
        if self.mode == "quiet":
            return
        stamp = f"[{time.monotonic() - self._started:7.2f}s] "
        if self._live is not None:
            self._live.console.print(Text(stamp, style="dim") + Text(message, style=style))
            self._live.update(self._render(), refresh=True)
        else:
            self._console.print(stamp + message, markup=False, style=style or None)

    # -- periodic -------------------------------------------------------------------------

    async def _tick(self) -> None:
        next_json = time.monotonic()
        while True:
            await asyncio.sleep(1.0 / self.refresh_hz)
            self._sample()
            if self._live is not None:
                self._live.update(self._render(), refresh=True)
            now = time.monotonic()
            if now >= next_json:
                self._emit_json("status")
                next_json = now + 1.0

    def _sample(self) -> None:
        ring = self.client.ring
        self._level = measure(ring.latest_audio(), ring.format)
        if self._level.clipped:
            self._clip_until = time.monotonic() + CLIP_HOLD_SECONDS

    def snapshot(self) -> dict[str, Any]:
        stats = self.client.stats()
        ring = stats.ring
        rate = self.client.ring.format.sample_rate
        now = time.monotonic()
        retry_in = None
        if stats.state.retry_at is not None:
            retry_in = round(max(0.0, stats.state.retry_at - now), 2)
        return {
            "state": stats.state.phase,
            "server": stats.state.server,
            "phase": self._phase,
            "attempt": self._attempt,
            "retry_in": retry_in,
            "reason": stats.state.reason,
            "level_dbfs": round(self._level.peak_dbfs, 1),
            "rms_dbfs": round(self._level.rms_dbfs, 1),
            "clipping": now < self._clip_until,
            "buffered_seconds": round(ring.buffered_seconds, 3),
            "buffer_fill": round(ring.held_frames / ring.capacity_frames, 4),
            "in_flight": stats.in_flight,
            "acked_seq": stats.counters.acked_seq,
            "acked_seconds": round(stats.counters.acked_sample / rate, 3),
            "reconnects": stats.counters.reconnects,
            "frames_replayed": stats.counters.frames_replayed,
            "frames_dropped": ring.frames_dropped,
            "samples_dropped": ring.samples_dropped,
            "breaker": stats.breaker,
            **self._source_counters(),
            **(self.spool_status() if self.spool_status is not None else {}),
        }

    def _source_counters(self) -> dict[str, Any]:
        if self.source_stats is None:
            return {}
        mic = self.source_stats()
        return {
            "input_overflows": mic.overflows,
            "device_errors": mic.device_errors,
            "device_reopens": mic.reopens,
            "source_gap_samples": mic.gap_samples,
            "max_callback_interval": round(mic.max_callback_interval, 3),
        }

    def _emit_json(self, kind: str, **fields: Any) -> None:
        hook = self.on_record if kind != "status" else None  # hooks: changes, not ticks
        if self.json_out is None and hook is None:
            return
        record: dict[str, Any] = {
            "t": round(time.monotonic() - self._started, 3),
            "time": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "stream_id": self.stream_id,
            "type": kind,
        }
        record.update(fields if kind != "status" else self.snapshot())
        if hook is not None:
            hook(record)
        if self.json_out is not None:
            self.json_out.write(json.dumps(record) + "\n")
            self.json_out.flush()

    def _render(self) -> Text:
        s = self.snapshot()
        state = s["state"]
        text = Text()
        label = state if s["phase"] == "capturing" or state != "connected" else "draining"
        text.append("● ", style=_STATE_STYLE.get(state, ""))
        text.append(f"{label:<13}", style=_STATE_STYLE.get(state, ""))
        level = s["level_dbfs"]
        meter_style = "red" if s["clipping"] else ("yellow" if level > -6 else "green")
        text.append("▕")
        text.append(meter_bar(level), style=meter_style)
        text.append("▏")
        text.append(f"{level:6.1f} dBFS ", style=meter_style)
        text.append("CLIP " if s["clipping"] else "     ", style="bold red")
        text.append(f"│ buffer {s['buffered_seconds']:5.2f} s ({s['buffer_fill']:4.0%}) ")
        text.append(f"│ acked {clock_text(s['acked_seconds'])} ")
        text.append(f"│ ↻ {s['reconnects']} ", style="yellow" if s["reconnects"] else "")
        text.append(f"│ replayed {s['frames_replayed']} ")
        text.append(f"│ dropped {s['frames_dropped']}", style="bold red" if s["frames_dropped"] else "")
        if s.get("input_overflows"):
            text.append(f" │ overflows {s['input_overflows']}", style="bold red")
        if state == "reconnecting" and s["retry_in"] is not None:
            text.append(f" │ retry in {s['retry_in']:.1f} s", style="yellow")
        return text

"""Small statistics and machine/process facts shared by the benchmarks.

Everything here is plain Python (numpy only for percentiles of large samples), so the
numbers in a results file can be recomputed from the raw values it stores.
"""

from __future__ import annotations

import os
import platform
import statistics
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True, slots=True)
class Summary:
    """Median and spread of repeated measurements (min, max, and the raw values)."""

    median: float
    low: float
    high: float
    n: int
    values: tuple[float, ...]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def fmt(self, digits: int = 1, unit: str = "") -> str:
        """`median [min–max]`, or just the value for a single run."""
        if self.n == 1:
            return f"{self.median:.{digits}f}{unit}"
        return f"{self.median:.{digits}f}{unit} [{self.low:.{digits}f}–{self.high:.{digits}f}]"


def summarize(values: Sequence[float]) -> Summary:
    if not values:
        raise ValueError("no values to summarize")
    vals = tuple(float(v) for v in values)
    return Summary(statistics.median(vals), min(vals), max(vals), len(vals), vals)


def percentiles(samples: Sequence[float] | np.ndarray, qs: Sequence[float]) -> list[float]:
    """Percentiles (0–100) of a sample, linear interpolation; empty sample gives NaN."""
    arr = np.asarray(samples, dtype=np.float64)
    if arr.size == 0:
        return [float("nan")] * len(qs)
    return [float(v) for v in np.percentile(arr, list(qs))]


# -- /proc ------------------------------------------------------------------------------


def rss_bytes(pid: int | None = None) -> int:
    """Resident set size of a process (this one by default), from /proc/PID/statm."""
    path = Path(f"/proc/{pid or 'self'}/statm")
    return int(path.read_text().split()[1]) * PAGE_SIZE


def cpu_seconds(pid: int | None = None) -> float:
    """User + system CPU time of a process (all its threads), from /proc/PID/stat."""
    raw = Path(f"/proc/{pid or 'self'}/stat").read_text()
    fields = raw[raw.rindex(")") + 2 :].split()  # the command name may contain spaces
    utime, stime = int(fields[11]), int(fields[12])
    return (utime + stime) / CLOCK_TICKS


def cpu_jiffies() -> list[int]:
    """The machine-wide `cpu` line of /proc/stat: user nice system idle iowait irq softirq steal."""
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith("cpu "):
            return [int(v) for v in line.split()[1:9]]
    return [0] * 8


def machine_activity(before: list[int], after: list[int]) -> dict[str, float]:
    """Busy and steal shares of all CPUs between two cpu_jiffies() readings (noise check)."""
    delta = [b - a for a, b in zip(before, after, strict=True)]
    total = sum(delta) or 1
    idle = delta[3] + delta[4]
    return {"busy_pct": round(100 * (total - idle) / total, 1),
            "steal_pct": round(100 * delta[7] / total, 2),
            "load_avg_1m": round(os.getloadavg()[0], 2)}


def machine_facts() -> dict[str, Any]:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_kib = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
    except OSError:
        pass
    import websockets

    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_model": model,
        "mem_total_gib": round(mem_kib / 2**20, 1),
        "kernel": platform.release(),
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "websockets": websockets.__version__,
    }

"""Optional py-spy sampling of a process during a benchmark, and a text summary of it.

py-spy is not a project dependency: install it into the venv to profile
(`pip install py-spy`). When it is missing, profiling is skipped with a note.

    python -m tools.bench.profiling summarize results/profile-ours-100.txt

The summary lists the functions with the most samples on top of the stack ("self") and
the most samples anywhere on the stack ("total"), as shares of all samples of the
sampled threads, idle time excluded (py-spy records only active samples by default).
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path


def py_spy() -> str | None:
    exe = Path(sys.executable).with_name("py-spy")
    return str(exe) if exe.exists() else shutil.which("py-spy")


DEFAULT_RATE = 250  # samples per second per thread


def start_record(pid: int, seconds: float, out: Path,
                 rate: int = DEFAULT_RATE) -> subprocess.Popen[bytes] | None:
    """Sample `pid` (all its threads) for `seconds` into collapsed stacks at `out`."""
    exe = py_spy()
    if exe is None:
        return None
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = [exe, "record", "--pid", str(pid), "--duration", str(max(1, round(seconds))),
           "--rate", str(rate), "--format", "raw", "--output", str(out), "--nonblocking",
           "--threads"]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def finish_record(proc: subprocess.Popen[bytes] | None, timeout: float = 30.0) -> None:
    if proc is None:
        return
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def _short(frame: str) -> str:
    """'send (websockets/protocol.py:123)' -> 'send (websockets/protocol.py)'."""
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    path = where.rsplit(":", 1)[0]
    parts = path.split("/")
    if "site-packages" in parts:
        parts = parts[parts.index("site-packages") + 1 :]
    elif "python3.11" in parts:
        parts = ["stdlib", *parts[parts.index("python3.11") + 1 :]]
    else:
        parts = parts[-2:]
    return f"{name} ({'/'.join(parts)})"


def _thread_group(frame: str) -> str:
    """'thread (123): ingest-io_7' -> 'ingest-io' (a pool's threads count together)."""
    name = frame.partition("): ")[2] or frame
    return re.sub(r"_\d+$", "", name)


def summarize(path: Path, top: int = 25, rate: int | None = None,
              seconds: float | None = None) -> str:
    """Text summary; with the sampling `rate` and `seconds`, threads' busy share too."""
    self_counts: Counter[str] = Counter()
    total_counts: Counter[str] = Counter()
    package_self: Counter[str] = Counter()
    by_thread: Counter[str] = Counter()
    samples = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        parts = stack.split(";")
        thread = _thread_group(parts[0]) if parts[0].startswith("thread ") else "?"
        frames = [_short(f) for f in parts if not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        samples += count
        by_thread[thread] += count
        self_counts[frames[-1]] += count
        leaf = frames[-1].partition("(")[2]
        package_self[leaf.split("/")[0] if "/" in leaf else leaf.rstrip(")")] += count
        for f in set(frames):
            total_counts[f] += count
    if samples == 0:
        return f"{path.name}: no samples\n"
    lines = [f"{path.name}: {samples} samples (active only: py-spy leaves out idle threads)", "",
             "by thread:"]
    for name, c in by_thread.most_common():
        busy = f", ≈ {c / (rate * seconds):.0%} of one core" if rate and seconds else ""
        lines.append(f"  {c / samples:6.1%}  {name}{busy}")
    lines += ["", "self (top of stack):"]
    lines += [f"  {c / samples:6.1%}  {f}" for f, c in self_counts.most_common(top)]
    lines += ["", "self by package:"]
    lines += [f"  {c / samples:6.1%}  {p}" for p, c in package_self.most_common(12)]
    lines += ["", "total (anywhere on the stack):"]
    lines += [f"  {c / samples:6.1%}  {f}" for f, c in total_counts.most_common(top)]
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("summarize", help="summarize a py-spy raw (collapsed) profile")
    s.add_argument("path", type=Path)
    s.add_argument("--top", type=int, default=25)
    s.add_argument("--rate", type=int, help="sampling rate used (for busy shares)")
    s.add_argument("--seconds", type=float, help="sampling duration (for busy shares)")
    args = ap.parse_args()
    print(summarize(args.path, args.top, args.rate, args.seconds), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""CPU affinity for the "a core of its own" capacity runs (docs/performance.md "Scale-out").

On this 2-core machine the ingest process, the load generators and, for the JetStream
store, three NATS nodes all share the cores, so a capacity total measures the machine, not
the ingest process. Pinning the ingest process to one core and everything else (generators,
NATS, the benchmark itself) to the others gives the ingest process what it would have on a
machine of its own, for both stores alike: the same rule on both sides of the ratio.

`sched_setaffinity(pid)` on Linux sets ONE thread (the tid), so a process is pinned by
pinning every tid in /proc/PID/task; threads started later inherit their creator's mask, so
pinning once after start-up and again when the load is connected covers a process's pools.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class CoreSplit:
    server: frozenset[int]  # the ingest process's core
    rest: frozenset[int]  # everything else: generators, NATS nodes, the benchmark

    def describe(self) -> str:
        return (f"ingest on CPU {','.join(map(str, sorted(self.server)))}, everything else "
                f"on CPU {','.join(map(str, sorted(self.rest)))}")


def core_split() -> CoreSplit | None:
    """The first allowed CPU for the server, the others for the rest; None on one CPU."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return None
    return CoreSplit(frozenset(cpus[:1]), frozenset(cpus[1:]))


def pin_process(pid: int, cpus: Iterable[int]) -> int:
    """Pin every thread of `pid`; returns how many were pinned (threads may come and go)."""
    mask = set(cpus)
    pinned = 0
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0
    for tid in tids:
        with contextlib.suppress(OSError):  # a thread that ended meanwhile
            os.sched_setaffinity(int(tid), mask)
            pinned += 1
    return pinned


class PinningError(RuntimeError):
    """A process meant to be pinned is not: the run stops (benchmark steps turn other
    errors into failed steps, which would pass off an unpinned run as a capacity limit)."""


def check_pinned(pid: int, cpus: Iterable[int]) -> None:
    """Raise PinningError unless every thread of `pid` runs on `cpus` only: a run that
    believes it measured a pinned process must have measured one."""
    want = set(cpus)
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            got = os.sched_getaffinity(int(tid))
            if got != want:
                raise PinningError(f"thread {tid} of {pid} runs on CPUs {sorted(got)}, "
                                   f"not {sorted(want)}")


@contextlib.contextmanager
def this_process_on(cpus: Iterable[int]) -> Iterator[None]:
    """Run the benchmark process (and what it starts meanwhile) on `cpus`, then restore."""
    before = os.sched_getaffinity(0)
    pin_process(os.getpid(), cpus)
    try:
        yield
    finally:
        pin_process(os.getpid(), before)


def pin_all(split: CoreSplit, servers: Iterable[int], others: Iterable[int]) -> None:
    """Servers on the server core, the others on the rest; then check every server
    (PinningError): the number measured is the pinned process's or none."""
    servers = list(servers)
    for pid in servers:
        pin_process(pid, split.server)
    for pid in others:
        pin_process(pid, split.rest)
    for pid in servers:
        check_pinned(pid, split.server)

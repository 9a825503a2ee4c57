"""tools/bench/affinity.py: a process is pinned with every one of its threads (Linux pins
one tid per sched_setaffinity call), and the benchmark's own mask comes back afterwards."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tools.bench.affinity import core_split, pin_process, this_process_on

CHILD = """
import threading, sys
threading.Thread(target=sys.stdin.read, daemon=True).start()
print("ready", flush=True)
sys.stdin.read()
"""


def _masks(pid: int) -> list[set[int]]:
    return [os.sched_getaffinity(int(tid)) for tid in os.listdir(f"/proc/{pid}/task")]


def _needs_two_cpus() -> None:
    # Under CI=true nothing is skipped (DEVELOPERS.md): CI runs on 2 cores, and the cluster
    # benchmark's "own core" runs need them, so a 1-CPU CI machine should fail loudly.
    if len(os.sched_getaffinity(0)) < 2 and not os.environ.get("CI"):
        pytest.skip("needs two CPUs")


def test_every_thread_of_a_process_is_pinned() -> None:
    _needs_two_cpus()
    split = core_split()
    assert split is not None and not split.server & split.rest
    child = subprocess.Popen([sys.executable, "-c", CHILD], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "ready"
        assert len(os.listdir(f"/proc/{child.pid}/task")) >= 2
        assert pin_process(child.pid, split.server) >= 2
        assert all(mask == set(split.server) for mask in _masks(child.pid))
    finally:
        child.kill()
        child.wait()


def test_the_benchmark_process_gets_its_mask_back() -> None:
    _needs_two_cpus()
    split = core_split()
    assert split is not None
    before = os.sched_getaffinity(0)
    with this_process_on(split.rest):
        assert all(mask == set(split.rest) for mask in _masks(os.getpid()))
    assert os.sched_getaffinity(0) == before


def test_a_process_that_is_gone_pins_nothing() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert pin_process(child.pid, {0}) == 0

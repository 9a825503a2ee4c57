"""Benchmark suite: our pipeline beside a minimal baseline, in the same run, on loopback.

    python -m tools.bench                  # quick mode (~10 min); --mode full for the issue's
                                           # durations; results in bench-results/<time>-<mode>/

Modules:

- ``__main__``: the runner (modes, time limits, results directory, optional py-spy profiles)
- ``catchup``, ``latency``, ``capacity``, ``footprint``: the four benchmarks
- ``baseline``: the baseline sender and receiver, built directly on ``websockets``
- ``servers``: our ingest server and the baseline receiver as subprocesses
- ``loadgen`` + ``wsraw``: the multi-process load generator and its lean WebSocket client
- ``profiling``: py-spy recording and a text summary of its stacks
- ``stats``, ``common``, ``report``: statistics and /proc readings, audio and config
  helpers, the results table

docs/performance.md explains what each benchmark measures and reports the results.
"""

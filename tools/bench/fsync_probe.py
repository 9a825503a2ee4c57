"""What durability costs on this disk: per-file fsync from a thread pool vs one syncfs.

    python -m tools.bench.fsync_probe [--files 150] [--seconds 3] [--dir /tmp]

Each round appends one 684-byte record (a 20 ms 16 kHz mono frame plus its journal header)
to each of `files` files, then makes them durable either with one fsync per file from a pool
of 1, 4 or 16 threads (what per-stream group commit amounts to when every stream has one
frame pending), or with a single syncfs(2) for the whole file system (cross-stream group
commit). Prints durable frames per second and the CPU it took (share of one core).
"""

from __future__ import annotations

import argparse
import ctypes
import os
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

RECORD = b"\x5a" * 684


def _rate(seconds: float, round_fn: Callable[[], None], files: int) -> tuple[float, float]:
    start, cpu0, rounds = time.perf_counter(), time.process_time(), 0
    while time.perf_counter() - start < seconds:
        round_fn()
        rounds += 1
    wall = time.perf_counter() - start
    return rounds * files / wall, (time.process_time() - cpu0) / wall


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=150, help="streams (one file each)")
    ap.add_argument("--seconds", type=float, default=3.0, help="per measurement")
    ap.add_argument("--dir", default=None, help="where to put the files (default: tmp)")
    args = ap.parse_args(argv)
    libc = ctypes.CDLL(None, use_errno=True)
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="fsync-probe-") as d:
        fds = [os.open(os.path.join(d, f"s{i}"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
               for i in range(args.files)]
        try:
            for threads in (1, 4, 16):
                with ThreadPoolExecutor(threads) as pool:

                    def per_file(fd: int) -> None:
                        os.write(fd, RECORD)
                        os.fsync(fd)

                    def one_round(pool: ThreadPoolExecutor = pool) -> None:
                        list(pool.map(per_file, fds))

                    fps, cpu = _rate(args.seconds, one_round, args.files)
                print(f"fsync per file, {threads:2d} threads: {fps:9.0f} durable frames/s, "
                      f"CPU {cpu:.0%} of one core")

            def syncfs_round() -> None:
                for fd in fds:
                    os.write(fd, RECORD)
                if libc.syncfs(fds[0]) != 0:
                    raise OSError(ctypes.get_errno(), "syncfs failed")

            fps, cpu = _rate(args.seconds, syncfs_round, args.files)
            print(f"one syncfs per round:       {fps:9.0f} durable frames/s, CPU {cpu:.0%} of one core")
        finally:
            for fd in fds:
                os.close(fd)
    return 0


if __name__ == "__main__":
    sys.exit(main())

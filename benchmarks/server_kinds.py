"""Round trips of workers from the two kinds of fork server, side by side in one process.

    PYTHONPATH=. python benchmarks/server_kinds.py [--rounds 10] [--calls 500]

The first ``isopool.Pool`` of a single-threaded process forks its fork server from
the caller; a pool made once a thread runs (here: the first pool's monitor) starts a
fresh interpreter for it. This makes one one-worker pool of each kind and measures,
in alternating rounds, the p50 of no-op round trips and the worker's CPU per call
(``/proc/PID/task/*/schedstat``). Not part of ``run.py``: it compares isopool with
itself.

It also says whether each worker runs the interpreter's machine code at the caller's
virtual address. A fork keeps the caller's layout; a fresh interpreter gets its own
(ASLR), and that is the gap: run under ``setarch -R`` (no ASLR: every interpreter at
the same address) and the two kinds measure the same. Most likely through the CPU's
branch predictors, indexed by virtual address and shared by the processes that take
turns on a core: a worker whose interpreter sits where the caller's does finds them
trained by the caller's own interpreter loop.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import sysconfig
import time

import _bench_tasks as tasks

import isopool


def cpu_ns(pid: int) -> int:
    """Nanoseconds on a CPU of every thread of ``pid``."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
            total += int(f.read().split()[0])
    return total


def code_address(pid: int) -> int | None:
    """Where ``pid`` maps the interpreter's machine code (libpython's, else python's)."""
    library = sysconfig.get_config_var("LDLIBRARY") or ""
    executable = os.path.realpath(sys.executable)
    with open(f"/proc/{pid}/maps") as maps:
        for line in maps:
            fields = line.split()
            if len(fields) < 6 or "x" not in fields[1]:
                continue
            path = fields[5]
            if (library and os.path.basename(path) == library) or path == executable:
                return int(fields[0].split("-")[0], 16)
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--calls", type=int, default=500)
    args = parser.parse_args()
    kinds = {
        "forked from the caller": isopool.Pool(1, usage=False),
        "fresh interpreter": isopool.Pool(1, usage=False),  # the first pool's thread runs
    }
    figures: dict[str, list[tuple[float, float]]] = {name: [] for name in kinds}
    same: dict[str, bool] = {}
    try:
        for pool in kinds.values():
            for _ in range(300):
                pool.submit(tasks.noop).result(timeout=60)
        for round_ in range(args.rounds):
            names = list(kinds) if round_ % 2 else list(kinds)[::-1]
            for name in names:
                pool = kinds[name]
                pid = pool.submit(os.getpid).result(timeout=60)
                same[name] = code_address(pid) == code_address(os.getpid())
                before, trips = cpu_ns(pid), []
                for _ in range(args.calls):
                    start = time.perf_counter()
                    pool.submit(tasks.noop).result(timeout=60)
                    trips.append(time.perf_counter() - start)
                per_call = (cpu_ns(pid) - before) / args.calls / 1e3
                figures[name].append((statistics.median(trips) * 1e6, per_call))
    finally:
        for pool in kinds.values():
            pool.shutdown()
    for name, rows in figures.items():
        p50 = statistics.median(row[0] for row in rows)
        cpu = statistics.median(row[1] for row in rows)
        where = "at" if same[name] else "not at"
        print(
            f"{name:<24} p50 {p50:6.1f} us   worker CPU {cpu:5.1f} us a call   "
            f"(interpreter code {where} the caller's address)"
        )


if __name__ == "__main__":
    main()

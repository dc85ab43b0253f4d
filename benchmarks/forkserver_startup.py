"""How long a Pool takes to start: fork server forked from the parent vs a fresh interpreter.

    python benchmarks/forkserver_startup.py              # 15 repeats of each way
    python benchmarks/forkserver_startup.py --repeats 31

isopool forks its fork server from the parent when the parent runs only its main
thread at ``Pool()``; otherwise (any other thread running) it starts a fresh
interpreter. Each measurement runs in its own new interpreter, with isopool already
imported, so both start from the same state; the "fresh" one first starts an idle
thread, which is all it takes to choose the fresh interpreter. Two figures each:

- ``Pool()``: the constructor's own time (the fork happens inside it; the fresh
  interpreter is started by the monitor thread, after the constructor returns);
- ``first result``: from ``Pool(1)`` to the result of the first ``submit``, which
  includes starting the server, forking the worker and one round trip.

The two ways are interleaved, repeat by repeat. Medians are printed with min and max.
Public API only.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys

_ONE = """
import json, sys, threading, time
import isopool
if sys.argv[1] == "fresh":
    stop = threading.Event()
    threading.Thread(target=stop.wait, daemon=True).start()
t0 = time.perf_counter()
pool = isopool.Pool(1)
t1 = time.perf_counter()
pool.submit(int).result(timeout=60)
t2 = time.perf_counter()
pool.shutdown()
print(json.dumps({"pool": t1 - t0, "first": t2 - t0}))
"""


def measure(way: str) -> dict[str, float]:
    """One measurement in a new interpreter; seconds."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "PYTHONPATH": root}
    out = subprocess.run(
        [sys.executable, "-c", _ONE, way],
        cwd=root,  # "-c" puts the working directory first on sys.path
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    result: dict[str, float] = json.loads(out)
    return result


def main() -> None:
    """Measure both ways and print a table of milliseconds."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    repeats = parser.parse_args().repeats
    runs: dict[str, list[dict[str, float]]] = {"fork": [], "fresh": []}
    for _ in range(repeats):
        for way in runs:
            runs[way].append(measure(way))
    print(f"Python {platform.python_version()}, {os.cpu_count()} CPUs, {repeats} repeats; ms")
    print(f"{'server':<8} {'figure':<13} {'median':>8} {'min':>8} {'max':>8}")
    for way, results in runs.items():
        for key, label in (("pool", "Pool()"), ("first", "first result")):
            values = [r[key] * 1000 for r in results]
            print(
                f"{way:<8} {label:<13} {statistics.median(values):8.1f} "
                f"{min(values):8.1f} {max(values):8.1f}"
            )


if __name__ == "__main__":
    main()

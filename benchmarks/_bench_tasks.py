"""Task functions for the benchmarks, importable by name so every peer can pickle them.

Every peer's workers import this module as ``_bench_tasks`` (``benchmarks/`` is on
``sys.path`` because ``run.py`` lives there), so none of them needs cloudpickle.
Markers are small files the parent polls: a task writes ``"<pid> <monotonic>"`` to
say which process runs it and when; CLOCK_MONOTONIC is system-wide on Linux, so the
parent can compare the time with its own clock.
"""

from __future__ import annotations

import ctypes
import os
import time


def noop():
    return None


def square(x):
    return x * x


def echo(value):
    return value


def getpid():
    return os.getpid()


def burn(loops):
    """Pure-Python CPU work: ``loops`` iterations of integer arithmetic."""
    total = 0
    for i in range(loops):
        total += i * i % 7
    return total


def sleep_return(seconds, value=None):
    time.sleep(seconds)
    return value


def sleep_getpid(seconds):
    time.sleep(seconds)
    return os.getpid()


def write_marker(path):
    """Atomically write ``"<pid> <monotonic>"`` to ``path``."""
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        f.write(f"{os.getpid()} {time.monotonic()!r}")
    os.replace(tmp, path)


def mark_then_sleep(path, seconds):
    """Say which process runs the task and when it started, then sleep."""
    write_marker(path)
    time.sleep(seconds)


def mark_then_crash(path, how, delay):
    """After ``delay`` s, record the moment, then die: "segfault" or "exit"."""
    time.sleep(delay)
    write_marker(path)
    if how == "segfault":
        ctypes.string_at(0)
    os._exit(1)


def sleep_then(seconds):
    """Sleep, then return the worker's pid (the queue benchmark's recovery job)."""
    time.sleep(seconds)
    return os.getpid()


def burn_ms(milliseconds):
    """Burn about ``milliseconds`` of CPU in pure Python."""
    deadline = time.thread_time() + milliseconds / 1000
    total = 0
    while time.thread_time() < deadline:
        total += sum(range(200))
    return total


# -- the queue benchmark's jobs (queue_bench.py); every peer runs these same functions ---


def stamp():
    """Return the moment this job started (CLOCK_MONOTONIC, comparable across processes)."""
    return time.monotonic()


def whoami(seconds):
    """Sleep a little, then say which worker instance (BENCH_WORKER) and process ran us."""
    time.sleep(seconds)
    return [os.environ.get("BENCH_WORKER", "?"), os.getpid()]


def mark_sleep(path, seconds):
    """Write ``"<pid> <pgid>"`` to ``path``, sleep, then return the worker instance's tag."""
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        f.write(f"{os.getpid()} {os.getpgid(0)}")
    os.replace(tmp, path)
    time.sleep(seconds)
    return os.environ.get("BENCH_WORKER", "?")


def burn_ms_span(milliseconds):
    """``burn_ms``, returning ``[pid, start, end]`` (monotonic): idle gaps between jobs."""
    start = time.monotonic()
    burn_ms(milliseconds)
    return [os.getpid(), start, time.monotonic()]

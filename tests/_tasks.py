"""Importable task functions for the tests: each does one thing to its worker."""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from pathlib import Path


def echo(value):
    return value


def add(a, b):
    return a + b


def getpid():
    return os.getpid()


def getpgid():
    return os.getpgid(0)


def segfault():
    ctypes.string_at(0)


def exit_with(code):
    os._exit(code)


def sys_exit(code):
    sys.exit(code)


def raise_value_error(message="boom"):
    raise ValueError(message)


def hang(seconds=3600.0):
    time.sleep(seconds)


def busy_hang():
    """Spin in a C call that never returns to the interpreter loop for long."""
    while True:
        sum(range(10**7))


def sleep_then(seconds, value=None):
    time.sleep(seconds)
    return value


def kill_self(sig=signal.SIGKILL):
    os.kill(os.getpid(), sig)


def allocate(nbytes):
    block = bytearray(nbytes)
    return len(block)


def count_run(path, value=None):
    """Append a line to ``path`` (one per run) and return ``value``."""
    with open(path, "a") as f:
        f.write(f"{os.getpid()}\n")
    return value


def runs(path):
    p = Path(path)
    return len(p.read_text().splitlines()) if p.exists() else 0


def fail_n_times(path, n, value="ok"):
    """Fail (raise) the first ``n`` runs, counted in ``path``; then return ``value``."""
    count_run(path)
    if runs(path) <= n:
        raise RuntimeError(f"failure {runs(path)} of {n}")
    return value


def crash_n_times(path, n, value="ok"):
    count_run(path)
    if runs(path) <= n:
        os._exit(9)
    return value


def spawn_grandchild_and_hang(pid_file):
    """Start a sleeping child process, record its pid, then hang."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"])
    Path(pid_file).write_text(str(child.pid))
    time.sleep(3600)


def trap_sigterm_then_hang(marker):
    """On SIGTERM, write ``marker`` and exit cleanly; until then, hang."""

    def on_term(signum, frame):
        Path(marker).write_text("cleaned up")
        os._exit(0)

    signal.signal(signal.SIGTERM, on_term)
    time.sleep(3600)


def ignore_sigterm_then_hang(ready_file):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    Path(ready_file).write_text("ready")
    time.sleep(3600)


def write_then_hang(path):
    Path(path).write_text(str(os.getpid()))
    time.sleep(3600)


def print_lines(n):
    for i in range(n):
        print(f"line {i} from the task")
    return n


def return_unpicklable():
    return lambda: None  # cloudpickle handles lambdas: picklable


def return_lock():
    import threading

    return threading.Lock()


def raise_unpicklable():
    import threading

    class Bad(Exception):
        def __init__(self):
            super().__init__("bad")
            self.lock = threading.Lock()

    raise Bad()


def identity_sum(*args, **kwargs):
    return sum(args) + sum(kwargs.values())

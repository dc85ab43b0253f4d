"""Jobs for the scheduled, unique and cancel tests, imported by name in isopool workers."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path


def spawn_child_and_hang(path):
    """Start a sleeping child in this process's group; write "pid child" to ``path``; hang."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"])
    partial = Path(f"{path}.partial")
    partial.write_text(f"{os.getpid()} {child.pid}")
    partial.rename(path)
    time.sleep(3600)


def enqueue_unique(url, name, secret, key, start_at):
    """Enqueue one job with uniqueness ``key`` at Unix time ``start_at``; return its id."""
    import isopool

    queue = isopool.RedisQueue(url, name, secret=secret)
    try:
        while time.time() < start_at:
            time.sleep(0.001)
        return queue.options(key=key).enqueue("tests._tasks:echo", os.getpid()).id
    finally:
        queue.close()


def record_tick():
    """Append "pid time" to the file named by $TEST_TICKS_FILE (a --cron job takes no args)."""
    with open(os.environ["TEST_TICKS_FILE"], "a") as f:
        f.write(f"{os.getpid()} {time.time()}\n")


def count_then_sigkill(path):
    """Append a line to ``path`` (one per run), then SIGKILL this job's own process."""
    import signal

    with open(path, "a") as f:
        f.write(f"{os.getpid()}\n")
    os.kill(os.getpid(), signal.SIGKILL)


def count_then_kill_worker(path):
    """Append a line to ``path``, then SIGKILL the whole ``isopool worker`` running this job.

    The worker leads its session (the tests start it so); its fork server is in its
    group; this job leads a group of its own, so it kills itself last.
    """
    import signal

    with open(path, "a") as f:
        f.write(f"{os.getpid()}\n")
    os.killpg(os.getsid(0), signal.SIGKILL)
    os.kill(os.getpid(), signal.SIGKILL)

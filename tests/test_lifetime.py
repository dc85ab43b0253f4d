"""Lifetime: shutdown variants, garbage collection, interpreter exit, Ctrl-C, parent death.

The promise: nothing hangs, and no worker or fork server outlives its pool.
"""

from __future__ import annotations

import gc
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import isopool
from tests import _tasks
from tests.conftest import descendants, pid_alive, wait_for

ROOT = Path(__file__).resolve().parent.parent


def run_child(code: str) -> subprocess.Popen[str]:
    """Start a Python child running ``code`` from the repository root."""
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def read_line(child: subprocess.Popen[str]) -> str:
    assert child.stdout is not None
    line = child.stdout.readline()
    if not line:
        _, err = child.communicate(timeout=10)
        pytest.fail(f"child exited early: {err}")
    return line.strip()


def test_shutdown_wait_finishes_queued_work():
    """shutdown(wait=True) runs every queued task to completion first."""
    pool = isopool.Pool(1)
    tasks = [pool.submit(_tasks.sleep_then, 0.02, i) for i in range(10)]
    pool.shutdown(wait=True)
    assert [t.result(timeout=0) for t in tasks] == list(range(10))
    assert pool.stats()["workers"] == 0


def test_shutdown_nowait_cancel_returns_at_once_and_leaves_no_process():
    """shutdown(wait=False, cancel_futures=True) returns at once; workers exit after."""
    pool = isopool.Pool(1)
    running = pool.submit(_tasks.sleep_then, 0.5, "done")
    queued = [pool.submit(_tasks.echo, i) for i in range(5)]
    assert wait_for(lambda: running.pid is not None)
    start = time.monotonic()
    pool.shutdown(wait=False, cancel_futures=True)
    assert time.monotonic() - start < 2.0
    assert all(t.cancelled() for t in queued)
    assert running.result(timeout=30) == "done"
    # no_orphans checks that the worker and the fork server are gone.


def test_submit_after_shutdown_raises_pool_closed_error():
    """A closed pool refuses work with PoolClosedError, a RuntimeError."""
    pool = isopool.Pool(1)
    pool.shutdown()
    with pytest.raises(isopool.PoolClosedError, match="after shutdown"):
        pool.submit(_tasks.echo, 1)
    with pytest.raises(RuntimeError):
        pool.submit(_tasks.echo, 1)


def test_terminate_stops_running_tasks_and_cancels_them():
    """terminate() stops running tasks now; their futures are cancelled."""
    pool = isopool.Pool(2)
    hung = [pool.submit(_tasks.hang) for _ in range(2)]
    queued = pool.submit(_tasks.echo, 1)
    assert wait_for(lambda: all(t.pid for t in hung))
    pids = [t.pid for t in hung]
    pool.terminate()
    assert all(t.cancelled() for t in [*hung, queued])
    assert not any(pid_alive(pid) for pid in pids)


def test_unreferenced_pool_is_collected_without_leaving_processes():
    """Dropping the last reference to a pool shuts it down; no process is left."""
    pool = isopool.Pool(2)
    assert pool.submit(_tasks.echo, 5).result(timeout=30) == 5
    children = descendants()
    assert children
    del pool
    gc.collect()
    assert wait_for(lambda: not (children & descendants()), timeout=10)


def test_context_manager_with_keyboard_interrupt_stops_workers():
    """KeyboardInterrupt inside `with Pool()` stops the tasks at once (one press)."""
    start = time.monotonic()
    pool = isopool.Pool(2)
    task = pool.submit(_tasks.hang)
    assert wait_for(lambda: task.pid is not None)
    with pytest.raises(KeyboardInterrupt), pool:
        raise KeyboardInterrupt
    assert time.monotonic() - start < 20
    assert task.cancelled()
    assert not pid_alive(task.pid)


def test_interpreter_exit_finishes_unawaited_work_and_leaves_nothing(tmp_path):
    """A script that submits and exits without waiting: the work completes, nothing hangs."""
    marker = tmp_path / "marker"
    child = run_child(
        f"""
        import isopool
        from tests import _tasks
        pool = isopool.Pool(2)
        pool.submit(_tasks.count_run, {str(marker)!r})
        print("submitted", flush=True)
        """
    )
    assert read_line(child) == "submitted"
    _, err = child.communicate(timeout=30)
    assert child.returncode == 0, err
    assert _tasks.runs(marker) == 1


def test_parent_sigkill_leaves_no_worker_behind():
    """When the process owning a pool is SIGKILLed, its workers and fork server exit."""
    child = run_child(
        """
        import time, isopool
        from tests import _tasks
        pool = isopool.Pool(2)
        tasks = [pool.submit(_tasks.hang) for _ in range(2)]
        while not all(t.pid for t in tasks):
            time.sleep(0.01)
        print("running", flush=True)
        time.sleep(3600)
        """
    )
    assert read_line(child) == "running"
    family = descendants(child.pid)
    assert len(family) >= 3  # the fork server and two workers
    child.kill()
    child.wait(timeout=10)
    child.communicate(timeout=10)
    # The issue asks for one second; allow a 10x margin on a loaded machine.
    assert wait_for(lambda: not any(pid_alive(pid) for pid in family), timeout=10)


def test_ctrl_c_during_map_exits_promptly_and_leaves_nothing():
    """SIGINT to a program running a long map ends it at once, with no process left."""
    child = run_child(
        """
        import isopool
        from tests import _tasks
        with isopool.Pool(2) as pool:
            print("mapping", flush=True)
            for _ in pool.map(_tasks.sleep_then, [30.0] * 10):
                pass
        """
    )
    assert read_line(child) == "mapping"
    assert wait_for(lambda: len(descendants(child.pid)) >= 3, timeout=20)
    family = descendants(child.pid)
    start = time.monotonic()
    child.send_signal(signal.SIGINT)
    child.wait(timeout=20)
    child.communicate(timeout=10)
    assert time.monotonic() - start < 15
    assert child.returncode != 0
    assert wait_for(lambda: not any(pid_alive(pid) for pid in family), timeout=10)


def test_workers_ignore_sigint():
    """Ctrl-C belongs to the parent: a worker that receives SIGINT keeps running its task."""
    with isopool.Pool(1) as pool:
        task = pool.submit(_tasks.sleep_then, 0.5, "survived")
        assert wait_for(lambda: task.pid is not None)
        os.kill(task.pid, signal.SIGINT)
        assert task.result(timeout=30) == "survived"

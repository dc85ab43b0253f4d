"""Per-task time-outs and kill(): the task is stopped, politely then brutally."""

from __future__ import annotations

import time
from concurrent.futures import CancelledError

import pytest

import isopool
from tests import _tasks
from tests.conftest import pid_alive, wait_for


def test_timeout_fails_with_task_timeout_error_and_stops_the_worker(pool):
    """A task past its time-out fails with TaskTimeoutError and its worker is gone."""
    task = pool.options(timeout=0.5).submit(_tasks.hang)
    with pytest.raises(isopool.TaskTimeoutError) as info:
        task.result(timeout=30)
    assert isinstance(info.value, TimeoutError)
    assert info.value.timeout == 0.5
    assert info.value.pid == task.pid
    assert not pid_alive(task.pid)
    assert "timed out after 0.5 s" in str(info.value)


def test_timeout_resolves_soon_after_the_deadline(pool):
    """The future resolves within seconds of the deadline, not at the task's end."""
    task = pool.options(timeout=0.3).submit(_tasks.sleep_then, 60)
    start = time.monotonic()
    with pytest.raises(isopool.TaskTimeoutError):
        task.result(timeout=30)
    assert time.monotonic() - start < 10  # a 10x margin over the bound


def test_pool_wide_timeout_applies_to_every_task():
    """Pool(timeout=...) is every task's default time-out."""
    pool = isopool.Pool(1, timeout=0.3)
    try:
        with pytest.raises(isopool.TaskTimeoutError):
            pool.submit(_tasks.hang).result(timeout=30)
        assert pool.submit(_tasks.echo, 1).result(timeout=30) == 1
    finally:
        pool.terminate()


def test_timeout_counts_from_the_start_not_from_submission(one_worker):
    """A queued task's time-out starts when it starts running."""
    first = one_worker.submit(_tasks.sleep_then, 0.6, "first")
    second = one_worker.options(timeout=0.5).submit(_tasks.sleep_then, 0.05, "second")
    assert first.result(timeout=30) == "first"
    assert second.result(timeout=30) == "second"


def test_polite_shutdown_gives_the_task_its_grace_period(pool, tmp_path):
    """On time-out a task that traps SIGTERM gets to clean up before it is killed."""
    marker = tmp_path / "cleanup"
    task = pool.options(timeout=0.5, shutdown=5.0).submit(
        _tasks.trap_sigterm_then_hang, str(marker)
    )
    with pytest.raises(isopool.TaskTimeoutError):
        task.result(timeout=30)
    assert marker.read_text() == "cleaned up"


def test_brutal_kill_skips_the_grace_period(pool, tmp_path):
    """shutdown='brutal_kill' sends SIGKILL at once: no SIGTERM handler runs."""
    marker = tmp_path / "cleanup"
    task = pool.options(timeout=0.5, shutdown="brutal_kill").submit(
        _tasks.trap_sigterm_then_hang, str(marker)
    )
    with pytest.raises(isopool.TaskTimeoutError):
        task.result(timeout=30)
    assert not marker.exists()


def test_sigterm_ignored_escalates_to_sigkill_after_grace(pool, tmp_path):
    """A task that ignores SIGTERM is SIGKILLed once its grace period ends."""
    ready = tmp_path / "ready"
    task = pool.options(timeout=0.5, shutdown=0.5).submit(
        _tasks.ignore_sigterm_then_hang, str(ready)
    )
    start = time.monotonic()
    with pytest.raises(isopool.TaskTimeoutError):
        task.result(timeout=30)
    assert time.monotonic() - start < 10
    assert not pid_alive(task.pid)


def test_kill_running_task_raises_cancelled_error(pool):
    """kill() on a running task stops its process; result() raises CancelledError."""
    task = pool.submit(_tasks.hang)
    assert wait_for(lambda: task.pid is not None)
    assert task.kill() is True
    with pytest.raises(CancelledError):
        task.result(timeout=30)
    assert not pid_alive(task.pid)
    assert pool.submit(_tasks.echo, 3).result(timeout=30) == 3


def test_kill_finished_task_returns_false(pool):
    """kill() on a finished task changes nothing."""
    task = pool.submit(_tasks.echo, 1)
    assert task.result(timeout=30) == 1
    assert task.kill() is False
    assert task.result(timeout=0) == 1


def test_killed_task_is_never_restarted(pool, tmp_path):
    """A transient task that is killed is not re-run."""
    ready = tmp_path / "ready"
    task = pool.options(restart="transient").submit(_tasks.write_then_hang, str(ready))
    assert wait_for(ready.exists)
    task.kill()
    with pytest.raises(CancelledError):
        task.result(timeout=30)
    assert task.attempts == 1

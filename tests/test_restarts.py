"""Restart policies on a Pool: temporary, transient, and OTP's restart intensity."""

from __future__ import annotations

import pytest

import isopool
from tests import _tasks
from tests.conftest import wait_for


def test_transient_task_restarts_until_success(pool, tmp_path):
    """A transient task that fails twice succeeds on its third run."""
    counter = tmp_path / "runs"
    task = pool.options(restart="transient").submit(_tasks.fail_n_times, str(counter), 2)
    assert task.result(timeout=30) == "ok"
    assert task.attempts == 3
    assert _tasks.runs(counter) == 3


def test_transient_task_restarts_after_a_crash(pool, tmp_path):
    """A transient task whose worker dies is re-run on a new worker."""
    counter = tmp_path / "runs"
    task = pool.options(restart="transient").submit(_tasks.crash_n_times, str(counter), 1)
    assert task.result(timeout=30) == "ok"
    assert task.attempts == 2


def test_transient_task_restarts_after_a_timeout(pool, tmp_path):
    """A transient task that times out is re-run, up to the restart intensity."""
    task = pool.options(restart="transient", timeout=0.2, max_restarts=1).submit(_tasks.hang)
    with pytest.raises(isopool.RestartLimitError) as info:
        task.result(timeout=30)
    assert isinstance(info.value.__cause__, isopool.TaskTimeoutError)
    assert task.attempts == 2


def test_temporary_task_never_reruns(pool, tmp_path):
    """The default policy runs a failing task exactly once."""
    counter = tmp_path / "runs"
    task = pool.submit(_tasks.fail_n_times, str(counter), 1)
    with pytest.raises(RuntimeError, match="failure 1 of 1"):
        task.result(timeout=30)
    assert task.attempts == 1
    assert _tasks.runs(counter) == 1


def test_restart_intensity_exceeded_fails_with_last_failure_as_cause(pool, tmp_path):
    """Past max_restarts within max_seconds: RestartLimitError caused by the last failure."""
    counter = tmp_path / "runs"
    task = pool.options(restart="transient", max_restarts=2, max_seconds=60).submit(
        _tasks.fail_n_times, str(counter), 100
    )
    with pytest.raises(isopool.RestartLimitError) as info:
        task.result(timeout=30)
    assert isinstance(info.value.__cause__, RuntimeError)
    assert "failure 3 of 100" in str(info.value.__cause__)
    assert info.value.attempts == 3
    assert info.value.task_id == task.id
    assert _tasks.runs(counter) == 3


def test_restarts_are_counted_and_logged(pool, tmp_path, caplog):
    """Each restart is logged at WARNING and counted in stats()."""
    counter = tmp_path / "runs"
    task = pool.options(restart="transient").submit(_tasks.fail_n_times, str(counter), 2)
    assert task.result(timeout=30) == "ok"
    assert pool.stats()["restarted"] == 2
    # Logs come from the pool's resolver thread (handlers are user code): wait for them.
    assert wait_for(
        lambda: len([r for r in caplog.records if "restarting it" in r.getMessage()]) >= 2
    )
    restarts = [r for r in caplog.records if "restarting it" in r.getMessage()]
    assert len(restarts) == 2
    assert all(r.levelname == "WARNING" for r in restarts)
    assert f"task {task.id} (fail_n_times)" in restarts[0].getMessage()


def test_permanent_is_refused_by_submit(pool):
    """restart='permanent' has no result to wait for: submit refuses it clearly."""
    with pytest.raises(ValueError, match="permanent"):
        pool.options(restart="permanent").submit(_tasks.echo, 1)
    with pytest.raises(ValueError, match="permanent"):
        isopool.Pool(1, restart="permanent")

"""Retries after a failure and deliveries lost to crashes are counted apart (issue 9, 3).

A transient job that raises gets exactly ``max_retries`` retries and then fails with its
own exception; a job whose process (or whole worker) keeps dying is dead-lettered after
the queue's crash budget (``max_deliveries``), however many retries it was allowed.
"""

from __future__ import annotations

import pytest

from isopool import TaskCrashError
from isopool._wire import RemoteTraceback
from tests import _tasks
from tests.conftest import wait_for


@pytest.mark.redis
def test_transient_job_raising_runs_max_retries_plus_one_times_then_raises_own_error(
    redis_server, queues, processes, tmp_path
):
    """max_retries=4 beside a crash budget of 3: five runs, then result() raises its error."""
    queue = queues()
    processes.worker(redis_server.url, queue.name)
    marker = tmp_path / "runs"
    retry = queue.options(restart="transient", max_retries=4, backoff=0.01)
    job = retry.enqueue("tests._tasks:fail_always", str(marker))
    with pytest.raises(RuntimeError, match="failure 5") as info:
        job.result(timeout=60)
    assert isinstance(info.value.__cause__, RemoteTraceback)
    assert "fail_always" in info.value.__cause__.tb
    assert _tasks.runs(marker) == 5
    assert job.info()["retries"] == "4"
    assert [d.reason for d in queue.dead_letters()] == ["retries-exhausted"]


@pytest.mark.redis
def test_transient_job_killing_its_process_is_dead_lettered_after_crash_budget(
    redis_server, queues, processes, tmp_path
):
    """A job SIGKILLing its own process each run stops after max_deliveries runs, not retries."""
    queue = queues()
    processes.worker(redis_server.url, queue.name)
    marker = tmp_path / "runs"
    retry = queue.options(restart="transient", max_retries=10, backoff=0.01)
    job = retry.enqueue("tests._job_tasks:count_then_sigkill", str(marker))
    with pytest.raises(TaskCrashError, match="delivery-limit"):
        job.result(timeout=60)
    assert _tasks.runs(marker) == queue.max_deliveries == 3
    assert job.info().get("retries", "0") == "0"  # never set: no retry was committed
    [letter] = queue.dead_letters()
    assert letter.reason == "delivery-limit: 3 deliveries lost to crashes"


@pytest.mark.redis
@pytest.mark.slow
def test_job_killing_its_whole_worker_is_dead_lettered_after_crash_budget(
    redis_server, queues, processes, tmp_path
):
    """A job SIGKILLing its whole worker is dead-lettered once lost leases spend the budget."""
    queue = queues(lease=1.0)
    marker = tmp_path / "runs"
    job = queue.options(restart="transient", max_retries=10).enqueue(
        "tests._job_tasks:count_then_kill_worker", str(marker)
    )
    worker = processes.worker(redis_server.url, queue.name, lease=1.0)
    for run in (1, 2, 3):
        assert wait_for(lambda run=run: _tasks.runs(marker) == run, timeout=30)
        assert worker.popen.wait(30) is not None
        worker = processes.worker(redis_server.url, queue.name, lease=1.0)
    with pytest.raises(TaskCrashError, match="delivery-limit"):
        job.result(timeout=60)
    assert _tasks.runs(marker) == queue.max_deliveries == 3

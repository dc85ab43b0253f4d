"""Retries after a failure and deliveries lost to crashes are counted apart (issue 9, 3).

A job whose process (or whole worker) keeps dying is dead-lettered after the queue's
crash budget (``max_deliveries``), however many retries it was allowed. That a transient
job that raises gets exactly ``max_retries`` retries, then fails with its own exception,
is ``test_transient_job_exhausting_retries_is_dead_lettered_with_its_error`` in
test_redis_queue.py (max_retries=4 there, past the crash budget of 3). Last, two runs
whose stream entries share an id are counted as two.
"""

from __future__ import annotations

import pytest

from isopool import TaskCrashError
from isopool._core import wire as _wire
from isopool._dist.redis_queue import JobOptions
from tests import _tasks
from tests._redis import unique
from tests.conftest import wait_for


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


def _inject_signed(queue, band: int, entry: str, value: str) -> str:
    """Write a genuinely signed echo job into band ``band`` under stream id ``entry``."""
    job_id = unique("job")
    body = _wire.dumps_call("tests._tasks:echo", (value,), {}, None)
    options = JobOptions(priority=band)
    queue.redis.hset(
        queue.job_key(job_id),
        mapping={
            "payload": queue.keys.sign(body, queue.context(job_id, "call")),
            "name": "tests._tasks:echo",
            "band": band,
            "options": options.to_json(),
            "status": "queued",
            "deliveries": 0,
            "attempts": 0,
            "entry": entry,
        },
    )
    queue.redis.xadd(queue.stream(band), {"id": job_id}, id=entry)
    return job_id


@pytest.mark.redis
def test_jobs_with_same_entry_id_in_two_bands_both_finish(redis_server, queues, processes):
    """Two bands' entries with one stream id (same millisecond) are two runs, not one.

    Found with issue 9's tests: the worker keyed its runs by entry id alone, so the
    second overwrote the first, which stayed "running" for ever.
    """
    queue = queues()
    first = _inject_signed(queue, 2, "5-0", "band 2")
    second = _inject_signed(queue, 5, "5-0", "band 5")
    processes.worker(redis_server.url, queue.name, workers=1)  # fetches both at once
    assert queue.job(first).result(timeout=30) == "band 2"
    assert queue.job(second).result(timeout=30) == "band 5"

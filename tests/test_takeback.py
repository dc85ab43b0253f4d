"""A call written to a worker but not started can be taken back.

Calls are pipelined: when tasks are tiny, several are written to a worker at once. A
call queued there behind a slow one has not started, so ``kill()`` and ``cancel()``
take it back from the worker at once, and an idle worker takes over the calls queued
behind a slow task (no head-of-line blocking).
"""

from __future__ import annotations

import os
import time
from concurrent.futures import CancelledError

import pytest

import isopool
from tests import _tasks
from tests.conftest import wait_for

SLOW = 30.0  # a slow task; every bound below is a tenth of it or less


def warm_up_pipelining(pool):
    """Run many tiny tasks, so that the pool writes several calls to a worker at once."""
    # One task per call (map at chunksize 1 would send these in batches of ~1 ms each).
    tasks = [pool.submit(_tasks.echo, i) for i in range(300)]
    assert [t.result(timeout=30) for t in tasks] == list(range(300))


def queue_behind_slow(pool, make_call):
    """Start a slow task, then submit ``make_call()`` until it is queued behind it."""
    for _ in range(20):
        warm_up_pipelining(pool)
        slow = pool.submit(_tasks.sleep_then, SLOW, "slow")
        queued = make_call()
        if queued.running():  # written to the busy worker, behind the slow task
            return slow, queued
        queued.kill()
        slow.kill()
    pytest.fail("could not queue a call behind a slow one")


def test_kill_of_a_call_queued_behind_a_slow_task_returns_at_once(one_worker, tmp_path):
    """kill() of a queued call returns within seconds, not after the slow task; it never runs."""
    marker = tmp_path / "ran"
    slow, queued = queue_behind_slow(one_worker, lambda: one_worker.submit(_tasks.touch, marker))
    start = time.monotonic()
    assert queued.kill()
    assert time.monotonic() - start < SLOW / 10
    with pytest.raises(CancelledError):
        queued.result(timeout=SLOW / 10)
    assert not slow.done()
    slow.kill()
    assert one_worker.submit(_tasks.echo, "after").result(timeout=30) == "after"
    assert not marker.exists()


def test_cancel_of_a_call_queued_behind_a_slow_task_succeeds(one_worker, tmp_path):
    """cancel() of a queued call returns True at once; the call never runs; the pool serves."""
    marker = tmp_path / "ran"
    slow, queued = queue_behind_slow(one_worker, lambda: one_worker.submit(_tasks.touch, marker))
    start = time.monotonic()
    assert queued.cancel()
    assert time.monotonic() - start < SLOW / 10
    assert queued.cancelled()
    slow.kill()
    assert one_worker.submit(_tasks.echo, "after").result(timeout=30) == "after"
    assert not marker.exists()


def test_cancel_of_a_running_task_returns_false(one_worker):
    """cancel() of the call a worker is running fails, as Future.cancel does."""
    task = one_worker.submit(_tasks.sleep_then, SLOW, "slow")
    assert wait_for(lambda: task.pid is not None, timeout=30)
    assert not task.cancel()
    assert not task.done()
    task.kill()


def test_worker_skips_a_taken_back_call_and_runs_the_next(one_worker, tmp_path):
    """After a taken-back call, the worker runs the call behind it, in order."""
    ran, after = tmp_path / "ran", tmp_path / "after"
    for _ in range(20):
        warm_up_pipelining(one_worker)
        first = one_worker.submit(_tasks.sleep_then, 0.5, "first")
        taken = one_worker.submit(_tasks.touch, ran)
        behind = one_worker.submit(_tasks.touch, after, "behind")
        if taken.running() and behind.running():
            break
    else:
        pytest.fail("could not queue two calls behind a slow one")
    assert taken.cancel()
    assert first.result(timeout=30) == "first"
    assert behind.result(timeout=30) == "behind"
    assert not ran.exists()


def test_idle_worker_takes_calls_queued_behind_a_slow_task():
    """No tiny task waits behind a slow one while the other worker is idle."""
    with isopool.Pool(2) as pool:
        warm_up_pipelining(pool)
        slow = pool.submit(_tasks.sleep_then, SLOW, "slow")
        tiny = [pool.submit(_tasks.getpid) for _ in range(200)]
        start = time.monotonic()
        pids = [t.result(timeout=SLOW / 3) for t in tiny]
        assert time.monotonic() - start < SLOW / 3
        assert not slow.done()
        assert all(t.attempts == 1 for t in tiny)
        assert slow.pid not in pids[-50:]  # the last ones all ran elsewhere
        slow.kill()


def test_taken_back_calls_count_for_max_tasks_per_child(tmp_path):
    """A worker of max_tasks_per_child=4 retires after its calls, taken back ones included."""
    marker = tmp_path / "ran"
    with isopool.Pool(1, max_tasks_per_child=4) as pool:
        slow = pool.submit(_tasks.sleep_then, 1.0, "slow")
        queued = pool.submit(_tasks.touch, marker)
        queued.cancel()
        assert slow.result(timeout=30) == "slow"
        results = [pool.submit(_tasks.getpid).result(timeout=30) for _ in range(6)]
        assert len(set(results)) >= 2  # workers were replaced after their 4 calls
        assert pool.stats()["workers"] == 1


def test_garbage_in_the_result_pipe_fails_only_that_task():
    """A task writing garbage into its result pipe fails with a clear crash; the pool serves."""
    with isopool.Pool(1) as pool:
        bad = pool.submit(_tasks.write_into_result_pipe, b"\xff" * 64)
        with pytest.raises(isopool.TaskCrashError, match="malformed frame header") as info:
            bad.result(timeout=30)
        assert "into its result pipe" in str(info.value)
        assert pool.submit(_tasks.echo, 1).result(timeout=30) == 1


def test_forged_4gib_header_is_refused_without_allocating_it():
    """A header announcing 4 GiB without the worker's cookie is refused at once."""
    from isopool._core import wire as _wire

    header = _wire.pack_header(_wire.RESULT, 1, _wire.MAX_PAYLOAD)
    with isopool.Pool(1) as pool:
        before = _rss()
        bad = pool.submit(_tasks.write_into_result_pipe, header + b"x" * 100)
        with pytest.raises(isopool.TaskCrashError, match="malformed frame header"):
            bad.result(timeout=30)
        assert _rss() - before < 1 << 30
        assert pool.submit(_tasks.echo, 1).result(timeout=30) == 1


def test_well_stamped_4gib_header_allocates_only_what_arrives():
    """Even a header with the right cookie costs only the bytes that come; the time-out ends it."""
    with isopool.Pool(1) as pool:
        before = _rss()
        bad = pool.options(timeout=2.0).submit(_tasks.announce_huge_frame_with_cookie, 2**32 - 1)
        with pytest.raises(isopool.TaskTimeoutError):
            bad.result(timeout=30)
        assert _rss() - before < 1 << 30
        assert pool.submit(_tasks.echo, 1).result(timeout=30) == 1


def _rss() -> int:
    with open(f"/proc/{os.getpid()}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

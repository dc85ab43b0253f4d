"""What each task cost (``task.usage``, ``Reply.usage``, ``Pool.stats()``) and CPU pinning.

Real workers measure real work: CPU burnt in the worker and in a child it reaps, pages
touched, sleeps. Bounds are loose (a shared 2-core machine): the figures must show the
work, never a wall-clock speed.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import isopool
from isopool import Task, Usage
from isopool._core import wire as _wire
from tests import _payloads, _tasks

ROOT = Path(__file__).resolve().parent.parent


# -- the wire trailer --------------------------------------------------------------------


def test_split_usage_bytes_payload_returns_pickle_and_numbers():
    """A reply's USAGE trailer comes off a bytes payload, leaving the pickle."""
    trailer = _wire.USAGE.pack(1.5, 0.25, 0.125, 4096, 3, 4)
    payload, fields = _wire.split_usage(b"pickle" + trailer)
    assert payload == b"pickle"
    assert fields == trailer


def test_split_usage_bytearray_payload_shrinks_in_place():
    """A large frame's bytearray loses its trailer in place (no copy of the result)."""
    data = bytearray(b"x" * 300_000) + _wire.USAGE.pack(0.0, 0.0, 0.0, 0, 0, 0)
    payload, fields = _wire.split_usage(data)
    assert payload is data
    assert len(payload) == 300_000
    assert fields == _wire.USAGE.pack(0.0, 0.0, 0.0, 0, 0, 0)


def test_split_usage_short_payload_has_no_usage():
    """A payload shorter than a trailer is returned as it is, with no usage."""
    assert _wire.split_usage(b"abc") == (b"abc", None)


# -- task.usage --------------------------------------------------------------------------


def test_usage_cpu_bound_task_reports_its_cpu_seconds(one_worker):
    """A task that burns 0.3 s of CPU reports at least most of it, and as much wall time."""
    task = one_worker.submit(_tasks.burn_cpu, 0.3)
    burnt = task.result(timeout=60)
    usage = task.usage
    assert isinstance(usage, Usage)
    assert usage.cpu_seconds >= 0.9 * burnt
    assert usage.cpu_user_seconds > 0  # process_time() itself spends some in the kernel
    assert usage.wall_seconds >= 0.9 * burnt
    assert usage.cpu_seconds == usage.cpu_user_seconds + usage.cpu_system_seconds


def test_usage_child_process_cpu_is_counted_once_reaped(one_worker):
    """CPU burnt by a child the task starts and waits for counts in the task's usage."""
    task = one_worker.submit(_tasks.burn_cpu_in_child, 0.3)
    task.result(timeout=60)
    assert task.usage is not None
    assert task.usage.cpu_seconds >= 0.25


def test_usage_peak_rss_covers_touched_memory(one_worker):
    """peak_rss is at least the 64 MB the task wrote to (a high-water mark in bytes)."""
    task = one_worker.submit(_tasks.touch_bytes, 64 * 1024**2)
    task.result(timeout=60)
    assert task.usage is not None
    assert task.usage.peak_rss >= 64 * 1024**2


def test_usage_sleeping_task_counts_voluntary_switches(one_worker):
    """A task that sleeps gives up the CPU: a voluntary switch, and little CPU time."""
    task = one_worker.submit(_tasks.sleep_then, 0.2, "ok")
    assert task.result(timeout=60) == "ok"
    usage = task.usage
    assert usage is not None
    assert usage.voluntary_switches >= 1
    assert usage.wall_seconds >= 0.15
    assert usage.cpu_seconds < usage.wall_seconds


def test_usage_pending_task_is_none_until_it_finishes(one_worker):
    """usage is None while the task runs, and set once it has finished."""
    task = one_worker.submit(_tasks.sleep_then, 0.3, 1)
    assert task.usage is None
    task.result(timeout=60)
    assert task.usage is not None


def test_usage_task_that_raised_still_has_usage(one_worker):
    """An exception is a reply too: the task's usage came back with it."""
    task = one_worker.submit(_tasks.raise_value_error, "no")
    with pytest.raises(ValueError, match="no"):
        task.result(timeout=60)
    assert task.usage is not None
    assert task.usage.wall_seconds >= 0


def test_usage_crashed_task_is_none(one_worker):
    """A worker that died sent nothing back: the task's usage is None."""
    task = one_worker.submit(_tasks.exit_with, 3)
    with pytest.raises(isopool.TaskCrashError):
        task.result(timeout=60)
    assert task.usage is None


def test_usage_call_that_did_not_unpickle_is_none(one_worker):
    """A call that failed to unpickle in the worker never ran: no usage."""
    task = one_worker.submit(_payloads.take, _payloads.ActAtUnpickle("raise"))
    with pytest.raises(isopool.SerializationError):
        task.result(timeout=60)
    assert task.usage is None


def test_usage_result_that_did_not_pickle_still_has_usage(one_worker):
    """The call ran even if its result did not pickle: its usage came back."""
    task = one_worker.submit(_payloads.return_act_at_pickle, "raise")
    with pytest.raises(isopool.SerializationError):
        task.result(timeout=60)
    assert task.usage is not None


def test_usage_on_reply_of_yield(one_worker):
    """yield_'s Reply carries the task's usage, outside equality."""
    task = one_worker.submit(_tasks.add, 1, 2)
    reply = task.yield_(60)
    assert reply == isopool.Reply("ok", 3)
    assert reply is not None
    assert reply.usage is not None
    assert reply.usage == task.usage


def test_usage_is_a_frozen_dataclass():
    """Usage is immutable: a figure read once stays what was measured."""
    usage = Usage(1.0, 0.5, 0.25, 1024, 1, 2)
    with pytest.raises(dataclasses.FrozenInstanceError):
        usage.wall_seconds = 2.0  # type: ignore[misc]
    assert Usage.__module__ == "isopool"


def test_usage_fresh_process_per_task_reports_each_task(tmp_path):
    """With max_tasks_per_child=1 each task's usage is its own worker's."""
    with isopool.Pool(1, max_tasks_per_child=1) as pool:
        small = pool.submit(_tasks.add, 1, 1)
        small.result(timeout=60)
        big = pool.submit(_tasks.touch_bytes, 64 * 1024**2)
        big.result(timeout=60)
        again = pool.submit(_tasks.add, 1, 1)
        again.result(timeout=60)
    assert small.usage is not None
    assert big.usage is not None
    assert again.usage is not None
    assert big.usage.peak_rss >= 64 * 1024**2
    # a fresh worker does not inherit the big task's high-water mark
    assert again.usage.peak_rss < big.usage.peak_rss


def test_stats_sum_usage_of_every_reply(one_worker):
    """stats() sums the replies' CPU and wall seconds and counts the reports."""
    tasks = [one_worker.submit(_tasks.burn_cpu, 0.1) for _ in range(2)]
    Task.await_many(tasks, 60)
    stats = one_worker.stats()
    usages = [t.usage for t in tasks]
    assert all(u is not None for u in usages)
    assert stats["usage_reports"] == 2
    assert stats["cpu_user_seconds"] == pytest.approx(sum(u.cpu_user_seconds for u in usages))  # type: ignore[union-attr]
    assert stats["wall_seconds"] == pytest.approx(sum(u.wall_seconds for u in usages))  # type: ignore[union-attr]
    assert stats["max_peak_rss"] == max(u.peak_rss for u in usages)  # type: ignore[union-attr]
    for key in ("cpu_system_seconds", "voluntary_switches", "involuntary_switches"):
        assert stats[key] >= 0


def test_stats_new_pool_has_zero_usage(one_worker):
    """Before any task, every usage sum is there and zero."""
    stats = one_worker.stats()
    assert stats["cpu_user_seconds"] == 0
    assert stats["usage_reports"] == 0


# -- cpus ----------------------------------------------------------------------------------

CPUS = sorted(os.sched_getaffinity(0))


def test_pool_cpus_pins_every_worker_and_its_children():
    """Pool(cpus=[c]) runs each worker, and what its task starts, on CPU c alone."""
    cpu = CPUS[-1]
    with isopool.Pool(2, cpus=[cpu]) as pool:
        assert pool.submit(_tasks.affinity).result(timeout=60) == [cpu]
        assert pool.submit(_tasks.affinity_of_child).result(timeout=60) == str([cpu])


@pytest.mark.skipif(len(CPUS) < 2, reason="needs two CPUs to tell a pin from none")
def test_options_cpus_pins_one_task_then_restores(one_worker):
    """options(cpus=...) pins that task only; the worker's next task runs unpinned."""
    pinned = one_worker.options(cpus=[CPUS[0]]).submit(_tasks.affinity)
    assert pinned.result(timeout=60) == [CPUS[0]]
    assert one_worker.submit(_tasks.affinity).result(timeout=60) == CPUS
    assert one_worker.options(cpus=[CPUS[0]]).task_options.cpus == frozenset({CPUS[0]})


def test_pool_cpus_missing_cpu_is_refused_naming_it():
    """A CPU the machine does not have is a ValueError at Pool(), naming it."""
    missing = (os.cpu_count() or 1) + 7
    with pytest.raises(ValueError, match=f"CPU {missing} does not exist"):
        isopool.Pool(1, cpus=[0, missing])


def test_options_cpus_negative_cpu_is_refused(one_worker):
    """A negative CPU number is refused by options() before anything is submitted."""
    with pytest.raises(ValueError, match="CPU -1 does not exist"):
        one_worker.options(cpus=[-1])


@pytest.mark.parametrize(
    ("cpus", "error"),
    [([], ValueError), ("0", TypeError), ([0.0], TypeError), ([True], TypeError), (3, TypeError)],
)
def test_pool_cpus_malformed_is_refused(cpus, error):
    """Empty sets, strings, floats, bools and non-iterables are refused at the call."""
    with pytest.raises(error, match="cpus"):
        isopool.Pool(1, cpus=cpus)


@pytest.mark.skipif(len(CPUS) < 2, reason="needs two CPUs to leave one out")
def test_pool_cpus_outside_affinity_set_is_refused_naming_it():
    """A CPU outside the process's affinity set (taskset) is refused, naming it."""
    code = f"""
        import os, isopool
        os.sched_setaffinity(0, {{{CPUS[0]}}})
        try:
            isopool.Pool(1, cpus=[{CPUS[1]}])
        except ValueError as exc:
            print(exc)
    """
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert f"CPU {CPUS[1]} is not in this process's CPU affinity set" in out.stdout, out.stderr


def test_usage_restarted_task_that_crashed_last_has_none(tmp_path):
    """A task that replied once, was restarted and then crashed shows no stale usage."""
    marker = tmp_path / "runs"
    with isopool.Pool(1, restart="transient", max_restarts=1) as pool:
        task = pool.submit(_tasks.raise_then_crash, str(marker))
        with pytest.raises(isopool.RestartLimitError):
            task.result(timeout=60)
    assert task.attempts == 2
    assert task.usage is None

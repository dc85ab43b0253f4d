"""The Executor contract, run against ProcessPoolExecutor and isopool.Pool alike.

The first half holds what ``concurrent.futures`` promises; each test runs once per
executor (ids ``ProcessPoolExecutor`` and ``isopool``), so a difference between the
two is a bug in isopool, not in the test. The second half holds what only isopool
offers: Task handles, cloudpickled callables, named functions, per-task options,
lazy ``map``, ``kill()``, priorities and counters.

A task that must stay busy waits on a ``Gate`` (a pair of files): it marks itself
started, then waits until the test releases it. Tests never sleep to wait for an
effect, and every gate is released before its executor is shut down.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import queue
import re
import subprocess
import sys
import textwrap
import threading
import time
from concurrent.futures import (
    ALL_COMPLETED,
    FIRST_COMPLETED,
    FIRST_EXCEPTION,
    CancelledError,
    Future,
    ProcessPoolExecutor,
    ThreadPoolExecutor,
    as_completed,
    wait,
)
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import pytest

import isopool
from tests import _tasks
from tests.conftest import pid_alive, wait_for

# -- task functions (importable by workers as tests.test_pool) ----------------------


class CustomError(Exception):
    """An exception type of the test suite's own, to check that types survive."""


def raise_custom(message):
    raise CustomError(message)


def fail_on(value, bad):
    if value == bad:
        raise ValueError(f"bad value {value}")
    return value


def gated(started, released, value=None, limit=30.0):
    """Mark ``started``, then wait until ``released`` exists (at most ``limit`` s)."""
    Path(started).touch()
    deadline = time.monotonic() + limit
    while not Path(released).exists() and time.monotonic() < deadline:
        time.sleep(0.005)
    return value


def append_line(path, text):
    with open(path, "a") as f:
        f.write(f"{text}\n")
    return text


def record_then_wait(path, value, started=None, released=None, seconds=0.0):
    """Append ``value`` to ``path``, run ``seconds``, wait on a gate if given; return it."""
    append_line(path, value)
    time.sleep(seconds)
    if started is not None:
        gated(started, released)
    return value


def takes_pool_option_names(*, timeout, restart, priority):
    return timeout, restart, priority


_initialized = None


def remember(value):
    global _initialized
    _initialized = value


def recall():
    return _initialized, os.getpid()


# -- fixtures -----------------------------------------------------------------------


class Gate:
    """A latch made of two files: a gated task marks ``started``, waits for ``released``."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir()
        self.started = directory / "started"
        self.released = directory / "released"

    @property
    def args(self) -> tuple[str, str]:
        return str(self.started), str(self.released)

    def wait_started(self) -> None:
        assert wait_for(self.started.exists, timeout=30), "the gated task never started"

    def release(self) -> None:
        self.released.touch()


@pytest.fixture
def gate(tmp_path):
    """A Gate, released at teardown (list it after the executor, so it opens first)."""
    g = Gate(tmp_path / "gate")
    yield g
    g.release()


EXECUTORS = {"ProcessPoolExecutor": ProcessPoolExecutor, "isopool": isopool.Pool}


@pytest.fixture(params=list(EXECUTORS), ids=list(EXECUTORS))
def make_executor(request):
    """A factory of executors of the parametrized kind, all shut down at teardown."""
    made = []

    def make(max_workers=2, **kwargs):
        executor = EXECUTORS[request.param](max_workers, **kwargs)
        made.append(executor)
        return executor

    yield make
    for executor in made:
        if isinstance(executor, isopool.Pool):
            executor.terminate()
        else:
            executor.shutdown(wait=True, cancel_futures=True)


@pytest.fixture
def executor(make_executor):
    """A two-worker executor of each kind."""
    return make_executor(2)


# -- the Executor contract, on both executors ------------------------------------------


def test_submit_result_returns_the_value(executor):
    """submit(fn, *args).result() is what fn returned."""
    assert executor.submit(_tasks.add, 2, 3).result(timeout=30) == 5


def test_submit_with_kwargs_passes_them_to_fn(executor):
    """Keyword arguments of submit reach fn."""
    assert executor.submit(_tasks.identity_sum, 1, 2, c=3, d=4).result(timeout=30) == 10


def test_task_exception_propagates_with_its_type(executor):
    """A task's exception is raised by result() with its own type and message."""
    future = executor.submit(raise_custom, "custom boom")
    with pytest.raises(CustomError, match="custom boom"):
        future.result(timeout=30)


def test_task_exception_is_returned_by_exception(executor):
    """Future.exception() returns the task's exception instance."""
    error = executor.submit(_tasks.raise_value_error, "boom").exception(timeout=30)
    assert type(error) is ValueError
    assert str(error) == "boom"


def test_map_results_keep_input_order(executor):
    """map yields results in input order even when later items finish first."""
    delays = [0.2, 0.0, 0.1, 0.0, 0.05, 0.0]
    results = executor.map(_tasks.sleep_then, delays, range(6), timeout=30)
    assert list(results) == list(range(6))


def test_map_multiple_iterables_stop_at_the_shortest(executor):
    """map zips several iterables, as the builtin map does."""
    results = executor.map(_tasks.add, [1, 2, 3], [10, 20, 30, 40], timeout=30)
    assert list(results) == [11, 22, 33]


def test_map_chunksize_above_one_keeps_every_result_in_order(executor):
    """chunksize > 1 sends items in chunks but yields each result, in order."""
    results = executor.map(_tasks.add, range(25), range(25), chunksize=4, timeout=30)
    assert list(results) == [2 * i for i in range(25)]


def test_map_empty_input_yields_nothing(executor):
    """map over an empty iterable yields no results."""
    assert list(executor.map(_tasks.echo, [], timeout=30)) == []


def test_map_task_exception_raises_when_reached(executor):
    """map raises a task's exception when its result is reached, after earlier results."""
    results = executor.map(fail_on, [1, 2, 3], [2, 2, 2], timeout=30)
    assert next(results) == 1
    with pytest.raises(ValueError, match="bad value 2"):
        next(results)


def test_map_timeout_raises_timeout_error(executor, gate):
    """A result not ready within map's timeout raises TimeoutError from next()."""
    results = executor.map(gated, [gate.args[0]], [gate.args[1]], timeout=0.2)
    with pytest.raises(TimeoutError):
        next(results)


def test_map_chunksize_below_one_raises_value_error(executor):
    """chunksize < 1 is refused with ValueError when map is called."""
    with pytest.raises(ValueError, match="chunksize"):
        executor.map(_tasks.echo, [1, 2], chunksize=0)


def test_shutdown_wait_finishes_pending_work(make_executor):
    """shutdown(wait=True) returns after every submitted task has finished."""
    executor = make_executor(1)
    futures = [executor.submit(_tasks.sleep_then, 0.02, i) for i in range(5)]
    executor.shutdown(wait=True)
    assert all(f.done() for f in futures)
    assert [f.result(timeout=0) for f in futures] == list(range(5))


def test_shutdown_cancel_futures_cancels_pending_work(make_executor, gate):
    """shutdown(wait=False, cancel_futures=True) cancels what has not started."""
    executor = make_executor(1)
    blocker = executor.submit(gated, *gate.args, "blocker")
    gate.wait_started()
    queued = [executor.submit(_tasks.echo, i) for i in range(5)]
    executor.shutdown(wait=False, cancel_futures=True)
    # ProcessPoolExecutor cancels from its manager thread, so wait for it.
    assert wait_for(queued[-1].cancelled, timeout=10)
    gate.release()
    assert blocker.result(timeout=30) == "blocker"
    for i, future in enumerate(queued):
        if not future.cancelled():  # already handed to the worker before shutdown
            assert future.result(timeout=30) == i


def test_submit_after_shutdown_raises_runtime_error(executor):
    """A shut-down executor refuses new work with RuntimeError."""
    executor.shutdown(wait=True)
    with pytest.raises(RuntimeError):
        executor.submit(_tasks.echo, 1)


def test_map_after_shutdown_raises_runtime_error(executor):
    """A shut-down executor refuses map with RuntimeError."""
    executor.shutdown(wait=True)
    with pytest.raises(RuntimeError):
        list(executor.map(_tasks.echo, [1], timeout=30))


def test_shutdown_twice_is_harmless(executor):
    """A second shutdown() call returns without error."""
    executor.shutdown(wait=True)
    executor.shutdown(wait=True)


def test_wait_all_completed_returns_every_future_done(executor):
    """wait(ALL_COMPLETED) returns once every future is done."""
    futures = [executor.submit(_tasks.echo, i) for i in range(4)]
    done, not_done = wait(futures, timeout=30, return_when=ALL_COMPLETED)
    assert done == set(futures)
    assert not not_done


def test_wait_first_completed_returns_before_a_blocked_future(executor, gate):
    """wait(FIRST_COMPLETED) returns when one future is done, the blocked one not."""
    blocked = executor.submit(gated, *gate.args)
    quick = executor.submit(_tasks.echo, 1)
    done, not_done = wait([blocked, quick], timeout=30, return_when=FIRST_COMPLETED)
    assert quick in done
    assert blocked in not_done


def test_wait_first_exception_returns_at_the_first_failure(executor, gate):
    """wait(FIRST_EXCEPTION) returns when a future fails, the blocked one not done."""
    blocked = executor.submit(gated, *gate.args)
    failing = executor.submit(_tasks.raise_value_error, "first")
    done, not_done = wait([blocked, failing], timeout=30, return_when=FIRST_EXCEPTION)
    assert failing in done
    assert blocked in not_done


def test_as_completed_yields_in_completion_order(executor, gate):
    """as_completed yields the quick future before the blocked one."""
    blocked = executor.submit(gated, *gate.args, "blocked")
    quick = executor.submit(_tasks.echo, "quick")
    finished = as_completed([blocked, quick], timeout=30)
    assert next(finished) is quick
    gate.release()
    assert next(finished) is blocked
    assert blocked.result(timeout=30) == "blocked"


def test_cancel_pending_future_succeeds(make_executor, gate):
    """Future.cancel() on a task that has not started cancels it; the rest still run."""
    executor = make_executor(1)
    blocker = executor.submit(gated, *gate.args, "blocker")
    gate.wait_started()
    # ProcessPoolExecutor hands up to two calls to its queue: the last one stays pending.
    queued = [executor.submit(_tasks.echo, i) for i in range(4)]
    assert queued[-1].cancel()
    assert queued[-1].cancelled()
    with pytest.raises(CancelledError):
        queued[-1].result(timeout=30)
    gate.release()
    assert blocker.result(timeout=30) == "blocker"
    assert [f.result(timeout=30) for f in queued[:-1]] == [0, 1, 2]


def test_cancel_running_future_fails(make_executor, gate):
    """Future.cancel() on a running task returns False and the task completes."""
    executor = make_executor(1)
    running = executor.submit(gated, *gate.args, "ran")
    gate.wait_started()
    assert not running.cancel()
    gate.release()
    assert running.result(timeout=30) == "ran"


def test_add_done_callback_is_called_with_the_future(executor):
    """A done-callback runs once the task finishes, with the future as argument."""
    called: queue.Queue[Future] = queue.Queue()
    future = executor.submit(_tasks.echo, 7)
    future.add_done_callback(called.put)
    assert called.get(timeout=30) is future
    assert future.result(timeout=0) == 7


def test_add_done_callback_on_done_future_runs_at_once(executor):
    """A done-callback added to a finished future runs immediately, in the caller."""
    future = executor.submit(_tasks.echo, 7)
    assert future.result(timeout=30) == 7
    called = []
    future.add_done_callback(called.append)
    assert called == [future]


def test_context_manager_exit_waits_for_pending_work(make_executor):
    """Leaving the with block waits for every submitted task."""
    with make_executor(1) as executor:
        futures = [executor.submit(_tasks.sleep_then, 0.02, i) for i in range(3)]
    assert all(f.done() for f in futures)
    assert [f.result(timeout=0) for f in futures] == [0, 1, 2]


def test_context_manager_exit_refuses_new_work(make_executor):
    """After the with block, submit raises RuntimeError."""
    with make_executor(1) as executor:
        assert executor.submit(_tasks.echo, 1).result(timeout=30) == 1
    with pytest.raises(RuntimeError):
        executor.submit(_tasks.echo, 2)


def test_wrap_future_awaits_the_result(executor):
    """asyncio.wrap_future turns a task's future into an awaitable."""

    async def main():
        future = asyncio.wrap_future(executor.submit(_tasks.add, 1, 2))
        return await asyncio.wait_for(future, 30)

    assert asyncio.run(main()) == 3


def test_run_in_executor_awaits_the_result(executor):
    """loop.run_in_executor accepts the executor."""

    async def main():
        loop = asyncio.get_running_loop()
        return await asyncio.wait_for(loop.run_in_executor(executor, _tasks.add, 2, 2), 30)

    assert asyncio.run(main()) == 4


def test_submit_kwargs_named_fn_or_self_reach_the_task(executor):
    """submit's own parameters are positional-only: fn= and self= go to the task."""
    assert executor.submit(dict, fn=1, self=2).result(timeout=30) == {"fn": 1, "self": 2}


def test_submit_large_argument_round_trips(executor):
    """An argument and a result of several megabytes (more than a pipe buffer) arrive whole."""
    blob = os.urandom(8 * 1024 * 1024)
    assert executor.submit(_tasks.echo, blob).result(timeout=30) == blob


def test_submit_from_many_threads_runs_every_task(executor):
    """submit is thread-safe: tasks from several threads all complete."""

    def submit_some(start):
        return [executor.submit(_tasks.add, start, i) for i in range(25)]

    with ThreadPoolExecutor(4) as threads:
        batches = list(threads.map(submit_some, [0, 100, 200, 300], timeout=30))
    results = sorted(f.result(timeout=30) for batch in batches for f in batch)
    assert results == sorted(start + i for start in (0, 100, 200, 300) for i in range(25))


def test_done_callback_can_submit_more_work(executor):
    """A done-callback may submit a new task without deadlocking the executor."""
    chained: queue.Queue[Future] = queue.Queue()

    def resubmit(future):
        chained.put(executor.submit(_tasks.add, future.result(), 1))

    executor.submit(_tasks.echo, 1).add_done_callback(resubmit)
    assert chained.get(timeout=30).result(timeout=30) == 2


# -- isopool only: Task handles ----------------------------------------------------------


def test_submit_returns_task_future_with_pid_and_attempts(pool):
    """submit returns an isopool.Task, a Future that knows its worker and attempts."""
    task = pool.submit(_tasks.getpid)
    assert isinstance(task, isopool.Task)
    assert isinstance(task, Future)
    assert task.result(timeout=30) == task.pid
    assert task.attempts == 1


def test_task_constructor_raises_type_error():
    """Task has no public constructor."""
    with pytest.raises(TypeError, match="no public constructor"):
        isopool.Task()


# -- isopool only: what can be submitted ------------------------------------------------


def test_lambda_runs_in_a_worker(pool):
    """A lambda is sent by value (cloudpickle) and runs."""
    assert pool.submit(lambda x: x * 2, 21).result(timeout=30) == 42


def test_closure_runs_with_its_captured_values(pool):
    """A closure runs with the values it captured."""
    offset = 100

    def shifted(x):
        return x + offset

    assert pool.submit(shifted, 1).result(timeout=30) == 101


def test_function_local_to_a_test_runs_in_a_worker(pool):
    """A function defined inside a test function (not importable) runs."""

    def local_square(x):
        return x * x

    assert pool.submit(local_square, 7).result(timeout=30) == 49


def test_lambda_map_yields_every_result(pool):
    """map accepts a lambda."""
    assert list(pool.map(lambda x: x + 1, range(5), timeout=30)) == [1, 2, 3, 4, 5]


def test_named_function_runs_in_a_worker(pool):
    """A "package.module:function" string is imported by name and called."""
    assert pool.submit("tests._tasks:echo", "by name").result(timeout=30) == "by name"


def test_named_function_map_with_chunks_yields_every_result(pool):
    """map accepts a "package.module:function" string, with chunks too."""
    results = pool.map("tests._tasks:add", range(7), range(7), chunksize=3, timeout=30)
    assert list(results) == [2 * i for i in range(7)]


@pytest.mark.parametrize(
    "name",
    ["tests._tasks:no_such_function", "tests.no_such_module:echo", "no_colon_here"],
    ids=["missing-attribute", "missing-module", "malformed"],
)
def test_named_function_that_does_not_import_raises_value_error(pool, name):
    """submit refuses a name that does not resolve, naming it, before anything runs."""
    with pytest.raises(ValueError, match=re.escape(repr(name))):
        pool.submit(name)
    assert pool.stats()["submitted"] == 0


@pytest.mark.parametrize("fn", [42, None, b"tests._tasks:echo"], ids=["int", "none", "bytes"])
def test_non_callable_fn_raises_type_error(pool, fn):
    """submit refuses an fn that is neither callable nor a string."""
    with pytest.raises(TypeError, match="fn must be a callable"):
        pool.submit(fn)


# -- isopool only: constructor and option validation -------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"max_workers": 0}, "max_workers"),
        ({"max_workers": -1}, "max_workers"),
        ({"timeout": -1}, "timeout"),
        ({"restart": "sometimes"}, "restart"),
        ({"memory_limit": "lots"}, "memory_limit"),
        ({"max_tasks_per_child": 0}, "max_tasks_per_child"),
        ({"shutdown": "politely"}, "shutdown"),
    ],
    ids=[
        "zero-workers",
        "negative-workers",
        "negative-timeout",
        "unknown-restart",
        "unparsable-memory-limit",
        "zero-tasks-per-child",
        "unknown-shutdown",
    ],
)
def test_pool_bad_argument_raises_value_error_naming_it(kwargs, name):
    """Pool() refuses an out-of-range or unknown value; the message names the parameter."""
    with pytest.raises(ValueError, match=name):
        isopool.Pool(**kwargs)


def test_options_negative_timeout_raises_value_error(pool):
    """options() validates its values before anything is submitted."""
    with pytest.raises(ValueError, match="timeout"):
        pool.options(timeout=-1)


def test_pool_permanent_restart_raises_value_error():
    """Pool(restart="permanent") is refused: such a task never has a result."""
    with pytest.raises(ValueError, match="permanent"):
        isopool.Pool(1, restart="permanent")


def test_options_permanent_restart_submit_raises_value_error(pool):
    """submit through options(restart="permanent") is refused with a clear ValueError."""
    view = pool.options(restart="permanent")
    with pytest.raises(ValueError, match=r"restart='permanent'.*TaskSupervisor"):
        view.submit(_tasks.echo, 1)
    assert pool.stats()["submitted"] == 0


def test_options_permanent_restart_map_raises_value_error(pool):
    """map through options(restart="permanent") is refused with a clear ValueError."""
    with pytest.raises(ValueError, match="permanent"):
        pool.options(restart="permanent").map(_tasks.echo, [1])


def test_task_kwargs_named_like_options_reach_the_task(pool):
    """A task's timeout=/restart=/priority= keywords go to the task, not to the pool."""
    task = pool.submit(takes_pool_option_names, timeout=0.001, restart="r", priority="p")
    assert task.result(timeout=30) == (0.001, "r", "p")
    assert task.options.timeout is None


def test_options_view_keeps_task_kwargs_apart(pool):
    """Through options(), pool settings and the task's own keywords never collide."""
    view = pool.options(timeout=30, priority=1)
    task = view.submit(takes_pool_option_names, timeout=7, restart="r", priority="p")
    assert task.result(timeout=30) == (7, "r", "p")
    assert task.options.timeout == 30
    assert task.options.priority == 1


def test_options_view_keeps_unchanged_pool_settings(make_pool):
    """options() changes only what it is given; the rest keeps the pool's values."""
    pool = make_pool(1, timeout=12.0, shutdown="brutal_kill")
    options = pool.options(priority=0).task_options
    assert (options.timeout, options.shutdown, options.priority) == (12.0, "brutal_kill", 0)


# -- isopool only: map -------------------------------------------------------------------


def test_map_endless_iterator_keeps_a_bounded_window(pool):
    """map over itertools.count() yields lazily, with a bounded number of tasks in flight."""
    results = pool.map(_tasks.echo, itertools.count())
    try:
        taken = list(itertools.islice(results, 100))
        assert taken == list(range(100))
        in_flight = pool.stats()["submitted"] - len(taken)
        assert in_flight <= 32 * pool.max_workers  # the documented window
    finally:
        results.close()


def test_map_closed_early_cancels_what_has_not_started(one_worker, gate, tmp_path):
    """Closing map's iterator early cancels its tasks that have not started."""
    log = tmp_path / "ran"
    gates = [None, gate.args[0]] + [None] * 8
    releases = [None, gate.args[1]] + [None] * 8
    # The first task runs long enough that the pool sends one call at a time (no
    # pipelining), so the tasks behind the gated one have not started when we close.
    seconds = [0.05] + [0.0] * 9
    results = one_worker.map(record_then_wait, [str(log)] * 10, range(10), gates, releases, seconds)
    assert next(results) == 0
    gate.wait_started()
    results.close()
    gate.release()
    assert wait_for(lambda: one_worker.stats()["completed"] == 2, timeout=30)
    assert wait_for(lambda: one_worker.stats()["pending"] == 0, timeout=10)
    assert log.read_text().split() == ["0", "1"]


# -- isopool only: workers ---------------------------------------------------------------


def test_max_tasks_per_child_one_gives_each_task_a_fresh_worker(make_pool):
    """With max_tasks_per_child=1 no two tasks share a worker process."""
    pool = make_pool(2, max_tasks_per_child=1)
    tasks = [pool.submit(_tasks.getpid) for _ in range(6)]
    pids = [t.result(timeout=30) for t in tasks]
    assert len(set(pids)) == 6


def test_max_tasks_per_child_one_never_mistakes_the_exit_for_a_crash(make_pool):
    """A worker's reply and its exit read in one round settle as a result, not a crash.

    Regression: the monitor once finalized the worker (exit code 0) before applying
    the reply it had already read, failing the task with TaskCrashError.
    """
    pool = make_pool(2, max_tasks_per_child=1)
    for _ in range(100):
        task = pool.submit(_tasks.getpid)
        assert task.result(timeout=30) == task.pid
        assert task.attempts == 1


def test_initializer_runs_in_each_worker(make_pool):
    """The initializer runs in every new worker before its first task."""
    pool = make_pool(2, initializer=remember, initargs=("ready",), max_tasks_per_child=1)
    results = [pool.submit(recall).result(timeout=30) for _ in range(4)]
    assert [value for value, _pid in results] == ["ready"] * 4
    assert len({pid for _value, pid in results}) == 4


def test_failing_initializer_breaks_the_pool(make_pool):
    """An initializer that raises breaks the pool (BrokenPoolError) instead of hanging."""
    pool = make_pool(1, initializer=_tasks.raise_value_error, initargs=("init failed",))
    with pytest.raises(isopool.BrokenPoolError, match="init failed"):
        pool.submit(_tasks.echo, 1).result(timeout=30)


def test_failing_initializer_error_is_a_broken_process_pool(make_pool):
    """The broken pool's error is also the stdlib's BrokenProcessPool."""
    pool = make_pool(1, initializer=_tasks.raise_value_error, initargs=("init failed",))
    with pytest.raises(BrokenProcessPool):
        pool.submit(_tasks.echo, 1).result(timeout=30)


def test_broken_pool_submit_raises_broken_pool_error(make_pool):
    """Once broken, the pool refuses new tasks with BrokenPoolError, not PoolClosedError."""
    pool = make_pool(1, initializer=_tasks.raise_value_error, initargs=("init failed",))
    with pytest.raises(isopool.BrokenPoolError):
        pool.submit(_tasks.echo, 1).result(timeout=30)
    with pytest.raises(isopool.BrokenPoolError):
        pool.submit(_tasks.echo, 2)


# -- isopool only: kill ------------------------------------------------------------------


def test_kill_pending_task_cancels_it(one_worker, gate):
    """kill() of a task that has not started cancels it; the running one is untouched."""
    blocker = one_worker.submit(gated, *gate.args, "blocker")
    pending = one_worker.submit(_tasks.echo, 1)
    assert pending.kill()
    assert pending.cancelled()
    with pytest.raises(CancelledError):
        pending.result(timeout=30)
    gate.release()
    assert blocker.result(timeout=30) == "blocker"


def _start_hanging_task(pool, tmp_path):
    pid_file = tmp_path / "pid"
    task = pool.submit(_tasks.write_then_hang, str(pid_file))
    assert wait_for(lambda: pid_file.exists() and pid_file.read_text(), timeout=30)
    return task, int(pid_file.read_text())


def test_kill_running_task_raises_cancelled_error(one_worker, tmp_path):
    """After kill() of a running task, result() raises CancelledError."""
    task, _pid = _start_hanging_task(one_worker, tmp_path)
    assert task.kill()
    assert task.cancelled()
    with pytest.raises(CancelledError):
        task.result(timeout=30)


def test_kill_running_task_stops_its_worker(one_worker, tmp_path):
    """kill() of a running task ends the worker process that ran it."""
    task, pid = _start_hanging_task(one_worker, tmp_path)
    assert task.pid == pid
    task.kill()
    assert wait_for(lambda: not pid_alive(pid), timeout=10)


def test_kill_running_task_leaves_the_pool_working(one_worker, tmp_path):
    """After kill(), the pool replaces the worker and runs new tasks."""
    task, pid = _start_hanging_task(one_worker, tmp_path)
    task.kill()
    after = one_worker.submit(_tasks.getpid)
    assert after.result(timeout=30) != pid


def test_kill_finished_task_returns_false(pool):
    """kill() of a task that already finished does nothing and returns False."""
    task = pool.submit(_tasks.echo, 1)
    assert task.result(timeout=30) == 1
    assert not task.kill()
    assert task.result(timeout=0) == 1


def block_monitor(pool):
    """Park ``pool``'s monitor thread between two rounds; return the event that frees it.

    Replies then pile up unread in the result pipes, which makes a reply that races
    with ``kill()`` arrive deterministically after the kill. (Done-callbacks no longer
    run on the monitor thread, so the test parks the loop itself.)
    """
    monitor = pool._monitor
    entered, release = threading.Event(), threading.Event()
    real_step = monitor._step

    def parked_step():
        del monitor._step  # the next round is a normal one
        entered.set()
        release.wait(30)
        return real_step()

    monitor._step = parked_step
    monitor._wake()
    if not entered.wait(10):
        pytest.fail("could not park the monitor thread")
    return release


def warm_up_pipelining(pool):
    """Run many tiny tasks, so that the pool writes several calls to a worker at once."""
    # One task per call (map at chunksize 1 would send these in batches of ~1 ms each).
    tasks = [pool.submit(_tasks.echo, i) for i in range(300)]
    assert [t.result(timeout=30) for t in tasks] == list(range(300))


def test_kill_running_task_whose_reply_is_unread_raises_cancelled_error(one_worker, tmp_path):
    """kill() returning True means waiting raises CancelledError, even if a reply was sent.

    Regression test: a reply already in the pipe settled the task with its result
    (fixed in ab8fc47; only Task.shutdown keeps such a reply).
    """
    ran = tmp_path / "ran"
    release = block_monitor(one_worker)
    try:
        task = one_worker.submit(append_line, str(ran), "ran")
        assert wait_for(ran.exists, timeout=30)  # done in the worker; its reply is unread
        assert task.kill(wait=False)
    finally:
        release.set()
    with pytest.raises(CancelledError):
        task.result(timeout=30)


def test_kill_does_not_fail_the_next_pipelined_task(one_worker, gate, tmp_path):
    """Killing one task never fails another task that shared its worker.

    Regression test: before 3a765a1 the stopped worker died while running the next
    pipelined task, and that task failed with TaskCrashError (killed by SIGTERM).
    """
    ran = tmp_path / "ran"
    for _ in range(20):  # under load the pool may not pipeline (mean run time > 2 ms)
        warm_up_pipelining(one_worker)
        release = block_monitor(one_worker)
        try:
            victim = one_worker.submit(append_line, str(ran), "victim")
            innocent = one_worker.submit(gated, *gate.args, "innocent")
            pipelined = innocent.running()  # already written to the same worker
            if pipelined:
                gate.wait_started()  # the victim is done in the worker; the innocent one runs
                victim.kill(wait=False)
        finally:
            release.set()
        if pipelined:
            break
        innocent.kill()  # not pipelined: try again
        victim.kill()
    else:
        pytest.fail("could not pipeline two calls onto one worker")
    gate.release()
    assert innocent.result(timeout=30) == "innocent"


def test_kill_task_waiting_out_its_backoff_leaves_the_pool_working(tmp_path):
    """kill() of a child waiting out its back-off cancels it; the pool stays right (a fixed bug)."""
    runs = tmp_path / "runs"
    with isopool.TaskSupervisor(max_workers=1) as supervisor:
        try:
            view = supervisor.options(restart="transient", max_retries=3, backoff=30.0)
            child = view.start_child(_tasks.fail_n_times, str(runs), 10)
            pool = supervisor.pool
            assert wait_for(lambda: pool.stats()["restarted"] == 1, timeout=30)
            assert child.kill()  # it now waits 15-30 s for its first retry
            with pytest.raises(CancelledError):
                child.result(timeout=30)
            assert pool.stats()["pending"] == 0
            assert pool.submit(_tasks.echo, "still works").result(timeout=30) == "still works"
        finally:
            supervisor.pool.terminate()


# -- isopool only: priorities ------------------------------------------------------------


def test_priority_runs_most_urgent_pending_task_first(one_worker, gate, tmp_path):
    """Pending tasks start by priority, 0 first, whatever their submission order."""
    order = tmp_path / "order"
    blocker = one_worker.submit(gated, *gate.args)
    gate.wait_started()
    tasks = [
        one_worker.options(priority=p).submit(append_line, str(order), str(p)) for p in (9, 0, 5)
    ]
    gate.release()
    blocker.result(timeout=30)
    assert [t.result(timeout=30) for t in tasks] == ["9", "0", "5"]
    assert order.read_text().split() == ["0", "5", "9"]


def test_priority_ties_run_in_submission_order(one_worker, gate, tmp_path):
    """Pending tasks of equal priority start first-in, first-out."""
    order = tmp_path / "order"
    blocker = one_worker.submit(gated, *gate.args)
    gate.wait_started()
    view = one_worker.options(priority=3)
    tasks = [view.submit(append_line, str(order), str(i)) for i in range(5)]
    gate.release()
    blocker.result(timeout=30)
    for t in tasks:
        t.result(timeout=30)
    assert order.read_text().split() == ["0", "1", "2", "3", "4"]


# -- isopool only: counters --------------------------------------------------------------


def test_stats_count_each_outcome(one_worker):
    """stats() counts submitted, completed, failed and crashed tasks."""
    ok = [one_worker.submit(_tasks.echo, i) for i in range(3)]
    failed = one_worker.submit(_tasks.raise_value_error)
    crashed = one_worker.submit(_tasks.exit_with, 3)
    assert [t.result(timeout=30) for t in ok] == [0, 1, 2]
    with pytest.raises(ValueError, match="boom"):
        failed.result(timeout=30)
    with pytest.raises(isopool.TaskCrashError):
        crashed.result(timeout=30)
    stats = one_worker.stats()
    assert stats["submitted"] == 5
    assert stats["completed"] == 3
    assert stats["failed"] == 1
    assert stats["crashed"] == 1
    assert stats["workers_replaced"] == 1
    assert (stats["pending"], stats["running"]) == (0, 0)


def test_stats_of_an_idle_pool_report_its_workers(make_pool):
    """A fresh pool reports its workers and zero for every total."""
    pool = make_pool(2)
    assert wait_for(lambda: pool.stats()["workers_started"] == 2, timeout=30)
    stats = pool.stats()
    assert stats["workers"] == 2
    assert stats["submitted"] == stats["completed"] == stats["failed"] == 0


# -- isopool only: __main__ --------------------------------------------------------------

MAIN_SCRIPT = """
import isopool


def double(x):
    return 2 * x


class Box:
    def __init__(self, value):
        self.value = value


def make_box(value):
    return Box(value)


if __name__ == "__main__":
    with isopool.Pool(2) as pool:
        print(pool.submit(double, 21).result(timeout=30))
        print(pool.submit(lambda: "lambda ok").result(timeout=30))
        print(list(pool.map(double, range(4), timeout=30)))
        box = pool.submit(make_box, 5).result(timeout=30)
        print(type(box).__name__, box.value)
"""


def test_main_module_functions_and_lambdas_run_in_workers(tmp_path):
    """Functions, classes and lambdas defined in a script's __main__ run in workers."""
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(MAIN_SCRIPT))
    done = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["42", "lambda ok", "[0, 2, 4, 6]", "Box 5"]


def _minor_faults(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[7])  # field 10, minflt


def test_warm_worker_reads_calls_without_faulting_pages(make_pool):
    """A warm worker's no-op calls touch no new memory: no read buffer allocated per call.

    Reading each call with os.read(fd, 1 MiB) had glibc map and unmap a megabyte a
    call (two page faults and three syscalls per call, measured); the worker now reads
    into one buffer kept for its life.
    """
    pool = make_pool(1)
    pid = pool.submit(os.getpid).result(timeout=30)
    for _ in range(300):
        pool.submit(int).result(timeout=30)
    before = _minor_faults(pid)
    calls = 400
    for _ in range(calls):
        pool.submit(int).result(timeout=30)
    assert (_minor_faults(pid) - before) / calls < 0.5  # was 2.0

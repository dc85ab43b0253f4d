"""The Executor contract to the letter: 3.14's additions, no leaks, bad input refused.

Where this machine's ``ProcessPoolExecutor`` has the feature, the test runs against
it and isopool alike (ids ``ProcessPoolExecutor`` and ``isopool``). Python 3.14's
``terminate_workers``, ``kill_workers`` and ``map(buffersize=)`` are not in the
stdlib here (3.11), so those tests run on isopool only; they follow CPython 3.14's
own tests (``test_map_buffersize_*``, ``test_force_shutdown_workers*``).
"""

from __future__ import annotations

import gc
import itertools
import math
import os
import signal
import subprocess
import sys
import textwrap
import tracemalloc
import weakref
from concurrent.futures import CancelledError, ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import pytest

import isopool
from tests import _tasks
from tests.conftest import pid_alive, wait_for

EXECUTORS = {"ProcessPoolExecutor": ProcessPoolExecutor, "isopool": isopool.Pool}
ROOT = Path(__file__).resolve().parent.parent

# -- task functions (importable by workers as tests.test_contract) ------------------------


class Dummy:
    """A small object a weak reference can point at."""


def make_dummy(_item):
    return Dummy()


def install_sigterm_marker(marker):
    """Make this worker write ``marker`` and exit 0 on SIGTERM; return its pid."""

    def on_term(signum, frame):
        Path(marker).write_text("SIGTERM")
        os._exit(0)

    signal.signal(signal.SIGTERM, on_term)
    return os.getpid()


# -- fixtures -----------------------------------------------------------------------------


@pytest.fixture(params=list(EXECUTORS), ids=list(EXECUTORS))
def executor(request):
    """A two-worker executor of each kind, shut down at teardown."""
    executor = EXECUTORS[request.param](2)
    yield executor
    if isinstance(executor, isopool.Pool):
        executor.terminate()
    else:
        executor.shutdown(wait=True, cancel_futures=True)


class Blocker:
    """A task that holds its worker until released: ``ready_then_wait_for_gate``."""

    def __init__(self, directory: Path) -> None:
        self.ready = directory / "ready"
        self.gate = directory / "gate"

    def submit(self, pool):
        return pool.submit(_tasks.ready_then_wait_for_gate, str(self.ready), str(self.gate))

    def wait_ready(self) -> int:
        assert wait_for(self.ready.exists, timeout=30), "the blocking task never started"
        return int(self.ready.read_text())

    def release(self) -> None:
        self.gate.touch()


@pytest.fixture
def blocker(tmp_path):
    """A Blocker, released at teardown (list it after the pool, so it opens first)."""
    b = Blocker(tmp_path)
    yield b
    b.release()


# -- max_workers, on both executors ------------------------------------------------------


@pytest.mark.parametrize("kind", list(EXECUTORS))
@pytest.mark.parametrize("value", [0, -1], ids=["zero", "negative"])
def test_max_workers_below_one_raises_value_error_in_the_stdlib_words(kind, value):
    """max_workers <= 0 raises ValueError saying "max_workers must be greater than 0"."""
    with pytest.raises(ValueError, match="max_workers must be greater than 0"):
        EXECUTORS[kind](value)


def test_max_workers_below_one_message_names_the_value():
    """isopool's message also names the value it refused."""
    with pytest.raises(ValueError, match=r"greater than 0, got -3"):
        isopool.Pool(-3)


# -- submit after interpreter shutdown, on both executors ---------------------------------

AT_EXIT_SCRIPT = """
import atexit

@atexit.register
def run_last():
    try:
        pool.submit(id, None)
    except RuntimeError as exc:
        print("runtime-error", repr(str(exc)))
        raise

from {module} import {name}

if __name__ == "__main__":
    pool = {name}(2)
    if {used}:
        pool.submit(id, 42).result(timeout=30)
"""


@pytest.mark.parametrize("used", [False, True], ids=["unused-pool", "used-pool"])
@pytest.mark.parametrize(
    ("module", "name"),
    [("concurrent.futures", "ProcessPoolExecutor"), ("isopool", "Pool")],
    ids=["ProcessPoolExecutor", "isopool"],
)
def test_submit_in_atexit_hook_raises_runtime_error_after_interpreter_shutdown(
    tmp_path, module, name, used
):
    """submit() from an atexit hook raises RuntimeError("cannot schedule new futures...").

    As CPython's test_submit_after_interpreter_shutdown. The stdlib says "after
    interpreter shutdown" only for a pool that never ran a task (its manager thread
    marks a used pool shut down first); isopool says it every time.
    """
    script = tmp_path / "at_exit.py"
    source = AT_EXIT_SCRIPT.format(module=module, name=name, used=used)
    script.write_text(textwrap.dedent(source))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    # Errors in atexit hooks do not change the exit code: read the output.
    assert done.stdout.startswith("runtime-error 'cannot schedule new futures after"), done.stderr
    if module == "isopool" or not used:
        assert done.stdout.strip() == (
            "runtime-error 'cannot schedule new futures after interpreter shutdown'"
        ), done.stderr


# -- map keeps no reference to what it yielded, on both executors -------------------------


@pytest.mark.parametrize("chunksize", [1, 3], ids=["one-per-task", "chunked"])
def test_map_iterator_keeps_no_reference_to_a_yielded_result(executor, chunksize):
    """A result map yielded is freed once the caller drops it (stdlib test_free_reference)."""
    for obj in executor.map(make_dummy, range(10), chunksize=chunksize, timeout=30):
        ref = weakref.ref(obj)
        del obj
        gc.collect()
        assert wait_for(lambda ref=ref: ref() is None, timeout=10), "map kept a yielded result"


def test_finished_future_is_freed_once_the_caller_drops_it(executor):
    """Nothing in the executor keeps a settled future alive (stdlib's yielded-future test)."""
    futures = [executor.submit(make_dummy, i) for i in range(8)]
    for future in as_completed(futures, timeout=30):
        futures.remove(future)
        ref = weakref.ref(future)
        del future
        gc.collect()
        assert wait_for(lambda ref=ref: ref() is None, timeout=10), "a settled future was kept"


def test_map_timeout_cancels_the_task_it_waited_for(make_pool, blocker, tmp_path):
    """After map's TimeoutError, the task it timed out on does not run later."""
    pool = make_pool(1)
    held = blocker.submit(pool)
    blocker.wait_ready()
    log = tmp_path / "ran"
    results = pool.map(_tasks.count_run, [str(log)] * 3, timeout=0.1)
    with pytest.raises(TimeoutError):
        next(results)
    blocker.release()
    assert held.result(timeout=30) is True
    pool.shutdown(wait=True)
    assert not log.exists()


# -- map(buffersize=), Python 3.14's, on isopool ------------------------------------------


@pytest.mark.parametrize("buffersize", ["foo", 2.0], ids=["str", "float"])
def test_map_buffersize_wrong_type_raises_type_error(pool, buffersize):
    """A buffersize that is not an int raises 3.14's TypeError at the call."""
    with pytest.raises(TypeError, match="buffersize must be an integer or None"):
        pool.map(str, range(4), buffersize=buffersize)


@pytest.mark.parametrize("buffersize", [0, -1], ids=["zero", "negative"])
def test_map_buffersize_below_one_raises_value_error(pool, buffersize):
    """A buffersize below 1 raises 3.14's ValueError at the call, naming the value."""
    with pytest.raises(ValueError, match=rf"buffersize must be None or > 0, got {buffersize}"):
        pool.map(str, range(4), buffersize=buffersize)
    assert pool.stats()["submitted"] == 0


@pytest.mark.parametrize("buffersize", [1, 2, 4, 8])
def test_map_buffersize_yields_every_result_in_order(pool, buffersize):
    """Any buffersize, below or above the input's length, gives every result in order."""
    results = pool.map(str, range(4), buffersize=buffersize, timeout=30)
    assert list(results) == ["0", "1", "2", "3"]


def test_map_buffersize_on_multiple_iterables_zips_them(pool):
    """buffersize works with several iterables."""
    results = pool.map(_tasks.add, range(4), range(4), buffersize=2, timeout=30)
    assert list(results) == [0, 2, 4, 6]


def test_map_buffersize_on_endless_iterables_yields_lazily(pool):
    """With buffersize, map over endless iterables yields as results are taken."""
    results = pool.map(_tasks.add, itertools.count(), itertools.count(), buffersize=2)
    try:
        assert [next(results) for _ in range(3)] == [0, 2, 4]
    finally:
        results.close()


@pytest.mark.parametrize("iterables", [([],), ()], ids=["empty-iterable", "no-iterable"])
def test_map_buffersize_without_input_yields_nothing(pool, iterables):
    """map(fn, [], buffersize=2) and map(fn, buffersize=2) yield nothing."""
    assert next(pool.map(str, *iterables, buffersize=2), None) is None


@pytest.mark.parametrize(("chunksize", "taken"), [(1, 2), (3, 6)], ids=["one", "chunks"])
def test_map_buffersize_reads_only_a_full_buffer_ahead(make_pool, chunksize, taken):
    """Before any result is taken, map reads buffersize tasks' worth of input, no more."""
    pool = make_pool(2)
    ints = iter(range(20))
    pool.map(str, ints, chunksize=chunksize, buffersize=2)
    pool.shutdown(wait=True)  # the tasks complete; nobody takes their results
    assert next(ints) == taken
    assert pool.stats()["submitted"] == 2


def test_map_buffersize_keeps_at_most_that_many_results_ahead(pool):
    """While iterating, submitted minus taken never exceeds buffersize."""
    results = pool.map(_tasks.echo, itertools.count(), buffersize=3)
    try:
        for taken in range(1, 30):
            assert next(results) == taken - 1
            assert pool.stats()["submitted"] - taken <= 3
    finally:
        results.close()


def test_options_map_accepts_buffersize(pool):
    """PoolOptions.map takes buffersize too."""
    results = pool.options(priority=1).map(str, range(5), buffersize=2, timeout=30)
    assert list(results) == ["0", "1", "2", "3", "4"]


# -- terminate_workers / kill_workers, Python 3.14's, on isopool ---------------------------


@pytest.mark.parametrize(
    ("method", "sig"),
    [("terminate_workers", "SIGTERM"), ("kill_workers", "SIGKILL")],
    ids=["terminate_workers", "kill_workers"],
)
def test_force_shutdown_running_task_fails_with_broken_process_pool(
    make_pool, blocker, method, sig
):
    """The task a signalled worker was running fails with TaskCrashError naming the signal."""
    pool = make_pool(1)
    task = blocker.submit(pool)
    blocker.wait_ready()
    getattr(pool, method)()
    error = task.exception(timeout=30)
    assert isinstance(error, isopool.TaskCrashError)
    assert isinstance(error, BrokenProcessPool)
    assert error.signal == sig


@pytest.mark.parametrize("method", ["terminate_workers", "kill_workers"])
def test_force_shutdown_cancels_pending_tasks(make_pool, blocker, method):
    """Tasks that had not started are cancelled (3.14: shutdown(cancel_futures=True))."""
    pool = make_pool(1)
    running = blocker.submit(pool)
    blocker.wait_ready()
    queued = [pool.submit(_tasks.echo, i) for i in range(5)]
    getattr(pool, method)()
    assert all(task.cancelled() for task in queued)
    with pytest.raises(CancelledError):
        queued[0].result(timeout=0)
    assert isinstance(running.exception(timeout=30), BrokenProcessPool)


@pytest.mark.parametrize("method", ["terminate_workers", "kill_workers"])
def test_force_shutdown_then_submit_raises_runtime_error(make_pool, method):
    """After terminate_workers/kill_workers the pool refuses work (3.14's test)."""
    pool = make_pool(1)
    pid = pool.submit(os.getpid).result(timeout=30)
    getattr(pool, method)()
    assert wait_for(lambda: not pid_alive(pid), timeout=30), "the worker is still alive"
    with pytest.raises(RuntimeError):
        pool.submit(_tasks.echo, 1)


@pytest.mark.parametrize(
    ("method", "marked"),
    [("terminate_workers", True), ("kill_workers", False)],
    ids=["terminate_workers", "kill_workers"],
)
def test_force_shutdown_signals_idle_workers(make_pool, tmp_path, method, marked):
    """An idle worker gets SIGTERM from terminate_workers (its handler runs), SIGKILL else."""
    pool = make_pool(1)
    marker = tmp_path / "marker"
    pid = pool.submit(install_sigterm_marker, str(marker)).result(timeout=30)
    getattr(pool, method)()
    assert wait_for(lambda: not pid_alive(pid), timeout=30), "the idle worker is still alive"
    assert marker.exists() is marked


@pytest.mark.parametrize("method", ["terminate_workers", "kill_workers"])
def test_force_shutdown_never_restarts_a_transient_task(make_pool, blocker, method):
    """A transient task whose worker was signalled fails; it is not run again."""
    pool = make_pool(1, restart="transient")
    task = blocker.submit(pool)
    blocker.wait_ready()
    getattr(pool, method)()
    assert isinstance(task.exception(timeout=30), isopool.TaskCrashError)
    assert task.attempts == 1
    assert pool.stats()["restarted"] == 0


@pytest.mark.slow
def test_terminate_workers_returns_at_once_and_escalates_to_sigkill(make_pool, tmp_path):
    """terminate_workers does not wait; a worker ignoring SIGTERM is killed after the grace."""
    pool = make_pool(1, shutdown=3.0)
    ready = tmp_path / "ready"
    task = pool.submit(_tasks.ignore_sigterm_then_hang, str(ready))
    assert wait_for(ready.exists, timeout=30)
    pool.terminate_workers()
    assert not task.done()  # it ignores SIGTERM: only the SIGKILL 3 s later ends it
    error = task.exception(timeout=30)
    assert isinstance(error, isopool.TaskCrashError)
    assert error.signal == "SIGKILL"


@pytest.mark.parametrize("method", ["terminate_workers", "kill_workers"])
def test_force_shutdown_of_a_shut_down_pool_is_harmless(make_pool, method):
    """On a closed pool, and called twice, it does nothing and raises nothing."""
    pool = make_pool(1)
    pool.shutdown(wait=True)
    getattr(pool, method)()
    getattr(pool, method)()


@pytest.mark.parametrize("method", ["terminate_workers", "kill_workers"])
def test_force_shutdown_of_a_broken_pool_is_harmless(make_pool, method):
    """On a broken pool it raises nothing (3.14's test_force_shutdown_workers_dead_workers)."""
    pool = make_pool(1, initializer=_tasks.raise_value_error, initargs=("init failed",))
    with pytest.raises(isopool.BrokenPoolError):
        pool.submit(_tasks.echo, 1).result(timeout=30)
    getattr(pool, method)()


@pytest.mark.parametrize("method", ["terminate_workers", "kill_workers"])
def test_force_shutdown_inside_with_block_exits_cleanly(method):
    """A with block whose pool was force-shut-down exits without error or leftovers."""
    with isopool.Pool(2) as pool:
        pool.submit(os.getpid).result(timeout=30)
        getattr(pool, method)()


# -- no leaks -------------------------------------------------------------------------------


def test_finished_task_drops_its_pickled_call(one_worker):
    """A done task no longer holds its pickled call: a 50 MB argument is freed."""
    size = 50 * 2**20
    assert one_worker.submit(len, b"warm-up").result(timeout=30) == 7
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        task = one_worker.submit(len, bytes(size))
        assert task.result(timeout=60) == size
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert held < size // 10, f"{held} bytes still held after the task finished"


def test_cancelled_task_drops_its_pickled_call(one_worker, blocker):
    """A task cancelled while queued frees its pickled call too."""
    size = 50 * 2**20
    running = blocker.submit(one_worker)
    blocker.wait_ready()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        task = one_worker.submit(len, bytes(size))
        assert task.cancel()
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert held < size // 10, f"{held} bytes still held after the task was cancelled"
    blocker.release()
    assert running.result(timeout=30) is True


def test_transient_task_reruns_from_its_pickled_call(make_pool, tmp_path):
    """A transient task that failed still has its call to re-run (dropped only at the end)."""
    pool = make_pool(1, restart="transient")
    task = pool.submit(_tasks.fail_n_times, str(tmp_path / "runs"), 2, b"x" * 2**20)
    assert task.result(timeout=30) == b"x" * 2**20
    assert task.attempts == 3


def test_stats_pending_leaves_out_cancelled_tasks(one_worker, blocker):
    """stats()["pending"] counts live queued tasks only: cancelled ones leave at once."""
    running = blocker.submit(one_worker)
    blocker.wait_ready()
    queued = [one_worker.submit(_tasks.echo, i) for i in range(5)]
    assert one_worker.stats()["pending"] == 5
    assert all(task.cancel() for task in queued[:3])
    assert one_worker.stats()["pending"] == 2
    blocker.release()
    assert [task.result(timeout=30) for task in queued[3:]] == [3, 4]
    assert running.result(timeout=30) is True


# -- time-outs and durations: NaN, inf and the absurd refused at the call ---------------------

BAD_SECONDS = [math.nan, math.inf, 1e300]
BAD_IDS = ["nan", "inf", "huge"]


@pytest.mark.parametrize("value", BAD_SECONDS, ids=BAD_IDS)
@pytest.mark.parametrize("name", ["timeout", "shutdown", "max_seconds"])
def test_pool_bad_duration_raises_value_error_naming_it(name, value):
    """Pool(timeout=/shutdown=/max_seconds=) refuses NaN, inf and 1e300, naming it."""
    with pytest.raises(ValueError, match=rf"^{name} must be"):
        isopool.Pool(1, **{name: value})


@pytest.mark.parametrize("value", BAD_SECONDS, ids=BAD_IDS)
@pytest.mark.parametrize("name", ["timeout", "shutdown", "max_seconds"])
def test_options_bad_duration_raises_value_error_naming_it(pool, name, value):
    """options(...) refuses NaN, inf and 1e300 for every duration, naming it."""
    with pytest.raises(ValueError, match=rf"^{name} must be"):
        pool.options(**{name: value})


@pytest.mark.parametrize("value", BAD_SECONDS, ids=BAD_IDS)
def test_options_view_bad_backoff_raises_value_error_naming_it(pool, value):
    """A view's options(backoff=...) refuses NaN, inf and 1e300."""
    with pytest.raises(ValueError, match=r"^backoff must be"):
        pool.options(priority=1).options(max_retries=2, backoff=value)


@pytest.mark.parametrize("value", BAD_SECONDS, ids=BAD_IDS)
def test_supervisor_bad_max_seconds_raises_value_error_naming_it(value):
    """TaskSupervisor(max_seconds=...) refuses NaN, inf and 1e300."""
    with pytest.raises(ValueError, match=r"^max_seconds must be"):
        isopool.TaskSupervisor(max_seconds=value)


@pytest.mark.parametrize("value", BAD_SECONDS, ids=BAD_IDS)
@pytest.mark.parametrize(
    "call",
    [
        lambda task, t: task.await_(t),
        lambda task, t: task.yield_(t),
        lambda task, t: task.shutdown(t),
        lambda task, t: task.result(t),
        lambda task, t: task.exception(t),
        lambda task, t: isopool.Task.await_many([task], t),
        lambda task, t: isopool.Task.yield_many([task], t),
        lambda task, t: isopool.Task.async_stream(_tasks.echo, [1], timeout=t),
    ],
    ids=[
        "await_",
        "yield_",
        "shutdown",
        "result",
        "exception",
        "await_many",
        "yield_many",
        "async_stream",
    ],
)
def test_task_bad_timeout_raises_value_error_naming_it(call, value):
    """Every Task function that takes a time-out refuses NaN, inf and 1e300."""
    task = isopool.Task.completed(1)
    with pytest.raises(ValueError, match=r"^(timeout|shutdown) must be"):
        call(task, value)


@pytest.mark.parametrize("value", BAD_SECONDS, ids=BAD_IDS)
def test_map_bad_timeout_raises_value_error_at_the_call(pool, value):
    """map(timeout=NaN/inf/1e300) raises at the call, before anything is submitted."""
    with pytest.raises(ValueError, match=r"^timeout must be"):
        pool.map(_tasks.echo, [1], timeout=value)
    assert pool.stats()["submitted"] == 0


@pytest.mark.parametrize("value", [*BAD_SECONDS, -1.0], ids=[*BAD_IDS, "negative"])
def test_terminate_bad_timeout_raises_value_error(pool, value):
    """terminate(timeout=) refuses NaN, inf, 1e300 and negatives."""
    with pytest.raises(ValueError, match=r"^timeout must be"):
        pool.terminate(value)


def test_result_negative_timeout_does_not_block(one_worker, blocker):
    """result(timeout=-1) polls, as in the stdlib: TimeoutError at once when not done."""
    task = blocker.submit(one_worker)
    with pytest.raises(TimeoutError):
        task.result(timeout=-1)
    blocker.release()
    assert task.result(timeout=30) is True
    assert task.result(timeout=-1) is True


def test_map_negative_timeout_times_out_like_the_stdlib(one_worker, blocker):
    """map(timeout=-1) is accepted and times out at the first unfinished result."""
    blocker.submit(one_worker)
    blocker.wait_ready()
    results = one_worker.map(_tasks.echo, [1], timeout=-1)
    with pytest.raises(TimeoutError):
        next(results)


@pytest.mark.parametrize("value", [10**30, sys.maxsize + 1, "99999999TB", "9" * 400 + "MB"])
def test_pool_memory_limit_beyond_setrlimit_raises_value_error(value):
    """A memory_limit no setrlimit could apply is refused at the call, naming it."""
    with pytest.raises(ValueError, match="memory_limit must be at most"):
        isopool.Pool(1, memory_limit=value)


def test_options_memory_limit_beyond_setrlimit_raises_value_error(pool):
    """options(memory_limit=10**30) is refused before anything is submitted."""
    with pytest.raises(ValueError, match="memory_limit must be at most"):
        pool.options(memory_limit=10**30)


def test_kill_with_the_longest_grace_still_stops_the_task(make_pool, blocker):
    """kill() waits grace + a margin: with the 1e9 s bound as grace, that must not overflow."""
    pool = make_pool(1, shutdown=1e9)
    task = blocker.submit(pool)
    blocker.wait_ready()
    assert task.kill()  # SIGTERM ends it at once; the wait's bound is what is checked
    assert task.cancelled()

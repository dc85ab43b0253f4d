"""One hostile task can never break the pool, freeze it, or stall another task.

Each test runs a task that attacks the parent (an outcome whose unpickling raises a
BaseException or sleeps, a done-callback that raises KeyboardInterrupt, an exception
class that refuses attributes) and asserts that only that task is affected.
"""

from __future__ import annotations

import concurrent.futures
import logging
import pickle
import threading
import time
from concurrent.futures.process import BrokenProcessPool

import pytest

import isopool
from tests import _payloads, _tasks


def test_slow_result_unpickle_does_not_delay_another_tasks_timeout():
    """A result that takes 3 s to unpickle delays neither another time-out nor a result."""
    with isopool.Pool(2) as pool:
        slow = pool.submit(_payloads.return_act_at_unpickle, "slow")
        assert concurrent.futures.wait([slow], timeout=30).done  # done, not yet unpickled
        reader = threading.Thread(target=slow.exception, args=(30,), daemon=True)
        reader.start()  # unpickling (3 s) in this thread now
        start = time.monotonic()
        hung = pool.options(timeout=0.3).submit(_tasks.hang)
        with pytest.raises(isopool.TaskTimeoutError):
            hung.result(timeout=30)
        assert pool.submit(_tasks.echo, "quick").result(timeout=30) == "quick"
        assert time.monotonic() - start < 2.5  # not behind the 3 s unpickle
        reader.join(30)


def test_done_callback_raising_keyboard_interrupt_is_logged_and_pool_serves(caplog):
    """A done-callback that raises KeyboardInterrupt is logged; later callbacks still run."""
    ran = threading.Event()

    def hostile(_future):
        raise KeyboardInterrupt("from a callback")

    with isopool.Pool(1) as pool:
        task = pool.submit(_tasks.sleep_then, 0.2, 1)
        task.add_done_callback(hostile)
        task.add_done_callback(lambda _f: ran.set())
        assert task.result(timeout=30) == 1
        assert ran.wait(30)
        assert pool.submit(_tasks.echo, 2).result(timeout=30) == 2
    assert any(
        r.name == "concurrent.futures" and "exception calling callback" in r.getMessage()
        for r in caplog.records
    )


def test_done_callbacks_never_run_on_the_monitor_thread():
    """Done-callbacks (user code) run on the resolver thread, never on the monitor."""
    names = []
    seen = threading.Event()

    def record(_future):
        names.append(threading.current_thread().name)
        seen.set()

    with isopool.Pool(1) as pool:
        task = pool.submit(_tasks.sleep_then, 0.2, "x")
        task.add_done_callback(record)
        assert task.result(timeout=30) == "x"
        assert seen.wait(30)
    assert names
    assert names[0].startswith("isopool-resolver")


def test_callbacks_have_run_when_shutdown_returns():
    """shutdown(wait=True) returns after every done-callback ran, as with the stdlib."""
    ran = []
    with isopool.Pool(1) as pool:
        for i in range(5):
            pool.submit(_tasks.sleep_then, 0.01, i).add_done_callback(
                lambda f: (time.sleep(0.05), ran.append(f.result()))
            )
    assert sorted(ran) == list(range(5))


def test_frozen_dataclass_exception_comes_back_as_itself():
    """A task raising a frozen dataclass exception fails with that very type."""
    with isopool.Pool(1) as pool, pytest.raises(_tasks.FrozenError) as info:
        pool.submit(_tasks.raise_frozen, 42).result(timeout=30)
    assert info.value.code == 42
    assert "raise_frozen" in str(info.value.__cause__)


def test_unpicklable_result_raises_the_stdlibs_type_error():
    """A result holding a lock raises TypeError (as ProcessPoolExecutor) and SerializationError."""
    with isopool.Pool(1) as pool:
        with pytest.raises(TypeError, match=r"cannot pickle '_thread\.lock' object") as info:
            pool.submit(_tasks.return_lock).result(timeout=30)
        assert isinstance(info.value, isopool.SerializationError)
        assert info.value.side == "worker"
        assert info.value.what == "result pickle"


def test_unpicklable_call_raises_the_stdlibs_pickling_error():
    """A call whose pickling raises PicklingError raises PicklingError from its future."""
    with isopool.Pool(1) as pool:
        with pytest.raises(pickle.PicklingError) as info:
            pool.submit(_tasks.echo, _payloads.PicklingErrorAtPickle()).result(timeout=30)
        assert isinstance(info.value, isopool.SerializationError)
        assert info.value.what == "call pickle"
        assert not isinstance(info.value, BrokenProcessPool)


def test_unpicklable_exception_raises_what_pickling_raised():
    """A task exception holding a lock raises the pickling TypeError, saying what it was."""
    with isopool.Pool(1) as pool, pytest.raises(TypeError) as info:
        pool.submit(_tasks.raise_unpicklable).result(timeout=30)
    assert isinstance(info.value, isopool.SerializationError)
    assert info.value.what == "exception pickle"
    assert "could not be pickled" in str(info.value)


def test_serialization_error_mixed_class_pickles_across_processes():
    """A mixed SerializationError keeps its classes and attributes through pickle."""
    with isopool.Pool(1) as pool, pytest.raises(TypeError) as info:
        pool.submit(_tasks.return_lock).result(timeout=30)
    copy = pickle.loads(pickle.dumps(info.value))
    assert type(copy) is type(info.value)
    assert (copy.side, copy.what, copy.task_id) == ("worker", "result pickle", info.value.task_id)


def test_sys_exit_in_task_comes_back_as_system_exit_and_the_worker_lives():
    """sys.exit(3) in a task raises SystemExit(3) from result(); the worker is not replaced."""
    with isopool.Pool(1) as pool:
        pid = pool.submit(_tasks.getpid).result(timeout=30)
        with pytest.raises(SystemExit) as info:
            pool.submit(_tasks.sys_exit, 3).result(timeout=30)
        assert info.value.code == 3
        assert pool.submit(_tasks.getpid).result(timeout=30) == pid
        assert pool.stats()["crashed"] == 0


def test_sys_exit_zero_is_a_normal_exit_for_transient_tasks(tmp_path):
    """A transient task that calls sys.exit(0) is not restarted: a normal exit, as in OTP."""
    runs = tmp_path / "runs"
    with isopool.Pool(1) as pool:
        task = pool.options(restart="transient").submit(_tasks.count_then_exit, str(runs), 0)
        with pytest.raises(SystemExit):
            task.result(timeout=30)
        assert task.attempts == 1
        assert task.exited_normally


def test_sys_exit_nonzero_restarts_a_transient_task(tmp_path):
    """A transient task that calls sys.exit(2) is abnormal: it is restarted."""
    runs = tmp_path / "runs"
    with isopool.Pool(1) as pool:
        task = pool.options(restart="transient", max_restarts=2, max_seconds=60).submit(
            _tasks.count_then_exit, str(runs), 2
        )
        with pytest.raises(isopool.RestartLimitError) as info:
            task.result(timeout=30)
        assert isinstance(info.value.__cause__, SystemExit)
        assert _tasks.runs(runs) == 3


def test_keyboard_interrupt_at_result_unpickle_names_it(caplog):
    """A KeyboardInterrupt while unpickling a result fails that task, saying so."""
    caplog.set_level(logging.WARNING)
    with isopool.Pool(1) as pool:
        task = pool.submit(_payloads.return_act_at_unpickle, "interrupt")
        with pytest.raises(isopool.SerializationError, match="KeyboardInterrupt") as info:
            task.result(timeout=30)
        assert isinstance(info.value.__cause__, KeyboardInterrupt)
        assert pool.submit(_tasks.echo, 1).result(timeout=30) == 1

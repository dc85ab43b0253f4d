"""The crash matrix: every failure, at every phase, fails that task alone.

Each row submits one bad task among good ones on a two-worker pool and asserts our
promise: the bad task fails with the right error, every other task succeeds, and
the pool then runs new work. (CPython and loky fail every pending future instead.)

Phases: call pickle in the parent, call unpickle in the worker, the run itself,
result pickle in the worker, result unpickle in the parent. A segfault, os._exit or
hang while the *parent* pickles or unpickles cannot be isolated (it is the caller's
own process), so those rows do not exist.
"""

from __future__ import annotations

import os
import signal
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import pytest

import isopool
from tests import _payloads, _tasks
from tests.conftest import wait_for

HANG_TIMEOUT = 1.0

# Where ProcessPoolExecutor raises a stdlib error, ours is still an instance of it.
BROKEN = BrokenProcessPool
SER = isopool.SerializationError


def serialization(side, what, *also):
    """The attributes, and the stdlib types, of a SerializationError row."""
    return {"side": side, "what": what, "__also__": also}


# id: (function, args, expected error type, extra attributes to check)
CASES = {
    # call pickle in the parent
    "raise-at-call-pickle-in-parent": (
        _payloads.take,
        (_payloads.ActAtPickle("raise"),),
        SER,
        serialization("parent", "call pickle", ValueError),
    ),
    "sys-exit-at-call-pickle-in-parent": (
        _payloads.take,
        (_payloads.ActAtPickle("sys_exit"),),
        SER,
        serialization("parent", "call pickle"),
    ),
    # call unpickle in the worker: the stdlib's worker dies here, so BrokenProcessPool
    "segfault-at-call-unpickle-in-worker": (
        _payloads.take,
        (_payloads.ActAtUnpickle("segfault"),),
        isopool.TaskCrashError,
        {"signal": "SIGSEGV"},
    ),
    "exit-at-call-unpickle-in-worker": (
        _payloads.take,
        (_payloads.ActAtUnpickle("exit"),),
        isopool.TaskCrashError,
        {"exitcode": 7, "signal": None},
    ),
    "sys-exit-at-call-unpickle-in-worker": (
        _payloads.take,
        (_payloads.ActAtUnpickle("sys_exit"),),
        SER,
        serialization("worker", "call unpickle", BROKEN),
    ),
    "raise-at-call-unpickle-in-worker": (
        _payloads.take,
        (_payloads.ActAtUnpickle("raise"),),
        SER,
        serialization("worker", "call unpickle", BROKEN, ValueError),
    ),
    "interrupt-at-call-unpickle-in-worker": (
        _payloads.take,
        (_payloads.ActAtUnpickle("interrupt"),),
        SER,
        serialization("worker", "call unpickle", BROKEN),
    ),
    "hang-at-call-unpickle-in-worker": (
        _payloads.take,
        (_payloads.ActAtUnpickle("hang"),),
        isopool.TaskTimeoutError,
        {},
    ),
    # the run
    "segfault-at-run": (_tasks.segfault, (), isopool.TaskCrashError, {"signal": "SIGSEGV"}),
    "exit-at-run": (_tasks.exit_with, (3,), isopool.TaskCrashError, {"exitcode": 3}),
    "sys-exit-at-run": (_tasks.sys_exit, (4,), SystemExit, {"code": 4}),
    "raise-at-run": (_tasks.raise_value_error, ("boom",), ValueError, {}),
    "interrupt-at-run": (_tasks.raise_interrupt, (), KeyboardInterrupt, {}),
    "hang-at-run": (_tasks.hang, (), isopool.TaskTimeoutError, {}),
    "busy-hang-at-run": (_tasks.busy_hang, (), isopool.TaskTimeoutError, {}),
    # result pickle in the worker
    "segfault-at-result-pickle-in-worker": (
        _payloads.return_act_at_pickle,
        ("segfault",),
        isopool.TaskCrashError,
        {"signal": "SIGSEGV"},
    ),
    "exit-at-result-pickle-in-worker": (
        _payloads.return_act_at_pickle,
        ("exit",),
        isopool.TaskCrashError,
        {"exitcode": 7},
    ),
    "sys-exit-at-result-pickle-in-worker": (
        _payloads.return_act_at_pickle,
        ("sys_exit",),
        SystemExit,
        {"code": 5},
    ),
    "raise-at-result-pickle-in-worker": (
        _payloads.return_act_at_pickle,
        ("raise",),
        SER,
        serialization("worker", "result pickle", ValueError),
    ),
    "interrupt-at-result-pickle-in-worker": (
        _payloads.return_act_at_pickle,
        ("interrupt",),
        SER,
        serialization("worker", "result pickle"),
    ),
    "hang-at-result-pickle-in-worker": (
        _payloads.return_act_at_pickle,
        ("hang",),
        isopool.TaskTimeoutError,
        {},
    ),
    # result unpickle in the parent: the stdlib's pool breaks here, so BrokenProcessPool
    "raise-at-result-unpickle-in-parent": (
        _payloads.return_act_at_unpickle,
        ("raise",),
        SER,
        serialization("parent", "result unpickle", BROKEN, ValueError),
    ),
    "sys-exit-at-result-unpickle-in-parent": (
        _payloads.return_act_at_unpickle,
        ("sys_exit",),
        SER,
        serialization("parent", "result unpickle", BROKEN),
    ),
    "interrupt-at-result-unpickle-in-parent": (
        _payloads.return_act_at_unpickle,
        ("interrupt",),
        SER,
        serialization("parent", "result unpickle", BROKEN),
    ),
    "base-exception-at-result-unpickle-in-parent": (
        _payloads.return_act_at_unpickle,
        ("base",),
        SER,
        serialization("parent", "result unpickle", BROKEN),
    ),
    "generator-exit-at-result-unpickle-in-parent": (
        _payloads.return_act_at_unpickle,
        ("generator_exit",),
        SER,
        serialization("parent", "result unpickle", BROKEN),
    ),
}


@pytest.mark.parametrize(
    ("fn", "args", "error", "attrs"), list(CASES.values()), ids=list(CASES.keys())
)
def test_failure_fails_only_that_task(fn, args, error, attrs):
    """One bad task fails with the right error; its neighbours and later tasks succeed."""
    with isopool.Pool(2) as pool:
        before = [pool.submit(_tasks.sleep_then, 0.05, i) for i in range(4)]
        bad = pool.options(timeout=HANG_TIMEOUT, shutdown=0.5).submit(fn, *args)
        after = [pool.submit(_tasks.sleep_then, 0.05, i) for i in range(4, 8)]
        with pytest.raises(error) as info:
            bad.result(timeout=30)
        for name, value in attrs.items():
            if name == "__also__":
                for also in value:
                    assert isinstance(info.value, also), also
                continue
            assert getattr(info.value, name) == value, name
        if isinstance(info.value, isopool.TaskError):
            assert info.value.task_id == bad.id
        assert [f.result(timeout=30) for f in before + after] == list(range(8))
        assert pool.submit(_tasks.add, 2, 3).result(timeout=30) == 5


def test_sigkill_from_outside_fails_only_that_task(tmp_path, pool):
    """A worker SIGKILLed by another process fails its task with SIGKILL named."""
    pid_file = tmp_path / "pid"
    victim = pool.submit(_tasks.write_then_hang, str(pid_file))
    others = [pool.submit(_tasks.sleep_then, 0.05, i) for i in range(6)]
    assert wait_for(lambda: pid_file.exists() and pid_file.read_text())
    pid = int(pid_file.read_text())
    # The call may reach the worker before the fork server's pid report reaches the
    # monitor, so task.pid can lag the task's start: wait for it (seen on 3.12).
    assert wait_for(lambda: victim.pid == pid), (victim.pid, pid)
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(isopool.TaskCrashError) as info:
        victim.result(timeout=30)
    assert info.value.signal == "SIGKILL"
    assert info.value.pid == pid
    assert f"worker {pid} killed by SIGKILL" in str(info.value)
    assert [f.result(timeout=30) for f in others] == list(range(6))
    assert pool.submit(_tasks.echo, "again").result(timeout=30) == "again"


def test_crash_error_is_a_broken_process_pool():
    """Code written for ProcessPoolExecutor that catches BrokenProcessPool still works."""
    from concurrent.futures.process import BrokenProcessPool

    with isopool.Pool(1) as pool:
        with pytest.raises(BrokenProcessPool):
            pool.submit(_tasks.exit_with, 1).result(timeout=30)
        assert pool.submit(_tasks.echo, 1).result(timeout=30) == 1


def test_crash_message_names_task_pid_and_reason():
    """The crash message says which task, which worker and how it died."""
    with isopool.Pool(1) as pool:
        task = pool.submit(_tasks.segfault)
        with pytest.raises(isopool.TaskCrashError) as info:
            task.result(timeout=30)
    message = str(info.value)
    assert f"task {task.id} (segfault)" in message
    assert f"worker {task.pid} killed by SIGSEGV" in message
    assert info.value.task_name == "segfault"


def test_crash_is_logged_at_warning(caplog):
    """Every crash is logged at WARNING with task id, function, pid and reason."""
    with isopool.Pool(1) as pool:
        task = pool.submit(_tasks.exit_with, 9)
        with pytest.raises(isopool.TaskCrashError):
            task.result(timeout=30)
    records = [r for r in caplog.records if r.name.startswith("isopool")]
    assert any(
        r.levelname == "WARNING"
        and f"task {task.id} (exit_with)" in r.getMessage()
        and "exited with code 9" in r.getMessage()
        for r in records
    )


def test_pipelined_tasks_behind_a_crash_are_redispatched_without_an_attempt():
    """Tasks queued on a worker that dies go elsewhere and do not count as attempts."""
    with isopool.Pool(1) as pool:
        # Warm up with fast tasks so that the pool pipelines several calls per worker.
        list(pool.map(_tasks.echo, range(200)))
        crash = pool.submit(_tasks.exit_with, 1)
        behind = [pool.submit(_tasks.echo, i) for i in range(10)]
        with pytest.raises(isopool.TaskCrashError):
            crash.result(timeout=30)
        assert [f.result(timeout=30) for f in behind] == list(range(10))
        assert all(f.attempts == 1 for f in behind)
        assert crash.attempts == 1


def test_unpicklable_exception_becomes_serialization_error():
    """An exception that cannot be pickled comes back as SerializationError with its text."""
    with isopool.Pool(1) as pool, pytest.raises(isopool.SerializationError) as info:
        pool.submit(_tasks.raise_unpicklable).result(timeout=30)
    assert info.value.what == "exception pickle"
    assert "Bad" in info.value.type_name
    assert "raise Bad()" in info.value.remote_traceback


def test_unpicklable_result_names_its_type():
    """A result that cannot be pickled fails that task with SerializationError."""
    with isopool.Pool(1) as pool:
        with pytest.raises(isopool.SerializationError) as info:
            pool.submit(_tasks.return_lock).result(timeout=30)
        assert info.value.what == "result pickle"
        assert "lock" in str(info.value)
        assert pool.submit(_tasks.echo, 1).result(timeout=30) == 1


def test_task_exception_keeps_its_type_and_remote_traceback():
    """A task's exception comes back with its own type; the worker traceback is __cause__."""
    with isopool.Pool(1) as pool, pytest.raises(ValueError, match="boom") as info:
        pool.submit(_tasks.raise_value_error, "boom").result(timeout=30)
    cause = info.value.__cause__
    assert cause is not None
    assert "raise_value_error" in str(cause)
    assert "raise ValueError(message)" in str(cause)


def test_memory_limit_fails_task_with_memory_error():
    """A task that allocates past memory_limit fails with MemoryError saying so."""
    with isopool.Pool(1, memory_limit="200MB") as pool:
        with pytest.raises(MemoryError) as info:
            pool.submit(_tasks.allocate, 1_000_000_000).result(timeout=30)
        assert any("memory_limit" in note for note in getattr(info.value, "__notes__", []))
        assert pool.submit(_tasks.allocate, 10_000_000).result(timeout=30) == 10_000_000


def test_timeout_kills_the_task_process_group(tmp_path):
    """A timed-out task's worker and every process it started are gone."""
    pid_file = tmp_path / "child"
    with isopool.Pool(1) as pool:
        task = pool.options(timeout=1.0).submit(_tasks.spawn_grandchild_and_hang, str(pid_file))
        with pytest.raises(isopool.TaskTimeoutError):
            task.result(timeout=30)
        grandchild = int(pid_file.read_text())
        from tests.conftest import pid_alive

        assert wait_for(lambda: not pid_alive(grandchild), timeout=10)
        assert not pid_alive(task.pid)
        assert pool.submit(_tasks.echo, 1).result(timeout=30) == 1


def test_task_output_reaches_stdout_and_not_the_result_channel(capfd):
    """A task's prints go to the inherited stdout and do not corrupt the results."""
    with isopool.Pool(1) as pool:
        assert pool.submit(_tasks.print_lines, 50).result(timeout=30) == 50
        assert pool.submit(_tasks.echo, "clean").result(timeout=30) == "clean"
    out = capfd.readouterr().out
    assert "line 49 from the task" in out


def test_unused_file_is_not_created(tmp_path):
    """Sanity for the fixtures: tmp_path is per test."""
    assert not any(Path(tmp_path).iterdir())


@pytest.mark.slow
def test_sigterm_to_a_worker_at_its_birth_leaves_the_fork_server_alone():
    """A worker SIGTERMed right after its fork is one crash; the fork server lives on.

    The signal could arrive before the new worker dropped the fork server's signal
    handling, which wrote it into the server's own wake-up pipe and stopped the server.
    """
    with isopool.Pool(1) as pool:
        assert pool.submit(abs, -1).result(timeout=30) == 1
        server = pool._monitor._server
        assert server is not None
        for _ in range(40):
            task = pool.submit(_tasks.hang)
            assert wait_for(lambda task=task: task.pid is not None, timeout=30)
            os.kill(task.pid, signal.SIGTERM)  # the worker itself, as early as we can
            with pytest.raises(isopool.TaskCrashError):
                task.result(timeout=30)
            assert pool._monitor._server is server
            assert server.process.poll() is None
        assert pool.submit(abs, -5).result(timeout=30) == 5

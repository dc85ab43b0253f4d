"""The exception hierarchy: every error pickles with its attributes, and sits where
STYLE.md section 6 puts it, so stdlib-minded code catches it by the stdlib's types.
"""

from __future__ import annotations

import concurrent.futures
import pickle
from concurrent.futures.process import BrokenProcessPool

import pytest

import isopool


def _samples() -> dict[str, tuple[BaseException, dict[str, object]]]:
    """One instance of every exception, with the attributes it must keep."""
    task = {"task_id": 17, "task_name": "resize_image"}
    return {
        "IsopoolError": (isopool.IsopoolError("base"), {}),
        "TaskError": (isopool.TaskError("task 17 failed", **task), task),
        "TaskCrashError": (
            isopool.TaskCrashError(
                "task 17 (resize_image) crashed: worker 4242 killed by SIGSEGV",
                **task,
                pid=4242,
                exitcode=-11,
                signal="SIGSEGV",
            ),
            {**task, "pid": 4242, "exitcode": -11, "signal": "SIGSEGV"},
        ),
        "TaskTimeoutError": (
            isopool.TaskTimeoutError("task 17 timed out", **task, timeout=2.5, pid=4243),
            {**task, "timeout": 2.5, "pid": 4243},
        ),
        "SerializationError": (
            isopool.SerializationError(
                "task 17: result pickle failed in the worker",
                **task,
                side="worker",
                what="result pickle",
                type_name="TypeError",
                remote_traceback="Traceback (most recent call last):\n...",
            ),
            {
                **task,
                "side": "worker",
                "what": "result pickle",
                "type_name": "TypeError",
                "remote_traceback": "Traceback (most recent call last):\n...",
            },
        ),
        "RestartLimitError": (
            isopool.RestartLimitError("task 17 gave up", **task, attempts=4),
            {**task, "attempts": 4},
        ),
        "PoolClosedError": (isopool.PoolClosedError("cannot schedule new tasks"), {}),
        "BrokenPoolError": (isopool.BrokenPoolError("fork server failed"), {}),
        "ProtocolError": (isopool.ProtocolError("malformed frame header"), {}),
        "SignatureError": (isopool.SignatureError("bad signature"), {}),
        "MaxChildrenError": (isopool.MaxChildrenError("at max_children"), {}),
        "NodeDownError": (isopool.NodeDownError("node 'n1' is down"), {}),
        "QueueUnavailableError": (isopool.QueueUnavailableError("redis unreachable"), {}),
        "UnknownSupervisorError": (isopool.UnknownSupervisorError("no supervisor 'x'"), {}),
        "JobNotFoundError": (isopool.JobNotFoundError("no job abc"), {}),
        "Shutdown": (isopool.Shutdown("reason"), {}),
    }


SAMPLES = _samples()
EXPORTED_EXCEPTIONS = sorted(
    name
    for name in isopool.__all__
    if isinstance(getattr(isopool, name), type)
    and issubclass(getattr(isopool, name), BaseException)
)


def sample(name: str) -> tuple[BaseException, dict[str, object]]:
    """A fresh sample of exception ``name`` and the attributes it must keep."""
    samples = _samples()
    if name not in samples:
        pytest.fail(f"no sample of isopool.{name}: add one to _samples() in {__name__}")
    return samples[name]


def raise_sample(name):
    """Task: raise the sample exception called ``name`` (to cross a process)."""
    raise _samples()[name][0]


def test_every_exported_exception_has_a_sample():
    """The table below covers every exception isopool exports (add a row for a new one)."""
    assert set(EXPORTED_EXCEPTIONS) <= set(SAMPLES)


@pytest.mark.parametrize("name", EXPORTED_EXCEPTIONS)
@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_exception_pickle_round_trip_keeps_type_message_and_attributes(name, protocol):
    """pickle.loads(pickle.dumps(exc)) has the same type, message and attributes."""
    exc, attrs = sample(name)
    restored = pickle.loads(pickle.dumps(exc, protocol=protocol))
    assert type(restored) is type(exc)
    assert str(restored) == str(exc)
    assert restored.args == exc.args
    for attr, value in attrs.items():
        assert getattr(restored, attr) == value, attr


@pytest.mark.parametrize("name", EXPORTED_EXCEPTIONS)
def test_exception_pickle_keeps_notes(name):
    """Notes added with add_note survive a pickle round trip."""
    exc, _attrs = sample(name)
    exc.add_note("a note")
    assert pickle.loads(pickle.dumps(exc)).__notes__ == ["a note"]


@pytest.mark.parametrize("name", [n for n in EXPORTED_EXCEPTIONS if SAMPLES.get(n, (0, {}))[1]])
def test_exception_attributes_default_to_none(name):
    """Built from a message alone, every attribute exists (None, or 0 for attempts)."""
    exc = getattr(isopool, name)("only a message")
    for attr in sample(name)[1]:
        assert getattr(exc, attr) in (None, 0), attr


@pytest.mark.parametrize("name", EXPORTED_EXCEPTIONS)
def test_exception_raised_in_a_worker_keeps_its_attributes(pool, name):
    """An isopool exception raised by a task comes back with type and attributes intact."""
    exc, attrs = sample(name)
    error = pool.submit(raise_sample, name).exception(timeout=30)
    assert type(error) is type(exc)
    assert str(error) == str(exc)
    for attr, value in attrs.items():
        assert getattr(error, attr) == value, attr


@pytest.mark.parametrize("name", EXPORTED_EXCEPTIONS)
def test_exception_class_is_shown_as_isopool(name):
    """Public exceptions report module isopool, and pickle by that name."""
    cls = getattr(isopool, name)
    assert cls.__module__ == "isopool"
    assert pickle.loads(pickle.dumps(cls)) is cls


# -- the hierarchy (STYLE.md section 6) -----------------------------------------------------

IS_A = [
    (isopool.IsopoolError, Exception),
    (isopool.TaskError, isopool.IsopoolError),
    (isopool.TaskCrashError, isopool.TaskError),
    (isopool.TaskCrashError, BrokenProcessPool),
    (isopool.TaskTimeoutError, isopool.TaskError),
    (isopool.TaskTimeoutError, TimeoutError),
    (isopool.TaskTimeoutError, concurrent.futures.TimeoutError),
    (isopool.SerializationError, isopool.TaskError),
    (isopool.RestartLimitError, isopool.TaskError),
    (isopool.PoolClosedError, isopool.IsopoolError),
    (isopool.PoolClosedError, RuntimeError),
    (isopool.BrokenPoolError, isopool.IsopoolError),
    (isopool.BrokenPoolError, BrokenProcessPool),
    (isopool.ProtocolError, isopool.IsopoolError),
    (isopool.SignatureError, isopool.ProtocolError),
    (isopool.MaxChildrenError, isopool.IsopoolError),
    (isopool.MaxChildrenError, RuntimeError),
    (isopool.NodeDownError, isopool.IsopoolError),
    (isopool.NodeDownError, ConnectionError),
    (isopool.QueueUnavailableError, isopool.IsopoolError),
    (isopool.QueueUnavailableError, ConnectionError),
    (isopool.UnknownSupervisorError, isopool.IsopoolError),
    (isopool.UnknownSupervisorError, LookupError),
    (isopool.JobNotFoundError, isopool.IsopoolError),
    (isopool.JobNotFoundError, LookupError),
    (isopool.Shutdown, isopool.IsopoolError),
]

IS_NOT_A = [
    # closed (you shut it down) is not broken (something else failed), and the reverse
    (isopool.PoolClosedError, BrokenProcessPool),
    (isopool.BrokenPoolError, isopool.PoolClosedError),
    # a broken pool is not one task's failure, and one task's crash is not a broken pool
    (isopool.BrokenPoolError, isopool.TaskError),
    (isopool.TaskCrashError, isopool.BrokenPoolError),
    # a normal exit is not an error of a task
    (isopool.Shutdown, isopool.TaskError),
    (isopool.TaskError, RuntimeError),
]


def _pair_id(pair):
    return f"{pair[0].__name__}-{pair[1].__name__}"


@pytest.mark.parametrize(("child", "parent"), IS_A, ids=[_pair_id(p) for p in IS_A])
def test_exception_is_a_subclass_of_its_parent(child, parent):
    """Each error subclasses what STYLE.md section 6 says, stdlib types included."""
    assert issubclass(child, parent)


@pytest.mark.parametrize(("child", "other"), IS_NOT_A, ids=[_pair_id(p) for p in IS_NOT_A])
def test_exception_is_not_a_subclass_of_a_sibling(child, other):
    """Closed, broken, crashed and normal exits stay distinct types."""
    assert not issubclass(child, other)


@pytest.mark.parametrize("name", EXPORTED_EXCEPTIONS)
def test_exception_is_an_isopool_error(name):
    """Every exported exception can be caught as isopool.IsopoolError."""
    assert issubclass(getattr(isopool, name), isopool.IsopoolError)


def test_task_timeout_error_is_caught_by_future_result_timeout_handlers():
    """Code catching concurrent.futures.TimeoutError also catches a task time-out."""
    with pytest.raises(concurrent.futures.TimeoutError):
        raise isopool.TaskTimeoutError("timed out", timeout=1.0)


def test_task_crash_error_is_caught_as_broken_process_pool():
    """Code written for ProcessPoolExecutor's BrokenProcessPool catches a crash."""
    with pytest.raises(BrokenProcessPool):
        raise isopool.TaskCrashError("crashed", pid=1, exitcode=-9, signal="SIGKILL")

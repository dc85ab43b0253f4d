"""Elixir's Task, with real processes: async_/await_/yield_/shutdown, the class-level
functions (start, start_link, await_many, yield_many, async_stream, completed) and
``await task`` inside asyncio.

The class-level functions run on isopool's default pool. Every test here gets a fresh
one (``fresh_default_pool``): a killed task's worker is replaced by a new process, so a
default pool shared across tests would look like a leak to ``no_orphans``.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import itertools
import logging
import subprocess
import sys
import textwrap
import time
import weakref
from concurrent.futures import CancelledError, InvalidStateError
from pathlib import Path

import pytest

import isopool
from isopool import Reply, Task
from tests import _tasks
from tests.conftest import pid_alive, started, wait_for

ROOT = Path(__file__).resolve().parent.parent


pytestmark = pytest.mark.usefixtures("fresh_default_pool")


def run_script(code: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter from the repository root (``tests`` importable)."""
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


# -- await_ ----------------------------------------------------------------------------------


def test_await_finished_task_returns_its_result():
    """await_ returns what the task returned."""
    assert Task.async_(_tasks.add, 2, 3).await_(30) == 5


def test_await_mfa_string_runs_the_named_function():
    """Task.async_('pkg.mod:fun', ...) is Elixir's Task.async(Mod, :fun, args)."""
    assert Task.async_("tests._tasks:add", 40, 2).await_(30) == 42


def test_await_class_level_spelling_is_the_method():
    """Task.await_(task, t) is task.await_(t)."""
    task = Task.async_(_tasks.echo, "x")
    assert Task.await_(task, 30) == "x"


def test_await_failed_task_raises_its_own_exception():
    """await_ raises the task's exception with its own type."""
    task = Task.async_(_tasks.raise_value_error, "nope")
    with pytest.raises(ValueError, match="nope"):
        task.await_(30)


def test_await_timeout_raises_task_timeout_error_and_stops_the_process():
    """On time-out await_ raises TaskTimeoutError and the task's process is gone."""
    task = Task.async_(_tasks.hang)
    pid = started(task)
    with pytest.raises(isopool.TaskTimeoutError) as info:
        task.await_(0.3)
    assert isinstance(info.value, TimeoutError)
    assert info.value.task_id == task.id
    assert not pid_alive(pid)
    assert task.done()


def test_await_called_twice_raises_invalid_state_error():
    """await_ may be called once per task; the second call says so."""
    task = Task.async_(_tasks.echo, 1)
    assert task.await_(30) == 1
    with pytest.raises(InvalidStateError, match="already awaited"):
        task.await_(30)


def test_await_timeout_none_waits_for_the_result():
    """await_(timeout=None) waits as long as the task takes."""
    task = Task.async_(_tasks.sleep_then, 0.3, "late")
    assert task.await_(timeout=None) == "late"


def test_await_negative_timeout_raises_value_error():
    """A negative time-out is refused with a ValueError naming the parameter."""
    task = Task.async_(_tasks.echo, 1)
    with pytest.raises(ValueError, match="timeout"):
        task.await_(-1)
    assert task.yield_(30) == Reply("ok", 1)


def test_await_timeout_on_a_queued_task_stops_it_before_it_runs(one_worker):
    """await_ on a task still queued times out; the task never runs."""
    busy = one_worker.submit(_tasks.hang)
    started(busy)
    queued = one_worker.submit(_tasks.echo, 1)
    with pytest.raises(isopool.TaskTimeoutError):
        queued.await_(0.2)
    assert queued.done()
    assert queued.attempts == 0
    busy.kill()


def test_async_keyword_arguments_reach_the_function():
    """Task.async_ passes positional and keyword arguments to the function."""
    assert Task.async_(_tasks.identity_sum, 1, 2, c=3).await_(30) == 6


# -- yield_ ----------------------------------------------------------------------------------


def test_yield_running_task_returns_none_and_leaves_it_running():
    """yield_ on a task still running returns None; the process keeps running."""
    task = Task.async_(_tasks.hang)
    pid = started(task)
    assert task.yield_(0.1) is None
    assert pid_alive(pid)
    assert not task.done()
    task.shutdown("brutal_kill")
    assert not pid_alive(pid)


def test_yield_finished_task_returns_ok_reply():
    """yield_ returns Reply('ok', value) once the task returned."""
    task = Task.async_(_tasks.sleep_then, 0.3, "v")
    assert task.yield_(0.0) is None
    reply = task.yield_(30)
    assert reply == Reply("ok", "v")
    assert reply.ok
    assert reply.reason is None


def test_yield_then_await_returns_the_result():
    """After a yield_ that timed out, await_ still gets the result."""
    task = Task.async_(_tasks.sleep_then, 0.3, "v")
    assert task.yield_(0.0) is None
    assert task.await_(30) == "v"


def test_yield_failed_task_returns_exit_reply_with_the_exception():
    """yield_ on a task that raised returns Reply('exit', exc) instead of raising."""
    task = Task.async_(_tasks.raise_value_error, "bad")
    reply = task.yield_(30)
    assert reply is not None
    assert reply.status == "exit"
    assert isinstance(reply.value, ValueError)
    assert str(reply.value) == "bad"
    assert not reply.ok
    assert reply.reason is reply.value


def test_yield_can_be_called_again_after_a_reply():
    """yield_ may be called repeatedly; a finished task gives the same Reply."""
    task = Task.async_(_tasks.echo, 7)
    assert task.yield_(30) == Reply("ok", 7)
    assert task.yield_(30) == Reply("ok", 7)


# -- shutdown --------------------------------------------------------------------------------


def test_shutdown_polite_gives_a_sigterm_trapping_task_its_grace(tmp_path):
    """shutdown(5.0) sends SIGTERM first: the task's handler writes its marker."""
    marker, ready = tmp_path / "marker", tmp_path / "ready"
    task = Task.async_(_tasks.trap_sigterm_ready_then_hang, str(marker), str(ready))
    assert wait_for(ready.exists)
    pid = started(task)
    assert task.shutdown(5.0) is None
    assert marker.read_text() == "cleaned up"
    assert not pid_alive(pid)


def test_shutdown_brutal_kill_skips_the_sigterm_handler(tmp_path):
    """shutdown('brutal_kill') sends SIGKILL at once: the marker is never written."""
    marker, ready = tmp_path / "marker", tmp_path / "ready"
    task = Task.async_(_tasks.trap_sigterm_ready_then_hang, str(marker), str(ready))
    assert wait_for(ready.exists)
    pid = started(task)
    assert task.shutdown("brutal_kill") is None
    assert not pid_alive(pid)
    assert not marker.exists()
    assert task.cancelled()


def test_shutdown_finished_task_returns_its_reply():
    """shutdown on a task that already finished returns its Reply."""
    task = Task.async_(_tasks.echo, "done")
    assert task.yield_(30) == Reply("ok", "done")
    assert task.shutdown() == Reply("ok", "done")


def test_shutdown_failed_task_returns_exit_reply():
    """shutdown on a task that already failed returns Reply('exit', exc)."""
    task = Task.async_(_tasks.raise_value_error)
    task.yield_(30)
    reply = task.shutdown("brutal_kill")
    assert reply is not None
    assert reply.status == "exit"
    assert isinstance(reply.value, ValueError)


def test_shutdown_queued_task_returns_none_and_it_never_runs(one_worker):
    """shutdown on a task still queued cancels it: None, and it never runs."""
    busy = one_worker.submit(_tasks.hang)
    pid = started(busy)
    queued = one_worker.submit(_tasks.echo, 1)
    assert queued.shutdown() is None
    assert queued.cancelled()
    assert queued.attempts == 0
    assert pid_alive(pid)  # the running task is left alone
    busy.kill()


def test_shutdown_bad_timeout_raises_value_error():
    """shutdown refuses a time-out that is neither seconds nor 'brutal_kill'."""
    task = Task.async_(_tasks.echo, 1)
    with pytest.raises(ValueError, match="brutal_kill"):
        task.shutdown("gently")
    assert task.await_(30) == 1


# -- ignore, completed -----------------------------------------------------------------------


def test_ignore_running_task_returns_none_and_it_cannot_be_awaited(tmp_path):
    """ignore() gives up on a running task: None, it keeps running, await_ refuses."""
    path = tmp_path / "done"
    task = Task.async_(_tasks.write_after, str(path), 0.3)
    started(task)
    assert task.ignore() is None
    with pytest.raises(InvalidStateError):
        task.await_(30)
    assert wait_for(path.exists)  # it ran to its end


def test_ignore_finished_task_returns_its_reply():
    """ignore() on a finished task returns its Reply."""
    task = Task.async_(_tasks.echo, 3)
    task.yield_(30)
    assert task.ignore() == Reply("ok", 3)


def test_completed_returns_a_finished_task_without_a_process():
    """Task.completed(v) is already done with v; await_, yield_ and shutdown agree."""
    task = Task.completed(42)
    assert isinstance(task, Task)
    assert task.done()
    assert task.pid is None
    assert task.yield_(0) == Reply("ok", 42)
    assert task.shutdown() == Reply("ok", 42)
    assert task.await_(0) == 42


def test_reply_matches_like_elixir_tuples():
    """A Reply matches as Elixir's {:ok, v} / {:exit, reason} do."""

    def describe(reply: Reply | None) -> str:
        match reply:
            case Reply("ok", value):
                return f"ok {value}"
            case Reply("exit", reason):
                return f"exit {reason}"
            case None:
                return "running"
        return "unreachable"

    assert describe(Task.async_(_tasks.echo, 1).yield_(30)) == "ok 1"
    assert describe(Task.async_(_tasks.raise_value_error, "r").yield_(30)) == "exit r"
    assert describe(None) == "running"


def test_task_constructor_is_not_public():
    """Task() raises TypeError: tasks come from async_, submit or a supervisor."""
    with pytest.raises(TypeError, match="no public constructor"):
        Task()


# -- start and start_link --------------------------------------------------------------------


def test_start_failure_is_logged_at_error(caplog):
    """Task.start's failure is logged at ERROR, with its traceback."""
    caplog.set_level(logging.ERROR, logger="isopool")
    task = Task.start(_tasks.raise_value_error, "fire and forget")
    assert task.yield_(30) is not None
    assert wait_for(lambda: any("failed" in r.getMessage() for r in caplog.records))
    record = next(r for r in caplog.records if "failed" in r.getMessage())
    assert record.levelname == "ERROR"
    message = record.getMessage()
    assert f"task {task.id}" in message
    # The worker's traceback text, not exc_info: formatting one in a thread is unsafe
    # on Python 3.11 (CPython gh-106905).
    assert "ValueError: fire and forget" in message
    assert "raise ValueError(message)" in message


def test_start_success_logs_nothing(caplog):
    """A Task.start that returns logs no error."""
    caplog.set_level(logging.ERROR, logger="isopool")
    task = Task.start(_tasks.echo, 1)
    assert task.yield_(30) == Reply("ok", 1)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_start_link_failure_outside_a_group_is_logged_at_error(caplog):
    """Task.start_link's failure outside a group is logged at ERROR, never lost."""
    caplog.set_level(logging.ERROR, logger="isopool")
    task = Task.start_link(_tasks.raise_value_error, "linked")
    assert task.yield_(30) is not None
    assert wait_for(lambda: any(r.levelno == logging.ERROR for r in caplog.records))


def test_start_mfa_string_runs_the_named_function(tmp_path):
    """Task.start accepts 'pkg.mod:fun' as Task.async_ does."""
    path = tmp_path / "done"
    task = Task.start("tests._tasks:write_after", str(path), 0.0)
    assert task.yield_(30) == Reply("ok", None)
    assert path.read_text() == "done"


def test_async_unawaited_linked_failure_is_logged_when_collected(caplog):
    """A linked task's failure nobody looked at is logged at ERROR, never silently lost."""
    caplog.set_level(logging.ERROR, logger="isopool")
    task = Task.async_(_tasks.raise_value_error, "never awaited")
    assert wait_for(task.done)
    task_id = task.id
    ref = weakref.ref(task)
    del task
    assert wait_for(lambda: (gc.collect(), ref() is None)[1])
    messages = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert any(f"linked task {task_id}" in m and "nobody awaited" in m for m in messages)


def test_async_retrieved_failure_is_not_logged_when_collected(caplog):
    """A failure someone looked at (yield_) is not reported again on collection."""
    caplog.set_level(logging.ERROR, logger="isopool")
    task = Task.async_(_tasks.raise_value_error)
    assert task.yield_(30) is not None
    ref = weakref.ref(task)
    del task
    assert wait_for(lambda: (gc.collect(), ref() is None)[1])
    assert not [r for r in caplog.records if "nobody awaited" in r.getMessage()]


def test_start_link_failure_in_a_program_is_logged():
    """A program whose start_link task fails reports it on stderr (logged at ERROR)."""
    result = run_script(
        """
        from concurrent.futures import wait
        from isopool import Task
        from tests import _tasks
        task = Task.start_link(_tasks.raise_value_error, "reported")
        wait([task], timeout=30)
        """
    )
    assert result.returncode == 0, result.stderr
    assert "raise_value_error) failed" in result.stderr
    assert "ValueError: reported" in result.stderr


def test_start_waits_for_the_task_at_program_exit(tmp_path):
    """A program that calls Task.start and exits waits for the task to finish."""
    path = tmp_path / "written"
    result = run_script(
        f"""
        from isopool import Task
        from tests import _tasks
        Task.start(_tasks.write_after, {str(path)!r}, 0.5)
        """
    )
    assert result.returncode == 0, result.stderr
    assert path.read_text() == "done"


def test_start_link_outside_a_group_is_stopped_at_program_exit(tmp_path):
    """A program that start_links a hanging task exits promptly; the task is gone."""
    path = tmp_path / "pid"
    start = time.monotonic()
    result = run_script(
        f"""
        import pathlib, time
        from isopool import Task
        from tests import _tasks
        path = pathlib.Path({str(path)!r})
        Task.start_link(_tasks.write_then_hang, str(path))
        deadline = time.monotonic() + 30
        while not path.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        print("started", flush=True)
        """
    )
    assert result.returncode == 0, result.stderr
    assert "started" in result.stdout
    assert time.monotonic() - start < 30  # the task hangs for an hour: not waited for
    pid = int(path.read_text())
    assert wait_for(lambda: not pid_alive(pid), timeout=10)


def test_async_outside_a_group_is_stopped_at_program_exit(tmp_path):
    """Task.async_ links to the program too: a never-awaited hanging task is stopped at exit."""
    path = tmp_path / "pid"
    result = run_script(
        f"""
        import pathlib, time
        from isopool import Task
        from tests import _tasks
        path = pathlib.Path({str(path)!r})
        task = Task.async_(_tasks.write_then_hang, str(path))
        deadline = time.monotonic() + 30
        while not path.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        """
    )
    assert result.returncode == 0, result.stderr
    pid = int(path.read_text())
    assert wait_for(lambda: not pid_alive(pid), timeout=10)


# -- await_many ------------------------------------------------------------------------------


def test_await_many_returns_all_results_in_order():
    """await_many returns every result in the tasks' order, not completion order."""
    tasks = [
        Task.async_(_tasks.sleep_then, 0.3, "slow"),
        Task.async_(_tasks.echo, "fast"),
    ]
    assert Task.await_many(tasks, 30) == ["slow", "fast"]


def test_await_many_failure_raises_it_and_stops_the_rest():
    """One failure is raised; the other (hanging) tasks are stopped, pids gone."""
    hanging = Task.async_(_tasks.hang)  # the default pool has two workers here, or more
    pid = started(hanging)
    failing = Task.async_(_tasks.raise_value_error, "first failure")
    with pytest.raises(ValueError, match="first failure"):
        Task.await_many([hanging, failing], 30)
    assert hanging.done()
    assert wait_for(lambda: not pid_alive(pid), timeout=10)


def test_await_many_timeout_raises_task_timeout_error_and_stops_late_tasks():
    """Past the time-out await_many raises TaskTimeoutError; the late tasks are stopped."""
    late = Task.async_(_tasks.hang)
    pid = started(late)
    quick = Task.async_(_tasks.echo, 1)
    with pytest.raises(isopool.TaskTimeoutError):
        Task.await_many([quick, late], 0.3)
    assert late.done()
    assert wait_for(lambda: not pid_alive(pid), timeout=10)


def test_await_many_killed_task_stops_the_rest():
    """A task killed before await_many is a failure: the others are stopped too."""
    killed, hanging = Task.async_(_tasks.hang), Task.async_(_tasks.hang)
    started(killed)
    pid = started(hanging)
    killed.kill()
    with pytest.raises(CancelledError):
        Task.await_many([killed, hanging], 1.0)
    assert hanging.done()
    assert not pid_alive(pid)


def test_await_many_timeout_logs_no_unawaited_failure_later(caplog):
    """The time-out await_many raised is not reported again as an unawaited failure."""
    caplog.set_level(logging.ERROR, logger="isopool")
    late = Task.async_(_tasks.hang)
    started(late)
    with pytest.raises(isopool.TaskTimeoutError):
        Task.await_many([late], 0.3)
    ref = weakref.ref(late)
    del late
    assert wait_for(lambda: (gc.collect(), ref() is None)[1])
    assert not [r.getMessage() for r in caplog.records if "nobody awaited" in r.getMessage()]


def test_await_many_already_awaited_task_raises_invalid_state_error():
    """await_many refuses a task that was already awaited."""
    task = Task.async_(_tasks.echo, 1)
    task.await_(30)
    with pytest.raises(InvalidStateError):
        Task.await_many([task], 30)


# -- yield_many ------------------------------------------------------------------------------


def test_yield_many_all_finished_returns_replies_in_order():
    """yield_many returns a Reply per task, in the tasks' order."""
    tasks = [Task.async_(_tasks.echo, 1), Task.async_(_tasks.raise_value_error, "x")]
    replies = Task.yield_many(tasks, 30)
    assert replies[0] == Reply("ok", 1)
    assert replies[1] is not None
    assert replies[1].status == "exit"
    assert isinstance(replies[1].value, ValueError)


def test_yield_many_on_timeout_nothing_leaves_late_tasks_running():
    """on_timeout='nothing': a late task gets None and keeps running."""
    quick, late = Task.async_(_tasks.echo, 1), Task.async_(_tasks.hang)
    pid = started(late)
    replies = Task.yield_many([quick, late], 0.3, on_timeout="nothing")
    assert replies == [Reply("ok", 1), None]
    assert pid_alive(pid)
    assert not late.done()
    assert late.yield_(0) is None  # still linked and awaitable
    late.shutdown("brutal_kill")
    assert not pid_alive(pid)


def test_yield_many_on_timeout_ignore_leaves_late_tasks_running_unlinked():
    """on_timeout='ignore': a late task gets None, keeps running, and is no longer awaitable."""
    quick, late = Task.async_(_tasks.echo, 1), Task.async_(_tasks.hang)
    pid = started(late)
    replies = Task.yield_many([quick, late], 0.3, on_timeout="ignore")
    assert replies == [Reply("ok", 1), None]
    assert pid_alive(pid)
    with pytest.raises(InvalidStateError):
        late.await_(0)
    late.kill()
    assert not pid_alive(pid)


def test_yield_many_on_timeout_kill_task_stops_late_tasks():
    """on_timeout='kill_task': a late task gets None and its process is gone."""
    quick, late = Task.async_(_tasks.echo, 1), Task.async_(_tasks.hang)
    pid = started(late)
    replies = Task.yield_many([quick, late], 0.3, on_timeout="kill_task")
    assert replies == [Reply("ok", 1), None]
    assert late.done()
    assert wait_for(lambda: not pid_alive(pid), timeout=10)


def test_yield_many_limit_returns_once_that_many_finished():
    """limit=n returns as soon as n tasks finished; the rest get None."""
    quick, late = Task.async_(_tasks.echo, 1), Task.async_(_tasks.hang)
    started(late)
    begin = time.monotonic()
    replies = Task.yield_many([late, quick], 60, limit=1, on_timeout="kill_task")
    assert time.monotonic() - begin < 30  # did not wait for the 60 s time-out
    assert replies == [None, Reply("ok", 1)]


@pytest.mark.parametrize(
    ("option", "value"),
    [("on_timeout", "explode"), ("limit", 0)],
    ids=["bad-on-timeout", "zero-limit"],
)
def test_yield_many_bad_option_raises_value_error(option, value):
    """yield_many names a bad on_timeout or limit in a ValueError."""
    task = Task.async_(_tasks.echo, 1)
    with pytest.raises(ValueError, match=option):
        Task.yield_many([task], 30, **{option: value})
    assert task.await_(30) == 1


# -- async_stream ----------------------------------------------------------------------------


def test_async_stream_ordered_yields_in_input_order():
    """ordered=True yields in input order even when later items finish first."""
    items = [(0.6, "a"), (0.0, "b"), (0.0, "c")]
    replies = list(Task.async_stream(_tasks.sleep_item, items, max_concurrency=3, timeout=30))
    assert replies == [Reply("ok", "a"), Reply("ok", "b"), Reply("ok", "c")]


def test_async_stream_unordered_yields_as_tasks_finish():
    """ordered=False yields each reply as its task finishes."""
    items = [(0.8, "slow"), (0.0, "fast")]
    stream = Task.async_stream(
        _tasks.sleep_item, items, max_concurrency=2, ordered=False, timeout=30
    )
    assert [r.value for r in stream] == ["fast", "slow"]


def test_async_stream_never_runs_more_than_max_concurrency(tmp_path):
    """At most max_concurrency tasks run at once: their recorded spans never overlap more."""
    fn = functools.partial(_tasks.record_span, str(tmp_path), seconds=0.15)
    replies = list(Task.async_stream(fn, range(6), max_concurrency=1, timeout=30))
    assert [r.value for r in replies] == list(range(6))
    spans = sorted(tuple(map(float, (tmp_path / str(i)).read_text().split()[1:])) for i in range(6))
    events = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans])
    running = peak = 0
    for _, delta in events:
        running += delta
        peak = max(peak, running)
    assert peak <= 1


def test_async_stream_kill_task_yields_timeout_and_goes_on():
    """on_timeout='kill_task': a timed-out item yields Reply('exit', 'timeout'); others go on."""
    stream = Task.async_stream(
        _tasks.hang_if, ["a", "hang", "b"], timeout=0.5, on_timeout="kill_task"
    )
    assert list(stream) == [Reply("ok", "a"), Reply("exit", "timeout"), Reply("ok", "b")]


def test_async_stream_kill_task_zip_input_on_exit_pairs_the_input():
    """With zip_input_on_exit the exit reason is (input, 'timeout')."""
    stream = Task.async_stream(
        _tasks.hang_if,
        ["a", "hang"],
        timeout=0.5,
        on_timeout="kill_task",
        zip_input_on_exit=True,
    )
    assert list(stream) == [Reply("ok", "a"), Reply("exit", ("hang", "timeout"))]


def test_async_stream_timeout_exit_raises_task_timeout_error():
    """on_timeout='exit' (the default): a timed-out item raises TaskTimeoutError."""
    stream = Task.async_stream(_tasks.hang_if, ["a", "hang", "b"], timeout=0.5)
    assert next(stream) == Reply("ok", "a")
    with pytest.raises(isopool.TaskTimeoutError):
        list(stream)


def test_async_stream_raising_item_raises_from_the_stream():
    """A linked stream raises an item's exception (with its own type)."""
    stream = Task.async_stream(_tasks.raise_if, ["ok", "bad", "fine"], max_concurrency=1)
    assert next(stream) == Reply("ok", "ok")
    with pytest.raises(ValueError, match="bad item"):
        list(stream)


def test_async_stream_unordered_raising_item_stops_the_tasks_in_flight(tmp_path):
    """ordered=False: an item that raises is raised at once; the task in flight is stopped."""
    path = tmp_path / "pid"

    def items():
        yield ("hang", str(path))
        assert wait_for(path.exists)
        yield ("raise", "bad item")

    stream = Task.async_stream(
        _tasks.stream_item, items(), max_concurrency=2, ordered=False, timeout=60
    )
    with pytest.raises(ValueError, match="bad item"):
        list(stream)
    pid = int(path.read_text())
    assert wait_for(lambda: not pid_alive(pid), timeout=10)


def test_async_stream_ordered_raising_item_is_raised_without_waiting_for_earlier_items(
    tmp_path,
):
    """ordered=True: a raising item is raised at once, as a linked task's exit is in Elixir.

    Before the fix in ab8fc47 the failure waited behind the hanging first item.
    """
    path = tmp_path / "pid"

    def items():
        yield ("hang", str(path))
        assert wait_for(path.exists)
        yield ("raise", "bad item")

    stream = Task.async_stream(_tasks.stream_item, items(), max_concurrency=2, timeout=60)
    with pytest.raises(ValueError, match="bad item"):
        list(stream)
    pid = int(path.read_text())
    assert wait_for(lambda: not pid_alive(pid), timeout=10)


def test_async_stream_endless_iterator_consumed_partially_leaves_nothing_running(tmp_path):
    """islice over a stream of an endless iterator works; closing it stops its tasks."""
    fn = functools.partial(_tasks.echo_or_hang, str(tmp_path), 5)
    stream = Task.async_stream(fn, itertools.count(), max_concurrency=2, timeout=60)
    assert list(itertools.islice(stream, 5)) == [Reply("ok", i) for i in range(5)]
    assert wait_for(lambda: (tmp_path / "5").exists())  # item 5 is in flight, hanging
    stream.close()  # type: ignore[attr-defined]  # a generator
    pids = [int(p.read_text()) for p in tmp_path.iterdir() if p.name.isdigit()]
    assert wait_for(lambda: not any(pid_alive(pid) for pid in pids), timeout=10)


@pytest.mark.parametrize(
    ("option", "value"),
    [("on_timeout", "nothing"), ("max_concurrency", 0), ("timeout", -1)],
    ids=["bad-on-timeout", "zero-max-concurrency", "negative-timeout"],
)
def test_async_stream_bad_option_raises_value_error(option, value):
    """async_stream names a bad option in a ValueError before starting anything."""
    with pytest.raises(ValueError, match=option):
        Task.async_stream(_tasks.echo, [1], **{option: value})


def test_async_stream_progress_without_a_terminal_still_yields_every_reply():
    """progress=True when stderr is not a terminal shows no bar and changes nothing."""
    replies = list(Task.async_stream(_tasks.echo, [1, 2, 3], progress=True, timeout=30))
    assert replies == [Reply("ok", 1), Reply("ok", 2), Reply("ok", 3)]


def test_async_stream_mfa_string_runs_the_named_function():
    """async_stream accepts 'pkg.mod:fun'."""
    assert [r.value for r in Task.async_stream("tests._tasks:echo", "ab", timeout=30)] == [
        "a",
        "b",
    ]


# -- asyncio ---------------------------------------------------------------------------------


def test_await_in_asyncio_returns_the_result():
    """`await task` inside asyncio.run returns the task's result."""

    async def main():
        return await Task.async_(_tasks.sleep_then, 0.1, "async")

    assert asyncio.run(asyncio.wait_for(main(), 30)) == "async"


def test_await_in_asyncio_raises_the_task_exception():
    """`await task` raises the task's exception with its own type."""

    async def main():
        return await Task.async_(_tasks.raise_value_error, "in asyncio")

    with pytest.raises(ValueError, match="in asyncio"):
        asyncio.run(asyncio.wait_for(main(), 30))


def test_await_in_asyncio_completed_task_returns_its_value():
    """`await Task.completed(v)` returns v at once."""

    async def main():
        return await Task.completed("ready")

    assert asyncio.run(asyncio.wait_for(main(), 30)) == "ready"


def test_await_in_asyncio_cancelled_stops_the_process():
    """Cancelling the coroutine awaiting a task stops the task's process."""
    task = Task.async_(_tasks.hang)
    pid = started(task)

    async def main():
        awaiting_started = asyncio.Event()

        async def waiter():
            awaiting_started.set()
            await task

        awaiting = asyncio.create_task(waiter())
        await asyncio.wait_for(awaiting_started.wait(), 30)
        awaiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(awaiting, 30)

    asyncio.run(main())
    assert wait_for(lambda: not pid_alive(pid), timeout=10)
    assert wait_for(task.done)
    assert task.cancelled()


def test_await_in_asyncio_wait_for_timeout_stops_the_process():
    """asyncio.wait_for's time-out on `await task` cancels it, which stops the process."""
    task = Task.async_(_tasks.hang)
    pid = started(task)

    async def main():
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(task, 0.2)

    asyncio.run(main())
    assert wait_for(lambda: not pid_alive(pid), timeout=10)

"""TaskGroup: linked tasks in a scope, both ways, with real processes.

A linked task that exits abnormally stops the group's other tasks and the ``with``
raises an ExceptionGroup; a block that raises stops the group's tasks; no task outlives
its group. ``Task.async_``/``Task.start_link`` called in the block join the group.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import isopool
from isopool import Reply, Task, TaskGroup
from tests import _tasks
from tests.conftest import pid_alive, started, wait_for

ROOT = Path(__file__).resolve().parent.parent


pytestmark = pytest.mark.usefixtures("fresh_default_pool")


def in_group(body: Callable[[TaskGroup], object], **kwargs: Any) -> None:
    """Run ``body(g)`` inside ``with TaskGroup(**kwargs) as g``."""
    with TaskGroup(**kwargs) as g:
        body(g)


# -- a task's failure stops the group --------------------------------------------------------


def test_group_linked_task_failure_stops_the_others_and_raises_exception_group(pool):
    """A failing linked task stops its siblings; the with raises an ExceptionGroup of it."""
    hanging: list[Task] = []

    def body(g: TaskGroup) -> None:
        hanging.append(g.start_link(_tasks.hang))
        started(hanging[0])
        g.async_(_tasks.raise_value_error, "linked failure")

    with pytest.raises(ExceptionGroup) as info:
        in_group(body, pool=pool)
    (task,) = hanging
    pid = task.pid
    assert len(info.value.exceptions) == 1
    error = info.value.exceptions[0]
    assert isinstance(error, ValueError)
    assert str(error) == "linked failure"
    assert task.cancelled()
    assert not pid_alive(pid)


def test_group_linked_task_failure_matches_except_star(pool):
    """The group's failure can be caught with except* by its own type."""
    caught = []
    try:
        with TaskGroup(pool=pool) as g:
            g.async_(_tasks.raise_value_error, "star")
    except* ValueError as group:
        caught.extend(group.exceptions)
    assert [str(e) for e in caught] == ["star"]


def test_group_crashed_task_is_a_failure(pool):
    """A task whose worker dies (segfault) fails the group with TaskCrashError."""
    with pytest.raises(ExceptionGroup) as info, TaskGroup(pool=pool) as g:
        g.async_(_tasks.segfault)
    assert isinstance(info.value.exceptions[0], isopool.TaskCrashError)


def test_group_timed_out_task_is_a_failure():
    """A task that times out fails the group with TaskTimeoutError."""
    with isopool.Pool(1, timeout=0.3) as short:
        with pytest.raises(ExceptionGroup) as info, TaskGroup(pool=short) as g:
            g.async_(_tasks.hang)
        assert isinstance(info.value.exceptions[0], isopool.TaskTimeoutError)


def test_group_shutdown_raised_in_a_task_is_not_a_failure(pool):
    """A task raising isopool.Shutdown exits normally: the group does not fail or stop."""
    with TaskGroup(pool=pool) as g:
        quits = g.async_(_tasks.raise_shutdown)
        other = g.async_(_tasks.sleep_then, 0.3, "finished")
    assert isinstance(quits.exception(0), isopool.Shutdown)
    assert other.result(0) == "finished"


# -- the block's own exit ----------------------------------------------------------------------


def test_group_exit_waits_for_every_task(pool):
    """Leaving the block normally waits until every task has finished."""
    with TaskGroup(pool=pool) as g:
        slow = g.async_(_tasks.sleep_then, 0.3, "slow")
        fast = g.start_link(_tasks.echo, "fast")
    assert slow.done()
    assert fast.done()
    assert (slow.result(0), fast.result(0)) == ("slow", "fast")


def test_group_block_raising_stops_its_tasks_and_raises_exception_group(pool):
    """A block that raises stops its tasks (cancelled, pids gone); its error is grouped."""
    tasks: list[Task] = []

    def body(g: TaskGroup) -> None:
        tasks.extend(g.start_link(_tasks.hang) for _ in range(2))
        for task in tasks:
            started(task)
        raise LookupError("the block failed")

    with pytest.raises(ExceptionGroup) as info:
        in_group(body, pool=pool)
    pids = [t.pid for t in tasks]
    assert [type(e) for e in info.value.exceptions] == [LookupError]
    assert all(t.cancelled() for t in tasks)
    assert not any(pid_alive(p) for p in pids)


def test_group_keyboard_interrupt_in_block_propagates_as_it_is(pool):
    """KeyboardInterrupt in the block is raised as itself; the tasks are stopped."""
    tasks: list[Task] = []

    def body(g: TaskGroup) -> None:
        tasks.append(g.start_link(_tasks.hang))
        started(tasks[0])
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        in_group(body, pool=pool)
    (task,) = tasks
    assert task.cancelled()
    assert not pid_alive(task.pid)


def test_group_system_exit_in_block_propagates_as_it_is(pool):
    """SystemExit in the block is raised as itself, not wrapped in an ExceptionGroup."""
    tasks: list[Task] = []

    def body(g: TaskGroup) -> None:
        tasks.append(g.start_link(_tasks.hang))
        started(tasks[0])
        raise SystemExit(3)

    with pytest.raises(SystemExit):
        in_group(body, pool=pool)
    assert tasks[0].cancelled()


def test_group_ctrl_c_while_waiting_at_block_end_stops_its_tasks(tmp_path):
    """SIGINT while the with waits for its tasks: KeyboardInterrupt, and the tasks are gone."""
    path = tmp_path / "pid"
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(
                f"""
                import isopool
                from tests import _tasks
                try:
                    with isopool.TaskGroup() as g:
                        g.start_link(_tasks.write_then_hang, {str(path)!r})
                        print("waiting", flush=True)
                except KeyboardInterrupt:
                    print("interrupted", flush=True)
                """
            ),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "waiting"
        assert wait_for(lambda: path.exists() and path.read_text(), timeout=30)
        pid = int(path.read_text())
        child.send_signal(signal.SIGINT)
        out, err = child.communicate(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
            child.communicate(timeout=10)
    assert "interrupted" in out, err
    assert child.returncode == 0, err
    assert wait_for(lambda: not pid_alive(pid), timeout=10)


def test_group_await_timeout_in_block_is_reported_once(pool):
    """An await_ time-out escaping the block appears once in the ExceptionGroup."""

    def body(g: TaskGroup) -> None:
        g.async_(_tasks.hang).await_(0.3)

    with pytest.raises(ExceptionGroup) as info:
        in_group(body, pool=pool)
    errors = info.value.exceptions
    assert len(errors) == 1
    assert isinstance(errors[0], isopool.TaskTimeoutError)


def test_group_handled_await_timeout_does_not_fail_the_group(pool):
    """A TaskTimeoutError caught in the block is handled: siblings finish, no group error."""
    with TaskGroup(pool=pool) as g:
        slow = g.async_(_tasks.hang)
        sibling = g.async_(_tasks.sleep_then, 0.5, "sibling")
        with pytest.raises(isopool.TaskTimeoutError):
            slow.await_(0.2)
    assert sibling.result(0) == "sibling"


# -- what joins a group ------------------------------------------------------------------------


def test_group_task_async_inside_the_block_joins_the_group():
    """Task.async_ called inside the block is linked to the group: its failure fails it."""
    hanging: list[Task] = []

    def body(g: TaskGroup) -> None:
        hanging.append(g.start_link(_tasks.hang))
        started(hanging[0])
        Task.async_(_tasks.raise_value_error, "joined")

    with pytest.raises(ExceptionGroup) as info:
        in_group(body)
    assert [str(e) for e in info.value.exceptions] == ["joined"]
    assert hanging[0].cancelled()
    assert not pid_alive(hanging[0].pid)


def test_group_task_start_link_inside_the_block_joins_the_group():
    """Task.start_link inside the block is linked to the group: the exit waits for it."""
    with TaskGroup():
        task = Task.start_link(_tasks.sleep_then, 0.3, "linked")
    assert task.done()
    assert task.result(0) == "linked"


def test_group_task_start_inside_the_block_is_not_linked():
    """Task.start is never linked: its failure does not fail the group."""
    with TaskGroup() as g:
        unlinked = Task.start(_tasks.raise_value_error, "not linked")
        g.async_(_tasks.echo, 1)
        assert unlinked.yield_(30) is not None
    assert isinstance(unlinked.exception(0), ValueError)


def test_group_task_after_exit_is_linked_to_the_program_not_the_group():
    """After the block, Task.async_ no longer joins the (closed) group."""
    with TaskGroup():
        pass
    task = Task.async_(_tasks.echo, 5)
    assert task.await_(30) == 5


def test_group_nested_inner_failure_fails_the_inner_group_only(pool):
    """A failure in an inner group is raised by the inner with; the outer can handle it."""
    with TaskGroup(pool=pool) as outer:
        survivor = outer.async_(_tasks.sleep_then, 0.3, "outer")
        with pytest.raises(ExceptionGroup), TaskGroup(pool=pool) as inner:
            inner.async_(_tasks.raise_value_error, "inner")
    assert survivor.result(0) == "outer"


def test_group_ignored_task_leaves_the_group(pool, tmp_path):
    """task.ignore() unlinks a task: the group's exit no longer waits for it."""
    path = tmp_path / "pid"
    with TaskGroup(pool=pool) as g:
        task = g.async_(_tasks.write_then_hang, str(path))
        started(task)
        assert task.ignore() is None
    assert not task.done()
    assert task.yield_(0) is None
    task.kill()


def test_group_async_after_exit_raises_runtime_error(pool):
    """A closed group takes no new task: it raises RuntimeError (and stops what it got)."""
    with TaskGroup(pool=pool) as g:
        pass
    with pytest.raises(RuntimeError, match="closed"):
        g.async_(_tasks.hang)


def test_group_entered_twice_raises_runtime_error(pool):
    """A TaskGroup can be entered once."""
    g = TaskGroup(pool=pool)
    with g:
        pass
    with pytest.raises(RuntimeError, match="once"), g:
        pass


def test_group_result_of_each_task_is_a_reply_after_exit(pool):
    """After a normal exit every task has a Reply."""
    with TaskGroup(pool=pool) as g:
        tasks = [g.async_(_tasks.echo, i) for i in range(4)]
    assert [t.yield_(0) for t in tasks] == [Reply("ok", i) for i in range(4)]


def test_group_failure_is_reported_without_waiting_for_sleepers(pool):
    """A failure stops a long sleeper at once: the with does not wait for it to end."""

    def body(g: TaskGroup) -> None:
        g.start_link(_tasks.sleep_then, 600)
        g.async_(_tasks.raise_value_error)

    begin = time.monotonic()
    with pytest.raises(ExceptionGroup):
        in_group(body, pool=pool)
    assert time.monotonic() - begin < 60  # a 10x margin over the polite stop

"""Waiting on several tasks at once: Elixir's ``Task.await_many`` and ``Task.yield_many``."""

from __future__ import annotations

import time
from concurrent.futures import FIRST_COMPLETED, InvalidStateError, wait
from typing import Any, Final

from ._errors import TaskTimeoutError
from ._spec import ShutdownTimeout
from ._task import OnTimeout, Reply, Task

__all__ = ["await_many", "stop_tasks", "yield_many"]

_STOP_WAIT: Final = 10.0  # seconds beyond the longest grace for stopped processes to go
_ON_TIMEOUT: Final = ("nothing", "ignore", "kill_task")


def stop_tasks(
    tasks: list[Task[Any]],
    grace: ShutdownTimeout | None = None,
    error: BaseException | None = None,
) -> None:
    """Stop ``tasks`` and wait until they have settled, for a bounded time.

    Args:
        tasks: The tasks to stop.
        grace: The stop's grace for every task (default: each task's own
            ``shutdown`` option).
        error: Fail them with this instead of cancelling them.
    """
    longest = 0.0
    for task in tasks:
        seconds = grace if grace is not None else task.options.shutdown
        longest = max(longest, 0.0 if seconds == "brutal_kill" else seconds)
        task._owner.kill(task, False, grace, error)
    wait(tasks, timeout=longest + _STOP_WAIT)


def _stop(tasks: list[Task[Any]], error: BaseException | None = None) -> None:
    stop_tasks(tasks, "brutal_kill", error)


def _failed(task: Task[Any]) -> bool:
    return task.cancelled() or task.exception(0) is not None


def await_many(tasks: list[Task[Any]], timeout: float | None) -> list[Any]:
    """All results in order, or the first failure; see ``Task.await_many``."""
    for task in tasks:
        with task._condition:
            if task._awaited:
                raise InvalidStateError(f"task {task.id} ({task.name}) was already awaited")
            task._awaited = True
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        failed = next((t for t in tasks if t.done() and _failed(t)), None)
        if failed is not None:
            _stop([t for t in tasks if not t.done()])
            failed.result(0)  # raises its exception, or CancelledError if it was killed
        pending = [t for t in tasks if not t.done()]
        if not pending:
            break
        remaining = None if deadline is None else deadline - time.monotonic()
        if remaining is not None and remaining <= 0:
            error = TaskTimeoutError(
                f"{len(pending)} of {len(tasks)} tasks did not reply within {timeout} s; "
                "they were stopped",
                task_id=pending[0].id,
                task_name=pending[0].name,
                timeout=timeout,
            )
            _stop(pending, error)
            for task in pending:
                task._retrieved = True  # the caller gets this error: nothing is lost
            raise error
        # FIRST_COMPLETED, not FIRST_EXCEPTION: a killed (cancelled) task must wake us too.
        wait(pending, timeout=remaining, return_when=FIRST_COMPLETED)
    return [task.result(0) for task in tasks]


def yield_many(
    tasks: list[Task[Any]],
    timeout: float | None,
    limit: int | None,
    on_timeout: OnTimeout,
) -> list[Reply[Any] | None]:
    """A Reply or None per task, in order; see ``Task.yield_many``."""
    if on_timeout not in _ON_TIMEOUT:
        raise ValueError(
            f"on_timeout must be 'nothing', 'ignore' or 'kill_task', got {on_timeout!r}"
        )
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit must be a positive integer or None, got {limit!r}")
    deadline = None if timeout is None else time.monotonic() + timeout
    want = len(tasks) if limit is None else min(limit, len(tasks))
    while sum(t.done() for t in tasks) < want:
        remaining = None if deadline is None else deadline - time.monotonic()
        if remaining is not None and remaining <= 0:
            break
        wait([t for t in tasks if not t.done()], timeout=remaining, return_when=FIRST_COMPLETED)
    late = [t for t in tasks if not t.done()]
    if on_timeout == "kill_task":
        _stop(late)
    elif on_timeout == "ignore":
        for task in late:
            task.ignore()
    return [Reply.of(t) if t.done() and not (t in late and t.cancelled()) else None for t in tasks]

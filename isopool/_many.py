"""Waiting on several tasks at once: ``await_many``, ``yield_many`` and ``as_completed``.

Elixir's ``Task.await_many`` and ``Task.yield_many``, and the stdlib's ``as_completed``
with a progress bar.

Each takes ``progress=`` (see ``_progress``); off, it costs one ``is None`` test.
"""

from __future__ import annotations

import concurrent.futures
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, InvalidStateError, wait
from typing import Any, Final, TypeVar

from ._errors import TaskTimeoutError
from ._progress import Progress, ProgressArg, make_progress
from ._spec import ShutdownTimeout, check_wait
from ._task import OnTimeout, Reply, Task

__all__ = ["as_completed", "await_many", "stop_tasks", "yield_many"]

F = TypeVar("F", bound=Future[Any])

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


def _report(progress: Progress, tasks: list[Task[Any]], seen: list[bool]) -> None:
    """Count the tasks that finished since the last call."""
    for i, task in enumerate(tasks):
        if not seen[i] and task.done():
            seen[i] = True
            progress.finished(task)


def await_many(
    tasks: list[Task[Any]], timeout: float | None, progress: ProgressArg = False
) -> list[Any]:
    """All results in order, or the first failure; see ``Task.await_many``."""
    bar = make_progress(progress, len(tasks))
    try:
        return _await_many(tasks, timeout, bar)
    finally:
        if bar is not None:
            bar.close()


def _await_many(
    tasks: list[Task[Any]], timeout: float | None, progress: Progress | None
) -> list[Any]:
    seen = [False] * len(tasks)
    for task in tasks:
        with task._condition:
            if task._awaited:
                raise InvalidStateError(f"task {task.id} ({task.name}) was already awaited")
            task._awaited = True
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        if progress is not None:
            _report(progress, tasks, seen)
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
            if progress is not None:
                _report(progress, tasks, seen)
            for task in pending:
                task._retrieved = True  # the caller gets this error: nothing is lost
            raise error
        # FIRST_COMPLETED, not FIRST_EXCEPTION: a killed (cancelled) task must wake us too.
        wait(pending, timeout=remaining, return_when=FIRST_COMPLETED)
    if progress is not None:
        _report(progress, tasks, seen)
    return [task.result(0) for task in tasks]


def yield_many(
    tasks: list[Task[Any]],
    timeout: float | None,
    limit: int | None,
    on_timeout: OnTimeout,
    progress: ProgressArg = False,
) -> list[Reply[Any] | None]:
    """A Reply or None per task, in order; see ``Task.yield_many``."""
    if on_timeout not in _ON_TIMEOUT:
        raise ValueError(
            f"on_timeout must be 'nothing', 'ignore' or 'kill_task', got {on_timeout!r}"
        )
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit must be a positive integer or None, got {limit!r}")
    bar = make_progress(progress, len(tasks))
    try:
        late = _yield_many(tasks, timeout, limit, on_timeout, bar)
    finally:
        if bar is not None:
            bar.close()
    return [Reply.of(t) if t.done() and not (t in late and t.cancelled()) else None for t in tasks]


def _yield_many(
    tasks: list[Task[Any]],
    timeout: float | None,
    limit: int | None,
    on_timeout: OnTimeout,
    progress: Progress | None,
) -> list[Task[Any]]:
    """Wait as ``yield_many`` does; return the tasks still running at the end."""
    seen = [False] * len(tasks)
    deadline = None if timeout is None else time.monotonic() + timeout
    want = len(tasks) if limit is None else min(limit, len(tasks))
    while sum(t.done() for t in tasks) < want:
        if progress is not None:
            _report(progress, tasks, seen)
        remaining = None if deadline is None else deadline - time.monotonic()
        if remaining is not None and remaining <= 0:
            break
        wait([t for t in tasks if not t.done()], timeout=remaining, return_when=FIRST_COMPLETED)
    late = [t for t in tasks if not t.done()]
    if progress is not None:
        _report(progress, tasks, seen)  # what finished in time; a late one is a None
    if on_timeout == "kill_task":
        _stop(late)
    elif on_timeout == "ignore":
        for task in late:
            task.ignore()
    return late


def as_completed(
    fs: Iterable[F], timeout: float | None = None, *, progress: ProgressArg = False
) -> Iterator[F]:
    """Yield the futures as they complete: ``concurrent.futures.as_completed``, with a bar.

    Any futures work (isopool Tasks or not), duplicates are yielded once, and
    ``timeout`` counts from this call; ``next()`` raises ``TimeoutError`` when
    futures are still pending then, as in the stdlib.

    Args:
        fs: The futures to wait for.
        timeout: Seconds from this call; None waits for ever.
        progress: False (default, no cost), True (a tqdm bar when stderr is a
            terminal), ``"always"``, a tqdm instance, or a callable
            ``(done, total, counts)``; see the README.

    Raises:
        TimeoutError: from ``next()``, when futures are still pending at ``timeout``.
    """
    futures = set(fs)
    bar = make_progress(progress, len(futures))
    if bar is None:
        return concurrent.futures.as_completed(futures, timeout)  # type: ignore[return-value]  # typeshed loses F
    check_wait("timeout", timeout)
    return _as_completed(futures, timeout, bar)


def _as_completed(futures: set[F], timeout: float | None, bar: Progress) -> Iterator[F]:
    try:
        for future in concurrent.futures.as_completed(futures, timeout):
            bar.finished(future)
            yield future  # type: ignore[misc]  # typeshed loses F
    finally:
        bar.close()

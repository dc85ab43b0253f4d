"""Links between tasks and their owners: ``TaskGroup`` scopes, and the program.

Elixir links a task to the process that started it, both ways. Python has no
processes to link to, so isopool links a task to a *scope*:

- inside ``with TaskGroup() as g:`` (found through a context variable, so it also
  covers ``Task.async_`` calls made in the block) a linked task that exits
  abnormally stops the group's other tasks and the block raises an
  ``ExceptionGroup``, as ``asyncio.TaskGroup`` does; if the block raises, its tasks
  are stopped. No task outlives its group.
- outside any group the owner is the program: a linked task still running at
  interpreter exit is stopped (no waiting), and a failure nobody retrieves is logged
  at ERROR. Unlinked tasks (``Task.start``) are waited for at exit instead.
"""

from __future__ import annotations

import contextvars
import logging
import threading
from collections.abc import Callable
from concurrent.futures import FIRST_EXCEPTION, Future, wait
from types import TracebackType
from typing import Any, Final, Literal, ParamSpec, TypeVar, overload

from ._errors import Shutdown as ShutdownExit
from ._many import stop_tasks
from ._pool import Pool, at_exit, default_pool
from ._spec import TaskOptions
from ._stream import Submit
from ._task import Task, describe

__all__ = ["TaskGroup", "default_submitter", "link_task", "pool_submitter", "spawn"]

log = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")

_STOP_WAIT: Final = 10.0  # seconds to wait for stopped tasks' processes to be gone

_current_group: contextvars.ContextVar[TaskGroup | None] = contextvars.ContextVar(
    "isopool_task_group", default=None
)


def pool_submitter(pool: Pool) -> Submit:
    """Start tasks on ``pool``, with its options unless others are given."""

    def submit(
        fn: Callable[..., object] | str,
        args: tuple[object, ...],
        kwargs: dict[str, object],
        options: TaskOptions | None,
    ) -> Task[Any]:
        return pool._submit(fn, args, kwargs, options or pool._options)

    return submit


def default_submitter() -> Submit:
    """Start tasks on the default pool."""
    return pool_submitter(default_pool())


def spawn(
    fn: Callable[..., object] | str,
    args: tuple[object, ...],
    kwargs: dict[str, object],
    *,
    link: bool,
    log_failure: bool = False,
    submit: Submit | None = None,
    options: TaskOptions | None = None,
) -> Task[Any]:
    """Start a task (on the default pool unless ``submit`` says otherwise) and link it."""
    task = (submit or default_submitter())(fn, args, kwargs, options)
    if log_failure:
        task.add_done_callback(_log_failure)
    if link:
        link_task(task)
    return task


def ignore_task(task: Task[Any]) -> None:
    """``Task.ignore``: unlink ``task``; it still must not outlive the program."""
    if task._unlink is not None:
        task._unlink(task)
    _program.adopt_ignored(task)


def link_task(task: Task[Any]) -> None:
    """Link ``task`` to the current TaskGroup, or else to the program."""
    group = _current_group.get()
    if group is not None:
        group.adopt(task)
    else:
        _program.adopt(task)


def _log_failure(future: Future[Any]) -> None:
    task = future if isinstance(future, Task) else None
    if task is None or task.cancelled():
        return
    exc = task.exception(timeout=0)
    if exc is not None and not isinstance(exc, ShutdownExit):
        log.error("%stask %d (%s) failed: %s", _prefix(task), task.id, task.name, describe(exc))


def _prefix(task: Task[Any]) -> str:
    return f"{task._label}: " if task._label else ""


def _abnormal(task: Task[Any]) -> bool:
    if task.cancelled():
        return False
    exc = task.exception(timeout=0)
    if exc is not None and task._stop is not None and exc is task._stop.error and task._awaited:
        return False  # await_ timed out and stopped it: the caller already has the error
    return exc is not None and not isinstance(exc, ShutdownExit)


class _ProgramLinks:
    """The program as the owner of linked tasks started outside any TaskGroup."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tasks: set[Future[Any]] = set()
        self._hooked = False

    def adopt(self, task: Task[Any]) -> None:
        with self._lock:
            if not self._hooked:
                at_exit(self.stop_all)
                self._hooked = True
            self._tasks.add(task)
        task._unlink = self.release
        task._program_linked = True
        task.add_done_callback(self._done)

    def _done(self, task: Future[Any]) -> None:
        with self._lock:
            self._tasks.discard(task)

    def release(self, task: Task[Any]) -> None:
        task._program_linked = False
        self._done(task)

    def adopt_ignored(self, task: Task[Any]) -> None:
        """Keep an ignored task from delaying the exit: stop it then, log nothing."""
        with self._lock:
            if not self._hooked:
                at_exit(self.stop_all)
                self._hooked = True
            self._tasks.add(task)
        task._unlink = None
        task.add_done_callback(self._done)

    def stop_all(self) -> None:
        """At exit: stop every linked task still running, brutally, without waiting long."""
        with self._lock:
            tasks = [t for t in self._tasks if isinstance(t, Task)]
        stop_tasks(tasks, "brutal_kill")


_program = _ProgramLinks()


class TaskGroup:
    """A scope that owns linked tasks: none outlives it, a failure stops them all.

    As ``asyncio.TaskGroup``, but each task is an OS process::

        with isopool.TaskGroup() as g:
            a = g.async_(fetch, "a")
            g.start_link(warm_cache)
        print(a.result())  # every task has finished here

    Leaving the block waits for every task. If a task exits abnormally (raises,
    crashes, times out; raising ``isopool.Shutdown`` is normal), the group stops
    its other tasks and the block raises an ``ExceptionGroup`` of the failures. If
    the block raises, the tasks are stopped, and the error is raised in the
    ``ExceptionGroup`` too (KeyboardInterrupt and SystemExit propagate as they are).
    ``Task.async_`` and ``Task.start_link`` called inside the block also join it.

    Args:
        pool: Where ``g.async_`` and ``g.start_link`` run tasks (default: the
            default pool).
    """

    def __init__(self, *, pool: Pool | None = None) -> None:
        self._pool = pool
        self._lock = threading.Lock()
        self._tasks: list[Task[Any]] = []
        self._token: contextvars.Token[TaskGroup | None] | None = None
        self._aborting = False
        self._closed = False

    def __repr__(self) -> str:
        return f"<isopool.TaskGroup tasks={len(self._tasks)} aborting={self._aborting}>"

    @overload
    def async_(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Task[T]: ...

    @overload
    def async_(self, fn: str, /, *args: object, **kwargs: object) -> Task[Any]: ...

    def async_(self, fn: Any, /, *args: Any, **kwargs: Any) -> Task[Any]:
        """Start a task linked to this group and return it, to await later."""
        task = self._submitter()(fn, args, kwargs, None)
        self.adopt(task)
        return task

    def start_link(
        self, fn: Callable[..., object] | str, /, *args: object, **kwargs: object
    ) -> Task[Any]:
        """Start a fire-and-forget task linked to this group."""
        return self.async_(fn, *args, **kwargs)

    def adopt(self, task: Task[Any]) -> None:
        """Link an already started ``task`` to this group.

        Raises:
            RuntimeError: the group has closed; the task is stopped.
        """
        with self._lock:
            closed = self._closed
            if not closed:
                self._tasks.append(task)
                aborting = self._aborting
        if closed:
            task._owner.kill(task, False, "brutal_kill")
            raise RuntimeError("this TaskGroup has closed; it takes no new tasks")
        task._unlink = self._release
        task.add_done_callback(self._on_done)
        if aborting:
            task._owner.kill(task, False)

    def _submitter(self) -> Submit:
        return pool_submitter(self._pool) if self._pool is not None else default_submitter()

    def _release(self, task: Task[Any]) -> None:
        with self._lock:
            if task in self._tasks:
                self._tasks.remove(task)

    def _on_done(self, task: Future[Any]) -> None:
        if isinstance(task, Task) and _abnormal(task):
            self._abort()

    def _abort(self) -> None:
        with self._lock:
            if self._aborting:
                return
            self._aborting = True
            tasks = list(self._tasks)
        for task in tasks:
            task._owner.kill(task, False)

    def __enter__(self) -> TaskGroup:
        if self._token is not None or self._closed:
            raise RuntimeError("a TaskGroup can be entered once")
        self._token = _current_group.set(self)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> Literal[False]:
        if self._token is not None:
            _current_group.reset(self._token)
        if exc is not None:
            self._abort()
        try:
            self._wait_all()
        except BaseException:
            self._abort()
            self._close_and_wait(_STOP_WAIT)
            raise
        with self._lock:
            self._closed = True
            tasks = list(self._tasks)
        if exc is not None and not isinstance(exc, Exception):
            return False  # KeyboardInterrupt, SystemExit: propagate as they are
        errors: list[BaseException] = [
            error for t in tasks if _abnormal(t) and (error := t.exception(0)) is not None
        ]
        if exc is not None and not any(error is exc for error in errors):
            errors.insert(0, exc)
        if errors:
            raise BaseExceptionGroup("unhandled errors in a TaskGroup", errors)
        return False

    def _wait_all(self) -> None:
        """Wait until every task (including ones adopted meanwhile) has finished."""
        while True:
            with self._lock:
                pending = [t for t in self._tasks if not t.done()]
            if not pending:
                return
            wait(pending, return_when=FIRST_EXCEPTION)

    def _close_and_wait(self, timeout: float) -> None:
        with self._lock:
            self._closed = True
            tasks = list(self._tasks)
        wait(tasks, timeout=timeout)

"""The whole exception hierarchy of isopool, and nothing else.

::

    IsopoolError(Exception)
    ├── TaskError                 a task ended without a result; .task_id, .task_name
    │   ├── TaskCrashError        its worker died; .pid, .exitcode, .signal;
    │   │                         also concurrent.futures.process.BrokenProcessPool
    │   ├── TaskTimeoutError      also TimeoutError; the task was stopped, not left running
    │   ├── SerializationError    a call or result could not be (un)pickled; .side, .what;
    │   │                         also the stdlib's own error for that step (see below)
    │   └── RestartLimitError     max_restarts within max_seconds exceeded;
    │                             __cause__ is the last failure
    ├── PoolClosedError           also RuntimeError; used after *you* shut it down
    ├── BrokenPoolError           also BrokenProcessPool; isopool itself failed
    │                             (never raised because one task crashed)
    ├── ProtocolError             a malformed frame
    │   └── SignatureError        a payload whose signature is missing or wrong
    ├── MaxChildrenError          also RuntimeError; a TaskSupervisor is at max_children
    ├── NodeDownError             also ConnectionError; a remote node is gone
    ├── UnknownSupervisorError    also LookupError; no supervisor by that name (noproc)
    ├── JobNotFoundError          also LookupError; no job by that id in the queue
    └── QueueUnavailableError     also ConnectionError; the shared queue is unreachable

    Shutdown(IsopoolError)        not an error: a task raises it to exit *normally*
                                  (Elixir's :shutdown), so a transient task is not re-run

*Closed* versus *broken* (as in trio): a pool is closed because its owner called
``shutdown``; it is broken only when something outside the caller's control failed
(the fork server cannot start, a worker initializer fails). A task that crashes,
hangs or sends a bad payload fails that task alone and never breaks the pool.

Every exception here pickles with its attributes intact, so it can cross a process
boundary (a worker, a remote node) and still be caught by type.

**SerializationError is also what ProcessPoolExecutor raises there.** Code written for the
stdlib catches ``pickle.PicklingError``, ``TypeError`` ("cannot pickle '_thread.lock'
object"), ``AttributeError`` ... from a future, and ``BrokenProcessPool`` where the stdlib's
pool breaks (a call that fails to unpickle in the worker, a result that fails to unpickle in
the parent). ``serialization_error`` therefore builds the error from a class that subclasses
both ``SerializationError`` and the error that actually happened (and ``BrokenProcessPool``
for those two steps, although here only that task failed): one ``except`` clause of
either vocabulary catches it, and the message still says which side and which step failed.
A mixed class is made once per (error type, broken) pair and pickles by naming its parts.
Types that cannot be mixed in (a ``BaseException`` that is not an ``Exception`` such as
``SystemExit`` or ``KeyboardInterrupt``, a class whose constructor needs other arguments)
are left out; the original error is always the ``__cause__``.
"""

from __future__ import annotations

import threading
from concurrent.futures.process import BrokenProcessPool

__all__ = [
    "BrokenPoolError",
    "IsopoolError",
    "JobNotFoundError",
    "MaxChildrenError",
    "NodeDownError",
    "PoolClosedError",
    "ProtocolError",
    "QueueUnavailableError",
    "RestartLimitError",
    "SerializationError",
    "Shutdown",
    "SignatureError",
    "TaskCrashError",
    "TaskError",
    "TaskTimeoutError",
    "UnknownSupervisorError",
    "serialization_error",
]


class IsopoolError(Exception):
    """Base class of every error isopool raises itself."""


class TaskError(IsopoolError):
    """A task ended without a result.

    Attributes:
        task_id: The pool-unique id of the task, or None when not known.
        task_name: A readable name of the task's function ("resize_image").
    """

    def __init__(
        self, message: str, *, task_id: int | None = None, task_name: str | None = None
    ) -> None:
        super().__init__(message)
        self.task_id = task_id
        self.task_name = task_name

    def __reduce__(self) -> tuple[object, ...]:
        # Rebuild through __init__ with keywords so subclasses keep their attributes
        # across pickle (BaseException.__reduce__ would pass only self.args).
        return (_rebuild, (type(self), self.args, self.__dict__))


def _rebuild(
    cls: type[BaseException], args: tuple[object, ...], state: dict[str, object]
) -> BaseException:
    exc = cls.__new__(cls)
    exc.args = args
    exc.__dict__.update(state)
    return exc


class TaskCrashError(TaskError, BrokenProcessPool):
    """The worker process running the task died (segfault, os._exit, SIGKILL, OOM).

    Also a ``concurrent.futures.process.BrokenProcessPool``, so code written for
    ``ProcessPoolExecutor`` that catches a dead worker keeps working; unlike there,
    only this task failed and the pool keeps serving.

    Attributes:
        pid: The pid of the worker that died, or None when it never started.
        exitcode: Its exit code (negative: killed by that signal), or None if unknown.
        signal: The name of the signal that killed it ("SIGSEGV"), or None.
    """

    def __init__(
        self,
        message: str,
        *,
        task_id: int | None = None,
        task_name: str | None = None,
        pid: int | None = None,
        exitcode: int | None = None,
        signal: str | None = None,
    ) -> None:
        super().__init__(message, task_id=task_id, task_name=task_name)
        self.pid = pid
        self.exitcode = exitcode
        self.signal = signal


class TaskTimeoutError(TaskError, TimeoutError):
    """The task ran past its time-out and was stopped (its process group is gone).

    Attributes:
        timeout: The time-out that passed, in seconds.
        pid: The pid of the worker that was stopped.
    """

    def __init__(
        self,
        message: str,
        *,
        task_id: int | None = None,
        task_name: str | None = None,
        timeout: float | None = None,
        pid: int | None = None,
    ) -> None:
        super().__init__(message, task_id=task_id, task_name=task_name)
        self.timeout = timeout
        self.pid = pid


class SerializationError(TaskError):
    """A task's call, result or exception could not be pickled or unpickled.

    Attributes:
        side: Where it failed: "parent" or "worker".
        what: What failed: "call pickle", "call unpickle", "result pickle",
            "result unpickle", "exception pickle" or "exception unpickle".
        type_name: For an exception that could not cross, its qualified type name.
        remote_traceback: The worker's traceback text, when there was one.
    """

    def __init__(
        self,
        message: str,
        *,
        task_id: int | None = None,
        task_name: str | None = None,
        side: str | None = None,
        what: str | None = None,
        type_name: str | None = None,
        remote_traceback: str | None = None,
    ) -> None:
        super().__init__(message, task_id=task_id, task_name=task_name)
        self.side = side
        self.what = what
        self.type_name = type_name
        self.remote_traceback = remote_traceback

    _parts: tuple[type[BaseException] | None, bool] = (None, False)

    def __reduce__(self) -> tuple[object, ...]:
        # A mixed class is not importable by name: rebuild it from its parts.
        return (_rebuild_serialization, (self._parts, self.args, self.__dict__))


_mixed_lock = threading.Lock()
_mixed: dict[tuple[type[BaseException] | None, bool], type[SerializationError]] = {}


def serialization_error(
    message: str,
    *,
    cause_type: type[BaseException] | None,
    broken: bool = False,
    **attributes: object,
) -> SerializationError:
    """Build a SerializationError that is also an instance of ``cause_type``.

    Args:
        message: The error's text.
        cause_type: The type of the error that the (un)pickling raised; mixed in
            when it is an ``Exception`` whose constructor takes one message.
        broken: Also mix in ``BrokenProcessPool``, for the steps where the stdlib's
            pool breaks (call unpickle in the worker, result unpickle in the parent).
        **attributes: SerializationError's keyword arguments (task_id, side, ...).
    """
    cls = _mixed_class(cause_type, broken)
    return cls(message, **attributes)  # type: ignore[arg-type]  # SerializationError's keywords


def _mixed_class(cause_type: type[BaseException] | None, broken: bool) -> type[SerializationError]:
    if cause_type is not None and (
        not issubclass(cause_type, Exception) or issubclass(cause_type, SerializationError)
    ):
        cause_type = None
    key = (cause_type, broken)
    with _mixed_lock:
        cls = _mixed.get(key)
        if cls is None:
            cls = _mixed[key] = _make_mixed(cause_type, broken)
    return cls


def _make_mixed(cause_type: type[BaseException] | None, broken: bool) -> type[SerializationError]:
    bases: tuple[type, ...] = (SerializationError,)
    if broken:
        bases += (BrokenProcessPool,)
    if cause_type is not None:
        bases += (cause_type,)
    if len(bases) == 1:
        return SerializationError
    try:
        cls = type(
            "SerializationError", bases, {"__module__": "isopool", "_parts": (cause_type, broken)}
        )
        cls("probe")  # a constructor that wants other arguments cannot be mixed in
    except Exception:
        return _make_mixed(None, broken) if cause_type is not None else SerializationError
    return cls


def _rebuild_serialization(
    parts: tuple[type[BaseException] | None, bool],
    args: tuple[object, ...],
    state: dict[str, object],
) -> BaseException:
    return _rebuild(_mixed_class(*parts), args, state)


class RestartLimitError(TaskError):
    """More than ``max_restarts`` restarts happened within ``max_seconds``.

    ``__cause__`` is the last failure (the task's exception, a TaskCrashError, ...).

    Attributes:
        attempts: How many times the task ran.
    """

    def __init__(
        self,
        message: str,
        *,
        task_id: int | None = None,
        task_name: str | None = None,
        attempts: int = 0,
    ) -> None:
        super().__init__(message, task_id=task_id, task_name=task_name)
        self.attempts = attempts


class PoolClosedError(IsopoolError, RuntimeError):
    """The pool or supervisor was shut down by its owner and takes no new work.

    A ``RuntimeError``, as ``concurrent.futures`` raises after ``shutdown``.
    """


class BrokenPoolError(IsopoolError, BrokenProcessPool):
    """isopool itself failed (its fork server, a worker initializer): not one task.

    Also a ``concurrent.futures.process.BrokenProcessPool``.
    """


class MaxChildrenError(IsopoolError, RuntimeError):
    """A TaskSupervisor already runs ``max_children`` children (Elixir's ``:max_children``)."""


class Shutdown(IsopoolError):  # Elixir's word: a normal exit, so no Error suffix
    """Raise it in a task to exit normally, as Elixir's ``exit(:shutdown)``.

    A task that raises ``Shutdown`` (or a subclass; ``Shutdown("reason")`` is
    ``{:shutdown, reason}``) has exited normally: a transient child is not re-run.
    Awaiting it raises the ``Shutdown`` itself.
    """


class ProtocolError(IsopoolError):
    """A frame on a pipe or in a queue was malformed (bad header, version, length)."""


class SignatureError(ProtocolError):
    """A payload's signature is missing or wrong; it was never unpickled."""


class NodeDownError(IsopoolError, ConnectionError):
    """A remote node is not alive, or stopped answering while running a task."""


class UnknownSupervisorError(IsopoolError, LookupError):
    """A node runs no supervisor of that name (Elixir's ``:noproc``)."""


class JobNotFoundError(IsopoolError, LookupError):
    """No job by that id in the queue: never enqueued, or expired after its result_ttl.

    A queue whose Redis lost its data says so with ``QueueUnavailableError`` instead.
    """


class QueueUnavailableError(IsopoolError, ConnectionError):
    """The shared queue's backend (Redis) cannot be reached or lost its state."""

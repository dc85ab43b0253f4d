"""How one run of a task ended, and how that outcome settles the task's future.

The monitor decides *what* happened under its lock (cheaply: no unpickling). ``resolve``
then finishes each future without running any user code either: the future becomes
done at once (waiters wake, ``wait`` and ``as_completed`` see it), but its value is
unpickled only when someone asks for it (``result()``, ``exception()``, a done-callback),
in that caller's thread. So a result whose unpickling takes 5 s, sleeps or raises
``KeyboardInterrupt`` delays nobody else, and the monitor thread, which enforces every
time-out, never runs user code. Done-callbacks and crash logs (which run the user's
logging handlers) go to the pool's resolver thread through ``defer``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from . import _oob, _wire
from ._errors import (
    RestartLimitError,
    SerializationError,
    TaskCrashError,
    TaskTimeoutError,
    serialization_error,
)
from ._wire import Payload

if TYPE_CHECKING:
    from ._policy import Exit, RestartIntensity
    from ._process import ExitInfo
    from ._task import Task

__all__ = ["Defer", "Outcome", "resolve"]

Defer = Callable[[Callable[[], object]], None]
"""Runs a callable later on another thread (the pool's resolver)."""

log = logging.getLogger(__name__)

_STATS = {
    "ok": "completed",
    "shutdown": "completed",
    "raised": "failed",
    "bad_payload": "failed",
    "bad_call": "failed",
    "crashed": "crashed",
    "timed_out": "timed_out",
    "cancelled": "killed",
    "error": "failed",
    "restart_limit": "failed",
}


@dataclass(slots=True)
class Outcome:
    """One ended run of ``task``: ``kind`` says how, ``data`` carries the details."""

    kind: str
    task: Task[Any]
    data: Any = None

    # -- constructors --------------------------------------------------------

    @classmethod
    def ok(cls, task: Task[Any], payload: Payload | _oob.Received) -> Outcome:
        """The task returned; ``payload`` is its pickled value (its buffers perhaps shared)."""
        return cls("ok", task, payload)

    @classmethod
    def raised(cls, task: Task[Any], payload: Payload) -> Outcome:
        """The task raised; ``payload`` is the pickled (exception, traceback)."""
        return cls("raised", task, payload)

    @classmethod
    def bad_payload(cls, task: Task[Any], payload: Payload) -> Outcome:
        """The worker could not unpickle the call or pickle the result/exception."""
        return cls("bad_payload", task, payload)

    @classmethod
    def bad_call(cls, task: Task[Any], exc: BaseException) -> Outcome:
        """The parent could not pickle the call."""
        return cls("bad_call", task, exc)

    @classmethod
    def crashed(
        cls, task: Task[Any], pid: int | None, info: ExitInfo, wrote: str | None = None
    ) -> Outcome:
        """The worker died while running the task.

        ``wrote``: it was stopped for writing this into its result pipe.
        """
        return cls("crashed", task, (pid, info, wrote))

    @classmethod
    def timed_out(cls, task: Task[Any], pid: int | None) -> Outcome:
        """The task ran past its time-out and its worker was stopped."""
        return cls("timed_out", task, pid)

    @classmethod
    def cancelled(cls, task: Task[Any]) -> Outcome:
        """The task was cancelled or killed by its owner."""
        return cls("cancelled", task)

    @classmethod
    def stopped(cls, task: Task[Any]) -> Outcome:
        """The task was stopped by ``kill``: cancelled, or failed with the kill's error."""
        if task._kill_error is not None:
            return cls("error", task, task._kill_error)
        return cls("cancelled", task)

    @classmethod
    def shutdown(cls, task: Task[Any], payload: Payload) -> Outcome:
        """The task raised ``isopool.Shutdown``: a normal exit, as Elixir's ``:shutdown``."""
        return cls("shutdown", task, payload)

    @classmethod
    def error(cls, task: Task[Any], exc: BaseException) -> Outcome:
        """The task fails with ``exc`` as it is (BrokenPoolError...)."""
        return cls("error", task, exc)

    @classmethod
    def restart_limit(cls, task: Task[Any], last: Outcome) -> Outcome:
        """The task failed once more than its restart intensity allows."""
        return cls("restart_limit", task, last)

    # -- what the monitor asks ----------------------------------------------

    @property
    def exit(self) -> Exit:
        """``normal`` if the task returned, else ``abnormal`` (OTP's terms)."""
        return "normal" if self.kind in ("ok", "shutdown") else "abnormal"

    @property
    def stat(self) -> str:
        """The ``Pool.stats()`` counter this outcome adds to."""
        return _STATS[self.kind]

    def reason(self, task: Task[Any] | None = None) -> str:
        """A short phrase for logs: why this run ended (``task``: for a detached one)."""
        task = task if task is not None else self.task
        if self.kind == "crashed":
            pid, info, _wrote = self.data
            return f"crashed: worker {pid} {info.describe()}"
        if self.kind == "timed_out":
            return f"timed out after {task.options.timeout} s"
        if self.kind == "ok":
            return "returned"
        if self.kind == "shutdown":
            return "shut down"
        if self.kind == "raised":
            return "raised an exception"
        if self.kind in ("bad_payload", "bad_call"):
            return "failed to (un)pickle"
        return "failed"

    def restart_message(self, pool: str, task: Task[Any], delay: float) -> str:
        """The WARNING that ``task`` is re-run after this outcome.

        Logged elsewhere: a logging handler is user code, and this is decided under
        the monitor's lock.
        """
        opts = task.options
        if opts.max_retries is not None:
            budget = f"retry {task.attempts} of {opts.max_retries}, in {delay:.2f} s"
        else:
            intensity = task._intensity
            recent = intensity.recent if intensity is not None else 0
            budget = f"restart {recent} of {opts.max_restarts} within {opts.max_seconds} s"
        label = task._label or f"pool {pool!r}"
        return f"{label}: task {task.id} ({task.name}) {self.reason()}; restarting it ({budget})"

    @staticmethod
    def describe_init_failure(payload: Payload) -> str:
        """The message for a worker whose initializer raised (a JSON report)."""
        try:
            type_name, message, tb = json.loads(bytes(payload))
        except (ValueError, TypeError):
            return "worker initializer failed (its report was malformed)"
        return f"worker initializer raised {type_name}: {message}\n{tb}"

    # -- settling the future (outside the monitor's lock) -----------------------

    def detached(self) -> Outcome:
        """This outcome without its reference to the task, for the task to hold.

        A lazily settled task keeps its outcome until someone asks for the value; were
        the outcome to point back at the task, the pair would be a reference cycle and
        an unread 20 MB result would live until the cyclic collector ran.
        """
        data = self.data.detached() if self.kind == "restart_limit" else self.data
        return Outcome(self.kind, None, data)  # type: ignore[arg-type]  # only settle(task) reads it

    def settle(self, task: Task[Any]) -> tuple[object, BaseException | None]:
        """The task's (value, exception); may run user code (unpickling).

        Called once per outcome, by whoever first asks for the task's value.
        """
        if task._raw and self.kind in ("ok", "raised", "shutdown"):
            return (self.kind, self.data), None  # stays pickled: it goes back to Redis
        if self.kind == "ok":
            try:
                return _wire.loads(self.data), None
            except BaseException as exc:  # user code ran in __reduce__ or __setstate__
                return None, _parent_error(task, "result unpickle", exc, broken=True)
        return None, self.to_exception(task)

    def to_exception(self, task: Task[Any] | None = None) -> BaseException | None:
        """The exception this outcome fails the task with; None for a value."""
        task = task if task is not None else self.task
        kind = self.kind
        if kind in ("raised", "shutdown"):
            try:
                return _wire.loads_exception(self.data)
            except BaseException as exc:  # user code ran in __reduce__
                return _parent_error(task, "exception unpickle", exc, broken=True)
        if kind == "bad_payload":
            return _worker_error(task, self.data)
        if kind == "bad_call":
            return _parent_error(task, "call pickle", self.data, broken=False)
        if kind == "crashed":
            return _crash_error(task, *self.data)
        if kind == "timed_out":
            return TaskTimeoutError(
                f"task {task.id} ({task.name}) timed out after {task.options.timeout} s; "
                f"worker {self.data} was stopped",
                task_id=task.id,
                task_name=task.name,
                timeout=task.options.timeout,
                pid=self.data,
            )
        if kind == "error":
            error: BaseException = self.data
            return error
        if kind == "restart_limit":
            return _restart_limit_error(task, self.data)
        return None


def _parent_error(
    task: Task[Any], what: str, exc: BaseException, *, broken: bool
) -> SerializationError:
    """``what`` failed in the parent with ``exc``; the error is also ``type(exc)``.

    ``broken``: the stdlib's pool breaks at this step, so BrokenProcessPool is mixed in.
    """
    error = serialization_error(
        f"task {task.id} ({task.name}): {what} failed in the parent: "
        f"{type(exc).__name__}: {_safe_str(exc)}",
        cause_type=type(exc),
        broken=broken,
        task_id=task.id,
        task_name=task.name,
        side="parent",
        what=what,
        type_name=_wire.qualified_name(type(exc)),
    )
    error.__cause__ = exc
    return error


# The steps of the worker after which the stdlib's worker dies, breaking its pool.
_BREAKS_STDLIB_POOL = frozenset({"call unpickle"})


def _worker_error(task: Task[Any], payload: Payload) -> SerializationError:
    """The worker's JSON report of a failed (un)pickling step, as an error."""
    try:
        info = json.loads(bytes(payload))
        what = str(info["what"])
        cause = _wire.find_type(str(info["error_module"]), str(info["error_qualname"]))
        error_text, type_name = str(info["error"]), str(info["type_name"])
        message, tb = str(info["message"]), str(info["traceback"])
    except (ValueError, TypeError, KeyError):
        what, cause, error_text, type_name, message, tb = "report", None, "", "?", "", ""
    if what == "exception pickle":
        detail = (
            f"the task raised {type_name}: {message}, which could not be pickled "
            f"({info['error_qualname']}: {error_text})"
        )
    else:
        detail = f"{type_name}: {message}"
    error = serialization_error(
        f"task {task.id} ({task.name}): {what} failed in the worker: {detail}",
        cause_type=cause,
        broken=what in _BREAKS_STDLIB_POOL,
        task_id=task.id,
        task_name=task.name,
        side="worker",
        what=what,
        type_name=type_name,
        remote_traceback=tb,
    )
    if tb:
        _wire.attach_traceback(error, tb)
    return error


def _safe_str(exc: BaseException) -> str:
    try:
        return str(exc)
    except BaseException:
        return f"<{type(exc).__name__} whose str() failed>"


def _crash_error(
    task: Task[Any], pid: int | None, info: ExitInfo, wrote: str | None = None
) -> TaskCrashError:
    if wrote is not None:
        message = (
            f"task {task.id} ({task.name}) crashed: worker {pid} wrote {wrote} into its "
            f"result pipe and was stopped ({info.describe()})"
        )
    else:
        message = f"task {task.id} ({task.name}) crashed: worker {pid} {info.describe()}"
    limit = task.options.memory_limit
    if limit is not None and info.signal in ("SIGKILL", "SIGSEGV", "SIGABRT", "SIGBUS"):
        message += f" (it may have hit its memory_limit of {limit} bytes)"
    return TaskCrashError(
        message,
        task_id=task.id,
        task_name=task.name,
        pid=pid,
        exitcode=info.exitcode,
        signal=info.signal,
    )


def tripped_error(task: Task[Any], intensity: RestartIntensity) -> RestartLimitError:
    """The error of a task not started because its supervisor's intensity tripped."""
    return RestartLimitError(
        f"{task._label or 'its supervisor'} gave up (more than {intensity.max_restarts} "
        f"restarts within {intensity.max_seconds} s), so task {task.id} ({task.name}) "
        "was not started",
        task_id=task.id,
        task_name=task.name,
        attempts=task.attempts,
    )


def _restart_limit_error(task: Task[Any], last: Outcome) -> RestartLimitError:
    opts = task.options
    if opts.max_retries is not None:
        budget = f"used up its max_retries={opts.max_retries}"
    else:
        budget = (
            f"exceeded its restart intensity ({opts.max_restarts} restarts within "
            f"{opts.max_seconds} s)"
        )
    error = RestartLimitError(
        f"task {task.id} ({task.name}) {last.reason(task)} and {budget} after {task.attempts} "
        "attempts",
        task_id=task.id,
        task_name=task.name,
        attempts=task.attempts,
    )
    error.__cause__ = last.to_exception(task)
    return error


def resolve(outcomes: list[Outcome], defer: Defer | None = None) -> None:
    """Finish each outcome's future; log crashes and time-outs at WARNING.

    Runs no user code itself when ``defer`` is given (the monitor thread): values are
    unpickled lazily, and callbacks and log records are handed to ``defer``. Without
    it (a caller's thread), callbacks run inline, as the stdlib's do.
    """
    for outcome in outcomes:
        task = outcome.task
        if outcome.kind == "cancelled":
            task._force_cancel(defer)
            continue
        if outcome.kind in ("crashed", "timed_out"):
            exc = outcome.to_exception()  # built from our own data: no user code
            if exc is not None:
                _log_later(defer, f"{task._label}: " if task._label else "", exc)
            task._finish(_fixed(exc), True, defer)
            continue
        task._finish(outcome.detached().settle, outcome.kind != "ok", defer)


def _fixed(
    exc: BaseException | None,
) -> Callable[[Task[Any]], tuple[object, BaseException | None]]:
    return lambda _task: (None, exc)


def _log_later(defer: Defer | None, prefix: str, exc: BaseException) -> None:
    def emit() -> None:
        log.warning("%s%s", prefix, exc)

    if defer is None:
        emit()
    else:
        defer(emit)

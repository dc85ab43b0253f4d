"""How one run of a task ended, and how that outcome settles the task's future.

The monitor decides *what* happened under its lock (cheaply: no unpickling); this
module turns an outcome into a value or an exception and resolves the future, outside
the lock, because unpickling may run user code and ``set_result`` runs callbacks.
"""

from __future__ import annotations

import logging
import pickle
from concurrent.futures import InvalidStateError
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from . import _wire
from ._errors import (
    RestartLimitError,
    SerializationError,
    TaskCrashError,
    TaskTimeoutError,
)
from ._wire import Payload

if TYPE_CHECKING:
    from ._policy import Exit, RestartIntensity
    from ._process import ExitInfo
    from ._task import Task

__all__ = ["Outcome", "resolve"]

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
    def ok(cls, task: Task[Any], payload: Payload) -> Outcome:
        """The task returned; ``payload`` is its pickled value."""
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
    def crashed(cls, task: Task[Any], pid: int | None, info: ExitInfo) -> Outcome:
        """The worker died while running the task."""
        return cls("crashed", task, (pid, info))

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

    def reason(self) -> str:
        """A short phrase for logs: why this run ended."""
        task = self.task
        if self.kind == "crashed":
            pid, info = self.data
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

    def log_restart(self, pool: str, task: Task[Any], delay: float) -> None:
        """Log, at WARNING, that ``task`` is re-run after this outcome."""
        opts = task.options
        if opts.max_retries is not None:
            budget = f"retry {task.attempts} of {opts.max_retries}, in {delay:.2f} s"
        else:
            intensity = task._intensity
            recent = intensity.recent if intensity is not None else 0
            budget = f"restart {recent} of {opts.max_restarts} within {opts.max_seconds} s"
        log.warning(
            "%s: task %d (%s) %s; restarting it (%s)",
            task._label or f"pool {pool!r}",
            task.id,
            task.name,
            self.reason(),
            budget,
        )

    @staticmethod
    def describe_init_failure(payload: Payload) -> str:
        """The message for a worker whose initializer raised."""
        type_name, message, tb = pickle.loads(payload)
        return f"worker initializer raised {type_name}: {message}\n{tb}"

    # -- settling the future (outside the monitor's lock) -----------------------

    def to_exception(self) -> BaseException | None:
        """The exception this outcome fails the task with; None for a value."""
        task = self.task
        kind = self.kind
        if kind in ("raised", "shutdown"):
            try:
                return _wire.loads_exception(self.data)
            except (Exception, SystemExit) as exc:  # user code ran in __reduce__
                return _serialization_error(task, "parent", "exception unpickle", exc)
        if kind == "bad_payload":
            what, type_name, message, tb = pickle.loads(self.data)
            return SerializationError(
                f"task {task.id} ({task.name}): {what} failed in the worker: "
                f"{type_name}: {message}",
                task_id=task.id,
                task_name=task.name,
                side="worker",
                what=what,
                type_name=type_name,
                remote_traceback=tb,
            )
        if kind == "bad_call":
            return _serialization_error(task, "parent", "call pickle", self.data)
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


def _serialization_error(
    task: Task[Any], side: str, what: str, exc: BaseException
) -> SerializationError:
    error = SerializationError(
        f"task {task.id} ({task.name}): {what} failed in the {side}: {type(exc).__name__}: {exc}",
        task_id=task.id,
        task_name=task.name,
        side=side,
        what=what,
        type_name=_wire.qualified_name(type(exc)),
    )
    error.__cause__ = exc
    return error


def _crash_error(task: Task[Any], pid: int | None, info: ExitInfo) -> TaskCrashError:
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
        f"task {task.id} ({task.name}) {last.reason()} and {budget} after {task.attempts} attempts",
        task_id=task.id,
        task_name=task.name,
        attempts=task.attempts,
    )
    error.__cause__ = last.to_exception()
    return error


def resolve(outcomes: list[Outcome]) -> None:
    """Settle each outcome's future; log crashes and time-outs at WARNING."""
    for outcome in outcomes:
        task = outcome.task
        if outcome.kind == "cancelled":
            task._force_cancel()
            continue
        if task._raw and outcome.kind in ("ok", "raised", "shutdown"):
            _settle(task, (outcome.kind, outcome.data), None)
            continue
        value: object = None
        exc = outcome.to_exception()
        if outcome.kind == "ok":
            try:
                value = pickle.loads(outcome.data)
            except (Exception, SystemExit) as error:  # user code ran in __reduce__
                exc = _serialization_error(task, "parent", "result unpickle", error)
        if outcome.kind in ("crashed", "timed_out"):
            log.warning("%s%s", f"{task._label}: " if task._label else "", exc)
        _settle(task, value, exc)


def _settle(task: Task[Any], value: object, exc: BaseException | None) -> None:
    try:
        if exc is None:
            task.set_result(value)
        else:
            task.set_exception(exc)
    except InvalidStateError:
        pass  # cancelled meanwhile; nothing is waiting for this outcome

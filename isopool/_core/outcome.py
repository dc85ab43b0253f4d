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

import enum
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .._errors import (
    RestartLimitError,
    SerializationError,
    TaskCrashError,
    TaskTimeoutError,
    serialization_error,
)
from . import oob as _oob
from . import wire as _wire
from .run import Defer, Runnable
from .wire import Payload

if TYPE_CHECKING:
    from .policy import Exit, RestartIntensity
    from .process import ExitInfo

__all__ = ["Defer", "Kind", "Outcome", "resolve"]


log = logging.getLogger(__name__)


class Kind(enum.StrEnum):
    """How a run ended. Its value is also the word the shared queue stores."""

    OK = "ok"  # returned; data: the pickled value
    RAISED = "raised"  # raised; data: the pickled (exception, traceback)
    SHUTDOWN = "shutdown"  # raised isopool.Shutdown: a normal exit; data as RAISED
    BAD_PAYLOAD = "bad_payload"  # the worker could not (un)pickle; data: its JSON report
    BAD_CALL = "bad_call"  # the parent could not pickle the call; data: the exception
    CRASHED = "crashed"  # its worker died; data: (pid, ExitInfo, what it wrote or None)
    TIMED_OUT = "timed_out"  # ran past its time-out; data: the worker's pid
    CANCELLED = "cancelled"  # cancelled or killed by its owner
    ERROR = "error"  # fails with data, an exception, as it is (BrokenPoolError, ...)
    RESTART_LIMIT = "restart_limit"  # failed once too often; data: the last Outcome

    @property
    def stat(self) -> str:
        """The ``Pool.stats()`` counter an outcome of this kind adds to."""
        return _STATS[self]

    @property
    def normal(self) -> bool:
        """Whether this is a normal exit in OTP's terms (returned, or Shutdown)."""
        return self in (Kind.OK, Kind.SHUTDOWN)


_STATS = {
    Kind.OK: "completed",
    Kind.SHUTDOWN: "completed",
    Kind.RAISED: "failed",
    Kind.BAD_PAYLOAD: "failed",
    Kind.BAD_CALL: "failed",
    Kind.CRASHED: "crashed",
    Kind.TIMED_OUT: "timed_out",
    Kind.CANCELLED: "killed",
    Kind.ERROR: "failed",
    Kind.RESTART_LIMIT: "failed",
}


@dataclass(slots=True)
class Outcome:
    """One ended run of ``task``: ``kind`` says how, ``data`` carries the details."""

    kind: Kind
    task: Runnable
    data: Any = None
    # Seconds the run lasted, when the pool keeps timings: counted in the duration
    # histogram after the future is settled (Monitor._count_runs), off a caller's wait.
    ran: float | None = None

    # -- constructors --------------------------------------------------------

    @classmethod
    def ok(cls, task: Runnable, payload: Payload | _oob.Received) -> Outcome:
        """The task returned; ``payload`` is its pickled value (its buffers perhaps shared)."""
        return cls(Kind.OK, task, payload)

    @classmethod
    def raised(cls, task: Runnable, payload: Payload) -> Outcome:
        """The task raised; ``payload`` is the pickled (exception, traceback)."""
        return cls(Kind.RAISED, task, payload)

    @classmethod
    def bad_payload(cls, task: Runnable, payload: Payload) -> Outcome:
        """The worker could not unpickle the call or pickle the result/exception."""
        return cls(Kind.BAD_PAYLOAD, task, payload)

    @classmethod
    def bad_call(cls, task: Runnable, exc: BaseException) -> Outcome:
        """The parent could not pickle the call."""
        return cls(Kind.BAD_CALL, task, exc)

    @classmethod
    def crashed(
        cls, task: Runnable, pid: int | None, info: ExitInfo, wrote: str | None = None
    ) -> Outcome:
        """The worker died while running the task.

        ``wrote``: it was stopped for writing this into its result pipe.
        """
        return cls(Kind.CRASHED, task, (pid, info, wrote))

    @classmethod
    def timed_out(cls, task: Runnable, pid: int | None) -> Outcome:
        """The task ran past its time-out and its worker was stopped."""
        return cls(Kind.TIMED_OUT, task, pid)

    @classmethod
    def cancelled(cls, task: Runnable) -> Outcome:
        """The task was cancelled or killed by its owner."""
        return cls(Kind.CANCELLED, task)

    @classmethod
    def stopped(cls, task: Runnable) -> Outcome:
        """The task was stopped by ``kill``: cancelled, or failed with the kill's error."""
        stop = task._stop
        if stop is not None and stop.error is not None:
            return cls(Kind.ERROR, task, stop.error)
        return cls(Kind.CANCELLED, task)

    @classmethod
    def shutdown(cls, task: Runnable, payload: Payload) -> Outcome:
        """The task raised ``isopool.Shutdown``: a normal exit, as Elixir's ``:shutdown``."""
        return cls(Kind.SHUTDOWN, task, payload)

    @classmethod
    def error(cls, task: Runnable, exc: BaseException) -> Outcome:
        """The task fails with ``exc`` as it is (BrokenPoolError...)."""
        return cls(Kind.ERROR, task, exc)

    @classmethod
    def restart_limit(cls, task: Runnable, last: Outcome) -> Outcome:
        """The task failed once more than its restart intensity allows."""
        return cls(Kind.RESTART_LIMIT, task, last)

    # -- what the monitor asks ----------------------------------------------

    @property
    def exit(self) -> Exit:
        """``normal`` if the task returned, else ``abnormal`` (OTP's terms)."""
        return "normal" if self.kind.normal else "abnormal"

    @property
    def stat(self) -> str:
        """The ``Pool.stats()`` counter this outcome adds to."""
        return self.kind.stat

    def reason(self, task: Runnable | None = None) -> str:
        """A short phrase for logs: why this run ended (``task``: for a detached one)."""
        task = task if task is not None else self.task
        if self.kind is Kind.CRASHED:
            pid, info, _wrote = self.data
            return f"crashed: worker {pid} {info.describe()}"
        if self.kind is Kind.TIMED_OUT:
            return f"timed out after {task.options.timeout} s"
        if self.kind is Kind.OK:
            return "returned"
        if self.kind is Kind.SHUTDOWN:
            return "shut down"
        if self.kind is Kind.RAISED:
            return "raised an exception"
        if self.kind in (Kind.BAD_PAYLOAD, Kind.BAD_CALL):
            return "failed to (un)pickle"
        return "failed"

    def restart_message(self, pool: str, task: Runnable, delay: float) -> str:
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
        data = self.data.detached() if self.kind is Kind.RESTART_LIMIT else self.data
        return Outcome(self.kind, None, data)  # type: ignore[arg-type]  # only settle(task) reads it

    def settle(self, task: Runnable) -> tuple[object, BaseException | None]:
        """The task's (value, exception); may run user code (unpickling).

        Called once per outcome, by whoever first asks for the task's value.
        """
        if task._raw and self.kind in (Kind.OK, Kind.RAISED, Kind.SHUTDOWN):
            return (self.kind.value, self.data), None  # stays pickled: it goes back to Redis
        if self.kind is Kind.OK:
            try:
                return _wire.loads(self.data), None
            except BaseException as exc:  # user code ran in __reduce__ or __setstate__
                return None, _parent_error(task, "result unpickle", exc, broken=True)
        return None, self.to_exception(task)

    def to_exception(self, task: Runnable | None = None) -> BaseException | None:
        """The exception this outcome fails the task with; None for a value."""
        task = task if task is not None else self.task
        kind = self.kind
        if kind in (Kind.RAISED, Kind.SHUTDOWN):
            try:
                return _wire.loads_exception(self.data)
            except BaseException as exc:  # user code ran in __reduce__
                return _parent_error(task, "exception unpickle", exc, broken=True)
        if kind is Kind.BAD_PAYLOAD:
            return _worker_error(task, self.data)
        if kind is Kind.BAD_CALL:
            return _parent_error(task, "call pickle", self.data, broken=False)
        if kind is Kind.CRASHED:
            return _crash_error(task, *self.data)
        if kind is Kind.TIMED_OUT:
            return TaskTimeoutError(
                f"task {task.id} ({task.name}) timed out after {task.options.timeout} s; "
                f"worker {self.data} was stopped",
                task_id=task.id,
                task_name=task.name,
                timeout=task.options.timeout,
                pid=self.data,
            )
        if kind is Kind.ERROR:
            error: BaseException = self.data
            return error
        if kind is Kind.RESTART_LIMIT:
            return _restart_limit_error(task, self.data)
        return None


def _parent_error(
    task: Runnable, what: str, exc: BaseException, *, broken: bool
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


def _worker_error(task: Runnable, payload: Payload) -> SerializationError:
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
    task: Runnable, pid: int | None, info: ExitInfo, wrote: str | None = None
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


def tripped_error(task: Runnable, intensity: RestartIntensity) -> RestartLimitError:
    """The error of a task not started because its supervisor's intensity tripped."""
    return RestartLimitError(
        f"{task._label or 'its supervisor'} gave up (more than {intensity.max_restarts} "
        f"restarts within {intensity.max_seconds} s), so task {task.id} ({task.name}) "
        "was not started",
        task_id=task.id,
        task_name=task.name,
        attempts=task.attempts,
    )


def _restart_limit_error(task: Runnable, last: Outcome) -> RestartLimitError:
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
        if outcome.kind is Kind.CANCELLED:
            task._force_cancel(defer)
            continue
        if outcome.kind in (Kind.CRASHED, Kind.TIMED_OUT):
            exc = outcome.to_exception()  # built from our own data: no user code
            if exc is not None:
                _log_later(defer, f"{task._label}: " if task._label else "", exc)
            task._finish(_fixed(exc), True, defer)
            continue
        task._finish(outcome.detached().settle, outcome.kind is not Kind.OK, defer)


def _fixed(
    exc: BaseException | None,
) -> Callable[[Runnable], tuple[object, BaseException | None]]:
    return lambda _task: (None, exc)


def _log_later(defer: Defer | None, prefix: str, exc: BaseException) -> None:
    def emit() -> None:
        log.warning("%s%s", prefix, exc)

    if defer is None:
        emit()
    else:
        defer(emit)

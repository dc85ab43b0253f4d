"""Task: the handle of one task, a ``concurrent.futures.Future`` with Elixir's functions.

A Task is what ``Pool.submit`` and ``Task.async_`` return. Being a real ``Future``, it
works with ``concurrent.futures.wait``, ``as_completed``, ``asyncio.wrap_future`` and
``await``. It adds what a process can offer (``pid``, ``attempts``, ``kill()``) and
Elixir's ``Task`` functions, each both a method and a class-level function in Elixir's
spelling (``Task.await_(task, 2.0)`` is ``task.await_(2.0)``)::

    Task.async_(fn, *args)        run fn in a worker process; a handle to await
    Task.start(fn, *args)         fire and forget; the program's exit waits for it
    Task.start_link(fn, *args)    fire and forget, linked to its TaskGroup/the program
    task.await_(timeout=5.0)      the result; on time-out the task is stopped
    task.yield_(timeout=5.0)      a Reply if it finished in time, else None
    task.shutdown(5.0)            stop it (polite, then brutal); a Reply if it raced in
    task.ignore()                 unlink it and never await it
    Task.await_many / yield_many / async_stream / completed

Class-level functions run on a default pool (one worker per CPU) created on first
use. It has no public constructor. The bookkeeping fields (worker, deadline, restart
history) belong to the monitor and are read and written only under its lock.
"""

from __future__ import annotations

import _thread
import collections
import contextlib
import logging
import sys
import threading
from collections.abc import Callable, Generator, Iterable, Iterator
from concurrent.futures import CancelledError, Future, InvalidStateError
from concurrent.futures._base import CANCELLED, CANCELLED_AND_NOTIFIED, FINISHED, PENDING
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, Literal, ParamSpec, Protocol, TypeVar, overload

from ._core import wire as _wire
from ._core.outcome import Outcome, resolve
from ._core.policy import RestartIntensity
from ._core.usage import Usage, usage_of
from ._errors import Shutdown as ShutdownExit
from ._errors import TaskTimeoutError
from ._spec import (
    MAX_SECONDS,
    ShutdownTimeout,
    TaskOptions,
    check_seconds,
    check_shutdown,
    check_wait,
    describe_function,
)

if TYPE_CHECKING:
    from ._core.run import Defer, Run, Settle, StopRequest

__all__ = ["Reply", "Task", "describe"]

log = logging.getLogger(__name__)
# Done-callback failures go where the stdlib's go, so code that watches them keeps working.
_callback_log = logging.getLogger("concurrent.futures")
_DONE = frozenset({CANCELLED, CANCELLED_AND_NOTIFIED, FINISHED})

"""Computes a finished task's (value, exception); may run user code (unpickling)."""


class _UnsettledError(Exception):
    """What ``exception()`` answers under ``wait()``'s locks for a failure not unpickled yet."""


_UNSETTLED = _UnsettledError("the task failed; its exception is not unpickled yet")

R = TypeVar("R")
T = TypeVar("T")
P = ParamSpec("P")
OnTimeout = Literal["nothing", "ignore", "kill_task"]


@dataclass(frozen=True, slots=True)
class Reply(Generic[R]):
    """How a task ended, as Elixir's ``{:ok, value}`` or ``{:exit, reason}``.

    ``yield_``, ``shutdown``, ``ignore``, ``yield_many`` and ``async_stream`` return
    Replies instead of raising. Match on them::

        match task.yield_(1.0):
            case Reply("ok", value): ...
            case Reply("exit", reason): ...
            case None: ...  # still running

    Attributes:
        status: ``"ok"`` (the task returned) or ``"exit"`` (it did not).
        value: For ``"ok"`` the task's return value; for ``"exit"`` the reason: the
            task's exception, ``"timeout"``, or ``"killed"`` when it was stopped.
        usage: What the task's run cost (``Task.usage``), when its worker replied;
            None otherwise. Not part of equality or the repr.
    """

    status: Literal["ok", "exit"]
    value: Any
    usage: Usage | None = field(default=None, compare=False, repr=False)

    @property
    def ok(self) -> bool:
        """Whether the task returned a value."""
        return self.status == "ok"

    @property
    def reason(self) -> object:
        """Why the task exited (None for ``"ok"``)."""
        return None if self.status == "ok" else self.value

    @classmethod
    def of(cls, task: Future[Any]) -> Reply[Any]:
        """The Reply of a finished ``task``."""
        if task.cancelled():
            return cls("exit", "killed")
        usage = task.usage if isinstance(task, Task) else None
        exc = task.exception(timeout=0)
        if exc is not None:
            return cls("exit", exc, usage)
        return cls("ok", task.result(timeout=0), usage)


def describe(exc: BaseException) -> str:
    """An exception and its worker-side traceback, as text, for an ERROR log.

    Uses the traceback text the worker sent rather than ``exc_info``: formatting a
    traceback calls ``ast.parse`` on Python 3.11, which is not safe from another
    thread or from ``__del__`` (CPython gh-106905).
    """
    cause = exc.__cause__
    tb = getattr(cause, "tb", None)
    text = f"{type(exc).__qualname__}: {exc}"
    return f"{text}\n{tb}" if isinstance(tb, str) else text


class _Owner(Protocol):
    """What a Task needs from whoever runs it (the monitor): a way to stop it."""

    def kill(
        self,
        task: Task[Any],
        wait: bool,
        grace: ShutdownTimeout | None = None,
        error: BaseException | None = None,
        keep_reply: bool = False,
    ) -> bool:
        """Stop ``task``; see ``Task.kill``."""

    def take_back(self, task: Task[Any], wait: bool) -> bool:
        """Take back a call written to a worker but not started; see ``Task.cancel``."""

    def forget(self, task: Task[Any]) -> None:
        """``task`` was cancelled while queued: take it out of the pending queue."""


class _Finished:
    """The owner of ``Task.completed`` tasks: there is nothing to stop."""

    def kill(
        self,
        task: Task[Any],
        wait: bool,
        grace: ShutdownTimeout | None = None,
        error: BaseException | None = None,
        keep_reply: bool = False,
    ) -> bool:
        return False

    def take_back(self, task: Task[Any], wait: bool) -> bool:
        return False

    def forget(self, task: Task[Any]) -> None:
        pass


class _Condition(threading.Condition):
    """A ``threading.Condition`` on its own RLock, built in a fifth of the time.

    Every Task has one (as every ``Future``), so building it is on ``submit``'s hot
    path: the stdlib's ``__init__`` binds five of the lock's methods onto each
    instance (3.6 us here); these delegate from the class instead (0.7 us), at the
    cost of one Python call in ``wait()`` and ``notify()``, which are far rarer.
    """

    def __init__(self) -> None:
        self._lock = _thread.RLock()
        self._waiters: collections.deque[Any] = collections.deque()

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        return self._lock.acquire(blocking, timeout)

    def release(self) -> None:
        self._lock.release()

    def _release_save(self) -> Any:  # noqa: ANN401 - the RLock's own saved state
        return self._lock._release_save()  # type: ignore[attr-defined]  # C RLock's, as Condition uses

    def _acquire_restore(self, state: Any) -> None:  # noqa: ANN401 - see _release_save
        self._lock._acquire_restore(state)  # type: ignore[attr-defined]  # C RLock's, as Condition uses

    def _is_owned(self) -> bool:
        return bool(self._lock._is_owned())  # type: ignore[attr-defined]  # C RLock's, as Condition uses


class Task(Future[R], Generic[R]):
    """A task running (or queued to run) in a worker process.

    Thread-safe, like every ``Future``. Results, exceptions and cancellation follow
    ``concurrent.futures.Future``; ``cancel()`` succeeds while the task has not
    started, also when its call was already written to a worker behind another one
    (the worker hands it back), while ``kill()`` also stops a running task.

    Attributes:
        id: The task's id, unique within its pool (it travels in frame headers).
        name: A readable name of its function, used in errors and logs.
        attempts: How many times it has started running (restarts included).
    """

    id: int
    name: str
    attempts: int
    # Monitor-owned bookkeeping (read and written only under the monitor's lock):
    priority: int
    seq: int
    queued: bool
    _owner: _Owner
    _payload: bytes
    _options: TaskOptions
    _intensity: RestartIntensity | None
    _dispatched: bool
    _run: Run | None  # its run on a worker (see _run), while it is on one
    _stop: StopRequest | None  # kill()/shutdown() asked for it to stop: never re-run
    _pid: int | None  # its last run's worker
    _queued_at: float  # when submit() queued it (monotonic): its queue wait's start
    _label: str | None
    # Task-owned state (the Elixir API):
    _awaited: bool  # await_ was called: a second call is an error
    _unlink: Callable[[Task[Any]], None] | None  # how to leave its group/program link
    _program_linked: bool  # linked to the program: an unretrieved failure is logged
    _retrieved: bool  # someone looked at the outcome (result, exception, yield_...)
    _raw: bool  # the outcome stays pickled (the shared queue's tasks)
    _settle: Settle | None  # the outcome, not yet unpickled (see _outcome)
    _settle_lock: threading.Lock | None
    _settle_is_error: bool  # what the outcome is, before it is unpickled
    _usage: bytes | None  # its last run's USAGE trailer, unpacked on demand (see _usage)

    # Every Task starts with these (Future's own first): class-level defaults, so that
    # _create, on submit's hot path, stores only what differs per task. Each is
    # immutable; an assignment makes the instance's own copy, as usual.
    _state = PENDING
    _result: Any = None
    _exception: BaseException | None = None
    attempts = 0
    queued = False
    _dispatched = False  # set_running_or_notify_cancel has been called
    _run = None
    _stop = None
    _pid = None
    _queued_at = 0.0
    _label = None  # "supervisor 'X'" in logs, for a supervisor's children
    _awaited = False
    _unlink = None
    _program_linked = False
    _retrieved = False
    _raw = False
    _settle = None
    _settle_lock = None
    _settle_is_error = False
    _usage = None

    def __init__(self) -> None:
        raise TypeError(
            "Task has no public constructor; get one from Pool.submit or TaskSupervisor.async_"
        )

    @classmethod
    def _new(
        cls,
        owner: Any,  # noqa: ANN401 - the monitor: an _Owner that also takes submit()
        task_id: int,
        fn: Callable[..., object] | str,
        args: tuple[object, ...],
        kwargs: dict[str, object],
        options: TaskOptions,
        intensity: RestartIntensity | None = None,
        usage: bool = True,
    ) -> Task[Any]:
        """Pickle one call and return its Task, not yet submitted.

        A call that cannot be pickled gives a Task that already failed with
        ``SerializationError`` (as ``ProcessPoolExecutor`` fails the future).
        ``usage``: whether the worker measures what the call cost (``Task.usage``).
        """
        try:
            payload = _wire.dumps_call(
                fn, args, kwargs, options.memory_limit, options.cpus, usage, share=True
            )
            error = None
        except (Exception, SystemExit) as exc:
            payload, error = b"", exc
        if intensity is None and options.restart != "temporary":
            intensity = RestartIntensity(options.max_restarts, options.max_seconds)
        task = cls._create(owner, task_id, describe_function(fn), payload, options, intensity)
        if error is not None:
            task.set_running_or_notify_cancel()
            resolve([Outcome.bad_call(task, error)])
        return task

    @classmethod
    def _new_raw(
        cls, owner: _Owner, task_id: int, payload: bytes, name: str, options: TaskOptions
    ) -> Task[Any]:
        """Return a Task for an already pickled call, whose outcome stays pickled.

        For the shared queue: the call was pickled (and signed) by another process,
        and its result goes back to Redis, so this process never unpickles user
        bytes. The Task's result is ``("ok" | "raised" | "shutdown", payload)``;
        crashes, time-outs and bad payloads still fail it with isopool's errors.
        """
        task = cls._create(owner, task_id, name, payload, options, None)
        task._raw = True
        return task

    @classmethod
    def _create(
        cls,
        owner: _Owner,
        task_id: int,
        name: str,
        payload: bytes,
        options: TaskOptions,
        intensity: RestartIntensity | None,
    ) -> Task[Any]:
        # Future.__init__'s work with a cheaper Condition; every other attribute starts
        # as its class-level default (_TASK_DEFAULTS), so only these are stored here.
        self = cls.__new__(cls)
        self._condition = _Condition()
        self._waiters = []
        self._done_callbacks = []  # type: ignore[attr-defined]  # Future's own list
        self.id = task_id
        self.seq = task_id
        self.name = name
        self._owner = owner
        self._payload = payload
        self._options = options
        self._intensity = intensity
        self.priority = options.priority
        return self

    def __repr__(self) -> str:
        with self._condition:
            state = self._state.lower()
        pid = f" pid={self._pid}" if self._pid is not None else ""
        return f"<isopool.Task {self.id} {self.name} {state}{pid} attempts={self.attempts}>"

    @property
    def pid(self) -> int | None:
        """The pid of the worker running the task; after it ran, of the last one; else None."""
        return self._pid

    @property
    def _running(self) -> bool:
        """Whether its call is running on a worker now (engine-owned; a snapshot)."""
        run = self._run
        return run is not None and run.started_at is not None

    @property
    def options(self) -> TaskOptions:
        """The per-task settings this task runs with (time-out, restart, ...)."""
        return self._options

    @property
    def usage(self) -> Usage | None:
        """What the task's run cost in its worker (``isopool.Usage``), once it finished.

        None until the task has finished, and for a task whose worker sent nothing
        back (it crashed, timed out or was killed while running, or its call did
        not unpickle), and on a pool made with ``usage=False``. For a task run more
        than once, its last run's.
        See ``Usage`` for what each figure measures and how exact it is.
        """
        if not self.done():
            return None
        return usage_of(self._usage)

    def kill(self, *, wait: bool = True) -> bool:
        """Stop the task now: cancel it if pending, stop its process if running.

        A running task's worker gets SIGTERM, then SIGKILL after the task's
        ``shutdown`` grace period (at once for ``"brutal_kill"``), together with every
        process the task started (its process group). Waiting on the task then
        raises ``CancelledError``. A killed task is never restarted.

        Args:
            wait: Block until the process is gone (at most the grace period plus a
                few seconds). Ignored when called from isopool's monitor thread
                (from a done-callback), where waiting would deadlock.

        Returns:
            True if the task was cancelled or will be; False if it had already
            finished.
        """
        return self._owner.kill(self, wait)

    def cancel(self) -> bool:
        """Cancel the task unless it has started; True if it will never run.

        As ``Future.cancel``, with one addition: a call already written to a worker
        but queued there behind another call has not started, so it is taken back
        from the worker (one round trip, about a millisecond; at most half a second
        when the worker's running task holds the GIL) and the task is cancelled. A
        cancelled task leaves its pool's pending queue at once, so
        ``Pool.stats()["pending"]`` stops counting it. To stop a running task, use
        ``kill()``.

        Returns:
            True if the task is cancelled; False if it is running or finished.
        """
        if self._cancel_queued():
            return True
        if _in_event_loop():  # asyncio cancels wrapped futures on its loop: never block it
            self._owner.take_back(self, False)
            return False
        return self._owner.take_back(self, True)

    def _cancel_future(self) -> bool:
        """``Future.cancel`` alone (the engine's): no take-back, no call to the owner."""
        return Future.cancel(self)

    def _cancel_nowait(self) -> None:
        """Cancel as ``cancel()`` does, without waiting for a worker's answer."""
        if not self._cancel_queued():
            self._owner.take_back(self, False)

    def _cancel_queued(self) -> bool:
        """``Future.cancel``: True if the task had not been handed to a worker."""
        if not super().cancel():
            return False
        self._payload = b""
        # Only a queued task has anything to forget; an unqueued one may be cancelled
        # by the monitor itself, under the lock that forget() takes.
        if self.queued:
            self._owner.forget(self)
        return True

    def result(self, timeout: float | None = None) -> R:
        """As ``Future.result``: the task's return value, or raise its exception.

        Raises:
            ValueError: ``timeout`` is NaN, infinite or above 1e9 seconds (None waits
                for ever; a negative time-out does not block, as in the stdlib).
        """
        self._retrieved = True
        if timeout is not None:
            timeout = check_wait("timeout", timeout)
        # State first: _finish sets _settle before the state, so a FINISHED task whose
        # _settle is None has its value in place (reading them the other way round
        # could see neither and return an unset None).
        if self._state == FINISHED and self._settle is None:
            return super().result(0)  # the fast path: already settled
        super().exception(timeout)  # waits; raises CancelledError or TimeoutError
        self._settle_now()
        return super().result(0)

    def exception(self, timeout: float | None = None) -> BaseException | None:
        """As ``Future.exception``: the task's exception, or None.

        Raises:
            ValueError: ``timeout`` is NaN, infinite or above 1e9 seconds.
        """
        self._retrieved = True
        if timeout is not None:
            timeout = check_wait("timeout", timeout)
        super().exception(timeout)
        if self._settle is not None and self._condition._is_owned():  # type: ignore[attr-defined]  # RLock's own check
            # concurrent.futures.wait(FIRST_EXCEPTION) asks under every future's lock:
            # never run user code (unpickling) there; answer from what is known.
            return _UNSETTLED if self._settle_is_error else None
        self._settle_now()
        return super().exception(0)

    def _settle_now(self) -> None:
        """Unpickle the outcome once, in the thread that first asks for it."""
        settle, lock = self._settle, self._settle_lock
        if settle is None or lock is None:
            return
        with lock:
            if self._settle is None:
                return  # another thread settled it meanwhile
            value, exc = settle(self)
            self._result = value
            self._exception = exc
            self._settle = None

    def __del__(self) -> None:
        # A linked task's failure must never be silently lost (as asyncio's "Task
        # exception was never retrieved"): log it when nobody looked at it.
        try:
            if self._program_linked and not self._retrieved and self._state == FINISHED:
                self._settle_now()
                exc = self._exception
                if exc is not None and not isinstance(exc, ShutdownExit):
                    log.error(
                        "linked task %d (%s) failed and nobody awaited it: %s",
                        self.id,
                        self.name,
                        describe(exc),
                    )
        except BaseException:
            pass

    # -- Elixir's Task, per task -----------------------------------------------

    def await_(self, timeout: float | None = 5.0) -> R:
        """Wait for the task's result, as Elixir's ``Task.await``; once per task.

        Args:
            timeout: Seconds to wait (OTP's 5.0 by default); None waits for ever.

        Returns:
            What the task returned.

        Raises:
            TaskTimeoutError: it did not finish in time; it has been **stopped**
                (SIGKILL to its process group), as a linked Elixir task dies with
                its caller.
            InvalidStateError: ``await_`` was already called, or ``ignore()`` was.
            BaseException: whatever the task raised, with its own type.
        """
        seconds = check_seconds("timeout", timeout)
        with self._condition:
            if self._awaited:
                raise InvalidStateError(
                    f"task {self.id} ({self.name}) was already awaited or ignored; "
                    "await_ may be called once per task (use yield_ to poll)"
                )
            self._awaited = True
        try:
            return self.result(seconds)
        except TimeoutError:
            if self.done():
                raise  # the task itself raised a TimeoutError
        error = TaskTimeoutError(
            f"task {self.id} ({self.name}) did not reply within {seconds} s; it was stopped",
            task_id=self.id,
            task_name=self.name,
            timeout=seconds,
            pid=self._pid,
        )
        if self._owner.kill(self, True, "brutal_kill", error):
            raise error
        return self.result(0)  # it finished while we were stopping it

    def yield_(self, timeout: float | None = 5.0) -> Reply[R] | None:
        """Wait up to ``timeout`` seconds; the Reply if the task finished, else None.

        Unlike ``await_``, a time-out leaves the task running, and ``yield_`` may be
        called again (Elixir's ``Task.yield``).
        """
        seconds = check_seconds("timeout", timeout)
        with contextlib.suppress(TimeoutError, CancelledError):
            self.exception(seconds)
        return Reply.of(self) if self.done() else None

    def shutdown(self, timeout: float | Literal["brutal_kill"] = 5.0) -> Reply[R] | None:
        """Stop the task: SIGTERM, wait ``timeout`` seconds, then SIGKILL.

        As Elixir's ``Task.shutdown``: ``"brutal_kill"`` sends SIGKILL at once. The
        task's whole process group is stopped.

        Returns:
            The Reply if the task had finished, or finished while being stopped;
            None if it was stopped.
        """
        grace = check_shutdown(timeout)
        self._owner.kill(self, True, grace, None, True)
        if self.done() and not self.cancelled():
            return Reply.of(self)
        return None

    def ignore(self) -> Reply[R] | None:
        """Unlink the task and give up on its reply (Elixir 1.13's ``Task.ignore``).

        The task keeps running, no longer tied to its group, and can no longer be
        awaited; a failure is not reported. Still running at interpreter exit, it
        is stopped (as every process dies with Elixir's VM). Returns its Reply if
        it had already finished, else None.
        """
        from ._group import ignore_task

        with self._condition:
            self._awaited = True
        ignore_task(self)
        return Reply.of(self) if self.done() else None

    def __await__(self) -> Generator[Any, None, R]:
        """``await task`` inside asyncio; cancelling the awaiter stops the task."""
        import asyncio  # here, not at import time: workers never need it (~15 ms)

        future = asyncio.wrap_future(self)
        try:
            return (yield from future.__await__())
        except asyncio.CancelledError:
            self._owner.kill(self, False)
            raise

    @property
    def exited_normally(self) -> bool:
        """Whether it exited normally, in OTP's sense.

        Normal: it returned, raised ``isopool.Shutdown``, or raised ``SystemExit`` with
        code 0 or None (``sys.exit()``); any other exception, crash or time-out is not.
        """
        if not self.done() or self.cancelled():
            return False
        exc = self.exception(0)
        return (
            exc is None
            or isinstance(exc, ShutdownExit)
            or (isinstance(exc, SystemExit) and exc.code in (0, None))
        )

    # -- Elixir's Task, class-level (on the default pool) ------------------------

    @overload
    @staticmethod
    def async_(fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Task[T]: ...

    @overload
    @staticmethod
    def async_(fn: str, /, *args: object, **kwargs: object) -> Task[Any]: ...

    @staticmethod
    def async_(fn: Any, /, *args: Any, **kwargs: Any) -> Task[Any]:
        """Run ``fn(*args, **kwargs)`` in a worker process and return its Task.

        ``fn`` is a callable or ``"package.module:function"`` (Elixir's MFA form).
        The task is linked to the current ``TaskGroup``, or else to the program:
        it is stopped at exit if still running. Await it with ``await_``.
        """
        from ._group import spawn

        return spawn(fn, args, kwargs, link=True)

    @staticmethod
    def start(fn: Callable[..., object] | str, /, *args: object, **kwargs: object) -> Task[Any]:
        """Run ``fn`` fire-and-forget, not linked: the program's exit waits for it.

        A failure is logged at ERROR with its traceback.
        """
        from ._group import spawn

        return spawn(fn, args, kwargs, link=False, log_failure=True)

    @staticmethod
    def start_link(
        fn: Callable[..., object] | str, /, *args: object, **kwargs: object
    ) -> Task[Any]:
        """Run ``fn`` fire-and-forget, linked to the current TaskGroup or the program.

        In a group, its abnormal exit stops the group's other tasks and the group
        raises. Outside one, it is stopped when the program exits (no waiting) and a
        failure is logged at ERROR.
        """
        from ._group import spawn

        return spawn(fn, args, kwargs, link=True, log_failure=True)

    @staticmethod
    def completed(value: T) -> Task[T]:
        """Return a Task that already finished with ``value``; no process runs."""
        task: Task[T] = Task._create(_FINISHED, 0, "completed", b"", TaskOptions(), None)
        task.set_running_or_notify_cancel()
        task.set_result(value)
        return task

    @staticmethod
    def await_many(
        tasks: Iterable[Task[Any]], timeout: float | None = 5.0, *, progress: object = False
    ) -> list[Any]:
        """Await every task; results in order, or the first failure.

        On a failure or a time-out the tasks still running are stopped, then the
        failure (or ``TaskTimeoutError``) is raised.

        Args:
            tasks: The tasks to await.
            timeout: Seconds to wait in all (OTP's 5.0); None for ever.
            progress: False (default), True (a tqdm bar when stderr is a terminal),
                ``"always"``, a tqdm instance, or a callable ``(done, total, counts)``.
        """
        from ._many import await_many

        return await_many(list(tasks), check_seconds("timeout", timeout), progress)

    @staticmethod
    def yield_many(
        tasks: Iterable[Task[Any]],
        timeout: float | None = 5.0,
        *,
        limit: int | None = None,
        on_timeout: OnTimeout = "nothing",
        progress: object = False,
    ) -> list[Reply[Any] | None]:
        """Wait up to ``timeout`` seconds for the tasks; a Reply or None for each, in order.

        Args:
            tasks: The tasks to wait for.
            timeout: Seconds to wait in all; None for ever.
            limit: Return as soon as this many tasks have finished.
            on_timeout: What to do with the tasks still running: ``"nothing"``
                (leave them), ``"ignore"`` (unlink them) or ``"kill_task"`` (stop
                them brutally).
            progress: As ``await_many``'s.
        """
        from ._many import yield_many

        return yield_many(
            list(tasks), check_seconds("timeout", timeout), limit, on_timeout, progress
        )

    @staticmethod
    def async_stream(
        fn: Callable[..., object] | str,
        iterable: Iterable[Any],
        *,
        max_concurrency: int | None = None,
        ordered: bool = True,
        timeout: float | None = 5.0,
        on_timeout: Literal["exit", "kill_task"] = "exit",
        zip_input_on_exit: bool = False,
        progress: object = False,
    ) -> Iterator[Reply[Any]]:
        """Run ``fn(item)`` for each item, lazily; yield a Reply per item.

        Args:
            fn: A callable or ``"package.module:function"``.
            iterable: The inputs, consumed lazily (it may be endless).
            max_concurrency: At most this many tasks run at once (default: one
                per CPU).
            ordered: Yield in input order (True) or as tasks finish (False).
            timeout: Seconds each task may run, its timer starting when it starts.
            on_timeout: ``"exit"``: stop every task and raise ``TaskTimeoutError``;
                ``"kill_task"``: yield ``Reply("exit", "timeout")`` and go on.
            zip_input_on_exit: Exit reasons become ``(input, reason)``.
            progress: False (default), True (a tqdm bar when stderr is a terminal;
                needs ``isopool[progress]``), ``"always"``, a tqdm instance, or a
                callable ``(done, total, counts)``.

        The tasks are linked: a task that raises stops the stream's other tasks and
        the exception is raised from the stream. ``TaskSupervisor.async_stream_nolink``
        yields such failures as ``Reply("exit", exc)`` instead.
        """
        from ._group import default_submitter
        from ._stream import StreamSpec, async_stream

        spec = StreamSpec.build(
            max_concurrency, ordered, timeout, on_timeout, zip_input_on_exit, progress
        )
        return async_stream(default_submitter(), fn, iterable, spec, link=True)

    # -- called by the monitor, outside its lock -------------------------------

    def _finish(self, settle: Settle, is_error: bool, defer: Defer | None) -> bool:
        """Mark the task done with a lazily unpickled outcome; False if already done.

        Waiters wake now; ``settle`` runs when the value is first asked for. Nothing
        here runs user code: the done-callbacks go to ``defer`` (inline without it).
        ``is_error`` tells ``wait(return_when=FIRST_EXCEPTION)`` what to expect; a
        result that later fails to unpickle is the one case it guesses wrong.
        """
        with self._condition:
            if self._state in _DONE:
                return False
            self._settle = settle
            self._settle_lock = threading.Lock()
            self._settle_is_error = is_error
            self._state = FINISHED
            self._payload = b""  # settled for good: it never runs again
            for waiter in self._waiters:
                if is_error:
                    waiter.add_exception(self)
                else:
                    waiter.add_result(self)
            self._condition.notify_all()
        self._run_callbacks(defer)
        return True

    def _force_cancel(self, defer: Defer | None = None) -> bool:
        """Mark the task cancelled even if it was running (it has been stopped)."""
        with self._condition:
            if self._state in (FINISHED, CANCELLED_AND_NOTIFIED):
                return False
            already_cancelled = self._state == CANCELLED  # cancel() ran its callbacks
            self._state = CANCELLED_AND_NOTIFIED
            self._payload = b""
            for waiter in self._waiters:
                waiter.add_cancelled(self)
            self._condition.notify_all()
        if not already_cancelled:
            self._run_callbacks(defer)
        return True

    def _run_callbacks(self, defer: Defer | None) -> None:
        if not self._done_callbacks:  # type: ignore[attr-defined]  # Future's own list
            return
        if defer is None:
            self._invoke_callbacks()
        else:
            defer(self._invoke_callbacks)

    def _invoke_callbacks(self) -> None:
        # As Future's, but a callback that raises a BaseException (KeyboardInterrupt,
        # SystemExit) is logged too: it must not kill the thread that runs callbacks
        # nor skip the callbacks after it.
        for callback in self._done_callbacks:  # type: ignore[attr-defined]  # Future's own list
            try:
                callback(self)
            except BaseException:
                _callback_log.exception("exception calling callback for %r", self)

    def _wait_stopped(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for the task to settle, ignoring its outcome."""
        with contextlib.suppress(CancelledError, TimeoutError):
            self.exception(min(timeout, MAX_SECONDS))  # a grace near the bound, plus margin


def _in_event_loop() -> bool:
    """Whether this thread runs an asyncio event loop (never imports asyncio)."""
    asyncio = sys.modules.get("asyncio")
    return asyncio is not None and asyncio._get_running_loop() is not None


_FINISHED = _Finished()

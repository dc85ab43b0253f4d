"""Task: the handle of one task, a ``concurrent.futures.Future`` with process controls.

A Task is what ``Pool.submit`` returns. Being a real ``Future``, it works with
``concurrent.futures.wait``, ``as_completed`` and ``asyncio.wrap_future``. It adds
what a process can offer: the ``pid`` of the worker running it, how many
``attempts`` it took, and ``kill()``. It has no public constructor.

The bookkeeping fields (worker, deadline, restart history) belong to the monitor
and are read and written only under the monitor's lock.
"""

from __future__ import annotations

import contextlib
import threading
from concurrent.futures import CancelledError, Future
from concurrent.futures._base import CANCELLED, CANCELLED_AND_NOTIFIED, FINISHED
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

from ._spec import Shutdown, TaskOptions

if TYPE_CHECKING:
    from ._policy import RestartIntensity

__all__ = ["Task"]

R = TypeVar("R")


class _Owner(Protocol):
    """What a Task needs from whoever runs it (the monitor): a way to stop it."""

    def kill(self, task: Task[Any], wait: bool) -> bool:
        """Stop ``task``; see ``Task.kill``."""


class Task(Future[R], Generic[R]):
    """A task running (or queued to run) in a worker process.

    Thread-safe, like every ``Future``. Results, exceptions and cancellation follow
    ``concurrent.futures.Future`` exactly; ``cancel()`` succeeds only while the task
    is pending, as in the stdlib, while ``kill()`` also stops a running task.

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
    _worker: object | None
    _pid: int | None
    _deadline: float | None
    _started_at: float | None
    _kill_requested: bool
    _kill_error: BaseException | None
    _kill_grace: Shutdown | None
    _label: str | None

    def __init__(self) -> None:
        raise TypeError(
            "Task has no public constructor; get one from Pool.submit or TaskSupervisor.async_"
        )

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
        self = cls.__new__(cls)
        Future.__init__(self)
        self.id = task_id
        self.name = name
        self.attempts = 0
        self._owner = owner
        self._payload = payload
        self._options = options
        self._intensity = intensity
        # Monitor-owned state (guarded by the monitor's lock):
        self.priority = options.priority
        self.seq = task_id
        self.queued = False
        self._dispatched = False  # set_running_or_notify_cancel has been called
        self._worker = None
        self._pid = None
        self._deadline = None
        self._started_at = None
        self._kill_requested = False
        self._kill_error = None  # fail with this instead of CancelledError when stopped
        self._kill_grace = None  # overrides options.shutdown for one stop
        self._label = None  # "supervisor 'X'" in logs, for a supervisor's children
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
    def options(self) -> TaskOptions:
        """The per-task settings this task runs with (time-out, restart, ...)."""
        return self._options

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

    # -- called by the monitor, outside its lock -------------------------------

    def _force_cancel(self) -> bool:
        """Mark the task cancelled even if it was running (it has been stopped)."""
        with self._condition:
            if self._state in (FINISHED, CANCELLED_AND_NOTIFIED):
                return False
            already_cancelled = self._state == CANCELLED  # cancel() ran its callbacks
            self._state = CANCELLED_AND_NOTIFIED
            for waiter in self._waiters:
                waiter.add_cancelled(self)
            self._condition.notify_all()
        if not already_cancelled:
            self._invoke_callbacks()  # type: ignore[attr-defined]  # Future's own helper
        return True

    def _wait_stopped(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for the task to settle, ignoring its outcome."""
        with contextlib.suppress(CancelledError, TimeoutError):
            self.exception(timeout)


def on_monitor_thread(thread: threading.Thread | None) -> bool:
    """Whether the caller runs on ``thread`` (where blocking on a task would deadlock)."""
    return thread is threading.current_thread()

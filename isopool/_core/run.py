"""One run of a task on one worker, and a request to stop a task: the engine's records.

A ``Task`` is what its user holds (the future, its id, name, options, attempts, the
pid and usage of its last run). What the engine needs while the task is on a worker
lives here, apart, in a ``Run``: which worker, the call's number on that worker, its
phase, its clock (start, deadline) and whether it is being asked back. A run is made
when a task is written to a worker and dropped when that run ends, so a task that
waits in the pending queue, or is done, has no run at all. ``StopRequest`` is what
``kill()``, ``shutdown()`` and a supervisor's stop asked for: it outlives runs, since
a killed task must never run again.

Both are plain records: only the engine (``_machine``) reads and writes them, under
its monitor's lock. ``Runnable`` is what the engine needs of a task, so that the engine
never imports the API layer above it (``_task.Task`` is the one implementation).
"""

from __future__ import annotations

import enum
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from .._spec import ShutdownTimeout, TaskOptions

if TYPE_CHECKING:
    from .handle import WorkerHandle
    from .policy import RestartIntensity

__all__ = ["Answer", "Defer", "Revoke", "Run", "RunPhase", "Runnable", "Settle", "StopRequest"]

Defer = Callable[[Callable[[], object]], None]
"""Runs a callable later on another thread (the pool's resolver)."""
Settle = Callable[["Runnable"], tuple[object, BaseException | None]]
"""Turns a task's outcome into its (value, exception), unpickling it: may run user code."""


class Runnable(Protocol):
    """What the engine reads and writes on a task; ``_task.Task`` is the one kind.

    The fields are the engine's, guarded by its monitor's lock; the methods are the
    future's, thread-safe.
    """

    id: int
    name: str
    attempts: int  # how many runs started
    priority: int  # the pending queue's order: priority, then seq
    seq: int
    queued: bool  # in the pending queue (its removal is lazy)
    _payload: bytes  # the pickled call; dropped once it settled
    _run: Run | None
    _stop: StopRequest | None
    _pid: int | None
    _queued_at: float  # when submit() queued it (monotonic): its queue wait's start
    _usage: bytes | None  # its last run's USAGE trailer
    _label: str | None  # "supervisor 'X'" for a supervisor's children, in logs
    _intensity: RestartIntensity | None  # its supervisor's (or its own) restart budget
    _dispatched: bool  # set_running_or_notify_cancel has been called
    _raw: bool  # its outcome stays pickled (the shared queue's tasks)

    @property
    def options(self) -> TaskOptions:
        """Its per-task options."""

    def done(self) -> bool:
        """Whether its future is done."""

    def cancelled(self) -> bool:
        """Whether its future was cancelled."""

    def set_running_or_notify_cancel(self) -> bool:
        """``Future.set_running_or_notify_cancel``."""

    def _cancel_future(self) -> bool:
        """``Future.cancel`` alone: no take-back, no owner call."""

    def _finish(self, settle: Settle, is_error: bool, defer: Defer | None) -> bool:
        """Settle its future lazily with ``settle``; see ``_task.Task``."""

    def _force_cancel(self, defer: Defer | None = None) -> bool:
        """Cancel its future even though it runs (it was stopped)."""

    def _wait_stopped(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for it to settle, ignoring its outcome."""


class RunPhase(enum.Enum):
    """Where a run is on its worker."""

    QUEUED = "queued"  # written (or to be written) to the worker behind another call
    RUNNING = "running"  # the worker's head call: its clock (deadline, attempt) runs


class Revoke(enum.Enum):
    """Why a call written to a worker is being asked back (REVOKE) before it starts."""

    STEAL = "steal"  # a worker is idle: run it there instead (no attempt counted)
    KILL = "kill"  # Task.kill(): settle it now; stop the worker if it had started
    CANCEL = "cancel"  # Task.cancel(): cancel it if the worker hands it back


class Answer:
    """Where a waiting ``cancel()`` learns the worker's answer to its take-back."""

    __slots__ = ("event", "handed_back")

    def __init__(self) -> None:
        self.event = threading.Event()
        self.handed_back = False  # the worker will never start the call

    def give(self, handed_back: bool) -> None:
        """The answer came (or the worker died): record it and wake the waiter."""
        self.handed_back = handed_back
        self.event.set()


@dataclass(slots=True, eq=False)
class Run:
    """One run of a task: from being written to a worker until its outcome is known."""

    worker: WorkerHandle
    number: int  # its number among the calls written to that worker (REVOKE n)
    phase: RunPhase = RunPhase.QUEUED
    started_at: float | None = None  # monotonic; set when it became the head
    deadline: float | None = None  # started_at + its time-out, if it has one
    revoke: Revoke | None = None  # asked back, and why; None once answered
    answer: Answer | None = None  # a cancel() waiting for the worker's answer


@dataclass(slots=True, eq=False)
class StopRequest:
    """What a stop of a task asked for: ``kill()``, ``Task.shutdown()``, a supervisor."""

    error: BaseException | None = None  # fail with this instead of CancelledError
    grace: ShutdownTimeout | None = None  # overrides the task's ``shutdown`` option
    keep_reply: bool = False  # Task.shutdown: a reply that races the stop in is kept

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
its monitor's lock.
"""

from __future__ import annotations

import enum
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ._spec import ShutdownTimeout

if TYPE_CHECKING:
    from ._handle import WorkerHandle

__all__ = ["Answer", "Revoke", "Run", "RunPhase", "StopRequest"]


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

"""What one task cost: the ``Usage`` record a worker measures around each call.

The worker reads ``time.perf_counter`` and ``getrusage(RUSAGE_SELF)`` plus
``getrusage(RUSAGE_CHILDREN)`` just before and just after calling the task's function,
and sends the six numbers back in the reply's USAGE trailer (see ``_wire``). The
monitor keeps the trailer's 48 bytes on the Task and appends them to a buffer (no
unpacking, no object per reply on its hot path); ``Task.usage`` builds the frozen
record when it is asked for, and the pool folds the buffer into the sums of
``Pool.stats()`` every 1024 replies and whenever ``stats()`` is called.

How exact each figure is, for a benchmark user:

- the call alone is measured: not the unpickling of its arguments, nor the pickling
  of its result, nor the round trip;
- CPU and context switches cover every thread of the worker (the take-back watcher's
  idle thread adds nothing measurable) and the task's child processes **once they are
  reaped** (``waitpid``): a child still running or never waited for is not counted,
  and one reaped between calls (by a thread a task left running) counts in the next
  call that worker runs;
- the kernel accounts CPU time in ticks (and by sampling for short runs), so a call
  of a few milliseconds may show 0.0 or one tick;
- ``peak_rss`` is a high-water mark, never a delta: the largest resident set the
  worker process reached in its whole life so far (earlier tasks on the same worker
  included; a worker forked from the fork server starts near the server's size), or
  of its largest reaped child. With ``max_tasks_per_child=1`` each task has a fresh
  worker, so it is that task's own peak (plus the worker's start-up).
"""

from __future__ import annotations

from dataclasses import dataclass

from .wire import USAGE

__all__ = ["Usage", "usage_of"]


@dataclass(frozen=True, slots=True)
class Usage:
    """What one run of a task cost in its worker process and its children.

    Measured in the worker around the call of the task's function (not the
    (un)pickling around it), from ``getrusage(RUSAGE_SELF)`` plus
    ``getrusage(RUSAGE_CHILDREN)`` deltas. Children count only once they have been
    reaped. For a task that ran more than once (restarts, retries), the last run.

    Attributes:
        wall_seconds: Wall-clock seconds of the call (``time.perf_counter``).
        cpu_user_seconds: CPU seconds in user mode, of the worker and its reaped
            children, during the call (kernel tick resolution).
        cpu_system_seconds: CPU seconds in the kernel, likewise.
        peak_rss: Bytes: the high-water mark of the resident set of the worker
            process (over its whole life, earlier tasks included) or of its largest
            reaped child, whichever is larger. Not a delta. With
            ``max_tasks_per_child=1`` it is this task's own peak.
        voluntary_switches: Context switches because the task waited (I/O, locks,
            sleep), of the worker and its reaped children, during the call.
        involuntary_switches: Context switches because the kernel preempted it (a
            busy machine shows many), likewise.
    """

    wall_seconds: float
    cpu_user_seconds: float
    cpu_system_seconds: float
    peak_rss: int
    voluntary_switches: int
    involuntary_switches: int

    @property
    def cpu_seconds(self) -> float:
        """User plus system CPU seconds."""
        return self.cpu_user_seconds + self.cpu_system_seconds


def usage_of(trailer: bytes | None) -> Usage | None:
    """The Usage of a reply's USAGE trailer; None without one or when the call never ran."""
    if trailer is None:
        return None
    fields = USAGE.unpack(trailer)
    if fields[0] < 0:
        return None
    return Usage(*fields)

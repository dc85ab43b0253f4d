"""What the metrics count, in plain ints: histograms and the queue worker's job counters.

Why apart from ``_prometheus``: the monitor and the queue worker count on their hot
paths, and both must work without the optional ``prometheus_client`` installed. So the
counting is here, stdlib only, a few integer additions per task; ``_prometheus`` turns
these numbers into metric families only when Prometheus scrapes (its collectors
compute everything in ``collect()``).

- ``Histogram``: bucket counts and a sum, fed under a lock the caller already holds
  (the monitor's) or its own (``JobMetrics``).
- ``RunTimings``: a pool's task duration and queue wait histograms. A monitor has none
  until a collector asks for them (``Pool.metrics``), so a pool without metrics pays
  nothing but one ``is None`` test per start and per end of a run; with them, an
  ``array.append`` each, bucketed in batches.
- ``JobMetrics``: one ``QueueWorker``'s jobs by outcome and by stored result, their
  duration and queue wait, lease claims and Redis errors. Always on: a job costs a
  Redis round trip or more, next to which a few additions are nothing.
"""

from __future__ import annotations

import threading
from array import array
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Final

from .._errors import TaskCrashError, TaskTimeoutError

if TYPE_CHECKING:
    from concurrent.futures import Future

__all__ = [
    "DEFAULT_BUCKETS",
    "JOB_OUTCOMES",
    "JOB_RESULTS",
    "TASK_OUTCOMES",
    "Histogram",
    "JobMetrics",
    "RunTimings",
]

# Seconds: from half a millisecond (a tiny task's run is ~50 us, its queue wait on an
# idle pool about as short, so the first bucket holds them) to an hour, about 2.5x
# apart: 20 buckets cover what a process pool runs without a long tail of empty ones.
DEFAULT_BUCKETS: Final = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
    900.0,
    3600.0,
)

# The values of isopool_tasks_total's ``outcome`` label, and the Pool.stats() counter
# each one reads. A restarted task counts once per run that ended.
TASK_OUTCOMES: Final = (
    ("ok", "completed"),
    ("raised", "failed"),
    ("crashed", "crashed"),
    ("timed_out", "timed_out"),
    ("killed", "killed"),
    ("cancelled", "cancelled"),
)
# How a run of a job on this worker ended (isopool_jobs_total's ``outcome``).
JOB_OUTCOMES: Final = ("ok", "raised", "crashed", "timed_out", "cancelled")
# What the worker stored for a job (isopool_job_results_total's ``result``), by the
# FINISH script's status: done, failed, retry, dead, cancelled, release.
JOB_RESULTS: Final = ("done", "failed", "retried", "dead_lettered", "cancelled", "released")
_RESULT_OF_STATUS: Final = {
    "done": "done",
    "failed": "failed",
    "retry": "retried",
    "dead": "dead_lettered",
    "cancelled": "cancelled",
    "release": "released",
}


class Histogram:
    """Counts of observations per bucket, and their sum; not thread-safe by itself."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: Iterable[float] = DEFAULT_BUCKETS) -> None:
        self.bounds = tuple(sorted(bounds))
        self.counts = [0] * (len(self.bounds) + 1)  # the last one: above every bound
        self.sum = 0.0

    def observe(self, value: float) -> None:
        """Count ``value`` in the first bucket whose upper bound it does not exceed."""
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    def snapshot(self) -> tuple[tuple[float, ...], list[int], float]:
        """(bounds, per-bucket counts, sum), copied: the caller holds the lock."""
        return self.bounds, list(self.counts), self.sum

    def observe_many(self, values: array[float]) -> None:
        """Count every value of ``values`` as ``observe`` would, sorting them once.

        A value goes to the first bucket whose bound it does not exceed, so a bucket
        holds the sorted values after the previous bound's ``bisect_right`` up to
        its own: one C sort and a bisection per bound, no Python call per value.
        """
        if not values:
            return
        ordered = sorted(values)
        counts = self.counts
        below = 0
        for index, bound in enumerate(self.bounds):
            upto = bisect_right(ordered, bound, below)
            counts[index] += upto - below
            below = upto
        counts[-1] += len(ordered) - below
        self.sum += sum(ordered)


class RunTimings:
    """A pool's task histograms, fed by its monitor.

    ``duration``: seconds from a run's start (its call reached the head of a worker)
    to its end, whatever the outcome, for each run that started; ``queue_wait``:
    seconds from ``submit`` to the start of the task's first run.

    The monitor appends each value to ``durations`` or ``waits`` (one C call, no
    Python frame), after the step that matters to a waiting caller: a queue wait
    once the call is written to its worker, a duration once the future is settled
    (that one without the monitor's lock). ``fold``, under the lock, counts them into
    the histograms in batches: when ``durations`` holds ``FOLD_AT`` values, and at
    every snapshot.
    """

    __slots__ = ("duration", "durations", "queue_wait", "waits")
    FOLD_AT: Final = 4096

    def __init__(self) -> None:
        self.duration = Histogram()
        self.queue_wait = Histogram()
        self.durations: array[float] = array("d")
        self.waits: array[float] = array("d")

    def fold(self) -> None:
        """Count the values appended since the last fold into the histograms.

        Only the values it saw are taken out: one appended by another thread
        meanwhile (each append, slice and deletion is atomic under the GIL) stays for
        the next fold, never lost nor counted twice.
        """
        for values, histogram in ((self.durations, self.duration), (self.waits, self.queue_wait)):
            seen = len(values)
            histogram.observe_many(values[:seen])
            del values[:seen]


class JobMetrics:
    """What one ``QueueWorker`` counts about its jobs; thread-safe.

    The worker's loop calls one method per event; a collector reads ``snapshot()``
    from the HTTP server's thread.

    Args:
        queue: The queue's name (the bounded ``queue`` label).
        held: Returns how many jobs the worker holds now (running or finishing).
    """

    def __init__(self, queue: str, held: Callable[[], int]) -> None:
        self.queue = queue
        self._held = held
        self._lock = threading.Lock()
        self._outcomes = dict.fromkeys(JOB_OUTCOMES, 0)
        self._results = dict.fromkeys(JOB_RESULTS, 0)
        self._duration = Histogram()
        self._queue_wait = Histogram()
        self._claims = 0
        self._redis_errors = 0

    def started(self, entry: str, now_ms: int, claimed: bool) -> None:
        """A job's run starts; ``entry`` is its stream entry id (``ms-seq``).

        The queue wait is the time since the entry was added to its stream (the id's
        milliseconds, by Redis' clock): the enqueue of an immediate job, the move of a
        scheduled or retried job into the stream once due. A job claimed from a
        silent worker counts as a lease claim instead (its entry is as old as the
        first delivery).
        """
        with self._lock:
            if claimed:
                self._claims += 1
                return
            added_ms = int(entry.partition("-")[0])
            self._queue_wait.observe(max(0, now_ms - added_ms) / 1000)

    def finished(self, task: Future[Any], seconds: float) -> None:
        """A job's run ended after ``seconds`` on this worker (start to finish)."""
        if task.cancelled():
            outcome = "cancelled"
        else:
            exc = task.exception(0)
            if isinstance(exc, TaskCrashError):
                outcome = "crashed"
            elif isinstance(exc, TaskTimeoutError):
                outcome = "timed_out"
            elif exc is not None:
                outcome = "raised"
            else:
                outcome = "ok" if task.result(0)[0] in ("ok", "shutdown") else "raised"
        with self._lock:
            self._outcomes[outcome] += 1
            self._duration.observe(seconds)

    def stored(self, status: str) -> None:
        """The worker stored ``status`` for a job (FINISH's, or START's ``dead``)."""
        with self._lock:
            self._results[_RESULT_OF_STATUS[status]] += 1

    def redis_error(self) -> None:
        """A Redis call failed (the worker retries it)."""
        with self._lock:
            self._redis_errors += 1

    def snapshot(self) -> dict[str, Any]:
        """Every figure, copied under the lock."""
        held = self._held()
        with self._lock:
            return {
                "outcomes": dict(self._outcomes),
                "results": dict(self._results),
                "duration": self._duration.snapshot(),
                "queue_wait": self._queue_wait.snapshot(),
                "claims": self._claims,
                "redis_errors": self._redis_errors,
                "held": held,
            }

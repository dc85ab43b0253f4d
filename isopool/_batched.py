"""``Pool.map`` at chunksize 1, sent in batches: one frame and one Task per batch.

At chunksize 1 a Task per item costs the parent ~50 us of CPU (pickling, a Future,
the monitor's bookkeeping, a frame each way), where ``multiprocessing.Pool`` spends
~20 us: for tiny functions the overhead is the whole cost. So items go to a worker
in batches, sized from what the items cost: a batch holds about ``_BATCH_SECONDS``
of the function's measured run time (``Task.usage``), at most ``_BATCH_MAX`` items,
and batches start only once a first result has been measured (the first window runs
one item per task). Items that take a millisecond or more are still sent one by one.

What each item keeps, as at chunksize 1: its result in order, its own exception
(raised when its result is reached, with the values of the items before it in its
batch delivered first; ``_chunks.run_batch``), and crash isolation: a batch whose
worker dies is run again one item per task, so the crash fails its item alone.

What it gives up, so that it is used only where that is invisible:
- an item of a batch that crashed runs twice if it came before the crashing one, so
  after a crash, the rest of that map goes one item per task;
- an item whose exception cannot carry the earlier values (it refuses attributes, or
  pickles itself) is run a second time, alone, to raise it;
- items queued in one batch wait for each other (no take-back within a batch), which
  the size rule keeps under about a millisecond;
- per-task time-outs and restarts would apply to a batch, so with either option set,
  with ``buffersize`` (which counts tasks) or a ``chunksize`` above 1, ``map`` does not
  come here.
"""

from __future__ import annotations

import collections
import itertools
import math
import time
from collections.abc import Callable, Iterator
from typing import Any, Final

from ._core.chunks import BATCH_DONE, BatchStopped, run_batch
from ._errors import TaskCrashError
from ._progress import Progress
from ._task import Task

__all__ = ["batched_results"]

_BATCH_SECONDS: Final = 0.001  # the function's run time a batch should hold
_BATCH_MAX: Final = 64  # items per batch, at most: results keep streaming
_BATCHES_PER_WORKER: Final = 4  # with a known length, at least this many batches each
_EMA: Final = 0.3  # weight of the newest batch in the per-item time estimate

Submit = Callable[[Callable[..., object] | str, tuple[Any, ...]], Task[Any]]
_Entry = tuple[Task[Any], list[tuple[Any, ...]] | None]  # a task, and its batch (or None)


class _Sizer:
    """How many items the next batch gets, from the per-item run time seen so far."""

    __slots__ = ("cap", "per_item")

    def __init__(self, total: int | None, workers: int) -> None:
        self.per_item: float | None = None  # seconds of the function per item
        self.cap = _BATCH_MAX
        if total is not None:
            self.cap = max(1, min(_BATCH_MAX, math.ceil(total / (workers * _BATCHES_PER_WORKER))))

    def size(self) -> int:
        if self.per_item is None:
            return 1
        return max(1, min(self.cap, int(_BATCH_SECONDS / max(self.per_item, 1e-9))))

    def measured(self, task: Task[Any], items: int) -> None:
        usage = task.usage
        if usage is None or usage.wall_seconds < 0:
            return
        per_item = usage.wall_seconds / items
        old = self.per_item
        self.per_item = per_item if old is None else (1 - _EMA) * old + _EMA * per_item

    def stop(self) -> None:
        """One item per task from now on (after a crash)."""
        self.cap = 1


def batched_results(
    submit: Submit,
    fn: Callable[..., object] | str,
    calls: Iterator[tuple[Any, ...]],
    window: int,
    end_time: float | None,
    bar: Progress | None,
    total: int | None,
    workers: int,
) -> Iterator[Any]:
    """Start ``map``'s first window of tasks now and return its result iterator."""
    sizer = _Sizer(total, workers)

    def submit_next() -> _Entry | None:
        size = sizer.size()
        if size == 1:
            args = next(calls, None)
            return None if args is None else (submit(fn, args), None)
        batch = list(itertools.islice(calls, size))
        if not batch:
            return None
        if len(batch) == 1:
            return submit(fn, batch[0]), None
        return submit(run_batch, (fn, batch)), batch

    in_flight: collections.deque[_Entry] = collections.deque()
    while len(in_flight) < window and (entry := submit_next()) is not None:
        in_flight.append(entry)
    return _results(in_flight, submit_next, submit, fn, sizer, end_time, bar)


def _results(
    in_flight: collections.deque[_Entry],
    submit_next: Callable[[], _Entry | None],
    submit: Submit,
    fn: Callable[..., object] | str,
    sizer: _Sizer,
    end_time: float | None,
    bar: Progress | None,
) -> Iterator[Any]:
    """Yield every item's result in order, refilling the window as results are taken.

    Holds no reference to a value once it is yielded (see ``_pool._map_results``).
    """
    exhausted = False
    try:
        while in_flight:
            if not exhausted:
                more = submit_next()
                if more is None:
                    exhausted = True
                else:
                    in_flight.append(more)
                del more  # a Task, later holding a result: not this frame's to keep
            if in_flight[0][1] is None:
                yield _take_one(in_flight, sizer, end_time, bar)  # no local holds it
                continue
            task, batch = in_flight.popleft()
            assert batch is not None  # checked just above
            try:
                reply = _take(task, end_time, bar, len(batch))
            except TaskCrashError:
                # Which item crashed is unknown: run each one again on its own, ahead
                # of the rest, so the crash fails its item alone.
                sizer.stop()
                in_flight.extendleft(reversed([(submit(fn, args), None) for args in batch]))
                continue
            except BaseException as exc:
                done = getattr(exc, "__dict__", {}).pop(BATCH_DONE, None)
                if done:
                    if bar is not None:
                        bar.add("ok", len(done))
                    done.reverse()
                    while done:
                        yield done.pop()
                raise
            sizer.measured(task, len(batch))
            del task
            values: list[Any] = reply.values if isinstance(reply, BatchStopped) else reply
            del reply
            if len(values) < len(batch):
                # An item raised an exception that could not carry the values before
                # it: deliver those, then run that item and the rest on their own.
                rest = batch[len(values) :]
                in_flight.extendleft(reversed([(submit(fn, args), None) for args in rest]))
            if bar is not None:
                bar.add("ok", len(values))
            values.reverse()
            while values:
                yield values.pop()
    finally:
        for task, _batch in in_flight:
            task._cancel_nowait()
        if bar is not None:
            bar.close()


def _take_one(
    in_flight: collections.deque[_Entry],
    sizer: _Sizer,
    end_time: float | None,
    bar: Progress | None,
) -> Any:  # noqa: ANN401 - a task's value
    """Pop the oldest entry, a task of one item, and return its value.

    Popped here so that the caller's frame never holds the Task (which holds the
    value) while the value is yielded.
    """
    task = in_flight.popleft()[0]
    value = _take(task, end_time, bar, 1)
    sizer.measured(task, 1)
    if bar is not None:
        bar.add("ok", 1)
    return value


def _take(task: Task[Any], end_time: float | None, bar: Progress | None, batch: int) -> Any:  # noqa: ANN401 - a task's value
    """``task``'s result; cancel it if that raises (a time-out), as the stdlib does.

    A batch's crash (``batch`` > 1 items) is the caller's to handle: it is not counted.
    """
    try:
        return task.result() if end_time is None else task.result(end_time - time.monotonic())
    except BaseException as exc:
        if batch > 1 and isinstance(exc, TaskCrashError):
            raise
        task.cancel()
        if bar is not None and task.done():
            bar.finished(task, batch)
        raise

"""The in-process queues of waiting tasks: pending (by priority, then FIFO) and delayed.

Not thread-safe: the monitor's lock guards them. Removal is lazy (an entry is
skipped when popped), so cancelling a waiting task is O(1); the counts are exact all
the same (``len`` is what ``Pool.stats()`` reports as pending), and the dead entries
are swept out once they outnumber the live ones, so a queue whose tasks are cancelled
faster than workers pop it does not keep their Tasks alive.
"""

from __future__ import annotations

import heapq
import math
from typing import Final, Generic, Protocol, TypeVar

__all__ = ["DelayedQueue", "PendingQueue", "Queued"]


class Queued(Protocol):
    """What the queue needs of an item: its priority, its place, and a live flag."""

    priority: int
    seq: int
    queued: bool


T = TypeVar("T", bound=Queued)

# Sweep dead entries when there are more than this many and more than live ones: the
# sweep is O(n), so doing it only past twice the live count keeps removal amortized O(1).
_SWEEP_MIN: Final = 64


class PendingQueue(Generic[T]):
    """A priority queue of items that keep their submission order within a priority.

    An item re-queued after its worker died keeps its original ``seq``, so it goes
    back ahead of everything submitted after it.

    Example:
        >>> class Item:
        ...     def __init__(self, priority, seq):
        ...         self.priority, self.seq, self.queued = priority, seq, False
        >>> q = PendingQueue()
        >>> for item in (Item(5, 1), Item(0, 2), Item(5, 3)):
        ...     q.push(item)
        >>> [q.pop().seq for _ in range(3)]
        [2, 1, 3]
    """

    __slots__ = ("_heap", "_live")

    def __init__(self) -> None:
        self._heap: list[tuple[int, int, T]] = []
        self._live = 0

    def __len__(self) -> int:
        return self._live

    def push(self, item: T) -> None:
        """Queue ``item`` by its priority and seq."""
        item.queued = True
        self._live += 1
        heapq.heappush(self._heap, (item.priority, item.seq, item))

    def pop(self) -> T | None:
        """Remove and return the most urgent live item, or None when empty."""
        heap = self._heap
        while heap:
            item = heapq.heappop(heap)[2]
            if item.queued:
                item.queued = False
                self._live -= 1
                return item
        return None

    def remove(self, item: T) -> bool:
        """Take ``item`` out of the queue; return whether it was queued."""
        if not item.queued:
            return False
        item.queued = False
        self._live -= 1
        dead = len(self._heap) - self._live
        if dead > _SWEEP_MIN and dead > self._live:
            self._heap = [entry for entry in self._heap if entry[2].queued]
            heapq.heapify(self._heap)
        return True

    def drain(self) -> list[T]:
        """Remove and return every live item, most urgent first."""
        items = []
        while (item := self.pop()) is not None:
            items.append(item)
        self._heap.clear()
        return items


class DelayedQueue(Generic[T]):
    """Items waiting until a due time (restarts backing off), soonest first.

    An item in it counts as queued (``item.queued``), so the pending queue's lazy
    removal rules apply: ``remove`` marks it, ``release`` skips it.
    """

    __slots__ = ("_heap", "_live")

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, T]] = []
        self._live = 0

    def __len__(self) -> int:
        return self._live

    def push(self, due: float, item: T) -> None:
        """Hold ``item`` until ``due`` (a monotonic time)."""
        item.queued = True
        self._live += 1
        heapq.heappush(self._heap, (due, item.seq, item))

    def remove(self, item: T) -> bool:
        """Take ``item`` out; return whether it was waiting here."""
        if not item.queued or not any(entry[2] is item for entry in self._heap):
            return False
        item.queued = False
        self._live -= 1
        return True

    def next_due(self) -> float:
        """When the soonest item is due, or infinity."""
        return self._heap[0][0] if self._heap else math.inf

    def release(self, now: float) -> list[T]:
        """Remove and return the live items due by ``now``, marked not queued."""
        released = []
        while self._heap and self._heap[0][0] <= now:
            item = heapq.heappop(self._heap)[2]
            if item.queued:
                item.queued = False
                self._live -= 1
                released.append(item)
        return released

    def drain(self) -> list[T]:
        """Remove and return every live item."""
        items = [entry[2] for entry in sorted(self._heap) if entry[2].queued]
        for item in items:
            item.queued = False
        self._heap.clear()
        self._live = 0
        return items

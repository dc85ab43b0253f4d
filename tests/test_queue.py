"""The pending-task queue: lowest priority number first, then first-in, first-out."""

from __future__ import annotations

import gc
import itertools
import weakref

from isopool._core.queue import DelayedQueue, PendingQueue

_seqs = itertools.count(1)


class Item:
    """A queued thing with what PendingQueue needs: priority, seq and a live flag."""

    def __init__(self, priority: int, name: str = "") -> None:
        self.priority = priority
        self.seq = next(_seqs)
        self.queued = False
        self.name = name

    def __repr__(self) -> str:
        return f"Item({self.priority}, {self.name!r})"


def pop_all(queue: PendingQueue[Item]) -> list[Item]:
    items = []
    while (item := queue.pop()) is not None:
        items.append(item)
    return items


def test_pop_empty_queue_returns_none():
    """Popping an empty queue gives None."""
    assert PendingQueue().pop() is None


def test_pop_returns_lowest_priority_number_first():
    """Priority 0 is the most urgent."""
    queue: PendingQueue[Item] = PendingQueue()
    items = [Item(p) for p in (9, 0, 5, 3)]
    for item in items:
        queue.push(item)
    assert [item.priority for item in pop_all(queue)] == [0, 3, 5, 9]


def test_pop_equal_priorities_come_out_fifo():
    """Within one priority, items leave in the order they were pushed."""
    queue: PendingQueue[Item] = PendingQueue()
    items = [Item(5, str(i)) for i in range(10)]
    for item in items:
        queue.push(item)
    assert pop_all(queue) == items


def test_pop_mixed_priorities_order_by_priority_then_fifo():
    """Priority first, then submission order."""
    queue: PendingQueue[Item] = PendingQueue()
    a, b, c, d, e = Item(5, "a"), Item(1, "b"), Item(5, "c"), Item(1, "d"), Item(0, "e")
    for item in (a, b, c, d, e):
        queue.push(item)
    assert pop_all(queue) == [e, b, d, a, c]


def test_push_and_pop_track_the_queued_flag():
    """push marks an item queued; pop clears the mark."""
    queue: PendingQueue[Item] = PendingQueue()
    item = Item(5)
    queue.push(item)
    assert item.queued
    assert queue.pop() is item
    assert not item.queued


def test_len_counts_live_items():
    """len() is the number of items waiting."""
    queue: PendingQueue[Item] = PendingQueue()
    items = [Item(5) for _ in range(3)]
    for item in items:
        queue.push(item)
    assert len(queue) == 3
    queue.pop()
    assert len(queue) == 2


def test_requeued_item_keeps_its_place_ahead_of_later_items():
    """An item pushed again keeps its seq, so it goes before items submitted after it."""
    queue: PendingQueue[Item] = PendingQueue()
    first, later = Item(5, "first"), Item(5, "later")
    queue.push(first)
    queue.push(later)
    assert queue.pop() is first
    queue.push(first)  # its worker died before it started
    assert pop_all(queue) == [first, later]


def test_remove_takes_the_item_out():
    """A removed item is never popped and no longer counted."""
    queue: PendingQueue[Item] = PendingQueue()
    keep, drop = Item(5, "keep"), Item(0, "drop")
    queue.push(keep)
    queue.push(drop)
    assert queue.remove(drop)
    assert not drop.queued
    assert len(queue) == 1
    assert pop_all(queue) == [keep]


def test_remove_twice_returns_false():
    """Removing an item that is no longer queued returns False."""
    queue: PendingQueue[Item] = PendingQueue()
    item = Item(5)
    queue.push(item)
    assert queue.remove(item)
    assert not queue.remove(item)
    assert len(queue) == 0


def test_remove_never_queued_item_returns_false():
    """Removing an item that was never pushed returns False and changes nothing."""
    queue: PendingQueue[Item] = PendingQueue()
    queue.push(Item(5))
    assert not queue.remove(Item(5))
    assert len(queue) == 1


def test_remove_popped_item_returns_false():
    """An item already popped cannot be removed."""
    queue: PendingQueue[Item] = PendingQueue()
    item = Item(5)
    queue.push(item)
    queue.pop()
    assert not queue.remove(item)
    assert len(queue) == 0


def test_removed_item_can_be_pushed_again():
    """A removed item may be queued again and is then popped once."""
    queue: PendingQueue[Item] = PendingQueue()
    item = Item(5)
    queue.push(item)
    queue.remove(item)
    queue.push(item)
    assert len(queue) == 1
    assert pop_all(queue) == [item]


def test_drain_returns_every_live_item_most_urgent_first():
    """drain empties the queue, skipping removed items, in pop order."""
    queue: PendingQueue[Item] = PendingQueue()
    a, b, c, d = Item(5, "a"), Item(0, "b"), Item(5, "c"), Item(2, "d")
    for item in (a, b, c, d):
        queue.push(item)
    queue.remove(c)
    assert queue.drain() == [b, d, a]
    assert len(queue) == 0
    assert queue.pop() is None
    assert not any(item.queued for item in (a, b, c, d))


def test_drain_empty_queue_returns_empty_list():
    """Draining an empty queue gives an empty list."""
    assert PendingQueue().drain() == []


def test_queue_after_drain_takes_new_items():
    """A drained queue works as new."""
    queue: PendingQueue[Item] = PendingQueue()
    queue.push(Item(5))
    queue.drain()
    item = Item(1)
    queue.push(item)
    assert len(queue) == 1
    assert queue.pop() is item


def test_len_leaves_out_removed_items_at_once():
    """len() drops a removed item at once, before any pop reaches its entry."""
    queue: PendingQueue[Item] = PendingQueue()
    items = [Item(5) for _ in range(5)]
    for item in items:
        queue.push(item)
    for item in items[:3]:
        queue.remove(item)
    assert len(queue) == 2


def test_removed_items_are_not_kept_alive_by_the_heap():
    """Dead entries are swept once they outnumber live ones: removed items are freed."""
    queue: PendingQueue[Item] = PendingQueue()
    items = [Item(5) for _ in range(200)]
    for item in items:
        queue.push(item)
    refs = [weakref.ref(item) for item in items[:150]]
    for item in items[:150]:
        queue.remove(item)
    del items[:150], item
    gc.collect()
    assert sum(ref() is not None for ref in refs) <= 64
    assert len(pop_all(queue)) == 50


def test_delayed_len_counts_live_items_only():
    """DelayedQueue's len() leaves out removed and released items."""
    delayed: DelayedQueue[Item] = DelayedQueue()
    a, b, c = Item(5, "a"), Item(5, "b"), Item(5, "c")
    delayed.push(1.0, a)
    delayed.push(2.0, b)
    delayed.push(3.0, c)
    assert len(delayed) == 3
    assert delayed.remove(b)
    assert len(delayed) == 2
    assert delayed.release(1.5) == [a]
    assert len(delayed) == 1
    assert bool(delayed)
    assert delayed.drain() == [c]
    assert len(delayed) == 0
    assert not delayed

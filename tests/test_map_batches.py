"""``Pool.map`` at chunksize 1 sends tiny items in batches, and each item keeps its fate.

Batches (``isopool._batched``) must be invisible: results in order, an exception
raised at its own item after the values before it, a crash failing its item alone.
The task functions live here, importable by the workers as ``tests.test_map_batches``.
"""

from __future__ import annotations

import dataclasses
import os

import pytest

import isopool


def square(x):
    return x * x


def fail_at(x, bad):
    if x == bad:
        raise ValueError(f"bad item {x}")
    return x


@dataclasses.dataclass(frozen=True)
class FrozenError(Exception):
    """An exception that refuses new attributes, as a frozen dataclass does."""

    item: int


def fail_frozen_at(x, bad):
    if x == bad:
        raise FrozenError(x)
    return x


def exit_at(x, bad):
    if x == bad:
        os._exit(3)
    return x


def take_all(iterator, into):
    """Append every value of ``iterator`` to ``into`` until it raises."""
    for value in iterator:
        into.append(value)


@pytest.fixture
def pool():
    with isopool.Pool(2) as pool:
        yield pool


def test_map_tiny_items_keep_input_order_in_fewer_tasks(pool):
    """2,000 tiny items come back in order, sent as far fewer than 2,000 tasks."""
    assert list(pool.map(square, range(2000), timeout=60)) == [x * x for x in range(2000)]
    assert pool.stats()["submitted"] < 1000


def test_map_batched_exception_raises_at_its_item_after_the_earlier_values(pool):
    """An item's exception is raised when its result is reached, after every earlier value."""
    seen = []
    results = pool.map(fail_at, range(1000), [700] * 1000, timeout=60)
    with pytest.raises(ValueError, match="bad item 700"):
        take_all(results, seen)
    assert seen == list(range(700))


def test_map_batched_exception_refusing_attributes_raises_at_its_item(pool):
    """An exception that cannot carry the batch's earlier values still comes at its item."""
    seen = []
    results = pool.map(fail_frozen_at, range(1000), [600] * 1000, timeout=60)
    with pytest.raises(FrozenError) as caught:
        take_all(results, seen)
    assert caught.value.item == 600
    assert seen == list(range(600))


def test_map_batched_crash_fails_its_item_alone(pool):
    """A worker dying in a batch fails the item that killed it; the earlier items return."""
    seen = []
    results = pool.map(exit_at, range(1000), [500] * 1000, timeout=60)
    with pytest.raises(isopool.TaskCrashError):
        take_all(results, seen)
    assert seen == list(range(500))
    assert pool.submit(square, 3).result(timeout=60) == 9


def test_map_with_a_task_timeout_sends_one_task_per_item(pool):
    """With a per-task time-out, which would bind a whole batch, every item is its own task."""
    assert list(pool.options(timeout=60).map(square, range(300), timeout=60)) == [
        x * x for x in range(300)
    ]
    assert pool.stats()["submitted"] == 300

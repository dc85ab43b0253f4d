"""Fixtures: pools that are always shut down, and a check that no process leaks."""

from __future__ import annotations

import contextlib
import gc
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import isopool
from isopool import _pool as pool_module


def descendants(root: int | None = None) -> set[int]:
    """Every live descendant pid of ``root`` (default: this process), from /proc."""
    root = os.getpid() if root is None else root
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The command name may contain spaces and parentheses: split after the last ')'.
        fields = stat[stat.rfind(")") + 2 :].split()
        state, ppid = fields[0], int(fields[1])
        if state == "Z":
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    found: set[int] = set()
    stack = [root]
    while stack:
        for child in children.get(stack.pop(), []):
            if child not in found:
                found.add(child)
                stack.append(child)
    return found


def wait_for(predicate, timeout: float = 10.0, interval: float = 0.02) -> bool:
    """Poll ``predicate`` until it is true or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.fixture(autouse=True)
def no_orphans() -> Iterator[None]:
    """Fail a test that leaves any child process of the test runner behind."""
    before = descendants()
    yield
    if wait_for(lambda: not (descendants() - before), timeout=10.0):
        return
    leaked = descendants() - before
    for pid in leaked:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    pytest.fail(f"processes left behind by the test: {sorted(leaked)}")


@pytest.fixture
def fresh_default_pool() -> Iterator[None]:
    """Terminate the default pool after the test, before no_orphans looks for leaks.

    Use it with ``pytest.mark.usefixtures``: set up after the autouse no_orphans, it
    is torn down before it. A killed task's worker is replaced by a new process, so
    a default pool kept across tests would look like a leak.
    """
    yield
    default = pool_module._default_pool
    if default is not None:
        default.terminate()
    # Finalize this test's tasks now, in the main thread: a Task's __del__ may log a
    # traceback, and formatting one in another thread while pytest parses source can
    # hit CPython 3.11's thread-unsafe AST recursion counter (gh-106905).
    gc.collect()


def started(task: isopool.Task, timeout: float = 10.0) -> int:
    """Wait until ``task`` runs in a worker; return that worker's pid."""
    assert wait_for(lambda: task.pid is not None, timeout=timeout), f"{task!r} never started"
    assert task.pid is not None
    return task.pid


@pytest.fixture
def pool() -> Iterator[isopool.Pool]:
    """A two-worker pool, terminated after the test whatever happened."""
    p = isopool.Pool(2)
    try:
        yield p
    finally:
        p.terminate()


@pytest.fixture
def one_worker() -> Iterator[isopool.Pool]:
    """A one-worker pool, terminated after the test."""
    p = isopool.Pool(1)
    try:
        yield p
    finally:
        p.terminate()


@pytest.fixture
def make_pool() -> Iterator[Callable[..., isopool.Pool]]:
    """A factory of isopool pools with any options, all terminated at teardown."""
    made: list[isopool.Pool] = []

    def make(*args: Any, **kwargs: Any) -> isopool.Pool:
        pool = isopool.Pool(*args, **kwargs)
        made.append(pool)
        return pool

    yield make
    for pool in made:
        pool.terminate()


# The Redis fixtures (redis_server, redis_factory, queues, processes) live in tests/_redis.py.
pytest_plugins = ("tests._redis",)

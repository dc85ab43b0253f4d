"""Initializers, tasks and checks for multiprocessing objects passed to a pool's workers.

``keep`` is the initializer: it stores ``initargs`` in ``SHARED`` for the tasks. Each
entry of ``KINDS`` makes one kind of object from a multiprocessing context and checks,
through a pool whose initializer kept it, that the workers share it with the parent.
The same checks run in the test process (forkserver-context objects) and in a fresh
script (default-context objects, which need the forked fork server).
"""

from __future__ import annotations

import logging
import logging.handlers
import multiprocessing
import os
from collections.abc import Callable
from typing import Any

WAIT = 30.0  # seconds any wait in a check may take before the check fails

SHARED: list[Any] = []


def keep(*objects: object) -> None:
    """Initializer: keep the pool's shared objects for this worker's tasks."""
    SHARED[:] = objects


def call(index: int, method: str, *args: object) -> object:
    """Call ``method`` on the ``index``-th kept object; return what it returns."""
    return getattr(SHARED[index], method)(*args)


def try_acquire(index: int) -> bool:
    """Try to take the kept lock or semaphore without blocking; release it if taken."""
    taken = SHARED[index].acquire(False)
    if taken:
        SHARED[index].release()
    return bool(taken)


def notify(index: int) -> int:
    """Notify the kept Condition's waiters, under its lock."""
    with SHARED[index]:
        SHARED[index].notify_all()
    return os.getpid()


def increment(index: int) -> int:
    """Add one to the kept synchronized Value, under its lock."""
    value = SHARED[index]
    with value.get_lock():
        value.value += 1
    return os.getpid()


def set_item(index: int, position: int, item: int) -> int:
    """Set one element of the kept Array."""
    SHARED[index][position] = item
    return os.getpid()


def put_pid(index: int) -> int:
    """Put this worker's pid on the kept queue."""
    SHARED[index].put(os.getpid())
    return os.getpid()


def get_and_done(index: int) -> object:
    """Take one item from the kept JoinableQueue and mark it done."""
    item = SHARED[index].get(timeout=WAIT)
    SHARED[index].task_done()
    return item


def size(index: int) -> int:
    """Return len() of the kept object."""
    return len(SHARED[index])


def authkey() -> bytes:
    """Return this worker's multiprocessing authkey."""
    return bytes(multiprocessing.current_process().authkey)


def configure_logging(queue: Any) -> None:
    """Initializer of the logging cookbook: send every record to ``queue``."""
    root = logging.getLogger()
    root.handlers[:] = [logging.handlers.QueueHandler(queue)]
    root.setLevel(logging.INFO)


def log_message(message: str) -> int:
    """Log ``message`` at WARNING from this worker; return its pid."""
    logging.getLogger("isopool.tests.worker").warning(message)
    return os.getpid()


def inheritable_fds() -> list[int]:
    """Return this worker's descriptors above stderr that an exec would inherit."""
    found = []
    for name in os.listdir("/proc/self/fd"):
        try:
            if int(name) > 2 and os.get_inheritable(int(name)):
                found.append(int(name))
        except OSError:  # the listing's own descriptor, closed by now
            pass
    return found


def manager_dict_set(d: Any, key: str) -> int:
    """Store this worker's pid under ``key`` in a managed dict."""
    d[key] = os.getpid()
    return os.getpid()


def manager_dict_set_kept(key: str) -> int:
    """Store this worker's pid under ``key`` in the managed dict the initializer kept."""
    return manager_dict_set(SHARED[0], key)


def manager_list_append(items: Any) -> int:
    """Append this worker's pid to a managed list."""
    items.append(os.getpid())
    return os.getpid()


def manager_queue_put(queue: Any) -> int:
    """Put this worker's pid on a managed queue."""
    queue.put(os.getpid())
    return os.getpid()


def manager_lock_try(lock: Any) -> bool:
    """Try to take a managed lock without blocking; release it if taken."""
    taken = lock.acquire(False)
    if taken:
        lock.release()
    return bool(taken)


# -- one check per kind: make(ctx) -> object; check(pool, obj) raises if not shared ----


def _check_held(pool: Any, lock: Any) -> None:
    lock.acquire()
    try:
        assert not pool.submit(try_acquire, 0).result(timeout=WAIT), "the parent holds it"
    finally:
        lock.release()
    assert pool.submit(try_acquire, 0).result(timeout=WAIT), "released by the parent"


def _check_event(pool: Any, event: Any) -> None:
    pool.submit(call, 0, "set").result(timeout=WAIT)
    assert event.wait(WAIT)


def _check_condition(pool: Any, cond: Any) -> None:
    with cond:  # the worker cannot notify before we wait: it needs this lock
        task = pool.submit(notify, 0)
        assert cond.wait(WAIT)
    task.result(timeout=WAIT)


def _check_barrier(pool: Any, barrier: Any) -> None:
    tasks = [pool.submit(call, 0, "wait", WAIT) for _ in range(barrier.parties)]
    assert sorted(t.result(timeout=WAIT) for t in tasks) == list(range(barrier.parties))


def _check_queue(pool: Any, queue: Any) -> None:
    pids = {pool.submit(put_pid, 0).result(timeout=WAIT) for _ in range(4)}
    got = {queue.get(timeout=WAIT) for _ in range(4)}
    assert got == pids


def _check_joinable_queue(pool: Any, queue: Any) -> None:
    for item in range(3):
        queue.put(item)
    got = sorted(pool.submit(get_and_done, 0).result(timeout=WAIT) for _ in range(3))
    assert got == [0, 1, 2]
    pool.submit(call, 0, "join").result(timeout=WAIT)  # every item was marked done


def _check_simple_queue(pool: Any, queue: Any) -> None:
    queue.put("from the parent")
    assert pool.submit(call, 0, "get").result(timeout=WAIT) == "from the parent"


def _check_value(pool: Any, value: Any) -> None:
    for task in [pool.submit(increment, 0) for _ in range(6)]:
        task.result(timeout=WAIT)
    assert value.value == 6


def _check_array(pool: Any, array: Any) -> None:
    for task in [pool.submit(set_item, 0, i, 10 + i) for i in range(len(array))]:
        task.result(timeout=WAIT)
    assert list(array) == [10 + i for i in range(len(array))]


def _check_pipe(pool: Any, pair: Any) -> None:
    reader, _writer = pair
    pool.submit(call, 1, "send", "through the pipe").result(timeout=WAIT)
    assert reader.poll(WAIT)
    assert reader.recv() == "through the pipe"


KINDS: dict[str, tuple[Callable[[Any], Any], Callable[[Any, Any], None]]] = {
    "Lock": (lambda ctx: ctx.Lock(), _check_held),
    "RLock": (lambda ctx: ctx.RLock(), _check_held),
    "Semaphore": (lambda ctx: ctx.Semaphore(1), _check_held),
    "BoundedSemaphore": (lambda ctx: ctx.BoundedSemaphore(1), _check_held),
    "Event": (lambda ctx: ctx.Event(), _check_event),
    "Condition": (lambda ctx: ctx.Condition(), _check_condition),
    "Barrier": (lambda ctx: ctx.Barrier(2), _check_barrier),
    "Queue": (lambda ctx: ctx.Queue(), _check_queue),
    "JoinableQueue": (lambda ctx: ctx.JoinableQueue(), _check_joinable_queue),
    "SimpleQueue": (lambda ctx: ctx.SimpleQueue(), _check_simple_queue),
    "Value": (lambda ctx: ctx.Value("i", 0), _check_value),
    "Array": (lambda ctx: ctx.Array("i", 4), _check_array),
    "Pipe": (lambda ctx: ctx.Pipe(), _check_pipe),
}


def run_check(kind: str, ctx: Any, **pool_options: Any) -> None:
    """Make a ``kind`` object from ``ctx``, pass it through ``initargs`` and check it.

    Each task runs in a new worker (``max_tasks_per_child=1``), so the check also
    proves that workers started as replacements get the object.
    """
    import isopool

    make, check = KINDS[kind]
    obj = make(ctx)
    initargs = tuple(obj) if kind == "Pipe" else (obj,)
    options = {"max_tasks_per_child": 1, **pool_options}
    with isopool.Pool(2, initializer=keep, initargs=initargs, **options) as pool:
        check(pool, obj)

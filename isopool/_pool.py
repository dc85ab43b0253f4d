"""Pool: the crash-isolating ``concurrent.futures.Executor``.

``Pool`` is the public face; the work is done by its ``Monitor`` (see ``_monitor``
for the data flow). This module validates arguments, keeps the Executor contract
(``submit``, ``map``, ``shutdown``, the context manager) and ties pools to the
interpreter's exit::

    user thread                       Pool                  Monitor (+ its thread)
    submit(fn, *args)  -->  validate, pickle  -->  queue, dispatch  --> workers
    map(fn, items)     -->  a window of submits, refilled as results are taken
    shutdown()/with    -->  CLOSING: finish queued work, retire workers, CLOSED
    terminate()        -->  cancel queued, stop running tasks (cancelled), wait, CLOSED
    terminate_workers()/kill_workers()  (Python 3.14's, on every Python)
                       -->  cancel queued, SIGTERM/SIGKILL every worker, return at
                            once; running tasks fail with TaskCrashError, CLOSED
    Ctrl-C in `with`   -->  terminate

At interpreter exit, a pool that was not shut down finishes its queued work (as
``ProcessPoolExecutor`` does), unless the program is exiting because of Ctrl-C, in
which case its tasks are stopped at once.
"""

from __future__ import annotations

import collections
import itertools
import signal
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor
from multiprocessing.context import BaseContext
from typing import TYPE_CHECKING, Any, Final, ParamSpec, TypeVar, overload

from ._batched import batched_results
from ._core.chunks import run_chunk, run_chunk_of_one
from ._core.monitor import Monitor, State
from ._core.policy import RestartIntensity
from ._core.process import ForkServer, is_single_threaded
from ._core.share import InitPayload, dumps_initializer
from ._errors import PoolClosedError
from ._progress import Progress, make_progress, total_of
from ._spec import (
    TaskOptions,
    check_buffersize,
    check_cpus,
    check_max_workers,
    check_positive_int,
    check_seconds,
    check_wait,
    resolve_function,
)
from ._task import Task

if TYPE_CHECKING:
    from prometheus_client.registry import CollectorRegistry

__all__ = ["Pool", "PoolOptions", "at_exit", "default_pool"]

P = ParamSpec("P")
R = TypeVar("R")

# map() keeps at most this many calls per worker in flight: enough to keep pipelined
# workers busy, few enough that an endless iterable never piles up in memory.
_MAP_WINDOW_PER_WORKER: Final = 32
_TERMINATE_TIMEOUT: Final = 30.0

_pool_ids = itertools.count(1)
_live_monitors: weakref.WeakSet[Monitor] = weakref.WeakSet()
_exit_hook_lock = threading.Lock()
_exit_hook_registered = False
_exit_callbacks: list[Callable[[], None]] = []
# Set first thing at interpreter exit, as concurrent.futures' _global_shutdown: from
# then on submit() raises, even on a pool that is still running (one made in an
# atexit hook), with the stdlib's message.
_interpreter_exiting = False
_default_pool: Pool | None = None
_default_lock = threading.Lock()


class Pool(Executor):
    """A pool of worker processes where one task's crash fails that task alone.

    A drop-in ``concurrent.futures.ProcessPoolExecutor``: ``submit``, ``map``,
    ``shutdown`` and the context manager keep the stdlib's signatures and
    semantics, and return ``Future`` objects (``isopool.Task``). Unlike the stdlib,
    a worker that segfaults, calls ``os._exit``, is OOM-killed or is SIGKILLed from
    outside fails exactly the task it was running (``TaskCrashError``, also a
    ``BrokenProcessPool``); every other task completes and the worker is replaced.

    Each task runs in a worker process forked from a single-threaded fork server,
    never in the caller. Calls and results travel with pickle, or cloudpickle when
    needed, so lambdas, closures and functions defined in ``__main__`` work. A
    function may also be named ``"package.module:function"``.

    Thread-safe: any thread may submit, kill tasks or shut the pool down.

    Args:
        max_workers: Worker processes; defaults to loky's ``cpu_count()``, which
            honours cgroup CPU quotas and the process's CPU affinity.
        mp_context: Accepted for ``ProcessPoolExecutor`` compatibility and ignored:
            workers always come from isopool's fork server.
        initializer: Called in each new worker before its first task. If it
            raises, the pool is broken (``BrokenPoolError``), as in the stdlib.
        initargs: Arguments for ``initializer``. ``multiprocessing`` objects may be
            passed here, as to ``multiprocessing.Process``: locks, semaphores,
            events, conditions, barriers, queues, shared values and arrays, pipe
            connections, Manager proxies. Those made with the "fork" context (the
            default on Linux before Python 3.14) only when the process runs no other
            thread at ``Pool()``, since the fork server must then be a fork of it.
        max_tasks_per_child: Replace a worker after this many tasks; 1 gives
            every task a fresh process. Default: workers live on.
        timeout: Seconds a task may run before its worker is stopped and the task
            fails with ``TaskTimeoutError``. Default None: no limit.
        memory_limit: Bytes (or "512MB", "2GiB") of heap a worker may use while
            running a task; past it allocations fail with ``MemoryError``.
        restart: "temporary" (default: never re-run) or "transient" (re-run after
            an exception, crash or time-out). "permanent" re-runs even after
            success, so it has no result: use ``TaskSupervisor.start_child``.
        max_restarts: Restarts allowed per task within ``max_seconds`` (default 3);
            one more and the task fails with ``RestartLimitError``.
        max_seconds: The restart-intensity window, in seconds (default 5.0).
        shutdown: Seconds between SIGTERM and SIGKILL when a task is stopped
            (default 5.0), or "brutal_kill" for SIGKILL at once.
        name: A name for logs and thread names; default "pool-N".
        cpus: Pin every worker to these CPUs (``os.sched_setaffinity`` on the fork
            server, which each worker, its initializer and the processes its tasks
            start inherit), so parallel benchmark runs do not steal each other's
            cores. Default None: wherever this process may run. Refused with
            ValueError naming the CPU when it does not exist or is not in
            ``os.sched_getaffinity(0)``.
        usage: Whether workers measure what each call cost (``Task.usage``, the
            usage sums of ``stats()``): True (default) or False, which saves the
            three ``getrusage``/clock calls around each call (about 3.5 us where
            syscalls are slow); ``Task.usage`` is then None.

    Stopping, from gentle to abrupt: ``shutdown()`` lets queued and running
    tasks finish; ``terminate()`` cancels queued tasks and stops running ones
    (their futures are cancelled) and waits for the workers to be gone;
    ``terminate_workers()`` and ``kill_workers()`` (Python 3.14's, on every
    Python) cancel queued tasks, send SIGTERM or SIGKILL to every worker and
    return at once, and the running tasks fail with ``TaskCrashError`` (a
    ``BrokenProcessPool``), as in the stdlib. After any of them the pool takes
    no new tasks.

    Raises:
        ValueError: a number is out of range, or an option is not one of its
            allowed values; the message names the parameter and the value
            (``max_workers must be greater than 0, got 0``, as the stdlib says); or
            ``initargs`` holds a fork-context semaphore that cannot reach the workers.
        TypeError: an argument has the wrong type.

    Example:
        >>> with Pool(2) as pool:
        ...     pool.submit(pow, 2, 10).result()
        1024
    """

    def __init__(
        self,
        max_workers: int | None = None,
        *,
        mp_context: BaseContext | None = None,
        initializer: Callable[..., object] | None = None,
        initargs: tuple[Any, ...] = (),
        max_tasks_per_child: int | None = None,
        timeout: float | None = None,
        memory_limit: int | str | None = None,
        restart: str = "temporary",
        max_restarts: int = 3,
        max_seconds: float = 5.0,
        shutdown: float | str = 5.0,
        name: str | None = None,
        cpus: Iterable[int] | None = None,
        usage: bool = True,
    ) -> None:
        if max_workers is None:
            from loky import cpu_count

            max_workers = cpu_count()
        check_max_workers(max_workers)
        if max_tasks_per_child is not None:
            check_positive_int("max_tasks_per_child", max_tasks_per_child)
        if mp_context is not None and not isinstance(mp_context, BaseContext):
            raise TypeError(f"mp_context must be a multiprocessing context, got {mp_context!r}")
        if initializer is not None and not callable(initializer):
            raise TypeError(f"initializer must be a callable, got {initializer!r}")
        if not isinstance(initargs, tuple):
            raise TypeError(f"initargs must be a tuple, got {initargs!r}")
        if not isinstance(usage, bool):
            raise TypeError(f"usage must be True or False, got {usage!r}")
        self._options = TaskOptions.build(
            timeout=timeout,
            restart=restart,
            max_restarts=max_restarts,
            max_seconds=max_seconds,
            shutdown=shutdown,
            memory_limit=memory_limit,
        )
        _refuse_permanent(self._options, "Pool(restart=...)")
        pinned = check_cpus(cpus)
        self._names: dict[str, None] = {}
        _register_exit_hook()
        init, server = _start_fork_server(initializer, initargs)
        try:
            self._monitor = Monitor(
                name or f"pool-{next(_pool_ids)}",
                max_workers,
                max_tasks_per_child,
                init,
                server,
                pinned,
                usage,
            )
        except BaseException:
            if server is not None:
                server.close(timeout=1.0)
            raise
        _live_monitors.add(self._monitor)

    def __repr__(self) -> str:
        monitor = self._monitor
        return (
            f"<isopool.Pool {monitor.name!r} {monitor.state.value} "
            f"max_workers={monitor.max_workers}>"
        )

    @property
    def name(self) -> str:
        """The pool's name, as used in logs and the monitor thread's name."""
        return self._monitor.name

    @property
    def max_workers(self) -> int:
        """How many worker processes the pool keeps."""
        return self._monitor.max_workers

    @overload
    def submit(self, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> Task[R]: ...

    @overload
    def submit(self, fn: str, /, *args: object, **kwargs: object) -> Task[Any]: ...

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Task[Any]:
        """Run ``fn(*args, **kwargs)`` in a worker process and return its Task.

        Args:
            fn: A picklable callable (lambdas and closures too, via cloudpickle), or
                ``"package.module:function"``, imported by name in the worker.
            *args: Positional arguments for ``fn``.
            **kwargs: Keyword arguments for ``fn``; they never collide with the
                pool's own settings, which go through ``options()``.

        Returns:
            The task's handle, a ``concurrent.futures.Future``.

        Raises:
            PoolClosedError: the pool was shut down (a ``RuntimeError``).
            RuntimeError: the interpreter is exiting: ``cannot schedule new futures
                after interpreter shutdown``, the stdlib's type and words.
            BrokenPoolError: the pool is broken.
            ValueError: ``fn`` names a function that does not import.
            TypeError: ``fn`` is neither callable nor a string.
        """
        return self._submit(fn, args, kwargs, self._options)

    def options(
        self,
        *,
        timeout: float | object | None = ...,
        restart: str | object = ...,
        max_restarts: int | object = ...,
        max_seconds: float | object = ...,
        shutdown: float | str | object = ...,
        memory_limit: int | str | object | None = ...,
        priority: int | object = ...,
        cpus: Iterable[int] | object | None = ...,
    ) -> PoolOptions:
        """Return a view that submits to this pool's workers with other task settings.

        Only the options given change; the rest keep the pool's values. Options
        are validated here, so a bad one fails before anything is submitted.
        ``cpus`` pins each task to those CPUs: its worker's affinity is set just
        before the call and restored after (its usage counts that one syscall).

        Example:
            >>> with Pool(1) as pool:
            ...     pool.options(timeout=2.0).submit(sum, [1, 2]).result()
            3
        """
        changes = _given(
            timeout=timeout,
            restart=restart,
            max_restarts=max_restarts,
            max_seconds=max_seconds,
            shutdown=shutdown,
            memory_limit=memory_limit,
            priority=priority,
            cpus=cpus,
        )
        return PoolOptions(self, self._options.replace(**changes))

    def map(
        self,
        fn: Callable[..., R] | str,
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int = 1,
        buffersize: int | None = None,
        progress: object = False,
    ) -> Iterator[R]:
        """Return an iterator of ``fn`` applied to the items, in order.

        As ``Executor.map``: the results come in input order; ``timeout`` counts
        from this call; the first task exception is raised when its result is
        reached; leaving the iterator early cancels what has not started. The
        iterator keeps no reference to a result it has yielded.

        Unlike the stdlib (before 3.14's ``buffersize``), the input is always
        consumed lazily: without ``buffersize``, at most a window of
        ``32 * max_workers`` tasks is in flight, so an endless iterable works.

        Args:
            fn: A callable or ``"package.module:function"``.
            *iterables: Iterables whose items are passed to ``fn`` in parallel.
            timeout: Seconds from this call after which ``next()`` raises
                ``TimeoutError``; None to wait for ever.
            chunksize: Items sent to a worker per task (>= 1).
            buffersize: As Python 3.14's: at most this many tasks (chunks) are
                submitted whose results have not been yielded yet; the input is
                read only as results are taken. None: the window above.
            progress: False (default: no cost), True (a tqdm bar on stderr when it
                is a terminal; needs ``isopool[progress]``), ``"always"`` (a bar
                even when stderr is not a terminal), a tqdm instance, or a callable
                ``(done, total, counts)``. Counts items (not chunks) as their
                results are taken; total is known when every iterable has a length.

        Raises:
            TimeoutError: a result was not ready in time.
            ValueError: ``chunksize`` is below 1; ``buffersize`` is below 1
                (``buffersize must be None or > 0``); ``timeout`` is NaN or
                infinite.
            TypeError: ``buffersize`` is not an int or None.
        """
        return self._map(fn, iterables, timeout, chunksize, buffersize, self._options, progress)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Take no new tasks, and free the workers once queued tasks are done.

        Args:
            wait: Block until every queued and running task has finished and every
                worker and the fork server have exited.
            cancel_futures: Cancel the tasks that have not started yet.
        """
        self._monitor.shutdown(wait, cancel_futures)

    def terminate(self, timeout: float | None = _TERMINATE_TIMEOUT) -> None:
        """Stop everything now: cancel queued tasks and stop running ones.

        Running tasks get SIGTERM, then SIGKILL after their ``shutdown`` grace,
        and their futures are cancelled (``CancelledError``); idle workers exit.
        Waits at most ``timeout`` seconds (None: until every worker is gone).
        Unlike ``terminate_workers``, the futures of running tasks are cancelled
        rather than failed, and the call waits.

        Raises:
            ValueError: ``timeout`` is negative, NaN or infinite.
        """
        self._monitor.terminate(check_seconds("timeout", timeout))

    def terminate_workers(self) -> None:
        """Send SIGTERM to every worker now, as Python 3.14's ``ProcessPoolExecutor``.

        The pool is shut down first (``shutdown(wait=False, cancel_futures=True)``):
        queued tasks are cancelled and no new ones are taken. Each worker, busy or
        idle, gets SIGTERM (with its process group); the task it was running fails
        with ``TaskCrashError`` (a ``BrokenProcessPool``, ``.signal == "SIGTERM"``)
        and is never restarted, whatever its ``restart`` policy. A result that
        arrived before the signal landed is kept. Returns at once, without waiting
        for the workers to exit (``shutdown()`` waits).

        Beyond the stdlib, which can leave a worker that ignores SIGTERM running:
        a worker still alive after its task's ``shutdown`` grace (5 s when idle or
        when that is ``"brutal_kill"``) gets SIGKILL. On a closed or broken pool,
        this does nothing.
        """
        self._monitor.signal_workers(signal.SIGTERM)

    def kill_workers(self) -> None:
        """Send SIGKILL to every worker now, as Python 3.14's ``ProcessPoolExecutor``.

        As ``terminate_workers``, with SIGKILL: queued tasks are cancelled, running
        ones fail with ``TaskCrashError`` (``.signal == "SIGKILL"``), and the call
        returns at once.
        """
        self._monitor.signal_workers(signal.SIGKILL)

    @property
    def _broken(self) -> str | bool:
        """ProcessPoolExecutor's own flag: the reason the pool broke, or False.

        Read by code (and CPython's tests) written for the stdlib; not public API.
        """
        if self._monitor.state is State.BROKEN:
            return str(self._monitor.broken_cause) or "broken"
        return False

    def stats(self) -> dict[str, float]:
        """Return the pool's counters.

        Keys: workers, pending, running, delayed (now; delayed: restarts waiting
        out their back-off); submitted, completed, failed, crashed, timed_out,
        killed, cancelled, restarted, workers_started, workers_replaced (totals
        since the pool started; cancelled: tasks cancelled before they ran).
        ``pending`` counts the tasks still waiting to run: a cancelled or killed
        task leaves it at once.

        The sums of every reply's ``Task.usage`` (see ``isopool.Usage``), over all
        runs that replied, restarts included: wall_seconds, cpu_user_seconds,
        cpu_system_seconds (floats), voluntary_switches, involuntary_switches,
        max_peak_rss (the largest peak_rss seen, bytes: peaks do not add up) and
        usage_reports (how many replies these cover). All other values are ints.
        """
        return self._monitor.stats()

    def metrics(self, registry: CollectorRegistry | None = None) -> None:
        """Export this pool's metrics to Prometheus through ``registry``.

        Needs the ``isopool[metrics]`` extra (``prometheus_client``). One collector
        per registry serves every pool registered on it, each under its ``pool``
        label (the pool's name); values are computed when Prometheus scrapes, from
        the counters of ``stats()``, so submitting costs nothing more. The duration
        and queue wait histograms count the runs that start or end from this call
        on. The pool's figures stay exported until the pool is garbage-collected.
        See the README's "Prometheus metrics" for the metric names.

        Args:
            registry: A ``prometheus_client.CollectorRegistry``; default
                ``prometheus_client.REGISTRY`` (what ``start_http_server`` serves).

        Raises:
            ImportError: ``prometheus_client`` is not installed.
            ValueError: another live pool of the same name is registered there.

        Example:
            >>> from prometheus_client import CollectorRegistry, generate_latest
            >>> registry = CollectorRegistry()
            >>> with Pool(1, name="images") as pool:
            ...     pool.metrics(registry)
            ...     pool.submit(pow, 2, 8).result()
            ...     text = generate_latest(registry).decode()
            256
            >>> 'isopool_tasks_total{outcome="ok",pool="images"} 1.0' in text
            True
        """
        from ._prometheus import register_pool

        register_pool(self._monitor, registry)

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        # Ctrl-C must stop the workers at once, not wait for them: one press is enough.
        if exc_type is KeyboardInterrupt:
            self.terminate()
            return
        try:
            self.shutdown(wait=True)
        except KeyboardInterrupt:
            self.terminate()
            raise

    def __del__(self) -> None:
        monitor = getattr(self, "_monitor", None)
        if monitor is not None and monitor.state is State.RUNNING:
            monitor.shutdown(wait=False, cancel_futures=False)

    # -- shared with PoolOptions -------------------------------------------------

    def _submit(
        self,
        fn: Callable[..., object] | str,
        args: tuple[object, ...],
        kwargs: dict[str, object],
        options: TaskOptions,
        intensity: RestartIntensity | None = None,
        label: str | None = None,
    ) -> Task[Any]:
        if isinstance(fn, str):
            if fn not in self._names:
                resolve_function(fn)  # fail here, naming the function, not in a worker
                self._names[fn] = None
        elif not callable(fn):
            raise TypeError(f"fn must be a callable or 'package.module:function', got {fn!r}")
        if self._monitor.state is not State.RUNNING or _interpreter_exiting:
            self._check_open()
        monitor = self._monitor
        task = Task._new(
            monitor,
            monitor.next_task_id(),
            fn,
            args,
            kwargs,
            options,
            intensity,
            monitor.measure_usage,
        )
        task._label = label
        self._monitor.submit(task)
        return task

    def _check_open(self) -> None:
        if _interpreter_exiting and self._monitor.state is not State.BROKEN:
            # concurrent.futures' exact type and words (its _global_shutdown check), so
            # the traceback reads "RuntimeError: cannot schedule new futures ...".
            raise RuntimeError("cannot schedule new futures after interpreter shutdown")
        self._monitor.submit_check()

    def _map(
        self,
        fn: Callable[..., R] | str,
        iterables: tuple[Iterable[Any], ...],
        timeout: float | None,
        chunksize: int,
        buffersize: int | None,
        options: TaskOptions,
        progress: object = False,
    ) -> Iterator[R]:
        if isinstance(chunksize, bool) or not isinstance(chunksize, int):
            raise TypeError(f"chunksize must be an integer, got {chunksize!r}")
        if chunksize < 1:
            raise ValueError("chunksize must be >= 1.")
        buffersize = check_buffersize(buffersize)
        wait = check_wait("timeout", timeout)
        end_time = None if wait is None else wait + time.monotonic()
        calls: Iterator[tuple[Any, ...]] = zip(*iterables, strict=False)
        bar = make_progress(progress, total_of(*iterables) if progress is not False else None)
        window = buffersize or _MAP_WINDOW_PER_WORKER * self._monitor.max_workers
        if _batchable(chunksize, buffersize, options):
            try:
                return batched_results(
                    lambda f, args: self._submit(f, args, {}, options),
                    fn,
                    calls,
                    window,
                    end_time,
                    bar,
                    total_of(*iterables),
                    self._monitor.max_workers,
                )
            except BaseException:
                if bar is not None:
                    bar.close()
                raise
        if chunksize == 1:

            def submit_next() -> Task[Any] | None:
                args = next(calls, None)
                return None if args is None else self._submit(fn, args, {}, options)

        elif len(iterables) == 1:
            items = iter(iterables[0])

            def submit_next() -> Task[Any] | None:
                chunk = list(itertools.islice(items, chunksize))
                if not chunk:
                    return None
                return self._submit(run_chunk_of_one, (fn, chunk), {}, options)

        else:

            def submit_next() -> Task[Any] | None:
                chunk = list(itertools.islice(calls, chunksize))
                if not chunk:
                    return None
                return self._submit(run_chunk, (fn, chunk), {}, options)

        first: collections.deque[Task[Any]] = collections.deque()
        try:
            while len(first) < window and (task := submit_next()) is not None:
                first.append(task)
        except BaseException:
            if bar is not None:
                bar.close()
            raise
        return _map_results(first, submit_next, end_time, chunksize, bar)


def _batchable(chunksize: int, buffersize: int | None, options: TaskOptions) -> bool:
    """Whether ``map`` may send items in batches (see ``_batched`` for what it keeps)."""
    return (
        chunksize == 1
        and buffersize is None
        and options.timeout is None
        and options.restart == "temporary"
    )


def _map_results(
    in_flight: collections.deque[Task[Any]],
    submit_next: Callable[[], Task[Any] | None],
    end_time: float | None,
    chunksize: int,
    bar: Progress | None = None,
) -> Iterator[Any]:
    """Yield results in order, topping the window up as each one is taken.

    Holds no reference to a result once it is yielded (as the stdlib's
    ``_result_or_cancel`` and ``_chain_from_iterable_of_lists``): the Task and the
    value are dropped before each ``yield``, so the consumer alone decides how
    long a (possibly large) result lives.
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
            if chunksize > 1:
                values: list[Any] = _take_result(in_flight, end_time, bar, chunksize)
                values.reverse()
                while values:
                    yield values.pop()
            else:
                yield _take_result(in_flight, end_time, bar, 1)
    finally:
        for task in in_flight:
            task._cancel_nowait()
        if bar is not None:
            bar.close()


def _take_result(
    in_flight: collections.deque[Task[Any]],
    end_time: float | None,
    bar: Progress | None,
    chunksize: int,
) -> Any:  # noqa: ANN401 - a task's value
    """Pop the oldest task and return its result; cancel it if that raises (time-out).

    With ``bar``, count the items it stood for: a chunk's own length when it
    returned, else ``chunksize`` (a failure ends the map anyway).
    """
    task = in_flight.popleft()
    try:
        value = task.result() if end_time is None else task.result(end_time - time.monotonic())
    except BaseException:
        task.cancel()  # a time-out leaves it queued otherwise (the stdlib cancels it too)
        if bar is not None and task.done():
            bar.finished(task, chunksize)
        raise
    finally:
        del task  # the popped Task must not outlive this call: it holds the result
    if bar is not None:
        bar.add("ok", len(value) if chunksize > 1 else 1)
    return value


class PoolOptions:
    """A view of a Pool that submits with other per-task settings.

    Made by ``Pool.options(...)``; it shares the pool's workers and lifetime.
    """

    def __init__(self, pool: Pool, options: TaskOptions) -> None:
        self._pool = pool
        self._options = options

    def __repr__(self) -> str:
        return f"<isopool.PoolOptions of {self._pool!r} {self._options}>"

    @property
    def task_options(self) -> TaskOptions:
        """The settings tasks submitted through this view run with."""
        return self._options

    @overload
    def submit(self, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> Task[R]: ...

    @overload
    def submit(self, fn: str, /, *args: object, **kwargs: object) -> Task[Any]: ...

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Task[Any]:
        """As ``Pool.submit``, with this view's settings."""
        _refuse_permanent(self._options, "submit")
        return self._pool._submit(fn, args, kwargs, self._options)

    def map(
        self,
        fn: Callable[..., R] | str,
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int = 1,
        buffersize: int | None = None,
        progress: object = False,
    ) -> Iterator[R]:
        """As ``Pool.map`` (``buffersize`` and ``progress`` included), with this view's settings."""
        _refuse_permanent(self._options, "map")
        return self._pool._map(
            fn, iterables, timeout, chunksize, buffersize, self._options, progress
        )

    def options(self, **changes: object) -> PoolOptions:
        """Return a view with ``changes`` applied on top of this one's settings."""
        return PoolOptions(self._pool, self._options.replace(**changes))


def _start_fork_server(
    initializer: Callable[..., object] | None, initargs: tuple[Any, ...]
) -> tuple[InitPayload | None, ForkServer | None]:
    """Pickle the initializer and, when this process is single-threaded, fork the server.

    The fork happens here, on the caller's (main) thread, before the monitor thread
    exists: the one moment the process is known to run no other thread. Then the
    server is a fork made after ``initargs`` existed, so fork-context semaphores can be
    passed to it; otherwise the monitor starts a fresh interpreter and such objects are
    refused here, naming them. See ``_forkserver`` for what the forked server inherits.
    """
    fork = is_single_threaded()
    init = None if initializer is None else dumps_initializer(initializer, initargs, fork)
    server = ForkServer.fork(init) if fork else None
    if server is None and init is not None and init.fork_only and initializer is not None:
        dumps_initializer(initializer, initargs, fork=False)  # raises, naming the object
    return init, server


def _given(**options: object) -> dict[str, object]:
    return {key: value for key, value in options.items() if value is not ...}


def _refuse_permanent(options: TaskOptions, where: str) -> None:
    if options.restart == "permanent":
        raise ValueError(
            f"{where}: restart='permanent' re-runs a task even after it succeeds, so it "
            "never has a result to wait for; use TaskSupervisor.start_child for "
            "fire-and-forget work, or restart='transient' to retry until success"
        )


def _register_exit_hook() -> None:
    global _exit_hook_registered
    with _exit_hook_lock:
        if _exit_hook_registered:
            return
        try:
            # Runs before non-daemon threads are joined, as ProcessPoolExecutor's does.
            threading._register_atexit(_at_exit)  # type: ignore[attr-defined]  # the stdlib's own exit hook, as concurrent.futures uses
        except RuntimeError:
            raise PoolClosedError("cannot start a pool while the interpreter exits") from None
        _exit_hook_registered = True


def default_pool() -> Pool:
    """Return the pool that ``Task.async_`` and friends use, creating it on first use.

    It has one worker per available CPU and is shut down at interpreter exit.
    """
    global _default_pool
    with _default_lock:
        pool = _default_pool
        if pool is None or pool._monitor.state is not State.RUNNING:
            pool = _default_pool = Pool(name="default")
        return pool


def at_exit(callback: Callable[[], None]) -> None:
    """Run ``callback`` at interpreter exit, before pools finish their queued work.

    Used to stop linked tasks first: a task linked to the program must not be
    waited for.
    """
    _register_exit_hook()
    with _exit_hook_lock:
        _exit_callbacks.append(callback)


def _at_exit() -> None:
    """Finish every pool's queued work, or stop it at once after Ctrl-C."""
    global _interpreter_exiting
    _interpreter_exiting = True
    for callback in list(_exit_callbacks):
        callback()
    interrupted = isinstance(getattr(sys, "last_value", None), KeyboardInterrupt)
    for monitor in list(_live_monitors):
        if interrupted:
            monitor.terminate(_TERMINATE_TIMEOUT)
            continue
        try:
            monitor.shutdown(wait=True, cancel_futures=False)
        except KeyboardInterrupt:
            monitor.terminate(_TERMINATE_TIMEOUT)

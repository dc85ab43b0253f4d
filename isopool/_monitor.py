"""The parent-side monitor: one thread that supervises every worker of one pool.

Who owns what, and who reads what::

    caller threads                          monitor thread  isopool-monitor[NAME]
    --------------                          ------------------------------------
    submit(): pickle the call (no lock);    epoll on: each worker's result_r, the
    lock; queue it; dispatch to idle        fork server socket, the wake-up pipe, and
    workers: write frames to call_w         call_w of any worker with unsent bytes.
    (non-blocking; the rest waits in        lock; read frames; settle runs; pin each
    the worker's out buffer); unlock        death on the task its worker held; ask
                                            _policy whether to restart; replace the
                                            worker; dispatch; unlock; then finish
                                            futures (no user code: see _outcome).
    cancel()/kill() of a call queued on     resolver thread  isopool-resolver[NAME]
    a worker: REVOKE it (take_back)         done-callbacks and crash logs (user code)

    parent                        fork server                    worker k
    call_w[k]    --- CALL frames ----------------------------->  call_r[k]    main thread
    control_w[k] --- cookie, REVOKE n, RELEASE, SLAB ---------->  control_r[k] watcher thread
    result_r[k]  <-- RESULT / ERROR / BAD_PAYLOAD / REVOKED ---  result_w[k]  (both, locked)
    sock         <-- SPAWNED k pid, EXITED pid status -->  forks and reaps

Buffers of 128 KiB or more do not cross the pipes (``_oob``): a call's go into a
slab (a reusable memfd this process owns) when the caller pickles it, and a worker
writes a large result into a slab lent to it (SLAB, sent before its next call) or,
with none, into a sealed memfd of its own. The monitor opens or takes that memory as
it reads the RESULT frame (``_claim_result_locked``: a few syscalls, no copy) and
RELEASEs the worker's memfd; the caller's thread copies or maps it when it unpickles.

Each worker runs its calls in order; ``WorkerHandle.tasks`` mirrors that order, so the
head is the task it is running. The task id travels in every frame header, so a
payload that will not unpickle, or a worker that dies, fails exactly one task: the
head. Tasks queued behind it on that worker never started; they go back to the
pending queue without counting as attempts.

Futures are finished outside the lock, and without running user code: a future
becomes done here, its value is unpickled by whoever asks for it, and done-callbacks
(which may call ``submit``: the lock is not re-entrant) run on the resolver thread.
The lock is held only for bookkeeping and for non-blocking pipe I/O.

Dispatch pipelines: when recent tasks ran for under ``_FAST_TASK`` seconds, up to
``_PIPELINE_DEPTH`` calls are written to a worker at once (one syscall), so a burst
of tiny tasks is not paced by round trips. A call written to a worker has not
started until the calls before it there have run, and can be taken back: the
parent numbers the calls it writes to each worker, and REVOKE n on the worker's
control pipe asks it not to start call n. The worker's watcher thread answers at
once (REVOKED, on the result pipe, ordered before the replies of any later call):
"it will never run" or "too late, it started". So ``kill()`` and ``cancel()`` of a
queued call return at once, and when a worker is idle with nothing pending, the
calls queued behind a call that has run for ``_STEAL_AFTER`` (and ten times the
recent mean) go back to the pending queue and on to the idle worker: no call waits
behind a slow one while a worker has nothing to do. Nothing more is queued behind
such a slow call meanwhile.
"""

from __future__ import annotations

import collections
import contextlib
import enum
import errno
import functools
import itertools
import logging
import os
import select
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, Final

from . import _oob, _wire
from ._errors import (
    BrokenPoolError,
    PoolClosedError,
    ProtocolError,
)
from ._handle import WorkerHandle
from ._outcome import Outcome, resolve, tripped_error
from ._policy import RestartIntensity, backoff_delay, should_restart
from ._process import (
    ForkServer,
    decode_exit,
    describe_spawn_failure,
    describe_start_failure,
    limit_hint,
    signal_group,
)
from ._queue import DelayedQueue, PendingQueue
from ._resolver import Resolver
from ._share import InitPayload
from ._spec import ShutdownTimeout, TaskOptions, describe_function
from ._task import Task

__all__ = ["Monitor", "State"]

log = logging.getLogger(__name__)

_FAST_TASK: Final = 0.002  # below this mean run time (s), pipelining pays for itself
_PIPELINE_DEPTH: Final = 16  # enough to hide a round trip (4 costs ~30% of throughput)
# How long to wait for the fork server's EXITED message after a worker's pipe hit EOF
# before declaring its exit status unknown (the fork server died with it).
_STATUS_WAIT: Final = 2.0
_HEARTBEAT: Final = 1.0  # the longest the monitor sleeps; every wait has a deadline
_RETIRE_GRACE: Final = 5.0  # an idle worker told to exit gets this long before SIGKILL
# A call queued behind one that has run this long goes to an idle worker instead: long
# enough that a burst of tiny tasks is never shuffled, short next to a slow task.
_STEAL_AFTER: Final = 0.01
_TAKE_BACK_WAIT: Final = 0.5  # cancel() waits this long for a worker to hand a call back
_WAKE, _SERVER, _RESULT, _CALL = range(4)
# Pool.stats()' keys for the summed usage of every reply (see _usage), in the order
# of Monitor._usage_sums.
_USAGE_FOLD: Final = 48 * 1024  # fold the kept usage trailers into the sums past 1024 replies
_USAGE_KEYS: Final = (
    "wall_seconds",
    "cpu_user_seconds",
    "cpu_system_seconds",
    "max_peak_rss",
    "voluntary_switches",
    "involuntary_switches",
    "usage_reports",
)


class State(enum.Enum):
    """The one state of a pool; each transition lives in one Monitor method."""

    RUNNING = "running"  # takes work
    CLOSING = "closing"  # shutdown() was called: finishes queued work, takes no new
    CLOSED = "closed"  # every worker and the fork server are gone
    BROKEN = "broken"  # isopool itself failed; pending work failed with BrokenPoolError


class Monitor:
    """Supervises the workers of one pool and runs its tasks; the pool's engine.

    Thread-safe: ``submit``, ``kill``, ``shutdown`` and ``terminate`` may be called
    from any thread. One lock guards all state; see the module docstring.
    """

    def __init__(
        self,
        name: str,
        max_workers: int,
        max_tasks_per_child: int | None,
        initializer: InitPayload | None,
        server: ForkServer | None = None,
        cpus: frozenset[int] | None = None,
    ) -> None:
        self.name = name
        self._cpus = cpus  # the fork server's affinity, so every worker's
        self.max_workers = max_workers
        self._max_tasks = max_tasks_per_child or 0
        self._initializer = initializer
        self._lock = threading.Lock()
        self._state = State.RUNNING
        self._pending: PendingQueue[Task[Any]] = PendingQueue()
        self._delayed: DelayedQueue[Task[Any]] = DelayedQueue()  # restarts backing off
        self._workers: list[WorkerHandle] = []
        self._by_pid: dict[int, WorkerHandle] = {}
        self._unspawned: list[WorkerHandle] = []
        self._spawning: dict[int, WorkerHandle] = {}
        self._worker_ids = itertools.count(1)
        self._task_ids = itertools.count(1)
        self._stats: collections.Counter[str] = collections.Counter()
        # Sums of the replies' usage: wall, user, system seconds, max peak RSS,
        # voluntary and involuntary switches, and how many replies carried one;
        # the trailers not yet added in (folded in batches: one append per reply).
        self._usage_sums: list[float] = [0.0, 0.0, 0.0, 0, 0, 0, 0]
        self._usage_log = bytearray()
        self._ema: float | None = None  # mean run time of recent tasks, seconds
        self._sleep_until = 0.0  # when the monitor will next wake up by itself
        self._need_wake = False
        self._server: ForkServer | None = None
        self._first_server = server  # forked by Pool.__init__; taken by _start_server
        self._server_restarts = RestartIntensity(max_restarts=3, max_seconds=10.0)
        self._broken_cause: BaseException | None = None
        self._resolver = Resolver(name)  # runs callbacks and crash logs: user code
        self._epoll = select.epoll()
        self._fds: dict[int, tuple[int, WorkerHandle | None]] = {}
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._register(self._wake_r, _WAKE, None, select.EPOLLIN)
        self._thread = threading.Thread(
            target=self._run, name=f"isopool-monitor[{name}]", daemon=True
        )
        try:
            for _ in range(max_workers):
                self._add_worker_locked()
            self._thread.start()
        except (OSError, RuntimeError) as exc:  # out of fds or threads: leave nothing open
            self._close_unstarted()
            if isinstance(exc, OSError):
                raise
            raise RuntimeError(f"{exc}; {limit_hint(errno.EAGAIN)}") from exc

    # -- public, any thread ----------------------------------------------------

    @property
    def state(self) -> State:
        """The pool's state."""
        return self._state

    @property
    def broken_cause(self) -> BaseException | None:
        """Why the pool broke (None unless it is BROKEN)."""
        return self._broken_cause

    def new_task(
        self,
        fn: Callable[..., object] | str,
        args: tuple[object, ...],
        kwargs: dict[str, object],
        options: TaskOptions,
        intensity: RestartIntensity | None = None,
    ) -> Task[Any]:
        """Pickle one call and return its Task, not yet submitted.

        A call that cannot be pickled gives a Task that already failed with
        ``SerializationError`` (as ``ProcessPoolExecutor`` fails the future).
        """
        task_id = next(self._task_ids)
        name = describe_function(fn)
        try:
            payload = _wire.dumps_call(
                fn, args, kwargs, options.memory_limit, options.cpus, share=True
            )
            error = None
        except (Exception, SystemExit) as exc:
            payload, error = b"", exc
        if intensity is None and options.restart != "temporary":
            intensity = RestartIntensity(options.max_restarts, options.max_seconds)
        task = Task._create(self, task_id, name, payload, options, intensity)
        if error is not None:
            task.set_running_or_notify_cancel()
            resolve([Outcome.bad_call(task, error)])
        return task

    def new_raw_task(self, payload: bytes, name: str, options: TaskOptions) -> Task[Any]:
        """Return a Task for an already pickled call, whose outcome stays pickled.

        For the shared queue: the call was pickled (and signed) by another process,
        and its result goes back to Redis, so this process never unpickles user
        bytes. The Task's result is ``("ok" | "raised" | "shutdown", payload)``;
        crashes, time-outs and bad payloads still fail it with isopool's errors.
        """
        task = Task._create(self, next(self._task_ids), name, payload, options, None)
        task._raw = True
        return task

    def submit_check(self) -> None:
        """Raise PoolClosedError or BrokenPoolError unless the pool takes work."""
        with self._lock:
            self._check_open_locked()

    def submit(self, task: Task[Any]) -> None:
        """Queue ``task`` and start it if a worker is free.

        Raises:
            PoolClosedError: the pool was shut down.
            BrokenPoolError: the pool is broken.
        """
        if not task._payload:
            return  # its call did not pickle; it already failed
        with self._lock:
            self._check_open_locked()
            self._stats["submitted"] += 1
            if isinstance(task._payload, _oob.SharedPayload):
                self._stats["shared_calls"] += 1
            self._pending.push(task)
            refused: list[Outcome] = []
            self._dispatch_locked(time.monotonic(), refused)
            wake = self._take_wake_locked()
        if wake:
            self._wake()
        resolve(refused)

    def kill(
        self,
        task: Task[Any],
        wait: bool,
        grace: ShutdownTimeout | None = None,
        error: BaseException | None = None,
        keep_reply: bool = False,
    ) -> bool:
        """Stop ``task``: see ``Task.kill``.

        Args:
            task: The task to stop.
            wait: Block until its process is gone (never on the monitor thread).
            grace: Overrides the task's ``shutdown`` option for this stop.
            error: Fail the task with this instead of cancelling it.
            keep_reply: If the reply arrives before the process is gone, keep it
                (``Task.shutdown``) instead of cancelling the task.
        """
        out: list[Outcome] = []
        running = False
        with self._lock:
            if task.done():
                return False
            task._kill_error = error
            task._kill_grace = grace
            task._keep_reply = keep_reply
            # The delayed queue first: its tasks are also marked queued, which the
            # pending queue's lazy removal cannot tell apart from its own.
            if self._delayed.remove(task) or self._pending.remove(task):
                self._stats["killed"] += 1
                out.append(Outcome.stopped(task))
            elif isinstance(task._worker, WorkerHandle):
                running = self._kill_assigned_locked(task._worker, task, time.monotonic(), out)
            else:  # pending but never dispatched, or already finishing
                return not task._dispatched and Future.cancel(task)
            wake = self._take_wake_locked()
        if wake:
            self._wake()
        resolve(out)
        if running and wait and threading.current_thread() is not self._thread:
            grace = task._kill_grace if task._kill_grace is not None else task.options.shutdown
            task._wait_stopped((0.0 if grace == "brutal_kill" else grace) + 10.0)
        return True

    def shutdown(self, wait: bool, cancel_futures: bool) -> None:
        """Take no new work; finish (or cancel) queued work; optionally wait."""
        out: list[Outcome] = []
        with self._lock:
            if self._state is State.RUNNING:
                self._state = State.CLOSING
            if cancel_futures:
                out.extend(Outcome.cancelled(t) for t in self._drain_queued_locked())
        self._wake()
        resolve(out)
        if wait and threading.current_thread() is not self._thread:
            self._thread.join()
            self._resolver.join()

    def terminate(self, timeout: float | None = None) -> None:
        """Stop everything now: cancel queued tasks, stop running ones, then close.

        Running tasks are stopped politely (their ``shutdown`` grace) and then
        brutally; their futures are cancelled. Waits at most ``timeout`` seconds.
        """
        out: list[Outcome] = []
        with self._lock:
            if self._state is State.RUNNING:
                self._state = State.CLOSING
            out.extend(Outcome.cancelled(t) for t in self._drain_queued_locked())
            now = time.monotonic()
            for worker in list(self._workers):
                if worker.tasks:
                    self._stop_worker_locked(worker, "terminate", None, now)
        self._wake()
        resolve(out)
        if threading.current_thread() is not self._thread:
            deadline = None if timeout is None else time.monotonic() + timeout
            self._thread.join(timeout)
            self._resolver.join(None if deadline is None else max(0.0, deadline - time.monotonic()))

    def forget(self, task: Task[Any]) -> None:
        """``task`` was cancelled while pending: drop it from the count at once."""
        with self._lock:
            self._pending.remove(task)

    def signal_workers(self, sig: signal.Signals) -> None:
        """``Pool.terminate_workers``/``kill_workers``: close, cancel queued, signal all.

        Returns at once. Each worker's running task fails as a crash (never
        restarted); calls queued behind it are cancelled. A worker that survives
        SIGTERM gets SIGKILL after its task's grace (5 s if idle or brutal_kill).
        """
        with self._lock:
            if self._state is State.RUNNING:
                self._state = State.CLOSING
            out = [Outcome.cancelled(t) for t in self._drain_queued_locked()]
            now = time.monotonic()
            for worker in self._workers:
                for task in worker.tasks:
                    task._kill_requested = True  # never restarted nor requeued
                grace = worker.tasks[0].options.shutdown if worker.tasks else _RETIRE_GRACE
                if worker.stop_reason is None:
                    worker.stop_reason = "signalled"
                    worker.kill_at = now + (_RETIRE_GRACE if grace == "brutal_kill" else grace)
                if sig == signal.SIGKILL:
                    worker.kill_at = None
                if worker.pid is not None:
                    signal_group(worker.pid, sig)
        self._wake()
        resolve(out)

    def stats(self) -> dict[str, float]:
        """Return counters: workers, pending, running, and totals since start."""
        with self._lock:
            counts: dict[str, float] = dict(self._stats)
            self._fold_usage_locked()
            counts.update(zip(_USAGE_KEYS, self._usage_sums, strict=True))
            counts["workers"] = sum(1 for w in self._workers if not w.finalized)
            counts["pending"] = len(self._pending)
            counts["running"] = sum(1 for w in self._workers if w.tasks)
        for key in (
            "submitted",
            "completed",
            "failed",
            "crashed",
            "timed_out",
            "killed",
            "restarted",
            "workers_started",
            "workers_replaced",
        ):
            counts.setdefault(key, 0)
        return counts

    # -- dispatch (under the lock, any thread) ---------------------------------

    def _check_open_locked(self) -> None:
        if self._state is State.BROKEN:
            raise BrokenPoolError(
                f"pool {self.name!r} is broken: {self._broken_cause}"
            ) from self._broken_cause
        if self._state is not State.RUNNING:
            raise PoolClosedError(f"cannot schedule new tasks after shutdown (pool {self.name!r})")

    def _depth(self, worker: WorkerHandle, now: float) -> int:
        depth = 1 if self._ema is None or self._ema >= _FAST_TASK else _PIPELINE_DEPTH
        if worker.tasks and _running_long(worker, now, self._ema):
            return 1  # queue nothing behind a slow call
        if self._max_tasks:
            depth = min(depth, self._max_tasks - worker.assigned)
        return depth

    def _dispatch_locked(self, now: float, out: list[Outcome]) -> None:
        """Hand pending tasks to workers with room, least loaded first.

        A task whose restart intensity has tripped (its supervisor gave up) is not
        started: it fails with RestartLimitError, even if a worker is free.
        """
        if not self._pending:
            self._steal_locked(now)
            return
        workers = [w for w in self._workers if w.accepting]
        touched: set[WorkerHandle] = set()
        while workers and self._pending:
            worker = min(workers, key=lambda w: len(w.tasks))
            if len(worker.tasks) >= self._depth(worker, now):
                break
            task = self._pending.pop()
            if task is None:
                break
            if not task._dispatched:
                if not task.set_running_or_notify_cancel():
                    continue  # cancelled by its owner while pending
                task._dispatched = True
            intensity = task._intensity
            if intensity is not None and intensity.tripped and task.options.max_retries is None:
                out.append(Outcome.error(task, tripped_error(task, intensity)))
                continue
            if task._label is not None and worker.tasks:
                # A supervisor's child is never queued behind another call: if its
                # supervisor gives up meanwhile, it must not have been written to a
                # worker already (and supervised children are rarely tiny).
                idle = next((w for w in workers if not w.tasks), None)
                if idle is None:
                    self._pending.push(task)
                    break
                worker = idle
            self._assign_locked(worker, task, now)
            touched.add(worker)
        for worker in touched:
            self._flush_locked(worker)
        self._steal_locked(now)

    def _steal_locked(self, now: float) -> None:
        """Nothing pending and a worker idle: take back calls queued behind a slow one.

        They return to the pending queue (no attempt counted) when the busy worker
        confirms it will not start them, and go to the idle worker: no task waits
        behind a slow task while another worker has nothing to do.
        """
        if self._pending or not any(w.accepting and not w.tasks for w in self._workers):
            return
        for worker in self._workers:
            if (
                len(worker.tasks) < 2
                or worker.stop_reason
                or not _running_long(worker, now, self._ema)
            ):
                continue
            for task in itertools.islice(worker.tasks, 1, None):
                if task._revoke is None and task._label is None and worker.revoke(task):
                    task._revoke = "steal"

    def _assign_locked(self, worker: WorkerHandle, task: Task[Any], now: float) -> None:
        if worker.wants_slab and worker.slab is None:
            self._lend_slab_locked(worker)
        task._worker = worker
        if worker.queue_call(task):
            self._start_head_locked(worker, now)

    def _start_head_locked(self, worker: WorkerHandle, now: float) -> None:
        """The head of ``worker`` starts running now (if the worker exists yet)."""
        task = worker.tasks[0]
        # A head asked back (REVOKE) may have started before the worker's watcher read
        # the request: run its clock (time-out, attempts) as for any head; an answer
        # that it will never run undoes it (_on_revoked_locked). A head killed before
        # it started stops its worker now, unless that answer is still to come.
        if task._kill_requested and task._revoke is None:
            self._stop_worker_locked(worker, "kill", task, now)
            return
        if worker.pid is None or task._started_at is not None:
            return  # started when the fork server reports the worker's pid
        task._started_at = now
        task._pid = worker.pid
        task._usage = None  # a run that crashes must not show an earlier run's usage
        task.attempts += 1
        timeout = task.options.timeout
        if timeout is not None:
            task._deadline = now + timeout
            if task._deadline < self._sleep_until:
                self._need_wake = True

    def _flush_locked(self, worker: WorkerHandle) -> None:
        """Write what the worker's pipe takes; wait for writability for the rest."""
        want = worker.flush()
        if want != worker.out_registered:
            worker.out_registered = want
            if want:
                self._register(worker.pipes.call_w, _CALL, worker, select.EPOLLOUT)
            else:
                self._unregister(worker.pipes.call_w)

    def _drain_queued_locked(self) -> list[Task[Any]]:
        """Take every task that waits to run (pending or backing off)."""
        return self._pending.drain() + self._delayed.drain()

    def _take_wake_locked(self) -> bool:
        wake, self._need_wake = self._need_wake, False
        return wake

    def _wake(self) -> None:
        # BlockingIOError: a wake-up is already pending, which is all we need.
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"!")

    # -- stopping workers (under the lock) --------------------------------------

    def _kill_assigned_locked(
        self, worker: WorkerHandle, task: Task[Any], now: float, out: list[Outcome]
    ) -> bool:
        """Kill a task written to ``worker``; True if its process must be stopped.

        A call queued behind another one has not started: it is taken back from the
        worker (REVOKE) and the task is settled now, so ``kill()`` never waits behind
        another task. Should the worker answer that it had started meanwhile, the
        worker is stopped then.
        """
        task._kill_requested = True
        if worker.tasks and worker.tasks[0] is task:
            # Running, or about to: a REVOKE still unanswered cannot be trusted to
            # win, so stop the worker; an answer that it never ran settles it then.
            if task._revoke is not None:
                task._revoke = "kill"
            self._stop_worker_locked(worker, "kill", task, now)
            return True
        if task._revoke is None and not worker.revoke(task):
            return True  # the worker is gone: its death settles the task
        task._revoke = "kill"
        self._stats["killed"] += 1
        out.append(Outcome.stopped(task))
        return False

    def take_back(self, task: Task[Any], wait: bool) -> bool:
        """Take back ``task``'s call from its worker if it has not started; see Task.cancel.

        With ``wait``, block (at most ``_TAKE_BACK_WAIT`` seconds) for the worker's
        answer and cancel the task if the call will never run; without it, the task is
        cancelled when the answer comes, or runs as usual if it had started.
        """
        with self._lock:
            worker = task._worker
            if task.done() or not isinstance(worker, WorkerHandle) or worker.stop_reason:
                return False
            if worker.tasks and worker.tasks[0] is task and task._revoke is None:
                return False  # it is running
            if task._revoke is None and not worker.revoke(task):
                return False
            if task._revoke in (None, "steal"):
                task._revoke = "cancel"
            task._revoke_ok = False
            if not wait:
                return False
            event = task._revoked = task._revoked or threading.Event()  # one per take-back
        answered = event.wait(_TAKE_BACK_WAIT)  # the lock is not held: the monitor answers
        with self._lock:
            task._revoked = None
            if not answered and task._revoke == "cancel":
                task._revoke = "steal"  # too slow to answer: if handed back, it runs elsewhere
            ok = task._revoke_ok  # set by the monitor when the worker handed it back
        return ok and (task._force_cancel() or task.cancelled())

    def _stop_worker_locked(
        self, worker: WorkerHandle, reason: str, task: Task[Any] | None, now: float
    ) -> None:
        """Stop ``worker``: SIGTERM its process group now, SIGKILL after the grace."""
        if worker.stop_reason is not None or worker.finalized:
            return
        worker.stop_reason = reason
        worker.stop_task = task
        head = task or (worker.tasks[0] if worker.tasks else None)
        grace: ShutdownTimeout = _RETIRE_GRACE
        if head is not None:
            grace = head._kill_grace if head._kill_grace is not None else head.options.shutdown
        brutal = grace == "brutal_kill" or grace == 0
        worker.kill_at = None if brutal else now + float(grace)
        if worker.kill_at is not None and worker.kill_at < self._sleep_until:
            self._need_wake = True
        if worker.pid is not None:
            signal_group(worker.pid, signal.SIGKILL if brutal else signal.SIGTERM)

    # -- the monitor thread -----------------------------------------------------

    def _run(self) -> None:
        try:
            self._start_server()
            while self._step():
                pass
        except BaseException as exc:  # isopool itself failed: fail all, leave nothing
            log.exception("isopool monitor of pool %r failed", self.name)
            self._break(exc)
        finally:
            self._close_resources()

    def _step(self) -> bool:
        """One round: wait for events or the next deadline, then act. False: done."""
        events = self._epoll.poll(max(0.0, self._sleep_until - time.monotonic()))
        # Read the workers' pipes before taking the lock: only this thread reads or
        # closes them, and submitting threads then wait less for the lock.
        reads = [self._pre_read(fd) for fd, _mask in events]
        out: list[Outcome] = []
        with self._lock:
            now = time.monotonic()
            # Replies first, then the fork server's messages: a worker's last reply
            # must be settled before its EXITED finalizes it (max_tasks_per_child).
            # A reply that beats its worker's SPAWNED is held until SPAWNED comes.
            for read in reads:
                if read is not None:
                    self._apply_read_locked(*read, now, out)
            for (fd, mask), read in zip(events, reads, strict=True):
                if read is None:
                    self._on_event_locked(fd, mask, now, out)
            self._check_deadlines_locked(now, out)
            for task in self._delayed.release(now):
                self._pending.push(task)
            self._replace_workers_locked()
            self._dispatch_locked(now, out)
            done = self._close_if_idle_locked(now)
            restart_server = self._server is None and not done
            self._sleep_until = min(self._next_deadline_locked(), now + _HEARTBEAT)
        resolve(out, self._resolver.defer)
        if restart_server:
            self._start_server()
        return not done

    def _pre_read(
        self, fd: int
    ) -> tuple[WorkerHandle, list[_wire.Frame], bool, ProtocolError | None] | None:
        kind, worker = self._fds.get(fd, (-1, None))
        if kind != _RESULT or worker is None or worker.finalized:
            return None
        return (worker, *worker.read())

    def _on_event_locked(self, fd: int, mask: int, now: float, out: list[Outcome]) -> None:
        kind, worker = self._fds.get(fd, (-1, None))
        if kind == _WAKE:
            try:
                while os.read(self._wake_r, 4096):
                    pass
            except BlockingIOError:
                pass
        elif kind == _SERVER:
            self._on_server_locked(now, out)
        elif kind == _CALL and worker is not None:
            self._flush_locked(worker)

    def _start_server(self) -> None:
        server, self._first_server = self._first_server, None
        if server is None:
            try:
                server = ForkServer(self._initializer)
            except OSError as exc:  # EMFILE, EAGAIN (RLIMIT_NPROC): say which limit
                raise BrokenPoolError(describe_start_failure(exc)) from exc
        if self._cpus is not None:
            # Before it forks any worker: each inherits the affinity, initializer and
            # the processes its tasks start included.
            try:
                os.sched_setaffinity(server.pid, self._cpus)
            except OSError as exc:  # a CPU went offline since Pool() checked it
                server.close(timeout=1.0)
                raise BrokenPoolError(f"cannot pin the fork server to {self._cpus}: {exc}") from exc
        with self._lock:
            self._server = server
            self._register(server.fileno(), _SERVER, None, select.EPOLLIN)
            self._spawn_unspawned_locked()

    def _spawn_unspawned_locked(self) -> None:
        server = self._server
        if server is None:
            return
        for worker in self._unspawned:
            server.spawn(worker.id, worker.pipes, self._max_tasks)
            worker.pipes.close_worker_ends()
            self._spawning[worker.id] = worker
        self._unspawned.clear()

    def _on_server_locked(self, now: float, out: list[Outcome]) -> None:
        server = self._server
        messages = server.read_messages() if server is not None else None
        for op, a, b in messages or ():
            if op == 1:  # READY
                if server is not None:
                    server.ready = True
            elif op == 3:  # SPAWNED worker_id pid
                self._on_spawned_locked(a, b, now, out)
            elif op == 4:  # EXITED pid status
                worker = self._by_pid.get(a)
                if worker is not None:
                    worker.status = b
                    self._read_worker_locked(worker, now, out)
                    self._finalize_locked(worker, now, out)
            elif op == 5:  # SPAWN_FAILED worker_id errno: no worker can be made
                raise BrokenPoolError(describe_spawn_failure(b))
        if messages is None:
            self._on_server_lost_locked(now, out)

    def _on_spawned_locked(self, worker_id: int, pid: int, now: float, out: list[Outcome]) -> None:
        worker = self._spawning.pop(worker_id, None)
        if worker is None:
            return
        worker.pid = pid
        self._by_pid[pid] = worker
        self._stats["workers_started"] += 1
        if worker.stop_reason is not None:  # stopped before it even existed
            worker.kill_at = None
            signal_group(pid, signal.SIGKILL)
        elif worker.tasks:
            self._start_head_locked(worker, now)
        held, worker.held = worker.held, []
        for kind, task_id, payload in held:
            self._on_frame_locked(worker, kind, task_id, payload, now, out)

    def _on_server_lost_locked(self, now: float, out: list[Outcome]) -> None:
        """The fork server died: its workers die with it (PR_SET_PDEATHSIG)."""
        server = self._server
        self._server = None
        if server is not None:
            self._unregister(server.fileno())
            was_ready = server.ready
            server.close(timeout=1.0)
            code = server.process.returncode
        else:  # pragma: no cover - only called with a server
            was_ready, code = True, None
        if not was_ready:
            raise BrokenPoolError(
                f"isopool fork server failed to start (exit code {code}); "
                "is isopool importable by sys.executable?"
            )
        self._log_later(
            logging.WARNING,
            f"pool {self.name!r}: fork server died (exit code {code}); starting a new one",
        )
        for worker in list(self._workers):
            if worker.pid is not None:
                signal_group(worker.pid, signal.SIGKILL)
            self._read_worker_locked(worker, now, out)
            self._finalize_locked(worker, now, out)
        self._spawning.clear()
        if self._state in (State.RUNNING, State.CLOSING) and not self._server_restarts.allow(now):
            raise BrokenPoolError("isopool fork server keeps dying (3 times in 10 s)")
            # _step starts the new one outside the lock (it blocks on a fork + exec).

    def _read_worker_locked(self, worker: WorkerHandle, now: float, out: list[Outcome]) -> None:
        if worker.finalized:
            return
        if worker.pid is None and self._server is not None:
            # Its reply can beat the fork server's SPAWNED message: read that first,
            # so the task is started (pid, attempts, deadline) before it is settled.
            self._on_server_locked(now, out)
        self._apply_read_locked(worker, *worker.read(), now, out)

    def _apply_read_locked(
        self,
        worker: WorkerHandle,
        frames: list[_wire.Frame],
        eof: bool,
        error: ProtocolError | None,
        now: float,
        out: list[Outcome],
    ) -> None:
        if worker.finalized:
            return
        if worker.pid is None:
            worker.held.extend(frames)  # settled when SPAWNED arrives
            frames = []
        for kind, task_id, payload in frames:
            self._on_frame_locked(worker, kind, task_id, payload, now, out)
        if error is not None:
            self._on_protocol_error_locked(worker, str(error), now)
            return
        if eof and worker.eof_at is None:
            worker.eof_at = now
            self._unregister(worker.pipes.result_r)

    def _log_later(self, level: int, message: str) -> None:
        """Log ``message`` from the resolver thread: handlers are user code.

        Under the monitor's lock, a handler that sleeps would delay every time-out,
        and one that calls ``pool.stats()`` would deadlock the monitor.
        """
        self._resolver.defer(functools.partial(log.log, level, "%s", message))

    def _on_protocol_error_locked(self, worker: WorkerHandle, what: str, now: float) -> None:
        """The result pipe carried bytes that are not the worker's: stop that worker.

        Its running task fails with a TaskCrashError that says so; what it had queued
        goes to other workers. (A task can write into any descriptor of its process.)
        """
        if worker.protocol_error is None:
            worker.protocol_error = what
            self._log_later(
                logging.ERROR, f"pool {self.name!r}: worker {worker.pid} wrote {what}; stopping it"
            )
        self._stop_worker_locked(worker, "protocol", None, now)

    def _on_frame_locked(
        self,
        worker: WorkerHandle,
        kind: int,
        task_id: int,
        payload: _wire.Payload,
        now: float,
        out: list[Outcome],
    ) -> None:
        if kind == _wire.INIT_FAILED:
            raise BrokenPoolError(Outcome.describe_init_failure(payload))
        if kind == _wire.REVOKED:
            self._on_revoked_locked(worker, task_id, payload == _wire.REVOKED_OK, now, out)
            return
        if not worker.tasks or worker.tasks[0].id != task_id:
            self._on_protocol_error_locked(
                worker, f"a frame for task {task_id}, which it was not running", now
            )
            return
        task = worker.tasks.popleft()
        task._worker = None
        if kind in _wire.REPLIES:
            payload, trailer = _wire.split_usage(payload)
            if trailer is not None and trailer != _wire.NOT_RUN:
                task._usage = trailer
                log = self._usage_log
                log += trailer
                if len(log) >= _USAGE_FOLD:
                    self._fold_usage_locked()
        if task._revoke is not None:  # its reply beat the worker's LATE answer
            worker.revoking.pop(task._call_number, None)
            task._revoke = None
            if task._revoked is not None:
                task._revoked.set()  # cancel() returns False: it ran
        if task._started_at is not None:
            run_time = now - task._started_at
            self._ema = run_time if self._ema is None else 0.8 * self._ema + 0.2 * run_time
        result: _wire.Payload | _oob.Received = payload
        if kind == _wire.RESULT and _oob.is_shared(payload):
            claimed = self._claim_result_locked(worker, task, payload)
            if isinstance(claimed, Outcome):
                self._end_run_locked(task, claimed, now, out)
                return
            result = claimed
        if worker.stop_task is task and not (worker.stop_reason == "kill" and task._keep_reply):
            # Stopped before its reply was read: the time-out or the kill stands
            # (Task.shutdown alone keeps a reply that raced in, as Elixir's does).
            self._end_run_locked(task, self._stop_outcome(worker, task), now, out)
        elif kind == _wire.RESULT:
            self._end_run_locked(task, Outcome.ok(task, result), now, out)
        elif kind == _wire.ERROR:
            self._end_run_locked(task, Outcome.raised(task, payload), now, out)
        elif kind == _wire.SHUTDOWN:
            self._end_run_locked(task, Outcome.shutdown(task, payload), now, out)
        else:
            self._end_run_locked(task, Outcome.bad_payload(task, payload), now, out)
        if worker.tasks and worker.stop_reason is None:
            # A worker being stopped starts nothing new: what is queued behind the
            # stopped task goes back to the pending queue when the worker is gone.
            self._start_head_locked(worker, now)
        if self._max_tasks and worker.assigned >= self._max_tasks and not worker.tasks:
            worker.retired = True  # it exits by itself after its last call

    def _fold_usage_locked(self) -> None:
        """Add the trailers kept since the last fold to the sums (C loops, not Python)."""
        columns = list(zip(*_wire.USAGE.iter_unpack(self._usage_log), strict=True))
        self._usage_log.clear()
        if not columns:
            return
        sums = self._usage_sums
        for i in (0, 1, 2, 4, 5):
            sums[i] += sum(columns[i])
        sums[3] = max(sums[3], *columns[3])
        sums[6] += len(columns[0])

    def _on_revoked_locked(
        self, worker: WorkerHandle, number: int, ok: bool, now: float, out: list[Outcome]
    ) -> None:
        """The worker answered a REVOKE of its call ``number``.

        ``ok``: it will never start that call, which leaves the worker's list here (and
        the worker skips it). Otherwise it had started and runs on as usual, unless it
        was being killed: then its worker is stopped like any running task's.
        """
        task = worker.revoking.pop(number, None)
        if task is None:
            return
        reason, task._revoke = task._revoke, None
        if ok:
            worker.tasks.remove(task)
            task._worker = None
            if task._started_at is not None:  # it was the head: it never ran after all
                task._started_at = task._deadline = None
                task.attempts -= 1
            if reason == "kill" and not task.done():
                out.append(Outcome.stopped(task))
            elif reason == "cancel" and task._revoked is not None:
                task._revoke_ok = True
                task._revoked.set()  # the thread in cancel() settles it
            elif reason == "cancel":
                out.append(Outcome.cancelled(task))
            elif reason == "steal":
                self._pending.push(task)  # never started: not an attempt
            if worker.tasks and worker.stop_reason is None:
                self._start_head_locked(worker, now)
            if self._max_tasks and worker.assigned >= self._max_tasks and not worker.tasks:
                worker.retired = True
            return
        if reason == "cancel" and task._revoked is not None:
            task._revoked.set()  # too late: cancel() returns False
        if worker.tasks and worker.tasks[0] is task:
            self._start_head_locked(worker, now)  # it had started: start its clock

    def _claim_result_locked(
        self, worker: WorkerHandle, task: Task[Any], payload: _wire.Payload
    ) -> _oob.Received | Outcome:
        """Open our own descriptor to the memfd of a result's large buffers, now.

        Then the worker may close its own (RELEASE), and the buffers live as long as
        the outcome: a result nobody collects is freed with its Task. A descriptor
        that is bogus (a hostile task wrote it) fails this task only.
        """
        self._stats["shared_results"] += 1
        try:
            if _oob.owner_of(payload) == os.getpid():  # written into the slab we lent it
                lease, worker.slab = worker.slab, None
                slab = lease.slab if lease is not None else None
                if lease is not None:
                    lease.slab = None  # the Received's own lease gives it back now
                received = _oob.claim_slab(payload, slab)
            else:  # a memfd of its own: it keeps it open until we have ours
                try:
                    received = _oob.claim(payload, worker.pid or 0)
                finally:
                    worker.release(_oob.token_of(payload))
        except (_oob.SharedBufferError, OSError) as exc:
            error = _oob.SharedBufferError(
                f"task {task.id} ({task.name}): its result's shared buffers are unusable: {exc}"
            )
            return Outcome.error(task, error)
        finally:
            worker.wants_slab = _oob.extent(payload)  # lent with its next call
        return received

    def _lend_slab_locked(self, worker: WorkerHandle) -> None:
        """Lend ``worker`` a slab for its next large result, before its next call.

        Not at once, as the last one comes in: by the next call that result and the
        call's own slab are usually back in the pool, so two slabs do where three
        would be made (each costs its pages once). The SLAB message goes before the
        CALL frame: the worker's watcher reads it while the call is being read.
        """
        size, worker.wants_slab = worker.wants_slab, 0
        try:
            lease = _oob.lend(size, mapped=False)  # no page faults under the lock
        except OSError:  # out of memory or descriptors: it uses memfds of its own
            return
        if lease is not None:
            worker.lend_slab(lease)

    def _stop_outcome(self, worker: WorkerHandle, task: Task[Any]) -> Outcome:
        if worker.stop_reason == "timeout" and worker.stop_task is task:
            return Outcome.timed_out(task, worker.pid)
        return Outcome.stopped(task)

    def _end_run_locked(
        self, task: Task[Any], outcome: Outcome, now: float, out: list[Outcome]
    ) -> None:
        """A run of ``task`` ended: restart it per its policy, or settle its future."""
        task._deadline = None
        task._started_at = None
        if task.done():
            return  # settled already (killed while its call was queued): count it once
        self._stats[outcome.stat] += 1
        restartable = (
            outcome.kind not in ("cancelled", "error")
            and not task._kill_requested  # a killed task is never restarted
            and self._state in (State.RUNNING, State.CLOSING)
        )
        if not (restartable and should_restart(task.options.restart, outcome.exit)):
            out.append(outcome)
            return
        delay = self._restart_delay_locked(task, now)
        if delay is None:
            out.append(Outcome.restart_limit(task, outcome))
            return
        self._stats["restarted"] += 1
        self._log_later(logging.WARNING, outcome.restart_message(self.name, task, delay))
        if delay > 0:
            self._delayed.push(now + delay, task)
        else:
            self._pending.push(task)

    def _restart_delay_locked(self, task: Task[Any], now: float) -> float | None:
        """Seconds to wait before re-running ``task``; None to give up.

        With ``max_retries`` the task retries on its own budget with exponential
        back-off and jitter; otherwise OTP's restart intensity decides, at once.
        """
        opts = task.options
        if opts.max_retries is not None:
            retry = task.attempts  # the retry about to happen: 1, 2, ...
            if retry > opts.max_retries:
                return None
            return backoff_delay(opts.backoff, retry)
        intensity = task._intensity
        if intensity is None or not intensity.allow(now):
            return None
        return 0.0

    def _check_deadlines_locked(self, now: float, out: list[Outcome]) -> None:
        for worker in list(self._workers):
            if worker.finalized:
                continue
            head = worker.tasks[0] if worker.tasks else None
            if head is not None and head._deadline is not None and now >= head._deadline:
                head._deadline = None
                self._log_later(
                    logging.INFO,
                    f"pool {self.name!r}: task {head.id} ({head.name}) timed out after "
                    f"{head.options.timeout} s; stopping worker {worker.pid}",
                )
                self._stop_worker_locked(worker, "timeout", head, now)
            if worker.kill_at is not None and now >= worker.kill_at:
                worker.kill_at = None
                if worker.pid is not None:
                    signal_group(worker.pid, signal.SIGKILL)
            if worker.eof_at is not None and now >= worker.eof_at + _STATUS_WAIT:
                self._finalize_locked(worker, now, out)

    def _next_deadline_locked(self) -> float:
        deadline = self._delayed.next_due()
        steal = any(w.accepting and not w.tasks for w in self._workers)
        for worker in self._workers:
            head = worker.tasks[0] if worker.tasks else None
            if head is not None and head._deadline is not None:
                deadline = min(deadline, head._deadline)
            if steal and head is not None and head._started_at is not None and _stealable(worker):
                deadline = min(deadline, head._started_at + _long_after(self._ema))
            if worker.kill_at is not None:
                deadline = min(deadline, worker.kill_at)
            if worker.eof_at is not None:
                deadline = min(deadline, worker.eof_at + _STATUS_WAIT)
        return deadline

    # -- worker lifecycle (monitor thread, under the lock) ----------------------

    def _add_worker_locked(self) -> None:
        worker = WorkerHandle(next(self._worker_ids))
        self._workers.append(worker)
        self._register(worker.pipes.result_r, _RESULT, worker, select.EPOLLIN)
        self._unspawned.append(worker)
        self._spawn_unspawned_locked()

    def _replace_workers_locked(self) -> None:
        if self._state is State.RUNNING or (self._state is State.CLOSING and self._pending):
            alive = sum(1 for w in self._workers if w.accepting)
            for _ in range(self.max_workers - alive):
                self._add_worker_locked()
                self._stats["workers_replaced"] += 1

    def _finalize_locked(self, worker: WorkerHandle, now: float, out: list[Outcome]) -> None:
        """``worker`` is dead: pin its death on its head task, requeue the rest."""
        if worker.finalized:
            return
        worker.finalized = True
        self._forget_locked(worker)
        if worker.pid is not None:
            # Whatever the task left in its group. The group only: the worker itself is
            # dead and reaped, so its pid may already belong to an unrelated process.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(worker.pid, signal.SIGKILL)
        tasks = list(worker.tasks)
        worker.tasks.clear()
        worker.revoking.clear()
        info = decode_exit(worker.status)
        for index, task in enumerate(tasks):
            task._worker = None
            reason, task._revoke = task._revoke, None
            # Only a call behind the head provably never started; the head may have.
            started = index == 0 and task._started_at is not None
            if reason == "cancel" and task._revoked is not None:
                task._revoke_ok = not started
                task._revoked.set()
                if not started:
                    continue  # cancel() settles it
            if task.done():
                continue  # killed while queued there: already settled
            if reason == "cancel" and not started:
                out.append(Outcome.cancelled(task))
                continue
            if started:
                if worker.stop_reason == "signalled":  # as the stdlib: BrokenProcessPool
                    self._stats["crashed"] += 1
                    error = Outcome.crashed(task, worker.pid, info).to_exception()
                    if error is not None:  # always, for a crash
                        out.append(Outcome.error(task, error))  # no restart, no WARNING
                elif worker.stop_task is task or worker.stop_reason == "terminate":
                    self._end_run_locked(task, self._stop_outcome(worker, task), now, out)
                else:
                    crash = Outcome.crashed(task, worker.pid, info, worker.protocol_error)
                    self._end_run_locked(task, crash, now, out)
            elif task._kill_requested:
                self._end_run_locked(task, Outcome.stopped(task), now, out)
            else:
                self._pending.push(task)  # never started: not an attempt
        if not (tasks or worker.retired or worker.stop_reason) and self._state is State.RUNNING:
            self._log_later(
                logging.WARNING,
                f"pool {self.name!r}: idle worker {worker.pid} {info.describe()}; replacing it",
            )

    def _forget_locked(self, worker: WorkerHandle) -> None:
        self._unregister(worker.pipes.result_r)
        if worker.out_registered:
            self._unregister(worker.pipes.call_w)
        worker.out.clear()
        if worker.slab is not None:  # lent for a result it will never write now
            worker.slab.release()
            worker.slab = None
        worker.pipes.close()
        self._spawning.pop(worker.id, None)
        if worker in self._unspawned:
            self._unspawned.remove(worker)
        if worker.pid is not None:
            self._by_pid.pop(worker.pid, None)
        self._workers.remove(worker)

    def _close_if_idle_locked(self, now: float) -> bool:
        """In CLOSING, once no work is left: retire every worker, then close."""
        if self._state is not State.CLOSING or self._pending or self._delayed:
            return self._state in (State.CLOSED, State.BROKEN)
        if any(w.tasks for w in self._workers):
            return False
        for worker in self._workers:
            if not worker.retired:
                worker.retired = True
                worker.kill_at = now + _RETIRE_GRACE
                os.close(worker.pipes.call_w)  # EOF: the worker exits by itself
                worker.pipes.call_w = -1
        if self._workers:
            return False
        self._state = State.CLOSED
        return True

    # -- failure and teardown ----------------------------------------------------

    def _break(self, exc: BaseException) -> None:
        """Isopool itself failed: fail every task with BrokenPoolError, kill workers."""
        out: list[Outcome] = []
        with self._lock:
            self._state = State.BROKEN
            self._broken_cause = exc
            error = (
                exc
                if isinstance(exc, BrokenPoolError)
                else BrokenPoolError(f"pool {self.name!r} broke: {exc!r}")
            )
            for task in self._drain_queued_locked():
                out.append(Outcome.error(task, error))
            for worker in list(self._workers):
                for task in worker.tasks:
                    out.append(Outcome.error(task, error))
                worker.tasks.clear()
                if worker.pid is not None:
                    signal_group(worker.pid, signal.SIGKILL)
                self._forget_locked(worker)
        resolve(out, self._resolver.defer)

    def _close_resources(self) -> None:
        with self._lock:
            server, self._server = self._server, None
            for worker in list(self._workers):
                if worker.pid is not None:
                    signal_group(worker.pid, signal.SIGKILL)
                self._forget_locked(worker)
        if server is not None:
            server.close(timeout=5.0)
        self._epoll.close()
        self._resolver.close()
        # The wake-up pipe stays open until the Monitor is collected: another thread
        # may still call _wake(), and a closed fd number could be reused by a file.

    def _close_unstarted(self) -> None:
        """Close what ``__init__`` made before it failed (no thread, no process yet)."""
        for worker in self._workers:
            worker.pipes.close()
        self._epoll.close()
        os.close(self._wake_r)
        os.close(self._wake_w)
        self._wake_r = self._wake_w = -1  # so __del__ cannot close a reused number

    def __del__(self) -> None:
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError, AttributeError):
                os.close(fd)

    def _register(self, fd: int, kind: int, worker: WorkerHandle | None, mask: int) -> None:
        self._fds[fd] = (kind, worker)
        self._epoll.register(fd, mask)

    def _unregister(self, fd: int) -> None:
        if self._fds.pop(fd, None) is not None:
            with contextlib.suppress(OSError, ValueError):
                self._epoll.unregister(fd)


def _long_after(ema: float | None) -> float:
    """How long a call must run before the calls behind it may move elsewhere."""
    return max(_STEAL_AFTER, 10 * (ema or 0.0))


def _stealable(worker: WorkerHandle) -> bool:
    """Whether calls queued behind ``worker``'s head could still be taken back."""
    return any(
        t._revoke is None and t._label is None for t in itertools.islice(worker.tasks, 1, None)
    )


def _running_long(worker: WorkerHandle, now: float, ema: float | None) -> bool:
    """Whether ``worker``'s head call has run long: queue nothing more behind it.

    Long means ``_STEAL_AFTER`` seconds and ten times the recent mean run time, so a
    loaded machine, where every call is slow, keeps its pipelining.
    """
    started = worker.tasks[0]._started_at
    return started is not None and now - started >= _long_after(ema)

"""The engine's dispatching half: its state, and how work reaches workers.

``Dispatcher`` owns the state of one pool's engine (the pool's ``State``, the pending
and back-off queues, the workers, the counters) and the decisions that move work
*towards* workers: dispatching pending tasks (pipelined when tasks are tiny), taking
calls back from a worker busy with a slow call (stealing), starting a worker's head
call's clock, stopping workers (SIGTERM, then SIGKILL after the grace), and making,
replacing and retiring workers. ``_machine.Machine`` adds the events and what a
reply, a take-back answer or a death means. Neither does I/O: both ask the ``Port``.
"""

from __future__ import annotations

import collections
import enum
import itertools
import logging
import signal
from array import array
from typing import Final, Protocol

from .._errors import BrokenPoolError, PoolClosedError, ProtocolError
from .._spec import ShutdownTimeout
from . import oob as _oob
from . import wire as _wire
from .handle import WorkerHandle, WorkerPhase
from .metrics import RunTimings
from .outcome import Outcome, tripped_error
from .policy import RestartIntensity
from .queue import DelayedQueue, PendingQueue
from .run import Revoke, Runnable, RunPhase

__all__ = ["Dispatcher", "Port", "State"]

_FAST_TASK: Final = 0.002  # below this mean run time (s), pipelining pays for itself
_PIPELINE_DEPTH: Final = 16  # enough to hide a round trip (4 costs ~30% of throughput)
_RETIRE_GRACE: Final = 5.0  # an idle worker told to exit gets this long before SIGKILL
# A call queued behind one that has run this long goes to an idle worker instead: long
# enough that a burst of tiny tasks is never shuffled, short next to a slow task.
_STEAL_AFTER: Final = 0.01


class State(enum.Enum):
    """The one state of a pool; each transition lives in one Machine method."""

    RUNNING = "running"  # takes work
    CLOSING = "closing"  # shutdown() was called: finishes queued work, takes no new
    CLOSED = "closed"  # every worker and the fork server are gone
    BROKEN = "broken"  # isopool itself failed; pending work failed with BrokenPoolError


class Port(Protocol):
    """What the machine asks the outside world to do; the monitor is the real one."""

    def new_worker(self, worker_id: int) -> WorkerHandle:
        """Make a worker's pipes and handle, and watch its result pipe."""

    def spawn(self, worker: WorkerHandle) -> None:
        """Ask the fork server for ``worker``'s process (SPAWNED comes back)."""

    def flush(self, worker: WorkerHandle) -> None:
        """Write what ``worker.out`` holds that its pipe takes; watch for room for the rest."""

    def revoke(self, worker: WorkerHandle, number: int) -> bool:
        """Send REVOKE ``number`` to ``worker``; False if it could not be sent."""

    def signal(self, pid: int, sig: signal.Signals) -> None:
        """Send ``sig`` to worker ``pid``'s process group (or to it alone)."""

    def kill_leftovers(self, pid: int) -> None:
        """SIGKILL what is left in dead worker ``pid``'s process group (the group only)."""

    def end_calls(self, worker: WorkerHandle) -> None:
        """Close ``worker``'s call pipe: at EOF it exits by itself."""

    def stop_reading(self, worker: WorkerHandle) -> None:
        """``worker``'s result pipe is at EOF: stop watching it."""

    def read(self, worker: WorkerHandle) -> tuple[list[_wire.Frame], bool, ProtocolError | None]:
        """Read what ``worker`` wrote: (frames, at EOF, protocol error)."""

    def release(self, worker: WorkerHandle) -> None:
        """``worker`` is gone: stop watching and close its pipes."""

    def log(self, level: int, message: str) -> None:
        """Log ``message`` later, from a thread that may run user code."""

    def lend_slab(self, worker: WorkerHandle) -> None:
        """Lend ``worker`` a slab for its next large result (see ``_oob``), if one can be had."""

    def claim_result(
        self, worker: WorkerHandle, task: Runnable, payload: _wire.Payload
    ) -> _oob.Received | Outcome:
        """Take hold of the shared buffers of ``task``'s result; an Outcome if bogus."""


class Dispatcher:
    """The state of one pool's engine and how work reaches its workers (see module doc)."""

    def __init__(self, name: str, max_workers: int, max_tasks: int, port: Port) -> None:
        self.name = name
        self.max_workers = max_workers
        self.max_tasks = max_tasks  # calls per worker, 0 for no limit
        self.io = port
        self.state = State.RUNNING
        self.broken_cause: BaseException | None = None
        self.server_up = False  # a fork server takes spawn requests
        self.sleep_until = 0.0  # when the monitor will next wake up by itself
        self.need_wake = False  # something is due before sleep_until
        self.pending: PendingQueue[Runnable] = PendingQueue()
        self.delayed: DelayedQueue[Runnable] = DelayedQueue()  # restarts backing off
        self.workers: list[WorkerHandle] = []
        self.by_pid: dict[int, WorkerHandle] = {}
        self._unspawned: list[WorkerHandle] = []
        self._spawning: dict[int, WorkerHandle] = {}
        self._worker_ids = itertools.count(1)
        self.server_restarts = RestartIntensity(max_restarts=3, max_seconds=10.0)
        self._stats: collections.Counter[str] = collections.Counter()
        # Sums of the replies' usage: wall, user, system seconds, max peak RSS,
        # voluntary and involuntary switches, and how many replies carried one;
        # the trailers not yet added in (folded in batches: one append per reply).
        self._usage_sums: list[float] = [0.0, 0.0, 0.0, 0, 0, 0, 0]
        self._usage_log = bytearray()
        # Task duration and queue wait histograms: None until a metrics collector asks
        # for them (Monitor.timings), so a pool without metrics observes nothing; with
        # them, the arrays each run's figures are appended to (RunTimings.fold).
        self.timings: RunTimings | None = None
        self.durations: array[float] | None = None
        self.waits: array[float] | None = None
        self.ema: float | None = None  # mean run time of recent tasks, seconds

    def start(self) -> None:
        """Make the pool's first workers (spawned once a fork server is up)."""
        for _ in range(self.max_workers):
            self._add_worker()

    def check_open(self) -> None:
        """Raise PoolClosedError or BrokenPoolError unless the pool takes work."""
        if self.state is State.BROKEN:
            raise BrokenPoolError(
                f"pool {self.name!r} is broken: {self.broken_cause}"
            ) from self.broken_cause
        if self.state is not State.RUNNING:
            raise PoolClosedError(f"cannot schedule new tasks after shutdown (pool {self.name!r})")

    def take_wake(self) -> bool:
        """Whether the monitor must wake up now (something is due before it would)."""
        wake, self.need_wake = self.need_wake, False
        return wake

    # -- dispatch --------------------------------------------------------------

    def _depth(self, worker: WorkerHandle, now: float) -> int:
        depth = 1 if self.ema is None or self.ema >= _FAST_TASK else _PIPELINE_DEPTH
        if worker.tasks and _running_long(worker, now, self.ema):
            return 1  # queue nothing behind a slow call
        if self.max_tasks:
            depth = min(depth, self.max_tasks - worker.assigned)
        return depth

    def _dispatch(self, now: float, out: list[Outcome]) -> None:
        """Hand pending tasks to workers with room, least loaded first.

        A task whose restart intensity has tripped (its supervisor gave up) is not
        started: it fails with RestartLimitError, even if a worker is free.
        """
        if not self.pending:
            self._steal(now)
            return
        workers = [w for w in self.workers if w.accepting]
        touched: set[WorkerHandle] = set()
        heads: list[WorkerHandle] = []  # started once their calls are written
        while workers and self.pending:
            worker = self._least_loaded_with_room(workers, now)
            if worker is None:
                break
            task = self.pending.pop()
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
                    self.pending.push(task)
                    break
                worker = idle
            if worker.wants_slab and worker.slab is None:
                self.io.lend_slab(worker)  # before the call: for its large result
            task._run = worker.queue_call(task)
            if len(worker.tasks) == 1:
                heads.append(worker)
            self._retire_at_last_call(worker)
            touched.add(worker)
        for worker in touched:
            self.io.flush(worker)
        # After the writes, with the same ``now``: the worker is already reading its
        # call while the run's clock, attempt count and queue wait are set down.
        for worker in heads:
            self._start_head(worker, now)
        self._steal(now)

    def _least_loaded_with_room(
        self, workers: list[WorkerHandle], now: float
    ) -> WorkerHandle | None:
        """The worker with the fewest calls among those below their own depth.

        Each worker's own depth, not the least loaded one's: a worker running a slow
        call takes nothing behind it (depth 1), and must not stop the pipelined
        workers from being refilled until they run dry (which halved their rate).
        """
        best = None
        for worker in workers:
            load = len(worker.tasks)
            if (best is None or load < len(best.tasks)) and load < self._depth(worker, now):
                best = worker
        return best

    def _retire_at_last_call(self, worker: WorkerHandle) -> None:
        """``worker`` was given its last call (``max_tasks_per_child``): replace it now.

        It takes no more calls and exits by itself after that one, so its replacement
        is forked while the call runs instead of after its reply: with
        ``max_tasks_per_child=1`` each fork overlaps a task rather than following it.
        """
        if self.max_tasks and worker.assigned >= self.max_tasks and worker.accepting:
            worker.retire()
            self._replace_workers()

    def _steal(self, now: float) -> None:
        """Nothing pending and a worker idle: take back calls queued behind a slow one.

        They return to the pending queue (no attempt counted) when the busy worker
        confirms it will not start them, and go to the idle worker: no task waits
        behind a slow task while another worker has nothing to do.
        """
        if self.pending or not any(w.accepting and not w.tasks for w in self.workers):
            return
        for worker in self.workers:
            if (
                len(worker.tasks) < 2
                or worker.stop_reason
                or not _running_long(worker, now, self.ema)
            ):
                continue
            for task in itertools.islice(worker.tasks, 1, None):
                run = task._run
                if run is None or run.revoke is not None or task._label is not None:
                    continue
                if self._revoke(task):
                    run.revoke = Revoke.STEAL

    def _revoke(self, task: Runnable) -> bool:
        """Send REVOKE for ``task``'s call; the answer comes as a REVOKED frame."""
        run = task._run
        assert run is not None
        if not self.io.revoke(run.worker, run.number):
            return False  # full (never with <= 16 calls queued) or the worker is gone
        run.worker.revoking[run.number] = task
        return True

    def _start_head(self, worker: WorkerHandle, now: float) -> None:
        """The head of ``worker`` starts running now (if the worker exists yet)."""
        task = worker.tasks[0]
        run = task._run
        assert run is not None
        # A head asked back (REVOKE) may have started before the worker's watcher read
        # the request: run its clock (time-out, attempts) as for any head; an answer
        # that it will never run undoes it (_on_revoked). A head killed before it
        # started stops its worker now, unless that answer is still to come.
        if task._stop is not None and run.revoke is None:
            self._stop_worker(worker, "kill", task, now)
            return
        if worker.pid is None or run.started_at is not None:
            return  # started when the fork server reports the worker's pid
        run.started_at = now
        run.phase = RunPhase.RUNNING
        task._pid = worker.pid
        task._usage = None  # a run that crashes must not show an earlier run's usage
        task.attempts += 1
        waits = self.waits
        if waits is not None and task.attempts == 1:
            waits.append(now - task._queued_at)
        timeout = task.options.timeout
        if timeout is not None:
            run.deadline = now + timeout
            if run.deadline < self.sleep_until:
                self.need_wake = True

    def _drain_queued(self) -> list[Runnable]:
        """Take every task that waits to run (pending or backing off)."""
        return self.pending.drain() + self.delayed.drain()

    def _cancel_queued(self) -> list[Outcome]:
        """Cancel every task that waits to run (shutdown, terminate); count them."""
        tasks = self._drain_queued()
        self._stats["cancelled"] += len(tasks)
        return [Outcome.cancelled(t) for t in tasks]

    # -- stopping workers --------------------------------------------------------

    def _kill_assigned(self, task: Runnable, now: float, out: list[Outcome]) -> bool:
        """Kill a task written to a worker; True if its process must be stopped.

        A call queued behind another one has not started: it is taken back from the
        worker (REVOKE) and the task is settled now, so ``kill()`` never waits behind
        another task. Should the worker answer that it had started meanwhile, the
        worker is stopped then.
        """
        run = task._run
        assert run is not None
        worker = run.worker
        if worker.tasks and worker.tasks[0] is task:
            # Running, or about to: a REVOKE still unanswered cannot be trusted to
            # win, so stop the worker; an answer that it never ran settles it then.
            if run.revoke is not None:
                run.revoke = Revoke.KILL
            self._stop_worker(worker, "kill", task, now)
            return True
        if run.revoke is None and not self._revoke(task):
            return True  # the worker is gone: its death settles the task
        run.revoke = Revoke.KILL
        self._stats["killed"] += 1
        out.append(Outcome.stopped(task))
        return False

    def _stop_worker(
        self, worker: WorkerHandle, reason: str, task: Runnable | None, now: float
    ) -> None:
        """Stop ``worker``: SIGTERM its process group now, SIGKILL after the grace."""
        if worker.stop_reason is not None or worker.finalized:
            return
        worker.stop_reason = reason
        worker.phase = WorkerPhase.STOPPING
        worker.stop_task = task
        head = task or (worker.tasks[0] if worker.tasks else None)
        grace: ShutdownTimeout = _RETIRE_GRACE
        if head is not None:
            stop = head._stop
            grace = (
                stop.grace if stop is not None and stop.grace is not None else head.options.shutdown
            )
        brutal = grace == "brutal_kill" or grace == 0
        worker.kill_at = None if brutal else now + float(grace)
        if worker.kill_at is not None and worker.kill_at < self.sleep_until:
            self.need_wake = True
        if worker.pid is not None:
            self.io.signal(worker.pid, signal.SIGKILL if brutal else signal.SIGTERM)

    def _on_protocol_error(self, worker: WorkerHandle, what: str, now: float) -> None:
        """The result pipe carried bytes that are not the worker's: stop that worker.

        Its running task fails with a TaskCrashError that says so; what it had queued
        goes to other workers. (A task can write into any descriptor of its process.)
        """
        if worker.protocol_error is None:
            worker.protocol_error = what
            self.io.log(
                logging.ERROR, f"pool {self.name!r}: worker {worker.pid} wrote {what}; stopping it"
            )
        self._stop_worker(worker, "protocol", None, now)

    # -- worker lifecycle ------------------------------------------------------------

    def _add_worker(self) -> None:
        worker = self.io.new_worker(next(self._worker_ids))
        self.workers.append(worker)
        self._unspawned.append(worker)
        self._spawn_unspawned()

    def _spawn_unspawned(self) -> None:
        if not self.server_up:
            return
        for worker in self._unspawned:
            self.io.spawn(worker)
            if worker.phase is WorkerPhase.NEW:
                worker.phase = WorkerPhase.SPAWNING
            self._spawning[worker.id] = worker
        self._unspawned.clear()

    def _replace_workers(self) -> None:
        if self.state is State.RUNNING or (self.state is State.CLOSING and self.pending):
            alive = sum(1 for w in self.workers if w.accepting)
            for _ in range(self.max_workers - alive):
                self._add_worker()
                self._stats["workers_replaced"] += 1

    def _forget(self, worker: WorkerHandle) -> None:
        self.io.release(worker)
        self._spawning.pop(worker.id, None)
        if worker in self._unspawned:
            self._unspawned.remove(worker)
        if worker.pid is not None:
            self.by_pid.pop(worker.pid, None)
        self.workers.remove(worker)

    def _kill_and_forget(self, worker: WorkerHandle) -> None:
        if worker.pid is not None:
            self.io.signal(worker.pid, signal.SIGKILL)
        worker.phase = WorkerPhase.DEAD
        self._forget(worker)

    def _close_if_idle(self, now: float) -> bool:
        """In CLOSING, once no work is left: retire every worker, then close."""
        if self.state is not State.CLOSING or self.pending or self.delayed:
            return self.state in (State.CLOSED, State.BROKEN)
        if any(w.tasks for w in self.workers):
            return False
        for worker in self.workers:
            if worker.accepting:
                worker.retire()
                worker.kill_at = now + _RETIRE_GRACE
                self.io.end_calls(worker)  # EOF: the worker exits by itself
        if self.workers:
            return False
        self.state = State.CLOSED
        return True


def _long_after(ema: float | None) -> float:
    """How long a call must run before the calls behind it may move elsewhere."""
    return max(_STEAL_AFTER, 10 * (ema or 0.0))


def _stealable(worker: WorkerHandle) -> bool:
    """Whether calls queued behind ``worker``'s head could still be taken back."""
    return any(
        t._run is not None and t._run.revoke is None and t._label is None
        for t in itertools.islice(worker.tasks, 1, None)
    )


def _running_long(worker: WorkerHandle, now: float, ema: float | None) -> bool:
    """Whether ``worker``'s head call has run long: queue nothing more behind it.

    Long means ``_STEAL_AFTER`` seconds and ten times the recent mean run time, so a
    loaded machine, where every call is slow, keeps its pipelining.
    """
    run = worker.tasks[0]._run
    return (
        run is not None and run.started_at is not None and now - run.started_at >= _long_after(ema)
    )

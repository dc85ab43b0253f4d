"""The parent-side monitor: the thread and the I/O around one pool's engine.

The decisions (what to dispatch where, what a reply or a death means, restarts,
time-outs, take-backs) are ``_machine.Machine``'s, a state machine fed with events and
a clock. This module is the glue: one thread that waits on epoll and turns what it
sees into events, the lock that guards the machine, and ``_Port``, which does what the
machine asks (write calls, send REVOKE, signal process groups, close pipes, log).

Who owns what, and who reads what::

    caller threads                          monitor thread  isopool-monitor[NAME]
    --------------                          ------------------------------------
    submit(): pickle the call (no lock);    epoll on: each worker's result_r, the
    lock; machine.submit: queue it and      fork server socket, the wake-up pipe, and
    dispatch to idle workers: write frames  call_w of any worker with unsent bytes.
    to call_w (non-blocking; the rest       Read pipes (no lock); lock; feed the
    waits in the worker's out buffer);      machine the frames, the fork server's
    unlock                                  SPAWNED/EXITED and a tick; unlock; then
                                            finish futures (no user code: _outcome).
    cancel()/kill() of a call queued on     resolver thread  isopool-resolver[NAME]
    a worker: REVOKE it (take_back)         done-callbacks and logs (user code)

    parent                        fork server                    worker k
    call_w[k]    --- CALL frames ----------------------------->  call_r[k]    main thread
    control_w[k] --- cookie, REVOKE n, RELEASE, SLAB ---------->  control_r[k] watcher thread
    result_r[k]  <-- RESULT / ERROR / BAD_PAYLOAD / REVOKED ---  result_w[k]  (both, locked)
    sock         <-- SPAWNED k pid, EXITED pid status -->  forks and reaps

Buffers of 128 KiB or more do not cross the pipes (``_oob``): a call's go into a
slab (a reusable memfd this process owns) when the caller pickles it, and a worker
writes a large result into a slab lent to it (SLAB, sent before its next call) or,
with none, into a sealed memfd of its own. The port opens or takes that memory as
the machine reads the RESULT frame (``_Port.claim_result``: a few syscalls, no copy)
and RELEASEs the worker's memfd; the caller's thread copies or maps it when it
unpickles.

Futures are finished outside the lock, and without running user code: a future
becomes done here, its value is unpickled by whoever asks for it, and done-callbacks
(which may call ``submit``: the lock is not re-entrant) run on the resolver thread.
The lock is held only for the machine's bookkeeping and non-blocking pipe I/O.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import itertools
import logging
import os
import select
import signal
import threading
import time
import weakref
from typing import Final, cast

from .._errors import BrokenPoolError, ProtocolError
from .._spec import ShutdownTimeout
from . import oob as _oob
from . import wire as _wire
from .handle import WorkerHandle
from .machine import Machine, State
from .metrics import RunTimings
from .outcome import Outcome, resolve
from .process import (
    ForkServer,
    WorkerPipes,
    describe_spawn_failure,
    describe_start_failure,
    limit_hint,
    signal_group,
)
from .resolver import Resolver
from .run import Answer, Runnable, StopRequest
from .share import InitPayload

__all__ = ["Monitor", "State"]

log = logging.getLogger(__name__)

_TAKE_BACK_WAIT: Final = 0.5  # cancel() waits this long for a worker to hand a call back
_WAKE, _SERVER, _RESULT, _CALL = range(4)


class Monitor:
    """Supervises the workers of one pool and runs its tasks; the pool's engine.

    Thread-safe: ``submit``, ``kill``, ``shutdown`` and ``terminate`` may be called
    from any thread. One lock guards the machine; see the module docstring.
    """

    def __init__(
        self,
        name: str,
        max_workers: int,
        max_tasks_per_child: int | None,
        initializer: InitPayload | None,
        server: ForkServer | None = None,
        cpus: frozenset[int] | None = None,
        usage: bool = True,
    ) -> None:
        self.name = name
        self.measure_usage = usage  # whether workers measure Task.usage (Pool(usage=))
        self._cpus = cpus  # the fork server's affinity, so every worker's
        self.max_workers = max_workers
        self._max_tasks = max_tasks_per_child or 0
        self._initializer = initializer
        self._lock = threading.Lock()
        self._task_ids = itertools.count(1)
        self._server: ForkServer | None = None
        self._first_server = server  # forked by Pool.__init__; taken by _start_server
        self._resolver = Resolver(name)  # runs callbacks and logs: user code
        self._epoll = select.epoll()
        self._fds: dict[int, tuple[int, WorkerHandle | None]] = {}
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._register(self._wake_r, _WAKE, None, select.EPOLLIN)
        self._port = _Port(self)
        self._machine = Machine(name, max_workers, self._max_tasks, self._port)
        self._thread = threading.Thread(
            target=self._run, name=f"isopool-monitor[{name}]", daemon=True
        )
        try:
            self._machine.start()
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
        return self._machine.state

    @property
    def broken_cause(self) -> BaseException | None:
        """Why the pool broke (None unless it is BROKEN)."""
        return self._machine.broken_cause

    def next_task_id(self) -> int:
        """A task id unique within this pool (it travels in frame headers)."""
        return next(self._task_ids)

    def submit_check(self) -> None:
        """Raise PoolClosedError or BrokenPoolError unless the pool takes work."""
        with self._lock:
            self._machine.check_open()

    def submit(self, task: Runnable) -> None:
        """Queue ``task`` and start it if a worker is free.

        Raises:
            PoolClosedError: the pool was shut down.
            BrokenPoolError: the pool is broken.
        """
        if not task._payload:
            return  # its call did not pickle; it already failed
        refused: list[Outcome] = []
        machine = self._machine
        with self._lock:
            machine.submit(task, time.monotonic(), refused)
            wake = machine.take_wake()
        if wake:
            self._wake()
        if refused:
            resolve(refused)
            self._count_runs(refused)

    def kill(
        self,
        task: Runnable,
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
        stop = StopRequest(error, grace, keep_reply)
        with self._lock:
            stopping, running = self._machine.kill(task, stop, time.monotonic(), out)
            wake = self._machine.take_wake()
        if wake:
            self._wake()
        resolve(out)
        self._count_runs(out)
        if running and wait and threading.current_thread() is not self._thread:
            grace = grace if grace is not None else task.options.shutdown
            task._wait_stopped((0.0 if grace == "brutal_kill" else grace) + 10.0)
        return stopping

    def take_back(self, task: Runnable, wait: bool) -> bool:
        """Take back ``task``'s call from its worker if it has not started; see Task.cancel.

        With ``wait``, block (at most ``_TAKE_BACK_WAIT`` seconds) for the worker's
        answer and cancel the task if the call will never run; without it, the task is
        cancelled when the answer comes, or runs as usual if it had started.
        """
        with self._lock:
            answer = self._machine.take_back(task, Answer() if wait else None)
        if answer is None:
            return False
        answer.event.wait(_TAKE_BACK_WAIT)  # the lock is not held: the monitor answers
        with self._lock:
            handed_back = self._machine.take_back_waited(task, answer)
        return handed_back and (task._force_cancel() or task.cancelled())

    def shutdown(self, wait: bool, cancel_futures: bool) -> None:
        """Take no new work; finish (or cancel) queued work; optionally wait."""
        out: list[Outcome] = []
        with self._lock:
            self._machine.shutdown(cancel_futures, out)
        self._wake()
        resolve(out)
        self._count_runs(out)
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
            self._machine.terminate(time.monotonic(), out)
        self._wake()
        resolve(out)
        self._count_runs(out)
        if threading.current_thread() is not self._thread:
            deadline = None if timeout is None else time.monotonic() + timeout
            self._thread.join(timeout)
            self._resolver.join(None if deadline is None else max(0.0, deadline - time.monotonic()))

    def forget(self, task: Runnable) -> None:
        """``task`` was cancelled while pending: drop it from the count at once."""
        with self._lock:
            self._machine.forget(task)

    def signal_workers(self, sig: signal.Signals) -> None:
        """``Pool.terminate_workers``/``kill_workers``: close, cancel queued, signal all.

        Returns at once. See ``Machine.signal_workers``.
        """
        out: list[Outcome] = []
        with self._lock:
            self._machine.signal_workers(sig, time.monotonic(), out)
        self._wake()
        resolve(out)
        self._count_runs(out)

    def stats(self) -> dict[str, float]:
        """Return counters: workers, pending, running, and totals since start."""
        with self._lock:
            return self._machine.stats()

    def timings(self) -> dict[str, tuple[tuple[float, ...], list[int], float]]:
        """Snapshots of the duration and queue wait histograms (see ``_metrics``).

        The first call starts them: runs that start or end from then on are counted.
        """
        with self._lock:
            machine = self._machine
            timings = machine.timings
            if timings is None:
                timings = machine.timings = RunTimings()
                machine.durations, machine.waits = timings.durations, timings.waits
            timings.fold()
            return {
                "duration": timings.duration.snapshot(),
                "queue_wait": timings.queue_wait.snapshot(),
            }

    def _count_runs(self, out: list[Outcome]) -> None:
        """Count the runs of ``out``, whose futures were just settled, in the duration histogram.

        The count comes after the settling, so a caller waiting on one is woken first:
        a run's duration shows in a scrape a few microseconds after its future is
        done (its outcome counter, under the lock, at once). Appends need no lock
        (atomic under the GIL; ``RunTimings.fold`` takes out only what it saw); a full
        batch is folded under it.
        """
        durations = self._machine.durations
        if durations is None or not out:
            return
        for outcome in out:
            if outcome.ran is not None:
                durations.append(outcome.ran)
        if len(durations) >= RunTimings.FOLD_AT:
            with self._lock:
                timings = self._machine.timings
                assert timings is not None  # set with durations
                timings.fold()

    def _wake(self) -> None:
        # BlockingIOError: a wake-up is already pending, which is all we need.
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"!")

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
        machine = self._machine
        events = self._epoll.poll(max(0.0, machine.sleep_until - time.monotonic()))
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
                    machine.frames(*read, now, out)
            for (fd, _mask), read in zip(events, reads, strict=True):
                if read is None:
                    self._on_event_locked(fd, now, out)
            done = machine.tick(now, out)
            restart_server = not machine.server_up and not done
        resolve(out, self._resolver.defer)
        self._count_runs(out)
        if restart_server:
            self._start_server()  # outside the lock: it blocks on a fork + exec
        return not done

    def _pre_read(
        self, fd: int
    ) -> tuple[WorkerHandle, list[_wire.Frame], bool, ProtocolError | None] | None:
        kind, worker = self._fds.get(fd, (-1, None))
        if kind != _RESULT or worker is None or worker.finalized:
            return None
        return (worker, *worker.read(drain=False))

    def _on_event_locked(self, fd: int, now: float, out: list[Outcome]) -> None:
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
            self._port.flush(worker)

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
            self._machine.server_started()

    def _on_server_locked(self, now: float, out: list[Outcome]) -> None:
        server = self._server
        messages = server.read_messages() if server is not None else None
        machine = self._machine
        for op, a, b in messages or ():
            if op == 1:  # READY
                if server is not None:
                    server.ready = True
            elif op == 3:  # SPAWNED worker_id pid
                machine.spawned(a, b, now, out)
            elif op == 4:  # EXITED pid status
                machine.exited(a, b, now, out)
            elif op == 5:  # SPAWN_FAILED worker_id errno: no worker can be made
                raise BrokenPoolError(describe_spawn_failure(b))
        if messages is None:
            self._on_server_lost_locked(now, out)

    def _on_server_lost_locked(self, now: float, out: list[Outcome]) -> None:
        """The fork server died: its workers die with it (PR_SET_PDEATHSIG)."""
        server, self._server = self._server, None
        was_ready, code = True, None
        if server is not None:
            self._unregister(server.fileno())
            was_ready = server.ready
            server.close(timeout=1.0)
            code = server.process.returncode
        # _step starts the new one outside the lock (it blocks on a fork + exec).
        self._machine.server_lost(was_ready, code, now, out)

    # -- failure and teardown ----------------------------------------------------

    def _break(self, exc: BaseException) -> None:
        """Isopool itself failed: fail every task with BrokenPoolError, kill workers."""
        out: list[Outcome] = []
        with self._lock:
            self._machine.break_(exc, out)
        resolve(out, self._resolver.defer)
        self._count_runs(out)

    def _close_resources(self) -> None:
        with self._lock:
            server, self._server = self._server, None
            self._machine.close()
        if server is not None:
            server.close(timeout=5.0)
        self._epoll.close()
        self._resolver.close()
        self._initializer = None  # its initargs (multiprocessing objects) are not needed now
        # The wake-up pipe stays open until the Monitor is collected: another thread
        # may still call _wake(), and a closed fd number could be reused by a file.

    def _close_unstarted(self) -> None:
        """Close what ``__init__`` made before it failed (no thread, no process yet)."""
        for worker in self._machine.workers:
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


class _Port:
    """The machine's hands: pipes, epoll, signals and logs, for one monitor.

    Called by the machine under the monitor's lock; nothing here blocks.
    """

    def __init__(self, monitor: Monitor) -> None:
        # A proxy, not a reference: the monitor holds the machine, which holds this port,
        # and a cycle would keep a dropped pool (and the multiprocessing objects in its
        # initargs, whose semaphores the resource tracker counts) until the cyclic GC.
        self._monitor: Monitor = weakref.proxy(monitor)

    def new_worker(self, worker_id: int) -> WorkerHandle:
        """Make a worker's pipes and handle, and watch its result pipe."""
        worker = WorkerHandle(worker_id, WorkerPipes())
        try:
            self._monitor._register(worker.pipes.result_r, _RESULT, worker, select.EPOLLIN)
        except BaseException:
            worker.pipes.close()
            raise
        return worker

    def spawn(self, worker: WorkerHandle) -> None:
        """Hand ``worker``'s pipe ends to the fork server, which forks it."""
        server = self._monitor._server
        assert server is not None  # the machine spawns only while a server is up
        pipes = cast(WorkerPipes, worker.pipes)  # new_worker made them: real pipes
        server.spawn(worker.id, pipes, self._monitor._max_tasks)
        pipes.close_worker_ends()

    def flush(self, worker: WorkerHandle) -> None:
        """Write what the worker's pipe takes; wait for writability for the rest."""
        want = worker.flush()
        if want != worker.out_registered:
            worker.out_registered = want
            if want:
                self._monitor._register(worker.pipes.call_w, _CALL, worker, select.EPOLLOUT)
            else:
                self._monitor._unregister(worker.pipes.call_w)

    def revoke(self, worker: WorkerHandle, number: int) -> bool:
        """Send REVOKE ``number`` on ``worker``'s control pipe (non-blocking)."""
        try:
            os.write(worker.pipes.control_w, _wire.REVOKE.pack(number))
        except OSError:  # full (never with <= 16 calls queued) or the worker is gone
            return False
        return True

    def signal(self, pid: int, sig: signal.Signals) -> None:
        """Send ``sig`` to worker ``pid``'s process group (or to it alone)."""
        signal_group(pid, sig)

    def kill_leftovers(self, pid: int) -> None:
        """SIGKILL dead worker ``pid``'s group: not the pid itself, which may be reused."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)

    def end_calls(self, worker: WorkerHandle) -> None:
        """Close ``worker``'s call pipe: at EOF it exits by itself."""
        if worker.out_registered:
            worker.out_registered = False
            self._monitor._unregister(worker.pipes.call_w)
        if worker.pipes.call_w >= 0:
            os.close(worker.pipes.call_w)
            worker.pipes.call_w = -1

    def stop_reading(self, worker: WorkerHandle) -> None:
        """``worker``'s result pipe is at EOF: stop watching it."""
        self._monitor._unregister(worker.pipes.result_r)

    def read(self, worker: WorkerHandle) -> tuple[list[_wire.Frame], bool, ProtocolError | None]:
        """Read what ``worker`` wrote, without blocking."""
        return worker.read()

    def release(self, worker: WorkerHandle) -> None:
        """``worker`` is gone: stop watching and close its pipes."""
        monitor = self._monitor
        monitor._unregister(worker.pipes.result_r)
        if worker.out_registered:
            worker.out_registered = False
            monitor._unregister(worker.pipes.call_w)
        worker.out.clear()
        if worker.slab is not None:  # lent for a result it will never write now
            worker.slab.release()
            worker.slab = None
        worker.pipes.close()

    def lend_slab(self, worker: WorkerHandle) -> None:
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

    def claim_result(
        self, worker: WorkerHandle, task: Runnable, payload: _wire.Payload
    ) -> _oob.Received | Outcome:
        """Open our own descriptor to the memfd of a result's large buffers, now.

        Then the worker may close its own (RELEASE), and the buffers live as long as
        the outcome: a result nobody collects is freed with its Task. A descriptor
        that is bogus (a hostile task wrote it) fails this task only.
        """
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

    def log(self, level: int, message: str) -> None:
        """Log ``message`` from the resolver thread: handlers are user code.

        Under the monitor's lock, a handler that sleeps would delay every time-out,
        and one that calls ``pool.stats()`` would deadlock the monitor.
        """
        self._monitor._resolver.defer(functools.partial(log.log, level, "%s", message))

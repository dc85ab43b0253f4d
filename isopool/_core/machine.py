"""The engine's decisions: a state machine fed with events and a clock.

``Machine`` holds everything a pool decides with (the pending and back-off queues, the
workers and the runs on them, the pool's state, its counters) and is driven by events:

    submit, kill, take_back, shutdown, terminate, signal_workers   (callers' threads)
    frames (a worker's replies), spawned, exited, server_lost       (the monitor's I/O)
    tick(now): deadlines, back-offs, replacing workers, dispatching, closing

Each event gets the time (``now``, monotonic seconds) and a list to append the
``Outcome`` of every task it settles to; the caller finishes those futures after
releasing the lock (``_outcome.resolve``). The machine itself never reads a clock,
touches a descriptor, sends a signal or logs: it asks its ``Port`` to (write a
worker's calls, ask a call back, signal a process group, close a call pipe, log a
line). The monitor (``_monitor``) is the real port, around epoll and the fork
server; a test gives a recording port and a fake clock, so every ordering race (a
reply racing SPAWNED, a worker's last reply before its exit, a kill racing a result,
a supervisor giving up with children pipelined) is a fast unit test without a
process (tests/test_machine.py).

Each worker runs its calls in order; ``WorkerHandle.tasks`` mirrors that order, so the
head is the task it is running. The task id travels in every frame header, so a
payload that will not unpickle, or a worker that dies, fails exactly one task: the
head. Tasks queued behind it on that worker never started; they go back to the
pending queue without counting as attempts.

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

import logging
import signal
import sys
from array import array
from typing import Final

from .._errors import BrokenPoolError, ProtocolError
from . import oob as _oob
from . import wire as _wire
from .dispatch import _RETIRE_GRACE, Dispatcher, Port, State, _long_after, _stealable
from .handle import WorkerHandle, WorkerPhase
from .outcome import Kind, Outcome
from .policy import backoff_delay, should_restart
from .process import decode_exit
from .run import Answer, Revoke, Runnable, StopRequest

__all__ = ["Machine", "Port", "State"]

# How long to wait for the fork server's EXITED message after a worker's pipe hit EOF
# before declaring its exit status unknown (the fork server died with it).
_STATUS_WAIT: Final = 2.0
_HEARTBEAT: Final = 1.0  # the longest the monitor sleeps; every wait has a deadline
# Pool.stats()' keys for the summed usage of every reply (see _usage), in the order
# of Machine._usage_sums.
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
_COUNTERS: Final = (
    "submitted",
    "completed",
    "failed",
    "crashed",
    "timed_out",
    "killed",
    "cancelled",
    "restarted",
    "workers_started",
    "workers_replaced",
)


class Machine(Dispatcher):
    """The decisions of one pool's engine. Not thread-safe: its monitor's lock guards it."""

    # -- callers' events -------------------------------------------------------

    def submit(self, task: Runnable, now: float, out: list[Outcome]) -> None:
        """Queue ``task`` and start it if a worker is free (the pool must be open)."""
        self.check_open()
        self._stats["submitted"] += 1
        task._queued_at = now
        # Tasks wait only when the last dispatch found no room, and room appears only on
        # the monitor's events (a reply, a new worker, a REVOKED answer), each of which
        # dispatches: a submit behind a backlog would find no room either, and skipping
        # its attempt saves a third of submit's time in a burst. (A task of higher
        # priority than a backlog waiting for an idle worker waits for the next reply.)
        if isinstance(task._payload, _oob.SharedPayload):
            self._stats["shared_calls"] += 1
        backlog = bool(self.pending)
        self.pending.push(task)
        if not backlog:
            self._dispatch(now, out)

    def kill(
        self, task: Runnable, stop: StopRequest, now: float, out: list[Outcome]
    ) -> tuple[bool, bool]:
        """Stop ``task`` (``Task.kill``): (whether it will be stopped, whether it runs).

        A task that runs is stopped by stopping its worker; its outcome comes with
        the worker's death (or its reply, for ``stop.keep_reply``).
        """
        if task.done():
            return False, False
        task._stop = stop
        # The delayed queue first: its tasks are also marked queued, which the
        # pending queue's lazy removal cannot tell apart from its own.
        if self.delayed.remove(task) or self.pending.remove(task):
            self._stats["killed"] += 1
            out.append(Outcome.stopped(task))
            return True, False
        if task._run is not None:
            return True, self._kill_assigned(task, now, out)
        # Pending but never dispatched, or already finishing.
        return (not task._dispatched and task._cancel_future()), False

    def take_back(self, task: Runnable, answer: Answer | None) -> Answer | None:
        """Ask ``task``'s worker for its call back if it has not started (``Task.cancel``).

        Returns the answer to wait on (``answer``, or one already waited on) for a
        caller that waits; None if there is nothing to wait for: the task runs, is
        done, or no request could be sent. Without ``answer``, the task is cancelled
        when the worker hands the call back, or runs as usual.
        """
        run = task._run
        if task.done() or run is None or run.worker.stop_reason:
            return None
        worker = run.worker
        if worker.tasks and worker.tasks[0] is task and run.revoke is None:
            return None  # it is running
        if run.revoke is None and not self._revoke(task):
            return None
        if run.revoke in (None, Revoke.STEAL):
            run.revoke = Revoke.CANCEL
        if answer is None:
            return None
        run.answer = run.answer or answer  # one per take-back
        return run.answer

    def take_back_waited(self, task: Runnable, answer: Answer) -> bool:
        """A ``cancel()`` stopped waiting for ``answer``: True if the call was handed back.

        No answer yet (the worker's running task held the GIL too long) turns the
        take-back into a steal: if the worker hands the call back later, it runs
        elsewhere instead of being cancelled.
        """
        run = task._run
        if run is not None and run.answer is answer:
            run.answer = None
            if run.revoke is Revoke.CANCEL:
                run.revoke = Revoke.STEAL
        return answer.handed_back

    def forget(self, task: Runnable) -> None:
        """``task`` was cancelled while pending: drop it from the count at once."""
        if self.pending.remove(task):
            self._stats["cancelled"] += 1

    def shutdown(self, cancel_futures: bool, out: list[Outcome]) -> None:
        """Take no new work; finish (or cancel) queued work."""
        if self.state is State.RUNNING:
            self.state = State.CLOSING
        if cancel_futures:
            out.extend(self._cancel_queued())

    def terminate(self, now: float, out: list[Outcome]) -> None:
        """Cancel queued tasks, stop running ones (with their grace), then close."""
        if self.state is State.RUNNING:
            self.state = State.CLOSING
        out.extend(self._cancel_queued())
        for worker in list(self.workers):
            if worker.tasks:
                self._stop_worker(worker, "terminate", None, now)

    def signal_workers(self, sig: signal.Signals, now: float, out: list[Outcome]) -> None:
        """``Pool.terminate_workers``/``kill_workers``: close, cancel queued, signal all.

        Each worker's running task fails as a crash (never restarted); calls queued
        behind it are cancelled. A worker that survives SIGTERM gets SIGKILL after its
        task's grace (5 s if idle or brutal_kill).
        """
        if self.state is State.RUNNING:
            self.state = State.CLOSING
        out.extend(self._cancel_queued())
        for worker in self.workers:
            for task in worker.tasks:
                if task._stop is None:
                    task._stop = StopRequest()  # never restarted nor requeued
            grace = worker.tasks[0].options.shutdown if worker.tasks else _RETIRE_GRACE
            if worker.stop_reason is None:
                worker.stop_reason = "signalled"
                worker.phase = WorkerPhase.STOPPING
                worker.kill_at = now + (_RETIRE_GRACE if grace == "brutal_kill" else grace)
            if sig == signal.SIGKILL:
                worker.kill_at = None
            if worker.pid is not None:
                self.io.signal(worker.pid, sig)

    def stats(self) -> dict[str, float]:
        """Counters: workers, pending, running, and totals since start."""
        counts: dict[str, float] = dict.fromkeys(_COUNTERS, 0)
        counts.update(self._stats)
        self._fold_usage()
        counts.update(zip(_USAGE_KEYS, self._usage_sums, strict=True))
        counts["workers"] = sum(1 for w in self.workers if not w.finalized)
        counts["pending"] = len(self.pending)
        counts["running"] = sum(1 for w in self.workers if w.tasks)
        counts["delayed"] = len(self.delayed)
        return counts

    # -- the monitor's events --------------------------------------------------

    def server_started(self) -> None:
        """A fork server is up: hand it the workers that wait for a process."""
        self.server_up = True
        self._spawn_unspawned()

    def spawned(self, worker_id: int, pid: int, now: float, out: list[Outcome]) -> None:
        """The fork server made worker ``worker_id``'s process, ``pid``."""
        worker = self._spawning.pop(worker_id, None)
        if worker is None:
            return
        worker.pid = pid
        self.by_pid[pid] = worker
        self._stats["workers_started"] += 1
        if worker.phase is WorkerPhase.SPAWNING:
            worker.phase = WorkerPhase.UP
        if worker.stop_reason is not None:  # stopped before it even existed
            worker.kill_at = None
            self.io.signal(pid, signal.SIGKILL)
        elif worker.tasks:
            self._start_head(worker, now)
        held, worker.held = worker.held, []
        for kind, task_id, payload in held:
            self._on_frame(worker, kind, task_id, payload, now, out)

    def exited(self, pid: int, status: int, now: float, out: list[Outcome]) -> None:
        """The fork server reaped worker ``pid`` with wait status ``status``."""
        worker = self.by_pid.get(pid)
        if worker is not None:
            worker.status = status
            self._read_worker(worker, now, out)
            self._finalize(worker, now, out)

    def server_lost(
        self, was_ready: bool, code: int | None, now: float, out: list[Outcome]
    ) -> None:
        """The fork server died: its workers die with it (PR_SET_PDEATHSIG).

        Raises:
            BrokenPoolError: it never started, or keeps dying (3 times in 10 s).
        """
        self.server_up = False
        if not was_ready:
            raise BrokenPoolError(
                f"isopool fork server failed to start (exit code {code}); "
                "is isopool importable by sys.executable?"
            )
        self.io.log(
            logging.WARNING,
            f"pool {self.name!r}: fork server died (exit code {code}); starting a new one",
        )
        for worker in list(self.workers):
            if worker.pid is not None:
                self.io.signal(worker.pid, signal.SIGKILL)
            self._read_worker(worker, now, out)
            self._finalize(worker, now, out)
        self._spawning.clear()
        if self.state in (State.RUNNING, State.CLOSING) and not self.server_restarts.allow(now):
            raise BrokenPoolError("isopool fork server keeps dying (3 times in 10 s)")

    def frames(
        self,
        worker: WorkerHandle,
        frames: list[_wire.Frame],
        eof: bool,
        error: ProtocolError | None,
        now: float,
        out: list[Outcome],
    ) -> None:
        """``worker`` wrote ``frames`` (then reached EOF, or wrote garbage: ``error``)."""
        if worker.finalized:
            return
        if worker.pid is None:
            worker.held.extend(frames)  # a reply beat SPAWNED: settled when it comes
            frames = []
        for kind, task_id, payload in frames:
            self._on_frame(worker, kind, task_id, payload, now, out)
        if error is not None:
            self._on_protocol_error(worker, str(error), now)
            return
        if eof and worker.eof_at is None:
            worker.eof_at = now
            self.io.stop_reading(worker)

    def tick(self, now: float, out: list[Outcome]) -> bool:
        """Act on the time: deadlines, back-offs, replacements, dispatch; True once closed.

        Sets ``sleep_until``: when the next tick is due at the latest.
        """
        self._check_deadlines(now, out)
        for task in self.delayed.release(now):
            self.pending.push(task)
        self._replace_workers()
        self._dispatch(now, out)
        done = self._close_if_idle(now)
        self.sleep_until = min(self._next_deadline(), now + _HEARTBEAT)
        return done

    def break_(self, exc: BaseException, out: list[Outcome]) -> None:
        """Isopool itself failed: fail every task with BrokenPoolError, kill workers."""
        self.state = State.BROKEN
        self.broken_cause = exc
        error = (
            exc
            if isinstance(exc, BrokenPoolError)
            else BrokenPoolError(f"pool {self.name!r} broke: {exc!r}")
        )
        for task in self._drain_queued():
            out.append(Outcome.error(task, error))
        for worker in list(self.workers):
            for task in worker.tasks:
                task._run = None
                out.append(Outcome.error(task, error))
            worker.tasks.clear()
            self._kill_and_forget(worker)

    def close(self) -> None:
        """The monitor is ending: kill every worker left and let go of it."""
        for worker in list(self.workers):
            self._kill_and_forget(worker)

    # -- replies -------------------------------------------------------------------

    def _read_worker(self, worker: WorkerHandle, now: float, out: list[Outcome]) -> None:
        if not worker.finalized:
            self.frames(worker, *self.io.read(worker), now, out)

    def _on_frame(
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
            self._on_revoked(worker, task_id, payload == _wire.REVOKED_OK, now, out)
            return
        if not worker.tasks or worker.tasks[0].id != task_id:
            self._on_protocol_error(
                worker, f"a frame for task {task_id}, which it was not running", now
            )
            return
        task = worker.tasks.popleft()
        run, task._run = task._run, None
        assert run is not None
        if kind in _wire.REPLIES:
            payload, trailer = _wire.split_usage(payload)
            if trailer is not None and trailer != _wire.NOT_RUN:
                task._usage = trailer
                usage = self._usage_log
                usage += trailer
                if len(usage) >= _USAGE_FOLD:
                    self._fold_usage()
        if run.revoke is not None:  # its reply beat the worker's LATE answer
            worker.revoking.pop(run.number, None)
            run.revoke = None
            if run.answer is not None:
                run.answer.give(False)  # cancel() returns False: it ran
        if run.started_at is not None:
            run_time = now - run.started_at
            self.ema = run_time if self.ema is None else 0.8 * self.ema + 0.2 * run_time
        if kind == _wire.RESULT and _oob.is_shared(payload):
            self._stats["shared_results"] += 1
            claimed = self.io.claim_result(worker, task, payload)
            if isinstance(claimed, Outcome):  # its descriptor was bogus: this task fails
                self._end_run(task, claimed, now, out, run.started_at)
                self._after_call(worker, now)
                return
            payload = claimed  # type: ignore[assignment]  # the value's shared buffers
        stop = task._stop
        if worker.stop_task is task and not (
            worker.stop_reason == "kill" and stop is not None and stop.keep_reply
        ):
            # Stopped before its reply was read: the time-out or the kill stands
            # (Task.shutdown alone keeps a reply that raced in, as Elixir's does).
            self._end_run(task, self._stop_outcome(worker, task), now, out, run.started_at)
        elif kind == _wire.RESULT:
            self._end_run(task, Outcome.ok(task, payload), now, out, run.started_at)
        elif kind == _wire.ERROR:
            self._end_run(task, Outcome.raised(task, payload), now, out, run.started_at)
        elif kind == _wire.SHUTDOWN:
            self._end_run(task, Outcome.shutdown(task, payload), now, out, run.started_at)
        else:
            self._end_run(task, Outcome.bad_payload(task, payload), now, out, run.started_at)
        self._after_call(worker, now)

    def _after_call(self, worker: WorkerHandle, now: float) -> None:
        """A call left ``worker``: start the next one, or retire it after its last."""
        if worker.tasks and worker.stop_reason is None:
            # A worker being stopped starts nothing new: what is queued behind the
            # stopped task goes back to the pending queue when the worker is gone.
            self._start_head(worker, now)
        if self.max_tasks and worker.assigned >= self.max_tasks and not worker.tasks:
            worker.retire()  # it exits by itself after its last call

    def _fold_usage(self) -> None:
        """Add the trailers kept since the last fold to the sums (C loops, not Python).

        A trailer is ``<dddQQQ``: six 8-byte little-endian fields, so the log read as
        doubles and as unsigned ints gives each column as a strided slice.
        """
        log = self._usage_log
        if not log:
            return
        reals, ints = array("d"), array("Q")
        reals.frombytes(log)
        ints.frombytes(log)
        if sys.byteorder != "little":
            reals.byteswap()
            ints.byteswap()
        log.clear()
        sums = self._usage_sums
        for i in (0, 1, 2):
            sums[i] += sum(reals[i::6])
        sums[3] = max(sums[3], max(ints[3::6]))
        sums[4] += sum(ints[4::6])
        sums[5] += sum(ints[5::6])
        sums[6] += len(ints) // 6

    def _on_revoked(
        self, worker: WorkerHandle, number: int, ok: bool, now: float, out: list[Outcome]
    ) -> None:
        """The worker answered a REVOKE of its call ``number``.

        ``ok``: it will never start that call, which leaves the worker's list here (and
        the worker skips it). Otherwise it had started and runs on as usual, unless it
        was being killed: then its worker is stopped like any running task's.
        """
        task = worker.revoking.pop(number, None)
        if task is None or task._run is None:
            return
        run = task._run
        reason, run.revoke = run.revoke, None
        if ok:
            worker.tasks.remove(task)
            task._run = None
            if run.started_at is not None:  # it was the head: it never ran after all
                task.attempts -= 1
            if reason is Revoke.KILL and not task.done():
                out.append(Outcome.stopped(task))
            elif reason is Revoke.CANCEL and run.answer is not None:
                self._stats["cancelled"] += 1
                run.answer.give(True)  # the thread in cancel() settles it
            elif reason is Revoke.CANCEL:
                self._stats["cancelled"] += 1
                out.append(Outcome.cancelled(task))
            elif reason is Revoke.STEAL:
                self.pending.push(task)  # never started: not an attempt
            self._after_call(worker, now)
            return
        if reason is Revoke.CANCEL and run.answer is not None:
            run.answer.give(False)  # too late: cancel() returns False
            run.answer = None
        if worker.tasks and worker.tasks[0] is task:
            self._start_head(worker, now)  # it had started: start its clock

    def _stop_outcome(self, worker: WorkerHandle, task: Runnable) -> Outcome:
        if worker.stop_reason == "timeout" and worker.stop_task is task:
            return Outcome.timed_out(task, worker.pid)
        return Outcome.stopped(task)

    def _end_run(
        self,
        task: Runnable,
        outcome: Outcome,
        now: float,
        out: list[Outcome],
        started: float | None = None,
    ) -> None:
        """A run of ``task`` ended: restart it per its policy, or settle its future.

        ``started``: when the run started, if it did (for the duration histogram: the
        outcome carries the run's length, counted once its future is settled).
        """
        task._run = None
        if task.done():
            return  # settled already (killed while its call was queued): count it once
        self._stats[outcome.stat] += 1
        if started is not None and self.durations is not None:
            outcome.ran = now - started
        restartable = (
            outcome.kind not in (Kind.CANCELLED, Kind.ERROR)
            and task._stop is None  # a killed task is never restarted
            and self.state in (State.RUNNING, State.CLOSING)
        )
        if not (restartable and should_restart(task.options.restart, outcome.exit)):
            out.append(outcome)
            return
        delay = self._restart_delay(task, now)
        if delay is None:
            limit = Outcome.restart_limit(task, outcome)
            limit.ran = outcome.ran
            out.append(limit)
            return
        if outcome.ran is not None:  # restarted: no future to settle, count it now
            self.durations.append(outcome.ran)  # type: ignore[union-attr]  # set with ran
        self._stats["restarted"] += 1
        self.io.log(logging.WARNING, outcome.restart_message(self.name, task, delay))
        if delay > 0:
            self.delayed.push(now + delay, task)
        else:
            self.pending.push(task)

    def _restart_delay(self, task: Runnable, now: float) -> float | None:
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

    def _finalize(self, worker: WorkerHandle, now: float, out: list[Outcome]) -> None:
        """``worker`` is dead: pin its death on its head task, requeue the rest."""
        if worker.finalized:
            return
        expected = not worker.accepting  # retired or being stopped: meant to exit
        worker.phase = WorkerPhase.DEAD
        self._forget(worker)
        if worker.pid is not None:
            # Whatever the task left in its group. The group only: the worker itself is
            # dead and reaped, so its pid may already belong to an unrelated process.
            self.io.kill_leftovers(worker.pid)
        tasks = list(worker.tasks)
        worker.tasks.clear()
        worker.revoking.clear()
        info = decode_exit(worker.status)
        for index, task in enumerate(tasks):
            run, task._run = task._run, None
            assert run is not None
            reason, run.revoke = run.revoke, None
            # Only a call behind the head provably never started; the head may have.
            started = index == 0 and run.started_at is not None
            if reason is Revoke.CANCEL and not started:
                self._stats["cancelled"] += 1
            if reason is Revoke.CANCEL and run.answer is not None:
                run.answer.give(not started)
                if not started:
                    continue  # cancel() settles it
            if task.done():
                continue  # killed while queued there: already settled
            if reason is Revoke.CANCEL and not started:
                out.append(Outcome.cancelled(task))
                continue
            if started:
                if worker.stop_reason == "signalled":  # as the stdlib: BrokenProcessPool
                    self._stats["crashed"] += 1
                    error = Outcome.crashed(task, worker.pid, info).to_exception()
                    if error is not None:  # always, for a crash
                        out.append(Outcome.error(task, error))  # no restart, no WARNING
                elif worker.stop_task is task or worker.stop_reason == "terminate":
                    self._end_run(task, self._stop_outcome(worker, task), now, out, run.started_at)
                else:
                    crash = Outcome.crashed(task, worker.pid, info, worker.protocol_error)
                    self._end_run(task, crash, now, out, run.started_at)
            elif task._stop is not None:
                self._end_run(task, Outcome.stopped(task), now, out, run.started_at)
            else:
                self.pending.push(task)  # never started: not an attempt
        if not (tasks or expected) and self.state is State.RUNNING:
            self.io.log(
                logging.WARNING,
                f"pool {self.name!r}: idle worker {worker.pid} {info.describe()}; replacing it",
            )

    # -- the clock -----------------------------------------------------------------

    def _check_deadlines(self, now: float, out: list[Outcome]) -> None:
        for worker in list(self.workers):
            if worker.finalized:
                continue
            head = worker.tasks[0] if worker.tasks else None
            run = head._run if head is not None else None
            if head is not None and run is not None and _due(run.deadline, now):
                run.deadline = None
                self.io.log(
                    logging.INFO,
                    f"pool {self.name!r}: task {head.id} ({head.name}) timed out after "
                    f"{head.options.timeout} s; stopping worker {worker.pid}",
                )
                self._stop_worker(worker, "timeout", head, now)
            if _due(worker.kill_at, now):
                worker.kill_at = None
                if worker.pid is not None:
                    self.io.signal(worker.pid, signal.SIGKILL)
            if worker.eof_at is not None and _due(worker.eof_at + _STATUS_WAIT, now):
                self._finalize(worker, now, out)

    def _next_deadline(self) -> float:
        deadline = self.delayed.next_due()
        steal = any(w.accepting and not w.tasks for w in self.workers)
        for worker in self.workers:
            run = worker.tasks[0]._run if worker.tasks else None
            if run is not None and run.deadline is not None:
                deadline = min(deadline, run.deadline)
            if steal and run is not None and run.started_at is not None and _stealable(worker):
                deadline = min(deadline, run.started_at + _long_after(self.ema))
            if worker.kill_at is not None:
                deadline = min(deadline, worker.kill_at)
            if worker.eof_at is not None:
                deadline = min(deadline, worker.eof_at + _STATUS_WAIT)
        return deadline


def _due(deadline: float | None, now: float) -> bool:
    """Whether ``deadline`` (None: none) has come."""
    return deadline is not None and now >= deadline

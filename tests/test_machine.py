"""The engine's state machine driven through its races, without a process.

Every test feeds ``Machine`` events in one exact order (a reply before SPAWNED, a
worker's last reply and its EXITED in one round, a kill and a result crossing) with a
fake clock, and a recording port stands in for pipes, signals and logs. The orders
are the ones that once needed fixes in the real monitor; here each is a plain,
deterministic unit test.
"""

from __future__ import annotations

import pickle
import signal
from concurrent.futures import CancelledError
from typing import Any

import pytest

from isopool import RestartLimitError, TaskCrashError, TaskTimeoutError
from isopool._core import wire as _wire
from isopool._core.handle import WorkerHandle, WorkerPhase
from isopool._core.machine import Machine, State
from isopool._core.outcome import Outcome, resolve
from isopool._core.policy import RestartIntensity
from isopool._core.run import Answer, Revoke, RunPhase, StopRequest
from isopool._errors import ProtocolError
from isopool._spec import TaskOptions
from isopool._task import Task

_EXIT_0 = 0  # wait statuses as the fork server reports them
_EXIT_1 = 1 << 8
_KILLED = signal.SIGKILL


class _Pipes:
    """A worker's pipe ends that are not there."""

    def __init__(self) -> None:
        self.cookie = 1
        self.call_w = self.result_r = self.control_w = -1

    def close(self) -> None:
        pass


class FakePort:
    """Records what the machine asks for; hands it scripted reads."""

    def __init__(self) -> None:
        self.effects: list[tuple[Any, ...]] = []
        self.calls: dict[int, list[int]] = {}  # worker id -> task ids written to it
        self.revoke_ok = True
        self.reads: dict[int, tuple[list[_wire.Frame], bool, ProtocolError | None]] = {}

    def new_worker(self, worker_id: int) -> WorkerHandle:
        self.calls[worker_id] = []
        return WorkerHandle(worker_id, _Pipes())

    def spawn(self, worker: WorkerHandle) -> None:
        self.effects.append(("spawn", worker.id))

    def flush(self, worker: WorkerHandle) -> None:
        data = b"".join(bytes(view) for view in worker.out)
        worker.out.clear()
        size = _wire.HEADER.size
        while data:
            _version, _kind, _cookie, length, task_id = _wire.HEADER.unpack(data[:size])
            self.calls[worker.id].append(task_id)
            data = data[size + length :]

    def revoke(self, worker: WorkerHandle, number: int) -> bool:
        self.effects.append(("revoke", worker.id, number))
        return self.revoke_ok

    def signal(self, pid: int, sig: signal.Signals) -> None:
        self.effects.append(("signal", pid, sig))

    def kill_leftovers(self, pid: int) -> None:
        self.effects.append(("kill_leftovers", pid))

    def end_calls(self, worker: WorkerHandle) -> None:
        self.effects.append(("end_calls", worker.id))

    def stop_reading(self, worker: WorkerHandle) -> None:
        self.effects.append(("stop_reading", worker.id))

    def read(self, worker: WorkerHandle) -> tuple[list[_wire.Frame], bool, ProtocolError | None]:
        return self.reads.pop(worker.id, ([], True, None))

    def release(self, worker: WorkerHandle) -> None:
        self.effects.append(("release", worker.id))

    def log(self, level: int, message: str) -> None:
        self.effects.append(("log", level, message))

    def lend_slab(self, worker: WorkerHandle) -> None:
        self.effects.append(("lend_slab", worker.id))

    def claim_result(self, worker: WorkerHandle, task: Task[Any], payload: object) -> object:
        raise AssertionError("no test here sends a shared result")

    def signals(self) -> list[tuple[int, signal.Signals]]:
        return [(e[1], e[2]) for e in self.effects if e[0] == "signal"]


class _Owner:
    def kill(self, task: Task[Any], wait: bool, *args: object, **kwargs: object) -> bool:
        raise AssertionError("the tests drive the machine directly")

    def take_back(self, task: Task[Any], wait: bool) -> bool:
        raise AssertionError("the tests drive the machine directly")

    def forget(self, task: Task[Any]) -> None:
        pass


class Engine:
    """A machine, its fake port and clock, and helpers that speak for the fork server."""

    def __init__(self, workers: int = 1, max_tasks: int = 0) -> None:
        self.port = FakePort()
        self.machine = Machine("test", workers, max_tasks, self.port)
        self.now = 100.0
        self.out: list[Outcome] = []
        self.ids = iter(range(1, 1_000_000))
        self.machine.start()
        self.machine.server_started()

    def task(
        self,
        options: TaskOptions | None = None,
        intensity: RestartIntensity | None = None,
        label: str | None = None,
    ) -> Task[Any]:
        options = options or TaskOptions()
        if intensity is None and options.restart != "temporary":
            intensity = RestartIntensity(options.max_restarts, options.max_seconds)
        task = Task._create(_Owner(), next(self.ids), "fn", b"call", options, intensity)
        task._label = label
        return task

    def submit(self, task: Task[Any]) -> Task[Any]:
        self.machine.submit(task, self.now, self.out)
        return task

    def spawn_all(self, first_pid: int = 1000) -> None:
        for offset, worker in enumerate(list(self.machine.workers)):
            if worker.pid is None:
                self.machine.spawned(worker.id, first_pid + worker.id + offset, self.now, self.out)

    def worker(self, index: int = 0) -> WorkerHandle:
        return self.machine.workers[index]

    def reply(self, worker: WorkerHandle, task: Task[Any], value: object = None) -> None:
        payload = pickle.dumps(value) + _wire.USAGE.pack(0.001, 0.0, 0.0, 1, 0, 0)
        self.machine.frames(
            worker, [(_wire.RESULT, task.id, payload)], False, None, self.now, self.out
        )

    def revoked(self, worker: WorkerHandle, number: int, ok: bool) -> None:
        answer = _wire.REVOKED_OK if ok else _wire.REVOKED_LATE
        self.machine.frames(
            worker, [(_wire.REVOKED, number, answer)], False, None, self.now, self.out
        )

    def exited(self, worker: WorkerHandle, status: int) -> None:
        assert worker.pid is not None
        self.machine.exited(worker.pid, status, self.now, self.out)

    def tick(self, seconds: float = 0.0) -> bool:
        self.now += seconds
        return self.machine.tick(self.now, self.out)

    def settle(self) -> None:
        out, self.out = self.out, []
        resolve(out)


def test_machine_reply_before_spawned_is_held_until_the_pid_is_known() -> None:
    """A reply that beats SPAWNED settles only after it, with the run's pid and attempt."""
    engine = Engine()
    worker = engine.worker()
    task = engine.submit(engine.task())
    assert engine.port.calls[worker.id] == [task.id]  # written before the worker exists
    engine.reply(worker, task, 42)
    engine.settle()
    assert not task.done()
    assert worker.held
    engine.machine.spawned(worker.id, 4242, engine.now, engine.out)
    engine.settle()
    assert task.result(0) == 42
    assert (task.pid, task.attempts) == (4242, 1)
    assert worker.phase is WorkerPhase.UP


def test_machine_last_reply_before_exit_is_a_result_not_a_crash() -> None:
    """max_tasks_per_child=1: a reply and EXITED in one round give the value and a new worker."""
    engine = Engine(max_tasks=1)
    engine.spawn_all()
    worker = engine.worker()
    task = engine.submit(engine.task())
    engine.reply(worker, task, "done")
    assert worker.phase is WorkerPhase.RETIRING
    engine.exited(worker, _EXIT_0)
    engine.tick()
    engine.settle()
    assert task.result(0) == "done"
    assert worker.phase is WorkerPhase.DEAD
    assert engine.machine.workers
    assert engine.machine.workers[0] is not worker  # replaced
    assert not [e for e in engine.port.effects if e[0] == "log"]  # an expected exit: no warning


def test_machine_worker_dying_fails_its_head_and_requeues_the_rest() -> None:
    """A death fails the head only; calls queued behind it go back without an attempt."""
    engine = Engine()
    engine.spawn_all()
    engine.machine.ema = 0.0001  # tiny tasks: pipeline
    worker = engine.worker()
    head, behind = engine.submit(engine.task()), engine.submit(engine.task())
    assert engine.port.calls[worker.id] == [head.id, behind.id]
    engine.exited(worker, _KILLED)
    engine.tick()
    engine.settle()
    with pytest.raises(TaskCrashError, match="SIGKILL"):
        head.result(0)
    assert not behind.done()
    assert behind.attempts == 0
    new = engine.worker()
    assert new is not worker
    assert engine.port.calls[new.id] == [behind.id]


def test_machine_kill_racing_a_result_cancels_the_task() -> None:
    """A result read after kill() stopped the worker does not win: the kill stands."""
    engine = Engine()
    engine.spawn_all()
    worker = engine.worker()
    task = engine.submit(engine.task())
    stopping, running = engine.machine.kill(task, StopRequest(), engine.now, engine.out)
    assert (stopping, running) == (True, True)
    assert engine.port.signals() == [(worker.pid, signal.SIGTERM)]
    engine.reply(worker, task, "too late")
    engine.settle()
    with pytest.raises(CancelledError):
        task.result(0)
    engine.exited(worker, _EXIT_0)
    engine.tick()
    assert task.cancelled()


def test_machine_shutdown_racing_a_result_keeps_the_reply() -> None:
    """Task.shutdown (keep_reply): a reply that races the stop in is the outcome."""
    engine = Engine()
    engine.spawn_all()
    worker = engine.worker()
    task = engine.submit(engine.task())
    engine.machine.kill(task, StopRequest(keep_reply=True), engine.now, engine.out)
    engine.reply(worker, task, "kept")
    engine.settle()
    assert task.result(0) == "kept"


def test_machine_kill_of_a_queued_call_settles_at_once_and_revokes_it() -> None:
    """kill() of a call behind another one: REVOKE sent, task settled now, head untouched."""
    engine = Engine()
    engine.spawn_all()
    engine.machine.ema = 0.0001
    worker = engine.worker()
    head, behind = engine.submit(engine.task()), engine.submit(engine.task())
    stopping, running = engine.machine.kill(behind, StopRequest(), engine.now, engine.out)
    assert (stopping, running) == (True, False)
    assert ("revoke", worker.id, 2) in engine.port.effects
    assert not engine.port.signals()
    engine.settle()
    assert behind.cancelled()
    engine.revoked(worker, 2, ok=True)
    engine.reply(worker, head, 1)
    engine.settle()
    assert head.result(0) == 1
    assert list(worker.tasks) == []


def test_machine_kill_of_a_queued_call_that_had_started_stops_the_worker() -> None:
    """The worker answers LATE for a killed call (it started): the worker is stopped."""
    engine = Engine()
    engine.spawn_all()
    engine.machine.ema = 0.0001
    worker = engine.worker()
    head, behind = engine.submit(engine.task()), engine.submit(engine.task())
    engine.machine.kill(behind, StopRequest(), engine.now, engine.out)
    engine.reply(worker, head, 1)  # head done; behind becomes the head while revoking
    engine.revoked(worker, 2, ok=False)  # too late: it started
    assert (worker.pid, signal.SIGTERM) in engine.port.signals()
    assert worker.stop_reason == "kill"


def test_machine_timeout_stops_the_worker_then_sigkills_after_the_grace() -> None:
    """Past its deadline: SIGTERM now, SIGKILL at the grace, TaskTimeoutError on exit."""
    engine = Engine()
    engine.spawn_all()
    worker = engine.worker()
    task = engine.submit(engine.task(TaskOptions(timeout=1.0, shutdown=2.0)))
    run = task._run
    assert run is not None
    assert run.phase is RunPhase.RUNNING
    assert run.deadline == engine.now + 1.0
    engine.tick(0.999)
    assert not engine.port.signals()
    engine.tick(0.001)
    assert engine.port.signals() == [(worker.pid, signal.SIGTERM)]
    assert worker.phase is WorkerPhase.STOPPING
    engine.tick(1.999)
    assert len(engine.port.signals()) == 1
    engine.tick(0.001)
    assert engine.port.signals()[-1] == (worker.pid, signal.SIGKILL)
    engine.exited(worker, _KILLED)
    engine.settle()
    with pytest.raises(TaskTimeoutError):
        task.result(0)


def test_machine_sleep_until_is_the_next_deadline() -> None:
    """tick() sets when the monitor must wake up: the nearest time-out, else a heartbeat."""
    engine = Engine()
    engine.spawn_all()
    engine.tick()
    assert engine.machine.sleep_until == engine.now + 1.0
    engine.submit(engine.task(TaskOptions(timeout=0.25)))
    engine.tick()
    assert engine.machine.sleep_until == pytest.approx(engine.now + 0.25)


def test_machine_transient_crash_restarts_within_the_intensity_then_gives_up() -> None:
    """restart=transient: crashes re-run it until OTP's intensity trips, then RestartLimitError."""
    engine = Engine()
    engine.spawn_all()
    task = engine.submit(
        engine.task(TaskOptions(restart="transient", max_restarts=2, max_seconds=5))
    )
    for attempt in (1, 2, 3):
        worker = engine.worker()
        assert task.attempts == attempt
        engine.exited(worker, _EXIT_1)
        engine.tick()
        engine.spawn_all(first_pid=2000 + 10 * attempt)
    engine.settle()
    with pytest.raises(RestartLimitError):
        task.result(0)
    assert engine.machine.stats()["restarted"] == 2


def test_machine_supervisor_giving_up_never_runs_its_pipelined_children() -> None:
    """A supervisor that gave up: its queued children fail, never written to a worker."""
    engine = Engine()
    engine.spawn_all()
    engine.machine.ema = 0.0001  # tiny tasks: other calls would pipeline
    intensity = RestartIntensity(max_restarts=0, max_seconds=5.0)
    options = TaskOptions(restart="permanent", max_restarts=0)
    worker = engine.worker()
    first = engine.submit(engine.task(options, intensity, label="supervisor 'S'"))
    second = engine.submit(engine.task(options, intensity, label="supervisor 'S'"))
    assert engine.port.calls[worker.id] == [first.id]  # a child never queues behind a call
    engine.exited(worker, _EXIT_1)  # the first child crashes: intensity 0 trips
    engine.tick()
    engine.spawn_all(first_pid=3000)
    engine.tick()
    engine.settle()
    assert intensity.tripped
    for task in (first, second):
        with pytest.raises(RestartLimitError):
            task.result(0)
    assert all(second.id not in calls for calls in engine.port.calls.values())


def test_machine_idle_worker_steals_calls_queued_behind_a_slow_one() -> None:
    """Calls pipelined behind a call running long go to the idle worker, attempts untouched."""
    engine = Engine(workers=2)
    engine.spawn_all()
    engine.machine.ema = 0.0001
    busy, idle = engine.worker(0), engine.worker(1)
    tasks = [engine.submit(engine.task()) for _ in range(4)]
    for task in tasks[1::2]:  # the idle worker finishes its share
        engine.reply(idle, task)
    queued_on_busy = [t for t in tasks[2:] if t._run is not None and t._run.worker is busy]
    assert queued_on_busy
    engine.tick(0.02)  # the busy worker's head has now run long
    revokes = [e for e in engine.port.effects if e[0] == "revoke"]
    assert revokes
    assert all(e[1] == busy.id for e in revokes)
    for task in queued_on_busy:
        run = task._run
        assert run is not None
        assert run.revoke is Revoke.STEAL
        engine.revoked(busy, run.number, ok=True)
    engine.tick()
    for task in queued_on_busy:
        assert task._run is not None
        assert task._run.worker is idle
        assert task.attempts == 1
        assert task._run.phase in (RunPhase.RUNNING, RunPhase.QUEUED)


def test_machine_cancel_waiting_for_the_take_back_learns_it_was_handed_back() -> None:
    """take_back with a waiter: the REVOKED answer hands the call back, no attempt counted."""
    engine = Engine()
    engine.spawn_all()
    engine.machine.ema = 0.0001
    worker = engine.worker()
    engine.submit(engine.task())
    behind = engine.submit(engine.task())
    answer = engine.machine.take_back(behind, Answer())
    assert answer is not None
    assert not answer.event.is_set()
    engine.revoked(worker, 2, ok=True)
    assert answer.event.is_set()
    assert answer.handed_back
    assert engine.machine.take_back_waited(behind, answer)
    assert behind.attempts == 0
    assert behind._run is None


def test_machine_cancel_that_waited_too_long_turns_into_a_steal() -> None:
    """No answer in time: cancel() gives up, and a later hand-back re-queues the call."""
    engine = Engine()
    engine.spawn_all()
    engine.machine.ema = 0.0001
    worker = engine.worker()
    head = engine.submit(engine.task())
    behind = engine.submit(engine.task())
    answer = engine.machine.take_back(behind, Answer())
    assert answer is not None
    assert not engine.machine.take_back_waited(behind, answer)
    engine.revoked(worker, 2, ok=True)
    assert not behind.done()
    assert behind in list(engine.machine.pending.drain())
    assert head._run is not None


def test_machine_garbage_from_a_worker_stops_it_and_fails_its_head() -> None:
    """A frame for a task the worker does not run: the worker is stopped as a crash."""
    engine = Engine()
    engine.spawn_all()
    worker = engine.worker()
    task = engine.submit(engine.task())
    engine.machine.frames(worker, [(_wire.RESULT, 999, b"x")], False, None, engine.now, engine.out)
    assert worker.stop_reason == "protocol"
    assert (worker.pid, signal.SIGTERM) in engine.port.signals()
    engine.exited(worker, _KILLED)
    engine.settle()
    with pytest.raises(TaskCrashError, match="not running"):
        task.result(0)


def test_machine_fork_server_lost_fails_running_tasks_and_counts_restarts() -> None:
    """The fork server dies: its workers' heads crash; a fourth death in 10 s breaks the pool."""
    engine = Engine()
    engine.spawn_all()
    task = engine.submit(engine.task())
    engine.machine.server_lost(True, -9, engine.now, engine.out)
    engine.settle()
    with pytest.raises(TaskCrashError):
        task.result(0)
    for _ in range(2):
        engine.machine.server_started()
        engine.machine.server_lost(True, -9, engine.now, engine.out)
    engine.machine.server_started()
    with pytest.raises(Exception, match="keeps dying"):
        engine.machine.server_lost(True, -9, engine.now, engine.out)


def test_machine_closes_after_shutdown_once_workers_exit() -> None:
    """shutdown(): idle workers get EOF on their call pipe; CLOSED once every one is gone."""
    engine = Engine(workers=2)
    engine.spawn_all()
    engine.machine.shutdown(False, engine.out)
    assert engine.tick() is False
    assert sorted(e[1] for e in engine.port.effects if e[0] == "end_calls") == [1, 2]
    for worker in list(engine.machine.workers):
        engine.exited(worker, _EXIT_0)
    assert engine.tick() is True
    assert engine.machine.state is State.CLOSED


def test_machine_slow_call_on_one_worker_leaves_the_other_pipelined() -> None:
    """Behind a call running long on one worker, the other is still filled to its depth."""
    engine = Engine(workers=2)
    engine.spawn_all()
    engine.machine.ema = 0.0001
    slow = engine.submit(engine.task())
    busy = slow._run.worker if slow._run is not None else None
    assert busy is not None
    other = next(w for w in engine.machine.workers if w is not busy)
    engine.tick(0.05)  # the slow call has now run long: nothing more goes behind it
    for _ in range(40):
        engine.submit(engine.task())
    assert len(busy.tasks) == 1
    assert len(other.tasks) == 16  # its pipeline depth, not one call at a time
    assert len(engine.machine.pending) == 40 - 16


def test_machine_last_call_of_a_worker_forks_its_replacement_at_once() -> None:
    """max_tasks_per_child=1: the worker given its last call is replaced while it runs."""
    engine = Engine(max_tasks=1)
    engine.spawn_all()
    worker = engine.worker()
    engine.submit(engine.task())
    assert worker.phase is WorkerPhase.RETIRING
    assert len(engine.machine.workers) == 2
    assert ("spawn", engine.machine.workers[1].id) in engine.port.effects

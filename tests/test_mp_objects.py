"""multiprocessing objects reach isopool's workers as they reach the stdlib's.

Objects made with the "forkserver" context work on every path, so they are tested in
this process. Objects of the default ("fork") context need the fork server to be a
fork of a single-threaded parent: the test runner has threads (and earlier pools' monitor
threads), so those tests run a small script in a fresh interpreter, which is also the
realistic case (a program that makes its objects, then its Pool).
"""

from __future__ import annotations

import gc
import logging
import logging.handlers
import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

import isopool
from tests import _mp_tasks, _tasks
from tests.conftest import pid_alive, wait_for

ROOT = Path(__file__).resolve().parent.parent
SCRIPT_TIMEOUT = 90.0
KINDS = sorted(_mp_tasks.KINDS)


@pytest.fixture(scope="module", autouse=True)
def _resource_tracker() -> Iterator[None]:
    """Run multiprocessing's resource tracker for this module's tests only.

    Named semaphores register with it. Started before no_orphans takes its first
    snapshot, it is not a leak of the first test; stopped after the module, it is not
    a process that later tests (which count this process's children) find running.
    """
    from multiprocessing import resource_tracker

    resource_tracker.ensure_running()
    yield
    gc.collect()  # unregister this module's semaphores before the tracker goes
    resource_tracker._resource_tracker._stop()


@pytest.fixture
def other_thread() -> Iterator[None]:
    """Keep a second thread running, so Pool() must start a fresh-interpreter server."""
    stop = threading.Event()
    thread = threading.Thread(target=stop.wait, args=(60.0,), name="test-other-thread")
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(10.0)


@pytest.fixture
def forkserver() -> multiprocessing.context.BaseContext:
    """The multiprocessing context whose objects work on every path."""
    return multiprocessing.get_context("forkserver")


def run_script(code: str, *args: str) -> str:
    """Run ``code`` in a fresh interpreter (single-threaded at first); return stdout."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=SCRIPT_TIMEOUT,
        check=False,
    )
    assert proc.returncode == 0, f"script failed ({proc.returncode}):\n{proc.stderr}"
    return proc.stdout


# -- every kind, in every worker ------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_forkserver_context_object_in_initargs_is_shared_with_workers(
    kind: str, forkserver: multiprocessing.context.BaseContext
) -> None:
    """A forkserver-context object in initargs is shared by the parent and new workers."""
    _mp_tasks.run_check(kind, forkserver)


@pytest.mark.parametrize("kind", KINDS)
def test_forkserver_context_object_works_with_a_fresh_interpreter_server(
    kind: str, forkserver: multiprocessing.context.BaseContext, other_thread: None
) -> None:
    """With threads running (a fresh-interpreter server), named objects still work."""
    _mp_tasks.run_check(kind, forkserver)


@pytest.mark.parametrize("kind", KINDS)
def test_default_context_object_in_initargs_works_in_a_single_threaded_program(
    kind: str,
) -> None:
    """A default-context object (fork's unnamed semaphores) works when Pool() forks the server."""
    out = run_script(
        """
        import multiprocessing, sys
        from tests import _mp_tasks
        _mp_tasks.run_check(sys.argv[1], multiprocessing.get_context())
        print("checked")
        """,
        kind,
    )
    assert out.split() == ["checked"]


def test_default_context_lock_with_threads_running_is_refused_at_pool(
    other_thread: None,
) -> None:
    """A fork-context Lock cannot reach a fresh-interpreter server: a clear ValueError."""
    lock = multiprocessing.get_context("fork").Lock()
    with pytest.raises(ValueError, match=r"initargs\[1\].*Lock.*get_context\('forkserver'\)"):
        isopool.Pool(1, initializer=_mp_tasks.keep, initargs=(1, lock))


def test_default_context_queue_with_threads_running_is_refused_at_pool(
    other_thread: None,
) -> None:
    """A fork-context Queue is refused too, naming the Queue that holds the semaphore."""
    queue = multiprocessing.get_context("fork").Queue()
    with pytest.raises(ValueError, match=r"initargs\[0\] \(multiprocessing\.queues\.Queue\)"):
        isopool.Pool(1, initializer=_mp_tasks.keep, initargs=(queue,))
    queue.close()


def test_crashed_worker_replacement_still_gets_the_objects(
    forkserver: multiprocessing.context.BaseContext,
) -> None:
    """A worker started to replace a crashed one still receives the shared Queue."""
    queue = forkserver.Queue()
    with isopool.Pool(1, initializer=_mp_tasks.keep, initargs=(queue,)) as pool:
        # The crashing worker never touches the queue: one killed while its feeder
        # thread holds the queue's write lock would leave it held (as in the stdlib).
        with pytest.raises(isopool.TaskCrashError) as crash:
            pool.submit(_tasks.exit_with, 3).result(timeout=30)
        second = pool.submit(_mp_tasks.put_pid, 0).result(timeout=30)
        assert queue.get(timeout=30) == second
    assert crash.value.pid != second


def test_many_descriptors_in_initargs_reach_the_workers() -> None:
    """More than one SCM_RIGHTS message of descriptors (300 pipe ends) reaches the workers."""
    pipes = [multiprocessing.Pipe(duplex=False) for _ in range(300)]
    writers = tuple(writer for _reader, writer in pipes)
    with isopool.Pool(1, initializer=_mp_tasks.keep, initargs=writers) as pool:
        pool.submit(_mp_tasks.call, 299, "send", "last").result(timeout=30)
        pool.submit(_mp_tasks.call, 0, "send", "first").result(timeout=30)
    assert pipes[299][0].poll(30)
    assert pipes[299][0].recv() == "last"
    assert pipes[0][0].poll(30)
    assert pipes[0][0].recv() == "first"
    for reader, writer in pipes:
        reader.close()
        writer.close()


def test_initializer_larger_than_the_socket_buffer_reaches_the_workers() -> None:
    """An 8 MB initargs travels to the fork server in chunks and arrives whole."""
    blob = os.urandom(8 << 20)
    with isopool.Pool(1, initializer=_mp_tasks.keep, initargs=(blob,)) as pool:
        assert pool.submit(_mp_tasks.size, 0).result(timeout=60) == len(blob)


def test_worker_descriptors_are_close_on_exec(
    forkserver: multiprocessing.context.BaseContext,
) -> None:
    """No descriptor of a worker (pipes, inherited objects) would leak into an exec."""
    queue = forkserver.Queue()
    with isopool.Pool(1, initializer=_mp_tasks.keep, initargs=(queue,)) as pool:
        assert pool.submit(_mp_tasks.inheritable_fds).result(timeout=30) == []
    queue.close()


def test_restarted_fork_server_gets_the_descriptors_again(
    forkserver: multiprocessing.context.BaseContext, other_thread: None
) -> None:
    """A fork server killed and restarted still hands the shared Queue to new workers."""
    queue = forkserver.Queue()
    with isopool.Pool(1, initializer=_mp_tasks.keep, initargs=(queue,)) as pool:
        # The first worker must not touch the queue: killed while its feeder thread
        # holds the queue's write lock, it would leave it held (as in the stdlib).
        first = pool.submit(os.getpid).result(timeout=30)
        (monitor,) = [t for t in threading.enumerate() if t.name == f"isopool-monitor[{pool.name}]"]
        with open(f"/proc/self/task/{monitor.native_id}/children") as f:
            (server,) = [int(pid) for pid in f.read().split()]
        os.kill(server, signal.SIGKILL)
        # Its worker dies with it (PR_SET_PDEATHSIG); a task sent before the monitor
        # notices fails as a crash, so try a few times.
        assert wait_for(lambda: not pid_alive(server) and not pid_alive(first), timeout=30)
        pid = None
        for _ in range(5):
            try:
                pid = pool.submit(_mp_tasks.put_pid, 0).result(timeout=30)
                break
            except isopool.TaskCrashError:
                continue
        assert pid is not None, "no task ran after the fork server was restarted"
        assert queue.get(timeout=30) == pid


def test_restart_of_a_forked_server_with_fork_only_objects_breaks_the_pool() -> None:
    """A forked server holding fork-context objects cannot be replaced: a clear BrokenPoolError."""
    out = run_script(
        """
        import multiprocessing, os, signal, time
        import isopool
        from tests import _mp_tasks
        from tests.conftest import pid_alive, wait_for
        lock = multiprocessing.Lock()
        pool = isopool.Pool(1, initializer=_mp_tasks.keep, initargs=(lock,))
        worker = pool.submit(os.getpid).result(timeout=30)
        with open(f"/proc/self/task/{os.getpid()}/children") as f:
            (server,) = [int(pid) for pid in f.read().split()]
        os.kill(server, signal.SIGKILL)
        assert wait_for(lambda: not pid_alive(server) and not pid_alive(worker), timeout=30)
        try:
            for _ in range(5):
                try:
                    pool.submit(_mp_tasks.try_acquire, 0).result(timeout=30)
                except isopool.TaskCrashError:
                    continue
        except isopool.BrokenPoolError as exc:
            print("broken:", exc)
        pool.shutdown()
        """
    )
    assert "broken:" in out
    assert "Lock" in out
    assert "get_context('forkserver')" in out


# -- the logging cookbook ---------------------------------------------------------------


def test_logging_queue_handler_pattern_in_a_single_threaded_program() -> None:
    """The cookbook: multiprocessing.Queue(), QueueHandler in workers, QueueListener here."""
    out = run_script(
        """
        import logging, logging.handlers, multiprocessing
        import isopool
        from tests import _mp_tasks

        q = multiprocessing.Queue()
        records = []
        class Collect(logging.Handler):
            def emit(self, record):
                records.append(record)
        listener = logging.handlers.QueueListener(q, Collect())
        with isopool.Pool(2, initializer=_mp_tasks.configure_logging, initargs=(q,),
                          max_tasks_per_child=1) as pool:
            listener.start()  # a thread: started after Pool(), which forks the server
            pids = {pool.submit(_mp_tasks.log_message, f"m{i}").result(timeout=30)
                    for i in range(4)}
        listener.stop()  # handles every record queued so far, then stops
        assert sorted(r.getMessage() for r in records) == ["m0", "m1", "m2", "m3"], records
        assert {r.process for r in records} == pids
        print("logged", len(records))
        """
    )
    assert out.split() == ["logged", "4"]


def test_logging_queue_handler_pattern_with_a_forkserver_queue(
    forkserver: multiprocessing.context.BaseContext,
) -> None:
    """The cookbook with a forkserver Queue in this (threaded) process: every record arrives."""
    queue = forkserver.Queue()
    records: list[logging.LogRecord] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    listener = logging.handlers.QueueListener(queue, Collect())
    listener.start()
    try:
        with isopool.Pool(
            2, initializer=_mp_tasks.configure_logging, initargs=(queue,), max_tasks_per_child=1
        ) as pool:
            tasks = [pool.submit(_mp_tasks.log_message, f"m{i}") for i in range(4)]
            pids = {task.result(timeout=30) for task in tasks}
    finally:
        listener.stop()
    assert sorted(r.getMessage() for r in records) == ["m0", "m1", "m2", "m3"]
    assert {r.process for r in records} == pids


# -- Manager proxies and the authkey ---------------------------------------------------


@pytest.fixture
def manager() -> Iterator[multiprocessing.managers.SyncManager]:
    """A Manager in its own process (spawned: this process has threads)."""
    with multiprocessing.get_context("spawn").Manager() as m:
        yield m


def test_workers_carry_the_parent_authkey(pool: isopool.Pool) -> None:
    """Workers authenticate as the parent: their authkey is the parent's."""
    parent = bytes(multiprocessing.current_process().authkey)
    assert pool.submit(_mp_tasks.authkey).result(timeout=30) == parent


def test_manager_dict_as_task_argument_is_written_by_workers(
    pool: isopool.Pool, manager: multiprocessing.managers.SyncManager
) -> None:
    """A managed dict passed to tasks is updated in the manager."""
    d = manager.dict()
    pids = {
        pool.submit(_mp_tasks.manager_dict_set, d, f"k{i}").result(timeout=30) for i in range(3)
    }
    assert sorted(d.keys()) == ["k0", "k1", "k2"]
    assert set(d.values()) == pids


def test_manager_list_as_task_argument_is_appended_by_workers(
    pool: isopool.Pool, manager: multiprocessing.managers.SyncManager
) -> None:
    """A managed list passed to tasks grows in the manager."""
    items = manager.list()
    for _ in range(3):
        pool.submit(_mp_tasks.manager_list_append, items).result(timeout=30)
    assert len(items) == 3


def test_manager_queue_as_task_argument_carries_items_back(
    pool: isopool.Pool, manager: multiprocessing.managers.SyncManager
) -> None:
    """A managed Queue passed to a task carries its item to the parent."""
    queue = manager.Queue()
    pid = pool.submit(_mp_tasks.manager_queue_put, queue).result(timeout=30)
    assert queue.get(timeout=30) == pid


def test_manager_lock_as_task_argument_is_shared(
    pool: isopool.Pool, manager: multiprocessing.managers.SyncManager
) -> None:
    """A managed Lock held by the parent cannot be taken by a task, then can."""
    lock = manager.Lock()
    lock.acquire()
    assert not pool.submit(_mp_tasks.manager_lock_try, lock).result(timeout=30)
    lock.release()
    assert pool.submit(_mp_tasks.manager_lock_try, lock).result(timeout=30)


def test_manager_dict_in_initargs_is_written_by_workers(
    manager: multiprocessing.managers.SyncManager,
) -> None:
    """A managed dict given to the initializer is shared by every worker (incl. replacements)."""
    d = manager.dict()
    with isopool.Pool(2, initializer=_mp_tasks.keep, initargs=(d,), max_tasks_per_child=1) as pool:
        pids = [
            pool.submit(_mp_tasks.manager_dict_set_kept, f"k{i}").result(timeout=30)
            for i in range(3)
        ]
    assert sorted(d.keys()) == ["k0", "k1", "k2"]
    assert sorted(d.values()) == sorted(pids)


# -- forks the program makes right after Pool() -----------------------------------------

_FORK_AFTER_POOL = """
    import os, subprocess, sys, threading, time, multiprocessing
    import isopool
    how, threaded = sys.argv[1], sys.argv[2] == "threads"
    if threaded:
        stop = threading.Event()
        threading.Thread(target=stop.wait, args=(60,)).start()
    pool = isopool.Pool(2)
    if how == "os.fork":
        child = os.fork()
        if child == 0:
            time.sleep(30)
            os._exit(0)
    elif how == "Manager":
        manager = multiprocessing.Manager()
    else:
        child_proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"],
                                      close_fds=False)
    start = time.monotonic()
    assert pool.submit(pow, 2, 10).result(timeout=20) == 1024
    print("served in", round(time.monotonic() - start, 3))
    if how == "os.fork":
        os.kill(child, 9)
        os.waitpid(child, 0)
    elif how == "Manager":
        manager.shutdown()
    else:
        child_proc.kill()
        child_proc.wait()
    pool.shutdown()
    if threaded:
        stop.set()
"""


@pytest.mark.parametrize("threads", ["single-thread", "threads"])
@pytest.mark.parametrize("how", ["os.fork", "Manager", "Popen-close_fds-False"])
def test_pool_serves_when_the_program_forks_right_after_creating_it(how: str, threads: str) -> None:
    """A fork made right after Pool() (holding copies of its fds) does not stall it."""
    out = run_script(_FORK_AFTER_POOL, how, threads)
    served = float(out.split()[-1])
    assert served < 10.0, out  # the child lives 30 s: the pool must not wait for it


# -- what the forked fork server inherits ----------------------------------------------


def test_forked_server_releases_the_parent_descriptors() -> None:
    """The forked server holds none of the parent's pipes: their EOF still arrives."""
    out = run_script(
        """
        import os, select
        import isopool
        r, w = os.pipe()
        with isopool.Pool(1) as pool:
            assert pool.submit(pow, 2, 3).result(timeout=30) == 8
            os.close(w)
            ready, _, _ = select.select([r], [], [], 30)
            print("eof" if ready and os.read(r, 1) == b"" else "no eof")
        """
    )
    assert out.split() == ["eof"]


def test_forked_worker_logging_to_an_inherited_file_cannot_corrupt_its_pipes(
    tmp_path: Path,
) -> None:
    """A worker writing through a file handler inherited from the parent breaks nothing."""
    out = run_script(
        """
        import logging, sys
        import isopool
        from tests import _mp_tasks
        logging.basicConfig(filename=sys.argv[1])
        with isopool.Pool(1) as pool:
            for i in range(5):
                pool.submit(_mp_tasks.log_message, f"m{i}").result(timeout=30)
            print(pool.submit(pow, 2, 4).result(timeout=30))
        """,
        str(tmp_path / "parent.log"),
    )
    assert out.split() == ["16"]


def test_forked_server_starts_with_the_parent_main_module() -> None:
    """Functions of the parent's __main__ run in workers of a forked server."""
    out = run_script(
        """
        import isopool
        def double(x):
            return 2 * x
        with isopool.Pool(1) as pool:
            print(pool.submit(double, 21).result(timeout=30))
        """
    )
    assert out.split() == ["42"]


def test_memory_limit_counts_from_the_worker_size_when_the_server_is_forked() -> None:
    """A worker forked from a large parent may still use memory_limit bytes of its own."""
    out = run_script(
        """
        import isopool
        inherited = bytearray(300 << 20)  # mapped in the forked server and its workers
        with isopool.Pool(1, memory_limit="200MB") as pool:
            print(len(pool.submit(bytearray, 20 << 20).result(timeout=30)))
            try:
                pool.submit(bytearray, 400 << 20).result(timeout=30)
            except MemoryError:
                print("limited")
        """
    )
    assert out.split() == [str(20 << 20), "limited"]

"""No process outlives its task's worker: every escape route, every way a task ends.

Each row starts a process that leaves the task's process group (or not) by one
route, and ignores SIGTERM, then ends the task one way; the recorded pids must be
gone (or zombies) within 10 s. The parent-SIGKILL rows run the pool in a script
that the test SIGKILLs. See ``isopool/_reaper.py`` for the mechanism and its limits.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

import isopool
from tests import _escape, _tasks
from tests.conftest import descendants, pid_alive, started, wait_for

ROOT = Path(__file__).resolve().parent.parent


def recorded(path: Path) -> list[int]:
    """Wait until the task has written its escaped pids to ``path``; return them."""
    assert wait_for(path.exists, timeout=30), "the task never recorded its processes"
    return [int(pid) for pid in path.read_text().split()]


def all_gone(pids: list[int]) -> bool:
    return not any(pid_alive(pid) for pid in pids)


def assert_gone_within(pids: list[int], timeout: float) -> None:
    """Fail unless every pid is gone within ``timeout`` s; SIGKILL any left (no leak)."""
    if wait_for(lambda: all_gone(pids), timeout=timeout):
        return
    left = [pid for pid in pids if pid_alive(pid)]
    for pid in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    pytest.fail(f"processes outlived their task: {left}")


def end_by_timeout(pool: isopool.Pool, route: str, record: Path) -> list[int]:
    task = pool.options(timeout=2.0).submit(_escape.escape_then_hang, route, str(record))
    pids = recorded(record)
    with pytest.raises(isopool.TaskTimeoutError):
        task.result(timeout=30)
    return pids


def end_by_kill(pool: isopool.Pool, route: str, record: Path) -> list[int]:
    task = pool.submit(_escape.escape_then_hang, route, str(record))
    pids = recorded(record)
    assert task.kill()
    return pids


def end_by_shutdown(pool: isopool.Pool, route: str, record: Path) -> list[int]:
    pids = pool.submit(_escape.escape_then_return, route, str(record)).result(timeout=30)
    assert not all_gone(pids)  # a returned task's helpers live as long as its worker
    pool.shutdown(wait=True)
    return pids


def end_by_terminate(pool: isopool.Pool, route: str, record: Path) -> list[int]:
    pool.submit(_escape.escape_then_hang, route, str(record))
    pids = recorded(record)
    pool.terminate()
    return pids


def end_by_parent_sigkill(pool: isopool.Pool, route: str, record: Path) -> list[int]:
    """Run the task in a script's pool, then SIGKILL the script."""
    script = f"""
        import time, isopool
        from pathlib import Path
        from tests import _escape
        pool = isopool.Pool(1)
        pool.submit(_escape.escape_then_hang, {route!r}, {str(record)!r})
        while not Path({str(record)!r}).exists():
            time.sleep(0.01)
        print("running", flush=True)
        time.sleep(3600)
    """
    child = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(script)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "running"
        family = descendants(child.pid)  # the fork server, the worker and the escapees
        pids = recorded(record)
        assert set(pids) <= family
    finally:
        child.kill()
        child.wait(timeout=10)
        child.stdout.close()  # not communicate(): a leaked escapee may hold the pipe
    return sorted(family)


ENDINGS: dict[str, Callable[[isopool.Pool, str, Path], list[int]]] = {
    "timeout": end_by_timeout,
    "kill": end_by_kill,
    "shutdown": end_by_shutdown,
    "terminate": end_by_terminate,
    "parent-sigkill": end_by_parent_sigkill,
}


@pytest.mark.parametrize("route", _escape.ROUTES)
@pytest.mark.parametrize("ending", ENDINGS)
def test_escaped_process_is_gone_after_its_task_ends(one_worker, tmp_path, ending, route):
    """A process the task started dies with the task's worker, however it escaped."""
    pids = ENDINGS[ending](one_worker, route, tmp_path / "pids")
    assert pids
    # The issue asks for a second or two after parent death; a 10x margin.
    assert_gone_within(pids, timeout=10)


def test_daemon_of_a_running_task_is_adopted_by_its_worker(one_worker, tmp_path):
    """A double-forked daemon keeps running while its task runs, as the worker's child."""
    record = tmp_path / "pids"
    task = one_worker.submit(_escape.escape_then_hang, "double-fork", str(record))
    [daemon] = recorded(record)
    worker = started(task)
    alive, parent = pid_alive(daemon), _escape.parent_of(daemon)
    assert task.kill()
    assert_gone_within([daemon], timeout=10)
    assert alive
    assert parent == worker


def test_escaped_processes_are_gone_when_terminate_returns(tmp_path):
    """terminate() returns only after the fork server has killed and reaped the escapees."""
    pool = isopool.Pool(1)
    pool.submit(_escape.escape_then_hang, "daemon-tree", str(tmp_path / "pids"))
    pids = recorded(tmp_path / "pids")
    pool.terminate()
    gone = all_gone(pids)
    assert_gone_within(pids, timeout=10)  # kill them if they were not
    assert gone


def test_task_subprocess_keeps_its_exit_status(one_worker):
    """The worker reaps no child of the task's: subprocess still sees its exit code."""
    task = one_worker.submit(subprocess.call, ["sh", "-c", "exit 3"])
    assert task.result(timeout=30) == 3


def test_workers_die_with_a_sigkilled_fork_server(one_worker):
    """A SIGKILLed fork server takes its workers along; the pool starts a new one."""
    task = one_worker.submit(_tasks.hang)
    worker = started(task)
    server = _escape.parent_of(worker)
    os.kill(server, signal.SIGKILL)
    with pytest.raises(isopool.TaskCrashError):
        task.result(timeout=30)
    assert_gone_within([worker], timeout=10)
    assert one_worker.submit(_tasks.echo, 1).result(timeout=30) == 1


def test_fork_server_sigterm_kills_its_workers_and_their_escapees(one_worker, tmp_path):
    """SIGTERM (the fork server's parent-death signal) ends everything below it."""
    record = tmp_path / "pids"
    task = one_worker.submit(_escape.escape_then_hang, "daemon-tree", str(record))
    pids = recorded(record)
    worker = started(task)
    os.kill(_escape.parent_of(worker), signal.SIGTERM)
    with pytest.raises(isopool.TaskCrashError):
        task.result(timeout=30)
    assert_gone_within([worker, *pids], timeout=10)

"""Hostile descriptor games and resource limits: clear errors, nothing left open.

Limits are lowered only inside a child script (never in the pytest process): it
counts its descriptors and children before and after, restores the limit, checks
that a new pool works, and prints one JSON line for the test to judge.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import isopool
from tests import _tasks

ROOT = Path(__file__).resolve().parent.parent

# The child script's common part: helpers, then the case's lines, then the report.
_PRELUDE = """
    import gc, json, os, resource, isopool
    from tests import _tasks

    def fds():
        return len(os.listdir("/proc/self/fd"))

    def children():
        with open(f"/proc/self/task/{os.getpid()}/children") as f:
            return f.read().split()

    def threads_of_user():
        count = 0
        for status in __import__("glob").glob("/proc/[0-9]*/task/*/status"):
            try:
                with open(status) as f:
                    uid = next(line for line in f if line.startswith("Uid:")).split()[1]
            except (OSError, StopIteration):
                continue
            count += int(uid) == os.getuid()
        return count

    error = None
"""
_REPORT = """
    gc.collect()
    report = {"error": error, "before": before, "after": fds(), "children": children()}
    resource.setrlimit(LIMIT, (soft, hard))
    with isopool.Pool(2) as later:
        report["later"] = later.submit(_tasks.echo, 7).result(timeout=30)
    print(json.dumps(report))
"""


def run_script(body: str, prefix: list[str] | None = None) -> dict[str, object]:
    """Run the prelude, ``body`` and the report in a child; return its report."""
    code = textwrap.dedent(_PRELUDE) + textwrap.dedent(body) + textwrap.dedent(_REPORT)
    done = subprocess.run(
        [*(prefix or []), sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    report: dict[str, object] = json.loads(done.stdout.splitlines()[-1])
    assert report["after"] == report["before"], "descriptors left open"
    assert report["children"] == [], "processes left behind"
    assert report["later"] == 7, "a pool made after the limit was restored does not work"
    return report


def test_task_closing_every_descriptor_fails_with_a_pipe_lost_crash(one_worker):
    """A task that closes the worker's pipes fails with a crash that says so."""
    task = one_worker.submit(os.closerange, 3, 65536)
    with pytest.raises(isopool.TaskCrashError, match="closed the worker's result pipe") as info:
        task.result(timeout=30)
    assert info.value.exitcode == 74
    assert one_worker.submit(_tasks.echo, 1).result(timeout=30) == 1


def test_pool_without_descriptors_for_its_pipes_raises_at_creation():
    """Pool() that cannot make its workers' pipes raises EMFILE naming the limit."""
    report = run_script(
        """
        LIMIT = resource.RLIMIT_NOFILE
        soft, hard = resource.getrlimit(LIMIT)
        before = fds()
        resource.setrlimit(LIMIT, (before + 8, hard))
        try:
            isopool.Pool(4)
        except OSError as exc:
            error = [exc.errno, str(exc)]
        """
    )
    assert isinstance(report["error"], list)
    errno_, message = report["error"]
    assert errno_ == 24
    assert "6 descriptors per worker" in message
    assert "RLIMIT_NOFILE" in message


def test_pool_without_descriptors_for_its_fork_server_fails_its_first_task():
    """With fds for the pipes but not the fork server, the first task says which limit."""
    report = run_script(
        """
        import threading
        # A thread of our own: the fork server is then a fresh interpreter, started
        # by the monitor thread (a single-threaded program forks it in Pool()).
        threading.Thread(target=threading.Event().wait, daemon=True).start()
        LIMIT = resource.RLIMIT_NOFILE
        soft, hard = resource.getrlimit(LIMIT)
        before = fds()
        # The pool's epoll and wake-up pipe (3) and one worker's pipes (6) fit; the
        # fork server's socket pair does not.
        resource.setrlimit(LIMIT, (before + 3 + 6, hard))
        pool = isopool.Pool(1)
        try:
            pool.submit(_tasks.echo, 1).result(timeout=30)
        except isopool.BrokenPoolError as exc:
            error = str(exc)
        pool.shutdown()
        del pool
        """
    )
    assert isinstance(report["error"], str)
    assert "could not start its fork server" in report["error"]
    assert "RLIMIT_NOFILE" in report["error"]


def as_user_of_its_own() -> list[str]:
    """A command prefix that runs the child under a process limit of its own.

    RLIMIT_NPROC counts the threads of a real user id and is not enforced for root:
    the child runs with a real uid no other process has (one per test, so xdist's
    workers do not share a count), without CAP_SYS_RESOURCE and CAP_SYS_ADMIN; euid
    0 is kept so that it can still read the interpreter's files.
    """
    uid = 50000 + os.getpid() % 10000
    return ["setpriv", "--ruid", str(uid), "--bounding-set", "-sys_resource,-sys_admin", "--"]


needs_setpriv = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("setpriv") is None,
    reason="needs root and setpriv to run a child under a process limit of its own",
)


@needs_setpriv
def test_pool_without_a_thread_to_spare_raises_at_creation():
    """Pool() whose monitor thread cannot start raises at once, naming RLIMIT_NPROC."""
    report = run_script(
        """
        LIMIT = resource.RLIMIT_NPROC
        soft, hard = resource.getrlimit(LIMIT)
        before = fds()
        resource.setrlimit(LIMIT, (threads_of_user(), hard))
        try:
            isopool.Pool(2)
        except RuntimeError as exc:
            error = str(exc)
        """,
        prefix=as_user_of_its_own(),
    )
    assert isinstance(report["error"], str)
    assert "RLIMIT_NPROC" in report["error"]


@needs_setpriv
def test_pool_that_cannot_fork_workers_fails_its_first_task():
    """When the fork server's fork fails with EAGAIN, the first task names RLIMIT_NPROC."""
    report = run_script(
        """
        LIMIT = resource.RLIMIT_NPROC
        soft, hard = resource.getrlimit(LIMIT)
        before = fds()
        # Room for the monitor thread and the fork server, not for one worker.
        resource.setrlimit(LIMIT, (threads_of_user() + 2, hard))
        pool = isopool.Pool(2)
        try:
            pool.submit(_tasks.echo, 1).result(timeout=30)
        except isopool.BrokenPoolError as exc:
            error = str(exc)
        pool.shutdown()
        del pool
        """,
        prefix=as_user_of_its_own(),
    )
    assert isinstance(report["error"], str)
    assert "could not fork a worker: [Errno 11]" in report["error"]
    assert "RLIMIT_NPROC" in report["error"]

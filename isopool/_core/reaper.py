"""Child subreapers: so that no process a task starts outlives the worker that ran it.

The guarantee (Linux only), and how it is kept:

- Each worker marks itself a *child subreaper* (``PR_SET_CHILD_SUBREAPER``) before it
  runs anything. A process the task started that leaves the worker's process group
  (``os.setsid()``, ``subprocess.Popen(start_new_session=True)``) stays the worker's
  child, and one whose parent dies (a double-forked daemon) is re-parented to the
  worker instead of to init. So a helper daemon keeps working while its task runs,
  and every process the task started is a descendant of its worker.
- The fork server is a subreaper too. When a worker ends (time-out, ``kill()``,
  ``shutdown``, ``terminate``, retirement, a crash), the kernel hands the worker's
  children to the fork server. The fork server knows its own workers; every other
  child it finds (one read of ``/proc/self/task/<tid>/children``, after each child
  it reaps) is a leftover and gets SIGKILL, and is reaped. Killing one re-parents
  its own children to the fork server, and the next scan gets those: the loop ends
  when no leftover is left. Escaped processes get SIGKILL at once, without the
  polite SIGTERM that the worker's own process group gets first.
- When the parent dies (even by SIGKILL), the fork server gets SIGTERM (its
  parent-death signal; EOF on its socket has the same effect). It then SIGKILLs
  every worker's process group and every other child, and reaps until it has no
  child left, for at most ``CLEANUP_LIMIT`` seconds, before it exits. Workers still
  die with the fork server (their parent-death signal is SIGKILL).
- A worker never calls ``waitpid(-1)``: that would steal exit statuses from the
  task's own ``subprocess`` calls. So an adopted process that exits stays a zombie
  in its worker until the worker exits; then the fork server reaps it.

Limits, by design or by Linux:

- Processes live as long as their *worker*, not their task: a task that returns
  normally leaves its helpers running in its worker (as ``ProcessPoolExecutor``
  does, so an initializer's helper process keeps working); they die when that
  worker ends. ``max_tasks_per_child=1`` makes the two the same.
- A process that makes itself (or another process) a subreaper, or is re-parented
  by ptrace or by a PID namespace of its own, escapes the chain; so does anything
  started through another daemon (``systemd-run``, ``at``, a container runtime).
- If the fork server itself is SIGKILLed, its workers die (SIGKILL) but what they
  adopted is re-parented to init: the parent is not made a subreaper, because that
  would change how the user's own program reaps.
- A scan of the children file can miss a child while children appear and exit at
  the same moment (the kernel documents this); the fork server rescans after every
  reap and once a second, and loops until empty when it stops.
- cgroups v2 (one cgroup per worker, ``cgroup.kill``) would close every gap above,
  but need a delegated hierarchy, which this library cannot assume.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
from typing import Final

__all__ = [
    "CLEANUP_LIMIT",
    "EXIT_PIPE_LOST",
    "EXIT_SETUP_FAILED",
    "become_subreaper",
    "children",
    "kill_group",
    "set_parent_death_signal",
]

EXIT_SETUP_FAILED: Final = 70  # EX_SOFTWARE: the worker could not be set up
# EX_IOERR: the worker could not write its reply to its result pipe, because the
# task closed (or replaced) the worker's descriptors, e.g. with os.closerange().
EXIT_PIPE_LOST: Final = 74
# The longest the fork server spends killing and reaping after its parent is gone;
# ForkServer.close waits 5 s before it SIGKILLs the server, so this must be less.
CLEANUP_LIMIT: Final = 3.0

_PR_SET_PDEATHSIG: Final = 1
_PR_SET_CHILD_SUBREAPER: Final = 36
_CHILDREN_READ: Final = 1 << 16  # one read: the kernel builds the list as it is read


class _Libc:
    """libc's ``prctl``, loaded once (in the fork server, before any worker forks)."""

    handle: ctypes.CDLL | None = None

    @classmethod
    def prctl(cls, option: int, arg: int) -> None:
        if cls.handle is None:
            try:
                cls.handle = ctypes.CDLL(None, use_errno=True)
            except OSError:  # pragma: no cover - not Linux
                return
        with contextlib.suppress(AttributeError):  # pragma: no cover - no prctl
            cls.handle.prctl(option, arg, 0, 0, 0)


def set_parent_death_signal(expected_parent: int, sig: int) -> None:
    """Ask Linux to send ``sig`` to this process when its parent thread dies.

    Exits at once if the parent is already gone (the race between fork and prctl).
    """
    _Libc.prctl(_PR_SET_PDEATHSIG, sig)
    if os.getppid() != expected_parent:
        os._exit(EXIT_SETUP_FAILED)


def become_subreaper() -> None:
    """Make orphaned descendants of this process its children, not init's."""
    _Libc.prctl(_PR_SET_CHILD_SUBREAPER, 1)


def children() -> list[int]:
    """The pids of this (single-threaded) process's children, zombies included.

    Reads ``/proc/self/task/<pid>/children``: the children of the main thread, which
    is where the kernel puts adopted orphans. Empty if the file is missing (a kernel
    without CONFIG_PROC_CHILDREN), which leaves leftovers to the process groups.
    """
    try:
        fd = os.open(f"/proc/self/task/{os.getpid()}/children", os.O_RDONLY)
    except OSError:  # pragma: no cover - kernel without CONFIG_PROC_CHILDREN
        return []
    try:
        chunks = []
        while chunk := os.read(fd, _CHILDREN_READ):
            chunks.append(chunk)
    finally:
        os.close(fd)
    return [int(pid) for pid in b"".join(chunks).split()]


def kill_group(pid: int) -> None:
    """SIGKILL the process group led by ``pid``, and ``pid`` itself; ignore the gone."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, signal.SIGKILL)

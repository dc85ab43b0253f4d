"""Task functions that start processes which try to outlive their task, for test_orphans.

Each escape route starts one process that ignores SIGTERM and lives for an hour,
so only isopool's clean-up can end it in time. The task writes the escaped pids
to a file (written whole, then renamed, so a reader never sees half of it).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROUTES = ("same-group", "setsid", "double-fork", "daemon-tree", "popen-new-session")

_LINGER = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(3600)"


def _linger() -> None:
    """In a forked child: outlive everyone who does not SIGKILL us; never return."""
    try:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        time.sleep(3600)
    finally:
        os._exit(0)


def _fork_setsid() -> int:
    pid = os.fork()
    if pid == 0:
        os.setsid()
        _linger()
    return pid


def _double_fork(tree: bool = False) -> list[int]:
    """Start a daemon the classic way; return its pid once its first parent is gone.

    With ``tree`` the daemon also forks a child of its own, which must be found
    again after the daemon is killed (it is re-parented once more); both pids.
    """
    r, w = os.pipe()
    middle = os.fork()
    if middle == 0:
        os.close(r)
        os.setsid()
        daemon = os.fork()
        if daemon == 0:
            if tree:
                grandchild = os.fork()
                if grandchild == 0:
                    os.close(w)  # else the task's read never sees EOF
                    _linger()
                os.write(w, f"{grandchild} ".encode())
            os.close(w)
            _linger()
        os.write(w, f"{daemon} ".encode())
        os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as pipe:
        pids = [int(pid) for pid in pipe.read().split()]
    os.waitpid(middle, 0)  # now the daemon's parent is gone: it has been re-parented
    return pids


def start(route: str) -> list[int]:
    """Start a process by ``route``; return the pids started."""
    if route == "same-group":
        pid = os.fork()
        if pid == 0:
            _linger()
        return [pid]
    if route == "setsid":
        return [_fork_setsid()]
    if route in ("double-fork", "daemon-tree"):
        return _double_fork(tree=route == "daemon-tree")
    if route == "popen-new-session":
        return [subprocess.Popen([sys.executable, "-c", _LINGER], start_new_session=True).pid]
    raise ValueError(f"unknown route {route!r}")


def _record(path: str, pids: list[int]) -> None:
    tmp = Path(f"{path}.tmp")
    tmp.write_text(" ".join(map(str, pids)))
    tmp.rename(path)


def escape_then_hang(route: str, path: str) -> None:
    """Start a process by ``route``, record its pid in ``path``, then hang."""
    _record(path, start(route))
    time.sleep(3600)


def escape_then_return(route: str, path: str) -> list[int]:
    """Start a process by ``route``, record its pids in ``path``, and return them."""
    pids = start(route)
    _record(path, pids)
    return pids


def parent_of(pid: int) -> int:
    """The parent pid of ``pid``, from /proc."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat[stat.rfind(")") + 2 :].split()[1])

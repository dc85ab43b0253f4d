"""The fork server: a single-threaded process that forks workers on request.

Why it exists: the parent has a monitor thread (and the user's threads), so forking
workers from it could copy a lock held by another thread into the child and deadlock
there. Spawning a fresh interpreter per worker is safe but costs ~50 ms. The fork
server is spawned once (``subprocess``, which is thread-safe), imports isopool's worker
code and cloudpickle, freezes its heap for copy-on-write, and then forks a ready
worker in about a millisecond for each request.

Protocol over one ``SOCK_SEQPACKET`` socket pair (message boundaries kept)::

    parent -> server   config pickle (sys.path, initializer bytes), on its own pipe
    server -> parent   READY
    parent -> server   SPAWN worker_id max_tasks     + 3 fds (call_r, result_w, control_r)
    server -> parent   SPAWNED worker_id pid
    server -> parent   EXITED pid wait_status          (the server reaps every worker)

Lifetime: the server dies with the parent's monitor thread (PR_SET_PDEATHSIG) or when
its socket reaches EOF; each worker dies with the server (PR_SET_PDEATHSIG), so a
SIGKILLed parent leaves nothing behind. Workers get their own process group, so a
time-out can stop everything a task started.
"""

from __future__ import annotations

import ctypes
import gc
import os
import pickle
import select
import signal
import socket
import struct
import sys
from typing import Final, NoReturn

__all__ = ["EXITED", "MESSAGE", "READY", "SPAWN", "SPAWNED", "main", "set_parent_death_signal"]

MESSAGE: Final = struct.Struct("<Iiq")  # op, a, b
READY: Final = 1
SPAWN: Final = 2
SPAWNED: Final = 3
EXITED: Final = 4

_PR_SET_PDEATHSIG: Final = 1
_EXIT_SETUP_FAILED: Final = 70  # EX_SOFTWARE: the worker could not be set up
_WORKER_FDS: Final = 3  # call_r, result_w, control_r


def set_parent_death_signal(expected_parent: int) -> None:
    """Ask Linux to SIGKILL this process when its parent thread dies.

    Exits at once if the parent is already gone (the race between fork and prctl).
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):  # pragma: no cover - not Linux
        pass
    if os.getppid() != expected_parent:
        os._exit(_EXIT_SETUP_FAILED)


def main(fd: int, config_fd: int, parent_pid: int) -> NoReturn:
    """Serve fork requests on socket ``fd`` until EOF; never returns.

    ``config_fd`` is a pipe carrying one pickle (sys.path, initializer), then EOF.
    """
    set_parent_death_signal(parent_pid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    sock = socket.socket(fileno=fd)
    with os.fdopen(config_fd, "rb") as pipe:
        config = pickle.loads(pipe.read())
    sys.path[:] = config["sys_path"]
    initializer: bytes | None = config["initializer"]
    _preload()
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda _signum, _frame: None)
    gc.freeze()  # keep the imported heap shared with the workers (no refcount COW churn)
    sock.send(MESSAGE.pack(READY, 0, 0))
    server = _Server(sock, initializer, (wake_r, wake_w))
    server.run()
    os._exit(0)


def _preload() -> None:
    import cloudpickle  # noqa: F401 - imported once here so workers start with it

    from . import _errors, _spec, _worker  # noqa: F401 - same reason


class _Server:
    def __init__(
        self, sock: socket.socket, initializer: bytes | None, wake: tuple[int, int]
    ) -> None:
        self.sock = sock
        self.initializer = initializer
        self.wake = wake
        self.pid = os.getpid()

    def run(self) -> None:
        while True:
            try:
                ready, _, _ = select.select([self.sock.fileno(), self.wake[0]], [], [], 1.0)
            except InterruptedError:  # pragma: no cover - PEP 475 retries
                continue
            if self.wake[0] in ready:
                self._drain_wake()
            self._reap()
            if self.sock.fileno() in ready and not self._serve_request():
                return

    def _drain_wake(self) -> None:
        try:
            while os.read(self.wake[0], 4096):
                pass
        except BlockingIOError:
            pass

    def _serve_request(self) -> bool:
        try:
            msg, fds, _flags, _addr = socket.recv_fds(self.sock, MESSAGE.size, _WORKER_FDS)
        except OSError:
            return False
        if not msg:
            return False
        op, worker_id, max_tasks = MESSAGE.unpack(msg)
        if op == SPAWN and len(fds) == _WORKER_FDS:
            pid = self._fork(fds, max_tasks)
            self._send(SPAWNED, worker_id, pid)
        for fd in fds:
            os.close(fd)
        return True

    def _fork(self, fds: list[int], max_tasks: int) -> int:
        """Fork a worker serving the pipes ``fds`` (call_r, result_w, control_r)."""
        pid = os.fork()
        if pid:
            return pid
        try:  # in the worker: never return into the server's loop
            os.setpgid(0, 0)
            signal.set_wakeup_fd(-1)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            self.sock.close()
            os.close(self.wake[0])
            os.close(self.wake[1])
            set_parent_death_signal(self.pid)
            from ._worker import serve

            call_fd, result_fd, control_fd = fds
            serve(call_fd, result_fd, max_tasks, self.initializer, control_fd)
        finally:
            os._exit(_EXIT_SETUP_FAILED)

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            self._send(EXITED, pid, status)

    def _send(self, op: int, a: int, b: int) -> None:
        try:
            self.sock.send(MESSAGE.pack(op, a, b))
        except OSError:  # the parent is gone; PR_SET_PDEATHSIG will end us
            os._exit(0)

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
    server -> parent   SPAWN_FAILED worker_id errno    (fork failed, or the fds were lost)

Lifetime: the server gets SIGTERM when the parent's monitor thread dies
(PR_SET_PDEATHSIG), and stops when it does or when its socket reaches EOF; it
then kills every worker and everything they left behind before it exits. Each
worker dies with the server (PR_SET_PDEATHSIG), so a SIGKILLed parent leaves
nothing behind. Workers get their own process group, so a time-out can stop
everything a task started, and both the server and each worker are child
subreapers, so processes that leave the group are found too (see ``_reaper``).
"""

from __future__ import annotations

import contextlib
import errno
import gc
import os
import pickle
import select
import signal
import socket
import struct
import sys
import time
from typing import Final, NoReturn

from . import _reaper

__all__ = [
    "EXITED",
    "MESSAGE",
    "READY",
    "SPAWN",
    "SPAWNED",
    "SPAWN_FAILED",
    "main",
    "set_parent_death_signal",
]

MESSAGE: Final = struct.Struct("<Iiq")  # op, a, b
READY: Final = 1
SPAWN: Final = 2
SPAWNED: Final = 3
EXITED: Final = 4
SPAWN_FAILED: Final = 5

_EXIT_SETUP_FAILED: Final = _reaper.EXIT_SETUP_FAILED
_WORKER_FDS: Final = 3  # call_r, result_w, control_r


def set_parent_death_signal(expected_parent: int) -> None:
    """Ask Linux to SIGTERM the fork server when its parent thread dies.

    SIGTERM, not SIGKILL: the server must live long enough to kill its workers and
    what they left behind (``_Server.stop``). Exits at once if the parent is already
    gone (the race between fork and prctl).
    """
    _reaper.set_parent_death_signal(expected_parent, signal.SIGTERM)


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
    """The serving loop: fork on request, reap every child, kill what is not a worker.

    Single-threaded on purpose: adopted orphans are listed in the main thread's
    ``children`` file, and forking from one thread copies no other thread's lock.
    """

    def __init__(
        self, sock: socket.socket, initializer: bytes | None, wake: tuple[int, int]
    ) -> None:
        self.sock = sock
        self.initializer = initializer
        self.wake = wake
        self.pid = os.getpid()
        self.workers: set[int] = set()
        # Children the server had before it served (a helper started at start-up):
        # not leftovers of a worker, so kept until the server stops.
        self.helpers: set[int] = set()
        self.connected = True

    def run(self) -> None:
        """Serve until EOF, a lost parent or SIGTERM; then kill every child and return."""
        # Set here, before the first fork: a SIGTERM before this point finds no worker
        # to clean up, and its default action (exit) is right.
        _reaper.become_subreaper()
        signal.signal(signal.SIGTERM, lambda _signum, _frame: None)
        self.helpers = set(_reaper.children())
        try:
            self._serve()
        finally:
            self.stop()

    def _serve(self) -> None:
        while self.connected:
            try:
                ready, _, _ = select.select([self.sock.fileno(), self.wake[0]], [], [], 1.0)
            except InterruptedError:  # pragma: no cover - PEP 475 retries
                continue
            if self.wake[0] in ready and signal.SIGTERM in self._drain_wake():
                return
            if self._reap() or not ready:  # the heartbeat also catches a missed scan
                self._kill_leftovers()
            if self.sock.fileno() in ready and not self._serve_request():
                return

    def _drain_wake(self) -> bytes:
        """Empty the wake-up pipe; return the signal numbers it carried."""
        received = b""
        try:
            while data := os.read(self.wake[0], 4096):
                received += data
        except BlockingIOError:
            pass
        return received

    def _serve_request(self) -> bool:
        try:
            msg, fds, _flags, _addr = socket.recv_fds(self.sock, MESSAGE.size, _WORKER_FDS)
        except OSError:
            return False
        if not msg:
            return False
        op, worker_id, max_tasks = MESSAGE.unpack(msg)
        try:
            if op == SPAWN and len(fds) == _WORKER_FDS:
                pid = self._fork(fds, max_tasks)
                self._send(SPAWNED, worker_id, pid)
            elif op == SPAWN:  # the fds were dropped (MSG_CTRUNC): we are out of fds
                self._send(SPAWN_FAILED, worker_id, errno.EMFILE)
        except OSError as exc:  # fork failed: EAGAIN (RLIMIT_NPROC) or ENOMEM
            self._send(SPAWN_FAILED, worker_id, exc.errno or errno.EAGAIN)
        finally:
            for fd in fds:
                os.close(fd)
        return True

    def _fork(self, fds: list[int], max_tasks: int) -> int:
        """Fork a worker serving the pipes ``fds`` (call_r, result_w, control_r)."""
        pid = os.fork()
        if pid:
            self.workers.add(pid)
            return pid
        try:  # in the worker: never return into the server's loop
            self._set_up_worker()
            from ._worker import serve

            call_fd, result_fd, control_fd = fds
            serve(call_fd, result_fd, max_tasks, self.initializer, control_fd)
        finally:
            os._exit(_EXIT_SETUP_FAILED)

    def _set_up_worker(self) -> None:
        os.setpgid(0, 0)
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a polite stop must end it
        self.sock.close()
        os.close(self.wake[0])
        os.close(self.wake[1])
        # A subreaper, so the task's escaped descendants stay below it (see _reaper).
        _reaper.become_subreaper()
        _reaper.set_parent_death_signal(self.pid, signal.SIGKILL)

    def _reap(self) -> bool:
        """Reap every child that exited; report workers; return whether any was reaped."""
        reaped = False
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return reaped
            if pid == 0:
                return reaped
            reaped = True
            self.helpers.discard(pid)  # its pid may now be reused by a leftover
            if pid in self.workers:
                self.workers.discard(pid)
                self._send(EXITED, pid, status)

    def _kill_leftovers(self) -> bool:
        """SIGKILL every child that is not a worker (orphans adopted from dead workers).

        Returns whether the server has any child left. Each killed child is reaped by
        a later ``_reap``, which scans again for the children it left behind.
        """
        found = _reaper.children()
        for pid in found:
            if pid not in self.workers and pid not in self.helpers:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        return bool(found)

    def stop(self) -> None:
        """Kill every worker's process group and every other child; reap them all.

        Loops until no child is left (each death may hand the server more orphans),
        for at most ``_reaper.CLEANUP_LIMIT`` seconds.
        """
        self.connected = False
        self.helpers.clear()
        for pid in self.workers:
            _reaper.kill_group(pid)
        deadline = time.monotonic() + _reaper.CLEANUP_LIMIT
        while True:
            self._reap()
            if not self._kill_leftovers():
                return
            for pid in self.workers:
                _reaper.kill_group(pid)
            left = deadline - time.monotonic()
            if left <= 0:
                return
            with contextlib.suppress(InterruptedError):  # woken by SIGCHLD
                select.select([self.wake[0]], [], [], min(left, 0.05))
            self._drain_wake()

    def _send(self, op: int, a: int, b: int) -> None:
        if not self.connected:
            return
        try:
            self.sock.send(MESSAGE.pack(op, a, b))
        except OSError:  # the parent is gone: stop serving, then clean up
            self.connected = False

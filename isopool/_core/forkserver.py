"""The fork server: a single-threaded process that forks workers on request.

Why it exists: the parent has a monitor thread (and the user's threads), so forking
workers from it could copy a lock held by another thread into the child and deadlock
there. The fork server is started once per pool, imports isopool's worker code and
cloudpickle, freezes its heap for copy-on-write, and then forks a ready worker in about
a millisecond for each request.

How it starts (``_process.ForkServer``), one of two ways:

- **A fork of the parent** (``run_forked``), when the parent runs exactly one thread,
  its main thread, at ``Pool()`` (``/proc/self/task``): the fork takes ~1.2 ms, and
  ``Pool()`` to a first result ~10-20 ms instead of ~110-170 ms on a loaded 2-CPU
  machine (``benchmarks/forkserver_startup.py``); and it is the only way to hand the
  workers ``multiprocessing`` objects made with the "fork" context (unnamed
  semaphores, usable only by address; see ``_share``).
  The fork is made in ``Pool.__init__`` before the monitor thread exists, from the main
  thread, so it is safe (no lock can be held by another thread) and PR_SET_PDEATHSIG,
  which fires when the *thread* that forked exits, fires when the process exits: the
  main thread ends only with the process. The monitor takes the started server over.
- **A fresh interpreter** (``main``, started with ``os.posix_spawn``, which is
  thread-safe) from the monitor thread, which outlives the server, when the parent
  runs threads, and for every restart of a server that died.

What the forked server inherits from the parent, and what it does about it:

- memory: the whole heap, copy-on-write; ``gc.freeze()`` first thing, so the parent's
  garbage is never collected (and its finalizers never run) here. The cost: a page
  the parent writes later is copied, the server keeping the old one, so a pool made
  after loading a large data set that the program then changes can pin up to that
  much memory for the pool's life (create pools early, as with the fork start
  method). Workers map that heap too; ``memory_limit`` counts from a worker's own
  size, not from zero, for that reason (``_worker._set_memory_limit``).
- ``sys.modules`` and the parent's ``__main__``: workers find the parent's functions
  and imported modules already there (the fresh interpreter imports them on demand),
  and the parent's module state as of ``Pool()``: its logging configuration, say,
  whose file handlers now write to ``/dev/null`` (see below). Configure workers in the
  initializer, as on the fresh path.
- descriptors: every descriptor number >= 3 except the server's socket (and
  ``multiprocessing``'s resource-tracker pipe) is pointed at ``/dev/null`` (``dup2``,
  which closes what it held), and stdin too, as the fresh server's. Closing them
  would release the parent's pipes and sockets as well, but would let the server
  reuse their numbers while the parent's objects in the inherited heap (a logging
  FileHandler, a socket) still name them: a worker logging through an inherited
  handler would write into its result pipe. So the parent's files are closed here;
  the numbers stay taken.
- signals: every handler is reset to the default (SIGINT, SIGPIPE and SIGXFSZ are
  ignored, as in a fresh interpreter's server), the wake-up fd is cleared and the
  signal mask emptied; the parent blocks signals around the fork so that none of its
  handlers runs here.
- ``multiprocessing``'s state: the finalizer registry and the list of children are
  cleared, as ``Process._bootstrap`` does, so a worker's exit never runs the parent's
  finalizers (which would, for one, shut down the parent's Manager).
- ``random``: ``os.fork`` reseeds it in every child (the server and each worker);
  other generators (numpy's global one) are copied as they are.
- it never returns into the caller's stack and never runs atexit handlers: it ends
  with ``os._exit``. Buffered stdout/stderr are flushed before the fork.

Protocol over one ``SOCK_SEQPACKET`` socket pair (message boundaries kept)::

    parent -> server   CONFIG nfds nbytes              the configuration follows:
    parent -> server   FDS k 0      + k fds (k <= 250)  ceil(nfds / 250) messages
    parent -> server   nbytes of config pickle, in chunks of CONFIG_CHUNK bytes
                       (sys.path, multiprocessing authkey, initializer pickle)
    server -> parent   READY
    parent -> server   SPAWN worker_id max_tasks     + 3 fds (call_r, result_w, control_r)
    server -> parent   SPAWNED worker_id pid
    server -> parent   EXITED pid wait_status          (the server reaps every worker)
    server -> parent   SPAWN_FAILED worker_id errno    (fork failed, or the fds were lost)

The configuration travels over the socket with its length announced, never on a pipe
read to EOF: a fork the program makes right after ``Pool()`` (``os.fork``,
``multiprocessing.Manager()``) holds a copy of every descriptor, so an EOF may never
come. Every descriptor is close-on-exec (received ones with ``MSG_CMSG_CLOEXEC``).

Lifetime: the server gets SIGTERM when the thread that started it dies
(PR_SET_PDEATHSIG), and stops when it does or when its socket reaches EOF (the parent
shuts the socket down, which reaches the server even if a foreign fork holds a copy);
it then kills every worker and everything they left behind before it exits. Each
worker dies with the server (PR_SET_PDEATHSIG), so a SIGKILLed parent leaves nothing
behind. Workers get their own process group, so a time-out can stop everything a
task started, and both the server and each worker are child subreapers, so processes
that leave the group are found too (see ``_reaper``).
"""

from __future__ import annotations

import array
import contextlib
import errno
import faulthandler
import gc
import os
import pickle
import select
import signal
import socket
import struct
import sys
import time
from typing import Any, Final, NoReturn

from . import reaper as _reaper
from .worker import Initializer

__all__ = [
    "CONFIG",
    "CONFIG_CHUNK",
    "EXITED",
    "FDS",
    "MAX_FDS_PER_MESSAGE",
    "MESSAGE",
    "READY",
    "SPAWN",
    "SPAWNED",
    "SPAWN_FAILED",
    "main",
    "recv_fds",
    "run_forked",
    "set_parent_death_signal",
]

MESSAGE: Final = struct.Struct("<Iiq")  # op, a, b
READY: Final = 1
SPAWN: Final = 2
SPAWNED: Final = 3
EXITED: Final = 4
SPAWN_FAILED: Final = 5
CONFIG: Final = 6
FDS: Final = 7
# The kernel takes at most SCM_MAX_FD (253) descriptors in one message.
MAX_FDS_PER_MESSAGE: Final = 250
# A SEQPACKET message must fit in the socket's send buffer (~208 KiB by default, less
# when lowered): 32 KiB pieces are safe and few (a 10 MB initializer is 320 sends).
CONFIG_CHUNK: Final = 32 * 1024
# The parent sends the whole configuration right after starting the server; the
# server exits rather than wait longer than this for it.
CONFIG_TIMEOUT: Final = 60.0

_EXIT_SETUP_FAILED: Final = _reaper.EXIT_SETUP_FAILED
_WORKER_FDS: Final = 3  # call_r, result_w, control_r
# The signals the serving fork server handles (through its wake-up pipe).
_SERVER_SIGNALS: Final = frozenset({signal.SIGTERM, signal.SIGCHLD})
# A fresh interpreter's server ignores these as the parent's Python does at start-up
# (SIGPIPE, SIGXFSZ) or because Ctrl-C is the parent's to handle (SIGINT).
_IGNORED_SIGNALS: Final = frozenset({signal.SIGINT, signal.SIGPIPE, signal.SIGXFSZ})


def set_parent_death_signal(expected_parent: int) -> None:
    """Ask Linux to SIGTERM the fork server when its parent thread dies.

    SIGTERM, not SIGKILL: the server must live long enough to kill its workers and
    what they left behind (``_Server.stop``). Exits at once if the parent is already
    gone (the race between fork and prctl).
    """
    _reaper.set_parent_death_signal(expected_parent, signal.SIGTERM)


def main(fd: int, parent_pid: int) -> NoReturn:
    """Serve fork requests on socket ``fd`` until EOF; never returns.

    The entry point of a fresh interpreter started by ``_process.ForkServer``.
    """
    set_parent_death_signal(parent_pid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    os.set_inheritable(fd, False)  # passed by dup2, so inheritable
    # posix_spawn closes only close-on-exec descriptors: drop any other the parent
    # left inheritable, so the server holds nothing of the program's open.
    os.closerange(3, fd)
    os.closerange(fd + 1, os.sysconf("SC_OPEN_MAX"))
    _serve(fd)


def run_forked(fd: int, parent_pid: int) -> NoReturn:
    """Become the fork server in a fork of the parent; never returns.

    Called in the child of ``_process.ForkServer.fork``, with every signal blocked and
    ``gc`` frozen; see the module docstring for what is inherited and reset here.
    """
    try:
        _reset_signals()
        set_parent_death_signal(parent_pid)
        _plug_inherited_fds(keep={fd, *_multiprocessing_fds()})
        if faulthandler.is_enabled():  # its file may have been one of the plugged fds
            faulthandler.enable(2)
        _forget_parent_multiprocessing()
        _serve(fd)
    except BaseException:
        import traceback

        traceback.print_exc()  # the fresh server's failures are printed too
    finally:
        os._exit(_EXIT_SETUP_FAILED)


def _serve(fd: int) -> NoReturn:
    sock = socket.socket(fileno=fd)
    config, fds = _receive_config(sock)
    sys.path[:] = config["sys_path"]
    _set_authkey(config["authkey"])
    data: bytes | None = config["initializer"]
    initializer = None if data is None else Initializer(data, tuple(fds))
    _preload(bool(fds))
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda _signum, _frame: None)
    gc.freeze()  # keep the imported heap shared with the workers (no refcount COW churn)
    try:
        sock.send(MESSAGE.pack(READY, 0, 0))
    except OSError:  # the pool was closed before we were ready: nothing to serve
        os._exit(0)
    server = _Server(sock, initializer, (wake_r, wake_w))
    server.run()
    os._exit(0)


def _receive_config(sock: socket.socket) -> tuple[dict[str, Any], list[int]]:
    """Read the CONFIG header, its descriptors and exactly its announced bytes."""
    sock.settimeout(CONFIG_TIMEOUT)
    op, nfds, nbytes = MESSAGE.unpack(_recv_message(sock, MESSAGE.size))
    if op != CONFIG or nfds < 0 or nbytes < 0:
        raise RuntimeError(f"isopool fork server: expected CONFIG, got op {op}")
    fds: list[int] = []
    while len(fds) < nfds:
        msg, got, flags = recv_fds(sock, MESSAGE.size, MAX_FDS_PER_MESSAGE)
        fds.extend(got)
        if len(msg) != MESSAGE.size or flags & socket.MSG_CTRUNC:
            raise RuntimeError("isopool fork server: descriptors lost in CONFIG")
        op, count, _ = MESSAGE.unpack(msg)
        if op != FDS or count != len(got):
            raise RuntimeError(f"isopool fork server: expected FDS, got op {op}")
    data = bytearray(nbytes)
    view = memoryview(data)
    done = 0
    while done < nbytes:
        size = min(CONFIG_CHUNK, nbytes - done)
        if sock.recv_into(view[done:], size) != size:
            raise RuntimeError("isopool fork server: the configuration was cut short")
        done += size
    sock.settimeout(None)
    config: dict[str, Any] = pickle.loads(data)
    return config, fds


def recv_fds(sock: socket.socket, size: int, maxfds: int) -> tuple[bytes, list[int], int]:
    """Receive one message and up to ``maxfds`` descriptors, close-on-exec.

    ``socket.recv_fds`` ignores its ``flags`` argument (3.11 to 3.13 at least), so it
    cannot ask for MSG_CMSG_CLOEXEC: its descriptors would leak into any program a
    task runs with ``close_fds=False``.
    """
    fds = array.array("i")
    msg, ancdata, flags, _addr = sock.recvmsg(
        size, socket.CMSG_LEN(maxfds * fds.itemsize), socket.MSG_CMSG_CLOEXEC
    )
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[: len(data) - len(data) % fds.itemsize])
    return msg, list(fds), flags


def _recv_message(sock: socket.socket, size: int) -> bytes:
    msg = sock.recv(size)
    if len(msg) != size:
        raise RuntimeError("isopool fork server: the parent closed the socket at start-up")
    return msg


def _set_authkey(authkey: object) -> None:
    # The parent's key, so workers can talk to its multiprocessing Managers and
    # Listeners (a proxy authenticates with current_process().authkey).
    if isinstance(authkey, bytes):
        import multiprocessing

        multiprocessing.current_process().authkey = authkey


def _reset_signals() -> None:
    for sig in signal.valid_signals():
        if sig in (signal.SIGKILL, signal.SIGSTOP):
            continue
        handler = signal.SIG_IGN if sig in _IGNORED_SIGNALS else signal.SIG_DFL
        with contextlib.suppress(OSError, ValueError):  # signals the C library reserves
            signal.signal(sig, handler)
    signal.set_wakeup_fd(-1)
    signal.pthread_sigmask(signal.SIG_SETMASK, set())


def _plug_inherited_fds(keep: set[int]) -> None:
    """Point every inherited descriptor number >= 3 but ``keep`` at /dev/null; stdin too."""
    devnull = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd > 2 and fd != devnull and fd not in keep:
            with contextlib.suppress(OSError):  # the listing's own fd, already closed
                os.dup2(devnull, fd, inheritable=False)
    os.dup2(devnull, 0)
    os.close(devnull)


def _multiprocessing_fds() -> list[int]:
    """Descriptors of the parent's multiprocessing machinery that workers keep using."""
    tracker = sys.modules.get("multiprocessing.resource_tracker")
    fd = getattr(getattr(tracker, "_resource_tracker", None), "_fd", None)
    # The resource tracker's pipe: workers register what they create there, as a
    # forked multiprocessing child does; it only delays the tracker's exit to ours.
    return [fd] if isinstance(fd, int) else []


def _forget_parent_multiprocessing() -> None:
    util = sys.modules.get("multiprocessing.util")
    if util is not None:
        util._finalizer_registry.clear()  # as Process._bootstrap does in a child
    process = sys.modules.get("multiprocessing.process")
    if process is not None:
        process._children = set()  # type: ignore[attr-defined]  # as Process._bootstrap does


def _preload(has_fds: bool) -> None:
    import cloudpickle  # noqa: F401 - imported once here so workers start with it

    from . import worker as _worker  # noqa: F401 - same reason

    if has_fds:  # the initializer holds multiprocessing objects: what they need
        import multiprocessing.forkserver
        import multiprocessing.synchronize  # noqa: F401

        from . import share as _share  # noqa: F401


class _Server:
    """The serving loop: fork on request, reap every child, kill what is not a worker.

    Single-threaded on purpose: adopted orphans are listed in the main thread's
    ``children`` file, and forking from one thread copies no other thread's lock.
    """

    def __init__(
        self, sock: socket.socket, initializer: Initializer | None, wake: tuple[int, int]
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
            msg, fds, _flags = recv_fds(self.sock, MESSAGE.size, _WORKER_FDS)
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
        """Fork a worker serving the pipes ``fds`` (call_r, result_w, control_r).

        The server's handled signals are blocked across the fork: until the child has
        dropped the server's handlers, a SIGTERM meant for it would be written into
        the *server's* wake-up pipe (shared after fork) and stop the server. The child
        unblocks them once its own dispositions are in place, so a SIGTERM that came
        early still ends it. Both sides set the worker's process group, so it exists
        before the parent learns the pid (and signals the group).
        """
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, _SERVER_SIGNALS)
        try:
            pid = os.fork()
        except BaseException:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            raise
        if pid:
            with contextlib.suppress(OSError):  # it may have set it, or died, already
                os.setpgid(pid, pid)
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            self.workers.add(pid)
            return pid
        try:  # in the worker: never return into the server's loop
            self._set_up_worker()
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            from .worker import serve

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

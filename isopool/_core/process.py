"""OS process control from the parent: the fork server, pipes, exit codes and signals.

Nothing here is threaded or knows about tasks: it starts and talks to the fork server
(see ``_forkserver``), makes a worker's pipe pair, decodes wait statuses into readable
reasons, and stops a worker's whole process group, politely or brutally. When it runs
out of descriptors or processes, its errors name the resource limit that was hit.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import gc
import os
import pickle
import resource
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from typing import Final

from .._errors import BrokenPoolError
from . import forkserver as _forkserver
from . import reaper as _reaper
from . import wire as _wire
from .share import InitPayload

__all__ = [
    "ExitInfo",
    "ForkServer",
    "WorkerPipes",
    "decode_exit",
    "describe_spawn_failure",
    "describe_start_failure",
    "is_single_threaded",
    "limit_hint",
    "signal_group",
]

# A pipe of 1 MiB (Linux's default maximum for unprivileged processes) lets a 10 MB
# payload cross in ten wake-ups instead of 160 with the default 64 KiB.
_PIPE_SIZE: Final = 1 << 20
_F_SETPIPE_SZ: Final = 1031


@dataclass(frozen=True, slots=True)
class ExitInfo:
    """How a worker process ended.

    Attributes:
        exitcode: As ``multiprocessing``: >= 0 an exit code, < 0 the killing signal,
            None when the status could not be learned (the fork server was lost).
        signal: The signal's name ("SIGSEGV") when it was killed by one.
    """

    exitcode: int | None
    signal: str | None

    def describe(self) -> str:
        """Return a phrase such as "killed by SIGSEGV" or "exited with code 3".

        The exit codes isopool's worker chooses itself carry their reason; a task
        that exits with the same code on purpose is described the same way.
        """
        if self.signal is not None:
            return f"killed by {self.signal}"
        if self.exitcode is None:
            return "died (exit status unknown: the fork server was lost)"
        reason = _EXIT_REASONS.get(self.exitcode)
        if reason is not None:
            return f"exited with code {self.exitcode}: {reason}"
        return f"exited with code {self.exitcode}"


_EXIT_REASONS: Final = {
    _reaper.EXIT_PIPE_LOST: (
        "the task closed the worker's result pipe (e.g. with os.closerange), "
        "so the worker could not send its reply"
    ),
}


def decode_exit(status: int | None) -> ExitInfo:
    """Turn a ``waitpid`` status (or None) into an ExitInfo."""
    if status is None:
        return ExitInfo(None, None)
    code = os.waitstatus_to_exitcode(status)
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return ExitInfo(code, name)
    return ExitInfo(code, None)


def signal_group(pid: int, sig: int) -> None:
    """Send ``sig`` to the process group led by worker ``pid``, or to ``pid`` alone.

    Each worker leads its own group (setpgid in the fork server), so this also reaches
    the processes a task started. Those that left the group are not reached here:
    the fork server SIGKILLs them once the worker is gone (see ``_reaper``).
    Processes that are already gone are ignored.
    """
    try:
        os.killpg(pid, sig)
        return
    except (ProcessLookupError, PermissionError):
        pass
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


class WorkerPipes:
    """The three pipes of one worker; the parent keeps ``call_w``, ``result_r``, ``control_w``.

    The worker's ends are handed to the fork server and closed here right after, so
    the worker is their only holder: EOF on ``result_r`` means the worker is gone.
    ``control`` carries the worker's frame cookie (written here, before the worker
    exists) and then REVOKE messages, read by the worker's watcher thread while a call
    runs (the call pipe is read only between calls).
    """

    __slots__ = ("call_r", "call_w", "control_r", "control_w", "cookie", "result_r", "result_w")

    def __init__(self) -> None:
        """Make the three pipes, or none.

        Raises:
            OSError: out of descriptors (EMFILE, ENFILE); the message names the limit.
        """
        self.cookie = secrets.randbits(16) | 1  # never 0, which a zeroed header would match
        self.call_r = self.call_w = self.result_r = self.result_w = -1
        self.control_r = self.control_w = -1
        try:
            self.call_r, self.call_w = _pipe()
            self.result_r, self.result_w = _pipe()
            self.control_r, self.control_w = _pipe()
        except BaseException:
            self.close()
            raise
        for fd in (self.call_w, self.result_w):
            with contextlib.suppress(OSError):  # a lowered pipe-max-size: keep the default
                fcntl.fcntl(fd, _F_SETPIPE_SZ, _PIPE_SIZE)
        os.write(self.control_w, _wire.COOKIE.pack(self.cookie, os.getpid()))
        os.set_blocking(self.call_w, False)
        os.set_blocking(self.result_r, False)
        os.set_blocking(self.control_w, False)

    def worker_ends(self) -> list[int]:
        """The ends the worker gets, in the order the fork server passes them on."""
        return [self.call_r, self.result_w, self.control_r]

    def close_worker_ends(self) -> None:
        """Close the ends that belong to the worker (after handing them over)."""
        for fd in (self.call_r, self.result_w, self.control_r):
            if fd >= 0:
                _close(fd)
        self.call_r = self.result_w = self.control_r = -1

    def close(self) -> None:
        """Close every end still open."""
        for fd in (
            self.call_r,
            self.call_w,
            self.result_r,
            self.result_w,
            self.control_r,
            self.control_w,
        ):
            if fd >= 0:
                _close(fd)
        self.call_r = self.call_w = self.result_r = self.result_w = -1
        self.control_r = self.control_w = -1


def _pipe() -> tuple[int, int]:
    try:
        return os.pipe()
    except OSError as exc:
        raise OSError(exc.errno, f"{exc.strerror}; {limit_hint(exc.errno)}") from None


def limit_hint(err: int | None) -> str:
    """Say which resource limit an errno from pipe(), socketpair() or fork() points at."""
    if err == errno.EMFILE:
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        return (
            "isopool needs 6 descriptors per worker (three pipes, three of them only until "
            "the worker starts) and 4 per pool; the limit on open files (RLIMIT_NOFILE, "
            f"ulimit -n) is {_limit_text(soft)}: raise it, or use fewer workers"
        )
    if err == errno.ENFILE:
        return "the system-wide limit on open files (fs.file-max) is reached"
    if err == errno.EAGAIN:
        soft = resource.getrlimit(resource.RLIMIT_NPROC)[0]
        return (
            "isopool needs a thread per pool, a process per worker and one for its fork "
            "server; the limit on this user's processes and threads (RLIMIT_NPROC, "
            f"ulimit -u) is {_limit_text(soft)}, or a pids cgroup is full: raise it, or "
            "use fewer workers"
        )
    if err == errno.ENOMEM:
        return "there is not enough memory to fork a worker"
    return "isopool could not create the pipes and processes its workers need"


def _limit_text(value: int) -> str:
    return "unlimited" if value == resource.RLIM_INFINITY else str(value)


def describe_start_failure(exc: OSError) -> str:
    """Explain why the fork server (pipes, socket, fork + exec) could not start."""
    return f"isopool could not start its fork server: {exc}; {limit_hint(exc.errno)}"


def describe_spawn_failure(err: int) -> str:
    """Explain a SPAWN_FAILED message: the fork server could not fork a worker."""
    return (
        f"isopool's fork server could not fork a worker: [Errno {err}] "
        f"{os.strerror(err)}; {limit_hint(err)}"
    )


def _close(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.close(fd)


class ForkServer:
    """The parent's handle on one fork server process.

    Two ways to start one (see ``_forkserver``): ``ForkServer(init)`` starts a fresh
    interpreter; call it from the thread that will outlive the server (the monitor
    thread), as Linux's parent-death signal fires when the *thread* that started a
    process exits. ``ForkServer.fork(init)`` forks this process instead, from the main
    thread of a single-threaded process (``Pool.__init__``, before the monitor starts).
    Either way the configuration (sys.path, the multiprocessing authkey, the pickled
    initializer and its descriptors) is sent over the socket before anything else.
    """

    def __init__(self, init: InitPayload | None) -> None:
        if init is not None and init.fork_only:
            raise BrokenPoolError(
                "isopool fork server must be (re)started, but the initializer's "
                f"{', '.join(init.fork_only)} can only reach a fork of this process, "
                "which now runs threads; create such objects with "
                "multiprocessing.get_context('forkserver')"
            )
        parent_sock, child_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            process = _spawn_interpreter(child_sock.fileno())
        except BaseException:
            parent_sock.close()
            raise
        finally:
            child_sock.close()
        self._attach(parent_sock, process, init)

    @classmethod
    def fork(cls, init: InitPayload | None) -> ForkServer | None:
        """Start the server as a fork of this process; None when that is not safe now.

        Only from the main thread of a process that runs no other thread: the fork
        then copies no lock held elsewhere, and the server's parent-death signal
        fires only when the process exits.
        """
        if not is_single_threaded():
            return None
        parent_sock, child_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        _flush_std_streams()  # or the buffered text would be written again by workers
        parent_pid = os.getpid()
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
        try:
            pid = os.fork()
        except OSError:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
            parent_sock.close()
            child_sock.close()
            return None
        if pid == 0:  # the fork server; never returns into the caller's stack
            try:
                gc.freeze()  # the parent's garbage is never collected (finalized) here
                _forkserver.run_forked(child_sock.detach(), parent_pid)
            finally:
                os._exit(70)
        child = _Child(pid)
        try:  # a Ctrl-C pending since the fork lands here: leave no server behind
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
            child_sock.close()
            server = cls.__new__(cls)
            server._attach(parent_sock, child, init)
        except BaseException:
            parent_sock.close()
            child.kill()
            child.wait()
            raise
        return server

    def _attach(self, sock: socket.socket, process: _Child, init: InitPayload | None) -> None:
        self.sock = sock
        self.process = process
        self.ready = False
        try:
            _send_config(sock, init)
        except OSError:
            # The server died at start-up, or did not read in time: make sure it is
            # gone, so that the monitor sees EOF and reports a start-up failure.
            with contextlib.suppress(OSError):
                process.kill()

    @property
    def pid(self) -> int:
        """The fork server's pid."""
        return self.process.pid

    def fileno(self) -> int:
        """The socket to wait on for SPAWNED and EXITED messages."""
        return self.sock.fileno()

    def spawn(self, worker_id: int, pipes: WorkerPipes, max_tasks: int) -> None:
        """Ask for a worker that reads ``pipes.call_r`` and writes ``pipes.result_w``."""
        msg = _forkserver.MESSAGE.pack(_forkserver.SPAWN, worker_id, max_tasks)
        socket.send_fds(self.sock, [msg], pipes.worker_ends())

    def read_messages(self) -> list[tuple[int, int, int]] | None:
        """Return the messages waiting (op, a, b) without blocking; None on EOF."""
        messages: list[tuple[int, int, int]] = []
        while True:
            try:
                msg = self.sock.recv(_forkserver.MESSAGE.size, socket.MSG_DONTWAIT)
            except BlockingIOError:
                return messages
            except OSError:
                return None
            if not msg:
                return messages if messages else None
            messages.append(_forkserver.MESSAGE.unpack(msg))

    def close(self, timeout: float) -> None:
        """Close the socket (the server exits on EOF); kill it after ``timeout`` s."""
        # shutdown() reaches the server even when a fork the program made holds a
        # copy of our end (close() alone would then never give it EOF).
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def _send_config(sock: socket.socket, init: InitPayload | None) -> None:
    """Send CONFIG, the descriptors, then the config pickle; see ``_forkserver``."""
    import multiprocessing

    config = pickle.dumps(
        {
            "sys_path": list(sys.path),
            "authkey": bytes(multiprocessing.current_process().authkey),
            "initializer": None if init is None else init.data,
        },
        protocol=pickle.HIGHEST_PROTOCOL,
    )
    fds = () if init is None else init.fds
    sock.settimeout(_forkserver.CONFIG_TIMEOUT)
    try:
        sock.send(_forkserver.MESSAGE.pack(_forkserver.CONFIG, len(fds), len(config)))
        step = _forkserver.MAX_FDS_PER_MESSAGE
        for start in range(0, len(fds), step):
            group = fds[start : start + step]
            msg = _forkserver.MESSAGE.pack(_forkserver.FDS, len(group), 0)
            socket.send_fds(sock, [msg], list(group))
        view = memoryview(config)
        for start in range(0, len(config), _forkserver.CONFIG_CHUNK):
            sock.sendall(view[start : start + _forkserver.CONFIG_CHUNK])
    finally:
        sock.settimeout(None)


# The fresh server imports the engine without the package's __init__, which imports
# the whole API (~230 ms of imports on a loaded machine, ~10 MiB of heap): a stand-in
# package module while ``_forkserver`` and what it needs import (~40 ms), removed
# before any task runs, so that a task's ``import isopool`` gets the real package
# (which reuses the submodules already imported).
_ENGINE_ONLY: Final = (
    "_package = types.ModuleType('isopool'); _package.__path__ = [{package!r}]; "
    "sys.modules['isopool'] = _package; del _package; "
)


def _spawn_interpreter(sock_fd: int) -> _Child:
    """Start ``python -c "...main(fd, ppid)"`` with the socket as its fd 3 (or 4).

    ``os.posix_spawn``, not ``subprocess.Popen``: Popen waits for EOF on an error pipe
    until the exec, and a fork another thread makes meanwhile (``os.fork``, a fork
    context ``Manager()``) holds that pipe open for its whole life, stalling the pool's
    start as long. posix_spawn reports exec failures without a pipe.
    """
    target = 3 if sock_fd != 3 else 4
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # isopool/, above _core/
    boot = (
        f"import sys, types; sys.path.insert(0, {os.path.dirname(package)!r}); "
        f"{_ENGINE_ONLY.format(package=package)}"
        "from isopool._core.forkserver import main; "
        "del sys.modules['isopool']; "
        f"main({target}, {os.getpid()})"
    )
    args = [sys.executable, *_interpreter_flags(), "-c", boot]
    pid = os.posix_spawn(
        sys.executable,
        args,
        os.environ,
        file_actions=[
            (os.POSIX_SPAWN_DUP2, sock_fd, target),  # dup2 clears close-on-exec
            (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
        ],
        setsigmask=(),
        setsigdef=(signal.SIGPIPE, signal.SIGXFSZ),  # as Popen's restore_signals
    )
    return _Child(pid)


class _Child:
    """The part of ``subprocess.Popen`` the monitor uses, for the fork server's pid."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        """Reap the child if it has exited; return its exit code or None."""
        if self.returncode is None:
            self._reap(os.WNOHANG)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the child to exit; raise ``subprocess.TimeoutExpired`` after ``timeout``."""
        if timeout is None:
            code = self.returncode
            while code is None:
                self._reap(0)
                code = self.returncode
            return code
        deadline = time.monotonic() + timeout
        delay = 0.0005
        while self.poll() is None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise subprocess.TimeoutExpired(f"isopool fork server {self.pid}", timeout)
            time.sleep(min(delay, remaining))
            delay = min(delay * 2, 0.05)
        return self.poll() or 0

    def kill(self) -> None:
        """SIGKILL the child unless it has been reaped (its pid may be reused then)."""
        if self.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)

    def _reap(self, flags: int) -> None:
        try:
            pid, status = os.waitpid(self.pid, flags)
        except ChildProcessError:  # someone else reaped it (waitpid(-1)): status lost
            self.returncode = 0
            return
        if pid:
            self.returncode = os.waitstatus_to_exitcode(status)


def is_single_threaded() -> bool:
    """Whether this process runs one thread, its main one (from ``/proc/self/task``).

    ``threading.active_count()`` is not enough: threads started by C libraries
    (BLAS pools, gRPC) or by ``faulthandler`` are not counted there.
    """
    if threading.current_thread() is not threading.main_thread():
        return False
    if threading.get_native_id() != os.getpid():
        return False
    try:
        return len(os.listdir("/proc/self/task")) == 1
    except OSError:
        return False


def _flush_std_streams() -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            if stream is not None:
                stream.flush()


def _interpreter_flags() -> list[str]:
    """The parent's -O, -X, -W... flags, so the workers run as the parent does."""
    flags: list[str] = subprocess._args_from_interpreter_flags()  # type: ignore[attr-defined]  # stdlib helper, used by multiprocessing
    return flags

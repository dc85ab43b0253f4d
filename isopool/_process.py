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
import os
import pickle
import resource
import secrets
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass
from typing import Final

from . import _forkserver, _reaper, _wire

__all__ = [
    "ExitInfo",
    "ForkServer",
    "WorkerPipes",
    "decode_exit",
    "describe_spawn_failure",
    "describe_start_failure",
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
        os.write(self.control_w, _wire.COOKIE.pack(self.cookie))
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
            "isopool needs 4 descriptors per worker (two pipes, two of them only until the "
            "worker starts) and 4 per pool; the limit on open files (RLIMIT_NOFILE, "
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

    Start it from the thread that will outlive it (the monitor thread): Linux's
    parent-death signal fires when the *thread* that started a process exits.
    """

    def __init__(self, initializer: bytes | None) -> None:
        parent_sock, child_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        config_r, config_w = os.pipe()
        package_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        boot = (
            f"import sys; sys.path.insert(0, {package_root!r}); "
            "from isopool._forkserver import main; "
            f"main({child_sock.fileno()}, {config_r}, {os.getpid()})"
        )
        args = [sys.executable, *_interpreter_flags(), "-c", boot]
        try:
            self.process = subprocess.Popen(
                args, pass_fds=[child_sock.fileno(), config_r], stdin=subprocess.DEVNULL
            )
        except BaseException:
            parent_sock.close()
            os.close(config_w)
            raise
        finally:
            child_sock.close()
            os.close(config_r)
        self.sock = parent_sock
        self.ready = False
        # The config goes through a pipe, not the socket: a SEQPACKET message is capped
        # by the socket buffer, and a pickled initializer can be large. The write
        # blocks only until the server (which reads it first) has started.
        config = {"sys_path": list(sys.path), "initializer": initializer}
        try:
            with os.fdopen(config_w, "wb") as pipe:
                pipe.write(pickle.dumps(config))
        except BrokenPipeError:
            pass  # the server died at start-up; the monitor sees EOF on the socket

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
        self.sock.close()
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def _interpreter_flags() -> list[str]:
    """The parent's -O, -X, -W... flags, so the workers run as the parent does."""
    flags: list[str] = subprocess._args_from_interpreter_flags()  # type: ignore[attr-defined]  # stdlib helper, used by multiprocessing
    return flags

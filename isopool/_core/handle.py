"""WorkerHandle: the parent's record of one worker process, and its non-blocking pipe I/O.

Owned by the engine and touched only under its monitor's lock. The handle knows its
worker's phase, which tasks were written to it, in order (the head is the one
running), what is still to be written, which calls it has asked the worker to take
back (``revoking``), and how the worker is being stopped; it reads and writes its
pipes without ever blocking, so a stuck worker cannot stall the monitor. The engine
(``_machine``) decides; only ``flush`` and ``read`` touch a descriptor, and the
monitor calls them.
"""

from __future__ import annotations

import collections
import contextlib
import enum
import itertools
import os
import threading
from typing import Final, Protocol

from .._errors import ProtocolError
from . import oob as _oob
from . import wire as _wire
from .run import Run, Runnable

__all__ = ["Pipes", "WorkerHandle", "WorkerPhase"]


class _Scratch(threading.local):
    """A reading thread's buffer (see ``_wire.READ_SIZE``); ``feed`` copies out of it."""

    def __init__(self) -> None:
        self.view = memoryview(bytearray(_wire.READ_SIZE))


_scratch = _Scratch()
_SMALL_FRAME: Final = 65536  # below this, header and payload are joined (one iovec)
_IOV_MAX: Final = 512  # iovecs per writev, well under Linux's 1024


class WorkerPhase(enum.Enum):
    """The life of one worker, in order; STOPPING may follow RETIRING."""

    NEW = "new"  # made, with its pipes; not yet handed to the fork server
    SPAWNING = "spawning"  # handed to the fork server; its pid not known yet
    UP = "up"  # running: takes calls
    RETIRING = "retiring"  # takes no more calls; exits by itself after the last one
    STOPPING = "stopping"  # being stopped (``stop_reason``): SIGTERM, SIGKILL at kill_at
    DEAD = "dead"  # gone, and its tasks accounted for (finalized)


class Pipes(Protocol):
    """The parent's ends of a worker's pipes (``_process.WorkerPipes``)."""

    cookie: int
    call_w: int
    result_r: int
    control_w: int

    def close(self) -> None:
        """Close every end still open."""


class WorkerHandle:
    """One worker process as the parent sees it."""

    __slots__ = (
        "assigned",
        "eof_at",
        "held",
        "id",
        "kill_at",
        "out",
        "out_registered",
        "phase",
        "pid",
        "pipes",
        "protocol_error",
        "reader",
        "revoking",
        "slab",
        "status",
        "stop_reason",
        "stop_task",
        "tasks",
        "wants_slab",
    )

    def __init__(self, worker_id: int, pipes: Pipes) -> None:
        self.id = worker_id
        self.pipes = pipes
        self.phase = WorkerPhase.NEW
        self.pid: int | None = None
        self.tasks: collections.deque[Runnable] = collections.deque()
        self.out: collections.deque[memoryview] = collections.deque()
        self.out_registered = False
        self.reader = _wire.FrameReader(pipes.cookie)
        # Calls asked back from the worker (by their number on it), awaiting REVOKED.
        self.revoking: dict[int, Runnable] = {}
        self.assigned = 0  # calls ever written to it (for max_tasks_per_child)
        self.stop_reason: str | None = None  # "timeout", "kill", "terminate", "protocol"...
        self.stop_task: Runnable | None = None
        self.protocol_error: str | None = None  # what it wrote that was not a frame
        self.kill_at: float | None = None  # when to escalate SIGTERM to SIGKILL
        self.status: int | None = None  # wait status from the fork server
        self.eof_at: float | None = None  # when its result pipe reached EOF
        # The slab lent to it for its next large result (see _oob), if any.
        self.slab: _oob._Lease | None = None
        self.wants_slab = 0  # the size of its last large result: lend it a slab
        # Frames read before the fork server said the worker's pid (rare race).
        self.held: list[_wire.Frame] = []

    def __repr__(self) -> str:
        return f"<WorkerHandle {self.id} pid={self.pid} {self.phase.value} tasks={len(self.tasks)}>"

    @property
    def accepting(self) -> bool:
        """Whether new calls may be written to this worker."""
        return self.phase in (WorkerPhase.NEW, WorkerPhase.SPAWNING, WorkerPhase.UP)

    @property
    def finalized(self) -> bool:
        """Whether the worker is gone and accounted for."""
        return self.phase is WorkerPhase.DEAD

    def retire(self) -> None:
        """Take no more calls: the worker exits by itself after its last one."""
        if self.accepting:
            self.phase = WorkerPhase.RETIRING

    def queue_call(self, task: Runnable) -> Run:
        """Append ``task``'s CALL frame to the out buffer; return the task's new run."""
        self.tasks.append(task)
        self.assigned += 1  # the worker numbers its calls the same way
        payload = task._payload
        # A raw task's result goes back to Redis as it is: never in a memfd.
        kind = _wire.CALL_INBAND if task._raw else _wire.CALL
        header = _wire.pack_header(kind, task.id, len(payload))
        if len(payload) < _SMALL_FRAME:
            self.out.append(memoryview(header + payload))
        else:
            self.out.append(memoryview(header))
            self.out.append(memoryview(payload))
        return Run(self, self.assigned)

    def release(self, token: int) -> None:
        """Tell the worker it may close the memfd of its result ``token`` (see _oob)."""
        # OSError: the worker is gone (its memfd with it), or hopelessly behind.
        with contextlib.suppress(OSError):
            os.write(self.pipes.control_w, _wire.REVOKE.pack(token | _oob.RELEASE_BIT))

    def lend_slab(self, lease: _oob._Lease) -> None:
        """Lend the worker ``lease``'s slab (SLAB fd, then its token) for a result."""
        slab = lease.slab
        if slab is None:
            return
        message = _wire.REVOKE.pack(slab.fd | _oob.SLAB_BIT) + _wire.REVOKE.pack(slab.token)
        try:
            written = os.write(self.pipes.control_w, message)  # 16 bytes: atomic
        except OSError:  # the worker is gone or its pipe full: it uses its own memfds
            lease.release()
            return
        if written == len(message):
            self.slab = lease

    def flush(self) -> bool:
        """Write what the pipe takes now; return whether bytes remain to be written."""
        out = self.out
        while out:
            try:
                written = os.writev(self.pipes.call_w, list(itertools.islice(out, _IOV_MAX)))
            except BlockingIOError:
                break
            except OSError:  # the worker is dead; the monitor handles its death
                out.clear()
                break
            while written and out:
                head = out[0]
                if written >= len(head):
                    written -= len(head)
                    out.popleft()
                else:
                    out[0] = head[written:]
                    written = 0
        return bool(out)

    def read(self, drain: bool = True) -> tuple[list[_wire.Frame], bool, ProtocolError | None]:
        """Read what the worker wrote: (whole frames, whether EOF was reached, error).

        A large frame is read straight into its own buffer (no intermediate copies).
        ``error`` is the ProtocolError of a malformed frame; the whole frames before it
        are still returned, so a worker's last good reply is never lost.
        ``drain``: read until the pipe is empty (EAGAIN) or at EOF; without it, a read
        shorter than the buffer (the pipe had no more) ends it, one syscall fewer,
        which the monitor's level-triggered epoll makes safe: more data, or the EOF,
        is reported again.
        """
        frames: list[_wire.Frame] = []
        reader, fd = self.reader, self.pipes.result_r
        while True:
            room = reader.room()
            try:
                if room is not None:
                    count = os.readv(fd, [room])
                    if count:
                        frames.extend(reader.filled(count))
                        continue
                    return frames, True, None
                view = _scratch.view
                count = os.readv(fd, [view])
            except BlockingIOError:
                return frames, False, None
            except OSError:
                return frames, True, None
            if not count:
                return frames, True, None
            try:
                frames.extend(reader.feed(view[:count]))
            except ProtocolError as exc:
                frames.extend(getattr(exc, "frames", ()))
                return frames, False, exc
            if not drain and count < len(view):
                return frames, False, None

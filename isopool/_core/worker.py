"""The worker process's main loop: read a call frame, run it, write a result frame.

A worker is forked from the fork server with three pipe ends: ``call_fd`` (frames
from the parent), ``result_fd`` (frames to the parent) and ``control_fd`` (its frame
cookie, then REVOKE requests); nobody else holds them, so EOF on ``call_fd`` means
the parent is gone or wants the worker to exit. Calls run one at a time, in the order
they arrive, on the main thread. A watcher thread (``isopool-revoker``) reads the
control pipe while a call runs and answers REVOKEs of calls queued behind it (see
``_Revocations``); workers of ``max_tasks_per_child=1`` have none. Because of that
thread, a task that calls ``os.fork()`` on Python 3.12+ triggers the interpreter's
DeprecationWarning about forking a multi-threaded process (hidden by default; the
thread holds no lock that a forked child could need). User prints go to the
inherited stdout/stderr, never to the result pipe, so they cannot corrupt the
channel; bytes a task writes there anyway lack the worker's cookie and are reported.

Every reply ends with the USAGE trailer (``_wire``): wall time, CPU and context
switches of this process and its reaped children, measured just around the task's
function (``getrusage``: SELF before, SELF and CHILDREN after; about 1 us each where
syscalls are slow, as in a VM, up to 3 us for the first after a wake-up), and the RSS
high-water mark; a pool made with ``usage=False`` sends ``NOT_RUN`` instead and makes
none of those calls. A call that carries ``cpus`` runs with this process's affinity
set to them, restored after it.

What the worker does with each failure, so that the parent can pin it on one task:

- the call does not unpickle, or the result/exception does not pickle: a
  BAD_PAYLOAD frame (JSON, never a pickle) saying which step failed and with what;
- the task raises (``SystemExit`` too, as in ``ProcessPoolExecutor``): an ERROR frame
  with the exception and its traceback text; ``isopool.Shutdown`` and
  ``SystemExit(0)``/``SystemExit(None)`` go in a SHUTDOWN frame (a normal exit);
- a ``SystemExit`` while pickling the result or the exception is sent as the task's
  exception, again as the stdlib does; the worker lives on in every case above;
- a segfault, ``os._exit`` or a signal: the worker just dies; the parent sees it.
- the task closes (or breaks) the worker's result pipe: the worker exits with
  ``_reaper.EXIT_PIPE_LOST``, which the parent reports as such.

Large buffers of a call or a result travel in sealed memfds, not through the pipes
(``_oob``, ``worker_slabs``): a result's memfd stays open here until the parent says on
the control pipe that it has opened its own descriptor (RELEASE), and a worker about to exit
waits for that (at most ``_RELEASE_WAIT``), so no result is lost to a clean exit.

Imports only ``_wire``, ``_oob``, ``_errors`` and two helpers: ``worker_slabs`` (its side
of the shared memory) and ``chunks`` (what ``Pool.map`` runs here). Besides, ``_spec``
lazily for names and ``_reaper`` for one exit code: worker start-up is a benchmark figure,
and the fork server has imported all of this already.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import resource
import select
import sys
import threading
import time
from typing import Final, NamedTuple, NoReturn

from .._errors import Shutdown
from . import oob as _oob
from . import wire as _wire
from . import worker_slabs as _slabs
from .chunks import resolve as _resolve
from .reaper import EXIT_PIPE_LOST

__all__ = ["Initializer", "serve"]

_scratch = memoryview(bytearray(_wire.READ_SIZE))  # the call pipe's read buffer, kept
_EXIT_NO_COOKIE: Final = 70  # EX_SOFTWARE: the parent went away before the worker started
# How long an exiting worker waits for the parent to release its last results' memfds:
# the parent does so as it reads each reply, so this bounds only a parent that hangs.
_RELEASE_WAIT: Final = 10.0


class Initializer(NamedTuple):
    """A pool's pickled ``(initializer, initargs)`` as the fork server holds it.

    ``fds`` are the server's copies of the descriptors that ``multiprocessing``
    objects in the pickle refer to by index (see ``_share``); each worker inherits them.
    """

    payload: bytes
    fds: tuple[int, ...]


def serve(
    call_fd: int,
    result_fd: int,
    max_tasks: int,
    initializer: Initializer | None,
    control_fd: int = -1,
) -> NoReturn:
    """Run calls from ``call_fd`` until EOF or ``max_tasks`` (0: no limit), then exit.

    ``control_fd`` (when given) first carries this worker's frame cookie, then the
    parent's REVOKE messages, which a watcher thread answers while a call runs.
    """
    global _cookie
    try:
        revocations = _Revocations(result_fd)
        if control_fd >= 0:
            _cookie = _read_cookie(control_fd)
            if max_tasks != 1:  # a worker of one call has no call queued behind it
                revocations.watch(control_fd)
        if initializer is not None:
            _run_initializer(result_fd, initializer)
        _usage_first()  # after the initializer: children it reaped are not a call's
        reader = _wire.FrameReader()
        done = 0
        can_share = control_fd >= 0  # the RELEASE of a result memfd comes on it
        while not max_tasks or done < max_tasks:
            frames = _read_frames(call_fd, reader)
            if frames is None:
                break
            for kind, task_id, payload in frames:
                if revocations.start_next():
                    _run_call(result_fd, task_id, payload, can_share and kind == _wire.CALL)
                done += 1  # a revoked call counts too: the parent counted it as written
        _await_releases(control_fd, revocations.watching)
    except SystemExit as exc:
        _exit(_exit_code(exc))
    _exit(0)


# The cookie this worker stamps on its frames, and the lock that keeps the watcher's
# REVOKED answers from landing inside a result frame the main thread is writing.
_cookie = 0
_write_lock = threading.Lock()


def _read_cookie(fd: int) -> int:
    data = b""
    while len(data) < _wire.COOKIE.size:
        chunk = os.read(fd, _wire.COOKIE.size - len(data))
        if not chunk:
            _exit(_EXIT_NO_COOKIE)
        data += chunk
    cookie, parent = _wire.COOKIE.unpack(data)
    _slabs.set_parent(parent)
    return int(cookie)


class _Revocations:
    """Which calls written to this worker must not start; shared with the watcher.

    Calls are numbered 1, 2, ... in the order they arrive (the parent numbers them the
    same way). The main thread asks ``start_next`` before each call; the watcher,
    asked to revoke call N, refuses if it has started (``REVOKED_LATE``) or promises it
    never will (``REVOKED_OK``). Both decide under one lock, and the watcher writes its
    answer while holding the write lock, so on the result pipe every answer precedes
    the replies of the calls after the revoked one: the parent never has to guess.
    """

    def __init__(self, result_fd: int) -> None:
        self._result_fd = result_fd
        self.watching = False
        self._lock = threading.Lock()
        self._started = 0
        self._revoked: set[int] = set()

    def start_next(self) -> bool:
        """Count the next call; False if it was revoked (skip it)."""
        with self._lock:
            self._started += 1
            if self._revoked and self._started in self._revoked:
                self._revoked.discard(self._started)
                return False
        return True

    def watch(self, control_fd: int) -> None:
        """Answer REVOKE messages from ``control_fd`` on a daemon thread."""
        thread = threading.Thread(
            target=self._watch, args=(control_fd,), name="isopool-revoker", daemon=True
        )
        thread.start()
        self.watching = True

    def _watch(self, control_fd: int) -> None:
        pending = b""
        while True:
            try:
                data = os.read(control_fd, 4096)
            except OSError:
                data = b""
            if not data:  # the parent is gone; the call pipe's EOF ends the worker
                _slabs.release_all()  # and no RELEASE will come
                return
            pending += data
            messages, pending = _control_messages(pending)
            for number in messages:
                self._answer(number)

    def _answer(self, number: int) -> None:
        with _write_lock:
            with self._lock:
                late = number <= self._started
                if not late:
                    self._revoked.add(number)
            answer = _wire.REVOKED_LATE if late else _wire.REVOKED_OK
            _write_frame(self._result_fd, _wire.REVOKED, number, answer)


def _control_messages(pending: bytes) -> tuple[list[int], bytes]:
    """Act on the RELEASE and SLAB messages in ``pending``; return REVOKEs and the rest.

    REVOKE n is one number; RELEASE (``_oob.RELEASE_BIT``) one number; SLAB
    (``_oob.SLAB_BIT`` | fd) is followed by the slab's token.
    """
    size = _wire.REVOKE.size
    revokes: list[int] = []
    while len(pending) >= size:
        (number,) = _wire.REVOKE.unpack_from(pending)
        if number & _oob.RELEASE_BIT:
            _slabs.release(number & ~_oob.RELEASE_BIT)
        elif number & _oob.SLAB_BIT:
            if len(pending) < 2 * size:
                break  # its token is still to come
            (token,) = _wire.REVOKE.unpack_from(pending, size)
            _slabs.lend_slab(number & ~_oob.SLAB_BIT, token)
            pending = pending[size:]
        else:
            revokes.append(number)
        pending = pending[size:]
    return revokes, pending


def _await_releases(control_fd: int, watching: bool) -> None:
    """Before a clean exit: let the parent open the memfds of the last results first.

    The watcher thread reads RELEASEs when it runs; otherwise (a worker of one call)
    this reads them from ``control_fd`` itself.
    """
    deadline = time.monotonic() + _RELEASE_WAIT
    if watching:
        _slabs.wait_released(_RELEASE_WAIT)
        return
    pending = b""
    while _slabs.holding() and control_fd >= 0:
        ready, _, _ = select.select([control_fd], [], [], max(0.0, deadline - time.monotonic()))
        data = os.read(control_fd, 4096) if ready else b""
        if not data:
            return  # the parent is gone or slow: exit; the memfds go with this process
        _revokes, pending = _control_messages(pending + data)


def _read_frames(fd: int, reader: _wire.FrameReader) -> list[_wire.Frame] | None:
    """Block until at least one whole frame arrives; None on EOF."""
    while True:
        room = reader.room()
        if room is not None:  # a large call: read it in place
            count = os.readv(fd, [room])
            if not count:
                return None
            frames = reader.filled(count)
        else:
            count = os.readv(fd, [_scratch])
            if not count:
                return None
            frames = reader.feed(_scratch[:count])  # feed copies what it keeps
        if frames:
            return frames


def _run_initializer(result_fd: int, init: Initializer) -> None:
    try:
        if init.fds:
            _inherit_fds(init.fds)
        initializer, initargs = pickle.loads(init.payload)
        initializer(*initargs)
    except SystemExit:
        raise
    except BaseException as exc:
        _log_initializer_failure()
        # Deliver what the initializer's handlers queued (a QueueHandler's record)
        # before the parent hears of the failure: it breaks the pool at once, and
        # ProcessPoolExecutor's caller finds the record there by then.
        _finish_multiprocessing()
        info = [_wire.qualified_name(type(exc)), _safe_str(exc), _wire.format_exception(exc)]
        _send(result_fd, _wire.INIT_FAILED, 0, json.dumps(info).encode())
        _exit(3)


def _log_initializer_failure() -> None:
    """Log it where ProcessPoolExecutor's worker does, for handlers the initializer set."""
    try:
        import logging

        logging.getLogger("concurrent.futures").critical("Exception in initializer:", exc_info=True)
    except BaseException:
        pass


def _inherit_fds(fds: tuple[int, ...]) -> None:
    # Where multiprocessing's DupFd (ours, _share.DupFd, and its own forkserver's)
    # finds the descriptors a pickled Connection, Arena or socket refers to by index.
    from multiprocessing import forkserver

    forkserver._forkserver._inherited_fds = list(fds)  # type: ignore[attr-defined]  # as forkserver.main does in its children


def _finish_multiprocessing() -> None:
    """Run multiprocessing's exit finalizers, as a multiprocessing child does.

    A ``multiprocessing.Queue`` put from this worker is written by a feeder thread;
    without this the last records (a QueueHandler's logs) would be lost at os._exit.
    The fork server cleared the finalizers it inherited, so only this worker's run.
    """
    util = sys.modules.get("multiprocessing.util")
    if util is None:
        return
    with contextlib.suppress(BaseException):
        util._exit_function()  # what Process._bootstrap calls at a child's end


def _run_call(result_fd: int, task_id: int, payload: _wire.Payload, share: bool) -> None:
    # Every handler catches BaseException: a KeyboardInterrupt or SystemExit raised by
    # a payload's __reduce__ fails that task, and the worker lives on (the stdlib's
    # worker would die and break its pool). ``share``: the result's large buffers may
    # go out of band.
    try:
        call = _wire.loads(_slabs.claim_call(payload))
        fn, args, kwargs, memory_limit = call[:4]
        cpus: frozenset[int] | None = call[4] if len(call) > 4 else None
        measure = len(call) < 6  # Pool(usage=False) appends False: no getrusage at all
        if isinstance(fn, str):
            fn = _resolve(fn)
    except BaseException as exc:
        _send_bad_payload(result_fd, task_id, "call unpickle", exc, _NOT_RUN)
        return
    if memory_limit is not None:
        _set_memory_limit(memory_limit)
    pinned = None
    if measure:  # inline, not a call: a tiny task's whole run is a few microseconds
        start: resource.struct_rusage | None = _getrusage(_SELF)
        started = _clock()  # the clock last: the wall time leaves the syscall out
    else:
        start = None
    try:
        if cpus is not None:
            pinned = _pin(cpus)  # an OSError here fails the task, not the worker
        value = fn(*args, **kwargs)
    except BaseException as exc:
        usage = _NOT_RUN if start is None else _usage_since(started, start)
        if memory_limit is not None and isinstance(exc, MemoryError):
            exc.add_note(f"isopool: the task hit its memory_limit of {memory_limit} bytes")
        _send_exception(result_fd, task_id, exc, usage)
    else:
        usage = _NOT_RUN if start is None else _usage_since(started, start)
        try:
            sharer = _slabs.share_result if share else None
            data = _wire.dumps(_oob.wrap(value) if share else value, sharer)
        except SystemExit as exc:  # ProcessPoolExecutor sends this one back as it is
            _send_exception(result_fd, task_id, exc, usage)
        except BaseException as exc:
            _send_bad_payload(result_fd, task_id, "result pickle", exc, usage)
        else:
            _send(result_fd, _wire.RESULT, task_id, data, usage)
    finally:
        if memory_limit is not None:
            _set_memory_limit(resource.RLIM_INFINITY)
        if pinned is not None:
            _unpin(pinned)
        _flush_stdio()


# -- what a call cost (the USAGE trailer of every reply; see _wire) -------------

_NOT_RUN: Final = _wire.NOT_RUN  # the trailer of a call that never ran: wall < 0


_SELF: Final = resource.RUSAGE_SELF
_CHILDREN: Final = resource.RUSAGE_CHILDREN
_pack_usage: Final = _wire.USAGE.pack
_getrusage: Final = resource.getrusage
_clock: Final = time.perf_counter
# This worker's RUSAGE_CHILDREN totals as last read (first by serve(), after the
# initializer). They change only when the worker reaps a child, which in practice
# happens during a call: so the end of one call is the start of the next (one syscall
# fewer per call), and a call that reaped nothing costs no children arithmetic.
# A plain tuple until then, not a struct_rusage: a struct sequence still alive when the
# interpreter clears its type at exit makes 3.11 print a SystemError (tp_clear).
_kids_seen: tuple[float, ...] = (0.0,) * 16


def _usage_first() -> None:
    """Read the children's totals before the first call (a fork starts them at zero)."""
    global _kids_seen
    _kids_seen = _getrusage(_CHILDREN)


def _usage_since(started: float, own0: resource.struct_rusage) -> bytes:
    """The USAGE trailer for a call that began at ``started`` (the clock), ``own0``.

    Deltas of this process plus its reaped children, and the high-water mark of
    their RSS (ru_maxrss is in KiB on Linux). Every counter only grows (the kernel's
    own totals), so no delta is negative. Indexes, not names, on this hot path:
    struct_rusage's 0 utime, 1 stime, 2 maxrss, 14 nvcsw, 15 nivcsw.
    """
    global _kids_seen
    wall = _clock() - started
    own = _getrusage(_SELF)
    kids = _getrusage(_CHILDREN)
    kids0 = _kids_seen
    rss = own[2] if own[2] > kids[2] else kids[2]
    if kids == kids0:  # no child reaped: the usual case
        return _pack_usage(
            wall,
            own[0] - own0[0],
            own[1] - own0[1],
            rss * 1024,
            own[14] - own0[14],
            own[15] - own0[15],
        )
    _kids_seen = kids
    return _pack_usage(
        wall,
        own[0] - own0[0] + kids[0] - kids0[0],
        own[1] - own0[1] + kids[1] - kids0[1],
        rss * 1024,
        own[14] - own0[14] + kids[14] - kids0[14],
        own[15] - own0[15] + kids[15] - kids0[15],
    )


def _pin(cpus: frozenset[int]) -> set[int] | None:
    """Run this worker on ``cpus`` for one call; return the set to restore after."""
    before = os.sched_getaffinity(0)
    if before == cpus:
        return None
    os.sched_setaffinity(0, cpus)
    return before


def _unpin(before: set[int]) -> None:
    with contextlib.suppress(OSError):  # a CPU went offline meanwhile: keep what works
        os.sched_setaffinity(0, before)


_data_baseline: int | None = None  # this worker's data size when it first set a limit


def _set_memory_limit(limit: int) -> None:
    # RLIMIT_DATA (Linux >= 4.7) counts the heap and private anonymous mappings, which
    # is where Python's objects live; RLIMIT_AS would also count reserved-but-unused
    # address space (thread stacks, BLAS arenas) and fail far too early.
    # It counts what the worker inherited too: a fork server forked from a parent with
    # a 2 GB heap gives each worker 2 GB of (shared) mappings, so the limit is set on
    # top of the worker's own size, measured once.
    global _data_baseline
    if limit != resource.RLIM_INFINITY:
        if _data_baseline is None:
            _data_baseline = _data_size()
        limit += _data_baseline
    _soft, hard = resource.getrlimit(resource.RLIMIT_DATA)
    resource.setrlimit(resource.RLIMIT_DATA, (limit, hard))


def _data_size() -> int:
    """This process's data size in bytes (VmData, what RLIMIT_DATA is checked against)."""
    try:
        with open("/proc/self/status", "rb") as status:
            for line in status:
                if line.startswith(b"VmData:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _send_exception(
    result_fd: int, task_id: int, exc: BaseException, usage: bytes, nested: bool = False
) -> None:
    data, failure = _wire.dumps_exception(exc)
    if failure is None:
        _send(result_fd, _exit_kind(exc), task_id, data, usage)
    elif isinstance(failure, SystemExit) and not nested:
        # as the stdlib: SystemExit wins
        _send_exception(result_fd, task_id, failure, usage, True)
    else:
        _send_bad_payload(result_fd, task_id, "exception pickle", failure, usage, original=exc)


def _exit_kind(exc: BaseException) -> int:
    """SHUTDOWN for OTP's normal exits (Shutdown, SystemExit(0)), else ERROR."""
    if isinstance(exc, Shutdown) or (isinstance(exc, SystemExit) and exc.code in (0, None)):
        return _wire.SHUTDOWN
    return _wire.ERROR


def _send_bad_payload(
    result_fd: int,
    task_id: int,
    what: str,
    exc: BaseException,
    usage: bytes,
    original: BaseException | None = None,
) -> None:
    """Report that ``what`` failed with ``exc``; for "exception pickle", of ``original``.

    The report is JSON, so the parent reads it without running any code.
    """
    described = original if original is not None else exc
    info = {
        "what": what,
        "error_module": getattr(type(exc), "__module__", ""),
        "error_qualname": getattr(type(exc), "__qualname__", type(exc).__name__),
        "error": _safe_str(exc),
        "type_name": _wire.qualified_name(type(described)),
        "message": _safe_str(described),
        "traceback": _safe_traceback(exc if original is None else original),
    }
    _send(result_fd, _wire.BAD_PAYLOAD, task_id, json.dumps(info).encode(), usage)


def _safe_traceback(exc: BaseException) -> str:
    try:
        return _wire.format_exception(exc)
    except BaseException:
        return ""


def _safe_str(exc: BaseException) -> str:
    try:
        return str(exc)
    except BaseException:
        return f"<{type(exc).__name__} whose str() failed>"


def _send(fd: int, kind: int, task_id: int, payload: bytes, trailer: bytes = b"") -> None:
    with _write_lock:
        _write_frame(fd, kind, task_id, payload, trailer)


def _write_frame(fd: int, kind: int, task_id: int, payload: bytes, trailer: bytes = b"") -> None:
    header = _wire.pack_header(kind, task_id, len(payload) + len(trailer), _cookie)
    if len(payload) < 65536:
        _write_all(fd, header + payload + trailer)
    else:  # no copy of a large payload to append 48 bytes
        _write_all(fd, header)
        _write_all(fd, payload)
        _write_all(fd, trailer)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    try:
        while view:
            view = view[os.write(fd, view) :]
    except OSError as exc:  # EBADF: the task closed our result pipe; EPIPE: parent gone
        _exit_pipe_lost(fd, exc)


def _exit_pipe_lost(fd: int, exc: OSError) -> NoReturn:
    """No reply can reach the parent: exit with the code it reports as a lost pipe."""
    with contextlib.suppress(OSError):  # stderr may be closed too
        os.write(2, f"isopool worker: cannot write to result pipe (fd {fd}): {exc}\n".encode())
    _exit(EXIT_PIPE_LOST)


def _flush_stdio() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except Exception:
            pass


def _exit_code(exc: SystemExit) -> int:
    code = exc.code
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    print(code, file=sys.stderr)
    return 1


def _exit(code: int) -> NoReturn:
    _finish_multiprocessing()
    _flush_stdio()
    os._exit(code)

"""The worker process's main loop: read a call frame, run it, write a result frame.

A worker is forked from the fork server with two pipe ends: ``call_fd`` (frames from
the parent) and ``result_fd`` (frames to the parent); nobody else holds them, so EOF
on ``call_fd`` means the parent is gone or wants the worker to exit. Calls run one at
a time, in the order they arrive. User prints go to the inherited stdout/stderr,
never to the result pipe, so they cannot corrupt the channel.

What the worker does with each failure, so that the parent can pin it on one task:

- the call does not unpickle, or the result/exception does not pickle: a
  BAD_PAYLOAD frame saying which step failed;
- the task raises: an ERROR frame with the exception and its traceback text;
- the task (or a payload's ``__reduce__``) raises SystemExit: the worker exits with
  that code, which the parent reports as a crash of that task;
- a segfault, ``os._exit`` or a signal: the worker just dies; the parent sees it.

Imports only ``_wire`` and ``_errors`` (and ``_spec`` lazily for names): worker start-up is a
benchmark figure, and the fork server has imported all of this already.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import resource
import sys
from collections.abc import Callable
from typing import NamedTuple, NoReturn

from . import _wire
from ._errors import Shutdown

__all__ = ["Initializer", "run_chunk", "serve"]

_READ_SIZE = 1 << 20


class Initializer(NamedTuple):
    """A pool's pickled ``(initializer, initargs)`` as the fork server holds it.

    ``fds`` are the server's copies of the descriptors that ``multiprocessing``
    objects in the pickle refer to by index (see ``_share``); each worker inherits them.
    """

    payload: bytes
    fds: tuple[int, ...]


def serve(
    call_fd: int, result_fd: int, max_tasks: int, initializer: Initializer | None
) -> NoReturn:
    """Run calls from ``call_fd`` until EOF or ``max_tasks`` (0: no limit), then exit."""
    try:
        if initializer is not None:
            _run_initializer(result_fd, initializer)
        reader = _wire.FrameReader()
        done = 0
        while not max_tasks or done < max_tasks:
            frames = _read_frames(call_fd, reader)
            if frames is None:
                break
            for _kind, task_id, payload in frames:
                _run_call(result_fd, task_id, payload)
                done += 1
    except SystemExit as exc:
        _exit(_exit_code(exc))
    _exit(0)


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
            data = os.read(fd, _READ_SIZE)
            if not data:
                return None
            frames = reader.feed(data)
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
        info = (_wire.qualified_name(type(exc)), str(exc), _wire.format_exception(exc))
        _send(result_fd, _wire.INIT_FAILED, 0, pickle.dumps(info))
        _exit(3)


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


def _run_call(result_fd: int, task_id: int, payload: _wire.Payload) -> None:
    try:
        fn, args, kwargs, memory_limit = pickle.loads(payload)
        if isinstance(fn, str):
            fn = _resolve(fn)
    except SystemExit:
        raise
    except BaseException as exc:
        _send_bad_payload(result_fd, task_id, "call unpickle", exc)
        return
    if memory_limit is not None:
        _set_memory_limit(memory_limit)
    try:
        value = fn(*args, **kwargs)
    except SystemExit:
        raise
    except BaseException as exc:
        if memory_limit is not None and isinstance(exc, MemoryError):
            exc.add_note(f"isopool: the task hit its memory_limit of {memory_limit} bytes")
        _send_exception(result_fd, task_id, exc)
    else:
        try:
            data = _wire.dumps(value)
        except SystemExit:
            raise
        except BaseException as exc:
            _send_bad_payload(result_fd, task_id, "result pickle", exc)
        else:
            _send(result_fd, _wire.RESULT, task_id, data)
    finally:
        if memory_limit is not None:
            _set_memory_limit(resource.RLIM_INFINITY)
        _flush_stdio()


def run_chunk(fn: Callable[..., object] | str, chunk: list[tuple[object, ...]]) -> list[object]:
    """Apply ``fn`` to each argument tuple of ``chunk`` (``Pool.map``'s chunksize)."""
    if isinstance(fn, str):
        fn = _resolve(fn)
    return [fn(*args) for args in chunk]


_resolved: dict[str, Callable[..., object]] = {}


def _resolve(name: str) -> Callable[..., object]:
    fn = _resolved.get(name)
    if fn is None:
        from ._spec import resolve_function

        fn = _resolved[name] = resolve_function(name)
    return fn


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


def _send_exception(result_fd: int, task_id: int, exc: BaseException) -> None:
    data = _wire.dumps_exception(exc)
    if data is None:
        _send_bad_payload(result_fd, task_id, "exception pickle", exc, original=exc)
    else:
        kind = _wire.SHUTDOWN if isinstance(exc, Shutdown) else _wire.ERROR
        _send(result_fd, kind, task_id, data)


def _send_bad_payload(
    result_fd: int,
    task_id: int,
    what: str,
    exc: BaseException,
    original: BaseException | None = None,
) -> None:
    """Report that ``what`` failed; for "exception pickle" describe ``original``."""
    described = original if original is not None else exc
    info = (
        what,
        _wire.qualified_name(type(described)),
        _safe_str(described),
        _wire.format_exception(described),
    )
    _send(result_fd, _wire.BAD_PAYLOAD, task_id, pickle.dumps(info))


def _safe_str(exc: BaseException) -> str:
    try:
        return str(exc)
    except Exception:
        return f"<{type(exc).__name__} whose str() failed>"


def _send(fd: int, kind: int, task_id: int, payload: bytes) -> None:
    header = _wire.pack_header(kind, task_id, len(payload))
    if len(payload) < 65536:
        _write_all(fd, header + payload)
    else:
        _write_all(fd, header)
        _write_all(fd, payload)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


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

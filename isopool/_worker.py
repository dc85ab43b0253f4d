"""The worker process's main loop: read a call frame, run it, write a result frame.

A worker is forked from the fork server with two pipe ends: ``call_fd`` (frames from
the parent) and ``result_fd`` (frames to the parent); nobody else holds them, so EOF
on ``call_fd`` means the parent is gone or wants the worker to exit. Calls run one at
a time, in the order they arrive. User prints go to the inherited stdout/stderr,
never to the result pipe, so they cannot corrupt the channel.

What the worker does with each failure, so that the parent can pin it on one task:

- the call does not unpickle, or the result/exception does not pickle: a
  BAD_PAYLOAD frame (JSON, never a pickle) saying which step failed and with what;
- the task raises (``SystemExit`` too, as in ``ProcessPoolExecutor``): an ERROR frame
  with the exception and its traceback text; ``isopool.Shutdown`` and
  ``SystemExit(0)``/``SystemExit(None)`` go in a SHUTDOWN frame (a normal exit);
- a ``SystemExit`` while pickling the result or the exception is sent as the task's
  exception, again as the stdlib does; the worker lives on in every case above;
- a segfault, ``os._exit`` or a signal: the worker just dies; the parent sees it.

Imports only ``_wire`` and ``_errors`` (and ``_spec`` lazily for names): worker start-up is a
benchmark figure, and the fork server has imported all of this already.
"""

from __future__ import annotations

import json
import os
import pickle
import resource
import sys
from collections.abc import Callable
from typing import NoReturn

from . import _wire
from ._errors import Shutdown

__all__ = ["run_chunk", "serve"]

_READ_SIZE = 1 << 20


def serve(call_fd: int, result_fd: int, max_tasks: int, initializer: bytes | None) -> NoReturn:
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


def _run_initializer(result_fd: int, payload: bytes) -> None:
    try:
        initializer, initargs = pickle.loads(payload)
        initializer(*initargs)
    except SystemExit:
        raise
    except BaseException as exc:
        info = [_wire.qualified_name(type(exc)), _safe_str(exc), _wire.format_exception(exc)]
        _send(result_fd, _wire.INIT_FAILED, 0, json.dumps(info).encode())
        _exit(3)


def _run_call(result_fd: int, task_id: int, payload: _wire.Payload) -> None:
    # Every handler catches BaseException: a KeyboardInterrupt or SystemExit raised by
    # a payload's __reduce__ fails that task, and the worker lives on (the stdlib's
    # worker would die and break its pool).
    try:
        fn, args, kwargs, memory_limit = pickle.loads(payload)
        if isinstance(fn, str):
            fn = _resolve(fn)
    except BaseException as exc:
        _send_bad_payload(result_fd, task_id, "call unpickle", exc)
        return
    if memory_limit is not None:
        _set_memory_limit(memory_limit)
    try:
        value = fn(*args, **kwargs)
    except BaseException as exc:
        if memory_limit is not None and isinstance(exc, MemoryError):
            exc.add_note(f"isopool: the task hit its memory_limit of {memory_limit} bytes")
        _send_exception(result_fd, task_id, exc)
    else:
        try:
            data = _wire.dumps(value)
        except SystemExit as exc:  # ProcessPoolExecutor sends this one back as it is
            _send_exception(result_fd, task_id, exc)
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


def _set_memory_limit(limit: int) -> None:
    # RLIMIT_DATA (Linux >= 4.7) counts the heap and private anonymous mappings, which
    # is where Python's objects live; RLIMIT_AS would also count reserved-but-unused
    # address space (thread stacks, BLAS arenas) and fail far too early.
    _soft, hard = resource.getrlimit(resource.RLIMIT_DATA)
    resource.setrlimit(resource.RLIMIT_DATA, (limit, hard))


def _send_exception(result_fd: int, task_id: int, exc: BaseException, nested: bool = False) -> None:
    data, failure = _wire.dumps_exception(exc)
    if failure is None:
        _send(result_fd, _exit_kind(exc), task_id, data)
    elif isinstance(failure, SystemExit) and not nested:
        _send_exception(result_fd, task_id, failure, True)  # as the stdlib: SystemExit wins
    else:
        _send_bad_payload(result_fd, task_id, "exception pickle", failure, original=exc)


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
    _send(result_fd, _wire.BAD_PAYLOAD, task_id, json.dumps(info).encode())


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
    _flush_stdio()
    os._exit(code)

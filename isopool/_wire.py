"""Frame and serialize what crosses a worker pipe: bytes in, bytes out.

A frame is a fixed 16-byte header followed by its payload::

    offset  size  field
    0       1     version   (VERSION; anything else is a ProtocolError)
    1       1     kind      (CALL, RESULT, ERROR, BAD_PAYLOAD, INIT_FAILED, SHUTDOWN)
    2       2     flags     (reserved, 0)
    4       4     length    payload bytes, little-endian
    8       8     task id   little-endian

The task id travels in the header, outside the pickle, so a payload that cannot be
unpickled (or a worker that dies while reading one) is still pinned on exactly one
task. Payloads are pickles: the standard pickler first (fast), cloudpickle when the
object needs it (lambdas, closures, anything defined in ``__main__``).

This module knows nothing of sockets, pipes or processes.
"""

from __future__ import annotations

import pickle
import struct
import traceback
from collections.abc import Callable
from typing import Final

__all__ = [
    "BAD_PAYLOAD",
    "CALL",
    "ERROR",
    "HEADER",
    "INIT_FAILED",
    "MAX_PAYLOAD",
    "RESULT",
    "SHUTDOWN",
    "FrameReader",
    "RemoteTraceback",
    "dumps",
    "dumps_call",
    "dumps_exception",
    "loads_exception",
    "pack_header",
]

VERSION: Final = 1
HEADER: Final = struct.Struct("<BBHIQ")
MAX_PAYLOAD: Final = 2**32 - 1  # the length field is 4 bytes

CALL: Final = 1  # parent -> worker: (fn, args, kwargs, memory_limit)
RESULT: Final = 2  # worker -> parent: the return value
ERROR: Final = 3  # worker -> parent: (exception, traceback text)
BAD_PAYLOAD: Final = 4  # worker -> parent: (what, type name, message, traceback text)
INIT_FAILED: Final = 5  # worker -> parent: the initializer raised; (type, message, tb)
SHUTDOWN: Final = 6  # worker -> parent: the task raised isopool.Shutdown (a normal exit)
_KINDS: Final = frozenset({CALL, RESULT, ERROR, BAD_PAYLOAD, INIT_FAILED, SHUTDOWN})

# Marks where a pickle refers to the caller's __main__ module by name: the worker's
# __main__ is not the caller's, so such a pickle must be redone by value (cloudpickle).
_MAIN_REF: Final = b"__main__"


def pack_header(kind: int, task_id: int, length: int) -> bytes:
    """Return the 16-byte header of a frame carrying ``length`` payload bytes."""
    if length > MAX_PAYLOAD:
        raise ValueError(f"payload of {length} bytes exceeds the {MAX_PAYLOAD}-byte frame limit")
    return HEADER.pack(VERSION, kind, 0, length, task_id)


class FrameReader:
    """Split a byte stream into frames; feed it whatever the pipe gave.

    Example:
        >>> reader = FrameReader()
        >>> data = pack_header(RESULT, 7, 2) + b"ok"
        >>> reader.feed(data[:5]), reader.feed(data[5:])
        ([], [(2, 7, b'ok')])
    """

    __slots__ = ("_buf", "_need")

    def __init__(self) -> None:
        self._buf = bytearray()
        self._need = HEADER.size

    @property
    def pending(self) -> int:
        """Bytes received that do not yet make a whole frame."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[tuple[int, int, bytes]]:
        """Add ``data`` and return every frame it completes, as (kind, task id, payload).

        Raises:
            ProtocolError: a header has the wrong version or an unknown kind.
        """
        buf = self._buf
        buf += data
        if len(buf) < self._need:
            return []
        frames: list[tuple[int, int, bytes]] = []
        pos, end = 0, len(buf)
        while end - pos >= HEADER.size:
            version, kind, _flags, length, task_id = HEADER.unpack_from(buf, pos)
            if version != VERSION or kind not in _KINDS:
                from ._errors import ProtocolError

                raise ProtocolError(f"malformed frame header: version {version}, kind {kind}")
            stop = pos + HEADER.size + length
            if stop > end:
                self._need = stop - pos
                break
            frames.append((kind, task_id, bytes(buf[pos + HEADER.size : stop])))
            pos = stop
        else:
            self._need = HEADER.size
        del buf[:pos]
        return frames


def dumps(obj: object) -> bytes:
    """Pickle ``obj`` with the standard pickler, or cloudpickle when it needs one.

    The standard pickler is ~15x faster for small objects; cloudpickle is used when it
    fails or when the pickle names ``__main__`` (which the worker does not share).
    """
    try:
        data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:
        data = b""
    if data and _MAIN_REF not in data:
        return data
    import cloudpickle

    data = cloudpickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    return bytes(data)


def dumps_call(
    fn: Callable[..., object] | str,
    args: tuple[object, ...],
    kwargs: dict[str, object],
    memory_limit: int | None,
) -> bytes:
    """Pickle one call for a worker; raises whatever pickling raised."""
    return dumps((fn, args, kwargs, memory_limit))


class RemoteTraceback(Exception):
    """The worker-side traceback of a task's exception, chained as its ``__cause__``."""

    def __init__(self, tb: str) -> None:
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return f'\n"""\n{self.tb}"""'


def format_exception(exc: BaseException) -> str:
    """Return the traceback text of ``exc`` as the worker saw it."""
    return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))


def dumps_exception(exc: BaseException) -> bytes | None:
    """Pickle a task's exception with its traceback text; None if it cannot be pickled."""
    tb = format_exception(exc)
    try:
        return dumps((exc, tb))
    except Exception:
        return None


def loads_exception(payload: bytes) -> BaseException:
    """Unpickle a task's exception and chain the worker's traceback as ``__cause__``."""
    exc, tb = pickle.loads(payload)
    if not isinstance(exc, BaseException):
        raise TypeError(f"expected an exception, got {type(exc).__name__}")
    exc.__cause__ = RemoteTraceback(tb)
    return exc


def qualified_name(cls: type) -> str:
    """Return ``module.QualName`` of a class, for messages about foreign types."""
    module = getattr(cls, "__module__", None)
    name = getattr(cls, "__qualname__", cls.__name__)
    return name if module in (None, "builtins") else f"{module}.{name}"

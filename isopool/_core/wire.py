"""Frame and serialize what crosses a worker pipe: bytes in, bytes out.

A frame is a fixed 16-byte header followed by its payload::

    offset  size  field
    0       1     version   (VERSION; anything else is a ProtocolError)
    1       1     kind      (CALL, CALL_INBAND, RESULT, ERROR, BAD_PAYLOAD, INIT_FAILED,
                             SHUTDOWN, REVOKED)
    2       2     flags     (reserved, 0)
    4       4     length    payload bytes, little-endian
    8       8     task id   little-endian

A reply (RESULT, ERROR, SHUTDOWN, BAD_PAYLOAD) ends with a fixed 48-byte usage trailer
(``USAGE``, version 2 of the format; version 1 had none): what the call cost in the
worker, as six little-endian numbers::

    offset from the trailer's start
    0    8  wall seconds          (double; time.perf_counter around the call)
    8    8  CPU user seconds      (double; getrusage SELF + CHILDREN deltas)
    16   8  CPU system seconds    (double; the same)
    24   8  peak RSS, bytes       (uint64; ru_maxrss high-water mark, not a delta)
    32   8  voluntary switches    (uint64; ru_nvcsw delta)
    40   8  involuntary switches  (uint64; ru_nivcsw delta)

It sits after the pickle or JSON, inside the frame's length, so the framing and every
other kind are unchanged; ``split_usage`` takes it off (in place for a large frame).
A wall time below zero says the call never ran (its BAD_PAYLOAD "call unpickle"):
no usage. The numbers are the worker's measure of the call alone; see ``_usage``.

A CALL or RESULT payload is a plain pickle or, when it carries buffers of at least
``_oob.THRESHOLD`` bytes (version 3), an envelope: the pickle with those buffers
moved into a sealed memfd that the other side opens (``_oob``). ``loads`` reads both.
A CALL_INBAND call's result always comes back as a plain pickle (the shared queue's
results go to Redis as they are).

The task id travels in the header, outside the pickle, so a payload that cannot be
unpickled (or a worker that dies while reading one) is still pinned on exactly one
task. Payloads are pickles: the standard pickler first (fast), cloudpickle when the
object needs it (lambdas, closures, anything defined in ``__main__``).

This module knows nothing of sockets, pipes or processes.
"""

from __future__ import annotations

import concurrent.futures.process as _futures_process
import contextlib
import io
import pickle
import struct
import sys
import traceback
from collections.abc import Callable
from typing import Any, Final

from . import oob as _oob

__all__ = [
    "BAD_PAYLOAD",
    "CALL",
    "CALL_INBAND",
    "COOKIE",
    "ERROR",
    "HEADER",
    "INIT_FAILED",
    "MAX_PAYLOAD",
    "NOT_RUN",
    "READ_SIZE",
    "REPLIES",
    "RESULT",
    "REVOKE",
    "REVOKED",
    "REVOKED_LATE",
    "REVOKED_OK",
    "SHUTDOWN",
    "USAGE",
    "Frame",
    "FrameReader",
    "Payload",
    "RemoteTraceback",
    "attach_traceback",
    "dumps",
    "dumps_call",
    "dumps_exception",
    "find_type",
    "loads",
    "loads_exception",
    "pack_header",
    "remote_traceback",
    "split_usage",
]

# 2: replies end with the USAGE trailer; 3: shared-memory envelopes, CALL_INBAND, and
# RELEASE on the control pipe (see _oob)
VERSION: Final = 3
HEADER: Final = struct.Struct("<BBHIQ")
MAX_PAYLOAD: Final = 2**32 - 1  # the length field is 4 bytes

CALL: Final = 1  # parent -> worker: (fn, args, kwargs, memory_limit)
CALL_INBAND: Final = 8  # the same, whose result must be a plain pickle (no envelope)
RESULT: Final = 2  # worker -> parent: the return value
ERROR: Final = 3  # worker -> parent: (exception, traceback text)
BAD_PAYLOAD: Final = 4  # worker -> parent: JSON {what, error type, ...}; never a pickle
INIT_FAILED: Final = 5  # worker -> parent: the initializer raised; JSON [type, message, tb]
SHUTDOWN: Final = 6  # worker -> parent: the task raised isopool.Shutdown (a normal exit)
# worker -> parent: the answer to a REVOKE; the header's task id field holds the call's
# sequence number on that worker, the payload one byte: REVOKED_OK (it will never
# run) or REVOKED_LATE (it had started: its reply comes as usual).
REVOKED: Final = 7
REVOKED_OK: Final = b"\x01"
REVOKED_LATE: Final = b"\x00"
_KINDS: Final = frozenset(
    {CALL, CALL_INBAND, RESULT, ERROR, BAD_PAYLOAD, INIT_FAILED, SHUTDOWN, REVOKED}
)
REPLIES: Final = frozenset({RESULT, ERROR, SHUTDOWN, BAD_PAYLOAD})  # end with USAGE
# (wall, user, system seconds; peak RSS bytes; voluntary, involuntary switches)
USAGE: Final = struct.Struct("<dddQQQ")

# parent -> worker, on the worker's control pipe (not the call pipe, which the worker
# does not read while a call runs): "do not start call number N" (1-based, in the
# order the calls were written to that worker); or, with _oob.RELEASE_BIT set, "I
# have opened the memfd of your result with this token: close yours".
REVOKE: Final = struct.Struct("<Q")
# parent -> worker, first on the control pipe: the 16-bit cookie of pack_header and the
# parent's pid (whose slabs, see _oob, the worker may be lent).
COOKIE: Final = struct.Struct("<HI")

# What one read of a pipe takes at most, into a buffer its reader keeps (the worker one
# for its life, the parent one per reading thread): ``os.read(fd, n)`` would allocate n
# bytes each time, and at 1 MiB glibc maps, shrinks and unmaps them (three syscalls and
# two page faults a read, and a TLB shootdown in a threaded process). Frames of
# ``_LARGE`` bytes or more are read straight into their own buffer (``FrameReader.room``).
READ_SIZE: Final = 64 * 1024

# Marks where a pickle refers to the caller's __main__ module by name: the worker's
# __main__ is not the caller's, so such a pickle must be redone by value (cloudpickle).
# Searched for with ``data.find``, not ``in``: ``bytes in bytes`` first tries the left
# side as an integer, which raises (and formats) a TypeError inside every search.
_MAIN_REF: Final = b"__main__"


def pack_header(kind: int, task_id: int, length: int, cookie: int = 0) -> bytes:
    """Return the 16-byte header of a frame carrying ``length`` payload bytes.

    ``cookie`` fills the flags field: a worker stamps every frame it writes with the
    16-bit value its parent gave it, so bytes that a task writes into the result pipe
    by mistake are told from the worker's own frames (a malformed frame, never a
    4 GiB allocation).
    """
    if length > MAX_PAYLOAD:
        raise ValueError(f"payload of {length} bytes exceeds the {MAX_PAYLOAD}-byte frame limit")
    return HEADER.pack(VERSION, kind, cookie, length, task_id)


Payload = bytes | bytearray
"""A frame's payload: bytes, or the bytearray a large frame was read into (no copy)."""
Frame = tuple[int, int, Payload]
"""(kind, task id, payload)."""

# Frames at least this large are read straight into a buffer of their own size: a
# growing buffer would copy a 10 MB result several times over.
_LARGE: Final = 256 * 1024
# But never allocate more ahead of the bytes that actually arrived than this: a header
# can claim 4 GiB and be followed by nothing. Beyond it the buffer doubles as data comes.
_AHEAD: Final = 64 * 1024 * 1024


class FrameReader:
    """Split a byte stream into frames; feed it whatever the pipe gave.

    A large frame is assembled in a buffer of its own; ``room()`` exposes the part
    still to fill, so a reader can ``readv`` into it directly. The buffer grows with
    the data that arrives (at most ``_AHEAD`` bytes ahead of it), never with what a
    header merely claims.

    Args:
        cookie: When given, every header's flags field must equal it (the frames of
            a worker); a frame without it is a ProtocolError.

    Example:
        >>> reader = FrameReader()
        >>> data = pack_header(RESULT, 7, 2) + b"ok"
        >>> reader.feed(data[:5]), reader.feed(data[5:])
        ([], [(2, 7, b'ok')])
    """

    __slots__ = ("_big", "_big_head", "_big_len", "_buf", "_cookie", "_fill", "_need")

    def __init__(self, cookie: int | None = None) -> None:
        self._buf = bytearray()
        self._need = HEADER.size
        self._cookie = cookie
        self._big: bytearray | None = None  # the large frame being assembled
        self._big_head = (0, 0)  # its (kind, task id)
        self._big_len = 0  # the length its header announced
        self._fill = 0  # bytes of it received

    @property
    def pending(self) -> int:
        """Bytes received that do not yet make a whole frame."""
        return len(self._buf) + self._fill

    def room(self) -> memoryview | None:
        """The unfilled part of a large frame in progress, to read into; else None."""
        big = self._big
        if big is None:
            return None
        if self._fill == len(big):  # full so far: grow with the data, not the claim
            grow = min(self._big_len - len(big), max(len(big), _LARGE))
            big.extend(bytes(grow))
        return memoryview(big)[self._fill :]

    def filled(self, count: int) -> list[Frame]:
        """``count`` bytes were read into ``room()``; return the frame if complete."""
        big = self._big
        if big is None:
            raise ValueError("filled() without a large frame in progress")
        self._fill += count
        if self._fill < self._big_len:
            return []
        kind, task_id = self._big_head
        self._big, self._fill = None, 0
        return [(kind, task_id, big)]

    def feed(self, data: bytes | bytearray | memoryview) -> list[Frame]:
        """Add ``data`` and return every frame it completes, as (kind, task id, payload).

        ``data`` is copied: the caller may reuse its buffer once this returns.

        Raises:
            ProtocolError: a header has the wrong version, kind or cookie.
        """
        frames: list[Frame] = []
        try:
            self._feed(memoryview(data), frames)
        except Exception as exc:
            exc.frames = frames  # type: ignore[attr-defined]  # the whole frames before it
            raise
        return frames

    def _feed(self, view: memoryview, frames: list[Frame]) -> None:
        while self._big is not None and view:
            room = self.room()
            if room is None:  # pragma: no cover - a large frame is in progress
                break
            count = min(len(room), len(view))
            room[:count] = view[:count]
            frames.extend(self.filled(count))
            view = view[count:]
        if not view:
            return
        buf = self._buf
        buf += view
        if len(buf) < self._need:
            return
        pos, end = 0, len(buf)
        while end - pos >= HEADER.size:
            version, kind, flags, length, task_id = HEADER.unpack_from(buf, pos)
            self._check(version, kind, flags)
            start = pos + HEADER.size
            stop = start + length
            if stop <= end:
                frames.append((kind, task_id, bytes(memoryview(buf)[start:stop])))
                pos = stop
                continue
            if length >= _LARGE:  # assemble it in its own buffer from here on
                self._fill = end - start
                self._big = bytearray(min(length, self._fill + _AHEAD))
                self._big_head = (kind, task_id)
                self._big_len = length
                self._big[: self._fill] = memoryview(buf)[start:end]
                pos = end
                self._need = HEADER.size
            else:
                self._need = stop - pos
            break
        else:
            self._need = HEADER.size
        del buf[:pos]

    def _check(self, version: int, kind: int, flags: int) -> None:
        if (
            version != VERSION
            or kind not in _KINDS
            or (self._cookie is not None and flags != self._cookie)
        ):
            from .._errors import ProtocolError

            raise ProtocolError(
                f"a malformed frame header (version {version}, kind {kind}, flags {flags:#06x})"
            )


NOT_RUN: Final = USAGE.pack(-1.0, 0.0, 0.0, 0, 0, 0)
"""The trailer of a reply whose call never ran (it did not unpickle)."""


def split_usage(payload: Payload) -> tuple[Payload, bytes | None]:
    """Return a reply's payload without its USAGE trailer, and the trailer's bytes.

    The bytes, not the numbers: the monitor unpacks nothing per reply (``Task.usage``
    and ``Pool.stats()`` do, later). A bytearray (a large frame, read in place) is
    shortened in place: no copy of a 10 MB result. A payload too short to hold a
    trailer gives ``(payload, None)``.
    """
    size = USAGE.size
    if len(payload) < size:
        return payload, None
    if isinstance(payload, bytearray):
        trailer = bytes(payload[-size:])
        del payload[-size:]  # in place
        return payload, trailer
    return payload[:-size], payload[-size:]


Sharer = Callable[[bytes, list[pickle.PickleBuffer]], bytes | None]
"""Puts a pickle's out-of-band buffers in shared memory; returns the envelope or None."""


def dumps(obj: object, share: Sharer | None = None) -> bytes:
    """Pickle ``obj`` with the standard pickler, or cloudpickle when it needs one.

    The standard pickler is ~15x faster for small objects; cloudpickle is used when it
    fails or when the pickle names ``__main__`` (which the worker does not share).
    With ``share``, buffers of ``_oob.THRESHOLD`` bytes or more go out of band and
    ``share`` makes the envelope (which may own shared memory); when it returns None
    (no room), ``obj`` is pickled in band after all.
    """
    collector = _oob.Collector() if share else None
    try:
        data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL, buffer_callback=collector)
    except Exception:
        data = b""
    if not data or data.find(_MAIN_REF) >= 0:
        import cloudpickle

        collector = _oob.Collector() if share else None
        data = bytes(
            cloudpickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL, buffer_callback=collector)
        )
    if share is not None and collector:
        shared = share(data, collector)
        return dumps(obj) if shared is None else shared
    return data


def loads(payload: Payload | _oob.Received) -> Any:  # noqa: ANN401 - whatever was pickled
    """Unpickle what ``dumps`` made: a plain pickle, or an envelope claimed already.

    Raises:
        SharedBufferError: an envelope that was not claimed (see ``_oob``), or one
            loaded before.
    """
    if isinstance(payload, _oob.Received):
        return payload.load()
    if _oob.is_shared(payload):
        raise _oob.SharedBufferError("a shared-buffer envelope must be claimed first")
    return pickle.loads(payload)


def dumps_call(
    fn: Callable[..., object] | str,
    args: tuple[object, ...],
    kwargs: dict[str, object],
    memory_limit: int | None,
    cpus: frozenset[int] | None = None,
    usage: bool = True,
    share: bool = False,
) -> bytes:
    """Pickle one call for a worker; raises whatever pickling raised.

    The tuple is ``(fn, args, kwargs, memory_limit)``, plus ``cpus`` (the CPUs to run
    the call on) only when given, plus ``False`` after it when the worker must not
    measure the call's usage (its reply then carries ``NOT_RUN``): a call with
    neither is the same bytes as before.
    ``share``: large buffers go out of band (see ``dumps``); never for a call that
    is stored (Redis), since the memfd lives only as long as this process.
    """
    sharer = _oob.share_in_slab if share else None
    if share:
        args, kwargs = _oob.wrap_args(args, kwargs)
    if not usage:
        return dumps((fn, args, kwargs, memory_limit, cpus, False), sharer)
    if cpus is None:
        return dumps((fn, args, kwargs, memory_limit), sharer)
    return dumps((fn, args, kwargs, memory_limit, cpus), sharer)


# The worker-side traceback of a task's exception, chained as its ``__cause__``: the
# stdlib's own class (``concurrent.futures.process._RemoteTraceback``, whose ``.tb`` is
# the quoted text and whose str() is that text), so code and tests written for
# ProcessPoolExecutor that check ``type(exc.__cause__)`` keep working.
RemoteTraceback = _futures_process._RemoteTraceback


def remote_traceback(tb: str) -> BaseException:
    """The ``__cause__`` for a task exception whose worker traceback is ``tb``."""
    cause: BaseException = RemoteTraceback(f'\n"""\n{tb}"""')  # type: ignore[arg-type]  # typeshed says TracebackType; the stdlib passes this text
    return cause


def format_exception(exc: BaseException) -> str:
    """Return the traceback text of ``exc`` as the worker saw it."""
    return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))


class _ExceptionPickler(pickle.Pickler):
    """Pickles exceptions so that they unpickle even when ``__setstate__`` would fail.

    ``BaseException.__reduce__`` rebuilds an exception with ``cls(*args)`` and then
    ``setattr`` for each attribute, which a frozen dataclass exception refuses and a
    constructor with keyword-only arguments cannot take: the stdlib's pool breaks on
    such an exception. ``_rebuild_exception`` falls back to what always works.
    """

    def reducer_override(self, obj: object) -> Any:  # noqa: ANN401 - pickle's own signature
        if isinstance(obj, BaseException) and type(obj).__reduce__ is BaseException.__reduce__:
            return (_rebuild_exception, (type(obj), obj.args, obj.__dict__ or None))
        return NotImplemented


def _rebuild_exception(
    cls: type[BaseException], args: tuple[object, ...], state: dict[str, object] | None
) -> BaseException:
    try:
        exc = cls(*args)
    except Exception:  # a constructor that wants other arguments than its args
        exc = cls.__new__(cls, *args)
        exc.args = args
    for name, value in (state or {}).items():
        try:
            setattr(exc, name, value)
        except Exception:  # a frozen dataclass: set it the way its __init__ does
            object.__setattr__(exc, name, value)
    return exc


def dumps_exception(exc: BaseException) -> tuple[bytes, BaseException | None]:
    """Pickle a task's exception with its traceback text.

    Returns:
        ``(payload, None)``, or ``(b"", error)`` with what pickling raised (any
        BaseException: a ``__reduce__`` may raise SystemExit or KeyboardInterrupt).
    """
    try:
        tb = format_exception(exc)
    except BaseException:
        tb = f"{qualified_name(type(exc))} (its traceback could not be formatted)"
    try:
        buffer = io.BytesIO()
        _ExceptionPickler(buffer, protocol=pickle.HIGHEST_PROTOCOL).dump((exc, tb))
        data = buffer.getvalue()
        if data.find(_MAIN_REF) < 0:
            return data, None
    except BaseException:
        pass
    try:
        import cloudpickle

        return bytes(cloudpickle.dumps((exc, tb), protocol=pickle.HIGHEST_PROTOCOL)), None
    except BaseException as failure:
        return b"", failure


def loads_exception(payload: Payload) -> BaseException:
    """Unpickle a task's exception and attach the worker's traceback.

    The traceback is chained as ``__cause__``, the stdlib's remote-traceback trick; an
    exception that refuses attributes (a frozen dataclass) gets it through
    ``object.__setattr__``, and failing that as a note: it always comes back as itself.
    """
    exc, tb = pickle.loads(payload)
    if not isinstance(exc, BaseException):
        raise TypeError(f"expected an exception, got {type(exc).__name__}")
    attach_traceback(exc, tb)
    return exc


def attach_traceback(exc: BaseException, tb: str) -> None:
    """Chain ``RemoteTraceback(tb)`` to ``exc`` as its cause, or else as a note."""
    remote = remote_traceback(tb)
    for setter in (setattr, object.__setattr__):
        try:
            setter(exc, "__cause__", remote)
            return
        except Exception:
            pass
    note = f"isopool: the task's traceback in the worker:\n{tb}"
    try:
        exc.add_note(note)
    except Exception:
        with contextlib.suppress(Exception):
            object.__setattr__(exc, "__notes__", [*getattr(exc, "__notes__", ()), note])


def find_type(module: str, qualname: str) -> type[BaseException] | None:
    """The exception class ``module.qualname`` if that module is already imported.

    Never imports: the names come from a worker, which runs untrusted code.
    """
    obj: object = sys.modules.get(module)
    for part in qualname.split("."):
        obj = getattr(obj, part, None)
    if isinstance(obj, type) and issubclass(obj, BaseException):
        return obj
    return None


def qualified_name(cls: type) -> str:
    """Return ``module.QualName`` of a class, for messages about foreign types."""
    module = getattr(cls, "__module__", None)
    name = getattr(cls, "__qualname__", cls.__name__)
    return name if module in (None, "builtins") else f"{module}.{name}"

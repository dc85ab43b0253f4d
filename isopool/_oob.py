"""Carry a pickle's large buffers in sealed memfds instead of through a worker's pipe.

Why: a 10 MB argument written through a 64 KiB pipe is copied into the pickle, then
through the kernel 160 times with a context switch each, then out into a buffer:
most of a large round trip. Here it is copied once, into a memfd, and the other side
reads it from there (``pread``: one copy into a ``bytes``) or maps it (a writable
buffer such as a numpy array's: no copy at all on Python 3.13+, see ``_map``).

The sender pickles with protocol 5 and a ``buffer_callback`` (``Collector``):
``PickleBuffer``s of ``THRESHOLD`` bytes or more (numpy arrays, bytearrays, and the
top-level ``bytes`` that ``wrap`` marks, since the C pickler calls no hook for exact
``bytes``) go out of band; everything smaller stays in the pickle, so a small task
costs nothing more. ``share`` writes the out-of-band buffers into one memfd per
message (page-aligned, so they can be mapped), seals it against any change, and
returns the envelope that travels in the frame instead of the plain pickle::

    offset  size  field
    0       4     MAGIC (a plain pickle starts with 0x80, never with it)
    4       4     pid of the process that holds the memfd
    8       4     its descriptor number there
    12      4     buffer count N
    16      8     token: the memfd is named "isopool-<token in hex>"
    24      17*N  per buffer: offset, length (u64 each), read-only (u8)
    ...           the pickle

The receiver opens ``/proc/<pid>/fd/<n>`` (Linux; the same user may, as for any
``ptrace`` read access) and checks, before it reads a byte, that what it opened is
that sender's memfd of that name, sealed against shrinking, growing and writing,
and large enough for every buffer: a bogus descriptor (from a hostile task) is a
``SharedBufferError`` for that one message, never a read out of bounds or a SIGBUS.

Lifetimes, owned by the parent:

- a call's memfd belongs to the parent's payload (``SharedPayload``); the Task drops
  its payload when it settles, which closes the memfd, and a restart reuses it;
- a result's memfd is the worker's: it keeps it open until the parent, on reading
  the RESULT frame, has opened its own descriptor (``claim``) and said so on the
  control pipe (``RELEASE_BIT``); the parent's descriptor belongs to the outcome,
  closed once the value is unpickled, or when the Task is dropped uncollected.

Memfds are anonymous files: they vanish with the last descriptor or mapping, so
nothing is ever left in /dev/shm, whichever process dies, whenever.

Imports only the stdlib and ``_errors``: the worker imports it.
"""

from __future__ import annotations

import fcntl
import itertools
import mmap
import os
import pickle
import struct
import sys
import weakref
from typing import Final

from ._errors import ProtocolError

__all__ = [
    "MAGIC",
    "RELEASE_BIT",
    "THRESHOLD",
    "Collector",
    "Received",
    "SharedBufferError",
    "SharedPayload",
    "claim",
    "is_shared",
    "share",
    "token_of",
    "wrap",
]

# Buffers at least this large go out of band. Below it the pipe is as fast (a memfd
# costs ~10 syscalls, ~30 us, per message); measured in benchmarks/README.md.
THRESHOLD: Final = 256 * 1024
MAGIC: Final = b"\x00iSB"
# On the control pipe, a REVOKE number with this bit set is a RELEASE: "I have opened
# your result memfd with this token; close yours".
RELEASE_BIT: Final = 1 << 63
_HEAD: Final = struct.Struct("<4sIiIQ")
_ENTRY: Final = struct.Struct("<QQB")
_MAX_BUFFERS: Final = 1 << 16  # a sanity bound on a descriptor's count
_PAGE: Final = mmap.PAGESIZE
_SEALS: Final = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE
_tokens = itertools.count(1)  # unique within this process, as the memfd names must be


class SharedBufferError(ProtocolError):
    """A shared-buffer descriptor did not describe a usable memfd of its sender."""


class Collector:
    """A pickle ``buffer_callback``: keeps large contiguous buffers out of band."""

    __slots__ = ("buffers",)

    def __init__(self) -> None:
        self.buffers: list[pickle.PickleBuffer] = []

    def __call__(self, buffer: pickle.PickleBuffer) -> bool:
        """Return True (pickle it in band) unless ``buffer`` is large and contiguous."""
        with memoryview(buffer) as view:
            if view.nbytes < THRESHOLD or not view.contiguous:
                return True
        self.buffers.append(buffer)
        return False


class _SharedBytes:
    """Pickles a ``bytes`` object as a PickleBuffer, which can travel out of band."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data

    def __reduce_ex__(self, protocol: object) -> tuple[object, ...]:
        # bytes(b) of an exact bytes returns b itself: the receiver's pread copy is the
        # only one. In band (a pickle without buffer_callback) it is plain BYTES.
        return (bytes, (pickle.PickleBuffer(self.data),))


def _is_big_bytes(value: object) -> bool:
    return type(value) is bytes and len(value) >= THRESHOLD


def wrap(value: object) -> object:
    """``value``, with a large ``bytes`` marked to go out of band (else unchanged)."""
    return _SharedBytes(value) if _is_big_bytes(value) else value  # type: ignore[arg-type]  # checked: exact bytes


def wrap_args(
    args: tuple[object, ...], kwargs: dict[str, object]
) -> tuple[tuple[object, ...], dict[str, object]]:
    """A call's arguments with each large top-level ``bytes`` marked (usually as they are)."""
    if any(map(_is_big_bytes, args)):
        args = tuple(map(wrap, args))
    if kwargs and any(map(_is_big_bytes, kwargs.values())):
        kwargs = {key: wrap(value) for key, value in kwargs.items()}
    return args, kwargs


class _Memfd:
    """One open memfd descriptor, closed by ``close()`` or when collected.

    Only by the process that opened it: a process forked meanwhile (a fork server
    forked from the caller) may have reused the number for one of its own pipes.
    """

    __slots__ = ("fd", "pid")

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.pid = os.getpid()

    def close(self) -> None:
        fd, self.fd = self.fd, -1
        if fd >= 0 and self.pid == os.getpid():
            os.close(fd)

    def __del__(self) -> None:
        self.close()


class SharedPayload(bytes):
    """An envelope whose memfd this process holds open for as long as it lives.

    A ``bytes`` (it is written to pipes as one); ``memfd`` closes with it.
    """

    memfd: _Memfd


def share(data: bytes, buffers: list[pickle.PickleBuffer]) -> SharedPayload:
    """Write ``buffers`` into a new sealed memfd; return the envelope for ``data``.

    Raises:
        OSError: no memfd could be made or written (out of memory or descriptors).
    """
    token = next(_tokens)
    fd = os.memfd_create(f"isopool-{token:x}", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    memfd = _Memfd(fd)  # closes the memfd if anything below raises
    entries = []
    offset = 0
    for buffer in buffers:
        view = buffer.raw()
        entries.append(_ENTRY.pack(offset, view.nbytes, view.readonly))
        offset += -(-view.nbytes // _PAGE) * _PAGE  # the next page: each can be mapped
    os.ftruncate(fd, offset)
    for buffer, entry in zip(buffers, entries, strict=True):
        position, _length, _readonly = _ENTRY.unpack(entry)
        _write_at(fd, buffer.raw(), position)
    fcntl.fcntl(fd, fcntl.F_ADD_SEALS, _SEALS | fcntl.F_SEAL_SEAL)
    head = _HEAD.pack(MAGIC, os.getpid(), fd, len(buffers), token)
    payload = SharedPayload(b"".join((head, *entries, data)))
    payload.memfd = memfd
    return payload


def _write_at(fd: int, view: memoryview, position: int) -> None:
    while view:
        written = os.pwrite(fd, view, position)  # at most ~2 GiB per call on Linux
        view, position = view[written:], position + written


def is_shared(payload: bytes | bytearray) -> bool:
    """Whether ``payload`` is an envelope (else a plain pickle)."""
    return payload[:4] == MAGIC


def token_of(payload: bytes | bytearray) -> int:
    """The token of an envelope (0 if it is too short to have one)."""
    if len(payload) < _HEAD.size:
        return 0
    return int(_HEAD.unpack_from(payload)[4])


class Received:
    """An envelope whose memfd this process has opened: ready to unpickle once."""

    __slots__ = ("_data", "_entries", "_memfd")

    def __init__(self, memfd: _Memfd, entries: list[tuple[int, int, int]], data: bytes) -> None:
        self._memfd = memfd
        self._entries = entries
        self._data = data

    def load(self) -> object:
        """Unpickle the value, its buffers read or mapped from the memfd; closes it.

        Raises:
            SharedBufferError: the memfd was closed already (loaded once before).
        """
        memfd = self._memfd
        if memfd.fd < 0:
            raise SharedBufferError("this shared result was already unpickled")
        try:
            buffers = [_buffer(memfd.fd, *entry) for entry in self._entries]
        finally:
            memfd.close()  # the mappings keep what they map alive
        return pickle.loads(self._data, buffers=buffers)

    def close(self) -> None:
        """Close the memfd without reading it."""
        self._memfd.close()


def claim(payload: bytes | bytearray, pid: int | None = None) -> Received:
    """Open the memfd an envelope describes, after checking every field of it.

    ``pid``: the process that must hold it (a worker's, known to the parent); None
    takes the envelope's own (the parent's, as a worker reads a call).

    Raises:
        SharedBufferError: the descriptor is malformed, names no such memfd, or one
            that is not sealed or is too small for its buffers.
    """
    view = memoryview(payload)
    if len(view) < _HEAD.size:
        raise SharedBufferError(f"a shared-buffer descriptor of {len(view)} bytes is truncated")
    magic, sender, fd, count, token = _HEAD.unpack_from(view)
    end = _HEAD.size + count * _ENTRY.size
    if magic != MAGIC or fd < 0 or count > _MAX_BUFFERS or end > len(view):
        raise SharedBufferError(
            f"a malformed shared-buffer descriptor (fd {fd}, {count} buffers, "
            f"{len(view)} bytes)"
        )
    entries = [_ENTRY.unpack_from(view, _HEAD.size + i * _ENTRY.size) for i in range(count)]
    owner = sender if pid is None else pid
    memfd = _open(owner, fd, token)
    try:
        size = os.fstat(memfd.fd).st_size
        for offset, length, _readonly in entries:
            if offset % _PAGE or length == 0 or offset + length > size:
                raise SharedBufferError(
                    f"a shared buffer of {length} bytes at offset {offset} does not fit "
                    f"the {size}-byte memfd {fd} of process {owner}"
                )
    except BaseException:
        memfd.close()
        raise
    return Received(memfd, entries, bytes(view[end:]))


def _open(pid: int, fd: int, token: int) -> _Memfd:
    """Open our own descriptor to memfd ``fd`` of ``pid``, named for ``token``, sealed."""
    try:
        memfd = _Memfd(os.open(f"/proc/{pid}/fd/{fd}", os.O_RDONLY | os.O_CLOEXEC))
    except OSError as exc:
        raise SharedBufferError(
            f"cannot open shared memfd {fd} of process {pid}: {exc.strerror}"
        ) from exc
    try:
        name = os.readlink(f"/proc/self/fd/{memfd.fd}")  # what we opened, not what was named
        expected = f"/memfd:isopool-{token:x}"
        if name not in (expected, f"{expected} (deleted)"):
            raise SharedBufferError(
                f"descriptor {fd} of process {pid} is {name!r}, not its memfd {expected[7:]!r}"
            )
        seals = fcntl.fcntl(memfd.fd, fcntl.F_GET_SEALS)
        if seals & _SEALS != _SEALS:
            raise SharedBufferError(f"memfd {fd} of process {pid} is not sealed against change")
    except BaseException:
        memfd.close()
        raise
    return memfd


# Python 3.13's mmap can map without keeping a duplicate descriptor open; before it,
# every mapped buffer holds one until it is collected, so at most _MAPPED_MAX mapped
# buffers live at once (a process holding a thousand results would run out of
# descriptors); past that, writable buffers are copied into anonymous memory.
_TRACKFD: Final = sys.version_info >= (3, 13)
_MAPPED_MAX: Final = 64
_mapped = weakref.WeakSet[mmap.mmap]()


def _buffer(fd: int, offset: int, length: int, readonly: int) -> object:
    """One buffer of the memfd: a ``bytes`` if it was read-only, else writable memory.

    Writable memory is a private (copy-on-write) mapping of the memfd: no copy, and
    the writes of whoever holds it stay its own; it lives as long as its holder.
    """
    if readonly:
        data = os.pread(fd, length, offset)
        while len(data) < length:  # only past ~2 GiB: Linux caps one read
            data += os.pread(fd, length - len(data), offset + len(data))
        return data
    flags = mmap.MAP_PRIVATE | mmap.MAP_POPULATE
    prot = mmap.PROT_READ | mmap.PROT_WRITE
    if _TRACKFD:
        return mmap.mmap(fd, length, flags, prot, offset=offset, trackfd=False)  # type: ignore[call-arg]  # new in 3.13
    if len(_mapped) < _MAPPED_MAX:
        mapping = mmap.mmap(fd, length, flags, prot, offset=offset)
        _mapped.add(mapping)
        return mapping
    memory = mmap.mmap(-1, length, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    done = 0
    with memoryview(memory) as view:
        while done < length:
            done += os.preadv(fd, [view[done:]], offset + done)
    return memory

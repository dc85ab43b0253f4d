"""Carry a pickle's large buffers in shared memory instead of through a worker's pipe.

Why: a 10 MB argument written through a pipe is copied into the pickle, through the
kernel 64 KiB at a time with a wake-up each, and out again. Here it is copied once
into memory both processes map, and once out (into a ``bytes``); a numpy array that
comes back to the parent is not copied out at all (``_lend_out``).

The sender pickles with protocol 5 and a ``buffer_callback`` (``Collector``):
``PickleBuffer``s of ``THRESHOLD`` bytes or more (numpy arrays, bytearrays, and the
top-level ``bytes`` that ``wrap`` marks, since the C pickler calls no hook for exact
``bytes``) go out of band; everything smaller stays in the pickle, so a small task
costs nothing more. The buffers go, page-aligned, into one of two kinds of memfd,
and the envelope that travels in the frame instead of the plain pickle says where::

    offset  size  field
    0       4     MAGIC (a plain pickle starts with 0x80, never with it)
    4       4     pid of the process that owns the memfd
    8       4     its descriptor number there
    12      4     buffer count N
    16      8     token: the memfd is named "isopool-<token in hex>"
    24      17*N  per buffer: offset, length (u64 each), read-only (u8)
    ...           the pickle

- A **slab** (``Slab``): a memfd of the parent's, sealed against shrinking, kept
  mapped and reused (``_pool``: a few idle, at most ``_LIVE_MAX`` alive; a fresh memfd
  per message would cost a page allocation per page, as much as the copy). A call's
  buffers go into one when the caller pickles it; the parent lends a worker one for
  its next large result (SLAB on the control pipe), and a worker maps each slab once.
- A worker with no slab lent writes its result into a fresh memfd of its own, sealed
  against any change (``share``), and keeps it open until the parent has opened its
  own descriptor and said so (``RELEASE_BIT``).

The receiver opens ``/proc/<pid>/fd/<n>`` (Linux; the same user may, as for any
``ptrace`` read access) and checks, before it reads a byte, that what it opened is
that process's memfd of that name, sealed, and large enough for every buffer: a
bogus descriptor (from a hostile task) is a ``SharedBufferError`` for that one
message, never a read out of bounds or a SIGBUS.

Lifetimes, owned by the parent: a call's slab belongs to the Task's payload (it
returns to the pool when the task settles; a restart reuses it); a result's memory
belongs to its outcome (freed once unpickled, or when the Task is dropped
uncollected), and a numpy array lent out of a slab holds that slab until it dies.
Memfds are anonymous files: they vanish with the last descriptor or mapping, so
nothing is ever left in /dev/shm, whichever process dies, whenever.

Imports only the stdlib and ``_errors``: the worker imports it.
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import mmap
import os
import pickle
import struct
import sys
import threading
import weakref
from typing import Final

from .._errors import ProtocolError

__all__ = [
    "MAGIC",
    "RELEASE_BIT",
    "SLAB_BIT",
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

# Buffers at least this large go out of band. Measured (echo round trip, one worker,
# a loaded 2-core VM, pipe vs shared): 16 KiB 270-300 vs 455-640 us, 64 KiB 480-940
# vs 400-510 us, 128 KiB 630-675 vs 460-500 us, 1 MiB 4-17 ms vs 1.1-1.3 ms. The
# crossover is near 64 KiB; 128 KiB is past it with a margin.
THRESHOLD: Final = 128 * 1024
MAGIC: Final = b"\x00iSB"
# On the control pipe, a REVOKE number with this bit set is a RELEASE: "I have opened
# your result memfd with this token; close yours".
RELEASE_BIT: Final = 1 << 63
# A number with this bit set is a SLAB: "write your next large result into my slab
# whose descriptor here is the low bits"; the slab's token follows as a number.
SLAB_BIT: Final = 1 << 62
_HEAD: Final = struct.Struct("<4sIiIQ")
_ENTRY: Final = struct.Struct("<QQB")
_MAX_BUFFERS: Final = 1 << 16  # a sanity bound on a descriptor's count
_PAGE: Final = mmap.PAGESIZE
_SEALS: Final = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE
_tokens = itertools.count(1)  # unique within this process, as the memfd names must be


class SharedBufferError(ProtocolError):
    """A shared-buffer descriptor did not describe a usable memfd of its sender."""


class Collector(list[pickle.PickleBuffer]):
    """A pickle ``buffer_callback``: keeps large contiguous buffers out of band.

    The list of those buffers itself: made for every call pickled, so it must cost
    next to nothing to make (a list, no ``__init__``).
    """

    __slots__ = ()

    def __call__(self, buffer: pickle.PickleBuffer) -> bool:
        """Return True (pickle it in band) unless ``buffer`` is large and contiguous."""
        with memoryview(buffer) as view:
            if view.nbytes < THRESHOLD or not view.contiguous:
                return True
        self.append(buffer)
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
    if type(value) is bytes and len(value) >= THRESHOLD:
        return _SharedBytes(value)
    return value


def wrap_args(
    args: tuple[object, ...], kwargs: dict[str, object]
) -> tuple[tuple[object, ...], dict[str, object]]:
    """A call's arguments with each large top-level ``bytes`` marked (usually as they are).

    ``bytes in map(type, ...)`` first: a C loop, for the tiny task with no bytes at all.
    """
    if bytes in map(type, args) and any(map(_is_big_bytes, args)):
        args = tuple(map(wrap, args))
    if kwargs and bytes in map(type, kwargs.values()):
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
    """An envelope whose shared memory this process holds for as long as it lives.

    A ``bytes`` (it is written to pipes as one); ``hold`` (a ``_Memfd`` or a slab's
    ``_Lease``) is freed with it.
    """

    hold: _Memfd | _Lease


def _layout(buffers: list[pickle.PickleBuffer]) -> tuple[list[bytes], int]:
    """The table entries of ``buffers`` (page-aligned, so each can be mapped), and the size."""
    entries = []
    offset = 0
    for buffer in buffers:
        view = buffer.raw()
        entries.append(_ENTRY.pack(offset, view.nbytes, view.readonly))
        offset += -(-view.nbytes // _PAGE) * _PAGE
    return entries, offset


def share(data: bytes, buffers: list[pickle.PickleBuffer]) -> SharedPayload:
    """Write ``buffers`` into a new sealed memfd; return the envelope for ``data``.

    What a worker does when it has no slab of the parent's to write into.

    Raises:
        OSError: no memfd could be made or written (out of memory or descriptors).
    """
    token = next(_tokens)
    fd = os.memfd_create(f"isopool-{token:x}", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    memfd = _Memfd(fd)  # closes the memfd if anything below raises
    entries, total = _layout(buffers)
    os.ftruncate(fd, total)
    for buffer, entry in zip(buffers, entries, strict=True):
        _write_at(fd, buffer.raw(), _ENTRY.unpack(entry)[0])
    fcntl.fcntl(fd, fcntl.F_ADD_SEALS, _SEALS | fcntl.F_SEAL_SEAL)
    head = _HEAD.pack(MAGIC, os.getpid(), fd, len(buffers), token)
    payload = SharedPayload(b"".join((head, *entries, data)))
    payload.hold = memfd
    return payload


def share_in_slab(data: bytes, buffers: list[pickle.PickleBuffer]) -> SharedPayload | None:
    """Copy ``buffers`` into a slab of this process's pool; None if none is free.

    The parent's way to send a call: the slab returns to the pool when the envelope
    (the Task's payload) is dropped.
    """
    entries, total = _layout(buffers)
    lease = lend(total)
    if lease is None:
        return None
    slab = lease.slab
    if slab is None:  # pragma: no cover - a new lease holds its slab
        return None
    _copy_in(slab.view(), buffers, entries)
    head = _HEAD.pack(MAGIC, os.getpid(), slab.fd, len(buffers), slab.token)
    payload = SharedPayload(b"".join((head, *entries, data)))
    payload.hold = lease
    return payload


def share_in_mapping(
    mapping: mmap.mmap,
    pid: int,
    fd: int,
    token: int,
    data: bytes,
    buffers: list[pickle.PickleBuffer],
) -> bytes:
    """Copy ``buffers`` into another process's slab, mapped here; return the envelope."""
    entries, _total = _layout(buffers)
    _copy_in(mapping, buffers, entries)
    head = _HEAD.pack(MAGIC, pid, fd, len(buffers), token)
    return b"".join((head, *entries, data))


def layout_size(buffers: list[pickle.PickleBuffer]) -> int:
    """The bytes a slab needs to hold ``buffers``."""
    return _layout(buffers)[1]


def _copy_in(target: mmap.mmap, buffers: list[pickle.PickleBuffer], entries: list[bytes]) -> None:
    with memoryview(target) as view:
        for buffer, entry in zip(buffers, entries, strict=True):
            offset, length, _readonly = _ENTRY.unpack(entry)
            view[offset : offset + length] = buffer.raw()


# -- the parent's slabs ------------------------------------------------------------

_IDLE_MAX: Final = 4  # idle slabs kept for reuse (each already has its pages)
_IDLE_BYTES: Final = 256 * 1024 * 1024  # a slab larger than this is not kept idle
# Slabs alive at once, idle or lent: each costs two descriptors (the memfd and the
# mmap's duplicate), so past this calls go in band and results in fresh memfds.
_LIVE_MAX: Final = 64
_MAX_SLAB: Final = 1 << 40  # a slab a worker grew past this is refused, never mapped


class Slab:
    """A memfd of this process, mapped here, sealed against shrinking, and reused.

    Reuse is the point: a fresh memfd costs a page allocation and zeroing for every
    page of every message, about as much as the copy itself. A slab keeps its pages;
    a worker maps it once (``_worker`` caches the mapping) and may grow it (a result
    larger than the slab), never shrink it, so no mapping of it can ever SIGBUS.
    """

    __slots__ = ("fd", "map", "pid", "size", "token")

    def __init__(self) -> None:
        self.token = next(_tokens)
        self.pid = os.getpid()
        self.fd = os.memfd_create(f"isopool-{self.token:x}", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        self.map: mmap.mmap | None = None
        self.size = 0
        try:
            fcntl.fcntl(self.fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_SEAL)
        except BaseException:
            os.close(self.fd)
            raise

    def fit(self, need: int, grow: bool, populate: bool = True) -> None:
        """Map at least ``need`` bytes; with ``grow``, enlarge the memfd to that first.

        ``populate``: fault every page in now (about to write them all). Never for a
        size a worker chose: a hostile one could grow the memfd to a terabyte of holes.

        Raises:
            SharedBufferError: without ``grow``, the memfd is smaller than ``need``,
                or it was grown past ``_MAX_SLAB``, or is still lent out in views.
        """
        size = os.fstat(self.fd).st_size
        if size < need:
            if not grow:
                raise SharedBufferError(
                    f"a shared buffer ends at byte {need} of slab {self.token:x}, which has {size}"
                )
            os.ftruncate(self.fd, need)
            size = need
        if size > _MAX_SLAB:
            raise SharedBufferError(f"slab {self.token:x} was grown to {size} bytes")
        if self.map is None or size > self.size:
            if self.map is not None:
                try:
                    self.map.close()
                except BufferError as exc:  # pragma: no cover - pinned slabs are never lent
                    raise SharedBufferError(f"slab {self.token:x} is still in use") from exc
            self.map = None
            flags = mmap.MAP_SHARED | (mmap.MAP_POPULATE if populate else 0)
            self.map = mmap.mmap(self.fd, size, flags)
            self.size = size

    def reserve(self, size: int) -> None:
        """Make the memfd at least ``size`` bytes long, without mapping (cheap: holes)."""
        if os.fstat(self.fd).st_size < size:
            os.ftruncate(self.fd, size)

    def view(self) -> mmap.mmap:
        """The mapping (``fit`` first)."""
        if self.map is None:
            raise SharedBufferError(f"slab {self.token:x} is not mapped")
        return self.map

    def close(self) -> None:
        """Unmap and close it (only in the process that made it)."""
        fd, self.fd = self.fd, -1
        if fd < 0 or self.pid != os.getpid():
            return
        if self.map is not None:
            with contextlib.suppress(BufferError):  # a view still exported: GC unmaps
                self.map.close()
            self.map = None
        os.close(fd)


class _Lease:
    """One use of a slab; gives it back to the pool when released or collected."""

    __slots__ = ("slab",)

    def __init__(self, slab: Slab) -> None:
        self.slab: Slab | None = slab

    def release(self) -> None:
        slab, self.slab = self.slab, None
        if slab is not None:
            _pool.give(slab)

    def __del__(self) -> None:
        self.release()


class _Pool:
    """This process's slabs: a few idle ones for reuse, a bound on the live ones."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._idle: list[Slab] = []
        self._live = 0

    def lend(self, size: int, mapped: bool = True) -> _Lease | None:
        with self._lock:
            if self._pid != os.getpid():  # forked: those slabs are the parent's
                self._pid, self._idle, self._live = os.getpid(), [], 0
            fits = [slab for slab in self._idle if slab.size >= size]
            if fits or self._idle:
                slab = min(fits, key=_size) if fits else max(self._idle, key=_size)
                self._idle.remove(slab)
            elif self._live >= _LIVE_MAX:
                return None
            else:
                slab = None
                self._live += 1
        try:
            if slab is None:
                slab = Slab()
            if mapped:
                slab.fit(size, grow=True)
            else:
                slab.reserve(size)
        except BaseException:
            if slab is not None:
                slab.close()
            with self._lock:
                self._live -= 1
            raise
        return _Lease(slab)

    def give(self, slab: Slab) -> None:
        with self._lock:
            mine = slab.pid == self._pid == os.getpid()
            if mine and len(self._idle) < _IDLE_MAX and slab.size <= _IDLE_BYTES:
                self._idle.append(slab)
                return
            if mine:
                self._live -= 1
        slab.close()


def _size(slab: Slab) -> int:
    return slab.size


_pool = _Pool()


def lend(size: int, mapped: bool = True) -> _Lease | None:
    """A slab of at least ``size`` bytes from this process's pool; None if at the bound.

    ``mapped``: map it here now, every page faulted in (to write into it); without,
    only its size is set (a slab lent to a worker, mapped here when it comes back).

    Raises:
        OSError: no memfd could be made or grown (out of memory or descriptors).
    """
    return _pool.lend(size, mapped)


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


def owner_of(payload: bytes | bytearray) -> int:
    """The pid an envelope names as the holder of its memory (0 if too short)."""
    if len(payload) < _HEAD.size:
        return 0
    return int(_HEAD.unpack_from(payload)[1])


class Received:
    """An envelope whose shared memory this process can read: ready to unpickle once.

    Its buffers come from a memfd of the sender's that this process opened (``claim``),
    or from a mapping of a slab (``claim_mapped``).
    """

    __slots__ = ("_data", "_entries", "_lease", "_mapping", "_memfd")

    def __init__(
        self,
        entries: list[tuple[int, int, int]],
        data: bytes,
        memfd: _Memfd | None = None,
        mapping: mmap.mmap | None = None,
        lease: _Lease | None = None,
    ) -> None:
        self._entries = entries
        self._data = data
        self._memfd = memfd
        self._mapping = mapping
        self._lease = lease

    def load(self) -> object:
        """Unpickle the value, its buffers read, copied or mapped; frees the memory.

        Raises:
            SharedBufferError: it was loaded (or closed) before.
        """
        try:
            if self._mapping is not None and self._lease is not None:
                buffers = _lend_out(self._mapping, self._entries, self._lease)
                self._lease = None  # released when the last buffer lent out dies
            elif self._mapping is not None:
                with memoryview(self._mapping) as view:
                    buffers = [_copy_out(view, *entry) for entry in self._entries]
            elif self._memfd is not None and self._memfd.fd >= 0:
                fd = self._memfd.fd
                buffers = [_buffer(fd, *entry) for entry in self._entries]
            else:
                raise SharedBufferError("this shared value was already unpickled")
        finally:
            self.close()  # a slab goes back to its pool; mappings keep what they map
        return pickle.loads(self._data, buffers=buffers)

    def close(self) -> None:
        """Free the shared memory without reading it."""
        self._mapping = None
        if self._memfd is not None:
            self._memfd.close()
        if self._lease is not None:
            self._lease.release()


# ctypes keeps one array type per length for good: past this many lengths, copy.
_PIN_LENGTHS_MAX: Final = 4096
_pin_lengths: set[int] = set()
_pinned: set[_Pins] = set()  # keeps each _Pins (and so its weakrefs) alive


class _Pins:
    """Gives a slab back to its pool when the last of the buffers lent out of it dies."""

    __slots__ = ("lease", "left", "refs")

    def __init__(self, lease: _Lease, holders: list[object]) -> None:
        self.lease = lease
        self.left = len(holders)
        self.refs = [weakref.ref(holder, self._drop) for holder in holders]
        _pinned.add(self)

    def _drop(self, _ref: object) -> None:
        self.left -= 1
        if self.left == 0:
            _pinned.discard(self)
            self.lease.release()


def _lend_out(
    mapping: mmap.mmap, entries: list[tuple[int, int, int]], lease: _Lease
) -> list[object]:
    """The buffers of a slab this process owns alone (a result's): no copy if writable.

    A writable buffer (a numpy array's) is a ctypes view of the slab itself: the array
    lives in the slab, which returns to the pool only when every such view is gone.
    A read-only one must become a ``bytes``: copied.
    """
    import ctypes

    buffers: list[object] = []
    holders: list[object] = []
    with memoryview(mapping) as view:
        for offset, length, readonly in entries:
            if readonly or (length not in _pin_lengths and len(_pin_lengths) >= _PIN_LENGTHS_MAX):
                buffers.append(_copy_out(view, offset, length, readonly))
                continue
            _pin_lengths.add(length)
            holder = (ctypes.c_char * length).from_buffer(mapping, offset)
            buffers.append(holder)
            holders.append(holder)
    if holders:
        _Pins(lease, holders)
    else:
        lease.release()
    return buffers


def _copy_out(view: memoryview, offset: int, length: int, readonly: int) -> object:
    # A slab is reused: its bytes must be copied out (once), never mapped.
    part = view[offset : offset + length]
    return bytes(part) if readonly else bytearray(part)


def _parse(payload: bytes | bytearray) -> tuple[int, int, int, list[tuple[int, int, int]], bytes]:
    """(pid, fd, token, entries, pickle) of an envelope, each field checked for form."""
    view = memoryview(payload)
    if len(view) < _HEAD.size:
        raise SharedBufferError(f"a shared-buffer descriptor of {len(view)} bytes is truncated")
    magic, pid, fd, count, token = _HEAD.unpack_from(view)
    end = _HEAD.size + count * _ENTRY.size
    if magic != MAGIC or fd < 0 or count > _MAX_BUFFERS or end > len(view):
        raise SharedBufferError(
            f"a malformed shared-buffer descriptor (fd {fd}, {count} buffers, {len(view)} bytes)"
        )
    entries = [_ENTRY.unpack_from(view, _HEAD.size + i * _ENTRY.size) for i in range(count)]
    for offset, length, _readonly in entries:
        if offset % _PAGE or length == 0:
            raise SharedBufferError(
                f"a shared buffer of {length} bytes at offset {offset} is malformed"
            )
    return pid, fd, token, entries, bytes(view[end:])


def _end(entries: list[tuple[int, int, int]]) -> int:
    return max((offset + length for offset, length, _readonly in entries), default=0)


def extent(payload: bytes | bytearray) -> int:
    """The bytes an envelope's buffers span (0 if it is malformed)."""
    try:
        return _end(_parse(payload)[3])
    except SharedBufferError:
        return 0


def claim(payload: bytes | bytearray, pid: int) -> Received:
    """Open the sealed memfd an envelope describes, a memfd of process ``pid``.

    Raises:
        SharedBufferError: the descriptor is malformed, names no such memfd of
            ``pid``, or one that is not sealed or is too small for its buffers.
    """
    sender, fd, token, entries, data = _parse(payload)
    if sender != pid:
        raise SharedBufferError(f"a shared buffer said to be held by {sender}, not {pid}")
    memfd = _open(pid, fd, token, _SEALS)
    try:
        size = os.fstat(memfd.fd).st_size
        if _end(entries) > size:
            raise SharedBufferError(
                f"shared buffers ending at byte {_end(entries)} do not fit the "
                f"{size}-byte memfd {fd} of process {pid}"
            )
    except BaseException:
        memfd.close()
        raise
    return Received(entries, data, memfd=memfd)


def claim_slab(payload: bytes | bytearray, slab: Slab | None) -> Received:
    """Take an envelope written into ``slab`` (ours, lent to a worker) for unpickling.

    The slab goes back to the pool once the value is loaded or dropped, and on error.

    Raises:
        SharedBufferError: no slab was lent, the envelope names another, or its
            buffers do not fit it.
    """
    lease = _Lease(slab) if slab is not None else None
    try:
        _pid, fd, token, entries, data = _parse(payload)
        if slab is None or (fd, token) != (slab.fd, slab.token):
            raise SharedBufferError(f"a shared buffer in memfd {fd}, which was not lent")
        slab.fit(_end(entries), grow=False, populate=False)
    except BaseException:
        if lease is not None:
            lease.release()
        raise
    return Received(entries, data, mapping=slab.view(), lease=lease)


def claim_mapped(payload: bytes | bytearray, mapping: mmap.mmap) -> Received:
    """An envelope whose slab this process has mapped (``map_slab``)."""
    _pid, _fd, _token, entries, data = _parse(payload)
    if _end(entries) > len(mapping):
        raise SharedBufferError(
            f"shared buffers ending at byte {_end(entries)} do not fit the {len(mapping)}-byte slab"
        )
    return Received(entries, data, mapping=mapping)


def slab_of(payload: bytes | bytearray) -> tuple[int, int, int]:
    """(pid, fd, token) of an envelope."""
    pid, fd, token, _entries, _data = _parse(payload)
    return pid, fd, token


def open_slab(pid: int, fd: int, token: int) -> int:
    """Open our own read-write descriptor to slab ``fd`` of ``pid`` (a worker's view).

    Raises:
        SharedBufferError: it is not that process's slab of that token.
    """
    memfd = _open(pid, fd, token, fcntl.F_SEAL_SHRINK, os.O_RDWR)
    fd_here, memfd.fd = memfd.fd, -1
    return fd_here


def _open(pid: int, fd: int, token: int, seals: int, mode: int = os.O_RDONLY) -> _Memfd:
    """Open our own descriptor to memfd ``fd`` of ``pid``, named for ``token``, sealed."""
    try:
        memfd = _Memfd(os.open(f"/proc/{pid}/fd/{fd}", mode | os.O_CLOEXEC))
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
        seals_wanted = seals
        seals = fcntl.fcntl(memfd.fd, fcntl.F_GET_SEALS)
        if seals & seals_wanted != seals_wanted:
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

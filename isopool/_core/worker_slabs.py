"""The worker's side of shared memory (see ``oob``): slabs mapped, results' memfds held.

A call's large buffers arrive in a slab the parent owns (``claim_call``); a result's
go into the slab the parent lent on the control pipe (``lend_slab``) or, without
one, into a memfd of this worker's, held until the parent says RELEASE
(``share_result``, ``release``). The main thread claims and shares, the watcher
thread lends and releases, each under this module's locks.
"""

from __future__ import annotations

import collections
import mmap
import os
import pickle
import threading
from typing import Final

from . import oob
from . import wire as _wire

__all__ = [
    "claim_call",
    "holding",
    "lend_slab",
    "release",
    "release_all",
    "set_parent",
    "share_result",
    "wait_released",
]


# The memfds of results the parent has not yet opened, by token (see oob).
_held: dict[int, oob._Memfd] = {}
_held_changed = threading.Condition()
_parent_pid = 0  # the pool's process: the holder of the slabs (set_parent, from the cookie)
# The parent's slab this worker may write its next large result into: (fd, token)
# there. Set by the watcher thread, taken by the main thread.
_lent: tuple[int, int] | None = None
_lent_lock = threading.Lock()
# The parent's slabs mapped here, by (fd, token) there: (our descriptor, mapping).
# Slabs are reused, so most calls and results find theirs mapped already.
_mapped: collections.OrderedDict[tuple[int, int], tuple[int, mmap.mmap]] = collections.OrderedDict()
_MAPPED_MAX: Final = 8


def lend_slab(fd: int, token: int) -> None:
    """The parent lent its slab ``fd``/``token`` for this worker's next large result."""
    global _lent
    with _lent_lock:
        _lent = (fd, token)


def _map_slab(fd: int, token: int, need: int, grow: bool) -> mmap.mmap:
    """The parent's slab ``fd``/``token`` mapped here, at least ``need`` bytes long.

    With ``grow``, a slab smaller than that is enlarged (a result larger than it).

    Raises:
        SharedBufferError: it is not the parent's slab, or too small (without grow).
        OSError: out of memory or descriptors.
    """
    key = (fd, token)
    entry = _mapped.pop(key, None)
    mapping: mmap.mmap | None
    if entry is None:
        local, mapping = oob.open_slab(_parent_pid, fd, token), None
    else:
        local, mapping = entry
    try:
        if mapping is None or len(mapping) < need:
            size = os.fstat(local).st_size
            if size < need:
                if not grow:
                    raise oob.SharedBufferError(
                        f"shared buffers end at byte {need} of a {size}-byte slab"
                    )
                os.ftruncate(local, need)
                size = need
            if mapping is not None:
                mapping.close()
            mapping = None
            mapping = mmap.mmap(local, size, mmap.MAP_SHARED | mmap.MAP_POPULATE)
    except BaseException:
        if mapping is not None:
            mapping.close()
        os.close(local)
        raise
    _mapped[key] = (local, mapping)
    while len(_mapped) > _MAPPED_MAX:
        _key, (old_fd, old_map) = _mapped.popitem(last=False)
        old_map.close()
        os.close(old_fd)
    return mapping


def claim_call(payload: _wire.Payload) -> _wire.Payload | oob.Received:
    """A call's payload, its shared buffers (in a slab of the parent's) made readable."""
    if not oob.is_shared(payload):
        return payload
    pid, fd, token = oob.slab_of(payload)
    if pid != _parent_pid:
        raise oob.SharedBufferError(f"a call's shared buffers held by {pid}, not the pool")
    # The extent, not 0: the parent may have grown the slab since it was mapped here.
    mapping = _map_slab(fd, token, oob.extent(payload), grow=False)
    return oob.claim_mapped(payload, mapping)


def share_result(data: bytes, buffers: list[pickle.PickleBuffer]) -> bytes:
    """Put a result's large buffers in the slab the parent lent, else a memfd of ours."""
    global _lent
    with _lent_lock:
        lent, _lent = _lent, None
    if lent is not None:
        fd, token = lent
        try:
            mapping = _map_slab(fd, token, oob.layout_size(buffers), grow=True)
        except (OSError, oob.SharedBufferError):
            pass  # the parent's memory is unusable: ours will do
        else:
            return oob.share_in_mapping(mapping, _parent_pid, fd, token, data, buffers)
    payload = oob.share(data, buffers)
    _hold(payload)  # before the parent can read the frame and RELEASE it
    return payload


def _hold(payload: oob.SharedPayload) -> None:
    with _held_changed:
        _held[oob.token_of(payload)] = payload.hold  # type: ignore[assignment]  # share() holds a _Memfd


def release(token: int) -> None:
    """The parent opened the memfd of result ``token``: close ours."""
    with _held_changed:
        memfd = _held.pop(token, None)
        _held_changed.notify_all()
    if memfd is not None:
        memfd.close()


def release_all() -> None:
    """No RELEASE will come (the parent is gone): close every held memfd."""
    with _held_changed:
        memfds = list(_held.values())
        _held.clear()
        _held_changed.notify_all()
    for memfd in memfds:
        memfd.close()


def set_parent(pid: int) -> None:
    """The pool's process, whose slabs this worker may map (from the cookie message)."""
    global _parent_pid
    _parent_pid = pid


def holding() -> bool:
    """Whether a result's memfd still waits for the parent's RELEASE."""
    with _held_changed:
        return bool(_held)


def wait_released(timeout: float) -> None:
    """Wait until the parent has released every held memfd, at most ``timeout`` s."""
    with _held_changed:
        _held_changed.wait_for(lambda: not _held, timeout)

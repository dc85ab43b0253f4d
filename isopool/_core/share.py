"""Pickle a pool's initializer so that ``multiprocessing`` objects in it reach the workers.

``multiprocessing``'s locks, queues, events, shared values, pipes and the rest refuse to
pickle except while a process is being started (``context.assert_spawning``), and the
ones that wrap a file descriptor (a pipe end, a shared-memory arena) pickle an index into
a list of descriptors that the new process inherits. This module does for a Pool what
``multiprocessing``'s own forkserver start method does for a ``Process``
(``popen_forkserver.Popen._launch``):

1. ``dumps_initializer`` pickles ``(initializer, initargs)`` while a spawning "popen"
   of ours is active (``context.set_spawning_popen``), so ``assert_spawning`` passes,
   and ``_SpawningPopen.duplicate_for_child(fd)`` collects every descriptor the pickle
   refers to; the pickle holds only their indices (``DupFd``).
2. The parent sends those descriptors to the fork server with ``SCM_RIGHTS``
   (``_process.ForkServer``); the server keeps them open for its lifetime.
3. Each worker, forked from the server, installs them as ``multiprocessing.forkserver``'s
   inherited descriptors before it unpickles the initializer (``_worker``), so
   ``DupFd.detach()`` returns the worker's copy of each one.

Semaphores (``Lock``, ``RLock``, ``Semaphore``, ``BoundedSemaphore``, and the ones inside
``Condition``, ``Event``, ``Barrier``, ``Queue``, ``Value``...) travel by name and are
reopened with ``sem_open``. Those made with the "fork" context (the default on Linux
before Python 3.14) have no name: they are unlinked at creation and only a fork of the
process that made them can use them (by address). They can reach the workers only when
the fork server is itself a fork of the parent made after they exist (``fork=True``
here, see ``_process.ForkServer.fork``); otherwise ``dumps_initializer`` refuses them
with a message that says what to do, because unpickling one anywhere else would use a
raw pointer from another address space.

The parent keeps duplicates of the descriptors (closed when the payload is collected)
and a reference to ``initargs``, so a fork server that has to be restarted gets them
again, and named semaphores are not unlinked while the pool may still start workers.
"""

from __future__ import annotations

import contextlib
import copyreg
import io
import os
import pickle
import weakref
from collections import ChainMap
from typing import Any, ClassVar, Final

__all__ = ["DupFd", "InitPayload", "dumps_initializer"]

# The kernel accepts at most SCM_MAX_FD (253) descriptors in one message.
MAX_FDS_PER_MESSAGE: Final = 250
_MAIN_REF: Final = b"__main__"  # as _wire: a pickle naming __main__ is redone by value


class DupFd:
    """A descriptor in a pickled initializer: an index into the worker's inherited fds."""

    __slots__ = ("index",)

    def __init__(self, index: int) -> None:
        self.index = index

    def __reduce__(self) -> tuple[type[DupFd], tuple[int]]:
        return DupFd, (self.index,)

    def detach(self) -> int:
        """Return the worker's copy of the descriptor (``reduction.DupFd``'s contract)."""
        from multiprocessing import forkserver

        fds: list[int] | None = forkserver.get_inherited_fds()
        if fds is None or self.index >= len(fds):
            raise RuntimeError(
                "isopool: a multiprocessing object refers to a file descriptor that was "
                "not passed to this worker"
            )
        return fds[self.index]


class _SpawningPopen:
    """What ``multiprocessing`` asks of a process being started, while we pickle."""

    DupFd = DupFd

    def __init__(self) -> None:
        self.fds: list[int] = []

    def duplicate_for_child(self, fd: int) -> int:
        self.fds.append(fd)
        return len(self.fds) - 1


class InitPayload:
    """A pickled ``(initializer, initargs)`` and what it needs in the worker.

    Attributes:
        data: The pickle.
        fds: The parent's duplicates of the descriptors the pickle refers to, in
            index order; closed when this object is collected.
        fork_only: Descriptions of the fork-context semaphores in the pickle; when
            not empty, only a fork server forked from this process can serve it.
    """

    __slots__ = ("__weakref__", "_keep", "data", "fds", "fork_only")

    def __init__(
        self, data: bytes, fds: tuple[int, ...], fork_only: tuple[str, ...], keep: object
    ) -> None:
        self.data = data
        self.fds = fds
        self.fork_only = fork_only
        self._keep = keep  # initargs: named semaphores stay linked, fds stay valid
        weakref.finalize(self, _close_all, fds)


def _close_all(fds: tuple[int, ...]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


def dumps_initializer(initializer: object, initargs: tuple[Any, ...], fork: bool) -> InitPayload:
    """Pickle ``(initializer, initargs)`` for the fork server; see the module docstring.

    Args:
        initializer: The pool's initializer.
        initargs: Its arguments; ``multiprocessing`` objects are allowed.
        fork: Whether the fork server will be a fork of this process made now, so
            that fork-context semaphores may be passed by address.

    Raises:
        ValueError: ``fork`` is false and ``initargs`` holds a fork-context
            semaphore; the message names the argument and what to do instead.
        Whatever pickling raised (``PicklingError``, ``TypeError``...).
    """
    from multiprocessing import context

    previous = context.get_spawning_popen()
    try:
        data, popen, fork_only = _dump((initializer, initargs), fork, by_value=False)
        if _MAIN_REF in data:
            data, popen, fork_only = _dump((initializer, initargs), fork, by_value=True)
    except _ForkOnlyError as exc:
        raise ValueError(_fork_only_message(initargs, exc.what)) from None
    finally:
        context.set_spawning_popen(previous)
    fds = tuple(os.dup(fd) for fd in popen.fds)  # os.dup: close-on-exec
    return InitPayload(data, fds, tuple(fork_only), initargs)


class _ForkOnlyError(Exception):
    def __init__(self, what: str) -> None:
        super().__init__(what)
        self.what = what


def _dump(obj: object, fork: bool, by_value: bool) -> tuple[bytes, _SpawningPopen, list[str]]:
    """One attempt: with the standard pickler, or cloudpickle's when ``by_value``."""
    from multiprocessing import context, reduction, synchronize

    popen = _SpawningPopen()
    context.set_spawning_popen(popen)  # type: ignore[arg-type]  # duck-typed as the stdlib's Popen
    fork_only: list[str] = []
    if by_value:
        import cloudpickle

        base: type[pickle.Pickler] = cloudpickle.Pickler
        base_table: Any = cloudpickle.Pickler.dispatch_table
    else:
        base, base_table = pickle.Pickler, copyreg.dispatch_table

    class _Pickler(base):  # type: ignore[valid-type,misc]  # a base chosen at run time
        # ForkingPickler's reducers (Connection, socket, heap Arena, shared ctypes)
        # before the base's; a live view, as the stdlib registers some lazily.
        dispatch_table: ClassVar[Any] = ChainMap(
            reduction.ForkingPickler._extra_reducers,  # type: ignore[attr-defined]  # the stdlib's registry of multiprocessing reducers
            base_table,
        )

        def reducer_override(self, obj: object) -> Any:  # noqa: ANN401 - pickle's protocol
            if isinstance(obj, synchronize.SemLock):
                semlock = obj._semlock  # type: ignore[attr-defined]  # the C object inside
                if semlock.name is None:  # a fork-context semaphore: only its address
                    if not fork:
                        raise _ForkOnlyError(repr(obj))
                    fork_only.append(repr(obj))
                    # SemLock.__getstate__ refuses these (gh-108520); the state is
                    # the same, and the forked server shares the address space.
                    state = (semlock.handle, semlock.kind, semlock.maxvalue, None)
                    return copyreg.__newobj__, (type(obj),), state  # type: ignore[attr-defined]  # the stdlib's NEWOBJ helper
            parent = getattr(super(), "reducer_override", None)
            return NotImplemented if parent is None else parent(obj)

    buf = io.BytesIO()
    _Pickler(buf, protocol=pickle.HIGHEST_PROTOCOL).dump(obj)
    return buf.getvalue(), popen, fork_only


def _fork_only_message(initargs: tuple[Any, ...], what: str) -> str:
    where = "initargs"
    for index, arg in enumerate(initargs):
        try:
            _dump(arg, fork=False, by_value=True)
        except _ForkOnlyError:
            where = f"initargs[{index}] ({type(arg).__module__}.{type(arg).__qualname__})"
            break
        except Exception:
            continue
    import threading

    others = [t.name for t in threading.enumerate() if t is not threading.current_thread()]
    threads = f" ({', '.join(others)})" if others else ""
    return (
        f"{where} holds {what}, a semaphore made with the 'fork' multiprocessing context "
        "(the default on Linux before Python 3.14); it has no name, so only a fork of "
        "this process can use it, and this pool's fork server cannot be one because the "
        f"process already runs other threads{threads}. Create it with "
        "multiprocessing.get_context('forkserver') (or 'spawn'), or create the Pool "
        "before starting any thread"
    )

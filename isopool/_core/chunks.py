"""The functions a worker runs for ``Pool.map``: a chunk of items, or a batch of them.

They travel by reference, like any task function, so a map costs one call per chunk
or batch instead of one per item; ``resolve`` turns a ``"pkg.mod:func"`` name into the
function, once per worker (the worker's own calls use it too).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final, NamedTuple

__all__ = [
    "BATCH_DONE",
    "BatchStopped",
    "resolve",
    "run_batch",
    "run_chunk",
    "run_chunk_of_one",
]


def run_chunk(fn: Callable[..., object] | str, chunk: list[tuple[object, ...]]) -> list[object]:
    """Apply ``fn`` to each argument tuple of ``chunk`` (``Pool.map``'s chunksize)."""
    if isinstance(fn, str):
        fn = resolve(fn)
    return [fn(*args) for args in chunk]


def run_chunk_of_one(fn: Callable[..., object] | str, items: list[object]) -> list[object]:
    """``run_chunk`` for ``map`` over one iterable: its items, not 1-tuples of them.

    Half the objects to pickle and unpickle per item, as ``multiprocessing.Pool``
    sends them (its ``mapstar``).
    """
    if isinstance(fn, str):
        fn = resolve(fn)
    return list(map(fn, items))


# The attribute of an exception raised by one item of a batch (``run_batch``) that
# carries the values of the items before it, so they travel back with it.
BATCH_DONE: Final = "_isopool_batch_done"


class BatchStopped(NamedTuple):
    """``run_batch``'s reply when an item's exception cannot carry ``BATCH_DONE``.

    That exception refuses attributes or pickles itself; ``values`` are the values of
    the items before it. The parent runs that item again on its own, to raise it.
    """

    values: list[object]


def run_batch(
    fn: Callable[..., object] | str, calls: list[tuple[object, ...]]
) -> list[object] | BatchStopped:
    """Apply ``fn`` to each argument tuple of ``calls``: ``Pool.map``'s batches.

    Unlike ``run_chunk``, an exception belongs to its item: the values of the items
    before it ride back on it (``BATCH_DONE``), and the items after it do not run.
    """
    if isinstance(fn, str):
        fn = resolve(fn)
    values: list[object] = []
    for args in calls:
        try:
            values.append(fn(*args))
        except BaseException as exc:
            if not _carries_attributes(exc):
                return BatchStopped(values)
            try:
                setattr(exc, BATCH_DONE, values)
            except BaseException:
                return BatchStopped(values)
            raise
    return values


def _carries_attributes(exc: BaseException) -> bool:
    """Whether pickling ``exc`` keeps its attributes (BaseException's and OSError's do)."""
    kind = type(exc)
    return kind.__reduce__ in _REDUCES_WITH_DICT and (
        kind.__reduce_ex__ is BaseException.__reduce_ex__
    )


_REDUCES_WITH_DICT: Final = (BaseException.__reduce__, OSError.__reduce__)


_resolved: dict[str, Callable[..., object]] = {}


def resolve(name: str) -> Callable[..., object]:
    """The function a ``"pkg.mod:func"`` name stands for, looked up once per worker."""
    fn = _resolved.get(name)
    if fn is None:
        from .._spec import resolve_function

        fn = _resolved[name] = resolve_function(name)
    return fn

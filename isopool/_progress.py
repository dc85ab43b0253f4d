"""Progress bars and callbacks for every long call: ``map``, ``*_many``, streams.

The calls are ``Pool.map``, ``Task.await_many``, ``Task.yield_many``, ``async_stream``
and ``as_completed``.

Every such call takes ``progress=``, and this module alone turns it into a
``Progress``: or into None, which is what ``progress=False`` (the default) gives, so
that a call without progress costs one ``is None`` test per item and never imports
tqdm. What ``progress=`` may be:

- ``False``: nothing;
- ``True``: a tqdm bar on stderr, **only when stderr is a terminal** (a log file or a
  CI run stays clean), and only if tqdm is installed (``isopool[progress]``);
  otherwise nothing, silently;
- ``"always"``: a tqdm bar on stderr even when it is not a terminal; without tqdm
  this raises ImportError at the call, naming the extra;
- a tqdm instance (anything with ``update``, ``set_postfix`` and ``refresh``): it is
  updated, its ``total`` filled in when it has none; the caller owns it and closes it;
- a callable ``(done, total, counts)``: called once per finished item with the
  number done so far, the total (None for an iterable without ``len``) and a fresh
  dict of ``counts`` (see ``COUNTS``), and once more when the call ends, so notebooks
  and rich users draw their own.

The bar's postfix shows the crashed, timed-out, failed and cancelled counts once one
of them is non-zero; rate and ETA are tqdm's own.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Sized
from concurrent.futures import Future
from typing import Any, Final, Protocol

from ._errors import TaskCrashError, TaskTimeoutError

__all__ = ["COUNTS", "Progress", "ProgressArg", "make_progress", "outcome_of", "total_of"]

COUNTS: Final = ("ok", "failed", "crashed", "timed_out", "cancelled")
"""The keys of a progress callable's ``counts``: how each finished item ended."""

_CALLBACK_FAILURES: Final = ("crashed", "timed_out", "failed", "cancelled")


class _Bar(Protocol):
    """What isopool uses of a tqdm bar."""

    total: float | None

    def update(self, n: float = 1) -> object: ...
    def set_postfix(self, ordered_dict: object = None, refresh: bool = True) -> None: ...
    def refresh(self) -> object: ...
    def close(self) -> None: ...


ProgressCallback = Callable[[int, "int | None", dict[str, int]], object]
ProgressArg = bool | str | ProgressCallback | Any
"""What ``progress=`` accepts: False, True, "always", a tqdm instance or a callable."""


def outcome_of(task: Future[Any]) -> str:
    """Which ``COUNTS`` key a finished ``task`` falls under.

    Never unpickles a value that came back: a lazily settled isopool Task says
    whether it failed without it; a failure's exception is unpickled (its type
    tells a crash from a time-out), which is what its waiter does next anyway.
    """
    if task.cancelled():
        return "cancelled"
    if getattr(task, "_settle", None) is not None and not getattr(task, "_settle_is_error", True):
        return "ok"
    exc = task.exception(0)
    if exc is None:
        return "ok"
    if isinstance(exc, TaskCrashError):
        return "crashed"
    if isinstance(exc, TaskTimeoutError):
        return "timed_out"
    return "failed"


def total_of(*iterables: Iterable[Any]) -> int | None:
    """The item count of zipped ``iterables`` when each has a length; else None."""
    sizes = [len(it) for it in iterables if isinstance(it, Sized)]
    if len(sizes) != len(iterables) or not sizes:
        return None
    return min(sizes)


class Progress:
    """Counts the items of one call as they finish and shows them.

    Not thread-safe: one call's consumer thread drives it.
    """

    __slots__ = ("_bar", "_callback", "_owned", "_postfix", "counts", "done", "total")

    def __init__(
        self,
        total: int | None,
        bar: _Bar | None = None,
        owned: bool = False,
        callback: ProgressCallback | None = None,
    ) -> None:
        self.total = total
        self.done = 0
        self.counts = dict.fromkeys(COUNTS, 0)
        self._bar = bar
        self._owned = owned  # we made the bar: we close it
        self._callback = callback
        self._postfix: dict[str, int] = {}
        if bar is not None and total is not None and bar.total is None:
            bar.total = total
            bar.refresh()

    def finished(self, task: Future[Any], items: int = 1) -> None:
        """``task`` finished and stands for ``items`` items (a chunk of ``map``)."""
        self.add(outcome_of(task), items)

    def add(self, outcome: str, items: int = 1) -> None:
        """Count ``items`` items that ended as ``outcome`` (a ``COUNTS`` key)."""
        self.done += items
        self.counts[outcome] += items
        bar = self._bar
        if bar is not None:
            if outcome != "ok":
                self._postfix = {k: self.counts[k] for k in _CALLBACK_FAILURES if self.counts[k]}
                bar.set_postfix(self._postfix, refresh=False)
            bar.update(items)
        if self._callback is not None:
            self._callback(self.done, self.total, dict(self.counts))

    def close(self) -> None:
        """The call ended (or was left): close the bar isopool made; tell the callable."""
        bar, self._bar = self._bar, None
        if bar is not None:
            if self._owned:
                bar.close()
            else:
                bar.refresh()
        callback, self._callback = self._callback, None
        if callback is not None:
            callback(self.done, self.total, dict(self.counts))


def check_progress(progress: object) -> object:
    """Validate ``progress=`` at the call; return it unchanged.

    Raises:
        TypeError: it is none of False, True, "always", a tqdm-like bar, a callable.
    """
    if isinstance(progress, bool):
        return progress
    if isinstance(progress, str):  # never ==: tqdm's __eq__ fails on other types
        if progress == "always":
            return progress
        raise ValueError(f"progress must be True, False or 'always', got {progress!r}")
    if _is_bar(progress) or callable(progress):
        return progress
    raise TypeError(
        "progress must be True, False, 'always', a tqdm instance or a callable "
        f"(done, total, counts), got {progress!r}"
    )


def make_progress(progress: object, total: int | None, unit: str = "task") -> Progress | None:
    """The Progress for ``progress=`` over ``total`` items, or None for none.

    Raises:
        TypeError, ValueError: ``progress`` is not one of the accepted values.
        ImportError: ``progress="always"`` and tqdm is not installed.
    """
    if progress is False:
        return None
    check_progress(progress)
    if progress is True or isinstance(progress, str):  # "always", checked above
        if progress is True and not _stderr_is_terminal():
            return None
        try:
            from tqdm import tqdm
        except ImportError:
            if progress is True:
                return None
            raise ImportError(
                "progress='always' needs tqdm: pip install 'isopool[progress]'"
            ) from None
        bar: _Bar = tqdm(total=total, unit=unit, file=sys.stderr, dynamic_ncols=True)
        return Progress(total, bar, owned=True)
    if _is_bar(progress):
        return Progress(total, progress, owned=False)  # type: ignore[arg-type]  # duck-checked
    return Progress(total, callback=progress)  # type: ignore[arg-type]  # checked callable


def _is_bar(obj: object) -> bool:
    return all(callable(getattr(obj, name, None)) for name in ("update", "set_postfix", "refresh"))


def _stderr_is_terminal() -> bool:
    try:
        return bool(sys.stderr is not None and sys.stderr.isatty())
    except (AttributeError, ValueError):  # replaced by an object without it, or closed
        return False

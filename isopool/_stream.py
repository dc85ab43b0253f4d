"""``async_stream``: run a function over an iterable with bounded concurrency, lazily.

At most ``max_concurrency`` tasks run at once; the input is read only as room
frees up, so it may be endless. Each task's time-out starts when the task starts (the
pool's per-task ``timeout``). Leaving the generator early stops every task in flight.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, wait
from dataclasses import dataclass, replace
from typing import Any, Final, Literal

from ._errors import TaskTimeoutError
from ._progress import Progress, check_progress, make_progress, total_of
from ._spec import TaskOptions, check_positive_int, check_seconds
from ._task import Reply, Task

__all__ = ["StreamSpec", "Submit", "async_stream"]

Submit = Callable[
    [Callable[..., object] | str, tuple[object, ...], dict[str, object], TaskOptions | None],
    Task[Any],
]
"""How a group, a stream or a supervisor starts one task: (fn, args, kwargs, options)."""
_ON_TIMEOUT: Final = ("exit", "kill_task")


@dataclass(frozen=True, slots=True)
class StreamSpec:
    """The validated options of one ``async_stream`` call."""

    max_concurrency: int
    ordered: bool
    timeout: float | None
    on_timeout: Literal["exit", "kill_task"]
    zip_input_on_exit: bool
    progress: object  # see _progress: False, True, "always", a bar or a callable

    @classmethod
    def build(
        cls,
        max_concurrency: int | None,
        ordered: bool,
        timeout: float | None,
        on_timeout: str,
        zip_input_on_exit: bool,
        progress: object,
    ) -> StreamSpec:
        """Validate the options; raise ValueError/TypeError naming the bad one."""
        if max_concurrency is None:
            from loky import cpu_count

            max_concurrency = int(cpu_count())
        if on_timeout not in _ON_TIMEOUT:
            raise ValueError(f"on_timeout must be 'exit' or 'kill_task', got {on_timeout!r}")
        return cls(
            max_concurrency=check_positive_int("max_concurrency", max_concurrency),
            ordered=bool(ordered),
            timeout=check_seconds("timeout", timeout),
            on_timeout=on_timeout,  # type: ignore[arg-type]  # checked just above
            zip_input_on_exit=bool(zip_input_on_exit),
            progress=check_progress(progress),
        )


def async_stream(
    submit: Submit,
    fn: Callable[..., object] | str,
    iterable: Iterable[Any],
    spec: StreamSpec,
    *,
    link: bool,
    base: TaskOptions | None = None,
) -> Iterator[Reply[Any]]:
    """Yield a Reply per input: see ``Task.async_stream``.

    With ``link`` a task that raises stops the stream and the error is raised; without
    it (``*_nolink``) the failure is yielded as ``Reply("exit", exc)``.
    """
    options = replace(base or TaskOptions(), timeout=spec.timeout, restart="temporary")
    if spec.timeout is not None:
        options = replace(options, shutdown="brutal_kill")  # Elixir kills on time-out
    bar = make_progress(spec.progress, total_of(iterable))
    return _run(submit, fn, iter(iterable), spec, options, link, bar)


def _run(
    submit: Submit,
    fn: Callable[..., object] | str,
    inputs: Iterator[Any],
    spec: StreamSpec,
    options: TaskOptions,
    link: bool,
    bar: Progress | None,
) -> Iterator[Reply[Any]]:
    window: collections.deque[tuple[Any, Task[Any]]] = collections.deque()
    exhausted = False
    try:
        while True:
            while not exhausted and sum(not t.done() for _, t in window) < spec.max_concurrency:
                try:
                    item = next(inputs)
                except StopIteration:
                    exhausted = True
                    break
                window.append((item, submit(fn, (item,), {}, options)))
            if not window:
                return
            if link:
                _raise_first_failure(window, spec)  # a linked failure stops the stream now
            ready = _take_ready(window, spec.ordered)
            if ready is None:
                wait([t for _, t in window if not t.done()], return_when=FIRST_COMPLETED)
                continue
            item, task = ready
            if bar is not None:
                bar.finished(task)
            yield _reply(item, task, spec, link)
    finally:
        for _, task in window:
            task._owner.kill(task, False, "brutal_kill")
        if bar is not None:
            bar.close()


def _raise_first_failure(
    window: collections.deque[tuple[Any, Task[Any]]], spec: StreamSpec
) -> None:
    for _item, task in window:
        if task.done() and not task.cancelled():
            exc = task.exception(0)
            if exc is not None and not (
                isinstance(exc, TaskTimeoutError) and spec.on_timeout == "kill_task"
            ):
                raise exc


def _take_ready(
    window: collections.deque[tuple[Any, Task[Any]]], ordered: bool
) -> tuple[Any, Task[Any]] | None:
    if ordered:
        return window.popleft() if window[0][1].done() else None
    for entry in window:
        if entry[1].done():
            window.remove(entry)
            return entry
    return None


def _reply(item: object, task: Task[Any], spec: StreamSpec, link: bool) -> Reply[Any]:
    reply = Reply.of(task)
    if reply.ok:
        return reply
    reason: object = reply.value
    if isinstance(reason, TaskTimeoutError):
        if spec.on_timeout == "exit":
            raise reason
        reason = "timeout"
    elif link and isinstance(reason, BaseException):
        raise reason
    return Reply("exit", (item, reason) if spec.zip_input_on_exit else reason, reply.usage)

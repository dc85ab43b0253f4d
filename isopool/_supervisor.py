"""TaskSupervisor: a named, long-lived owner of tasks, as Elixir's ``Task.Supervisor``.

A supervisor runs its children on its own Pool (or one you pass), restarts them by
their policy, and applies OTP's restart intensity *across* its children: more than
``max_restarts`` restarts within ``max_seconds`` and the supervisor gives up: its
children are stopped and fail with ``RestartLimitError``, and it takes no new work.
Supervisors are registered by name in the process, so other code can find one with
``TaskSupervisor.whereis(name)`` the way Elixir code names ``MyApp.TaskSupervisor``.

State: running -> (gave up | closed); one enum behind one lock.
"""

from __future__ import annotations

import enum
import itertools
import logging
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from types import TracebackType
from typing import Any, ClassVar, Literal, ParamSpec, TypeVar, overload

from ._core.policy import RestartIntensity
from ._errors import MaxChildrenError, PoolClosedError, RestartLimitError
from ._group import link_task
from ._many import stop_tasks
from ._pool import Pool
from ._spec import TaskOptions, check_positive_int
from ._stream import StreamSpec, async_stream
from ._task import Reply, Task

__all__ = ["SupervisorOptions", "TaskSupervisor"]

log = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")

_ids = itertools.count(1)


class _State(enum.Enum):
    RUNNING = "running"
    GAVE_UP = "gave up"  # restart intensity exceeded
    CLOSED = "closed"


class _Starting:
    """Starting children: shared by TaskSupervisor and its options views.

    A subclass provides ``_sup`` (the supervisor) and ``_options`` (the settings
    its children start with).
    """

    _sup: TaskSupervisor
    _options: TaskOptions

    def start_child(
        self, fn: Callable[..., object] | str, /, *args: object, **kwargs: object
    ) -> Task[Any]:
        """Start a supervised fire-and-forget child; return its Task.

        The Task resolves when the child stops for good: after a normal exit for a
        temporary or transient child, never for a permanent one (until it is
        terminated or the supervisor gives up).

        Raises:
            MaxChildrenError: the supervisor already runs ``max_children``.
            RestartLimitError: the supervisor gave up (restart intensity).
            PoolClosedError: the supervisor was closed.
        """
        return self._sup._start(fn, args, kwargs, self._options, link=False)

    @overload
    def async_(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Task[T]: ...

    @overload
    def async_(self, fn: str, /, *args: object, **kwargs: object) -> Task[Any]: ...

    def async_(self, fn: Any, /, *args: Any, **kwargs: Any) -> Task[Any]:
        """Start a supervised task linked to the caller (its TaskGroup or the program).

        As in Elixir, only the ``shutdown`` option may differ from the defaults: a
        restarted async task would lose its caller's reference.
        """
        _only_shutdown(self._options, "async_")
        return self._sup._start(fn, args, kwargs, self._options, link=True)

    def async_nolink(
        self, fn: Callable[..., object] | str, /, *args: object, **kwargs: object
    ) -> Task[Any]:
        """Start a supervised task not linked to the caller.

        Its failure never propagates to the caller's group; it comes back only
        through ``await_``/``yield_``. Only ``shutdown`` may differ from the defaults.
        """
        _only_shutdown(self._options, "async_nolink")
        return self._sup._start(fn, args, kwargs, self._options, link=False)

    def async_stream(
        self,
        fn: Callable[..., object] | str,
        iterable: Iterable[Any],
        *,
        max_concurrency: int | None = None,
        ordered: bool = True,
        timeout: float | None = 5.0,
        on_timeout: Literal["exit", "kill_task"] = "exit",
        zip_input_on_exit: bool = False,
        progress: object = False,
    ) -> Iterator[Reply[Any]]:
        """As ``Task.async_stream``, on this supervisor; a task failure raises."""
        spec = StreamSpec.build(
            max_concurrency, ordered, timeout, on_timeout, zip_input_on_exit, progress
        )
        return self._sup._stream(fn, iterable, self._options, True, spec)

    def async_stream_nolink(
        self,
        fn: Callable[..., object] | str,
        iterable: Iterable[Any],
        *,
        max_concurrency: int | None = None,
        ordered: bool = True,
        timeout: float | None = 5.0,
        on_timeout: Literal["exit", "kill_task"] = "exit",
        zip_input_on_exit: bool = False,
        progress: object = False,
    ) -> Iterator[Reply[Any]]:
        """As ``async_stream``, but a failed task yields ``Reply("exit", exc)``."""
        spec = StreamSpec.build(
            max_concurrency, ordered, timeout, on_timeout, zip_input_on_exit, progress
        )
        return self._sup._stream(fn, iterable, self._options, False, spec)


class TaskSupervisor(_Starting):
    """A named supervisor of tasks, each running in its own OS process.

    Children are started with ``start_child`` (fire and forget, restarted by their
    ``restart`` policy) or ``async_``/``async_nolink``/``async_stream`` (with a
    result; never restarted, as in Elixir: a restarted async task would lose its
    caller's reference). Closing the supervisor (or leaving its ``with`` block)
    stops every child: SIGTERM, then SIGKILL after the child's ``shutdown`` grace.

    Thread-safe. The restart intensity is the supervisor's, shared by its children,
    as in OTP. For a per-task retry loop with back-off instead, give a child
    ``options(max_retries=N, backoff=seconds)``: it retries on its own budget and
    never makes the supervisor give up.

    Args:
        name: The name to register under (default ``"TaskSupervisor-N"``). A name
            can be registered once at a time.
        max_workers: Worker processes of the supervisor's own pool (default: one
            per CPU). Ignored when ``pool`` is given.
        max_restarts: Restarts allowed across children within ``max_seconds``
            (default 3).
        max_seconds: The restart-intensity window in seconds (default 5.0).
        max_children: At most this many live children (default: no limit).
        pool: Run children on this pool instead of a new one; closing the
            supervisor then stops its children but leaves the pool running.

    Raises:
        ValueError: the name is taken, or a number is out of range.

    Example:
        >>> with TaskSupervisor("MyApp.TaskSupervisor", max_workers=1) as sup:
        ...     sup.async_(pow, 2, 8).await_()
        256
    """

    _registry: ClassVar[dict[str, TaskSupervisor]] = {}
    _registry_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(
        self,
        name: str | None = None,
        *,
        max_workers: int | None = None,
        max_restarts: int = 3,
        max_seconds: float = 5.0,
        max_children: int | None = None,
        pool: Pool | None = None,
    ) -> None:
        if name is not None and not isinstance(name, str):
            raise TypeError(f"name must be a string, got {name!r}")
        if max_children is not None:
            check_positive_int("max_children", max_children)
        defaults = TaskOptions.build(max_restarts=max_restarts, max_seconds=max_seconds)
        self.name = name or f"TaskSupervisor-{next(_ids)}"
        self._max_children = max_children
        self._options = defaults
        self._intensity = RestartIntensity(defaults.max_restarts, defaults.max_seconds)
        self._lock = threading.Lock()
        self._state = _State.RUNNING
        self._children: set[Task[Any]] = set()
        self._label = f"supervisor {self.name!r}"
        self._sup = self
        with TaskSupervisor._registry_lock:
            if self.name in TaskSupervisor._registry:
                raise ValueError(f"a TaskSupervisor named {self.name!r} is already running")
            TaskSupervisor._registry[self.name] = self
        self._owns_pool = pool is None
        try:
            self._pool = pool if pool is not None else Pool(max_workers, name=self.name)
        except BaseException:
            self._unregister()
            raise

    def __repr__(self) -> str:
        state, children = self._state.value, len(self._children)
        return f"<isopool.TaskSupervisor {self.name!r} {state} children={children}>"

    @classmethod
    def whereis(cls, name: str) -> TaskSupervisor | None:
        """Return the running supervisor registered as ``name``, or None."""
        with cls._registry_lock:
            sup = cls._registry.get(name)
        if sup is not None and sup._intensity.tripped:
            return None  # it gave up; its done-callbacks may not have run yet
        return sup

    @property
    def pool(self) -> Pool:
        """The pool the children run on."""
        return self._pool

    def options(
        self,
        *,
        restart: str | object = ...,
        shutdown: float | str | object = ...,
        timeout: float | object | None = ...,
        max_retries: int | object | None = ...,
        backoff: float | object = ...,
        memory_limit: int | str | object | None = ...,
        priority: int | object = ...,
    ) -> SupervisorOptions:
        """Return a view that starts children with these per-child options.

        Args:
            restart: ``"temporary"`` (default: never re-run), ``"transient"``
                (re-run after an abnormal exit: an exception, crash or time-out;
                returning or raising ``isopool.Shutdown`` is normal) or
                ``"permanent"`` (always re-run: a long-running loop). Only
                ``start_child`` accepts a policy other than temporary.
            shutdown: Seconds between SIGTERM and SIGKILL when the child is
                stopped (default 5.0), or ``"brutal_kill"``.
            timeout: Seconds a run may take (default None: no limit).
            max_retries: None (default) for the supervisor's restart intensity; a
                number for a per-child retry budget with exponential back-off.
            backoff: Seconds before the first retry with ``max_retries`` (default
                0.1), doubling each retry up to 60 s, with jitter.
            memory_limit: Bytes (or "512MB") a run may allocate.
            priority: 0 (most urgent) to 9 (default 5).
        """
        changes = {
            key: value
            for key, value in {
                "restart": restart,
                "shutdown": shutdown,
                "timeout": timeout,
                "max_retries": max_retries,
                "backoff": backoff,
                "memory_limit": memory_limit,
                "priority": priority,
            }.items()
            if value is not ...
        }
        return SupervisorOptions(self, self._options.replace(**changes))

    # -- children ------------------------------------------------------------------

    def children(self) -> list[Task[Any]]:
        """The children running now (not those waiting to start or to be restarted)."""
        with self._lock:
            children = list(self._children)
        return [t for t in children if t._running and not t.done()]

    def terminate_child(self, task: Task[Any]) -> bool:
        """Stop ``task`` (polite, then brutal per its ``shutdown``); it is not restarted.

        Returns:
            False if ``task`` is not a live child of this supervisor.
        """
        with self._lock:
            if task not in self._children:
                return False
        return task.kill(wait=True)

    def close(self) -> None:
        """Stop every child and, if the supervisor made its pool, shut the pool down."""
        with self._lock:
            if self._state is _State.CLOSED:
                return
            self._state = _State.CLOSED
            children = list(self._children)
        self._unregister()
        self._stop_children(children, None)
        if self._owns_pool:
            self._pool.terminate()

    def __enter__(self) -> TaskSupervisor:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- internals -------------------------------------------------------------------

    def _start(
        self,
        fn: Callable[..., object] | str,
        args: tuple[object, ...],
        kwargs: dict[str, object],
        options: TaskOptions,
        *,
        link: bool,
    ) -> Task[Any]:
        with self._lock:
            self._check_open_locked()
            live = sum(1 for child in self._children if not child.done())
            if self._max_children is not None and live >= self._max_children:
                raise MaxChildrenError(
                    f"{self._label} already runs max_children={self._max_children} children"
                )
            task = self._pool._submit(fn, args, kwargs, options, self._intensity, self._label)
            self._children.add(task)
        task.add_done_callback(self._on_child_done)
        if link:
            link_task(task)
        return task

    def _stream(
        self,
        fn: Callable[..., object] | str,
        iterable: Iterable[Any],
        options: TaskOptions,
        link: bool,
        spec: StreamSpec,
    ) -> Iterator[Reply[Any]]:
        _only_shutdown(options, "async_stream")

        def submit(
            fn: Callable[..., object] | str,
            args: tuple[object, ...],
            kwargs: dict[str, object],
            opts: TaskOptions | None,
        ) -> Task[Any]:
            return self._start(fn, args, kwargs, opts or options, link=False)

        return async_stream(submit, fn, iterable, spec, link=link, base=options)

    def _check_open_locked(self) -> None:
        if self._state is _State.GAVE_UP or self._intensity.tripped:
            raise RestartLimitError(
                f"{self._label} shut down after more than {self._intensity.max_restarts} "
                f"restarts within {self._intensity.max_seconds} s; start a new one"
            )
        if self._state is _State.CLOSED:
            raise PoolClosedError(f"{self._label} was closed")

    def _on_child_done(self, future: Future[Any]) -> None:
        if not isinstance(future, Task):
            return
        with self._lock:
            self._children.discard(future)
        if future.cancelled():
            return
        exc = future.exception(0)
        if isinstance(exc, RestartLimitError) and future.options.max_retries is None:
            self._give_up(exc)

    def _give_up(self, cause: RestartLimitError) -> None:
        """OTP's rule: the intensity was exceeded, so the supervisor shuts down."""
        with self._lock:
            if self._state is not _State.RUNNING:
                return
            self._state = _State.GAVE_UP
            children = list(self._children)
        log.warning(
            "%s: more than %d restarts within %s s; shutting down its %d other children",
            self._label,
            self._intensity.max_restarts,
            self._intensity.max_seconds,
            len(children),
        )
        error = RestartLimitError(
            f"{self._label} shut down: its restart intensity was exceeded ({cause})"
        )
        error.__cause__ = cause
        self._unregister()
        threading.Thread(
            target=self._stop_children,
            args=(children, error),
            name=f"isopool-give-up[{self.name}]",
            daemon=True,
        ).start()

    def _stop_children(self, children: list[Task[Any]], error: BaseException | None) -> None:
        stop_tasks(children, None, error)

    def _unregister(self) -> None:
        with TaskSupervisor._registry_lock:
            if TaskSupervisor._registry.get(self.name) is self:
                del TaskSupervisor._registry[self.name]


def _only_shutdown(options: TaskOptions, where: str) -> None:
    if options.restart != "temporary" or options.max_retries is not None:
        raise ValueError(
            f"{where} accepts only the shutdown option, as in Elixir: a restarted async "
            "task would lose its caller's reference; use start_child to restart"
        )


class SupervisorOptions(_Starting):
    """A view of a TaskSupervisor that starts children with other options."""

    def __init__(self, supervisor: TaskSupervisor, options: TaskOptions) -> None:
        self._sup = supervisor
        self._options = options

    def __repr__(self) -> str:
        return f"<isopool.SupervisorOptions of {self._sup!r} {self._options}>"

    def options(self, **changes: object) -> SupervisorOptions:
        """Return a view with ``changes`` applied on top of this one's options."""
        return SupervisorOptions(self._sup, self._options.replace(**changes))

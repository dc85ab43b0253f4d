"""The calling side of remote nodes: ``isopool.connect(url)`` and remote supervisors.

``cluster.supervisor("MyApp.TaskSupervisor", node="worker1")`` (or the tuple
``("MyApp.TaskSupervisor", "worker1")``, Elixir's ``{MyApp.TaskSupervisor, :"worker1@host"}``)
returns a RemoteSupervisor with the local one's ``async_``, ``async_nolink``,
``start_child``, ``async_stream`` and ``options``. Its calls go into that node's queue
for that supervisor (``_node``), so they run on that node and nowhere else, and come
back as RemoteTasks whose ``await_``/``yield_``/``shutdown`` work across machines.

A call to a node that is not alive fails at once with ``NodeDownError``; to a
supervisor the node does not run, with ``UnknownSupervisorError``. While a caller
waits, it watches the node's heartbeat: if the node dies, ``await_`` fails with
``NodeDownError`` and the job is cancelled, so it does not run later.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import CancelledError
from dataclasses import dataclass
from typing import Any, Final, Literal

from .._errors import NodeDownError, TaskTimeoutError, UnknownSupervisorError
from .._spec import check_positive_int, check_seconds, check_shutdown
from .._task import Reply
from .node import NODES_KEY, alive_key, queue_name
from .redis_queue import Job, JobOptions, RedisQueue

__all__ = ["Cluster", "NodeInfo", "RemoteSupervisor", "RemoteTask", "connect"]

_WATCH: Final = 0.25  # seconds between checks of the node's heartbeat while waiting


@dataclass(frozen=True, slots=True)
class NodeInfo:
    """A node as it registered: name, supervisors (with their options), and more."""

    name: str
    supervisors: Mapping[str, Mapping[str, object]]
    version: str
    fingerprint: str
    host: str
    pid: int
    alive: bool


def connect(
    url: str,
    *,
    secret: str | bytes | Mapping[str, str | bytes] | None = None,
    key_id: str | None = None,
    secret_file: str | None = None,
    cluster: bool = False,
) -> Cluster:
    """Return a handle on the nodes registered in the Redis at ``url``.

    The secret must be the one the nodes use (see ``RedisQueue``). A Redis Cluster
    is reached with a ``redis+cluster://`` URL or ``cluster=True``.
    """
    return Cluster(url, secret=secret, key_id=key_id, secret_file=secret_file, cluster=cluster)


class Cluster:
    """The nodes sharing one Redis; made by ``isopool.connect``."""

    def __init__(
        self,
        url: str,
        *,
        secret: str | bytes | Mapping[str, str | bytes] | None,
        key_id: str | None,
        secret_file: str | None,
        cluster: bool = False,
    ) -> None:
        from .redis_connect import connect as _connect
        from .signing import Keyring

        self.url = url
        self._secret = (secret, key_id, secret_file)
        Keyring.load(secret, key_id=key_id, secret_file=secret_file)  # no secret, no start
        self.redis: Any = _connect(url, cluster=cluster)
        self._queues: dict[str, RedisQueue] = {}

    def __repr__(self) -> str:
        return f"<isopool.Cluster at {self.url.split('@')[-1]}>"

    def nodes(self) -> list[NodeInfo]:
        """Every registered node, alive or not (``NodeInfo.alive``), by name."""
        raw = self.redis.hgetall(NODES_KEY)
        infos = []
        for name in sorted(raw):
            data = json.loads(raw[name])
            infos.append(
                NodeInfo(
                    name=data["name"],
                    supervisors=data["supervisors"],
                    version=data["version"],
                    fingerprint=data["fingerprint"],
                    host=data["host"],
                    pid=int(data["pid"]),
                    alive=bool(self.redis.exists(alive_key(data["name"]))),
                )
            )
        return infos

    def supervisor(self, name: str | tuple[str, str], node: str | None = None) -> RemoteSupervisor:
        """The supervisor ``name`` on ``node``; also ``supervisor(("Name", "node"))``.

        Raises:
            NodeDownError: the node is not alive.
            UnknownSupervisorError: the node runs no supervisor of that name.
        """
        if isinstance(name, tuple):
            if node is not None or len(name) != 2:
                raise TypeError("pass either (supervisor, node) or supervisor, node=...")
            name, node = name
        if node is None:
            raise TypeError("node= is required: a remote supervisor lives on one node")
        defaults = self._lookup(name, node)
        return RemoteSupervisor(self, name, node, JobOptions.build(**defaults))

    def _lookup(self, name: str, node: str) -> Mapping[str, object]:
        self.check_alive(node)
        raw = self.redis.hget(NODES_KEY, node)
        supervisors = json.loads(raw)["supervisors"] if raw else {}
        if name not in supervisors:
            raise UnknownSupervisorError(
                f"node {node!r} runs no supervisor named {name!r} (noproc); "
                f"it runs: {sorted(supervisors) or 'none'}"
            )
        options: Mapping[str, object] = supervisors[name]
        return options

    def check_alive(self, node: str) -> None:
        """Raise NodeDownError unless ``node``'s heartbeat is current."""
        if not self.redis.exists(alive_key(node)):
            raise NodeDownError(f"node {node!r} is not alive (no heartbeat in Redis)")

    def queue(self, supervisor: str, node: str) -> RedisQueue:
        """The queue that carries calls to ``supervisor`` on ``node``."""
        key = queue_name(node, supervisor)
        if key not in self._queues:
            secret, key_id, secret_file = self._secret
            self._queues[key] = RedisQueue(
                self.url,
                key,
                secret=secret,
                key_id=key_id,
                secret_file=secret_file,
                client=self.redis,
            )
        return self._queues[key]


class RemoteSupervisor:
    """A TaskSupervisor on another node, addressed by (name, node)."""

    def __init__(self, cluster: Cluster, name: str, node: str, defaults: JobOptions) -> None:
        self.cluster = cluster
        self.name = name
        self.node = node
        self._defaults = defaults

    def __repr__(self) -> str:
        return f"<isopool.RemoteSupervisor {self.name!r} on {self.node!r}>"

    def options(self, **changes: object) -> RemoteSupervisor:
        """A view whose calls use other options (restart, timeout, priority, ...)."""
        return RemoteSupervisor(self.cluster, self.name, self.node, self._defaults.merge(changes))

    def start_child(
        self, fn: Callable[..., object] | str, /, *args: object, **kwargs: object
    ) -> RemoteTask:
        """Start a child on the node with the supervisor's (or this view's) restart policy."""
        return self._call(fn, args, kwargs, self._defaults)

    def async_(
        self, fn: Callable[..., object] | str, /, *args: object, **kwargs: object
    ) -> RemoteTask:
        """Run ``fn`` on the node; await the returned RemoteTask. Never restarted."""
        return self._call(fn, args, kwargs, self._defaults.merge({"restart": "temporary"}))

    async_nolink = async_

    def async_stream(
        self,
        fn: Callable[..., object] | str,
        iterable: Iterable[Any],
        *,
        max_concurrency: int = 8,
        timeout: float | None = 5.0,
        on_timeout: Literal["exit", "kill_task"] = "exit",
        zip_input_on_exit: bool = False,
    ) -> Iterator[Reply[Any]]:
        """Run ``fn(item)`` on the node for each item; yield a Reply per item, in order.

        At most ``max_concurrency`` run at once; a failing item raises.
        """
        check_positive_int("max_concurrency", max_concurrency)
        if on_timeout not in ("exit", "kill_task"):
            raise ValueError(f"on_timeout must be 'exit' or 'kill_task', got {on_timeout!r}")
        return _stream(
            self, fn, iter(iterable), max_concurrency, timeout, on_timeout, zip_input_on_exit
        )

    def _call(
        self,
        fn: Callable[..., object] | str,
        args: tuple[object, ...],
        kwargs: dict[str, object],
        options: JobOptions,
    ) -> RemoteTask:
        self.cluster.check_alive(self.node)
        queue = self.cluster.queue(self.name, self.node)
        job = queue._enqueue(fn, args, kwargs, options)
        return RemoteTask(self, job)


class RemoteTask:
    """A task running on another node; ``await_``/``yield_``/``shutdown`` as locally."""

    def __init__(self, supervisor: RemoteSupervisor, job: Job) -> None:
        self.supervisor = supervisor
        self.job = job
        self._awaited = False

    def __repr__(self) -> str:
        return f"<isopool.RemoteTask {self.job.id} on {self.supervisor.node!r}>"

    @property
    def id(self) -> str:
        """The job id of this task in the node's queue."""
        return self.job.id

    def await_(self, timeout: float | None = 5.0) -> Any:  # noqa: ANN401 - the task's value
        """The result; on time-out the remote task is stopped and TaskTimeoutError raised.

        Raises:
            NodeDownError: the node stopped heart-beating while the task ran.
        """
        from concurrent.futures import InvalidStateError

        if self._awaited:
            raise InvalidStateError(f"remote task {self.id} was already awaited")
        self._awaited = True
        seconds = check_seconds("timeout", timeout)
        try:
            return self._wait(seconds)
        except TimeoutError:
            if self.job.status() in ("done", "failed", "dead"):
                raise
            self.job.cancel()
            raise TaskTimeoutError(
                f"remote task {self.id} on node {self.supervisor.node!r} did not reply within "
                f"{seconds} s; it was stopped",
                timeout=seconds,
            ) from None

    def yield_(self, timeout: float | None = 5.0) -> Reply[Any] | None:
        """A Reply if the task finished within ``timeout`` seconds, else None."""
        try:
            return Reply("ok", self._wait(check_seconds("timeout", timeout)))
        except TimeoutError:
            if self.job.status() not in ("done", "failed", "dead"):
                return None
            raise
        except CancelledError:
            return Reply("exit", "killed")
        except Exception as exc:
            return Reply("exit", exc)

    def shutdown(self, timeout: float | str = 5.0) -> Reply[Any] | None:
        """Stop the remote task; a Reply if it had finished (or raced in), else None."""
        check_shutdown(timeout)
        self.job.cancel()
        try:
            reply = self.yield_(10.0)
        except NodeDownError:
            return None
        if reply is not None and reply.value == "killed" and not reply.ok:
            return None  # stopped, as a local Task.shutdown reports it
        return reply

    def _wait(self, timeout: float | None) -> Any:  # noqa: ANN401 - the task's value
        deadline = None if timeout is None else time.monotonic() + timeout
        node = self.supervisor.node
        while True:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise TimeoutError(f"remote task {self.id} did not finish within {timeout} s")
            step = _WATCH if remaining is None else max(0.01, min(_WATCH, remaining))
            try:
                return self.job.result(step)
            except TimeoutError:
                if self.job.status() in ("done", "failed", "dead", "cancelled"):
                    continue
            try:
                self.supervisor.cluster.check_alive(node)
            except NodeDownError as exc:
                self.job.cancel()  # addressed to this node: never run it later
                raise NodeDownError(
                    f"node {node!r} went down while running remote task {self.id}"
                ) from exc


def _stream(
    sup: RemoteSupervisor,
    fn: Callable[..., object] | str,
    inputs: Iterator[Any],
    max_concurrency: int,
    timeout: float | None,
    on_timeout: str,
    zip_input_on_exit: bool,
) -> Iterator[Reply[Any]]:
    options = sup._defaults.merge({"restart": "temporary", "timeout": timeout})
    window: list[tuple[Any, RemoteTask]] = []
    try:
        while True:
            while len(window) < max_concurrency:
                item = next(inputs, _END)
                if item is _END:
                    break
                window.append((item, sup._call(fn, (item,), {}, options)))
            if not window:
                return
            item, task = window.pop(0)
            try:
                yield Reply("ok", task._wait(None))
            except TaskTimeoutError:
                if on_timeout == "exit":
                    raise
                yield Reply("exit", (item, "timeout") if zip_input_on_exit else "timeout")
    finally:
        for _item, task in window:
            task.job.cancel()


_END: Final = object()

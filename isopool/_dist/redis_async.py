"""AsyncRedisQueue: the queue's client for asyncio programs, on ``redis.asyncio``.

The convention: the same names as the blocking ``RedisQueue`` and ``Job``, and every
method that talks to Redis is a coroutine (``await queue.enqueue(...)``, ``await
job.status()``, ``await job.cancel()``); awaiting an ``AsyncJob`` itself is awaiting
its result (``await job`` is ``await job.result()``). Methods that only build
something (``options()``, ``job(id)``) stay plain. No method blocks the event loop:
each Redis round trip is awaited, and a result waiter parks in ``BLPOP`` on its own
connection from redis-py's pool.

What is said to Redis is the blocking client's, from ``_redis_common`` (key names,
signed calls, script arguments, key checks, result decoding) and ``_redis_lua`` (the
scripts); this module only awaits it. Every script runs through ``run``. A cluster URL
(``redis+cluster://``) or ``cluster=True`` gives ``redis.asyncio.cluster.RedisCluster``:
every script declares its keys and a queue is one slot, so nothing else differs.
"""

from __future__ import annotations

import asyncio
import datetime
import time
from collections.abc import Callable, Generator, Mapping
from typing import TYPE_CHECKING, Any

from .._errors import QueueUnavailableError
from .redis_common import FINAL, UNIQUE_ROUNDS, WAKE_TTL, JobOptions, QueueBase, redact, text
from .redis_connect import _CLUSTER_SCHEMES, SOCKET_TIMEOUT, _database, is_cluster_url
from .redis_lua import SCRIPTS
from .redis_queue import _due_at, _due_in, _now_ms
from .signing import Keyring

if TYPE_CHECKING:
    import redis.asyncio

__all__ = ["AsyncJob", "AsyncQueueOptions", "AsyncRedisQueue"]


class AsyncRedisQueue(QueueBase):
    """The asyncio client of a RedisQueue: enqueue, look up, await and cancel jobs.

    The same queue as ``RedisQueue(url, name)``, served by the same ``isopool
    worker`` processes; only the client side is asyncio. Creating one does no I/O:
    the first coroutine (or ``async with``) sets the queue up and checks the secret,
    as the blocking constructor does. Use one instance from one event loop.

    Args:
        url: A Redis URL: ``redis://host:6379/0``, or ``rediss://`` for TLS; a
            ``redis+cluster://`` (``rediss+cluster://``) URL names a Redis Cluster
            (any of its nodes), served through ``redis.asyncio.cluster.RedisCluster``.
        name: The queue's name.
        secret: The signing secret, or a mapping key id -> secret (as RedisQueue).
        key_id: Which key signs, when ``secret`` maps several.
        secret_file: A file holding the secret.
        client: An existing ``redis.asyncio.Redis`` (or ``RedisCluster``) to use
            instead of connecting.
        cluster: Talk to a Redis Cluster; implied by a cluster URL. Default False.

    Raises:
        ValueError: no secret, a bad option, or a database other than 0 on a cluster.

    Example:
        >>> async def main():                                     # doctest: +SKIP
        ...     async with isopool.AsyncRedisQueue(url, "images") as queue:
        ...         job = await queue.enqueue("myapp.tasks:resize", path)
        ...         return await job
    """

    def __init__(
        self,
        url: str,
        name: str,
        *,
        secret: str | bytes | Mapping[str, str | bytes] | None = None,
        key_id: str | None = None,
        secret_file: str | None = None,
        client: redis.asyncio.Redis | None = None,
        cluster: bool = False,
    ) -> None:
        super().__init__(url, name, Keyring.load(secret, key_id=key_id, secret_file=secret_file))
        if not isinstance(cluster, bool):
            raise TypeError(f"cluster must be True or False, got {cluster!r}")
        self.cluster = cluster or is_cluster_url(url)
        # Typed Any: redis-py's reply types depend on decode_responses (we use bytes).
        self.redis: Any = client if client is not None else _connect(url, self.cluster)
        self._scripts: dict[str, Any] = {
            k: self.redis.register_script(src) for k, src in SCRIPTS.items()
        }
        self._setup = asyncio.Lock()

    def __repr__(self) -> str:
        return f"<isopool.AsyncRedisQueue {self.name!r} at {redact(self.url)}>"

    async def __aenter__(self) -> AsyncRedisQueue:
        await self.connect()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def connect(self) -> None:
        """Set the queue up in Redis and check the secret (once; every method calls it).

        Raises:
            SignatureError: this secret is not the queue's for its key id.
            QueueUnavailableError: Redis cannot be reached.
        """
        async with self._setup:
            if self.epoch:
                return
            with self.translate_errors():
                pipe = self.redis.pipeline(transaction=False)
                self.queue_init(pipe)
                self.finish_init(await pipe.execute(raise_on_error=False))

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self.redis.aclose()

    # -- enqueueing -----------------------------------------------------------------

    async def enqueue(
        self, fn: Callable[..., object] | str, /, *args: object, **kwargs: object
    ) -> AsyncJob:
        """Queue ``fn(*args, **kwargs)``; return its AsyncJob (as ``RedisQueue.enqueue``).

        Raises:
            QueueUnavailableError: Redis is unreachable or lost the queue's state.
            SerializationError: the call cannot be pickled.
        """
        return await self._enqueue(fn, args, kwargs, self._options)

    async def enqueue_in(
        self, seconds: float, fn: Callable[..., object] | str, /, *args: object, **kwargs: object
    ) -> AsyncJob:
        """Queue ``fn(*args, **kwargs)`` to become runnable ``seconds`` from now.

        Raises:
            ValueError: ``seconds`` is negative or not a finite number.
        """
        return await self._enqueue(fn, args, kwargs, self._options, _due_in(seconds))

    async def enqueue_at(
        self,
        when: datetime.datetime | float,
        fn: Callable[..., object] | str,
        /,
        *args: object,
        **kwargs: object,
    ) -> AsyncJob:
        """Queue ``fn(*args, **kwargs)`` to become runnable at ``when``.

        Args:
            when: An aware ``datetime`` or a Unix time in seconds.
            fn: As in ``enqueue``.
            *args: Its positional arguments.
            **kwargs: Its keyword arguments.

        Raises:
            ValueError: ``when`` is a naive datetime.
        """
        return await self._enqueue(fn, args, kwargs, self._options, _due_at(when))

    def options(self, **options: object) -> AsyncQueueOptions:
        """Return a view that enqueues with other options (see ``JobOptions``)."""
        return AsyncQueueOptions(self, self._options.merge(options))

    async def _enqueue(
        self,
        fn: Callable[..., object] | str,
        args: tuple[object, ...],
        kwargs: dict[str, object],
        options: JobOptions,
        due: float | None = None,
    ) -> AsyncJob:
        job = self.prepare(fn, args, kwargs, options, due)
        unique = self.unique_key(job)
        for _attempt in range(UNIQUE_ROUNDS):
            held = "" if unique is None else await self._get_text(unique)
            keys, argv = self.enqueue_call(job, held)
            verdict, got = await self.run("enqueue", keys, *argv)
            if text(verdict) != "retry":
                return AsyncJob(self, text(got))
        raise QueueUnavailableError(  # pragma: no cover - needs a storm of racing writers
            f"could not take unique key {options.key!r} in {UNIQUE_ROUNDS} rounds"
        )

    # -- looking up ----------------------------------------------------------------------

    def job(self, job_id: str) -> AsyncJob:
        """The AsyncJob with this id (from any process); ``status()`` says if it exists."""
        return AsyncJob(self, job_id)

    async def check_epoch(self) -> None:
        """Raise QueueUnavailableError if Redis lost this queue's state since we started."""
        await self.connect()
        if await self._get_text(f"{self.prefix}:epoch") != self.epoch:
            with self.translate_errors():
                import redis

                raise redis.ResponseError("ISOPOOL_EPOCH queue state lost")

    # -- the one door to Redis's scripts -----------------------------------------------

    async def run(self, name: str, keys: list[str], *args: object) -> Any:  # noqa: ANN401
        """Run script ``name`` with the epoch key and its value first; map errors."""
        await self.connect()
        with self.translate_errors():
            return await self._scripts[name](
                keys=[f"{self.prefix}:epoch", *keys], args=[self.epoch, *args]
            )

    async def _call(self, command: str, *args: object) -> Any:  # noqa: ANN401 - a reply
        """Send one plain command (``"HGET"``...) once the queue is set up; map errors."""
        await self.connect()
        with self.translate_errors():
            return await getattr(self.redis, command)(*args)

    async def _get_text(self, key: str) -> str:
        return text(await self._call("get", key) or b"")


class AsyncQueueOptions:
    """A view of an AsyncRedisQueue that enqueues with other job options."""

    def __init__(self, queue: AsyncRedisQueue, options: JobOptions) -> None:
        self._queue = queue
        self.job_options = options

    async def enqueue(
        self, fn: Callable[..., object] | str, /, *args: object, **kwargs: object
    ) -> AsyncJob:
        """As ``AsyncRedisQueue.enqueue``, with this view's options."""
        return await self._queue._enqueue(fn, args, kwargs, self.job_options)

    async def enqueue_in(
        self, seconds: float, fn: Callable[..., object] | str, /, *args: object, **kwargs: object
    ) -> AsyncJob:
        """As ``AsyncRedisQueue.enqueue_in``, with this view's options."""
        return await self._queue._enqueue(fn, args, kwargs, self.job_options, _due_in(seconds))

    async def enqueue_at(
        self,
        when: datetime.datetime | float,
        fn: Callable[..., object] | str,
        /,
        *args: object,
        **kwargs: object,
    ) -> AsyncJob:
        """As ``AsyncRedisQueue.enqueue_at``, with this view's options."""
        return await self._queue._enqueue(fn, args, kwargs, self.job_options, _due_at(when))

    def options(self, **options: object) -> AsyncQueueOptions:
        """A view with more options changed."""
        return AsyncQueueOptions(self._queue, self.job_options.merge(options))


class AsyncJob:
    """A handle on one queued job for asyncio code; ``await job`` waits for its result.

    Cancelling the coroutine that awaits a job (``task.cancel()``, a time-out around
    it) stops the *waiting* only: the job itself keeps its place or keeps running on
    its worker, and its result can be awaited again. ``await job.cancel()`` is what
    cancels the job.

    Attributes:
        id: The job's id (a 32-character hex string).
    """

    def __init__(self, queue: AsyncRedisQueue, job_id: str) -> None:
        self.queue = queue
        self.id = job_id

    def __repr__(self) -> str:
        return f"<isopool.AsyncJob {self.id} in {self.queue.name!r}>"

    def __await__(self) -> Generator[Any, None, Any]:
        return self.result().__await__()

    @property
    def key(self) -> str:
        """The job's hash key in Redis."""
        return self.queue.job_key(self.id)

    async def status(self) -> str:
        """The job's state, as ``Job.status``: scheduled, queued, running, delayed, done..."""
        status = await self.queue._call("hget", self.key, "status")
        return text(status) if status else "missing"

    async def info(self) -> dict[str, str]:
        """The job's bookkeeping: status, attempts, deliveries, retries, reason, owner..."""
        raw = await self.queue._call("hgetall", self.key)
        skip = {b"payload", b"result"}
        return {k.decode(): v.decode() for k, v in raw.items() if k not in skip}

    async def cancel(self) -> bool:
        """Cancel the job: at once if it waits; a running job's worker stops it.

        As ``Job.cancel``: a scheduled, queued or retry-waiting job is cancelled at
        once; a running one is flagged, and its worker stops its process group within
        about a second and stores ``"cancelled"``.

        Returns:
            True if it is (or will be) cancelled; False if it already ended.

        Raises:
            JobNotFoundError: no job has this id in the queue (or it expired).
            QueueUnavailableError: Redis is unreachable or lost the queue's state.
        """
        queue = self.queue
        state = text(await queue.run("cancel", queue.cancel_keys(self.id), self.id, _now_ms()))
        if state == "missing":
            await queue.check_epoch()
            raise queue.missing_error(self.id)
        if state == "cancelled" and (key := await queue._call("hget", self.key, "key")):
            keys = queue.unique_release_keys(text(key), self.id)
            await queue.run("unique_release", keys, self.id, _now_ms())
        return state in ("cancelled", "cancelling")

    async def result(self, timeout: float | None = None) -> Any:  # noqa: ANN401 - its value
        """Wait for the job's result without blocking the loop; raise its own exception.

        Cancelling this coroutine does not cancel the job (``cancel()`` does).

        Raises:
            TimeoutError: not finished within ``timeout`` seconds (the job keeps going).
            CancelledError: the job was cancelled (``concurrent.futures``'s, which is
                not ``asyncio.CancelledError``: it does not cancel the awaiting task).
            SignatureError: the stored result's signature is wrong (never unpickled).
            JobNotFoundError: no job has this id (never enqueued, or expired).
            QueueUnavailableError: Redis is unreachable or lost the queue's state.
            BaseException: what the job raised, with its remote traceback as cause.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        queue, done_key = self.queue, self.queue.done_key(self.id)
        while True:
            status, kind, blob, reason = await queue._call(
                "hmget", self.key, "status", "kind", "result", "reason"
            )
            state = status.decode() if status else "missing"
            if state == "missing":
                await queue.check_epoch()
                raise queue.missing_error(self.id)
            if state in FINAL:
                return queue.outcome(self.id, state, kind, blob, reason)
            wait = queue.next_wait(self.id, state, deadline, timeout)
            if await queue._call("blpop", [done_key], wait):
                await queue._call("rpush", done_key, "1")  # wake the other waiters too
                await queue._call("expire", done_key, WAKE_TTL)


def _connect(url: str, cluster: bool) -> Any:  # noqa: ANN401 - Redis or RedisCluster
    """An asyncio client for ``url``: ``Redis``, or ``RedisCluster`` for a cluster."""
    try:
        import redis.asyncio
        from redis.asyncio.cluster import RedisCluster
    except ImportError as exc:
        raise ImportError(
            "isopool's Redis queue needs redis-py: pip install 'isopool[redis]'"
        ) from exc
    options: dict[str, Any] = {"socket_connect_timeout": 5.0, "socket_timeout": SOCKET_TIMEOUT}
    if not cluster:
        return redis.asyncio.Redis.from_url(url, health_check_interval=10, **options)
    scheme, sep, rest = url.partition("://")
    plain = f"{_CLUSTER_SCHEMES.get(scheme.lower(), scheme)}{sep}{rest}"
    db = _database(plain)
    if db not in (None, 0):
        raise ValueError(
            f"a Redis Cluster has only database 0, but the URL {redact(url)} asks for database {db}"
        )
    return RedisCluster.from_url(plain, **options)

"""RedisQueue: a job queue shared through Redis that loses nothing, and its Jobs.

Keys of one queue share the hash tag ``{NAME}``, so they live in one Redis Cluster
slot::

    isopool:{NAME}:epoch        a random token written once: if it vanishes, the
                                server lost its data and the queue says so
    isopool:{NAME}:jobs:B       one stream per priority band B (0 most urgent .. 9),
                                consumer group "workers"; an entry carries a job id
    isopool:{NAME}:job:ID       the job: signed call, options, status, deliveries,
                                attempts, its current stream entry, signed result
    isopool:{NAME}:delayed      jobs waiting out a retry back-off (score: due, ms)
    isopool:{NAME}:scheduled    jobs enqueued for later (``enqueue_in``/``enqueue_at``;
                                score: due, ms); apart from retries, so each is counted
    isopool:{NAME}:unique:KEY   the id of the job that holds uniqueness key KEY
    isopool:{NAME}:dead         the dead-letter stream: job id and reason
    isopool:{NAME}:done:ID      a wake-up list for ``Job.result`` waiters
    isopool:{NAME}:keycheck     key id -> a check value of its secret, written by
                                the first client or worker with that key id: a
                                later one whose secret differs refuses to start

Delivery is at least once, with exactly one committed result. A worker's lease on a
job is its entry in the group's pending list: the worker renews it (resets its idle
time) while the job runs; a dead worker stops renewing, and after ``lease`` seconds
another worker claims the entry (``XCLAIM`` with a min-idle-time: no lock a dead
worker could leave behind). Starting, renewing, finishing, retrying, handing back and
dead-lettering are each one Lua script (``_redis_lua``) that checks, server-side and
atomically, that the caller still owns the entry; a worker that lost its lease cannot
write a result.

A scheduled job is a job hash with status ``scheduled`` and an entry in the scheduled
set; every worker moves due jobs (and due retries) into their band's stream, in one
script that re-checks each, so a job due while every worker was down runs when the
first one comes back, once. A unique key is taken in the enqueue script itself: it
holds while its job is not final, and ``unique_for`` after the job's ``ended`` time;
two clients racing on one key get the same job id.

Redis Cluster (``redis+cluster://`` or ``cluster=True``: redis-py's ``RedisCluster``):
a queue is one slot, every script declares its keys (``_redis_lua``), and no multi-key
command or pipeline spans two queues. Replication is asynchronous, so on a cluster
``enqueue`` waits (``WAIT``) for a replica to have the job before it returns; the
workers' writes do not wait, since losing one re-runs a job and never loses it.

Every client call has a deadline (``Job.result``'s ``timeout``, else ``redis_timeout``
from the first failure): each try runs on a client whose socket time-out fits in the
time left (``bounded``), and lost connections are retried until then (``retrying``),
so a stalled or failing-over Redis holds no caller past its deadline.

Payloads are signed (``_signing``) over their bytes, the queue name, the job id and
their kind, and verified before anything is unpickled. A wrong secret is caught at
start by the key check (``SignatureError`` naming the queue and key id), so it can
never make a worker dead-letter the queue's valid jobs as forged. Redis is imported lazily:
the core of isopool works without it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import functools
import logging
import math
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Final

from .._errors import (
    QueueUnavailableError,
)
from .._spec import MAX_PRIORITY, check_duration, check_positive_int, check_seconds
from .redis_common import FINAL as FINAL
from .redis_common import GROUP as GROUP
from .redis_common import MAX_PAYLOAD_BYTES as MAX_PAYLOAD_BYTES
from .redis_common import POLL_CAP, UNIQUE_ROUNDS, WAKE_TTL, JobOptions, QueueBase, text
from .redis_connect import (
    SOCKET_TIMEOUT,
    _is_cluster_client,
    _naming_database,
    _redact,
    _refused,
    _state_lost,
    _warn_if_volatile,
    is_cluster_url,
)
from .redis_connect import connect as _connect
from .redis_lua import SCRIPTS as _SCRIPTS
from .schedules import Schedule
from .signing import Keyring

if TYPE_CHECKING:
    import redis

__all__ = ["DeadLetter", "Job", "JobOptions", "QueueOptions", "RedisQueue", "Schedule"]

log = logging.getLogger(__name__)

# Socket time-outs of the extra clients that bound a call by its caller's deadline: a
# call with R seconds left uses the longest one under R, so a stalled Redis cannot hold
# it much past its deadline (one client, one connection pool per value, made lazily).
_BOUNDS: Final = (0.25, 0.5, 1.0, 2.0, 5.0, 10.0)
_RETRY_CAP: Final = 0.5  # the longest pause between tries of a call that must finish
# How long an enqueue waits for a replica to have the job (Redis WAIT). A replica on
# the same network acknowledges within a millisecond; 100 ms bounds what a missing or
# lagging replica costs each enqueue (and is logged).
_WAIT_MS: Final = 100


@dataclasses.dataclass(frozen=True, slots=True)
class DeadLetter:
    """A job in the dead-letter stream: why it is there, and when (Unix seconds)."""

    job_id: str
    reason: str
    at: float


class RedisQueue(QueueBase):
    """A priority job queue shared through Redis by any number of isopool workers.

    Enqueue from anywhere; run ``isopool worker --redis URL --queue NAME`` on as many
    machines as you like. Each job runs in its own process on some worker; its
    result comes back signed, with its original type (and remote traceback).

    Args:
        url: A Redis URL: ``redis://host:6379/0``, or ``rediss://`` for TLS.
        name: The queue's name; its keys share the hash tag ``{name}``.
        secret: The signing secret (str or bytes, 16+ bytes), or a mapping key id ->
            secret for rotation. Default: ``secret_file``, or the environment
            (``ISOPOOL_SECRET`` / ``ISOPOOL_SECRET_FILE``). No secret, no start.
        key_id: Which key signs, when ``secret`` maps several.
        secret_file: A file holding the secret.
        lease: Seconds a worker may go silent before its job is handed to another
            (default 30; workers renew every third of it).
        max_deliveries: The crash budget: deliveries lost to crashes (the job's
            process died, its worker died or lost the lease) a job may have before
            it goes to the dead-letter stream as ``delivery-limit`` (default 3).
            Retries after the job raised are counted apart (``JobOptions``).
        client: An existing ``redis.Redis`` (or ``RedisCluster``) to use instead of
            connecting to ``url``.
        cluster: Talk to a Redis Cluster (redis-py's ``RedisCluster``); implied by a
            ``redis+cluster://`` or ``rediss+cluster://`` URL. Any node of the
            cluster will do as the URL's host; the client follows slot moves and
            failovers. Default False.
        redis_timeout: Seconds a call of this client (``enqueue``, ``Job.status``,
            ``Job.cancel``...) may keep retrying an unreachable or stalled Redis
            (a restart, a failover) before it raises ``QueueUnavailableError``
            (default 30). ``Job.result(timeout=T)`` keeps to its own ``T``.
        replicas: How many replicas must have a new job before ``enqueue`` returns
            (Redis ``WAIT``, up to 100 ms; a shortfall is logged, not raised), so
            that a failover right after it cannot lose the job. Default: 1 on a
            cluster, 0 otherwise. Pass 0 for a cluster without replicas.
        keycheck: Record and check this secret's key check with the queue at start
            (default True; see ``SignatureError`` below). False is for a client that
            signs and verifies nothing, such as the dashboard with its throwaway key.

    Raises:
        ValueError: no secret, a bad option, or a database number the server does
            not have.
        SignatureError: the secret of a key id is not the one the queue's other
            clients and workers use (its key check differs); nothing was taken.
        QueueUnavailableError: Redis cannot be reached, or it lost this queue's
            state (its epoch key vanished while this process was using it).
    """

    def __init__(
        self,
        url: str,
        name: str,
        *,
        secret: str | bytes | Mapping[str, str | bytes] | None = None,
        key_id: str | None = None,
        secret_file: str | None = None,
        lease: float = 30.0,
        max_deliveries: int = 3,
        client: redis.Redis | None = None,
        cluster: bool = False,
        redis_timeout: float = SOCKET_TIMEOUT,
        replicas: int | None = None,
        keycheck: bool = True,
    ) -> None:
        keys = Keyring.load(secret, key_id=key_id, secret_file=secret_file)
        super().__init__(url, name, keys, keycheck=keycheck)
        self.lease = check_duration("lease", lease)
        if self.lease < 1.0:
            raise ValueError(f"lease must be at least 1 second, got {lease!r}")
        self.max_deliveries = check_positive_int("max_deliveries", max_deliveries)
        self.redis_timeout = check_duration("redis_timeout", redis_timeout)
        if not isinstance(cluster, bool):
            raise TypeError(f"cluster must be True or False, got {cluster!r}")
        # Typed Any: redis-py's reply types depend on decode_responses (we use bytes).
        self.cluster = cluster or is_cluster_url(url) or _is_cluster_client(client)
        if replicas is None:
            replicas = 1 if self.cluster else 0
        self.replicas = check_positive_int("replicas", replicas, allow_zero=True)
        self._bounded: dict[float, Any] = {}
        self._connect_url = None if client is not None else url
        self.redis: Any = client if client is not None else _connect(url, cluster=self.cluster)
        self._scripts: dict[str, Any] = {
            k: self.redis.register_script(src) for k, src in _SCRIPTS.items()
        }
        with _naming_database(url), self.translate_errors():
            self.epoch = self._init_state()

    def __repr__(self) -> str:
        return f"<isopool.RedisQueue {self.name!r} at {_redact(self.url)}>"

    # -- enqueueing -------------------------------------------------------------------

    def enqueue(self, fn: Callable[..., object] | str, /, *args: object, **kwargs: object) -> Job:
        """Queue ``fn(*args, **kwargs)`` with the queue's default options; return its Job.

        Prefer ``"package.module:function"`` names (the workers must be able to import
        them); a pickled callable (even a closure) is allowed because it is signed.

        Raises:
            QueueUnavailableError: Redis is unreachable or lost the queue's state.
            SerializationError: the call cannot be pickled.
        """
        return self._enqueue(fn, args, kwargs, self._options)

    def enqueue_in(
        self, seconds: float, fn: Callable[..., object] | str, /, *args: object, **kwargs: object
    ) -> Job:
        """Queue ``fn(*args, **kwargs)`` to become runnable ``seconds`` from now.

        Until then its status is ``"scheduled"`` and ``Job.cancel()`` ends it. The job
        waits in Redis, not in a worker: workers that are down at that time run it
        when they come back.

        Raises:
            ValueError: ``seconds`` is negative or not a finite number.
            QueueUnavailableError: Redis is unreachable or lost the queue's state.
        """
        return self._enqueue(fn, args, kwargs, self._options, due=_due_in(seconds))

    def enqueue_at(
        self,
        when: datetime.datetime | float,
        fn: Callable[..., object] | str,
        /,
        *args: object,
        **kwargs: object,
    ) -> Job:
        """Queue ``fn(*args, **kwargs)`` to become runnable at ``when``.

        Args:
            when: An aware ``datetime`` or a Unix time in seconds; a time in the past
                makes the job runnable at once.
            fn: As in ``enqueue``.
            *args: Its positional arguments.
            **kwargs: Its keyword arguments.

        Raises:
            ValueError: ``when`` is a naive datetime (its time zone would be a guess).
            TypeError: ``when`` is neither a datetime nor a number.
        """
        return self._enqueue(fn, args, kwargs, self._options, due=_due_at(when))

    def schedule(
        self,
        cron: str,
        fn: Callable[..., object] | str,
        /,
        *args: object,
        name: str | None = None,
        tz: str | None = None,
        **kwargs: object,
    ) -> Schedule:
        """Run ``fn(*args, **kwargs)`` on a cron schedule: one job per tick, queue-wide.

        The schedule lives in Redis: every ``isopool worker`` of the queue fires it,
        and however many workers (or clients) declare it, each tick enqueues exactly
        one job. Declaring it again with the same definition keeps its next tick;
        with another one, replaces it. Ticks missed while every worker was down are
        run once, late, when the first worker comes back: never a burst.

        Args:
            cron: Five fields (``"*/5 * * * *"``), a shorthand (``"@daily"``), or
                either behind ``CRON_TZ=Area/City``.
            fn: As in ``enqueue``.
            *args: Its positional arguments.
            name: The schedule's name (default: the function's "module:function").
            tz: The IANA time zone the fields are read in (default UTC).
            **kwargs: Its keyword arguments.

        Returns:
            The schedule as stored, with its next run time.

        Raises:
            ValueError: a bad cron expression, naming the field, or unknown zone.
        """
        from .schedules import define

        return define(self, cron, fn, args, kwargs, self._options, name, tz)

    def unschedule(self, name: str) -> bool:
        """Remove schedule ``name``; True if it existed (its jobs stay)."""
        from .schedules import remove

        return remove(self, name)

    def schedules(self) -> list[Schedule]:
        """The queue's schedules with their next run times, soonest first."""
        from .schedules import list_schedules

        return list_schedules(self)

    def options(self, **options: object) -> QueueOptions:
        """Return a view that enqueues with other options (see ``JobOptions``)."""
        return QueueOptions(self, self._options.merge(options))

    def _enqueue(
        self,
        fn: Callable[..., object] | str,
        args: tuple[object, ...],
        kwargs: dict[str, object],
        options: JobOptions,
        due: float | None = None,
    ) -> Job:
        job = self.prepare(fn, args, kwargs, options, due)
        unique = self.unique_key(job)
        deadline = time.monotonic() + self.redis_timeout

        # Safe to retry after a lost reply: the script does nothing if the job exists.
        def attempt(r: Any) -> Any:  # noqa: ANN401 - a Redis reply
            held = "" if unique is None else text(r.get(unique) or b"")
            keys, argv = self.enqueue_call(job, held)
            run = self.run if not self.replicas else functools.partial(self.replicated, r)
            return run("enqueue", keys, *argv, client=r)

        for _attempt in range(UNIQUE_ROUNDS):
            verdict, got = self.retrying(attempt, deadline)
            if text(verdict) != "retry":
                return Job(self, text(got))
        raise QueueUnavailableError(  # pragma: no cover - needs a storm of racing writers
            f"could not take unique key {options.key!r} in {UNIQUE_ROUNDS} rounds"
        )

    # -- looking jobs up ------------------------------------------------------------------

    def job(self, job_id: str) -> Job:
        """The Job with this id (from any process); its ``status()`` says if it exists."""
        return Job(self, job_id)

    def dead_letters(self, count: int = 100) -> list[DeadLetter]:
        """The oldest ``count`` entries of the dead-letter stream."""
        with self.translate_errors():
            entries = self.redis.xrange(f"{self.prefix}:dead", count=count)
        return [
            DeadLetter(
                job_id=fields[b"id"].decode(),
                reason=fields[b"reason"].decode(),
                at=int(fields[b"at"]) / 1000,
            )
            for _entry, fields in entries
        ]

    def requeue(self, job_id: str) -> bool:
        """Put a dead, failed or cancelled job back in its queue with fresh counters."""
        streams = [self.stream(b) for b in range(MAX_PRIORITY + 1)]
        with self.translate_errors():
            return bool(self.run("requeue", [self.job_key(job_id), *streams], job_id))

    def pending(self) -> int:
        """Jobs waiting in the streams (not yet delivered) across all bands."""
        with self.translate_errors():
            pipe = self.redis.pipeline(transaction=False)
            for band in range(MAX_PRIORITY + 1):
                pipe.xinfo_groups(self.stream(band))
            total = 0
            for groups in pipe.execute():
                for group in groups:
                    total += int(group.get("lag") or 0)
        return total

    def check_epoch(self) -> None:
        """Raise QueueUnavailableError if Redis lost this queue's state since we started."""
        with self.translate_errors():
            epoch = self.redis.get(f"{self.prefix}:epoch")
        if epoch is None or epoch.decode() != self.epoch:
            with self.translate_errors():
                raise _redis_error("ISOPOOL_EPOCH queue state lost")

    def close(self) -> None:
        """Close the connection pools (the queue's, and those of its bounded clients)."""
        for client in self._bounded.values():
            client.close()
        self._bounded.clear()
        self.redis.close()

    # -- shared with Job and the worker -------------------------------------------------

    def scheduled(self) -> int:
        """Jobs waiting for their time (``enqueue_in``/``enqueue_at``), not retries."""
        with self.translate_errors():
            return int(self.redis.zcard(f"{self.prefix}:scheduled"))

    def promote(self, now_ms: int, limit: int = 100) -> int:
        """Queue the retries and scheduled jobs that are due; return how many moved."""
        delayed, scheduled = f"{self.prefix}:delayed", f"{self.prefix}:scheduled"
        with self.translate_errors():
            pipe = self.redis.pipeline(transaction=False)
            pipe.zrangebyscore(delayed, "-inf", now_ms, start=0, num=limit)
            pipe.zrangebyscore(scheduled, "-inf", now_ms, start=0, num=limit)
            ids = list(dict.fromkeys(text(i) for got in pipe.execute() for i in got))
            if not ids:
                return 0
            streams = [self.stream(b) for b in range(MAX_PRIORITY + 1)]
            jobs = [self.job_key(i) for i in ids]
            return int(self.run("promote", [delayed, scheduled, *streams, *jobs], now_ms, *ids))

    def release_unique(self, key: str, job_id: str) -> None:
        """Let uniqueness key ``key`` expire now that job ``job_id`` ended (tidying only)."""
        with self.translate_errors():
            self.run("unique_release", self.unique_release_keys(key, job_id), job_id, _now_ms())

    def run(
        self,
        name: str,
        keys: list[str],
        *args: object,
        client: Any = None,  # noqa: ANN401 - redis.Redis, RedisCluster or a pipeline
    ) -> Any:  # noqa: ANN401 - a Redis reply
        """Run script ``name`` on ``keys``, every key it touches (see ``_redis_lua``).

        The epoch key and value come first; ``client`` (default: the queue's) runs it.
        """
        return self._scripts[name](
            keys=[f"{self.prefix}:epoch", *keys], args=[self.epoch, *args], client=client
        )

    def replicated(
        self,
        r: Any,  # noqa: ANN401 - redis.Redis or RedisCluster
        name: str,
        keys: list[str],
        *args: object,
        client: Any = None,  # noqa: ANN401 - unused: the script runs on the keys' master
    ) -> Any:  # noqa: ANN401 - a Redis reply
        """Run script ``name``, then WAIT for ``replicas`` replicas to have its writes.

        WAIT counts the writes of its own connection, so both go in one pipeline on
        the connection of the master that holds ``keys`` (one slot: one master).
        """
        import redis

        node = r.get_node_from_key(keys[0]).redis_connection if self.cluster else r
        pipe = node.pipeline(transaction=False)
        self.run(name, keys, *args, client=pipe)
        pipe.execute_command("WAIT", self.replicas, _WAIT_MS)
        try:
            reply, acked = pipe.execute()
        except (redis.ConnectionError, redis.TimeoutError, redis.exceptions.MovedError):
            if self.cluster:  # a failover moved the slot: read the map again, then retry
                with contextlib.suppress(Exception):
                    r.nodes_manager.initialize()
            raise
        if int(acked) < self.replicas:
            log.warning(
                "queue %r: %d of %d replicas had the job after %d ms; a failover now "
                "could lose it (pass replicas=0 if the servers have no replicas)",
                self.name,
                int(acked),
                self.replicas,
                _WAIT_MS,
            )
        return reply

    def bounded(self, remaining: float | None) -> tuple[Any, float]:
        """A client whose socket time-out fits in ``remaining`` seconds, and that time-out.

        None (no deadline), a long deadline, or a queue made on a caller's ``client``
        get the main client.
        """
        if remaining is None or self._connect_url is None or remaining >= SOCKET_TIMEOUT:
            return self.redis, SOCKET_TIMEOUT
        fit = max((b for b in _BOUNDS if b <= remaining), default=_BOUNDS[0])
        client = self._bounded.get(fit)
        if client is None:
            # A cluster client starts from every node the main one knows: the URL's
            # host may be the master that just died.
            nodes = self.redis.get_nodes() if self.cluster else []
            client = _connect(
                self._connect_url, cluster=self.cluster, socket_timeout=fit, nodes=nodes
            )
            self._bounded[fit] = client
        return client, fit

    def retrying(self, call: Callable[[Any], Any], deadline: float | None = None) -> Any:  # noqa: ANN401
        """``call(client)`` until it succeeds; QueueUnavailableError once it cannot in time.

        Each try gets a client whose socket time-out fits in what is left before
        ``deadline`` (a ``time.monotonic()`` value; default: ``redis_timeout`` from
        now). A lost or refused connection (a restart, a failover, a stall) is tried
        again after a short pause; a lost queue state or any other error is raised
        at once.
        """
        pause = 0.02
        give_up = time.monotonic() + self.redis_timeout if deadline is None else deadline
        while True:
            client, _bound = self.bounded(give_up - time.monotonic())
            try:
                with self.translate_errors():
                    return call(client)
            except QueueUnavailableError as exc:
                if _state_lost(exc) or _refused(exc):
                    raise
                left = give_up - time.monotonic()
                if left <= 0:
                    raise
                log.debug("queue %r: %s; retrying", self.name, exc)
                time.sleep(min(pause, left))
                pause = min(_RETRY_CAP, pause * 2)

    def worker_keys(self, band: int, job_id: str) -> list[str]:
        """KEYS of START and FINISH for job ``job_id`` in band ``band`` (after the epoch)."""
        p, job = self.prefix, self.job_key(job_id)
        return [self.stream(band), job, f"{p}:delayed", f"{p}:dead", self.done_key(job_id)]

    def _init_state(self) -> str:
        """Set the queue up once and check our secrets; warn when Redis may forget."""
        pipe = self.redis.pipeline(transaction=False)
        self.queue_init(pipe)
        self.finish_init(pipe.execute(raise_on_error=False))
        _warn_if_volatile(self.redis, self.name)
        return self.epoch


class QueueOptions:
    """A view of a RedisQueue that enqueues with other job options."""

    def __init__(self, queue: RedisQueue, options: JobOptions) -> None:
        self._queue = queue
        self.job_options = options

    def enqueue(self, fn: Callable[..., object] | str, /, *args: object, **kwargs: object) -> Job:
        """As ``RedisQueue.enqueue``, with this view's options."""
        return self._queue._enqueue(fn, args, kwargs, self.job_options)

    def enqueue_in(
        self, seconds: float, fn: Callable[..., object] | str, /, *args: object, **kwargs: object
    ) -> Job:
        """As ``RedisQueue.enqueue_in``, with this view's options."""
        return self._queue._enqueue(fn, args, kwargs, self.job_options, due=_due_in(seconds))

    def enqueue_at(
        self,
        when: datetime.datetime | float,
        fn: Callable[..., object] | str,
        /,
        *args: object,
        **kwargs: object,
    ) -> Job:
        """As ``RedisQueue.enqueue_at``, with this view's options."""
        return self._queue._enqueue(fn, args, kwargs, self.job_options, due=_due_at(when))

    def schedule(
        self,
        cron: str,
        fn: Callable[..., object] | str,
        /,
        *args: object,
        name: str | None = None,
        tz: str | None = None,
        **kwargs: object,
    ) -> Schedule:
        """As ``RedisQueue.schedule``, each tick's job with this view's options."""
        from .schedules import define

        return define(self._queue, cron, fn, args, kwargs, self.job_options, name, tz)

    def options(self, **options: object) -> QueueOptions:
        """A view with more options changed."""
        return QueueOptions(self._queue, self.job_options.merge(options))


class Job:
    """A handle on one queued job, by its stable id; any process can make one.

    Attributes:
        id: The job's id (a 32-character hex string).
    """

    def __init__(self, queue: RedisQueue, job_id: str) -> None:
        self.queue = queue
        self.id = job_id

    def __repr__(self) -> str:
        return f"<isopool.Job {self.id} in {self.queue.name!r}>"

    @property
    def key(self) -> str:
        """The job's hash key in Redis."""
        return f"{self.queue.prefix}:job:{self.id}"

    def status(self) -> str:
        """The job's state: scheduled, queued, running, delayed, done, failed, dead...

        One of scheduled (waiting for its time), queued, running, delayed (waiting
        out a retry back-off, or handed back a moment by a worker that lacks its
        signing key), done, failed, dead, cancelled, or missing.
        """
        status = self.queue.retrying(lambda r: r.hget(self.key, "status"))
        return status.decode() if status else "missing"

    def info(self) -> dict[str, str]:
        """The job's bookkeeping: status, deliveries, retries, attempts, reason, owner...

        ``deliveries`` minus ``retries`` is the deliveries lost to crashes (see
        ``JobOptions``); ``retries`` is absent until the first retry.
        """
        raw = self.queue.retrying(lambda r: r.hgetall(self.key))
        skip = {b"payload", b"result"}
        return {k.decode(): v.decode() for k, v in raw.items() if k not in skip}

    def cancel(self) -> bool:
        """Cancel the job: at once if it waits; a running job's worker stops it.

        A scheduled, queued or retry-waiting job is cancelled at once. A running job
        is flagged: the worker running it (on whatever machine) sees the flag within
        about a second, stops the job's process and its process group (SIGTERM, then
        SIGKILL after 5 s), and stores the status ``"cancelled"``. A cancelled job is
        never delivered again (unless ``RedisQueue.requeue`` puts it back). If the run
        finishes before the worker sees the flag, its result stands.

        Returns:
            True if it is (or will be) cancelled; False if it already ended.

        Raises:
            JobNotFoundError: no job has this id in the queue (or it expired).
            QueueUnavailableError: Redis is unreachable or lost the queue's state.
        """
        keys = self.queue.cancel_keys(self.id)
        state = text(
            self.queue.retrying(
                lambda r: self.queue.run("cancel", keys, self.id, _now_ms(), client=r)
            )
        )
        if state == "missing":
            self.queue.check_epoch()
            raise self.queue.missing_error(self.id)
        with self.queue.translate_errors():
            if state == "cancelled" and (key := self.queue.redis.hget(self.key, "key")):
                self.queue.release_unique(text(key), self.id)
        return state in ("cancelled", "cancelling")

    def result(self, timeout: float | None = None) -> Any:  # noqa: ANN401 - the job's value
        """Wait for the job's result; raise its exception with its own type.

        The deadline holds while Redis is stalled or failing over: every read gets a
        socket time-out that fits in the time left, and lost connections are tried
        again until then.

        Raises:
            TimeoutError: not finished within ``timeout`` seconds (the job keeps going).
            CancelledError: the job was cancelled.
            SignatureError: the stored result's signature is wrong (it is never
                unpickled).
            JobNotFoundError: no job has this id (never enqueued, or expired).
            QueueUnavailableError: Redis was unreachable until the deadline (with no
                ``timeout``: for the queue's ``redis_timeout``), or lost the job.
            BaseException: what the job raised, or the isopool error that ended it
                (TaskCrashError, TaskTimeoutError, RestartLimitError...).
        """
        timeout = check_seconds("timeout", timeout)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            status, kind, blob, reason = self.queue.retrying(
                lambda r: r.hmget(self.key, "status", "kind", "result", "reason"), deadline
            )
            state = status.decode() if status else "missing"
            if state == "missing":
                self.queue.check_epoch()
                raise self.queue.missing_error(self.id)
            if state in FINAL:
                return self.queue.outcome(self.id, state, kind, blob, reason)
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise TimeoutError(f"job {self.id} did not finish within {timeout} s ({state})")
            self.queue.retrying(lambda r: self._wait_done(r, deadline), deadline)

    def _wait_done(self, r: Any, deadline: float | None) -> None:  # noqa: ANN401 - a client
        """Block on the job's wake-up list for up to a second (before ``deadline``)."""
        remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
        bound = self.queue.bounded(remaining)[1]
        cap = min(POLL_CAP, bound / 2, POLL_CAP if remaining is None else remaining)
        done_key = self.queue.done_key(self.id)
        if r.blpop([done_key], timeout=max(0.01, cap)):
            r.rpush(done_key, "1")  # wake the other waiters too
            r.expire(done_key, WAKE_TTL)


def _redis_error(message: str) -> Exception:
    import redis

    return redis.ResponseError(message)


def _now_ms() -> int:
    return int(time.time() * 1000)


def _due_in(seconds: object) -> float:
    """The Unix time ``seconds`` from now."""
    return time.time() + check_duration("seconds", seconds)


def _due_at(when: object) -> float:
    """``when`` (an aware datetime or a Unix time) as a Unix time."""
    if isinstance(when, datetime.datetime):
        if when.tzinfo is None or when.utcoffset() is None:
            raise ValueError(
                f"enqueue_at needs an aware datetime, got the naive {when!r}: its time zone "
                "would be a guess; pass e.g. datetime.now(timezone.utc) + timedelta(...)"
            )
        return when.timestamp()
    if isinstance(when, bool) or not isinstance(when, int | float):
        raise TypeError(f"when must be an aware datetime or a Unix time, got {when!r}")
    if not math.isfinite(when):
        raise ValueError(f"when must be a finite Unix time, got {when!r}")
    return float(when)

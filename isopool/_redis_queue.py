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

Payloads are signed (``_signing``) over their bytes, the queue name, the job id and
their kind, and verified before anything is unpickled. Redis is imported lazily:
the core of isopool works without it.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import math
import pickle
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Final

from . import _wire
from ._errors import (
    QueueUnavailableError,
    RestartLimitError,
    SignatureError,
    TaskCrashError,
)
from ._redis_lua import SCRIPTS as _SCRIPTS
from ._schedules import Schedule
from ._signing import Keyring
from ._spec import (
    DEFAULT_PRIORITY,
    MAX_PRIORITY,
    check_duration,
    check_positive_int,
    check_priority,
    check_restart,
    check_seconds,
    describe_function,
    parse_memory_limit,
    resolve_function,
)

if TYPE_CHECKING:
    import redis

__all__ = ["DeadLetter", "Job", "JobOptions", "QueueOptions", "RedisQueue", "Schedule"]

log = logging.getLogger(__name__)

GROUP: Final = "workers"
FINAL: Final = frozenset({"done", "failed", "dead", "cancelled"})
_WAKE_TTL: Final = 300  # seconds a result wake-up token lives
_POLL_CAP: Final = 1.0  # Job.result re-reads the status at least this often (s)
_UNIQUE_ROUNDS: Final = 20  # enqueue re-reads a unique key that changed under it


@dataclasses.dataclass(frozen=True, slots=True)
class JobOptions:
    """The validated per-job settings, stored with the job as JSON.

    Attributes:
        priority: 0 (most urgent) to 9; band 0 drains before band 1.
        timeout: Seconds one run may take; None for no limit.
        restart: "temporary" (a failure is final) or "transient" (a failure is
            retried, with back-off, up to ``max_retries``; then dead-lettered as
            ``retries-exhausted``, and ``Job.result()`` raises the job's own last
            exception, with the remote traceback as its ``__cause__``).
        max_retries: Retries of a transient job after it *failed* (raised, or ran
            past its ``timeout``): it runs at most ``max_retries + 1`` times (default
            3). Crashes are not retries: they spend the queue's crash budget.
        backoff: Seconds before the first retry, doubling each time (max 60 s).

    Three counters are kept on the job apart (see ``Job.info()``): ``deliveries``,
    the times a worker took the job; ``retries``, the deliveries that ended with the
    job's own failure and were retried under ``restart="transient"``; and the rest,
    ``deliveries - retries``, which are deliveries lost to crashes (the job's process
    died, or its worker died or went silent past its lease). Whatever ``restart``
    says, a job that crashed ``max_deliveries`` times (the serving worker's
    ``RedisQueue(max_deliveries=)``, default 3) is not delivered again: it is
    dead-lettered as ``delivery-limit`` and ``Job.result()`` raises TaskCrashError.
    ``attempts`` counts the runs started (a hand-back on shutdown is not one).
        result_ttl: Seconds a finished job and its result are kept (default 1 day).
        memory_limit: Bytes a run may allocate, or None.
        key: A uniqueness key: while a job with this key is scheduled, queued,
            running or waiting to retry (and for ``unique_for`` seconds after it
            ended), enqueueing the same key returns that job instead of a new one.
        unique_for: Seconds the key stays taken after its job ended (default 0).
            The finished job is kept at least that long (``result_ttl`` is raised
            to it), since its record is what holds the key.
    """

    priority: int = DEFAULT_PRIORITY
    timeout: float | None = None
    restart: str = "temporary"
    max_retries: int = 3
    backoff: float = 1.0
    result_ttl: float = 86400.0
    memory_limit: int | None = None
    key: str | None = None
    unique_for: float = 0.0

    @classmethod
    def build(cls, **options: object) -> JobOptions:
        """Validate ``options`` over the defaults; raise naming the bad one."""
        unknown = set(options) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise TypeError(f"unknown job option(s): {', '.join(sorted(unknown))}")
        merged = {**dataclasses.asdict(cls()), **options}
        restart = check_restart(merged["restart"])
        if restart == "permanent":
            raise ValueError("restart='permanent' makes no sense for a queued job; use transient")
        ttl = check_duration("result_ttl", merged["result_ttl"])
        if ttl < 1:
            raise ValueError(f"result_ttl must be at least 1 second, got {ttl!r}")
        key = merged["key"]
        if key is not None and (not isinstance(key, str) or not key):
            raise ValueError(f"key must be a non-empty string or None, got {key!r}")
        unique_for = check_duration("unique_for", merged["unique_for"])
        if unique_for and key is None:
            raise ValueError("unique_for needs a key= to be unique on")
        return cls(
            priority=check_priority(merged["priority"]),
            timeout=check_seconds("timeout", merged["timeout"]),
            restart=restart,
            max_retries=check_positive_int("max_retries", merged["max_retries"], allow_zero=True),
            backoff=check_duration("backoff", merged["backoff"]),
            memory_limit=parse_memory_limit(merged["memory_limit"]),
            key=key,
            unique_for=unique_for,
            result_ttl=max(ttl, unique_for),
        )

    def merge(self, changes: Mapping[str, object]) -> JobOptions:
        """A copy with ``changes`` validated and applied."""
        return JobOptions.build(**{**dataclasses.asdict(self), **changes})

    def to_json(self) -> str:
        """The JSON stored in the job hash."""
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str | bytes) -> JobOptions:
        """Read options back; unknown fields (a newer isopool) are ignored."""
        raw = json.loads(text)
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in raw.items() if k in known})


@dataclasses.dataclass(frozen=True, slots=True)
class DeadLetter:
    """A job in the dead-letter stream: why it is there, and when (Unix seconds)."""

    job_id: str
    reason: str
    at: float


class RedisQueue:
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
        client: An existing ``redis.Redis`` to use instead of connecting to ``url``.

    Raises:
        ValueError: no secret, or a bad option.
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
    ) -> None:
        if not isinstance(name, str) or not name or any(c in name for c in "{}"):
            raise ValueError(f"name must be a non-empty string without braces, got {name!r}")
        self.name = name
        self.url = url
        self.keys = Keyring.load(secret, key_id=key_id, secret_file=secret_file)
        self.lease = check_duration("lease", lease)
        if self.lease < 1.0:
            raise ValueError(f"lease must be at least 1 second, got {lease!r}")
        self.max_deliveries = check_positive_int("max_deliveries", max_deliveries)
        self.prefix = f"isopool:{{{name}}}"
        self._options = JobOptions()
        self._names: dict[str, None] = {}
        # Typed Any: redis-py's reply types depend on decode_responses (we use bytes).
        self.redis: Any = client if client is not None else _connect(url)
        self._scripts: dict[str, Any] = {
            k: self.redis.register_script(src) for k, src in _SCRIPTS.items()
        }
        with self.translate_errors():
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
        from ._schedules import define

        return define(self, cron, fn, args, kwargs, self._options, name, tz)

    def unschedule(self, name: str) -> bool:
        """Remove schedule ``name``; True if it existed (its jobs stay)."""
        from ._schedules import remove

        return remove(self, name)

    def schedules(self) -> list[Schedule]:
        """The queue's schedules with their next run times, soonest first."""
        from ._schedules import list_schedules

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
        if isinstance(fn, str):
            if fn not in self._names:
                resolve_function(fn)
                self._names[fn] = None
        elif not callable(fn):
            raise TypeError(f"fn must be a callable or 'package.module:function', got {fn!r}")
        job_id = uuid.uuid4().hex
        body = _wire.dumps_call(fn, args, kwargs, options.memory_limit)
        payload = self.keys.sign(body, self.context(job_id, "call"))
        keys = [self.job_key(job_id), self.stream(options.priority), f"{self.prefix}:scheduled"]
        unique = None if options.key is None else f"{self.prefix}:unique:{options.key}"
        args_tail = [int(options.unique_for * 1000), options.key or ""]
        due_ms = 0 if due is None else int(due * 1000)
        for _attempt in range(_UNIQUE_ROUNDS):
            held = ""
            extra: list[str] = []
            with self.translate_errors():
                if unique is not None:
                    held = _text(self.redis.get(unique) or b"")
                    extra = [unique, self.job_key(held)] if held else [unique]
                verdict, got = self.run(
                    "enqueue",
                    [*keys, *extra],
                    job_id,
                    payload,
                    describe_function(fn),
                    options.priority,
                    options.to_json(),
                    _now_ms(),
                    due_ms,
                    held,
                    *args_tail,
                )
            if _text(verdict) != "retry":
                return Job(self, _text(got))
        raise QueueUnavailableError(  # pragma: no cover - needs a storm of racing writers
            f"could not take unique key {options.key!r} in {_UNIQUE_ROUNDS} rounds"
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
        with self.translate_errors():
            return bool(self.script("requeue", job_id))

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
        """Close the connection pool."""
        self.redis.close()

    # -- shared with Job and the worker -------------------------------------------------

    def stream(self, band: int) -> str:
        """The stream key of priority band ``band``."""
        return f"{self.prefix}:jobs:{band}"

    def job_key(self, job_id: str) -> str:
        """The hash key of job ``job_id``."""
        return f"{self.prefix}:job:{job_id}"

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
            ids = list(dict.fromkeys(_text(i) for got in pipe.execute() for i in got))
            if not ids:
                return 0
            streams = [self.stream(b) for b in range(MAX_PRIORITY + 1)]
            jobs = [self.job_key(i) for i in ids]
            return int(self.run("promote", [delayed, scheduled, *streams, *jobs], now_ms, *ids))

    def release_unique(self, key: str, job_id: str) -> None:
        """Let uniqueness key ``key`` expire now that job ``job_id`` ended (tidying only)."""
        keys = [f"{self.prefix}:unique:{key}", self.job_key(job_id)]
        with self.translate_errors():
            self.run("unique_release", keys, job_id, _now_ms())

    def run(self, name: str, keys: list[str], *args: object) -> Any:  # noqa: ANN401 - a reply
        """Run a script that declares its keys: the epoch key and its value come first."""
        return self._scripts[name](keys=[f"{self.prefix}:epoch", *keys], args=[self.epoch, *args])

    def context(self, job_id: str, kind: str) -> bytes:
        """What a signature binds a payload to: this queue, this job, this kind."""
        return f"{self.name}\0{job_id}\0{kind}".encode()

    def script(self, name: str, *args: object) -> Any:  # noqa: ANN401 - a Redis reply
        """Run one of the queue's Lua scripts with the prefix and epoch first."""
        return self._scripts[name](
            keys=[f"{self.prefix}:epoch"], args=[self.prefix, self.epoch, *args]
        )

    @contextmanager
    def translate_errors(self) -> Iterator[None]:
        """Turn redis-py's connection errors into QueueUnavailableError."""
        import redis

        try:
            yield
        except redis.ResponseError as exc:
            if "ISOPOOL_EPOCH" in str(exc) or "NOGROUP" in str(exc):
                raise QueueUnavailableError(
                    f"Redis lost the state of queue {self.name!r} (its epoch key is gone: "
                    "was the server restarted without persistence, or flushed?). Jobs "
                    "queued before may be lost; restart the workers and producers to "
                    "start a new epoch."
                ) from exc
            raise
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise QueueUnavailableError(
                f"cannot reach Redis at {_redact(self.url)} for queue {self.name!r}: {exc}"
            ) from exc

    def _init_state(self) -> str:
        """Create the epoch and consumer groups once; warn when Redis may forget them."""
        r = self.redis
        r.set(f"{self.prefix}:epoch", uuid.uuid4().hex, nx=True)
        epoch = r.get(f"{self.prefix}:epoch")
        pipe = r.pipeline(transaction=False)
        for band in range(MAX_PRIORITY + 1):
            pipe.xgroup_create(self.stream(band), GROUP, id="0", mkstream=True)
        for result in pipe.execute(raise_on_error=False):
            if isinstance(result, Exception) and "BUSYGROUP" not in str(result):
                raise result
        _warn_if_volatile(r, self.name)
        return epoch.decode() if isinstance(epoch, bytes) else str(epoch)


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
        from ._schedules import define

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
        out a retry back-off), done, failed, dead, cancelled, or missing.
        """
        with self.queue.translate_errors():
            status = self.queue.redis.hget(self.key, "status")
        return status.decode() if status else "missing"

    def info(self) -> dict[str, str]:
        """The job's bookkeeping: status, attempts, deliveries, reason, owner..."""
        with self.queue.translate_errors():
            raw = self.queue.redis.hgetall(self.key)
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
        """
        prefix = self.queue.prefix
        keys = [self.key, f"{prefix}:delayed", f"{prefix}:scheduled", f"{prefix}:done:{self.id}"]
        with self.queue.translate_errors():
            state = _text(self.queue.run("cancel", keys, self.id, _now_ms()))
            if state == "cancelled" and (key := self.queue.redis.hget(self.key, "key")):
                self.queue.release_unique(_text(key), self.id)
        return state in ("cancelled", "cancelling")

    def result(self, timeout: float | None = None) -> Any:  # noqa: ANN401 - the job's value
        """Wait for the job's result; raise its exception with its own type.

        Raises:
            TimeoutError: not finished within ``timeout`` seconds (the job keeps going).
            CancelledError: the job was cancelled.
            SignatureError: the stored result's signature is wrong (it is never
                unpickled).
            QueueUnavailableError: Redis is unreachable or lost the job.
            BaseException: what the job raised, or the isopool error that ended it
                (TaskCrashError, TaskTimeoutError, RestartLimitError...).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        done_key = f"{self.queue.prefix}:done:{self.id}"
        while True:
            with self.queue.translate_errors():
                status, kind, blob, reason = self.queue.redis.hmget(
                    self.key, "status", "kind", "result", "reason"
                )
            state = status.decode() if status else "missing"
            if state in FINAL or state == "missing":
                return self._outcome(state, kind, blob, reason)
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise TimeoutError(f"job {self.id} did not finish within {timeout} s ({state})")
            wait = _POLL_CAP if remaining is None else max(0.01, min(_POLL_CAP, remaining))
            with self.queue.translate_errors():
                if self.queue.redis.blpop([done_key], timeout=wait):
                    self.queue.redis.rpush(done_key, "1")  # wake the other waiters too
                    self.queue.redis.expire(done_key, _WAKE_TTL)

    def _outcome(
        self, state: str, kind: bytes | None, blob: bytes | None, reason: bytes | None
    ) -> Any:  # noqa: ANN401 - the job's value
        from concurrent.futures import CancelledError

        if state == "missing":
            self.queue.check_epoch()
            raise QueueUnavailableError(
                f"job {self.id} is not in queue {self.queue.name!r} (expired after its "
                "result_ttl, never enqueued, or lost with the server's data)"
            )
        if state == "cancelled":
            raise CancelledError(f"job {self.id} was cancelled")
        why = reason.decode() if reason else ""
        if not blob:  # dead-lettered with no result of its own
            if why.startswith("delivery-limit"):
                raise TaskCrashError(f"job {self.id} was dead-lettered: {why}")
            if why == "bad-signature":
                raise SignatureError(f"job {self.id} was dead-lettered: bad-signature")
            raise RestartLimitError(f"job {self.id} was dead-lettered: {why}")
        body = self.queue.keys.verify(blob, self.queue.context(self.id, "result"))
        if kind == b"ok":
            return pickle.loads(body)
        if kind in (b"raised", b"shutdown"):
            raise _wire.loads_exception(body)
        raise pickle.loads(body)


def _redis_error(message: str) -> Exception:
    import redis

    return redis.ResponseError(message)


def _connect(url: str) -> redis.Redis:
    try:
        import redis
    except ImportError as exc:
        raise ImportError(
            "isopool's Redis queue needs redis-py: pip install 'isopool[redis]'"
        ) from exc
    return redis.Redis.from_url(
        url,
        socket_connect_timeout=5.0,
        socket_timeout=30.0,
        health_check_interval=10,
    )


def _warn_if_volatile(r: redis.Redis, name: str) -> None:
    try:
        config = r.config_get("appendonly")
        config.update(r.config_get("save"))
    except Exception:  # CONFIG may be refused to an ACL user: then we cannot tell
        return
    if config.get("appendonly") in ("no", b"no") and not config.get("save"):
        log.warning(
            "queue %r: Redis persistence is off (no AOF, no RDB snapshots): a restart of "
            "the server loses every queued job; enable appendonly for a durable queue",
            name,
        )


def _now_ms() -> int:
    return int(time.time() * 1000)


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


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


def _redact(url: str) -> str:
    if "@" not in url:
        return url
    scheme, _, rest = url.partition("://")
    return f"{scheme}://***@{rest.rsplit('@', 1)[1]}"

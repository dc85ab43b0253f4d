"""The I/O-free half of a queue client, shared by RedisQueue and AsyncRedisQueue.

The blocking client (``_redis_queue``) and the asyncio one (``_redis_async``) differ
only in how they talk to Redis. What they say is here, once: the key names, the job
options, the signed call an enqueue writes and the KEYS/ARGV of its script, the key
check a client makes at start, the decoding of a stored result, and the mapping of
redis-py's errors to isopool's. Nothing here sends a command.
"""

from __future__ import annotations

import dataclasses
import json
import pickle
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Final

from .._core import wire as _wire
from .._errors import (
    JobNotFoundError,
    QueueUnavailableError,
    RestartLimitError,
    SignatureError,
    TaskCrashError,
)
from .._spec import (
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
from .redis_connect import _redact as redact
from .redis_connect import _unreachable_errors
from .signing import Keyring

__all__ = [
    "FINAL",
    "GROUP",
    "MAX_PAYLOAD_BYTES",
    "JobOptions",
    "PreparedJob",
    "QueueBase",
    "redact",
    "text",
]

# The first lines of every Lua script of a queue (its own, the schedules', the
# dashboard's): KEYS[1] is the epoch key and ARGV[1] its value; a server that lost the
# queue's state says so instead of acting on what is left.
LUA_EPOCH_CHECK: Final = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return redis.error_reply('ISOPOOL_EPOCH queue state lost')
end
"""
GROUP: Final = "workers"
FINAL: Final = frozenset({"done", "failed", "dead", "cancelled"})
WAKE_TTL: Final = 300  # seconds a result wake-up token lives
POLL_CAP: Final = 1.0  # a result waiter re-reads the status at least this often (s)
UNIQUE_ROUNDS: Final = 20  # enqueue re-reads a unique key that changed under it
# Redis refuses a string value over 512 MB (proto-max-bulk-len); a payload over it is
# refused before it is sent, naming its size. Tests lower it.
MAX_PAYLOAD_BYTES: Final = 512 * 1024 * 1024


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
        result_ttl: Seconds a finished job and its result are kept (default 1 day).
        memory_limit: Bytes a run may allocate, or None.
        key: A uniqueness key: while a job with this key is scheduled, queued,
            running or waiting to retry (and for ``unique_for`` seconds after it
            ended), enqueueing the same key returns that job instead of a new one.
        unique_for: Seconds the key stays taken after its job ended (default 0).
            The finished job is kept at least that long (``result_ttl`` is raised
            to it), since its record is what holds the key.

    Three counters are kept on the job apart (see ``Job.info()``): ``deliveries``,
    the times a worker took the job; ``retries``, the deliveries that ended with the
    job's own failure and were retried under ``restart="transient"``; and the rest,
    ``deliveries - retries``, which are deliveries lost to crashes (the job's process
    died, or its worker died or went silent past its lease). Whatever ``restart``
    says, a job that crashed ``max_deliveries`` times (the serving worker's
    ``RedisQueue(max_deliveries=)``, default 3) is not delivered again: it is
    dead-lettered as ``delivery-limit`` and ``Job.result()`` raises TaskCrashError.
    ``attempts`` counts the runs started (a hand-back on shutdown is not one).
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
        """Read options back, validated; unknown fields (a newer isopool) are ignored.

        Raises:
            ValueError, TypeError: a bad option, named (they are stored unsigned).
        """
        raw = json.loads(text)
        if not isinstance(raw, dict):
            raise ValueError(f"job options must be a JSON object, got {text!r:.80}")
        known = {f.name for f in dataclasses.fields(cls)}
        return cls.build(**{k: v for k, v in raw.items() if k in known})


@dataclasses.dataclass(frozen=True, slots=True)
class PreparedJob:
    """A job ready to be written: its new id, signed call, and what the script needs."""

    id: str
    payload: bytes
    name: str
    options: JobOptions
    due_ms: int  # 0: runnable at once


class QueueBase:
    """What every client of one queue knows without asking Redis.

    Args:
        url: The Redis URL (kept for messages, redacted).
        name: The queue's name; its keys share the hash tag ``{name}``.
        keys: The keyring that signs and verifies.
        keycheck: Write and check this keyring's key checks at start (default True);
            False only for a client that signs and verifies nothing (the dashboard,
            which has a throwaway key).
    """

    def __init__(self, url: str, name: str, keys: Keyring, *, keycheck: bool = True) -> None:
        if not isinstance(name, str) or not name or any(c in name for c in "{}"):
            raise ValueError(f"name must be a non-empty string without braces, got {name!r}")
        self.name = name
        self.url = url
        self.keys = keys
        self.keycheck = keycheck
        self.prefix = f"isopool:{{{name}}}"
        self.epoch = ""  # set once the client has read (or written) the epoch key
        self._options = JobOptions()
        self._names: dict[str, None] = {}

    # -- key names ------------------------------------------------------------------

    def stream(self, band: int) -> str:
        """The stream key of priority band ``band``."""
        return f"{self.prefix}:jobs:{band}"

    def job_key(self, job_id: str) -> str:
        """The hash key of job ``job_id``."""
        return f"{self.prefix}:job:{job_id}"

    def done_key(self, job_id: str) -> str:
        """The wake-up list of job ``job_id``'s result waiters."""
        return f"{self.prefix}:done:{job_id}"

    def context(self, job_id: str, kind: str) -> bytes:
        """What a signature binds a payload to: this queue, this job, this kind."""
        return f"{self.name}\0{job_id}\0{kind}".encode()

    # -- writing a job ----------------------------------------------------------------

    def prepare(
        self,
        fn: Callable[..., object] | str,
        args: tuple[object, ...],
        kwargs: dict[str, object],
        options: JobOptions,
        due: float | None,
    ) -> PreparedJob:
        """Check ``fn``, pickle and sign the call under a new job id.

        Raises:
            ValueError: the signed call is over ``MAX_PAYLOAD_BYTES`` (Redis's limit).
        """
        if isinstance(fn, str):
            if fn not in self._names:
                resolve_function(fn)
                self._names[fn] = None
        elif not callable(fn):
            raise TypeError(f"fn must be a callable or 'package.module:function', got {fn!r}")
        job_id = uuid.uuid4().hex
        body = _wire.dumps_call(fn, args, kwargs, options.memory_limit)
        payload = self.keys.sign(body, self.context(job_id, "call"))
        if len(payload) > MAX_PAYLOAD_BYTES:
            raise ValueError(
                f"the call of {describe_function(fn)} is {len(payload)} bytes pickled and "
                f"signed, over Redis's limit of {MAX_PAYLOAD_BYTES} bytes for one value: "
                "pass a path, a URL or a key to the data instead of the data"
            )
        due_ms = 0 if due is None else int(due * 1000)
        return PreparedJob(job_id, payload, describe_function(fn), options, due_ms)

    def unique_key(self, job: PreparedJob) -> str | None:
        """The key that holds ``job``'s uniqueness key, if it has one."""
        key = job.options.key
        return None if key is None else f"{self.prefix}:unique:{key}"

    def enqueue_call(self, job: PreparedJob, held: str) -> tuple[list[str], list[object]]:
        """KEYS and ARGV of the enqueue script (``held``: the unique key's holder read)."""
        options = job.options
        keys = [self.job_key(job.id), self.stream(options.priority), f"{self.prefix}:scheduled"]
        unique = self.unique_key(job)
        if unique is not None:
            keys += [unique, self.job_key(held)] if held else [unique]
        args: list[object] = [job.id, job.payload, job.name, options.priority, options.to_json()]
        args += [int(time.time() * 1000), job.due_ms, held]
        args += [int(options.unique_for * 1000), options.key or ""]
        return keys, args

    def cancel_keys(self, job_id: str) -> list[str]:
        """KEYS of the cancel script, after the epoch."""
        p = self.prefix
        return [self.job_key(job_id), f"{p}:delayed", f"{p}:scheduled", self.done_key(job_id)]

    def unique_release_keys(self, key: str, job_id: str) -> list[str]:
        """KEYS of the unique_release script, after the epoch."""
        return [f"{self.prefix}:unique:{key}", self.job_key(job_id)]

    # -- the key check ----------------------------------------------------------------

    @property
    def keycheck_key(self) -> str:
        """The hash of key id -> check value of its secret (``Keyring.proofs``)."""
        return f"{self.prefix}:keycheck"

    def check_proofs(self, stored: Mapping[str, bytes | str | None]) -> None:
        """Raise if a stored key check was made with another secret than ours.

        Raises:
            SignatureError: naming the queue and each key id whose secret differs.
        """
        ours = self.keys.proofs(self.name)
        wrong = sorted(
            kid for kid, got in stored.items() if got is not None and text(got) != ours[kid]
        )
        if wrong:
            raise SignatureError(
                f"queue {self.name!r}: the secret of key id {', '.join(map(repr, wrong))} is "
                "not the one the queue's other clients and workers use (its key check in "
                f"{self.keycheck_key} was made with another secret); nothing was taken from "
                "the queue. Give this process the queue's secret (ISOPOOL_SECRET, "
                "--secret-file, secret=) or another key id; to reuse a retired key id with "
                f"a new secret, delete its field: HDEL {self.keycheck_key} KEY_ID"
            )

    def queue_init(self, pipe: Any) -> None:  # noqa: ANN401 - a sync or async pipeline
        """Queue on ``pipe`` the commands that set the queue up (see ``finish_init``).

        The epoch (written once), this keyring's key checks (each key id's first
        user writes its own), and the consumer group of every band. redis-py's
        blocking and asyncio pipelines buffer commands alike; only ``execute``
        differs, so both clients share this and run it with ``raise_on_error=False``.
        """
        pipe.set(f"{self.prefix}:epoch", uuid.uuid4().hex, nx=True)
        pipe.get(f"{self.prefix}:epoch")
        if self.keycheck:
            proofs = self.keys.proofs(self.name)
            for kid, proof in proofs.items():
                pipe.hsetnx(self.keycheck_key, kid, proof)
            pipe.hmget(self.keycheck_key, list(proofs))
        for band in range(MAX_PRIORITY + 1):
            pipe.xgroup_create(self.stream(band), GROUP, id="0", mkstream=True)

    def finish_init(self, replies: list[Any]) -> None:
        """Check the replies of ``queue_init``'s commands; set ``epoch``.

        Raises:
            SignatureError: a key check was made with another secret (``check_proofs``).
            redis.RedisError: a command failed (other than "the group exists").
        """
        for reply in replies:
            if isinstance(reply, Exception) and "BUSYGROUP" not in str(reply):
                raise reply
        if self.keycheck:
            kids = list(self.keys.proofs(self.name))
            self.check_proofs(dict(zip(kids, replies[2 + len(kids)], strict=True)))
        self.epoch = text(replies[1])

    # -- reading a result -------------------------------------------------------------

    def next_wait(
        self, job_id: str, state: str, deadline: float | None, timeout: float | None
    ) -> float:
        """Seconds a result waiter may block now; TimeoutError once ``deadline`` passed."""
        remaining = None if deadline is None else deadline - time.monotonic()
        if remaining is not None and remaining <= 0:
            raise TimeoutError(f"job {job_id} did not finish within {timeout} s ({state})")
        return POLL_CAP if remaining is None else max(0.01, min(POLL_CAP, remaining))

    def missing_error(self, job_id: str) -> JobNotFoundError:
        """The error for a job id with no record (the caller checked the epoch first)."""
        return JobNotFoundError(
            f"no job {job_id} in queue {self.name!r} (never enqueued there, or "
            "expired after its result_ttl)"
        )

    def outcome(
        self, job_id: str, state: str, kind: bytes | None, blob: bytes | None, reason: bytes | None
    ) -> Any:  # noqa: ANN401 - the job's value
        """Return the value of a final job, or raise what ended it with its own type."""
        from concurrent.futures import CancelledError

        if state == "cancelled":
            raise CancelledError(f"job {job_id} was cancelled")
        why = reason.decode() if reason else ""
        if not blob:  # dead-lettered with no result of its own
            if why.startswith("delivery-limit"):
                raise TaskCrashError(f"job {job_id} was dead-lettered: {why}")
            if why == "bad-signature":
                raise SignatureError(f"job {job_id} was dead-lettered: bad-signature")
            if why.startswith("bad-options"):
                raise ValueError(f"job {job_id} was dead-lettered: {why}")
            raise RestartLimitError(f"job {job_id} was dead-lettered: {why}")
        body = self.keys.verify(blob, self.context(job_id, "result"))
        if kind == b"ok":
            return pickle.loads(body)
        if kind in (b"raised", b"shutdown"):
            raise _wire.loads_exception(body)
        raise pickle.loads(body)

    # -- errors -------------------------------------------------------------------------

    @contextmanager
    def translate_errors(self) -> Iterator[None]:
        """Turn redis-py's connection errors into QueueUnavailableError.

        The asyncio client raises the same classes (``redis.asyncio`` reuses them), so
        this serves both, around awaits too.
        """
        import redis

        try:
            yield
        except _unreachable_errors() as exc:
            raise QueueUnavailableError(
                f"cannot reach Redis at {redact(self.url)} for queue {self.name!r}: {exc}"
            ) from exc
        except redis.ResponseError as exc:
            if "ISOPOOL_EPOCH" in str(exc) or "NOGROUP" in str(exc):
                raise QueueUnavailableError(
                    f"Redis lost the state of queue {self.name!r} (its epoch key is gone: "
                    "was the server restarted without persistence, or flushed?). Jobs "
                    "queued before may be lost; restart the workers and producers to "
                    "start a new epoch."
                ) from exc
            raise


def text(value: object) -> str:
    """A Redis reply (bytes) as str."""
    return value.decode() if isinstance(value, bytes) else str(value)

"""Periodic jobs: cron schedules stored with a RedisQueue, fired once per tick.

Keys (next to the queue's own, same hash tag)::

    isopool:{NAME}:schedules         every schedule's name, scored by its next tick (ms)
    isopool:{NAME}:schedule:S        schedule S: cron, zone, the signed call, options,
                                     next and last tick, the last tick's job id

Any number of workers (and clients) may declare the same schedule: ``define`` rewrites
it only when the definition changed (a digest), so a restart does not move its next
tick. Every worker looks for due schedules about once a second, and fires one with the
FIRE script, which is a compare-and-set on the stored next tick: the first worker to
fire tick T moves ``next`` past now and enqueues the job in the same atomic step; the
others find ``next`` changed and do nothing. Exactly one job per tick, however many
workers declare it.

Missed ticks (every worker down): the first worker back fires the schedule once, late,
and sets the next tick after *now*: never a burst of catch-up jobs.

The stored call is signed with the schedule's own context; the worker verifies it
before signing each tick's job with that job's context, so a call written into Redis
by someone without the secret is never run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

from .._core import wire as _wire
from .._errors import SignatureError
from .._spec import describe_function, resolve_function
from .cron import Cron
from .redis_common import LUA_EPOCH_CHECK

if TYPE_CHECKING:
    from .redis_queue import JobOptions, RedisQueue

__all__ = ["SCHEDULE_SCRIPTS", "Schedule", "define", "fire_due", "list_schedules", "remove"]

log = logging.getLogger(__name__)

_FIRE_BATCH: Final = 20  # due schedules one look fires at most

_EPOCH = LUA_EPOCH_CHECK

# KEYS: epoch schedule schedules   ARGV: epoch name cron zone call fn options digest next
_LUA_DEFINE = (
    _EPOCH
    + """
if redis.call('HGET', KEYS[2], 'digest') == ARGV[8] then return 0 end
redis.call('HSET', KEYS[2], 'name', ARGV[2], 'cron', ARGV[3], 'zone', ARGV[4], 'call', ARGV[5],
  'fn', ARGV[6], 'options', ARGV[7], 'digest', ARGV[8], 'next', ARGV[9])
redis.call('ZADD', KEYS[3], tonumber(ARGV[9]), ARGV[2])
return 1
"""
)

# KEYS: epoch schedule schedules job stream(band)
# ARGV: epoch name tick next id payload fn band options now
_LUA_FIRE = (
    _EPOCH
    + """
local current = redis.call('HGET', KEYS[2], 'next')
if not current then redis.call('ZREM', KEYS[3], ARGV[2]) return 0 end
-- the tick must be the one the caller read, and due: a caller that read the set
-- before another fired may read the *next* tick, which has not come yet
if current ~= ARGV[3] or tonumber(current) > tonumber(ARGV[10]) then return 0 end
redis.call('HSET', KEYS[2], 'next', ARGV[4], 'last', ARGV[3], 'last_job', ARGV[5])
redis.call('ZADD', KEYS[3], tonumber(ARGV[4]), ARGV[2])
redis.call('HSET', KEYS[4], 'payload', ARGV[6], 'name', ARGV[7], 'band', ARGV[8],
  'options', ARGV[9], 'status', 'queued', 'deliveries', 0, 'attempts', 0, 'created', ARGV[10],
  'schedule', ARGV[2], 'tick', ARGV[3])
local entry = redis.call('XADD', KEYS[5], '*', 'id', ARGV[5])
redis.call('HSET', KEYS[4], 'entry', entry)
return 1
"""
)

# KEYS: epoch schedule schedules   ARGV: epoch name
_LUA_REMOVE = (
    _EPOCH
    + """
redis.call('ZREM', KEYS[3], ARGV[2])
return redis.call('DEL', KEYS[2])
"""
)

SCHEDULE_SCRIPTS: Final = {
    "schedule_define": _LUA_DEFINE,
    "schedule_fire": _LUA_FIRE,
    "schedule_remove": _LUA_REMOVE,
}


@dataclasses.dataclass(frozen=True, slots=True)
class Schedule:
    """A periodic job as stored in Redis.

    Attributes:
        name: The schedule's name, unique in its queue.
        cron: The cron expression.
        zone: The time zone its fields are read in.
        function: What it runs ("module:function", or a description of a callable).
        next_run: The next tick, as a Unix time.
        last_run: The last tick fired, as a Unix time, or None.
        last_job: The id of the job the last tick enqueued, or None.
    """

    name: str
    cron: str
    zone: str
    function: str
    next_run: float
    last_run: float | None
    last_job: str | None


def _keys(queue: RedisQueue, name: str) -> list[str]:
    return [f"{queue.prefix}:schedule:{name}", f"{queue.prefix}:schedules"]


def _context(queue: RedisQueue, name: str) -> bytes:
    return queue.context(f"schedule:{name}", "schedule")


def define(
    queue: RedisQueue,
    cron: str,
    fn: Callable[..., object] | str,
    args: tuple[object, ...],
    kwargs: dict[str, object],
    options: JobOptions,
    name: str | None,
    zone: str | None,
) -> Schedule:
    """Create or update schedule ``name`` (default: the function's name); see RedisQueue."""
    parsed = Cron.parse(cron, zone)
    if isinstance(fn, str):
        resolve_function(fn)
    elif not callable(fn):
        raise TypeError(f"fn must be a callable or 'package.module:function', got {fn!r}")
    label = describe_function(fn)
    name = label if name is None else name
    if not isinstance(name, str) or not name:
        raise ValueError(f"a schedule name must be a non-empty string, got {name!r}")
    body = _wire.dumps_call(fn, args, kwargs, options.memory_limit)
    digest = hashlib.sha256(
        b"\0".join([parsed.text.encode(), parsed.zone.encode(), options.to_json().encode(), body])
    ).hexdigest()
    next_ms = int(parsed.next_after(time.time()) * 1000)
    call = queue.keys.sign(body, _context(queue, name))
    with queue.translate_errors():
        queue.run(
            "schedule_define",
            _keys(queue, name),
            name,
            parsed.text,
            parsed.zone,
            call,
            label,
            options.to_json(),
            digest,
            next_ms,
        )
    return next(s for s in list_schedules(queue) if s.name == name)


def remove(queue: RedisQueue, name: str) -> bool:
    """Delete schedule ``name``; True if it existed. Jobs it enqueued are kept."""
    with queue.translate_errors():
        return bool(queue.run("schedule_remove", _keys(queue, name), name))


def list_schedules(queue: RedisQueue) -> list[Schedule]:
    """Every schedule of ``queue``, soonest first."""
    with queue.translate_errors():
        names = [_text(n) for n in queue.redis.zrange(f"{queue.prefix}:schedules", 0, -1)]
        pipe = queue.redis.pipeline(transaction=False)
        for name in names:
            pipe.hmget(_keys(queue, name)[0], "cron", "zone", "fn", "next", "last", "last_job")
        rows = pipe.execute()
    out = []
    for name, (cron, zone, fn, nxt, last, last_job) in zip(names, rows, strict=True):
        if cron is None or nxt is None:
            continue  # removed between the two reads
        out.append(
            Schedule(
                name=name,
                cron=_text(cron),
                zone=_text(zone),
                function=_text(fn),
                next_run=int(nxt) / 1000,
                last_run=None if last is None else int(last) / 1000,
                last_job=None if last_job is None else _text(last_job),
            )
        )
    return out


def fire_due(queue: RedisQueue, now: float) -> int:
    """Enqueue one job for each schedule whose tick has come; return how many fired."""
    from .redis_queue import JobOptions

    now_ms = int(now * 1000)
    with queue.translate_errors():
        due = queue.redis.zrangebyscore(
            f"{queue.prefix}:schedules", "-inf", now_ms, start=0, num=_FIRE_BATCH
        )
    fired = 0
    for raw in due:
        name = _text(raw)
        keys = _keys(queue, name)
        with queue.translate_errors():
            cron, zone, call, fn, options, tick = queue.redis.hmget(
                keys[0], "cron", "zone", "call", "fn", "options", "next"
            )
        if tick is None or cron is None:
            with queue.translate_errors():
                queue.redis.zrem(keys[1], name)
            continue
        try:
            body = queue.keys.verify(call, _context(queue, name))
            opts = JobOptions.from_json(options)
            next_ms = int(Cron.parse(_text(cron), _text(zone)).next_after(now) * 1000)
        except (SignatureError, ValueError, TypeError) as exc:
            log.error("queue %r: schedule %r refused: %s", queue.name, name, exc)
            continue
        job_id = uuid.uuid4().hex
        payload = queue.keys.sign(body, queue.context(job_id, "call"))
        with queue.translate_errors():
            fired += int(
                queue.run(
                    "schedule_fire",
                    [*keys, queue.job_key(job_id), queue.stream(opts.priority)],
                    name,
                    tick,
                    next_ms,
                    job_id,
                    payload,
                    fn,
                    opts.priority,
                    options,
                    now_ms,
                )
            )
    return fired


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)

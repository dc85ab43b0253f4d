"""A read-only picture of every queue and node in a Redis: what status and dashboard show.

``isopool status`` and ``isopool dashboard`` both call ``snapshot``, which reads (and
never writes) these keys, next to the queue's own (``_redis_queue``)::

    isopool:{NAME}:epoch            a queue exists: queues are found by SCAN on this
    isopool:{NAME}:jobs:B           per band: XLEN, and the group's pending list (the
                                    running jobs: entry, consumer, idle time)
    isopool:{NAME}:job:ID           only the plain fields: name, status, started,
                                    attempts, deliveries, band; HSTRLEN of the payload
    isopool:{NAME}:delayed/scheduled  ZCARD
    isopool:{NAME}:dead             the newest entries: job id, reason, time
    isopool:{NAME}:schedules/schedule:S  name, cron, zone, function, next and last run
    isopool:{NAME}:workers          hash consumer -> JSON {host, pid, started,
                                    processes, capacity, held, beat}: by ``Heartbeat``
    isopool:{NAME}:stats:MINUTE     hash outcome -> count of jobs finished in that
                                    minute (Unix time // 60): written by ``Heartbeat``
    isopool:nodes, isopool:node:N:alive   the nodes (``_node``) and their heartbeats

It never reads a job's payload or result, and so never unpickles anything: a queue
full of hostile jobs shows their names, ids and sizes, as plain strings that the
callers must escape (the dashboard renders them with ``textContent`` only).

Why these sources: a stream of a queue keeps only undelivered and running entries
(finished ones are deleted), so ``queued = XLEN - pending`` per band, exact and
O(1). Throughput needs a record of finished jobs that outlives them: the worker
already counts its commits, and writes the counts once a second (one pipelined
HINCRBY per outcome on the current minute's hash, which expires after two hours), so
throughput costs the hot path nothing and Redis a key per queue per minute.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from collections import Counter
from typing import Any, Final

__all__ = [
    "BEAT_EVERY",
    "DEAD_AFTER",
    "Heartbeat",
    "discover_queues",
    "snapshot",
]

log = logging.getLogger(__name__)

BEAT_EVERY: Final = 1.0  # seconds between a worker's heartbeats
DEAD_AFTER: Final = 5.0  # a worker silent this long (five missed beats) is shown dead
PRUNE_AFTER: Final = 300.0  # and this long, removed from the workers hash by its peers
_PRUNE_EVERY: Final = 30.0  # seconds between a worker's sweeps of the workers hash
STATS_TTL: Final = 7200  # seconds a minute's outcome counts are kept
MINUTES: Final = 15  # minutes of throughput a snapshot reports
_MAX_RUNNING: Final = 200  # running jobs listed per queue (the counts stay exact)
_MAX_DEAD: Final = 100  # newest dead letters listed per queue
_BANDS: Final = 10  # priority bands 0..9 (``_spec.MAX_PRIORITY`` + 1)
NODES_KEY: Final = "isopool:nodes"  # as in ``_node`` (not imported: it pulls the worker)


def prefix_of(name: str) -> str:
    """The key prefix of queue ``name`` (as ``RedisQueue.prefix``)."""
    return f"isopool:{{{name}}}"


class Heartbeat:
    """A queue worker's entry in ``isopool:{NAME}:workers`` and its outcome counts.

    The worker calls ``count`` for each committed outcome (in memory), ``beat`` every
    ``BEAT_EVERY`` seconds from its loop (one pipelined round trip), and ``leave``
    when it stops. Redis errors are logged, not raised: a missed beat only makes the
    worker look late on the dashboard, and the worker's own loop handles Redis loss.
    """

    def __init__(
        self,
        client: Any,  # noqa: ANN401 - a redis.Redis
        prefix: str,
        consumer: str,
        processes: int,
        capacity: int,
    ) -> None:
        self.redis = client
        self.key = f"{prefix}:workers"
        self.stats = f"{prefix}:stats"
        self.consumer = consumer
        self.info = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started": time.time(),
            "processes": processes,  # worker processes: jobs that can run at once
            "capacity": capacity,  # jobs it holds at most (running plus prefetched)
        }
        self.tally: Counter[str] = Counter()
        self._next_prune = 0.0

    def count(self, outcome: str) -> None:
        """Count one committed outcome (done, failed, dead, cancelled, retry, release)."""
        self.tally[outcome] += 1

    def beat(self, held: int) -> None:
        """Write this worker's entry (``held``: jobs it holds now) and the new counts."""
        import redis

        now = time.time()
        minute = f"{self.stats}:{int(now // 60)}"
        entry = json.dumps({**self.info, "held": held, "beat": now})
        tally, self.tally = self.tally, Counter()
        try:
            pipe = self.redis.pipeline(transaction=False)
            pipe.hset(self.key, self.consumer, entry)
            for outcome, n in tally.items():
                pipe.hincrby(minute, outcome, n)
            if tally:
                pipe.expire(minute, STATS_TTL)
            pipe.execute()
            if now >= self._next_prune:
                self._next_prune = now + _PRUNE_EVERY
                self._prune(now)
        except redis.RedisError as exc:
            self.tally.update(tally)  # counted again at the next beat
            log.debug("worker %s: heartbeat failed: %s", self.consumer, exc)

    def _prune(self, now: float) -> None:
        """Remove the entries of workers silent for PRUNE_AFTER seconds."""
        stale = [
            consumer
            for consumer, raw in self.redis.hgetall(self.key).items()
            if now - _beat_of(raw) > PRUNE_AFTER
        ]
        if stale:
            self.redis.hdel(self.key, *stale)

    def leave(self) -> None:
        """Flush the last counts and remove this worker's entry (best effort)."""
        import redis

        self.beat(0)
        try:
            self.redis.hdel(self.key, self.consumer)
        except redis.RedisError as exc:
            log.debug("worker %s: could not unregister: %s", self.consumer, exc)


def _beat_of(raw: bytes) -> float:
    try:
        return float(json.loads(raw)["beat"])
    except (ValueError, KeyError, TypeError):
        return 0.0


def discover_queues(client: Any) -> list[str]:  # noqa: ANN401 - a redis.Redis
    """The names of the queues in this Redis (each has an epoch key), sorted."""
    names = set()
    for key in client.scan_iter(match="isopool:{*}:epoch", count=500):
        text = _text(key)
        names.add(text[len("isopool:{") : -len("}:epoch")])
    return sorted(names)


def snapshot(
    client: Any,  # noqa: ANN401 - a redis.Redis
    queues: list[str] | None = None,
    now: float | None = None,
) -> dict[str, Any]:
    """Read the state of ``queues`` (default: every queue) and of the nodes.

    Returns:
        A JSON-ready dict: ``at`` (Unix time), ``queues`` (one dict per queue: see
        ``queue_snapshot``) and ``nodes``.
    """
    now = time.time() if now is None else now
    names = discover_queues(client) if queues is None else queues
    return {
        "at": now,
        "queues": [queue_snapshot(client, name, now) for name in names],
        "nodes": nodes_snapshot(client, now),
    }


def queue_snapshot(client: Any, name: str, now: float) -> dict[str, Any]:  # noqa: ANN401
    """One queue: counts per band, running jobs, dead letters, schedules, workers."""
    prefix = prefix_of(name)
    pipe = client.pipeline(transaction=False)
    pipe.exists(f"{prefix}:epoch")
    for band in range(_BANDS):
        pipe.xlen(f"{prefix}:jobs:{band}")
        pipe.xpending(f"{prefix}:jobs:{band}", "workers")
    pipe.zcard(f"{prefix}:scheduled")
    pipe.zcard(f"{prefix}:delayed")
    pipe.xlen(f"{prefix}:dead")
    got = pipe.execute(raise_on_error=False)
    exists, per_band, (scheduled, delayed, dead) = got[0], got[1:-3], got[-3:]
    running = _running(client, prefix, now)
    bands = []
    for band in range(_BANDS):
        length, pending = per_band[2 * band], per_band[2 * band + 1]
        busy = 0 if isinstance(pending, Exception) else int(pending["pending"])  # NOGROUP
        length = 0 if isinstance(length, Exception) else int(length)
        bands.append({"band": band, "queued": max(0, length - busy), "running": busy})
    totals = {
        "queued": sum(b["queued"] for b in bands),
        "running": sum(b["running"] for b in bands),
        "scheduled": int(scheduled),
        "delayed": int(delayed),
        "dead": int(dead),
    }
    return {
        "name": name,
        "exists": bool(exists),
        "totals": totals,
        "bands": bands,
        "throughput": _throughput(client, prefix, now),
        "running": running[:_MAX_RUNNING],
        "dead": _dead(client, prefix),
        "schedules": _schedules(client, prefix, now),
        "workers": _workers(client, prefix, now),
    }


def _running(client: Any, prefix: str, now: float) -> list[dict[str, Any]]:  # noqa: ANN401
    """Every entry in a band's pending list, with its consumer, lease idle time and job.

    A pending entry is one a worker took and has not finished: its running job (or,
    for an instant, one it fetched and is starting). The lease is the entry's idle
    time: the worker resets it when it renews.
    """
    pipe = client.pipeline(transaction=False)
    for band in range(_BANDS):
        pipe.xpending_range(f"{prefix}:jobs:{band}", "workers", "-", "+", _MAX_RUNNING)
    pending: list[tuple[int, dict[str, Any]]] = []
    for band, reply in enumerate(pipe.execute(raise_on_error=False)):
        if isinstance(reply, Exception):
            continue  # NOGROUP: the queue's groups are not created (yet)
        pending.extend((band, item) for item in reply)
    pipe = client.pipeline(transaction=False)
    for band, item in pending:
        pipe.xrange(f"{prefix}:jobs:{band}", item["message_id"], item["message_id"])
    ids = [_entry_job(reply) for reply in pipe.execute()]
    pipe = client.pipeline(transaction=False)
    for job_id in ids:
        pipe.hmget(f"{prefix}:job:{job_id}", "name", "status", "started", "attempts", "cancel")
        pipe.hstrlen(f"{prefix}:job:{job_id}", "payload")
    fields = pipe.execute()
    out: list[dict[str, Any]] = []
    for (band, item), job_id, i in zip(pending, ids, range(0, len(fields), 2), strict=True):
        name, status, started, attempts, cancel = fields[i]
        out.append(
            {
                "id": job_id,
                "band": band,
                "entry": _text(item["message_id"]),
                "worker": _text(item["consumer"]),
                "function": _text(name or b""),
                "status": _text(status or b"missing"),
                "age": None if started is None else max(0.0, now - int(started) / 1000),
                "lease_idle": int(item["time_since_delivered"]) / 1000,
                "deliveries": int(item["times_delivered"]),
                "attempts": int(attempts or 0),
                "cancelling": cancel is not None,
                "size": int(fields[i + 1]),
            }
        )
    out.sort(key=lambda job: -(job["age"] or 0.0))
    return out


def _entry_job(reply: Any) -> str:  # noqa: ANN401 - an XRANGE reply
    for _entry, fields in reply or []:
        return _text(fields.get(b"id", b""))
    return ""


def _dead(client: Any, prefix: str) -> list[dict[str, Any]]:  # noqa: ANN401
    """The newest dead letters, with their job's name and current status."""
    entries = client.xrevrange(f"{prefix}:dead", count=_MAX_DEAD)
    pipe = client.pipeline(transaction=False)
    for _entry, fields in entries:
        pipe.hmget(f"{prefix}:job:{_text(fields.get(b'id', b''))}", "name", "status")
    rows = pipe.execute()
    out = []
    for (entry, fields), (name, status) in zip(entries, rows, strict=True):
        at = fields.get(b"at")
        out.append(
            {
                "entry": _text(entry),
                "id": _text(fields.get(b"id", b"")),
                "reason": _text(fields.get(b"reason", b"")),
                "at": None if at is None else int(at) / 1000,
                "function": _text(name or b""),
                "status": _text(status or b"missing"),
            }
        )
    return out


def _schedules(client: Any, prefix: str, now: float) -> list[dict[str, Any]]:  # noqa: ANN401
    """The queue's cron schedules, soonest first (as ``_schedules.list_schedules``)."""
    names = [_text(n) for n in client.zrange(f"{prefix}:schedules", 0, -1)]
    pipe = client.pipeline(transaction=False)
    for name in names:
        pipe.hmget(f"{prefix}:schedule:{name}", "cron", "zone", "fn", "next", "last", "last_job")
    out = []
    for name, (cron, zone, fn, nxt, last, last_job) in zip(names, pipe.execute(), strict=True):
        if cron is None or nxt is None:
            continue  # removed between the two reads
        out.append(
            {
                "name": name,
                "cron": _text(cron),
                "zone": _text(zone or b"UTC"),
                "function": _text(fn or b""),
                "next_run": int(nxt) / 1000,
                "due": int(nxt) / 1000 <= now,
                "last_run": None if last is None else int(last) / 1000,
                "last_job": None if last_job is None else _text(last_job),
            }
        )
    return out


def _throughput(client: Any, prefix: str, now: float) -> list[dict[str, Any]]:  # noqa: ANN401
    """Outcome counts of the last MINUTES minutes, oldest first (the last one is partial)."""
    current = int(now // 60)
    minutes = list(range(current - MINUTES + 1, current + 1))
    pipe = client.pipeline(transaction=False)
    for minute in minutes:
        pipe.hgetall(f"{prefix}:stats:{minute}")
    out = []
    for minute, counts in zip(minutes, pipe.execute(), strict=True):
        row: dict[str, Any] = {"minute": minute * 60}
        for outcome in ("done", "failed", "dead", "cancelled", "retry"):
            row[outcome] = int(counts.get(outcome.encode(), 0))
        out.append(row)
    return out


def _workers(client: Any, prefix: str, now: float) -> list[dict[str, Any]]:  # noqa: ANN401
    """The queue's workers, by their last heartbeat; silent ones marked dead."""
    out = []
    for consumer, raw in client.hgetall(f"{prefix}:workers").items():
        try:
            info = json.loads(raw)
            beat = float(info["beat"])
        except (ValueError, KeyError, TypeError):
            continue  # not ours: skip rather than guess
        out.append(
            {
                "name": _text(consumer),
                "host": str(info.get("host", "")),
                "pid": info.get("pid"),
                "processes": info.get("processes"),
                "capacity": info.get("capacity"),
                "held": info.get("held"),
                "started": info.get("started"),
                "last_beat": max(0.0, now - beat),
                "alive": now - beat <= DEAD_AFTER,
            }
        )
    out.sort(key=lambda w: (not w["alive"], w["name"]))
    return out


def nodes_snapshot(client: Any, now: float) -> list[dict[str, Any]]:  # noqa: ANN401
    """The registered nodes: alive or not (their heartbeat key), and their supervisors."""
    raw = client.hgetall(NODES_KEY)
    names = sorted(_text(n) for n in raw)
    pipe = client.pipeline(transaction=False)
    for name in names:
        pipe.pttl(f"isopool:node:{name}:alive")
    out = []
    for name, ttl in zip(names, pipe.execute(), strict=True):
        try:
            info = json.loads(raw[name.encode()])
        except (ValueError, TypeError):
            info = {}
        supervisors = info.get("supervisors", {})
        out.append(
            {
                "name": name,
                "alive": int(ttl) > 0 or int(ttl) == -1,
                "heartbeat_ttl": max(0, int(ttl)) / 1000,
                "host": str(info.get("host", "")),
                "pid": info.get("pid"),
                "version": str(info.get("version", "")),
                "started": info.get("started"),
                "supervisors": sorted(str(s) for s in supervisors)
                if isinstance(supervisors, dict)
                else [],
            }
        )
    return out


def _text(value: object) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)

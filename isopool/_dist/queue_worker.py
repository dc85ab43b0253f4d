"""QueueWorker: runs a RedisQueue's jobs on a local isopool Pool (``isopool worker``).

One loop, one thread::

    fetch (band 0 first)  -> START script (owns the entry; counts the delivery)
                          -> verify the signature -> a raw task on the Pool
    every lease/3         -> RENEW every held entry; lost -> kill our copy, commit
                             nothing; cancel requested -> kill it, commit cancelled
    every lease/4         -> claim entries idle for longer than the lease (dead workers)
    every 0.5 s           -> look for cancel flags on running jobs: kill their processes
    every 0.2 s           -> PROMOTE due retries and due scheduled jobs into the streams
    every 1 s             -> FIRE due cron schedules (``_schedules``): one job per tick
    every 1 s             -> BEAT (``_inspect``): this worker's entry in the queue's
                             workers hash, and its per-minute outcome counts
    continually           -> FINISH each finished job: done, failed, retry (back-off),
                             cancelled, or dead-letter

The worker never unpickles a job or a result: the signed call bytes go to a worker
process as they are, and the pickled outcome comes back as bytes to be signed and
stored. A crash of the job's process counts as a lost delivery: the job goes back to
the queue until ``max_deliveries``, then to the dead-letter stream. An exception or a
time-out follows the job's restart policy, with its own count (``retries``). A job
signed with a key id the queue knows but this worker lacks is handed back (queued
again a second later, for any worker); a bad signature is dead-lettered. On SIGTERM
or Ctrl-C the worker stops fetching, lets running jobs finish for ``drain`` seconds,
and hands the rest back.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import pickle
import socket
import threading
import time
import uuid
from typing import Any, Final

from .._core.metrics import JobMetrics
from .._core.policy import backoff_delay
from .._errors import QueueUnavailableError, SignatureError, TaskCrashError
from .._pool import Pool
from .._spec import MAX_PRIORITY, TaskOptions
from .._task import Task
from . import inspect as _inspect
from .redis_queue import GROUP, JobOptions, RedisQueue, _now_ms
from .schedules import fire_due
from .signing import Keyring

__all__ = ["QueueWorker"]

log = logging.getLogger(__name__)

_PROMOTE_EVERY: Final = 0.2  # seconds between moves of due jobs into the streams
_CANCEL_EVERY: Final = 0.5  # seconds between looks for cancel flags on running jobs
_SCHEDULES_EVERY: Final = 1.0  # seconds between looks for due cron schedules
_IDLE_BLOCK_MS: Final = 500  # how long an idle worker blocks in XREADGROUP
_BUSY_WAIT: Final = 0.02  # how long a busy worker waits for a job to finish
_BACKOFF_CAP: Final = 2.0  # the longest pause between attempts to reach Redis
# A job signed with a key this worker lacks waits this long before it is queued again
# (for any worker): long enough that a worker alone without the key does not spin on
# it, short enough that one with the key gets it soon.
_FOREIGN_DELAY_MS: Final = 1000
_FOREIGN_LOG_CAP: Final = 1000  # jobs per foreign key id logged once (then silent)

# One round trip instead of one XREADGROUP per band: reads the bands most urgent first
# and stops once ``room`` entries are taken, as the loop it replaces did. KEYS are the
# band streams (one hash tag, so one slot); ARGV: group, consumer, room.
_FETCH_LUA: Final = """
local got, room = {}, tonumber(ARGV[3])
for band, key in ipairs(KEYS) do
  local reply = redis.call('XREADGROUP', 'GROUP', ARGV[1], ARGV[2],
                           'COUNT', room - #got, 'STREAMS', key, '>')
  if reply then
    for _, entry in ipairs(reply[1][2]) do
      local fields, id = entry[2], ''
      for i = 1, #fields, 2 do
        if fields[i] == 'id' then id = fields[i + 1] end
      end
      got[#got + 1] = {band - 1, entry[1], id}
    end
    if #got >= room then break end
  end
end
return got
"""


@dataclasses.dataclass(slots=True)
class _Run:
    job_id: str
    band: int
    entry: str
    task: Task[Any]
    options: JobOptions
    retries: int  # retries already spent after the job raised (not crashes)
    lost: bool = False  # our lease was taken: never commit
    cancelled: bool = False  # the job was cancelled while running
    commit: tuple[Any, ...] | None = None  # a FINISH that Redis did not take yet
    started: float = dataclasses.field(default_factory=time.monotonic)  # for the metrics


class QueueWorker:
    """Run the jobs of ``queue`` on a local Pool until ``stop()``.

    Args:
        queue: The queue to serve.
        workers: Worker processes (default: one per CPU).
        prefetch: Jobs held beyond one per worker (default 1 per worker): a small
            prefetch hides the Redis round trip for short jobs.
        drain: On stop, seconds to let running jobs finish before handing them back.
        consumer: This worker's name in the consumer group (default host:pid:random).

    Attributes:
        metrics: What it counts about its jobs (``_metrics.JobMetrics``), served by
            ``isopool worker --metrics-port``.
    """

    def __init__(
        self,
        queue: RedisQueue,
        *,
        workers: int | None = None,
        prefetch: int | None = None,
        drain: float = 30.0,
        consumer: str | None = None,
    ) -> None:
        self.queue = queue
        self.pool = Pool(workers, name=f"queue:{queue.name}")
        self.capacity = (
            self.pool.max_workers * 2 if prefetch is None else self.pool.max_workers + prefetch
        )
        self.drain = drain
        self.consumer = consumer or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        # Keyed by (band, entry): entry ids are per stream, and two bands' streams give
        # the same id to entries added in the same millisecond.
        self._runs: dict[tuple[int, str], _Run] = {}
        self._stopping = threading.Event()
        self._wake = threading.Event()
        self._lease_ms = int(queue.lease * 1000)
        self._beat = _inspect.Heartbeat(
            queue.redis, queue.prefix, self.consumer, self.pool.max_workers, self.capacity
        )
        self.metrics = JobMetrics(queue.name, held=lambda: len(self._runs))  # see _metrics
        self._fetch_script = queue.redis.register_script(_FETCH_LUA)
        # Key ids of the queue we lack -> the ids of their jobs already logged.
        self._foreign: dict[str, set[str]] = {}

    def stop(self) -> None:
        """Ask the loop to stop taking jobs and exit (safe from a signal handler)."""
        self._stopping.set()
        self._wake.set()

    def run(self) -> None:
        """Serve the queue until ``stop()``; then drain, hand back, and shut down.

        Raises:
            QueueUnavailableError: Redis lost the queue's state (the epoch vanished).
        """
        log.info("queue %r: worker %s serving", self.queue.name, self.consumer)
        try:
            self._loop()
            self._drain()
        finally:
            self._beat.leave()
            self.pool.terminate()

    # -- the loop ----------------------------------------------------------------------

    def _loop(self) -> None:
        timers = {
            "promote": 0.0,
            "cancel": 0.0,
            "schedules": 0.0,
            "beat": 0.0,
            "claim": 0.0,
            "renew": time.monotonic() + self.queue.lease / 3,
        }
        pause = 0.1
        while not self._stopping.is_set():
            try:
                self._round(timers)
                pause = 0.1
            except QueueUnavailableError as exc:
                if _state_lost(exc):
                    raise
                self.metrics.redis_error()
                log.warning("queue %r: %s; retrying in %.1f s", self.queue.name, exc, pause)
                self._stopping.wait(pause)
                pause = min(_BACKOFF_CAP, pause * 2)

    def _round(self, timers: dict[str, float]) -> None:
        now = time.monotonic()
        if now >= timers["promote"]:
            self.queue.promote(_now_ms(), 100)
            timers["promote"] = now + _PROMOTE_EVERY
        if now >= timers["schedules"]:
            fire_due(self.queue, time.time())
            timers["schedules"] = now + _SCHEDULES_EVERY
        if now >= timers["beat"]:
            self._beat.beat(len(self._runs))
            timers["beat"] = now + _inspect.BEAT_EVERY
        if now >= timers["cancel"]:
            self._check_cancels()
            timers["cancel"] = now + _CANCEL_EVERY
        if now >= timers["renew"]:
            self._renew()
            timers["renew"] = now + self.queue.lease / 3
        if now >= timers["claim"]:
            self._claim_stale()
            timers["claim"] = now + self.queue.lease / 4
        self._finish_done()
        room = self.capacity - len(self._runs)
        if room > 0:
            block = None if self._runs else _IDLE_BLOCK_MS
            self._fetch(room, block)
            if self._runs and not any(r.task.done() for r in self._runs.values()):
                self._wait_for_work()
        else:
            self._wait_for_work()

    def _wait_for_work(self) -> None:
        self._wake.wait(_BUSY_WAIT)
        self._wake.clear()

    # -- taking jobs ---------------------------------------------------------------------

    def _fetch(self, room: int, block_ms: int | None) -> None:
        """Take up to ``room`` new entries, most urgent band first."""
        r: Any = self.queue.redis
        bands = [self.queue.stream(b) for b in range(MAX_PRIORITY + 1)]
        with self.queue.translate_errors():
            reply = self._fetch_script(keys=bands, args=[GROUP, self.consumer, room])
            got = [(int(band), _text(entry), _text(job_id)) for band, entry, job_id in reply]
            if not got and block_ms is not None and not self._stopping.is_set():
                streams = {self.queue.stream(b): ">" for b in range(MAX_PRIORITY + 1)}
                got = _entries(r.xreadgroup(GROUP, self.consumer, streams, count=1, block=block_ms))
        for band, entry, job_id in got:
            self._start(band, entry, job_id, claim_ms=-1)

    def _claim_stale(self) -> None:
        """Take over entries whose holder stopped renewing (a dead or paused worker)."""
        r = self.queue.redis
        for band in range(MAX_PRIORITY + 1):
            with self.queue.translate_errors():
                stale = r.xpending_range(
                    self.queue.stream(band), GROUP, "-", "+", 50, idle=self._lease_ms
                )
            for item in stale:
                entry = item["message_id"].decode()
                # Our own entries count too: one delivered to us whose reply was lost
                # (a dropped connection) is not in _runs and would never run.
                if (band, entry) not in self._runs:
                    self._claim(band, entry)

    def _claim(self, band: int, entry: str) -> None:
        """Claim one stale entry: read its job id (START must declare the job's key)."""
        stream = self.queue.stream(band)
        with self.queue.translate_errors():
            fields = self.queue.redis.xrange(stream, entry, entry)
            if not fields:  # its data is gone: nothing can run; drop the pending entry
                self.queue.redis.xack(stream, GROUP, entry)
                return
        self._start(band, entry, _text(fields[0][1][b"id"]), claim_ms=self._lease_ms)

    def _start(self, band: int, entry: str, job_id: str, claim_ms: int) -> None:
        with self.queue.translate_errors():
            reply = self.queue.run(
                "start",
                self.queue.worker_keys(band, job_id),
                entry,
                self.consumer,
                self.queue.max_deliveries,
                _now_ms(),
                claim_ms,
                job_id,
            )
        verdict = _text(reply[0])
        if verdict == "dead":
            self.metrics.stored("dead")
            log.error(
                "queue %r: job %s dead-lettered (delivery limit)", self.queue.name, _text(reply[1])
            )
        if verdict != "run":
            return
        job_id, payload, options, name, retries = (
            _text(reply[1]),
            reply[2],
            reply[3],
            _text(reply[4]),
            int(reply[6]),
        )
        self.metrics.started(entry, _now_ms(), claimed=claim_ms >= 0)
        if claim_ms >= 0:
            log.warning("queue %r: claimed job %s from a silent worker", self.queue.name, job_id)
        if self._is_foreign(payload):
            self._hand_back_foreign(band, entry, job_id, payload)
            return
        try:
            body = self.queue.keys.verify(payload, self.queue.context(job_id, "call"))
        except (SignatureError, ValueError) as exc:
            log.error("queue %r: job %s refused: %s; dead-lettered", self.queue.name, job_id, exc)
            self._commit(band, entry, job_id, "dead", "", b"", 60.0, 0, "bad-signature")
            return
        try:
            opts = JobOptions.from_json(options)
        except (ValueError, TypeError) as exc:  # options are not signed: report them as such
            log.error("queue %r: job %s has bad options: %s", self.queue.name, job_id, exc)
            self._commit(band, entry, job_id, "dead", "", b"", 60.0, 0, f"bad-options: {exc}")
            return
        local = TaskOptions(timeout=opts.timeout, shutdown=5.0)
        monitor = self.pool._monitor
        task = Task._new_raw(monitor, monitor.next_task_id(), body, name, local)
        task.add_done_callback(lambda _task: self._wake.set())
        self._runs[band, entry] = _Run(job_id, band, entry, task, opts, retries)
        monitor.submit(task)

    def _is_foreign(self, payload: bytes) -> bool:
        """Signed with a key id the queue knows (it has a key check) but we lack?

        Such a job is another worker's (during a key rotation, say), not a forgery. A
        key id the queue never saw is no one's: that job is refused as forged.
        """
        kid = Keyring.key_id_of(payload)
        if kid is None or self.queue.keys.holds(kid):
            return False
        if kid not in self._foreign:
            with self.queue.translate_errors():
                if not self.queue.redis.hexists(self.queue.keycheck_key, kid):
                    return False
            self._foreign[kid] = set()
        return True

    def _hand_back_foreign(self, band: int, entry: str, job_id: str, payload: bytes) -> None:
        """Give the job back, out of the stream for a while, for a worker with its key."""
        seen = self._foreign[Keyring.key_id_of(payload) or ""]
        if job_id not in seen and len(seen) < _FOREIGN_LOG_CAP:
            seen.add(job_id)
            log.warning(
                "queue %r: job %s is signed with key id %r, which this worker lacks; "
                "handed back for a worker that holds it",
                self.queue.name,
                job_id,
                Keyring.key_id_of(payload),
            )
        self._commit(band, entry, job_id, "release", "", b"", 60.0, _FOREIGN_DELAY_MS, "")

    # -- leases ----------------------------------------------------------------------------

    def _renew(self) -> None:
        runs = [run for run in self._runs.values() if not run.task.done() and not run.lost]
        if not runs:
            return
        # One call per run, not a pipeline of scripts: a cluster pipeline cannot load a
        # script that a newly promoted master does not have (NOSCRIPT); a call can.
        with self.queue.translate_errors():
            replies = [
                self.queue.run(
                    "renew",
                    [self.queue.stream(run.band), self.queue.job_key(run.job_id)],
                    run.entry,
                    self.consumer,
                )
                for run in runs
            ]
        for run, reply in zip(runs, replies, strict=True):
            if reply == 0:
                log.warning(
                    "queue %r: lost the lease on job %s; stopping our copy",
                    self.queue.name,
                    run.job_id,
                )
                run.lost = True
                run.task._owner.kill(run.task, False, "brutal_kill")
            elif reply == 2 and not run.cancelled:
                run.cancelled = True
                run.task._owner.kill(run.task, False)

    def _check_cancels(self) -> None:
        """Stop the runs whose job was cancelled (``Job.cancel`` sets a flag on it).

        Renewals see the flag too, but only every lease/3; this look is one pipelined
        HEXISTS per running job, twice a second, so a cancel takes effect at once.
        """
        runs = [r for r in self._runs.values() if not (r.task.done() or r.lost or r.cancelled)]
        if not runs:
            return
        with self.queue.translate_errors():
            pipe = self.queue.redis.pipeline(transaction=False)
            for run in runs:
                pipe.hexists(self.queue.job_key(run.job_id), "cancel")
            flags = pipe.execute()
        for run, flagged in zip(runs, flags, strict=True):
            if flagged:
                log.info("queue %r: job %s cancelled; stopping it", self.queue.name, run.job_id)
                run.cancelled = True
                run.task._owner.kill(run.task, False)

    # -- results -----------------------------------------------------------------------------

    def _finish_done(self) -> None:
        for key, run in list(self._runs.items()):
            if run.commit is None and not run.task.done():
                continue
            if run.lost:
                del self._runs[key]
                continue
            if run.commit is None:
                run.commit = self._decide(run)
                self.metrics.finished(run.task, time.monotonic() - run.started)
            if self._commit(*run.commit):
                del self._runs[key]
                self._release_unique(run)

    def _release_unique(self, run: _Run) -> None:
        """Let a finished job's uniqueness key expire (best effort: enqueue re-checks)."""
        if run.options.key is None or run.commit is None or run.commit[3] in ("retry", "release"):
            return
        try:
            self.queue.release_unique(run.options.key, run.job_id)
        except QueueUnavailableError as exc:
            if _state_lost(exc):
                raise

    def _decide(self, run: _Run) -> tuple[Any, ...]:
        """What to store for a finished run, as the arguments of ``_commit``."""
        task, opts = run.task, run.options
        base = (run.band, run.entry, run.job_id)
        ttl = opts.result_ttl
        if task.cancelled():
            return (*base, "cancelled", "", b"", ttl, 0, "cancelled")
        exc = task.exception(0)
        if isinstance(exc, TaskCrashError):
            log.warning("queue %r: job %s crashed its worker: %s", self.queue.name, run.job_id, exc)
            return (*base, "retry", "", b"", ttl, 0, "crashed")  # a lost delivery
        if exc is None:
            kind, payload = task.result(0)
            if kind in ("ok", "shutdown"):
                return (*base, "done", kind, self._sign(run, payload), ttl, 0, "")
            blob_kind, blob = "raised", payload
        else:
            blob_kind, blob = "error", pickle.dumps(exc)
        if opts.restart == "transient":
            if run.retries < opts.max_retries:
                delay = int(backoff_delay(opts.backoff, run.retries + 1) * 1000)
                return (*base, "retry", "", b"", ttl, delay, "raised")
            return (*base, "dead", blob_kind, self._sign(run, blob), ttl, 0, "retries-exhausted")
        return (*base, "failed", blob_kind, self._sign(run, blob), ttl, 0, "")

    def _sign(self, run: _Run, body: bytes) -> bytes:
        return self.queue.keys.sign(body, self.queue.context(run.job_id, "result"))

    def _commit(
        self,
        band: int,
        entry: str,
        job_id: str,
        status: str,
        kind: str,
        blob: bytes,
        ttl: float,
        retry_ms: int,
        reason: str,
    ) -> bool:
        """Run FINISH; False if Redis is unreachable (the caller retries later)."""
        try:
            with self.queue.translate_errors():
                done = self.queue.run(
                    "finish",
                    self.queue.worker_keys(band, job_id),
                    entry,
                    self.consumer,
                    job_id,
                    status,
                    kind,
                    blob,
                    max(1, int(ttl)),
                    retry_ms,
                    _now_ms(),
                    reason,
                )
        except QueueUnavailableError as exc:
            if _state_lost(exc):
                raise
            self.metrics.redis_error()
            return False
        if done:
            self._beat.count(status)
            self.metrics.stored(status)
        else:
            log.warning(
                "queue %r: result of job %s refused: another worker holds its lease",
                self.queue.name,
                job_id,
            )
        return True

    # -- stopping --------------------------------------------------------------------------------

    def _drain(self) -> None:
        """Let running jobs finish for ``drain`` seconds, then hand the rest back."""
        deadline = time.monotonic() + self.drain
        while self._runs and time.monotonic() < deadline:
            try:
                self._finish_done()
            except QueueUnavailableError as exc:
                if _state_lost(exc):
                    raise
            if self._runs:
                self._wait_for_work()
        for key, run in list(self._runs.items()):
            run.task._owner.kill(run.task, True, "brutal_kill")
            if not run.lost and run.commit is None:
                self._commit(run.band, run.entry, run.job_id, "release", "", b"", 60.0, 0, "")
            del self._runs[key]


def _entries(reply: Any) -> list[tuple[int, str, str]]:  # noqa: ANN401 - a Redis reply
    """(band, entry, job id) of each entry in an XREADGROUP reply."""
    out: list[tuple[int, str, str]] = []
    for stream, messages in reply or []:
        band = int(_text(stream).rsplit(":", 1)[1])
        out.extend((band, _text(entry), _text(fields[b"id"])) for entry, fields in messages)
    return out


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _state_lost(exc: QueueUnavailableError) -> bool:
    return "lost the state" in str(exc)

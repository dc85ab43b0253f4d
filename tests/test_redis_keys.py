"""Every Lua script of RedisQueue declares every key it touches in KEYS (issue 9, §3).

Redis itself does not enforce this outside a cluster (and in a cluster only by slot), so
the test makes a strict server: each script is wrapped in a Lua prelude that shadows
``redis.call``/``redis.pcall`` with versions that refuse a command whose key is not in
KEYS, and any command the prelude does not know (so a new multi-key command must be
added here, with its key positions, before it can be used). Then the whole job life
cycle runs through the wrapped scripts: enqueue, scheduled, unique, run, failure,
retry, dead letter, cancel (waiting and running), cron tick, requeue, a claim of a
stale entry, and a hand-back on stop.
"""

from __future__ import annotations

import threading
from concurrent.futures import CancelledError

import pytest

import isopool
from isopool._dist import redis_lua as _redis_lua
from isopool._dist.queue_worker import QueueWorker
from isopool._dist.redis_queue import GROUP
from isopool._dist.schedules import fire_due
from tests.conftest import wait_for

ECHO = "tests._tasks:echo"

# Every command our scripts use takes exactly one key, its first argument.
_STRICT_PRELUDE = """
local declared = {}
for _, k in ipairs(KEYS) do declared[k] = true end
local first_key = {
  DEL=1, EXISTS=1, EXPIRE=1, GET=1, HDEL=1, HEXISTS=1, HGET=1, HINCRBY=1, HMGET=1, HSET=1,
  PERSIST=1, PEXPIRE=1, RPUSH=1, SET=1, XACK=1, XADD=1, XCLAIM=1, XDEL=1, XPENDING=1,
  XRANGE=1, ZADD=1, ZREM=1, ZSCORE=1,
}
local function strict(call)
  return function(command, key, ...)
    local name = string.upper(command)
    if not first_key[name] then
      error('ISOPOOL_STRICT command ' .. name .. ' is not known to the strict prelude')
    end
    if not declared[key] then
      error('ISOPOOL_STRICT ' .. name .. ' on undeclared key ' .. tostring(key))
    end
    return call(command, key, ...)
  end
end
local redis = setmetatable({call = strict(redis.call), pcall = strict(redis.pcall)},
  {__index = redis})
"""


@pytest.fixture
def strict_scripts(monkeypatch):
    """Wrap every script of RedisQueue (queues made after this) in the strict prelude."""
    for name, source in list(_redis_lua.SCRIPTS.items()):
        monkeypatch.setitem(_redis_lua.SCRIPTS, name, _STRICT_PRELUDE + source)


@pytest.mark.redis
def test_strict_prelude_refuses_undeclared_key(strict_scripts, queues):
    """The prelude itself works: a script touching a key it did not declare errors."""
    import redis

    queue = queues()
    probe = queue.redis.register_script(_STRICT_PRELUDE + "return redis.call('GET', 'other')")
    with pytest.raises(redis.ResponseError, match="undeclared key other"):
        probe(keys=["declared"], args=[])
    multi = queue.redis.register_script(_STRICT_PRELUDE + "return redis.call('MGET', KEYS[1])")
    with pytest.raises(redis.ResponseError, match="MGET is not known"):
        multi(keys=["declared"], args=[])


@pytest.mark.redis
@pytest.mark.slow
def test_job_life_cycle_every_script_declares_its_keys(strict_scripts, queues, tmp_path):
    """Every state change of every kind of job runs with scripts that refuse undeclared keys."""
    queue = queues(lease=1.0)
    failures: list[BaseException] = []
    worker = QueueWorker(queue, workers=2, drain=0.2)

    def serve() -> None:
        try:
            worker.run()
        except BaseException as exc:  # a strict-prelude error lands here
            failures.append(exc)

    # A claim: an entry delivered to a consumer that died before starting it.
    claimed = queue.options(priority=3).enqueue(ECHO, "claimed")
    queue.redis.xreadgroup(GROUP, "ghost", {queue.stream(3): ">"}, count=1)
    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        done = queue.enqueue(ECHO, "done")
        scheduled = queue.enqueue_in(0.3, ECHO, "scheduled")
        unique = queue.options(key="k", unique_for=60).enqueue(ECHO, "unique")
        assert queue.options(key="k", unique_for=60).enqueue(ECHO, "again").id == unique.id
        failed = queue.enqueue("tests._tasks:raise_value_error", "failed")
        retried = queue.options(restart="transient", backoff=0.1).enqueue(
            "tests._tasks:fail_n_times", str(tmp_path / "retried"), 1, "retried"
        )
        dead = queue.options(restart="transient", max_retries=1, backoff=0.1).enqueue(
            "tests._tasks:fail_always", str(tmp_path / "dead")
        )
        crashed = queue.enqueue("tests._tasks:exit_with", 3)  # delivery limit: dead letter
        waiting = queue.enqueue_in(3600, ECHO, "never")
        assert waiting.cancel()
        running = queue.enqueue("tests._tasks:hang", 60)
        assert wait_for(lambda: running.status() == "running", timeout=30)
        assert running.cancel()
        schedule = queue.schedule("* * * * *", ECHO, "tick", name="tick")
        assert fire_due(queue, schedule.next_run + 0.001) == 1
        ticked = queue.job(queue.schedules()[0].last_job)

        assert done.result(timeout=30) == "done"
        assert scheduled.result(timeout=30) == "scheduled"
        assert unique.result(timeout=30) == "unique"
        assert retried.result(timeout=30) == "retried"
        assert claimed.result(timeout=30) == "claimed"
        assert ticked.result(timeout=30) == "tick"
        with pytest.raises(ValueError, match="failed"):
            failed.result(timeout=30)
        with pytest.raises(RuntimeError):
            dead.result(timeout=30)
        with pytest.raises(isopool.TaskCrashError):
            crashed.result(timeout=60)
        for job in (waiting, running):
            with pytest.raises(CancelledError):
                job.result(timeout=30)
        assert {d.job_id for d in queue.dead_letters()} >= {dead.id, crashed.id}
        assert queue.requeue(failed.id)
        with pytest.raises(ValueError, match="failed"):
            failed.result(timeout=30)
        assert queue.unschedule("tick")
        handed_back = queue.enqueue("tests._tasks:hang", 60)
        assert wait_for(lambda: handed_back.status() == "running", timeout=30)
    finally:
        worker.stop()
        thread.join(timeout=60)
        if failures:  # the worker's own error says which script touched which key
            raise failures[0]
    assert not thread.is_alive()
    assert handed_back.status() == "queued"  # released by FINISH on stop
    assert queue.pending() >= 1

"""Redis faults and clear errors of RedisQueue, against a real redis-server (issue 9, §3).

A redis-server SIGSTOPped for longer than the caller's time-out: ``Job.result(timeout=T)``
and ``enqueue`` (bounded by the queue's ``redis_timeout``) give up near their deadline
with ``QueueUnavailableError`` instead of waiting for the stall to end, and all works
again after SIGCONT. Then the errors that say what was wrong: an unknown job id, a
payload over Redis's value limit, bad options, a database the server does not have.
"""

from __future__ import annotations

import logging
import signal
import time

import pytest

import isopool
from isopool import JobNotFoundError, QueueUnavailableError
from tests._redis import SECRET, unique

pytestmark = [pytest.mark.redis]

ECHO = "tests._tasks:echo"


@pytest.fixture
def stalled(redis_server):
    """SIGSTOP the test's redis-server; SIGCONT it on leaving (also if the test fails)."""

    class Stall:
        def __enter__(self) -> None:
            redis_server.proc.send_signal(signal.SIGSTOP)
            self.since = time.monotonic()

        def hold(self, seconds: float) -> None:
            """Keep Redis stopped until ``seconds`` after the SIGSTOP (the fault's length)."""
            time.sleep(max(0.0, seconds - (time.monotonic() - self.since)))

        def __exit__(self, *exc: object) -> None:
            redis_server.proc.send_signal(signal.SIGCONT)

    stall = Stall()
    try:
        yield stall
    finally:
        redis_server.proc.send_signal(signal.SIGCONT)


@pytest.mark.slow
def test_job_result_timeout_while_redis_stalled_raises_queue_unavailable(
    redis_server, queues, processes, stalled
):
    """result(timeout=1) while Redis is stopped raises QueueUnavailableError near 1 s."""
    queue = queues()
    job = queue.enqueue(ECHO, "after")
    with stalled:
        started = time.monotonic()
        with pytest.raises(QueueUnavailableError, match="cannot reach Redis"):
            job.result(timeout=1)
        assert time.monotonic() - started < 10 * 1  # a 10x margin: it takes ~1.3 s
        stalled.hold(6.0)  # a 6 s stall in all: connections it left stale must not matter
    processes.worker(redis_server.url, queue.name)
    assert job.result(timeout=30) == "after"


@pytest.mark.slow
def test_enqueue_while_redis_stalled_raises_after_redis_timeout(redis_server, queues, stalled):
    """enqueue with redis_timeout=1 while Redis is stopped raises QueueUnavailableError."""
    queue = queues(redis_timeout=1.0)
    before = queue.enqueue(ECHO, "before")
    with stalled:
        started = time.monotonic()
        with pytest.raises(QueueUnavailableError):
            queue.enqueue(ECHO, "stalled")
        assert time.monotonic() - started < 10 * 1
        started = time.monotonic()
        with pytest.raises(QueueUnavailableError):
            before.status()
        assert time.monotonic() - started < 10 * 1
    job = queue.enqueue(ECHO, "after")
    assert job.status() == "queued"


def test_redis_timeout_negative_raises_value_error():
    """redis_timeout is validated like any duration, naming itself."""
    with pytest.raises(ValueError, match="redis_timeout"):
        isopool.RedisQueue("redis://127.0.0.1:1/0", "q", secret=SECRET, redis_timeout=-1)


# -- clear errors ---------------------------------------------------------------------------


def test_job_result_of_unknown_id_raises_job_not_found_error(queues):
    """A job id that was never enqueued: JobNotFoundError, a LookupError, no ConnectionError."""
    queue = queues()
    job = queue.job("0" * 32)
    with pytest.raises(JobNotFoundError, match=r"no job 0{32}") as info:
        job.result(timeout=5)
    assert isinstance(info.value, LookupError)
    assert not isinstance(info.value, ConnectionError)
    with pytest.raises(JobNotFoundError):
        job.cancel()
    assert job.status() == "missing"


def test_enqueue_payload_over_value_limit_raises_value_error_naming_sizes(queues, monkeypatch):
    """A call bigger than Redis's value limit is refused before sending, with both sizes."""
    from isopool._dist import redis_common as _redis_common

    monkeypatch.setattr(_redis_common, "MAX_PAYLOAD_BYTES", 4096)
    queue = queues()
    with pytest.raises(ValueError, match=r"is \d+ bytes .* limit of 4096 bytes"):
        queue.enqueue(ECHO, b"x" * 10_000)
    assert queue.pending() == 0
    assert queue.enqueue(ECHO, b"x" * 100).status() == "queued"


def test_bad_job_option_raises_naming_the_option(queues):
    """Bad options are reported as such: ValueError or TypeError naming the option."""
    queue = queues()
    with pytest.raises(ValueError, match="priority"):
        queue.options(priority=42)
    with pytest.raises(TypeError, match="colour"):
        queue.options(colour="red")
    with pytest.raises(ValueError, match="replicas"):
        isopool.RedisQueue(queue.url, unique(), secret=SECRET, replicas=-1)


@pytest.mark.slow
def test_job_with_bad_stored_options_is_dead_lettered_as_bad_options(
    redis_server, queues, processes
):
    """Options corrupted in Redis: the job is dead-lettered as bad-options, not bad-signature."""
    queue = queues()
    job = queue.enqueue(ECHO, 1)
    queue.redis.hset(job.key, "options", '{"priority": 42}')
    processes.worker(redis_server.url, queue.name)
    with pytest.raises(ValueError, match=r"bad-options: .*priority"):
        job.result(timeout=30)
    assert [d.reason.split(":")[0] for d in queue.dead_letters()] == ["bad-options"]


def test_queue_url_with_missing_database_raises_value_error_naming_it(redis_server):
    """redis://host:port/99 on a server with 16 databases: the error names database 99."""
    url = redis_server.url.rsplit("/", 1)[0] + "/99"
    with pytest.raises(ValueError, match="no database 99"):
        isopool.RedisQueue(url, unique(), secret=SECRET)


def test_enqueue_with_replicas_but_none_attached_logs_warning(queues, caplog):
    """replicas=1 on a server without replicas: the job is queued, the shortfall logged."""
    queue = queues(replicas=1)
    with caplog.at_level(logging.WARNING, logger="isopool._dist.redis_queue"):
        job = queue.enqueue(ECHO, 1)
    assert job.status() == "queued"
    assert "0 of 1 replicas" in caplog.text

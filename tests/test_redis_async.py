"""AsyncRedisQueue and AsyncJob against a real redis-server and ``isopool worker`` (issue 9, 2).

Each test runs one coroutine with ``asyncio.run``; the worker is a real process. The
loop is never blocked (a 10 ms heartbeat keeps ticking while a 1 s job is awaited),
and cancelling the coroutine that awaits a job leaves the job alone.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from concurrent.futures import CancelledError

import pytest

import isopool
from isopool import JobNotFoundError, SignatureError
from isopool._core.wire import RemoteTraceback
from tests._redis import SECRET, unique

ECHO = "tests._tasks:echo"


@pytest.fixture
def served(redis_server, processes) -> str:
    """A fresh queue name with one ``isopool worker`` serving it."""
    name = unique()
    processes.worker(redis_server.url, name)
    return name


def run(coro):
    """Run ``coro`` on a fresh loop, failing (not hanging) past 60 s."""
    return asyncio.run(asyncio.wait_for(coro, 60))


def make(redis_server, name: str, **kwargs) -> isopool.AsyncRedisQueue:
    kwargs.setdefault("secret", SECRET)
    return isopool.AsyncRedisQueue(redis_server.url, name, **kwargs)


async def wait_status(job: isopool.AsyncJob, wanted: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while await job.status() != wanted:
        assert time.monotonic() < deadline, f"job never reached {wanted!r}"
        await asyncio.sleep(0.02)


@pytest.mark.redis
def test_async_enqueue_by_name_and_callable_await_results(redis_server, served):
    """Jobs enqueued from asyncio run on a worker; `await job` and result() give values."""
    name = served

    async def main():
        async with make(redis_server, name) as queue:
            by_name = await queue.enqueue(ECHO, "by name")
            by_callable = await queue.enqueue(pow, 2, 10)
            assert await by_name == "by name"
            assert await by_callable.result(timeout=30) == 1024
            assert await by_name.status() == "done"
            assert (await queue.job(by_name.id).info())["attempts"] == "1"

    run(main())


@pytest.mark.redis
def test_async_job_raising_reraises_own_type_with_remote_traceback(redis_server, served):
    """An awaited job's exception comes back as itself, the worker's traceback as cause."""
    name = served

    async def main():
        async with make(redis_server, name) as queue:
            job = await queue.enqueue("tests._tasks:raise_value_error", "remote boom")
            with pytest.raises(ValueError, match="remote boom") as info:
                await job
            assert isinstance(info.value.__cause__, RemoteTraceback)

    run(main())


@pytest.mark.redis
def test_async_enqueue_in_at_and_unique_key_follow_blocking_semantics(redis_server, served):
    """enqueue_in is scheduled then runs; enqueue_at a past time runs; a key dedupes."""
    name = served

    async def main():
        async with make(redis_server, name) as queue:
            assert await (await queue.enqueue(ECHO, "warm")).result(timeout=30) == "warm"
            later = await queue.enqueue_in(0.5, ECHO, "later")
            assert await later.status() == "scheduled"
            past = await queue.options(priority=2).enqueue_at(time.time() - 5, ECHO, "past")
            keyed = queue.options(key=f"report-{name}", unique_for=60)
            first = await keyed.enqueue(ECHO, "once")
            assert (await keyed.enqueue(ECHO, "twice")).id == first.id
            assert [await j.result(timeout=30) for j in (later, past, first)] == [
                "later",
                "past",
                "once",
            ]
            assert (await keyed.enqueue(ECHO, "after")).id == first.id  # unique_for holds

    run(main())


@pytest.mark.redis
def test_async_result_wait_never_blocks_the_event_loop(redis_server, served):
    """A 10 ms heartbeat keeps ticking (no gap over 0.5 s) while a 1 s job is awaited."""
    name = served

    async def main():
        async with make(redis_server, name) as queue:
            await (await queue.enqueue(ECHO, "warm")).result(timeout=30)
            ticks: list[float] = []

            async def heartbeat():
                while True:
                    ticks.append(time.monotonic())
                    await asyncio.sleep(0.01)

            beat = asyncio.create_task(heartbeat())
            job = await queue.enqueue("tests._tasks:sleep_then", 1.0, "slept")
            assert await job.result(timeout=30) == "slept"
            beat.cancel()
            gaps = [b - a for a, b in itertools.pairwise(ticks)]
            assert len(ticks) >= 20
            assert max(gaps) < 0.5

    run(main())


@pytest.mark.redis
def test_async_awaiting_task_cancelled_job_still_finishes(redis_server, served):
    """Cancelling the coroutine that awaits a job leaves the job to run to its result."""
    name = served

    async def main():
        async with make(redis_server, name) as queue:
            job = await queue.enqueue("tests._tasks:sleep_then", 1.0, "finished anyway")
            waiter = asyncio.create_task(job.result(timeout=30))
            await wait_status(job, "running")
            waiter.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiter
            assert await job.status() == "running"
            assert await job.result(timeout=30) == "finished anyway"
            assert await job.status() == "done"

    run(main())


@pytest.mark.redis
def test_async_cancel_queued_job_raises_cancelled_error_on_await(redis_server):
    """`await job.cancel()` on a queued job cancels it at once; awaiting it raises."""

    async def main():
        async with make(redis_server, unique()) as queue:
            job = await queue.enqueue(ECHO, "never")
            assert await job.cancel() is True
            assert await job.status() == "cancelled"
            with pytest.raises(CancelledError):
                await job

    run(main())


@pytest.mark.redis
def test_async_cancel_running_job_stops_it(redis_server, served):
    """`await job.cancel()` on a running job stops its process; its status is cancelled."""
    name = served

    async def main():
        async with make(redis_server, name) as queue:
            job = await queue.enqueue("tests._tasks:hang")
            await wait_status(job, "running")
            assert await job.cancel() is True
            with pytest.raises(CancelledError):
                await job.result(timeout=30)
            assert await job.status() == "cancelled"
            assert await (await queue.enqueue(ECHO, "next")).result(timeout=30) == "next"

    run(main())


@pytest.mark.redis
def test_async_unknown_job_result_raises_job_not_found_error(redis_server):
    """Awaiting or cancelling a job id the queue never had raises JobNotFoundError."""

    async def main():
        async with make(redis_server, unique()) as queue:
            with pytest.raises(JobNotFoundError, match=r"no job 0{32} in queue"):
                await queue.job("0" * 32)
            with pytest.raises(JobNotFoundError):
                await queue.job("0" * 32).cancel()

    run(main())


@pytest.mark.redis
def test_async_queue_with_wrong_secret_raises_signature_error(redis_server, queues):
    """The asyncio client checks its secret against the queue's key check, as RedisQueue."""
    queue = queues()

    async def main():
        wrong = make(redis_server, queue.name, secret="a-wrong-secret-for-this-queue-0000")
        try:
            with pytest.raises(SignatureError, match="key id 'default'"):
                await wrong.enqueue(ECHO, 1)
        finally:
            await wrong.aclose()

    run(main())
    assert queue.pending() == 0

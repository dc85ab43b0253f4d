"""Scheduled, unique and cancelled jobs on a RedisQueue, against a real redis-server (issue 9).

``enqueue_in``/``enqueue_at`` (scheduled until due, cancellable, run by workers that come
back late, kept across a Redis restart with AOF), ``options(key=..., unique_for=...)``
(one job per key, also for clients racing from threads and processes), and
``Job.cancel`` of a running job (its process group stopped, never run again).
"""

from __future__ import annotations

import datetime
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import CancelledError

import pytest

import isopool
from isopool._dist.redis_queue import JobOptions
from tests._redis import SECRET
from tests.conftest import pid_alive, wait_for

ECHO = "tests._tasks:echo"


def job_hashes(queue: isopool.RedisQueue) -> int:
    """How many job hashes the queue has in Redis."""
    return sum(1 for _ in queue.redis.scan_iter(match=f"{queue.prefix}:job:*"))


# -- scheduled jobs -----------------------------------------------------------------------


@pytest.mark.redis
def test_enqueue_in_job_is_scheduled_until_due_then_runs(redis_server, queues, processes):
    """A job enqueued 2 s ahead says "scheduled", is no retry, and starts only once due."""
    queue = queues()
    processes.worker(redis_server.url, queue.name)
    job = queue.enqueue_in(2.0, ECHO, "later")
    info = job.info()
    assert job.status() == "scheduled"
    assert queue.scheduled() == 1
    assert queue.redis.zcard(f"{queue.prefix}:delayed") == 0
    assert (info["deliveries"], info["attempts"]) == ("0", "0")
    assert job.result(timeout=30) == "later"
    info = job.info()
    assert int(info["started"]) >= int(info["due"])
    assert 1000 <= int(info["due"]) - int(info["created"]) <= 2000
    assert (info["deliveries"], info["attempts"]) == ("1", "1")
    assert queue.scheduled() == 0


@pytest.mark.redis
def test_enqueue_at_aware_datetime_and_unix_time_set_the_due_time(queues):
    """enqueue_at takes an aware datetime (any zone) or a Unix time; both are stored as due."""
    queue = queues()
    due = time.time() + 3600
    zone = datetime.timezone(datetime.timedelta(hours=-5))
    by_datetime = queue.enqueue_at(datetime.datetime.fromtimestamp(due, zone), ECHO, 1)
    by_number = queue.options(priority=0).enqueue_at(due, ECHO, 2)
    for job in (by_datetime, by_number):
        assert job.status() == "scheduled"
        assert abs(int(job.info()["due"]) - due * 1000) <= 1
    assert JobOptions.from_json(by_number.info()["options"]).priority == 0
    assert queue.scheduled() == 2
    assert queue.pending() == 0


@pytest.mark.redis
def test_enqueue_at_naive_datetime_raises_value_error(queues):
    """A naive datetime is refused: its time zone would be a guess."""
    queue = queues()
    with pytest.raises(ValueError, match="aware datetime"):
        queue.enqueue_at(datetime.datetime.now(), ECHO, 1)
    with pytest.raises(TypeError, match="Unix time"):
        queue.enqueue_at("tomorrow", ECHO, 1)
    with pytest.raises(ValueError, match="seconds"):
        queue.enqueue_in(-1, ECHO, 1)
    assert job_hashes(queue) == 0


@pytest.mark.redis
def test_enqueue_at_past_time_job_runs_at_once(redis_server, queues, processes):
    """A due time in the past queues the job at once."""
    queue = queues()
    job = queue.enqueue_at(time.time() - 60, ECHO, "now")
    assert job.status() == "queued"
    processes.worker(redis_server.url, queue.name)
    assert job.result(timeout=30) == "now"


@pytest.mark.redis
def test_scheduled_job_cancelled_never_runs(redis_server, queues, processes, tmp_path):
    """Cancelling a scheduled job ends it at once; it is not run when its time comes."""
    queue = queues()
    marker = tmp_path / "runs"
    job = queue.enqueue_in(1.0, "tests._tasks:count_run", str(marker))
    assert job.cancel() is True
    assert job.status() == "cancelled"
    assert queue.scheduled() == 0
    with pytest.raises(CancelledError):
        job.result(timeout=5)
    processes.worker(redis_server.url, queue.name)
    after = queue.enqueue_in(1.5, ECHO, "after")
    assert after.result(timeout=30) == "after"
    assert not marker.exists()
    assert job.status() == "cancelled"


@pytest.mark.redis
def test_scheduled_job_due_while_no_worker_runs_once_when_one_starts(
    redis_server, queues, processes, tmp_path
):
    """Due while every worker was down: the first workers to come back run it, once."""
    queue = queues()
    marker = tmp_path / "runs"
    job = queue.enqueue_in(0.5, "tests._tasks:count_run", str(marker), "late")
    assert wait_for(lambda: time.time() * 1000 > int(job.info()["due"]) + 500, timeout=10)
    assert job.status() == "scheduled"
    for _ in range(3):
        processes.worker(redis_server.url, queue.name)
    assert job.result(timeout=30) == "late"
    assert len(marker.read_text().splitlines()) == 1


@pytest.mark.redis
@pytest.mark.slow
def test_scheduled_job_survives_redis_sigkill_with_aof(redis_factory, queues, processes):
    """A scheduled job is in Redis, not in a worker: SIGKILL and restart with AOF keep it."""
    server = redis_factory(appendonly=True)
    queue = queues(url=server.url)
    job = queue.enqueue_in(2.0, ECHO, "kept")
    server.kill()
    server.restart()
    assert wait_for(lambda: _pings(queue), timeout=30)
    assert job.status() == "scheduled"
    processes.worker(server.url, queue.name)
    assert job.result(timeout=30) == "kept"


def _pings(queue: isopool.RedisQueue) -> bool:
    try:
        return bool(queue.redis.ping())
    except Exception:
        return False


@pytest.mark.redis
def test_transient_retry_after_schedule_counts_as_retry_not_schedule(
    redis_server, queues, processes, tmp_path
):
    """A scheduled transient job that raises is retried through the delayed set as usual."""
    queue = queues()
    processes.worker(redis_server.url, queue.name)
    counter = tmp_path / "count"
    job = queue.options(restart="transient", backoff=0.2).enqueue_in(
        0.5, "tests._tasks:fail_n_times", str(counter), 1, "second time"
    )
    assert job.result(timeout=30) == "second time"
    assert job.info()["attempts"] == "2"


# -- unique jobs --------------------------------------------------------------------------


@pytest.mark.redis
def test_unique_key_while_queued_or_scheduled_returns_same_job(queues):
    """While a job with a key waits, enqueueing that key returns it; other keys are new."""
    queue = queues()
    first = queue.options(key="report:2026-11").enqueue(ECHO, 1)
    again = queue.options(key="report:2026-11", priority=0).enqueue(ECHO, 2)
    other = queue.options(key="report:2026-12").enqueue(ECHO, 3)
    assert again.id == first.id != other.id
    later = queue.options(key="nightly").enqueue_in(3600, ECHO, 4)
    assert queue.options(key="nightly").enqueue(ECHO, 5).id == later.id
    assert later.status() == "scheduled"
    assert job_hashes(queue) == 3
    assert queue.pending() == 2


@pytest.mark.redis
def test_unique_key_after_job_ended_gives_new_job(redis_server, queues, processes):
    """Without unique_for, the key is free again once its job is done or cancelled."""
    queue = queues()
    unique = queue.options(key="k")
    cancelled = unique.enqueue(ECHO, "a")
    cancelled.cancel()
    first = unique.enqueue(ECHO, "b")
    assert first.id != cancelled.id
    processes.worker(redis_server.url, queue.name)
    assert first.result(timeout=30) == "b"
    second = unique.enqueue(ECHO, "c")
    assert second.id != first.id
    assert second.result(timeout=30) == "c"


@pytest.mark.redis
def test_unique_for_holds_key_after_done_then_frees_it(redis_server, queues, processes):
    """unique_for=2: for 2 s after the job ended the key still returns it; then a new one."""
    queue = queues()
    processes.worker(redis_server.url, queue.name)
    unique = queue.options(key="k", unique_for=2.0, result_ttl=1)
    first = unique.enqueue(ECHO, "first")
    assert first.result(timeout=30) == "first"
    assert unique.enqueue(ECHO, "again").id == first.id
    ended = int(first.info()["ended"])
    assert int(queue.redis.ttl(first.key)) >= 1  # kept at least unique_for, not result_ttl
    assert wait_for(lambda: unique.enqueue(ECHO, "x").id != first.id, timeout=30)
    assert time.time() * 1000 >= ended + 2000


@pytest.mark.redis
def test_unique_for_without_key_raises_value_error(queues):
    """unique_for alone is a bad option, reported at options()."""
    queue = queues()
    with pytest.raises(ValueError, match="key"):
        queue.options(unique_for=10)
    with pytest.raises(ValueError, match="key"):
        queue.options(key="")


@pytest.mark.redis
def test_unique_key_racing_threads_get_one_job_id(redis_server, queues):
    """Sixteen threads, each with its own connection, race on one key: one job, one id."""
    queue = queues()
    clients = [queues(queue.name) for _ in range(16)]
    barrier = threading.Barrier(len(clients))
    ids: list[str] = []

    def race(client: isopool.RedisQueue) -> None:
        barrier.wait(timeout=30)
        ids.append(client.options(key="race").enqueue(ECHO, 1).id)

    threads = [threading.Thread(target=race, args=(c,)) for c in clients]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert len(ids) == len(clients)
    assert len(set(ids)) == 1
    assert job_hashes(queue) == 1
    assert queue.pending() == 1


@pytest.mark.redis
def test_unique_key_racing_processes_get_one_job_id(redis_server, queues):
    """Four processes enqueue one key at the same instant: all get the same job id."""
    queue = queues()
    start_at = time.time() + 2.0
    with isopool.Pool(4) as pool:
        args = (redis_server.url, queue.name, SECRET, "race", start_at)
        tasks = [pool.submit("tests._job_tasks:enqueue_unique", *args) for _ in range(4)]
        ids = [task.result(timeout=60) for task in tasks]
    assert len(set(ids)) == 1
    assert job_hashes(queue) == 1


# -- cancelling a running job -------------------------------------------------------------


@pytest.mark.redis
def test_running_job_cancel_stops_its_process_group_worker_serves_on(
    redis_server, queues, processes, tmp_path
):
    """cancel() of a running job kills its process and its child within seconds (long
    before the 20 s renewal of a 60 s lease); status cancelled; the worker serves on."""
    queue = queues()
    worker = processes.worker(redis_server.url, queue.name, lease=60.0)
    pids = tmp_path / "pids"
    job = queue.enqueue("tests._job_tasks:spawn_child_and_hang", str(pids))
    assert wait_for(pids.exists, timeout=30)
    pid, child = map(int, pids.read_text().split())
    assert job.status() == "running"
    assert job.cancel() is True
    assert wait_for(lambda: not pid_alive(pid) and not pid_alive(child), timeout=10)
    with pytest.raises(CancelledError):
        job.result(timeout=10)
    assert job.status() == "cancelled"
    assert queue.enqueue(ECHO, "next").result(timeout=30) == "next"
    assert worker.popen.poll() is None


@pytest.mark.redis
@pytest.mark.slow
def test_running_job_cancelled_while_its_worker_is_dead_never_runs_again(
    redis_server, queues, processes, tmp_path
):
    """Cancelled while its worker is SIGKILLed: the worker that claims it stores cancelled."""
    queue = queues(lease=2.0)
    first = processes.worker(redis_server.url, queue.name, lease=2.0)
    marker = tmp_path / "runs"
    job = queue.enqueue("tests._tasks:mark_then_sleep", str(marker), 3600)
    assert wait_for(marker.exists, timeout=30)
    first.signal_group(signal.SIGKILL)
    first.kill()
    assert job.cancel() is True
    assert job.status() == "running"
    processes.worker(redis_server.url, queue.name, lease=2.0)
    with pytest.raises(CancelledError):
        job.result(timeout=30)
    assert job.status() == "cancelled"
    assert len(marker.read_text().splitlines()) == 1


# -- periodic jobs ------------------------------------------------------------------------


def make_due(queue: isopool.RedisQueue, name: str, tick_ms: int) -> None:
    """Move schedule ``name``'s next tick to ``tick_ms``: as if that tick had come."""
    queue.redis.hset(f"{queue.prefix}:schedule:{name}", "next", tick_ms)
    queue.redis.zadd(f"{queue.prefix}:schedules", {name: tick_ms})


def scheduled_jobs(queue: isopool.RedisQueue, name: str) -> list[dict[bytes, bytes]]:
    """The job hashes that schedule ``name`` enqueued."""
    found = []
    for key in queue.redis.scan_iter(match=f"{queue.prefix}:job:*"):
        job = queue.redis.hgetall(key)
        if job.get(b"schedule") == name.encode():
            found.append(job)
    return found


@pytest.mark.redis
def test_schedule_is_stored_with_next_run_and_listed_by_cli(queues, processes):
    """queue.schedule stores the cron and its next tick; `isopool schedules` lists both."""
    queue = queues()
    made = queue.schedule("*/5 * * * *", ECHO, "tick", name="five")
    assert (made.name, made.cron, made.zone, made.function) == ("five", "*/5 * * * *", "UTC", ECHO)
    assert time.time() < made.next_run <= time.time() + 300
    assert made.next_run % 300 == 0
    assert made.last_run is None
    paris = queue.schedule("0 9 * * mon-fri", ECHO, 1, name="report", tz="Europe/Paris")
    assert [s.name for s in queue.schedules()] == sorted(
        ["five", "report"], key=lambda n: {"five": made, "report": paris}[n].next_run
    )
    out = subprocess.run(
        [sys.executable, "-m", "isopool", "schedules", "--redis", queue.url, "--queue", queue.name],
        env=processes.env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert "five  [*/5 * * * *  UTC]  tests._tasks:echo  next " in out
    assert time.strftime("%Y-%m-%d %H:%M", time.gmtime(made.next_run)) in out
    assert "report  [0 9 * * mon-fri  Europe/Paris]" in out
    assert queue.unschedule("five") is True
    assert [s.name for s in queue.schedules()] == ["report"]


@pytest.mark.redis
def test_schedule_declared_again_keeps_next_tick_changed_replaces_it(queues):
    """Re-declaring the same schedule (a worker restart) keeps its tick; a new cron resets it."""
    queue = queues()
    queue.schedule("0 0 1 1 *", ECHO, 1, name="yearly")
    make_due(queue, "yearly", 12345)
    assert queue.schedule("0 0 1 1 *", ECHO, 1, name="yearly").next_run == 12.345
    changed = queue.schedule("0 0 1 6 *", ECHO, 1, name="yearly")
    assert changed.next_run > time.time()
    assert len(queue.schedules()) == 1


@pytest.mark.redis
def test_schedule_bad_cron_or_zone_raises_value_error(queues):
    """A bad cron expression or zone is refused at schedule(), and nothing is stored."""
    queue = queues()
    with pytest.raises(ValueError, match="hour"):
        queue.schedule("0 25 * * *", ECHO, 1)
    with pytest.raises(ValueError, match="time zone"):
        queue.schedule("0 1 * * *", ECHO, 1, tz="Nowhere/Special")
    assert queue.schedules() == []


@pytest.mark.redis
def test_schedule_due_tick_fired_by_racing_threads_enqueues_one_job(queues):
    """Sixteen clients fire the same due tick at once: one job, and the next tick is ahead."""
    from isopool._dist.schedules import fire_due

    queue = queues()
    queue.schedule("* * * * *", ECHO, "tick", name="minutely")
    tick = int(time.time() * 1000) - 1000
    make_due(queue, "minutely", tick)
    clients = [queues(queue.name) for _ in range(16)]
    barrier = threading.Barrier(len(clients))
    fired: list[int] = []

    def race(client: isopool.RedisQueue) -> None:
        barrier.wait(timeout=30)
        fired.append(fire_due(client, time.time()))

    threads = [threading.Thread(target=race, args=(c,)) for c in clients]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert sorted(fired) == [0] * 15 + [1]
    jobs = scheduled_jobs(queue, "minutely")
    assert [int(job[b"tick"]) for job in jobs] == [tick]
    (listed,) = queue.schedules()
    assert listed.last_run == tick / 1000
    assert listed.last_job is not None
    assert queue.job(listed.last_job).status() == "queued"
    assert time.time() < listed.next_run <= time.time() + 60


@pytest.mark.redis
def test_schedule_ticks_missed_while_workers_down_run_once_late(
    redis_server, queues, processes, tmp_path
):
    """An hour of missed minutely ticks: the worker that comes back runs one job, no burst."""
    queue = queues()
    marker = tmp_path / "runs"
    queue.schedule("* * * * *", "tests._tasks:count_run", str(marker), "late", name="minutely")
    make_due(queue, "minutely", int((time.time() - 3600) * 1000))
    processes.worker(redis_server.url, queue.name)
    assert wait_for(lambda: any(s.last_job for s in queue.schedules()), timeout=30)
    (listed,) = queue.schedules()
    assert listed.last_job is not None
    assert queue.job(listed.last_job).result(timeout=30) == "late"
    assert len(scheduled_jobs(queue, "minutely")) == 1
    assert len(marker.read_text().splitlines()) == 1
    assert time.time() - 5 < listed.next_run <= time.time() + 60


@pytest.mark.redis
def test_schedule_with_forged_call_is_never_run(redis_server, queues, processes, tmp_path):
    """A schedule whose stored call is signed with another key is refused, not run."""
    from isopool._dist.signing import Keyring

    queue = queues()
    marker = tmp_path / "forged"
    queue.schedule("* * * * *", "tests._tasks:touch", str(marker), name="forged")
    other = Keyring.load("another-secret-0123456789abcdef")
    key = f"{queue.prefix}:schedule:forged"
    body = queue.keys.verify(
        queue.redis.hget(key, "call"), queue.context("schedule:forged", "schedule")
    )
    queue.redis.hset(key, "call", other.sign(body, queue.context("schedule:forged", "schedule")))
    make_due(queue, "forged", int(time.time() * 1000) - 1000)
    worker = processes.worker(redis_server.url, queue.name)
    assert wait_for(lambda: "schedule 'forged' refused" in worker.log(), timeout=30)
    assert scheduled_jobs(queue, "forged") == []
    assert not marker.exists()


@pytest.mark.redis
@pytest.mark.slow
def test_worker_cron_option_three_workers_one_job_per_tick(
    redis_server, queues, processes, tmp_path
):
    """Three workers declare `--cron '* * * * *=...'`: the next real minute runs one job."""
    queue = queues()
    ticks = tmp_path / "ticks"
    procs = [
        processes.spawn(
            [
                *("worker", "--redis", redis_server.url, "--queue", queue.name),
                *("--workers", "1", "--drain", "1"),
                *("--cron", "* * * * *=tests._job_tasks:record_tick"),
            ],
            {"TEST_TICKS_FILE": str(ticks)},
        )
        for _ in range(3)
    ]
    name = "tests._job_tasks:record_tick"
    assert wait_for(lambda: [s.name for s in queue.schedules()] == [name], timeout=30)
    assert wait_for(ticks.exists, timeout=90)
    (listed,) = queue.schedules()
    assert listed.last_job is not None
    queue.job(listed.last_job).result(timeout=30)
    # The tick is claimed (its "next" moved on); give the other two workers several
    # looks (they look every second) to show they enqueue nothing more for it.
    time.sleep(3)
    assert len(scheduled_jobs(queue, name)) == 1
    assert len(ticks.read_text().splitlines()) == 1
    assert all(proc.popen.poll() is None for proc in procs)


@pytest.mark.redis
@pytest.mark.parametrize(
    ("cron", "message"),
    [
        (["* * * * *"], "CRON=module:function"),
        (["61 * * * *=tests._tasks:echo"], "minute"),
        (["* * * * *=tests._tasks:echo", "0 * * * *=tests._tasks:echo"], "one function twice"),
        (["* * * * *=tests._tasks:no_such_function"], "no_such_function"),
    ],
)
def test_worker_bad_cron_option_exits_with_code_2(redis_server, processes, cron, message):
    """A malformed, out-of-range, duplicated or unimportable --cron stops the worker at start."""
    args = ["worker", "--redis", redis_server.url, "--queue", "q", "--workers", "1"]
    for text in cron:
        args += ["--cron", text]
    proc = processes.spawn(args)
    assert proc.popen.wait(60) == 2
    assert message in proc.log()


@pytest.mark.redis
def test_unique_key_of_ended_job_is_removed_or_expires_with_unique_for(
    redis_server, queues, processes
):
    """An ended job's key is not left behind: deleted, or expiring when unique_for ends."""
    queue = queues()
    processes.worker(redis_server.url, queue.name)
    plain = queue.options(key="plain").enqueue(ECHO, 1)
    held = queue.options(key="held", unique_for=60).enqueue(ECHO, 2)
    cancelled = queue.options(key="cancelled").enqueue_in(3600, ECHO, 3)
    assert cancelled.cancel() is True
    assert (plain.result(timeout=30), held.result(timeout=30)) == (1, 2)
    unique = f"{queue.prefix}:unique:"
    assert wait_for(lambda: not queue.redis.exists(unique + "plain"), timeout=10)
    assert wait_for(lambda: 0 < queue.redis.pttl(unique + "held") <= 60_000, timeout=10)
    assert not queue.redis.exists(unique + "cancelled")
    assert queue.options(key="held").enqueue(ECHO, 4).id == held.id

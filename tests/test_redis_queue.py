"""RedisQueue and ``isopool worker`` against a real redis-server (issue 4).

Round trips, stable job ids, cancel, result expiry; then the promises of issue 4's test
list: a SIGKILLed worker's job completes elsewhere exactly once (1), a long job with a
heartbeat runs once (2), a paused worker's late result is refused (3), a Redis crash
loses nothing with AOF and is reported without persistence (4), bad signatures are never
unpickled (5), a job that kills its worker is dead-lettered (6), and priorities (7).
"""

from __future__ import annotations

import logging
import os
import pathlib
import signal
import threading
import time
from concurrent.futures import CancelledError

import pytest

import isopool
from isopool import QueueUnavailableError, SignatureError, TaskCrashError
from isopool._core import wire as _wire
from isopool._core.wire import RemoteTraceback
from isopool._dist.queue_worker import QueueWorker
from isopool._dist.redis_queue import GROUP, JobOptions
from isopool._dist.signing import Keyring
from tests import _tasks
from tests._redis import SECRET, free_port, unique
from tests.conftest import pid_alive, wait_for

ECHO = "tests._tasks:echo"


def lines(path: pathlib.Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def pending_entries(queue: isopool.RedisQueue) -> int:
    """Entries delivered to some worker and not yet acknowledged, across all bands."""
    return sum(queue.redis.xpending(queue.stream(b), GROUP)["pending"] for b in range(10))


def stream_entries(queue: isopool.RedisQueue) -> int:
    """Entries still in the job streams, across all bands (finished ones are deleted)."""
    return sum(queue.redis.xlen(queue.stream(b)) for b in range(10))


class TouchOnUnpickle:
    """Unpickling this creates ``path``: proof that a payload was unpickled somewhere."""

    def __init__(self, path: pathlib.Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.path),))


# -- round trips --------------------------------------------------------------------------


@pytest.mark.redis
def test_enqueue_by_name_returns_result(redis_server, queues, processes):
    """A job named "module:function" runs on a worker and its value comes back."""
    queue = queues()
    processes.worker(redis_server.url, queue.name)
    assert queue.enqueue("tests._tasks:add", 2, 3).result(timeout=30) == 5


@pytest.mark.redis
def test_enqueue_by_callable_returns_result(redis_server, queues, processes):
    """A job given as a callable (pickled and signed) runs and returns, kwargs included."""
    queue = queues()
    processes.worker(redis_server.url, queue.name)
    job = queue.enqueue(_tasks.identity_sum, 1, 2, c=3)
    assert job.result(timeout=30) == 6
    assert job.status() == "done"


@pytest.mark.redis
def test_job_raising_reraises_own_type_with_remote_traceback(redis_server, queues, processes):
    """A job's exception comes back as itself, the worker's traceback as __cause__."""
    queue = queues()
    processes.worker(redis_server.url, queue.name)
    job = queue.enqueue("tests._tasks:raise_value_error", "remote boom")
    with pytest.raises(ValueError, match="remote boom") as info:
        job.result(timeout=30)
    assert isinstance(info.value.__cause__, RemoteTraceback)
    assert "raise_value_error" in info.value.__cause__.tb
    assert job.status() == "failed"


@pytest.mark.redis
def test_job_looked_up_by_id_from_other_queue_object_has_result(redis_server, queues, processes):
    """A job id is a stable string: another RedisQueue (another process) finds the job."""
    queue = queues()
    processes.worker(redis_server.url, queue.name)
    job_id = queue.enqueue(ECHO, {"answer": 42}).id
    assert isinstance(job_id, str)
    other = queues(queue.name)
    looked_up = other.job(job_id)
    assert looked_up.result(timeout=30) == {"answer": 42}
    assert looked_up.status() == "done"
    assert other.job("0" * 32).status() == "missing"


@pytest.mark.redis
def test_job_cancel_while_queued_raises_cancelled_error(queues):
    """Cancelling a job no worker has taken ends it at once: result() raises CancelledError."""
    queue = queues()
    job = queue.enqueue(ECHO, 1)
    assert job.status() == "queued"
    assert job.cancel() is True
    assert job.status() == "cancelled"
    with pytest.raises(CancelledError):
        job.result(timeout=5)


@pytest.mark.redis
def test_job_cancel_after_done_returns_false_keeps_result(redis_server, queues, processes):
    """Cancelling a job that already finished does nothing: False, and its result stays."""
    queue = queues()
    processes.worker(redis_server.url, queue.name)
    job = queue.enqueue(ECHO, "kept")
    assert job.result(timeout=30) == "kept"
    assert job.cancel() is False
    assert job.result(timeout=5) == "kept"


@pytest.mark.redis
def test_job_cancelled_while_queued_never_runs(redis_server, queues, processes, tmp_path):
    """A job cancelled before any worker took it is skipped by the worker that comes later."""
    queue = queues()
    marker = tmp_path / "runs"
    cancelled = queue.enqueue("tests._tasks:count_run", str(marker), "ran")
    cancelled.cancel()
    later = queue.enqueue(ECHO, "after")
    processes.worker(redis_server.url, queue.name)
    assert later.result(timeout=30) == "after"
    assert not marker.exists()
    assert cancelled.status() == "cancelled"


@pytest.mark.redis
def test_job_cancel_while_running_stops_its_process(redis_server, queues, processes, tmp_path):
    """Cancelling a running job stops its process; result() raises CancelledError."""
    queue = queues()
    processes.worker(redis_server.url, queue.name, lease=3.0)
    pid_file = tmp_path / "pid"
    job = queue.enqueue("tests._tasks:write_then_hang", str(pid_file))
    assert wait_for(lambda: pid_file.exists() and pid_file.read_text(), timeout=30)
    pid = int(pid_file.read_text())
    assert job.cancel() is True
    with pytest.raises(CancelledError):
        job.result(timeout=30)
    assert wait_for(lambda: not pid_alive(pid), timeout=10)
    assert job.status() == "cancelled"


@pytest.mark.redis
def test_job_result_ttl_expired_status_is_missing(redis_server, queues, processes):
    """A finished job is kept for result_ttl seconds, then it is gone ("missing")."""
    queue = queues()
    processes.worker(redis_server.url, queue.name)
    job = queue.options(result_ttl=1).enqueue(ECHO, "short-lived")
    assert job.result(timeout=30) == "short-lived"
    assert wait_for(lambda: job.status() == "missing", timeout=15)
    with pytest.raises(isopool.JobNotFoundError, match="no job"):
        job.result(timeout=1)


@pytest.mark.redis
def test_queue_without_secret_raises_value_error(monkeypatch):
    """No secret (no argument, file or environment): RedisQueue refuses to start."""
    monkeypatch.delenv("ISOPOOL_SECRET", raising=False)
    monkeypatch.delenv("ISOPOOL_SECRET_FILE", raising=False)
    with pytest.raises(ValueError, match="ISOPOOL_SECRET"):
        isopool.RedisQueue(f"redis://127.0.0.1:{free_port()}/0", unique())


@pytest.mark.redis
def test_worker_without_secret_exits_with_code_2_naming_env(redis_server, processes):
    """``isopool worker`` with no secret anywhere refuses to start and says where to put one."""
    worker = processes.worker(redis_server.url, unique(), secret=None)
    assert worker.popen.wait(timeout=30) == 2
    assert "ISOPOOL_SECRET" in worker.log()


@pytest.mark.redis
def test_worker_secret_file_option_signs_like_the_secret(redis_server, queues, processes, tmp_path):
    """``isopool worker --secret-file F`` (no environment secret) serves the queue."""
    secret_file = tmp_path / "secret"
    secret_file.write_text(SECRET + "\n")
    queue = queues()
    processes.worker(redis_server.url, queue.name, secret=None, secret_file=secret_file)
    assert queue.enqueue("tests._tasks:add", 1, 2).result(timeout=30) == 3


@pytest.mark.redis
def test_queue_rediss_url_is_accepted_and_fails_only_to_connect():
    """A rediss:// (TLS) URL is parsed and tried: with no server it is unreachable, not invalid."""
    pytest.importorskip("redis")
    url = f"rediss://127.0.0.1:{free_port()}/0"
    with pytest.raises(QueueUnavailableError, match="cannot reach Redis at rediss://"):
        isopool.RedisQueue(url, unique(), secret=SECRET)


@pytest.mark.redis
def test_queue_over_tls_returns_result(redis_factory, queues, processes):
    """Over rediss:// (TLS, certificate verified) producer and worker share a queue."""
    server = redis_factory(tls=True)
    queue = queues(url=server.tls_url)
    processes.worker(server.tls_url, queue.name)
    assert queue.enqueue("tests._tasks:add", 40, 2).result(timeout=30) == 42
    with server.client() as client:
        clients = client.client_list()
    assert any(c["laddr"].endswith(f":{server.tls_port}") for c in clients)


@pytest.mark.redis
def test_queue_on_redis_without_persistence_logs_warning(queues, caplog):
    """A queue on a Redis that persists nothing warns that a restart loses every job."""
    with caplog.at_level(logging.WARNING, logger="isopool"):
        queue = queues()
    assert any(
        "persistence is off" in r.getMessage() and queue.name in r.getMessage()
        for r in caplog.records
    )


@pytest.mark.redis
def test_queue_on_redis_with_aof_logs_no_persistence_warning(redis_factory, queues, caplog):
    """With appendonly on, no persistence warning is logged."""
    server = redis_factory(appendonly=True)
    with caplog.at_level(logging.WARNING, logger="isopool"):
        queues(url=server.url)
    assert not [r for r in caplog.records if "persistence is off" in r.getMessage()]


@pytest.mark.redis
def test_queue_pending_counts_undelivered_jobs_across_bands(queues):
    """pending() counts the jobs waiting in every band's stream, none yet delivered."""
    queue = queues()
    assert queue.pending() == 0
    for priority in (0, 5, 9):
        queue.options(priority=priority).enqueue(ECHO, priority)
    assert queue.pending() == 3


# -- restart policies and time-outs ---------------------------------------------------------


@pytest.mark.redis
def test_transient_job_raising_is_retried_until_success(redis_server, queues, processes, tmp_path):
    """A transient job that raises is re-run (with back-off) until it succeeds."""
    queue = queues()
    processes.worker(redis_server.url, queue.name)
    marker = tmp_path / "runs"
    retry = queue.options(restart="transient", max_retries=3, backoff=0.05)
    job = retry.enqueue("tests._tasks:fail_n_times", str(marker), 2, "third time")
    assert job.result(timeout=30) == "third time"
    assert _tasks.runs(marker) == 3
    assert job.info()["attempts"] == "3"


@pytest.mark.redis
def test_transient_job_exhausting_retries_is_dead_lettered_with_its_error(
    redis_server, queues, processes, tmp_path
):
    """A transient job raising 1 + max_retries times is dead-lettered; result() raises its error.

    Issue 9: max_retries=4 is past the crash budget (max_deliveries=3), which retries
    after a failure no longer spend: five runs, not three, and the job's own error.
    """
    queue = queues()
    processes.worker(redis_server.url, queue.name)
    marker = tmp_path / "runs"
    retry = queue.options(restart="transient", max_retries=4, backoff=0.01)
    job = retry.enqueue("tests._tasks:fail_always", str(marker))
    with pytest.raises(RuntimeError, match="failure 5") as info:
        job.result(timeout=60)
    assert isinstance(info.value.__cause__, RemoteTraceback)
    assert _tasks.runs(marker) == 5 == queue.max_deliveries + 2
    assert job.info()["retries"] == "4"
    assert job.status() == "dead"
    assert [(d.job_id, d.reason) for d in queue.dead_letters()] == [(job.id, "retries-exhausted")]


@pytest.mark.redis
def test_job_past_its_timeout_fails_with_task_timeout_error(redis_server, queues, processes):
    """A job running past its timeout is stopped and fails with TaskTimeoutError."""
    queue = queues()
    processes.worker(redis_server.url, queue.name)
    job = queue.options(timeout=0.5).enqueue("tests._tasks:hang")
    with pytest.raises(isopool.TaskTimeoutError):
        job.result(timeout=30)
    assert job.status() == "failed"


# -- stopping a worker -----------------------------------------------------------------------


@pytest.mark.redis
def test_worker_sigterm_lets_running_job_finish_within_drain(
    redis_server, queues, processes, tmp_path
):
    """SIGTERM: the worker takes no new job, lets the running one finish, commits, exits 0."""
    queue = queues()
    worker = processes.worker(redis_server.url, queue.name, drain=30.0)
    marker = tmp_path / "runs"
    job = queue.enqueue("tests._tasks:mark_then_sleep", str(marker), 1.0, "finished")
    assert wait_for(lambda: len(lines(marker)) == 1, timeout=30)
    worker.popen.send_signal(signal.SIGTERM)
    assert worker.popen.wait(timeout=30) == 0
    assert job.status() == "done"
    assert job.result(timeout=5) == "finished"


@pytest.mark.redis
@pytest.mark.slow
def test_worker_sigterm_hands_back_job_running_past_drain(
    redis_server, queues, processes, tmp_path
):
    """SIGTERM: a job outlasting --drain is stopped, handed back, and the next worker runs it."""
    queue = queues()
    first = processes.worker(redis_server.url, queue.name, drain=0.5)
    marker = tmp_path / "runs"
    job = queue.enqueue("tests._tasks:mark_then_sleep", str(marker), 3.0, "finished")
    assert wait_for(lambda: len(lines(marker)) == 1, timeout=30)
    first.popen.send_signal(signal.SIGTERM)
    assert first.popen.wait(timeout=30) == 0
    assert job.status() == "queued"
    assert job.info()["deliveries"] == "0"
    processes.worker(redis_server.url, queue.name)
    assert job.result(timeout=30) == "finished"
    assert len(lines(marker)) == 2
    assert pending_entries(queue) == 0


# -- (1) a worker SIGKILLed mid-job -------------------------------------------------------


@pytest.mark.redis
@pytest.mark.slow
def test_worker_sigkilled_mid_job_job_completes_once_on_other_worker(
    redis_server, queues, processes, tmp_path
):
    """Issue 4 (1): a SIGKILLed worker's job runs again elsewhere: two runs, one result."""
    queue = queues()
    workers = [processes.worker(redis_server.url, queue.name, lease=2.0) for _ in range(2)]
    marker = tmp_path / "runs"
    job = queue.enqueue("tests._tasks:mark_then_sleep", str(marker), 3.0, "finished")
    assert wait_for(lambda: len(lines(marker)) == 1, timeout=30)
    first_pid = int(lines(marker)[0])
    holder = next(w for w in workers if first_pid in w.tree())
    survivor = next(w for w in workers if w is not holder)
    holder.kill()
    assert job.result(timeout=60) == "finished"
    runs = [int(pid) for pid in lines(marker)]
    assert len(runs) == 2
    assert runs[1] in survivor.tree()
    assert job.status() == "done"
    assert job.info()["deliveries"] == "2"
    assert pending_entries(queue) == 0
    assert stream_entries(queue) == 0
    assert queue.dead_letters() == []
    assert "claimed job" in survivor.log()


# -- (2) a job longer than the lease ------------------------------------------------------


@pytest.mark.redis
@pytest.mark.slow
def test_job_four_times_longer_than_lease_runs_once(redis_server, queues, processes, tmp_path):
    """Issue 4 (2): the heartbeat keeps an 8 s job under a 2 s lease from a second run."""
    queue = queues()
    for _ in range(2):
        processes.worker(redis_server.url, queue.name, lease=2.0)
    marker = tmp_path / "runs"
    job = queue.enqueue("tests._tasks:mark_then_sleep", str(marker), 8.0, "long")
    assert job.result(timeout=60) == "long"
    assert len(lines(marker)) == 1
    assert job.info()["deliveries"] == "1"
    assert pending_entries(queue) == 0


# -- (3) a paused worker's late result -----------------------------------------------------


@pytest.mark.redis
@pytest.mark.slow
def test_paused_worker_late_result_is_refused(redis_server, queues, processes, tmp_path):
    """Issue 4 (3): a SIGSTOPped worker's late result is refused; the second one's stays."""
    queue = queues()
    late = processes.worker(redis_server.url, queue.name, lease=2.0, env={"TEST_TAG": "late"})
    marker = tmp_path / "runs"
    job = queue.enqueue("tests._tasks:mark_then_sleep_env", str(marker), 3.0, "TEST_TAG")
    assert wait_for(lambda: len(lines(marker)) == 1, timeout=30)
    late.signal_group(signal.SIGSTOP)
    try:
        processes.worker(redis_server.url, queue.name, lease=2.0, env={"TEST_TAG": "second"})
        assert job.result(timeout=60) == "second"
    finally:
        late.signal_group(signal.SIGCONT)
    # Usually the late copy had finished and its FINISH is refused; if the renewal runs
    # first, the worker learns it lost the lease and commits nothing. Either way: refused.
    refused = f"result of job {job.id} refused"
    lost = f"lost the lease on job {job.id}"
    assert wait_for(lambda: refused in late.log() or lost in late.log(), timeout=30)
    assert len(lines(marker)) == 2
    assert job.result(timeout=5) == "second"
    assert job.status() == "done"
    assert pending_entries(queue) == 0
    assert late.popen.poll() is None  # the late worker carries on


@pytest.mark.redis
def test_finish_by_worker_that_lost_its_lease_is_refused(queues):
    """Issue 4 (3), server side: FINISH refuses a holder whose entry another claimed."""
    queue = queues()
    job = queue.options(priority=0).enqueue(ECHO, 1)
    entry = queue.redis.xreadgroup(GROUP, "old", {queue.stream(0): ">"}, count=1)[0][1][0][0]
    entry = entry.decode()
    keys = queue.worker_keys(0, job.id)
    assert queue.run("start", keys, entry, "old", 3, 0, -1, job.id)[0] == b"run"
    assert queue.run("start", keys, entry, "new", 3, 0, 0, job.id)[0] == b"run"  # the claim

    def finish(consumer: str, value: str) -> int:
        blob = queue.keys.sign(_wire.dumps(value), queue.context(job.id, "result"))
        return queue.run("finish", keys, entry, consumer, job.id, "done", "ok", blob, 60, 0, 0, "")

    assert finish("old", "late") == 0
    assert job.status() == "running"
    assert finish("new", "current") == 1
    assert job.result(timeout=5) == "current"
    assert finish("old", "late") == 0
    assert job.result(timeout=5) == "current"


# -- (4) Redis killed mid-run ----------------------------------------------------------------


def _wait_reachable(queue: isopool.RedisQueue) -> bool:
    def ping() -> bool:
        try:
            return bool(queue.redis.ping())
        except Exception:
            return False

    return wait_for(ping, timeout=30)


@pytest.mark.redis
@pytest.mark.slow
def test_redis_sigkilled_mid_run_with_aof_loses_no_job(redis_factory, queues, processes, tmp_path):
    """Issue 4 (4): Redis SIGKILLed mid-run and restarted with AOF: every job has its result."""
    server = redis_factory(appendonly=True)
    queue = queues(url=server.url)
    markers = tmp_path / "markers"
    markers.mkdir()
    count = 300
    jobs = [
        queue.enqueue("tests._tasks:mark_then_sleep", str(markers / str(i)), 0.02, i)
        for i in range(count)
    ]
    for _ in range(2):
        processes.worker(server.url, queue.name, workers=2, lease=5.0)
    assert wait_for(lambda: len(os.listdir(markers)) >= count // 5, timeout=60)
    server.kill()
    started = len(os.listdir(markers))
    server.restart()
    assert started < count, "every job started before the kill; the test proves nothing"
    assert _wait_reachable(queue)
    results = [job.result(timeout=120) for job in jobs]
    assert results == list(range(count))
    assert all(job.status() == "done" for job in jobs)
    assert all(_tasks.runs(markers / str(i)) >= 1 for i in range(count))
    assert pending_entries(queue) == 0
    assert stream_entries(queue) == 0
    assert queue.pending() == 0
    assert queue.dead_letters() == []


@pytest.mark.redis
def test_redis_restarted_without_persistence_enqueue_raises_state_lost(redis_server, queues):
    """Issue 4 (4): after Redis lost its data, enqueue says the queue's state was lost."""
    queue = queues()
    queue.enqueue(ECHO, 1)
    redis_server.kill()
    redis_server.restart()
    assert _wait_reachable(queue)
    with pytest.raises(QueueUnavailableError, match="lost the state"):
        queue.enqueue(ECHO, 2)


@pytest.mark.redis
def test_redis_restarted_without_persistence_job_result_raises_state_lost(redis_server, queues):
    """Issue 4 (4): waiting on a job whose queue Redis forgot says the state was lost."""
    queue = queues()
    job = queue.enqueue(ECHO, 1)
    redis_server.kill()
    redis_server.restart()
    assert _wait_reachable(queue)
    with pytest.raises(QueueUnavailableError, match="lost the state"):
        job.result(timeout=5)


@pytest.mark.redis
def test_redis_restarted_without_persistence_worker_exits_with_code_3(
    redis_server, queues, processes
):
    """Issue 4 (4): a worker whose Redis lost the queue's state exits with code 3, saying so."""
    queue = queues()
    worker = processes.worker(redis_server.url, queue.name)
    assert queue.enqueue(ECHO, "before").result(timeout=30) == "before"
    redis_server.kill()
    redis_server.restart()
    assert worker.popen.wait(timeout=60) == 3
    assert "lost the state" in worker.log()


# -- (5) bad signatures ------------------------------------------------------------------------


def _inject(queue: isopool.RedisQueue, job_id: str, payload: bytes, band: int = 5) -> None:
    """Write a job straight into Redis with the queue's key layout, as anyone with write
    access to Redis could: its hash (status queued), then its stream entry."""
    key = f"{queue.prefix}:job:{job_id}"
    queue.redis.hset(
        key,
        mapping={
            "payload": payload,
            "name": "tests._tasks:echo",
            "band": band,
            "options": JobOptions().to_json(),
            "status": "queued",
            "deliveries": 0,
            "attempts": 0,
            "created": int(time.time() * 1000),
        },
    )
    entry = queue.redis.xadd(queue.stream(band), {"id": job_id})
    queue.redis.hset(key, "entry", entry)


def _bad_payload(kind: str, queue, queues, body: bytes, job_id: str) -> bytes:
    context = queue.context(job_id, "call")
    if kind == "forged":  # the right key id, the wrong secret
        return Keyring({"default": "an-attacker-s-own-secret-value"}).sign(body, context)
    if kind == "tampered":  # a genuine envelope whose body was swapped afterwards
        benign = _wire.dumps_call(ECHO, (1,), {}, None)
        genuine = queue.keys.sign(benign, context)
        return genuine[: len(genuine) - len(benign)] + body
    if kind == "unsigned":
        return body
    if kind == "unknown-key":
        return Keyring({"rotated-out": SECRET}).sign(body, context)
    if kind == "replayed":  # genuinely signed, for the same job id in another queue
        other = queues()
        return other.keys.sign(body, other.context(job_id, "call"))
    raise AssertionError(kind)


@pytest.mark.redis
@pytest.mark.parametrize("kind", ["forged", "tampered", "unsigned", "unknown-key", "replayed"])
def test_bad_signature_job_never_runs_and_is_dead_lettered(
    redis_server, queues, processes, tmp_path, kind
):
    """Issue 4 (5): a badly signed job is never unpickled and is dead-lettered bad-signature."""
    queue = queues()
    evidence = tmp_path / "unpickled"
    body = _wire.dumps_call(ECHO, (TouchOnUnpickle(evidence),), {}, None)
    job_id = f"{kind}-{unique('job')}"
    _inject(queue, job_id, _bad_payload(kind, queue, queues, body, job_id))
    worker = processes.worker(redis_server.url, queue.name)
    assert wait_for(lambda: [d.job_id for d in queue.dead_letters()] == [job_id], timeout=30)
    [letter] = queue.dead_letters()
    assert letter.reason == "bad-signature"
    assert queue.job(job_id).status() == "dead"
    with pytest.raises(SignatureError):
        queue.job(job_id).result(timeout=5)
    assert queue.enqueue(ECHO, "still serving").result(timeout=30) == "still serving"
    assert not evidence.exists()
    assert f"job {job_id} refused" in worker.log()
    assert pending_entries(queue) == 0


@pytest.mark.redis
def test_bad_signature_job_result_says_it_was_dead_lettered(redis_server, queues, processes):
    """result() of a job dead-lettered for its signature says so, naming bad-signature."""
    queue = queues()
    job_id = unique("job")
    _inject(queue, job_id, b"not an isopool envelope")
    processes.worker(redis_server.url, queue.name)
    assert wait_for(lambda: queue.job(job_id).status() == "dead", timeout=30)
    with pytest.raises(SignatureError, match="dead-lettered: bad-signature"):
        queue.job(job_id).result(timeout=5)


@pytest.mark.redis
def test_signed_job_with_file_payload_creates_file(redis_server, queues, processes, tmp_path):
    """The control for (5): the same payload, genuinely signed, is unpickled and makes its file."""
    queue = queues()
    evidence = tmp_path / "unpickled"
    processes.worker(redis_server.url, queue.name)
    queue.enqueue(ECHO, TouchOnUnpickle(evidence)).result(timeout=30)
    assert evidence.exists()


@pytest.mark.redis
def test_result_copied_from_other_job_raises_signature_error(queues, tmp_path):
    """A signed result copied onto another job is refused by result(), never unpickled."""
    queue = queues()
    victim, source = queue.enqueue(ECHO, 1), queue.enqueue(ECHO, 2)
    evidence = tmp_path / "unpickled"
    blob = queue.keys.sign(
        _wire.dumps(TouchOnUnpickle(evidence)), queue.context(source.id, "result")
    )
    queue.redis.hset(victim.key, mapping={"status": "done", "kind": "ok", "result": blob})
    with pytest.raises(SignatureError, match="bad signature"):
        victim.result(timeout=5)
    assert not evidence.exists()


# -- (6) a job that keeps killing its worker -----------------------------------------------


@pytest.mark.redis
def test_job_always_exiting_is_dead_lettered_after_delivery_limit(
    redis_server, queues, processes, tmp_path
):
    """Issue 4 (6): a job that always os._exit()s is dead-lettered after 3 deliveries."""
    queue = queues()
    marker = tmp_path / "runs"
    job = queue.enqueue("tests._tasks:crash_n_times", str(marker), 1000)
    processes.worker(redis_server.url, queue.name)
    with pytest.raises(TaskCrashError, match="delivery-limit"):
        job.result(timeout=60)
    assert job.status() == "dead"
    [letter] = queue.dead_letters()
    assert letter.job_id == job.id
    assert letter.reason.startswith("delivery-limit")
    assert _tasks.runs(marker) == queue.max_deliveries == 3
    assert pending_entries(queue) == 0


@pytest.mark.redis
def test_dead_lettered_job_requeued_runs_again(redis_server, queues, processes, tmp_path):
    """A dead-lettered job re-queued with fresh counters runs again (and can succeed)."""
    queue = queues()
    marker = tmp_path / "runs"
    job = queue.enqueue("tests._tasks:crash_n_times", str(marker), 3, "fourth time")
    processes.worker(redis_server.url, queue.name)
    with pytest.raises(TaskCrashError):
        job.result(timeout=60)
    assert queue.requeue(job.id) is True
    assert job.result(timeout=60) == "fourth time"
    assert _tasks.runs(marker) == 4


# -- (7) priorities ------------------------------------------------------------------------------


@pytest.mark.redis
def test_queue_band_0_jobs_all_start_before_band_9_jobs(redis_server, queues, processes, tmp_path):
    """Issue 4 (7): band-0 jobs queued after band-9 jobs all start first on one worker."""
    queue = queues()
    order = tmp_path / "order"
    late = [
        queue.options(priority=9).enqueue(_tasks.record_start, str(order), f"9-{i}")
        for i in range(4)
    ]
    urgent = [
        queue.options(priority=0).enqueue(_tasks.record_start, str(order), f"0-{i}")
        for i in range(4)
    ]
    processes.worker(redis_server.url, queue.name, workers=1)
    for job in urgent + late:
        job.result(timeout=30)
    started = lines(order)
    assert started == [f"0-{i}" for i in range(4)] + [f"9-{i}" for i in range(4)]


@pytest.mark.redis
def test_worker_fetch_takes_most_urgent_bands_first_up_to_its_room(queues):
    """One fetch takes band 0, then band 3, and stops at its room, leaving band 9 queued."""
    queue = queues()
    for priority, count in ((9, 2), (3, 2), (0, 1)):
        for _ in range(count):
            queue.options(priority=priority).enqueue(ECHO, priority)
    worker = QueueWorker(queue, workers=1, consumer="fetcher", drain=0.0)
    try:
        bands = [queue.stream(b) for b in range(10)]
        reply = worker._fetch_script(keys=bands, args=[GROUP, "fetcher", 3])
        assert [int(band) for band, _entry, _job_id in reply] == [0, 3, 3]
        assert queue.pending() == 2
    finally:
        worker.pool.terminate()


def test_pool_priority_0_tasks_start_before_priority_9_tasks(tmp_path):
    """On a busy Pool(1), priority-0 tasks start before earlier priority-9 ones, FIFO within."""
    ready, gate, order = tmp_path / "ready", tmp_path / "gate", tmp_path / "order"
    with isopool.Pool(1) as pool:
        blocker = pool.submit(_tasks.ready_then_wait_for_gate, str(ready), str(gate))
        assert wait_for(ready.exists, timeout=30)
        late = [
            pool.options(priority=9).submit(_tasks.record_start, str(order), f"9-{i}")
            for i in range(3)
        ]
        urgent = [
            pool.options(priority=0).submit(_tasks.record_start, str(order), f"0-{i}")
            for i in range(3)
        ]
        gate.touch()
        assert blocker.result(timeout=30) is True
        for task in urgent + late:
            task.result(timeout=30)
    assert lines(order) == [f"0-{i}" for i in range(3)] + [f"9-{i}" for i in range(3)]


# -- a delivery this worker itself lost ----------------------------------------------------------


@pytest.mark.redis
@pytest.mark.slow
def test_worker_own_stale_delivery_is_run_after_lease(queues):
    """An entry delivered to the only worker, whose reply was lost, still runs after the lease."""
    queue = queues(lease=1.0)
    job = queue.options(priority=0).enqueue(ECHO, "recovered")
    # The XREADGROUP that delivered the entry ran, but its reply never reached the worker.
    queue.redis.xreadgroup(GROUP, "only-worker", {queue.stream(0): ">"}, count=1)
    worker = QueueWorker(queue, workers=1, consumer="only-worker", drain=0.0)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        assert job.result(timeout=10) == "recovered"
    finally:
        worker.stop()
        thread.join(timeout=30)
        assert not thread.is_alive()

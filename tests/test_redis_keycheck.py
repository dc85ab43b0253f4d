"""A wrong secret is refused at start, not mistaken for forged jobs (issue 9, 3).

Each key id's first user stores a check value of its secret with the queue; a client or
``isopool worker`` whose secret for a known key id differs refuses to start, naming the
queue and the key id, and leaves every job where it is. A job signed with a key id the
queue knows but a worker lacks is handed back for a worker that holds it; a job whose
signature is wrong under a key the worker holds is still dead-lettered as forged
(``test_bad_signature_job_never_runs_and_is_dead_lettered`` in test_redis_queue.py,
whose workers pass the key check).
"""

from __future__ import annotations

import pytest

from isopool import SignatureError
from tests._redis import SECRET
from tests.conftest import wait_for

ECHO = "tests._tasks:echo"
WRONG = "a-wrong-secret-for-this-queue-0000"
NEW = "the-new-secret-after-rotation-0000"


@pytest.mark.redis
def test_client_with_wrong_secret_raises_signature_error_naming_queue_and_key_id(queues):
    """A RedisQueue whose secret differs from the queue's key check refuses to start."""
    queue = queues()
    with pytest.raises(SignatureError, match=rf"queue {queue.name!r}.*key id 'default'"):
        queues(queue.name, secret=WRONG)


@pytest.mark.redis
def test_client_with_rotated_keyring_passes_check_wrong_old_key_fails_it(queues):
    """Old+new keys pass where old was registered; a wrong old key is named in the error."""
    queue = queues()
    rotated = queues(queue.name, secret={"default": SECRET, "new": NEW}, key_id="new")
    assert queues(queue.name, secret={"new": NEW}).keys.current == "new"
    assert rotated.enqueue(ECHO, 1).id
    with pytest.raises(SignatureError, match="key id 'default'"):
        queues(queue.name, secret={"default": WRONG, "new": NEW}, key_id="new")


@pytest.mark.redis
def test_worker_with_wrong_secret_exits_code_2_leaving_jobs_for_right_worker(
    redis_server, queues, processes
):
    """A worker with a wrong secret exits 2 naming queue and key id; its jobs run later."""
    queue = queues()
    jobs = [queue.options(priority=i).enqueue(ECHO, i) for i in range(3)]
    wrong = processes.worker(redis_server.url, queue.name, secret=WRONG)
    assert wrong.popen.wait(60) == 2
    assert queue.name in wrong.log()
    assert "key id 'default'" in wrong.log()
    assert [job.status() for job in jobs] == ["queued"] * 3
    assert queue.pending() == 3
    assert queue.dead_letters() == []
    processes.worker(redis_server.url, queue.name)
    assert [job.result(timeout=30) for job in jobs] == [0, 1, 2]


@pytest.mark.redis
def test_job_signed_with_key_id_worker_lacks_is_left_for_worker_holding_it(
    redis_server, queues, processes
):
    """A job under key id 'default' is handed back by a 'new'-only worker, run by another."""
    queue = queues(secret={"default": SECRET, "new": NEW}, key_id="default")
    job = queue.enqueue(ECHO, "signed with the old key")
    lacking = processes.worker(redis_server.url, queue.name, secret=NEW, key_id="new")
    assert wait_for(lambda: f"job {job.id} is signed with key id 'default'" in lacking.log(), 30)
    assert queue.dead_letters() == []
    assert job.status() in ("queued", "delayed", "running")
    processes.worker(redis_server.url, queue.name)
    assert job.result(timeout=30) == "signed with the old key"
    assert job.info()["attempts"] == "1"  # hand-backs are not runs
    assert lacking.log().count(f"job {job.id} is signed") == 1  # logged once, not per hand-back
    assert lacking.popen.poll() is None

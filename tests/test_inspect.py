"""The read-only snapshot behind ``isopool status`` and the dashboard (issue 10, sections 4-5).

Against a real redis-server and real ``isopool worker``/``node`` processes: counts per
band, running jobs with their worker and lease, dead letters, per-minute throughput,
the workers' heartbeat registry, nodes, and the ``status`` command's three outputs.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import time

import pytest

from isopool._dist import inspect as _inspect
from tests._redis import REPO
from tests.conftest import wait_for

FAIL = "tests._tasks:raise_value_error"


def queue_of(snapshot, name):
    return next(q for q in snapshot["queues"] if q["name"] == name)


def status(url, *args):
    """Run ``isopool status`` without any ISOPOOL_ variable: it needs no secret."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ISOPOOL_")}
    return subprocess.run(
        [sys.executable, "-m", "isopool", "status", "--redis", url, *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


class Boom:
    """Unpickling this writes a marker file: proof that someone unpickled it."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.mark.redis
def test_snapshot_counts_each_band_scheduled_and_retry_wait(queues):
    """Queued jobs count in their band; scheduled and retry-waiting ones apart."""
    queue = queues()
    for _ in range(3):
        queue.options(priority=0).enqueue("tests._tasks:echo", 1)
    for _ in range(2):
        queue.enqueue("tests._tasks:echo", 2)
    queue.enqueue_in(3600, "tests._tasks:echo", 3)
    queue.redis.zadd(f"{queue.prefix}:delayed", {"0" * 32: 1})
    q = queue_of(_inspect.snapshot(queue.redis), queue.name)
    assert q["exists"]
    assert {b["band"]: b["queued"] for b in q["bands"] if b["queued"]} == {0: 3, 5: 2}
    assert q["totals"] == {"queued": 5, "running": 0, "scheduled": 1, "delayed": 1, "dead": 0}


@pytest.mark.redis
def test_discover_queues_finds_every_queue_by_its_epoch(queues):
    """Every RedisQueue made on the server is listed, by name, and nothing else."""
    first, second = queues(), queues()
    first.redis.set("isopool:unrelated", "1")
    assert _inspect.discover_queues(first.redis) == sorted([first.name, second.name])


@pytest.mark.redis
def test_snapshot_shows_running_job_with_its_worker_and_lease(queues, processes):
    """A running job is listed with the worker's consumer name, its age and lease idle time."""
    queue = queues()
    job = queue.enqueue("tests._tasks:hang", 60)
    processes.worker(queue.url, queue.name)
    assert wait_for(lambda: job.status() == "running", timeout=30)
    q = queue_of(_inspect.snapshot(queue.redis), queue.name)
    (running,) = q["running"]
    assert running["id"] == job.id
    assert running["function"] == "tests._tasks:hang"
    assert running["worker"] == job.info()["owner"]
    assert running["age"] >= 0
    assert running["lease_idle"] >= 0
    assert running["size"] > 0
    assert q["totals"]["running"] == 1
    assert q["totals"]["queued"] == 0
    (worker,) = q["workers"]
    assert worker["name"] == running["worker"]
    assert worker["alive"]


@pytest.mark.redis
def test_snapshot_counts_finished_jobs_per_minute(queues, processes):
    """Jobs a worker finished show in the current minute's counts, by outcome."""
    queue = queues()
    jobs = [queue.enqueue("tests._tasks:echo", i) for i in range(3)]
    failing = queue.options(restart="transient", max_retries=0).enqueue(FAIL, "x")
    processes.worker(queue.url, queue.name)
    for job in jobs:
        job.result(timeout=30)

    def counts():
        rows = queue_of(_inspect.snapshot(queue.redis), queue.name)["throughput"]
        return sum(r["done"] for r in rows), sum(r["dead"] for r in rows)

    assert wait_for(lambda: counts() == (3, 1), timeout=30), counts()
    q = queue_of(_inspect.snapshot(queue.redis), queue.name)
    assert len(q["throughput"]) == _inspect.MINUTES
    (dead,) = q["dead"]
    assert (dead["id"], dead["reason"], dead["status"]) == (failing.id, "retries-exhausted", "dead")
    assert dead["function"] == FAIL


@pytest.mark.redis
def test_worker_unregisters_when_it_stops(queues, processes):
    """A worker's heartbeat entry appears while it serves and is removed when it stops."""
    queue = queues()
    proc = processes.worker(queue.url, queue.name)

    def workers():
        return queue_of(_inspect.snapshot(queue.redis), queue.name)["workers"]

    assert wait_for(lambda: len(workers()) == 1, timeout=30)
    assert workers()[0]["pid"] == proc.pid
    assert proc.stop() == 0
    assert workers() == []


@pytest.mark.redis
def test_silent_worker_is_shown_dead(queues):
    """A heartbeat older than DEAD_AFTER seconds shows its worker as dead, not alive."""
    queue = queues()
    beat = _inspect.Heartbeat(queue.redis, queue.prefix, "host:1:abc", 2, 4)
    beat.beat(0)
    now = time.time()
    (fresh,) = queue_of(_inspect.snapshot(queue.redis, now=now), queue.name)["workers"]
    (stale,) = queue_of(
        _inspect.snapshot(queue.redis, now=now + _inspect.DEAD_AFTER + 1), queue.name
    )["workers"]
    assert fresh["alive"]
    assert not stale["alive"]


@pytest.mark.redis
def test_snapshot_never_unpickles_a_payload(queues, tmp_path):
    """A job whose payload would write a file when unpickled is listed; the file never appears."""
    queue = queues()
    job = queue.enqueue("tests._tasks:echo", 1)
    marker = tmp_path / "unpickled"
    hostile = pickle.dumps(Boom(str(marker)))
    queue.redis.hset(job.key, mapping={"payload": hostile, "result": hostile})
    queue.redis.xadd(f"{queue.prefix}:dead", {"id": job.id, "reason": "x", "at": 0})
    entry = queue.redis.hget(job.key, "entry")
    queue.redis.xreadgroup("workers", "reader", {queue.stream(5): ">"})  # now it is "running"
    q = queue_of(_inspect.snapshot(queue.redis), queue.name)
    assert [r["id"] for r in q["running"]] == [job.id]
    assert q["running"][0]["entry"] == entry.decode()
    assert q["running"][0]["size"] == len(hostile)
    assert [d["id"] for d in q["dead"]] == [job.id]
    assert not marker.exists()


@pytest.mark.redis
@pytest.mark.remote
def test_snapshot_lists_nodes_with_their_supervisors(redis_server, processes):
    """A live node is listed alive, with the supervisors it serves."""
    import redis

    client = redis.Redis.from_url(redis_server.url)
    processes.node(redis_server.url, "alpha", ["Billing", "Images"])

    def nodes():
        return _inspect.snapshot(client)["nodes"]

    assert wait_for(lambda: len(nodes()) == 1, timeout=30)
    (node,) = nodes()
    assert (node["name"], node["alive"], node["supervisors"]) == (
        "alpha",
        True,
        ["Billing", "Images"],
    )
    client.close()


@pytest.mark.redis
def test_status_json_reports_the_queue_counts(queues):
    """``isopool status --json`` prints the snapshot as JSON, for scripts."""
    queue = queues()
    queue.enqueue("tests._tasks:echo", 1)
    done = status(queue.url, "--queue", queue.name, "--json")
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert [q["name"] for q in data["queues"]] == [queue.name]
    assert data["queues"][0]["totals"]["queued"] == 1


@pytest.mark.redis
def test_status_piped_prints_plain_text_with_control_characters_escaped(queues):
    """Piped, status prints plain text; an escape sequence in a job name is shown escaped."""
    queue = queues()
    job = queue.enqueue("tests._tasks:echo", 1)
    queue.redis.hset(job.key, "name", "evil\x1b[2Jname")
    queue.redis.xadd(f"{queue.prefix}:dead", {"id": job.id, "reason": "why\x1b]0;", "at": 0})
    done = status(queue.url)
    assert done.returncode == 0, done.stderr
    assert f"queue {queue.name}" in done.stdout
    assert "queued 1" in done.stdout
    assert "evil\\x1b[2Jname" in done.stdout
    assert "\x1b" not in done.stdout


@pytest.mark.redis
def test_status_of_a_missing_queue_fails(redis_server):
    """``--queue`` naming no queue exits 1 and says so."""
    done = status(redis_server.url, "--queue", "nope")
    assert done.returncode == 1
    assert "no queue named 'nope'" in done.stderr


def run_on_terminal(argv, columns=120):
    """Run ``argv`` with stdout on a pseudo-terminal; what it wrote there."""
    import fcntl
    import pty
    import struct
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, columns, 0, 0))
    env = {k: v for k, v in os.environ.items() if not k.startswith("ISOPOOL_")}
    proc = subprocess.Popen(argv, cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=slave)
    os.close(slave)
    chunks = []
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    assert proc.wait(60) == 0
    os.close(master)
    return b"".join(chunks).decode(errors="replace")


@pytest.mark.redis
def test_status_on_a_terminal_draws_rich_tables_with_names_as_text(queues):
    """On a terminal, status draws rich tables; rich markup in a job name is shown as is."""
    pytest.importorskip("rich")
    queue = queues()
    job = queue.enqueue("tests._tasks:echo", 1)
    queue.redis.hset(job.key, "name", "[bold red]markup[/]")
    queue.redis.xadd(f"{queue.prefix}:dead", {"id": job.id, "reason": "why", "at": 0})
    out = run_on_terminal([sys.executable, "-m", "isopool", "status", "--redis", queue.url])
    assert f"queue {queue.name}" in out
    assert "dead letters" in out
    assert "[bold red]markup[/]" in out
    assert "─" in out  # a rich rule or table border, not the plain layout


@pytest.mark.redis
def test_heartbeat_prunes_workers_silent_for_minutes(queues):
    """A worker's beat removes entries silent for PRUNE_AFTER seconds, and keeps its own."""
    queue = queues()
    old = json.dumps({"host": "gone", "pid": 1, "beat": time.time() - _inspect.PRUNE_AFTER - 10})
    queue.redis.hset(f"{queue.prefix}:workers", "gone:1:abc", old)
    _inspect.Heartbeat(queue.redis, queue.prefix, "here:2:def", 1, 2).beat(0)
    names = [w["name"] for w in queue_of(_inspect.snapshot(queue.redis), queue.name)["workers"]]
    assert names == ["here:2:def"]

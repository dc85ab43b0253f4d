"""Prometheus metrics (issue 10, section 3): a pool's collector, ``isopool worker`` and
``isopool node --metrics-port``, read back with prometheus_client's own parser, and
``Pool(usage=False)``."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import urllib.request
from concurrent.futures import CancelledError

import pytest

import isopool
from tests import _tasks
from tests._redis import SECRET, free_port
from tests.conftest import started, wait_for

prometheus_client = pytest.importorskip("prometheus_client")
from prometheus_client import CollectorRegistry, generate_latest  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

OUTCOMES = ("ok", "raised", "crashed", "timed_out", "killed", "cancelled")
# Every label isopool puts on a sample (``le`` is the histograms' bucket bound).
BOUNDED_LABELS = {"pool", "queue", "outcome", "result", "mode", "le"}


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of an exposition, keyed by (name, sorted labels)."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(text: str, name: str, **labels: str) -> float | None:
    return samples(text).get((name, tuple(sorted(labels.items()))))


def buckets(text: str, name: str, pool: str) -> list[tuple[float, float]]:
    """A histogram's cumulative (le, count) pairs, by bound."""
    found = []
    for (sample, labels), count in samples(text).items():
        named = dict(labels)
        if sample == f"{name}_bucket" and named.get("pool") == pool:
            found.append((float(named["le"]), count))
    return sorted(found)


def scrape(registry: CollectorRegistry) -> str:
    return generate_latest(registry).decode()


def scrape_settled(registry: CollectorRegistry, pool: str, runs: int) -> str:
    """A scrape once ``runs`` durations are counted: the monitor counts a run's
    duration just after it settles the run's future (off the caller's wait), so a
    scrape made the moment ``result()`` returns may be a few microseconds early."""
    text = ""

    def counted() -> bool:
        nonlocal text
        text = scrape(registry)
        return value(text, "isopool_task_duration_seconds_count", pool=pool) == runs

    assert wait_for(counted), value(text, "isopool_task_duration_seconds_count", pool=pool)
    return text


def outcome_counts(text: str, pool: str) -> dict[str, float]:
    return {o: value(text, "isopool_tasks_total", pool=pool, outcome=o) for o in OUTCOMES}


def kill_when_started(task):
    os.kill(started(task), signal.SIGKILL)


# (id, how to submit, the outcome it must count under, the error its result raises)
CASES = [
    ("ok", lambda pool: pool.submit(_tasks.echo, 1), "ok", None),
    ("raised", lambda pool: pool.submit(_tasks.raise_value_error), "raised", ValueError),
    (
        "crashed-os-exit",
        lambda pool: pool.submit(_tasks.exit_with, 3),
        "crashed",
        isopool.TaskCrashError,
    ),
    (
        "crashed-segfault",
        lambda pool: pool.submit(_tasks.segfault),
        "crashed",
        isopool.TaskCrashError,
    ),
    (
        "timed-out",
        lambda pool: pool.options(timeout=0.2, shutdown="brutal_kill").submit(_tasks.hang),
        "timed_out",
        isopool.TaskTimeoutError,
    ),
]


@pytest.mark.parametrize(
    ("submit", "outcome", "error"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_pool_collector_task_counts_under_its_outcome(make_pool, submit, outcome, error):
    """One task ends; the collector counts it under its outcome and no other, once."""
    registry = CollectorRegistry()
    pool = make_pool(1, name="one")
    pool.metrics(registry)
    task = submit(pool)
    with pytest.raises(error) if error is not None else contextlib.nullcontext():
        task.result(timeout=30)
    text = scrape_settled(registry, "one", 1)
    expected = {o: (1.0 if o == outcome else 0.0) for o in OUTCOMES}
    assert outcome_counts(text, "one") == expected
    assert value(text, "isopool_task_duration_seconds_count", pool="one") == 1.0
    assert value(text, "isopool_task_queue_wait_seconds_count", pool="one") == 1.0
    assert value(text, "isopool_tasks_submitted_total", pool="one") == 1.0


def test_pool_collector_sigkilled_task_counts_as_crashed(make_pool):
    """A task whose worker is SIGKILLed from outside counts as crashed; its worker as replaced."""
    registry = CollectorRegistry()
    pool = make_pool(1, name="killed-outside")
    pool.metrics(registry)
    task = pool.submit(_tasks.hang)
    kill_when_started(task)
    with pytest.raises(isopool.TaskCrashError):
        task.result(timeout=30)
    assert pool.submit(_tasks.echo, 2).result(timeout=30) == 2
    text = scrape(registry)
    assert outcome_counts(text, "killed-outside")["crashed"] == 1.0
    assert value(text, "isopool_workers_replaced_total", pool="killed-outside") == 1.0
    assert value(text, "isopool_workers", pool="killed-outside") == 1.0


def test_pool_collector_killed_and_cancelled_tasks_count_apart(make_pool):
    """kill() of a running task counts as killed; cancel() of a pending one as cancelled."""
    registry = CollectorRegistry()
    pool = make_pool(1, name="stops")
    pool.metrics(registry)
    running = pool.submit(_tasks.hang)
    started(running)
    queued = pool.submit(_tasks.echo, 1)
    assert queued.cancel()
    running.kill()
    with pytest.raises(CancelledError):
        running.result(timeout=30)
    text = scrape(registry)
    counts = outcome_counts(text, "stops")
    assert (counts["killed"], counts["cancelled"]) == (1.0, 1.0)


def test_pool_collector_histogram_counts_match_runs(make_pool):
    """Duration counts every ended run, queue wait every started task; buckets add up."""
    registry = CollectorRegistry()
    pool = make_pool(2, name="many")
    pool.metrics(registry)
    tasks = [pool.submit(_tasks.sleep_then, 0.001 * (i % 5), i) for i in range(40)]
    tasks += [pool.submit(_tasks.raise_value_error) for _ in range(5)]
    for task in tasks:
        task.exception(timeout=30)
    text = scrape_settled(registry, "many", 45)
    ended = sum(outcome_counts(text, "many").values())
    assert ended == 45
    for name in ("isopool_task_duration_seconds", "isopool_task_queue_wait_seconds"):
        count = value(text, f"{name}_count", pool="many")
        assert count == 45
        cumulative = buckets(text, name, "many")
        assert [v for _le, v in cumulative] == sorted(v for _le, v in cumulative)
        assert cumulative[-1] == (float("inf"), count)
        assert value(text, f"{name}_sum", pool="many") > 0


def test_histogram_batch_counts_as_one_observe_per_value():
    """observe_many (the monitor's batched path) buckets exactly like observe, bounds too."""
    from array import array

    from isopool._core.metrics import DEFAULT_BUCKETS, Histogram

    values = [0.0, 1e-9, *DEFAULT_BUCKETS, *(b * 1.0001 for b in DEFAULT_BUCKETS), 1e9]
    one, batch = Histogram(), Histogram()
    for v in values:
        one.observe(v)
    batch.observe_many(array("d", values[:7]))
    batch.observe_many(array("d"))
    batch.observe_many(array("d", values[7:]))
    assert batch.counts == one.counts
    assert sum(batch.counts) == len(values)
    assert batch.sum == pytest.approx(one.sum)


def test_pool_collector_folds_past_a_batch_and_at_each_scrape(make_pool):
    """More runs than one fold batch: every run counted once, none lost between folds."""
    from isopool._core.metrics import RunTimings

    registry = CollectorRegistry()
    pool = make_pool(2, name="folds")
    pool.metrics(registry)
    n = RunTimings.FOLD_AT + 300
    first = list(pool.map(abs, range(-10, 0)))
    assert first == list(range(10, 0, -1))
    scrape_settled(registry, "folds", 10)
    for task in [pool.submit(abs, -i) for i in range(n)]:
        task.result(timeout=60)
    assert wait_for(lambda: pool.stats()["completed"] == n + 10)
    held = len(pool._monitor._machine.durations)
    assert held < RunTimings.FOLD_AT  # the monitor folded a full batch by itself
    text = scrape_settled(registry, "folds", n + 10)
    for name in ("isopool_task_duration_seconds", "isopool_task_queue_wait_seconds"):
        assert value(text, f"{name}_count", pool="folds") == n + 10
        assert buckets(text, name, "folds")[-1] == (float("inf"), n + 10)


def test_pool_collector_counts_each_run_of_a_restarted_task(make_pool, tmp_path):
    """A transient task that crashes twice: three runs, three durations, one queue wait."""
    registry = CollectorRegistry()
    pool = make_pool(1, name="restarts")
    pool.metrics(registry)
    counter = tmp_path / "runs"
    task = pool.options(restart="transient").submit(_tasks.crash_n_times, str(counter), 2)
    assert task.result(timeout=30) == "ok"
    text = scrape_settled(registry, "restarts", 3)
    assert value(text, "isopool_task_queue_wait_seconds_count", pool="restarts") == 1.0
    assert value(text, "isopool_task_restarts_total", pool="restarts") == 2.0


def test_run_timings_fold_loses_nothing_appended_meanwhile():
    """The monitor appends durations without the lock while a scrape folds: every value
    is counted exactly once (a fold takes out only what it saw)."""
    import threading
    from array import array

    from isopool._core.metrics import RunTimings

    timings = RunTimings()
    durations: array[float] = timings.durations
    n = 300_000
    done = threading.Event()

    def append() -> None:
        for _ in range(n):
            durations.append(0.001)
        done.set()

    feeder = threading.Thread(target=append)
    feeder.start()
    folds = 0
    while not done.is_set():
        timings.fold()
        folds += 1
    feeder.join()
    timings.fold()
    assert folds > 1
    assert sum(timings.duration.snapshot()[1]) == n
    assert timings.duration.snapshot()[2] == pytest.approx(0.001 * n)


def test_pool_collector_gauges_show_pending_and_running(make_pool):
    """While one task runs and two wait, the gauges say 1 running and 2 pending."""
    registry = CollectorRegistry()
    pool = make_pool(1, name="busy")
    pool.metrics(registry)
    running = pool.submit(_tasks.hang)
    started(running)
    waiting = [pool.options(priority=0).submit(_tasks.echo, i) for i in range(2)]
    text = scrape(registry)
    assert value(text, "isopool_tasks_running", pool="busy") == 1.0
    assert value(text, "isopool_tasks_pending", pool="busy") == 2.0
    running.kill()
    assert [t.result(timeout=30) for t in waiting] == [0, 1]


def test_pool_collector_two_pools_share_a_registry_under_their_names(make_pool):
    """Two pools on one registry appear side by side; a second live pool of a name is refused."""
    registry = CollectorRegistry()
    first, second = make_pool(1, name="first"), make_pool(1, name="second")
    first.metrics(registry)
    second.metrics(registry)
    first.metrics(registry)  # the same pool again: nothing changes
    first.submit(_tasks.echo, 1).result(timeout=30)
    text = scrape(registry)
    assert value(text, "isopool_tasks_total", pool="first", outcome="ok") == 1.0
    assert value(text, "isopool_tasks_total", pool="second", outcome="ok") == 0.0
    with pytest.raises(ValueError, match="already exported"):
        make_pool(1, name="first").metrics(registry)


def test_pool_collector_names_follow_prometheus_conventions(make_pool):
    """Counters end in _total, histograms in _seconds; every label is a bounded one."""
    registry = CollectorRegistry()
    pool = make_pool(1, name="names")
    pool.metrics(registry)
    pool.submit(_tasks.echo, 1).result(timeout=30)
    families = list(text_string_to_metric_families(scrape(registry)))
    assert families
    for family in families:
        assert re.fullmatch(r"isopool_[a-z_]+", family.name), family.name
        if family.type == "histogram":
            assert family.name.endswith("_seconds")
        for sample in family.samples:
            if family.type == "counter":
                assert sample.name.endswith(("_total", "_created")), sample.name
            assert set(sample.labels) <= BOUNDED_LABELS, sample


def test_pool_collector_served_over_http_changes_after_tasks(make_pool):
    """Served by prometheus_client's HTTP server, the scrape counts tasks run since the last."""
    registry = CollectorRegistry()
    pool = make_pool(1, name="http")
    pool.metrics(registry)
    server, thread = prometheus_client.start_http_server(0, addr="127.0.0.1", registry=registry)
    try:
        url = f"http://127.0.0.1:{server.server_port}/metrics"
        before = fetch(url)
        assert value(before, "isopool_tasks_total", pool="http", outcome="ok") == 0.0
        for i in range(3):
            pool.submit(_tasks.echo, i).result(timeout=30)
        after = fetch(url)
        assert value(after, "isopool_tasks_total", pool="http", outcome="ok") == 3.0
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def test_pool_usage_false_reports_no_usage(make_pool):
    """Pool(usage=False): tasks still run; task.usage is None and stats() sums nothing."""
    pool = make_pool(1, usage=False)
    task = pool.submit(_tasks.echo, 7)
    assert task.result(timeout=30) == 7
    assert task.usage is None
    stats = pool.stats()
    assert (stats["usage_reports"], stats["completed"]) == (0, 1)
    with pytest.raises(TypeError, match="usage must be True or False"):
        isopool.Pool(1, usage="no")


def test_pool_without_prometheus_client_runs_tasks():
    """With prometheus_client unimportable, isopool imports and runs; metrics() says why not."""
    code = (
        "import sys; sys.modules['prometheus_client'] = None\n"
        "import isopool\n"
        "with isopool.Pool(1) as pool:\n"
        "    assert pool.submit(pow, 2, 5).result(timeout=30) == 32\n"
        "    try:\n"
        "        pool.metrics()\n"
        "    except ImportError:\n"
        "        print('refused')\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.strip() == "refused"


# -- isopool worker / node --metrics-port: real processes, real redis-server ---------------


def fetch(url: str, timeout: float = 5.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as reply:
        return reply.read().decode()


def fetch_when(url: str, predicate, timeout: float = 30.0) -> str:
    """Scrape ``url`` until ``predicate(text)`` holds; the last text (asserting it held)."""
    seen = {"text": ""}

    def check() -> bool:
        try:
            seen["text"] = fetch(url)
        except OSError:
            return False
        return predicate(seen["text"])

    assert wait_for(check, timeout=timeout, interval=0.1), seen["text"]
    return seen["text"]


@pytest.mark.redis
def test_worker_metrics_port_counts_jobs_by_outcome(redis_server, queues, processes):
    """``isopool worker --metrics-port``: jobs by outcome and result, histograms, no job ids."""
    queue = queues()
    port = free_port()
    worker = processes.spawn(
        [
            *("worker", "--redis", redis_server.url, "--queue", queue.name, "--workers", "1"),
            *("--drain", "1", "--metrics-port", str(port)),
        ]
    )
    url = f"http://127.0.0.1:{port}/metrics"
    name = queue.name
    first = fetch_when(url, lambda t: value(t, "isopool_jobs_total", queue=name, outcome="ok") == 0)
    assert value(first, "isopool_jobs_running", queue=name) == 0.0
    ok = [queue.enqueue("tests._tasks:echo", i) for i in range(3)]
    raised = queue.enqueue("tests._tasks:raise_value_error")
    crashed = queue.enqueue("tests._tasks:exit_with", 3)
    timed_out = queue.options(timeout=0.2).enqueue("tests._tasks:hang")
    assert [job.result(timeout=30) for job in ok] == [0, 1, 2]
    for job, error in (
        (raised, ValueError),
        (crashed, isopool.TaskCrashError),
        (timed_out, isopool.TaskTimeoutError),
    ):
        with pytest.raises(error):
            job.result(timeout=30)
    text = fetch_when(
        url, lambda t: value(t, "isopool_job_results_total", queue=name, result="dead_lettered")
    )
    jobs = {o: value(text, "isopool_jobs_total", queue=name, outcome=o) for o in ("ok", "raised")}
    assert jobs == {"ok": 3.0, "raised": 1.0}
    # A crash is a lost delivery: retried until the worker's max_deliveries (3), then
    # dead-lettered at its next START.
    assert value(text, "isopool_jobs_total", queue=name, outcome="crashed") == 3.0
    assert value(text, "isopool_jobs_total", queue=name, outcome="timed_out") == 1.0
    results = {
        r: value(text, "isopool_job_results_total", queue=name, result=r)
        for r in ("done", "failed", "retried", "dead_lettered")
    }
    assert results == {"done": 3.0, "failed": 2.0, "retried": 3.0, "dead_lettered": 1.0}
    assert value(text, "isopool_job_duration_seconds_count", queue=name) == 8.0
    assert value(text, "isopool_job_queue_wait_seconds_count", queue=name) == 8.0
    assert value(text, "isopool_redis_errors_total", queue=name) == 0.0
    assert value(text, "isopool_job_lease_claims_total", queue=name) == 0.0
    # The worker's own pool, under its name.
    assert value(text, "isopool_tasks_total", pool=f"queue:{name}", outcome="crashed") == 3.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            assert set(sample.labels) <= BOUNDED_LABELS, sample
    assert not any(job.id in text for job in [*ok, raised, crashed, timed_out])
    assert worker.stop() == 0


@pytest.mark.redis
def test_worker_metrics_port_refuses_a_port_in_use(redis_server, queues, processes):
    """A --metrics-port already taken: the worker says so and exits 2 before serving."""
    import socket

    queue = queues()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        worker = processes.spawn(
            [
                "worker",
                "--redis",
                redis_server.url,
                "--queue",
                queue.name,
                "--metrics-port",
                str(port),
            ]
        )
        assert worker.popen.wait(30) == 2
    assert "--metrics-port: cannot serve on 127.0.0.1" in worker.log()


@pytest.mark.redis
@pytest.mark.remote
def test_node_metrics_port_counts_calls_per_supervisor(redis_server, processes):
    """``isopool node --metrics-port``: each supervisor's queue and pool, counting calls."""
    port = free_port()
    processes.spawn(
        [
            *("node", "--name", "m1", "--redis", redis_server.url, "--workers", "1"),
            *("--lease", "3", "--supervisor", "Metrics.Sup", "--metrics-port", str(port)),
        ]
    )
    url = f"http://127.0.0.1:{port}/metrics"
    queue = "node.m1.Metrics.Sup"
    fetch_when(url, lambda t: value(t, "isopool_jobs_total", queue=queue, outcome="ok") == 0)
    cluster = isopool.connect(redis_server.url, secret=SECRET)
    try:
        assert wait_for(lambda: any(n.name == "m1" and n.alive for n in cluster.nodes()), 30)
        supervisor = cluster.supervisor("Metrics.Sup", node="m1")
        assert [supervisor.async_("tests._tasks:echo", i).await_(30) for i in range(2)] == [0, 1]
    finally:
        cluster.redis.close()
    text = fetch_when(
        url, lambda t: value(t, "isopool_jobs_total", queue=queue, outcome="ok") == 2.0
    )
    assert value(text, "isopool_tasks_total", pool=f"queue:{queue}", outcome="ok") == 2.0
    assert value(text, "isopool_workers", pool=f"queue:{queue}") == 1.0


def test_metrics_cli_options_default_to_loopback():
    """--metrics-host defaults to 127.0.0.1 for both commands; no --metrics-port, no server."""
    from isopool._cli import _parser

    worker = _parser().parse_args(["worker", "--redis", "r", "--queue", "q", "--metrics-port", "9"])
    assert (worker.metrics_port, worker.metrics_host) == (9, "127.0.0.1")
    node = _parser().parse_args(["node", "--name", "n", "--redis", "r", "--supervisor", "S"])
    assert (node.metrics_port, node.metrics_host) == (None, "127.0.0.1")

"""Prometheus collectors for pools and queue workers, and the ``/metrics`` server.

Imported only by ``Pool.metrics`` and by ``isopool worker|node --metrics-port``, so
the core never needs ``prometheus_client`` (the ``isopool[metrics]`` extra). These are
custom collectors: ``collect()`` builds every metric family when Prometheus scrapes,
from the counters the monitor keeps anyway (``Monitor.stats``, ``Monitor.timings``)
and from ``_metrics.JobMetrics``; nothing here runs on a task's path.

One ``PoolsCollector`` per registry serves every pool registered on it, so several
pools share each family under their bounded ``pool`` label (never a task id or a
function name). Pools are held weakly: a collected pool leaves the output.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from prometheus_client import REGISTRY, start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry

from ._core.metrics import JOB_OUTCOMES, JOB_RESULTS, TASK_OUTCOMES, JobMetrics

if TYPE_CHECKING:
    from ._core.monitor import Monitor
    from ._dist.queue_worker import QueueWorker

__all__ = ["JobsCollector", "PoolsCollector", "export_workers", "register_pool", "serve"]

_Snapshot = tuple[tuple[float, ...], list[int], float]

_collectors: weakref.WeakKeyDictionary[CollectorRegistry, PoolsCollector] = (
    weakref.WeakKeyDictionary()
)
_collectors_lock = threading.Lock()


def register_pool(monitor: Monitor, registry: CollectorRegistry | None = None) -> None:
    """Export ``monitor``'s pool on ``registry`` (default: the global REGISTRY)."""
    registry = REGISTRY if registry is None else registry
    with _collectors_lock:
        collector = _collectors.get(registry)
        if collector is None:
            collector = _collectors[registry] = PoolsCollector()
            registry.register(collector)
    collector.add(monitor)


class PoolsCollector(Collector):
    """The metric families of every pool added to it, one ``pool`` label each."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pools: dict[str, weakref.ref[Monitor]] = {}

    def add(self, monitor: Monitor) -> None:
        """Export ``monitor``; refuse a second live pool of the same name."""
        with self._lock:
            known = self._pools.get(monitor.name)
            current = known() if known is not None else None
            if current is monitor:
                return
            if current is not None:
                raise ValueError(
                    f"a pool named {monitor.name!r} is already exported on this registry; "
                    "give each pool its own name (Pool(name=...))"
                )
            self._pools[monitor.name] = weakref.ref(monitor)
        monitor.timings()  # start its histograms

    def describe(self) -> Iterable[Metric]:
        """The families without samples, so the registry knows their names."""
        return _pool_families()

    def collect(self) -> Iterable[Metric]:
        """Every family, computed now from each live pool's counters."""
        with self._lock:
            monitors = [(name, ref()) for name, ref in self._pools.items()]
            for name, monitor in monitors:
                if monitor is None:
                    del self._pools[name]
        families = _pool_families()
        by_name = {family.name: family for family in families}
        for name, monitor in monitors:
            if monitor is not None:
                _add_pool(by_name, name, monitor.stats(), monitor.timings())
        return families


def _pool_families() -> list[Metric]:
    pool = ["pool"]
    return [
        CounterMetricFamily(
            "isopool_tasks",
            "Runs of tasks that ended, by outcome (a restarted task counts each run; "
            "cancelled: cancelled before it ran).",
            labels=[*pool, "outcome"],
        ),
        CounterMetricFamily("isopool_tasks_submitted", "Tasks submitted.", labels=pool),
        CounterMetricFamily(
            "isopool_task_restarts", "Runs re-started by the restart policy.", labels=pool
        ),
        GaugeMetricFamily("isopool_tasks_pending", "Tasks waiting for a worker.", labels=pool),
        GaugeMetricFamily("isopool_tasks_running", "Workers running a task now.", labels=pool),
        GaugeMetricFamily(
            "isopool_tasks_delayed", "Restarts waiting out their back-off.", labels=pool
        ),
        GaugeMetricFamily("isopool_workers", "Worker processes alive.", labels=pool),
        CounterMetricFamily("isopool_workers_started", "Worker processes started.", labels=pool),
        CounterMetricFamily(
            "isopool_workers_replaced", "Workers started to replace one that exited.", labels=pool
        ),
        CounterMetricFamily(
            "isopool_task_cpu_seconds",
            "CPU seconds of the tasks' calls and their reaped children (Task.usage).",
            labels=[*pool, "mode"],
        ),
        HistogramMetricFamily(
            "isopool_task_duration_seconds",
            "Seconds from the start of a run to its end, whatever the outcome (runs that started).",
            labels=pool,
        ),
        HistogramMetricFamily(
            "isopool_task_queue_wait_seconds",
            "Seconds from submit to the start of a task's first run.",
            labels=pool,
        ),
    ]


def _add_pool(
    family: dict[str, Any], name: str, stats: dict[str, float], timings: dict[str, _Snapshot]
) -> None:
    for outcome, key in TASK_OUTCOMES:
        family["isopool_tasks"].add_metric([name, outcome], stats[key])
    family["isopool_tasks_submitted"].add_metric([name], stats["submitted"])
    family["isopool_task_restarts"].add_metric([name], stats["restarted"])
    family["isopool_tasks_pending"].add_metric([name], stats["pending"])
    family["isopool_tasks_running"].add_metric([name], stats["running"])
    family["isopool_tasks_delayed"].add_metric([name], stats["delayed"])
    family["isopool_workers"].add_metric([name], stats["workers"])
    family["isopool_workers_started"].add_metric([name], stats["workers_started"])
    family["isopool_workers_replaced"].add_metric([name], stats["workers_replaced"])
    cpu = family["isopool_task_cpu_seconds"]
    cpu.add_metric([name, "user"], stats["cpu_user_seconds"])
    cpu.add_metric([name, "system"], stats["cpu_system_seconds"])
    _add_histogram(family["isopool_task_duration_seconds"], [name], timings["duration"])
    _add_histogram(family["isopool_task_queue_wait_seconds"], [name], timings["queue_wait"])


def _add_histogram(family: HistogramMetricFamily, labels: list[str], snap: _Snapshot) -> None:
    """Per-bucket counts to Prometheus' cumulative ``le`` buckets."""
    bounds, counts, total = snap
    buckets: list[tuple[str, float]] = []
    running = 0
    for bound, count in zip((*map(repr, bounds), "+Inf"), counts, strict=True):
        running += count
        buckets.append((bound, running))
    family.add_metric(labels, buckets, total)


class JobsCollector(Collector):
    """The metric families of the queue workers of one process, one ``queue`` label each."""

    def __init__(self, jobs: Sequence[JobMetrics]) -> None:
        self._jobs = list(jobs)

    def describe(self) -> Iterable[Metric]:
        """The families without samples, so the registry knows their names."""
        return _job_families()

    def collect(self) -> Iterator[Metric]:
        """Every family, computed now from each worker's counters."""
        families = _job_families()
        by_name: dict[str, Any] = {family.name: family for family in families}
        for jobs in self._jobs:
            snap = jobs.snapshot()
            queue = [jobs.queue]
            for outcome in JOB_OUTCOMES:
                by_name["isopool_jobs"].add_metric([*queue, outcome], snap["outcomes"][outcome])
            for result in JOB_RESULTS:
                results = by_name["isopool_job_results"]
                results.add_metric([*queue, result], snap["results"][result])
            by_name["isopool_jobs_running"].add_metric(queue, snap["held"])
            by_name["isopool_job_lease_claims"].add_metric(queue, snap["claims"])
            by_name["isopool_redis_errors"].add_metric(queue, snap["redis_errors"])
            _add_histogram(by_name["isopool_job_duration_seconds"], queue, snap["duration"])
            _add_histogram(by_name["isopool_job_queue_wait_seconds"], queue, snap["queue_wait"])
        yield from families


def _job_families() -> list[Metric]:
    queue = ["queue"]
    return [
        CounterMetricFamily(
            "isopool_jobs",
            "Runs of jobs on this worker that ended, by outcome.",
            labels=[*queue, "outcome"],
        ),
        CounterMetricFamily(
            "isopool_job_results",
            "What this worker stored for its jobs: done, failed, retried (back to the "
            "queue after a crash or per the retry policy), dead_lettered, cancelled, "
            "released (handed back on stop).",
            labels=[*queue, "result"],
        ),
        GaugeMetricFamily(
            "isopool_jobs_running", "Jobs this worker holds (running or finishing).", labels=queue
        ),
        CounterMetricFamily(
            "isopool_job_lease_claims",
            "Jobs this worker took over from a worker that stopped renewing its lease.",
            labels=queue,
        ),
        CounterMetricFamily(
            "isopool_redis_errors", "Redis calls of this worker that failed.", labels=queue
        ),
        HistogramMetricFamily(
            "isopool_job_duration_seconds",
            "Seconds from a job's start on this worker to its end.",
            labels=queue,
        ),
        HistogramMetricFamily(
            "isopool_job_queue_wait_seconds",
            "Seconds from a job entering its stream (enqueued, or due) to its start.",
            labels=queue,
        ),
    ]


def serve(port: int, host: str) -> CollectorRegistry:
    """Serve ``/metrics`` on ``host:port`` from a new, empty registry; return it.

    Called before the workers exist, so a missing ``prometheus_client`` or a port in
    use is reported before anything starts; ``export_workers`` fills the registry.
    The HTTP server runs on a daemon thread for the life of the process. The registry
    holds isopool's families only (no process or GC collectors: those are
    ``prometheus_client``'s to add).

    Raises:
        OSError: the address cannot be bound (a port in use, a host not local).
    """
    registry = CollectorRegistry()
    start_http_server(port, addr=host, registry=registry)
    return registry


def export_workers(registry: CollectorRegistry, workers: Sequence[QueueWorker]) -> None:
    """Add each queue worker's job metrics and its pool's metrics to ``registry``."""
    for worker in workers:
        worker.pool.metrics(registry)
    registry.register(JobsCollector([worker.metrics for worker in workers]))

"""The Redis queue: isopool worker against RQ, on the same redis-server, in one run.

    python benchmarks/queue_bench.py [--quick] [--json PATH]

Both run every job in a separate process (RQ forks a "work horse" per job; isopool
runs it in a pooled worker process). Scenarios, each the median of N repeats:

- drain rate, no-op jobs: N jobs are queued first, then one worker process (two
  job processes for isopool, RQ's one-job-at-a-time worker) starts; jobs/s from
  its start until the last result is stored.
- drain rate, 10 ms CPU jobs: the same with jobs that burn ~10 ms of CPU.
- recovery after SIGKILL: a 1 s job starts on worker A, whose process group is
  SIGKILLed; seconds until the job's result is stored by worker B. isopool's time
  is bounded by the lease (``--lease``); RQ does not re-run a job whose worker died
  (it ends up in the failed registry), which the table says.

Only loopback: the script starts its own redis-server on a free port and stops
everything it started, by pid.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SECRET = "benchmark-secret-0123456789abcdef"
ENV = {**os.environ, "ISOPOOL_SECRET": SECRET, "PYTHONPATH": f"{HERE}{os.pathsep}{ROOT}"}
sys.path[:0] = [str(HERE), str(ROOT)]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    def __init__(self):
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="isopool-bench-redis-")
        self.proc = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                self.dir,
            ],
            stdout=subprocess.DEVNULL,
        )
        import redis

        self.client = redis.Redis(port=self.port)
        deadline = time.monotonic() + 10
        while True:
            try:
                self.client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.01)
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def stop(self):
        self.proc.terminate()
        self.proc.wait(10)


def start(args):
    return subprocess.Popen(
        args,
        cwd=HERE,
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def stop(proc):
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(10)


def wait_until(predicate, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.005)
    return False


# -- isopool ------------------------------------------------------------------------


def isopool_drain(server, fn, arg, count, workers):
    import isopool

    queue = isopool.RedisQueue(server.url, f"bench-{time.monotonic_ns()}", secret=SECRET)
    jobs = [queue.enqueue(fn, arg) for _ in range(count)]
    proc = start(
        [
            sys.executable,
            "-m",
            "isopool",
            "worker",
            "--redis",
            server.url,
            "--queue",
            queue.name,
            "--workers",
            str(workers),
            "--log-level",
            "ERROR",
        ]
    )
    t0 = time.monotonic()
    try:
        ok = wait_until(lambda: all_done(queue, jobs), 300)
        elapsed = time.monotonic() - t0
    finally:
        stop(proc)
    return count / elapsed if ok else None


def all_done(queue, jobs):
    pipe = queue.redis.pipeline(transaction=False)
    for job in jobs:
        pipe.hget(job.key, "status")
    return all(status == b"done" for status in pipe.execute())


def isopool_recovery(server, lease):
    import isopool

    queue = isopool.RedisQueue(
        server.url, f"bench-{time.monotonic_ns()}", secret=SECRET, lease=lease
    )
    a = start(
        [
            sys.executable,
            "-m",
            "isopool",
            "worker",
            "--redis",
            server.url,
            "--queue",
            queue.name,
            "--workers",
            "1",
            "--lease",
            str(lease),
            "--log-level",
            "ERROR",
        ]
    )
    b = None
    try:
        job = queue.enqueue("_bench_tasks:sleep_then", 1.0)
        if not wait_until(lambda: job.status() == "running", 30):
            return None
        b = start(
            [
                sys.executable,
                "-m",
                "isopool",
                "worker",
                "--redis",
                server.url,
                "--queue",
                queue.name,
                "--workers",
                "1",
                "--lease",
                str(lease),
                "--log-level",
                "ERROR",
            ]
        )
        os.killpg(a.pid, signal.SIGKILL)
        t0 = time.monotonic()
        job.result(timeout=lease * 10 + 30)
        return time.monotonic() - t0
    finally:
        stop(a)
        if b is not None:
            stop(b)


# -- RQ --------------------------------------------------------------------------------


def rq_drain(server, fn, arg, count):
    from rq import Queue

    queue = Queue(f"bench-{time.monotonic_ns()}", connection=server.client)
    jobs = [queue.enqueue(fn, arg) for _ in range(count)]
    proc = start(
        [
            sys.executable,
            "-m",
            "rq.cli",
            "worker",
            "--burst",
            "--url",
            server.url,
            "--quiet",
            queue.name,
        ]
    )
    t0 = time.monotonic()
    try:
        proc.wait(600)
        elapsed = time.monotonic() - t0
    finally:
        stop(proc)
    done = sum(1 for j in jobs if j.get_status(refresh=True) == "finished")
    return count / elapsed if done == count else None


def rq_recovery(server):
    from rq import Queue

    queue = Queue(f"bench-{time.monotonic_ns()}", connection=server.client)
    job = queue.enqueue("_bench_tasks.sleep_then", 1.0)
    a = start(
        [sys.executable, "-m", "rq.cli", "worker", "--url", server.url, "--quiet", queue.name]
    )
    b = None
    try:
        if not wait_until(lambda: job.get_status(refresh=True) == "started", 30):
            return "did not start"
        b = start(
            [sys.executable, "-m", "rq.cli", "worker", "--url", server.url, "--quiet", queue.name]
        )
        os.killpg(a.pid, signal.SIGKILL)
        if wait_until(lambda: job.get_status(refresh=True) == "finished", 60):
            return "re-run"
        return f"not re-run within 60 s (status: {job.get_status(refresh=True)})"
    finally:
        stop(a)
        if b is not None:
            stop(b)


def summary(values):
    good = [v for v in values if isinstance(v, float)]
    if not good:
        return None
    return {"median": statistics.median(good), "min": min(good), "max": max(good)}


def fmt(stat, unit):
    if stat is None:
        return "failed"
    return f"{stat['median']:,.1f} {unit} ({stat['min']:,.1f} - {stat['max']:,.1f})"


def main():
    import logging

    logging.getLogger("isopool").setLevel(logging.ERROR)  # the no-persistence warning
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, 1 repeat")
    parser.add_argument("--json", default=str(HERE / "results-queue.json"))
    args = parser.parse_args()
    repeats = 1 if args.quick else 3
    noop_jobs = 100 if args.quick else 1000
    cpu_jobs = 50 if args.quick else 300
    lease = 2.0
    server = RedisServer()
    results = {}
    try:
        for name, fn_iso, fn_rq, arg, count in (
            ("noop", "_bench_tasks:echo", "_bench_tasks.echo", None, noop_jobs),
            ("cpu-10ms", "_bench_tasks:burn_ms", "_bench_tasks.burn_ms", 10, cpu_jobs),
        ):
            iso, rq = [], []
            for _ in range(repeats):
                iso.append(isopool_drain(server, fn_iso, arg, count, workers=2))
                rq.append(rq_drain(server, fn_rq, arg, count))
            results[name] = {"isopool": summary(iso), "rq": summary(rq), "jobs": count}
        recov = [isopool_recovery(server, lease) for _ in range(repeats)]
        results["recovery"] = {"isopool": summary(recov), "lease": lease, "rq": rq_recovery(server)}
    finally:
        server.stop()
    print(
        f"Redis queue: isopool worker vs RQ {__import__('rq').__version__}, same redis-server,"
        f" {os.cpu_count()} CPUs, median of {repeats} (min - max)"
    )
    for name in ("noop", "cpu-10ms"):
        r = results[name]
        ratio = (r["isopool"]["median"] / r["rq"]["median"]) if r["isopool"] and r["rq"] else None
        print(
            f"  {name:9} jobs/s ({r['jobs']} jobs): isopool {fmt(r['isopool'], '')}"
            f" | rq {fmt(r['rq'], '')}" + (f" | isopool is {ratio:.1f}x faster" if ratio else "")
        )
    r = results["recovery"]
    print(
        f"  SIGKILL of the worker mid-job, until its result is stored elsewhere: isopool "
        f"{fmt(r['isopool'], 's')} with a {r['lease']} s lease | rq: {r['rq']}"
    )
    Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

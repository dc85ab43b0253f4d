"""The Redis queue: isopool worker against RQ, Celery and Dramatiq, on one redis-server, in one run.

    python benchmarks/queue_bench.py [--quick] [--repeats N] [--json PATH]
    python benchmarks/queue_bench.py --merge run1.json run2.json   # min - max over runs

Every peer runs the same job functions (``_bench_tasks``; ``_bench_celery`` and
``_bench_dramatiq`` wrap them) with the same number of job processes, 2:

- isopool: one ``isopool worker --workers 2`` (a pool of two job processes).
- RQ: two ``rq worker`` processes (RQ runs one job at a time per worker, in a
  "work horse" it forks for each job).
- Celery: one ``celery worker -P prefork -c 2`` (Redis broker, Redis result backend).
- Dramatiq: one ``dramatiq --processes 2 --threads 1`` (Redis broker; results through
  the Results middleware's Redis backend). Two single-threaded processes rather than
  one process with two threads: that is "2 processes", and only processes run
  Python CPU work in parallel.

Rows (before each measurement the server is flushed, the workers are started, and
warm-up jobs run until every job process has answered):

- no-op jobs/s and 10 ms CPU jobs/s: enqueue N jobs, time from the first enqueue
  until every result is stored (read straight from Redis by the peer's own key).
- enqueue-to-start latency, p50/p99: one job at a time (the next is enqueued once
  the previous result is stored); the job returns its CLOCK_MONOTONIC start time,
  which is system-wide, and the latency is that minus the moment before enqueue.
- recovery after SIGKILL: two single-process workers A and B; a 1 s job starts on
  one of them, which is then SIGKILLed: its process group and the job process's
  group (RQ's work horse and isopool's job process lead their own). Seconds from the
  kill until the job's result is stored by the other worker (which includes
  re-running the 1 s job), or what happened instead within 60 s.

Each peer uses its documented defaults, except: isopool's lease is 2 s (default
30 s; also measured at 30 s), and Dramatiq's actors store results. Celery's
recovery is also measured with its at-least-once settings (``task_acks_late`` and
``task_reject_on_worker_lost``).

Only loopback: the script starts its own redis-server on a free port. Every process
it starts, and everything those start (it is their child subreaper), is SIGKILLed
and reaped by pid, also when a measurement fails or the script is interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
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
PEERS = ("isopool", "rq", "celery", "dramatiq")
LOST_WAIT = 60.0  # seconds a recovery may take before it is reported as not happening


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- processes: every one we start is killed and reaped ------------------------------


STARTED = []  # every Popen this script started, for the final clean-up


def become_subreaper():
    """Orphans of our workers (a horse whose worker was killed) become our children."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER


def children(pid):
    out = []
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{task}/children") as f:
                out.extend(int(p) for p in f.read().split())
    return out


def descendants(pid):
    out, todo = [], [pid]
    while todo:
        for child in children(todo.pop()):
            if child not in out:
                out.append(child)
                todo.append(child)
    return out


def ours():
    """Every live process below this one (workers, their pools, orphaned horses)."""
    return descendants(os.getpid())


def kill_tree(pids):
    """SIGKILL these processes and their process groups (never our own), then reap them."""
    own = os.getpgrp()
    for pid in pids:
        with contextlib.suppress(OSError):
            group = os.getpgid(pid)
            if group != own:
                os.killpg(group, signal.SIGKILL)
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    for proc in list(STARTED):
        if proc.pid in pids:
            proc.wait(10)
            STARTED.remove(proc)
    deadline = time.monotonic() + 10
    for pid in pids:  # orphans reparented to us; a grandchild that is not ours is not reaped
        while time.monotonic() < deadline:
            try:
                if os.waitpid(pid, os.WNOHANG)[0]:
                    break
            except ChildProcessError:
                break
            time.sleep(0.01)


def stop_all_workers():
    """Kill every process below us except the redis-server."""
    keep = {SERVER.proc.pid} if SERVER else set()
    kill_tree([p for p in ours() if p not in keep])


def start(args, tag, extra_env=None):
    proc = subprocess.Popen(
        args,
        cwd=HERE,
        env={**ENV, "BENCH_WORKER": tag, **(extra_env or {})},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    STARTED.append(proc)
    return proc


class RedisServer:
    def __init__(self):
        import redis

        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="isopool-bench-redis-")
        self.proc = subprocess.Popen(
            [
                *("redis-server", "--port", str(self.port), "--bind", "127.0.0.1"),
                *("--save", "", "--appendonly", "no", "--dir", self.dir),
            ],
            stdout=subprocess.DEVNULL,
        )
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
        ENV["BENCH_REDIS_URL"] = os.environ["BENCH_REDIS_URL"] = self.url

    def stop(self):
        self.proc.terminate()
        self.proc.wait(10)


SERVER = None


# -- the peers: start workers, enqueue, tell whether results are stored ----------------


class Isopool:
    name = "isopool"
    key = "pid"  # warm-up: distinct job processes

    def __init__(self, server, lease=30.0):
        import isopool

        self.server, self.lease = server, lease
        self.queue = isopool.RedisQueue(server.url, "bench", secret=SECRET, lease=lease)

    def instances(self, procs):
        return [["A", procs]]

    def worker(self, tag, procs):
        return start(
            [
                *(sys.executable, "-m", "isopool", "worker", "--redis", self.server.url),
                *("--queue", "bench", "--workers", str(procs), "--lease", str(self.lease)),
                *("--log-level", "ERROR"),
            ],
            tag,
        )

    def enqueue(self, fn, *args):
        return self.queue.enqueue(f"_bench_tasks:{fn}", *args)

    def done(self, jobs):
        pipe = self.server.client.pipeline(transaction=False)
        for job in jobs:
            pipe.hget(job.key, "status")
        return [s == b"done" for s in pipe.execute()]

    def value(self, job):
        return job.result(timeout=10)

    def state(self, job):
        return job.status()


class RQ:
    name = "rq"
    key = "tag"  # a horse per job: distinct workers

    def __init__(self, server):
        from rq import Queue

        self.server = server
        self.queue = Queue("bench", connection=server.client)

    def instances(self, procs):
        return [[chr(ord("A") + i), 1] for i in range(procs)]

    def worker(self, tag, procs):
        assert procs == 1
        return start(
            [
                sys.executable,
                "-m",
                "rq.cli",
                "worker",
                "--url",
                self.server.url,
                "--quiet",
                "bench",
            ],
            tag,
        )

    def enqueue(self, fn, *args):
        return self.queue.enqueue(f"_bench_tasks.{fn}", *args)

    def done(self, jobs):
        pipe = self.server.client.pipeline(transaction=False)
        for job in jobs:
            pipe.hget(job.key, "status")
        return [s == b"finished" for s in pipe.execute()]

    def value(self, job):
        return job.return_value(refresh=True)

    def state(self, job):
        return str(getattr(job.get_status(refresh=True), "value", "?"))


class Celery:
    name = "celery"
    key = "pid"

    def __init__(self, server, acks_late=False):
        import _bench_celery

        self.server, self.acks_late = server, acks_late
        self.app = _bench_celery.app
        self.mod = _bench_celery

    def instances(self, procs):
        return [["A", procs]]

    def worker(self, tag, procs):
        return start(
            [
                *(sys.executable, "-m", "celery", "-A", "_bench_celery", "worker"),
                *("-P", "prefork", "-c", str(procs), "-n", f"{tag}@%h", "--loglevel", "ERROR"),
            ],
            tag,
            {"BENCH_CELERY_ACKS_LATE": "1" if self.acks_late else "0"},
        )

    def enqueue(self, fn, *args):
        return getattr(self.mod, fn).apply_async(args)

    def done(self, results):
        pipe = self.server.client.pipeline(transaction=False)
        for r in results:
            pipe.exists(self.app.backend.get_key_for_task(r.id))
        return [bool(n) for n in pipe.execute()]

    def value(self, result):
        return result.get(timeout=10)

    def state(self, result):
        return result.state


class Dramatiq:
    name = "dramatiq"
    key = "pid"

    def __init__(self, server):
        import _bench_dramatiq

        self.server = server
        self.mod = _bench_dramatiq

    def instances(self, procs):
        return [["A", procs]]

    def worker(self, tag, procs):
        return start(
            [
                *(sys.executable, "-m", "dramatiq", "_bench_dramatiq"),
                *("--processes", str(procs), "--threads", "1"),
            ],
            tag,
        )

    def enqueue(self, fn, *args):
        return getattr(self.mod, fn).send(*args)

    def done(self, messages):
        pipe = self.server.client.pipeline(transaction=False)
        for m in messages:
            pipe.exists(self.mod.backend.build_message_key(m))
        return [bool(n) for n in pipe.execute()]

    def value(self, message):
        return message.get_result(backend=self.mod.backend, block=True, timeout=10_000)

    def state(self, message):
        return "no result stored"


def make(name, server, **kw):
    server.client.flushall()
    return {"isopool": Isopool, "rq": RQ, "celery": Celery, "dramatiq": Dramatiq}[name](
        server, **kw
    )


# -- measuring ---------------------------------------------------------------------------


def wait_all(peer, handles, timeout, poll=0.01):
    """True once every handle's result is stored.

    Each poll asks about the first unfinished handle only (one command), and when that
    one is done, about the next 100 at once: the poller's own load on Redis and on the
    CPUs stays small and the same for every peer.
    """
    deadline = time.monotonic() + timeout
    i = 0
    while True:
        width = 1
        while i < len(handles):
            flags = peer.done(handles[i : i + width])
            for ok in flags:
                if not ok:
                    break
                i += 1
            if not all(flags):
                break
            width = min(2 * width, 64)
        if i == len(handles):
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(poll)


def start_workers(peer, procs):
    """Start the peer's workers; return {tag: Popen} once every job process answered."""
    workers = {tag: peer.worker(tag, n) for tag, n in peer.instances(procs)}
    want = procs if len(workers) == 1 else len(workers)
    seen = set()
    deadline = time.monotonic() + 60
    while len(seen) < want:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{peer.name}: workers did not come up ({seen})")
        batch = [peer.enqueue("whoami", 0.1) for _ in range(2 * want)]
        if not wait_all(peer, batch, 60, poll=0.02):
            raise RuntimeError(f"{peer.name}: warm-up jobs did not finish")
        for h in batch:
            tag, pid = peer.value(h)
            seen.add(tag if peer.key == "tag" else (tag, pid))
    return workers


def drain(name, server, fn, arg, count, procs=2):
    peer = make(name, server)
    try:
        start_workers(peer, procs)
        t0 = time.monotonic()
        handles = [peer.enqueue(fn, arg) for _ in range(count)]
        ok = wait_all(peer, handles, 600)
        return count / (time.monotonic() - t0) if ok else "timeout"
    finally:
        stop_all_workers()


def latency(name, server, count, procs=2):
    peer = make(name, server)
    try:
        start_workers(peer, procs)
        out = []
        for _ in range(count):
            t0 = time.monotonic()
            h = peer.enqueue("stamp")
            if not wait_all(peer, [h], 30, poll=0.0005):
                return "timeout"
            out.append((peer.value(h) - t0) * 1000)
        out.sort()
        return {"p50": statistics.median(out), "p99": out[min(len(out) - 1, int(len(out) * 0.99))]}
    finally:
        stop_all_workers()


def recovery(name, server, **kw):
    peer = make(name, server, **kw)
    marker = Path(tempfile.mkdtemp(prefix="isopool-bench-")) / "marker"
    try:
        workers = start_workers(peer, 2) if name == "rq" else None
        if workers is None:  # two single-process workers, A and B
            workers = {"A": peer.worker("A", 1), "B": peer.worker("B", 1)}
            seen, deadline = set(), time.monotonic() + 60
            while len(seen) < 2 and time.monotonic() < deadline:
                batch = [peer.enqueue("whoami", 0.1) for _ in range(4)]
                wait_all(peer, batch, 60, poll=0.02)
                seen.update(peer.value(h)[0] for h in batch)
        job = peer.enqueue("mark_sleep", str(marker), 1.0)
        deadline = time.monotonic() + 30
        while not marker.exists():
            if time.monotonic() > deadline:
                return "did not start"
            time.sleep(0.002)
        pid, group = map(int, marker.read_text().split())
        victim = next(t for t, p in workers.items() if group == p.pid or pid in descendants(p.pid))
        doomed = [workers[victim].pid, *descendants(workers[victim].pid), pid]
        own = os.getpgrp()
        for g in {workers[victim].pid, group} - {own}:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(g, signal.SIGKILL)
        t0 = time.monotonic()
        kill_tree(doomed)
        if wait_all(peer, [job], LOST_WAIT, poll=0.005):
            elapsed = time.monotonic() - t0
            by = peer.value(job)
            return elapsed if by != victim else f"finished by the killed worker ({elapsed:.1f} s)"
        return f"not within {LOST_WAIT:.0f} s (status: {peer.state(job)})"
    finally:
        stop_all_workers()


# -- the plan and the table ----------------------------------------------------------------


def run(args):
    global SERVER
    import logging

    logging.getLogger("isopool").setLevel(logging.ERROR)  # the no-persistence warning
    become_subreaper()
    noop_jobs = 100 if args.quick else 1000
    cpu_jobs = 50 if args.quick else 300
    lat_jobs = 30 if args.quick else 200
    results = {
        "meta": {
            "cpus": os.cpu_count(),
            "versions": versions(),
            "started": time.time(),
            "load_start": os.getloadavg()[0],
        }
    }
    SERVER = RedisServer()
    try:
        for _ in range(args.repeats):  # peers interleaved: a noisy minute hits them all
            for name in PEERS:
                for row, fn, arg, count in (
                    ("noop", "echo", None, noop_jobs),
                    ("cpu-10ms", "burn_ms", 10, cpu_jobs),
                ):
                    note(f"{row} {name}")
                    value = drain(name, SERVER, fn, arg, count)
                    results.setdefault(row, {}).setdefault(name, []).append(value)
                note(f"latency {name}")
                results.setdefault("latency", {}).setdefault(name, []).append(
                    latency(name, SERVER, lat_jobs)
                )
        for label, name, kw in (
            ("isopool", "isopool", {"lease": 2.0}),
            ("isopool-lease-30", "isopool", {"lease": 30.0}),
            ("rq", "rq", {}),
            ("celery", "celery", {}),
            ("celery-acks-late", "celery", {"acks_late": True}),
            ("dramatiq", "dramatiq", {}),
        ):
            note(f"recovery {label}")
            results.setdefault("recovery", {}).setdefault(label, []).append(
                recovery(name, SERVER, **kw)
            )
    finally:
        stop_all_workers()
        for proc in list(STARTED):
            kill_tree([proc.pid])
        SERVER.stop()
    results["meta"]["sizes"] = {"noop": noop_jobs, "cpu-10ms": cpu_jobs, "latency": lat_jobs}
    results["meta"]["seconds"] = time.time() - results["meta"]["started"]
    results["meta"]["load_end"] = os.getloadavg()[0]
    Path(args.json).write_text(json.dumps(results, indent=2))
    print(table([results]))


def note(text):
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def versions():
    import celery
    import dramatiq
    import redis
    import rq

    out = subprocess.run(["redis-server", "--version"], capture_output=True, text=True).stdout
    server = next((w[2:] for w in out.split() if w.startswith("v=")), "?")
    return {
        "python": sys.version.split()[0],
        "rq": rq.__version__,
        "celery": celery.__version__,
        "dramatiq": dramatiq.__version__,
        "redis-py": redis.__version__,
        "redis-server": server,
    }


def span(values, key=None, fmt="{:,.0f}"):
    nums = [v[key] if key else v for v in values if isinstance(v, (dict, float))]
    words = sorted({v for v in values if isinstance(v, str)})
    if not nums:
        return " / ".join(words) or "n/a", None
    lo, hi = min(nums), max(nums)
    text = (
        fmt.format(lo) if fmt.format(lo) == fmt.format(hi) else f"{fmt.format(lo)}-{fmt.format(hi)}"
    )
    if words:
        text += f" ({', '.join(words)} in some runs)"
    return text, statistics.median(nums)


def ratio(iso, peer, higher_is_better):
    """``(isopool 3.1x faster)`` or ``(isopool 1.2x slower)``, from the medians."""
    if iso is None or peer is None:
        return ""
    r = iso / peer if higher_is_better else peer / iso
    return f" (isopool {r:.1f}x faster)" if r >= 1 else f" (isopool {1 / r:.1f}x slower)"


def table(runs):
    """Markdown: figures are min-max over every run and repeat; ratios from medians."""

    def collect(row, peer):
        return [v for r in runs for v in r.get(row, {}).get(peer, [])]

    v = runs[0]["meta"]["versions"]
    head = (
        f"| | isopool worker | RQ {v['rq']} | Celery {v['celery']} | Dramatiq {v['dramatiq']} |\n"
        "|---|---|---|---|---|\n"
    )
    lines = []
    for row, label in (("noop", "no-op jobs, jobs/s"), ("cpu-10ms", "10 ms CPU jobs, jobs/s")):
        iso_text, iso = span(collect(row, "isopool"))
        cells = [f"**{iso_text}**"]
        for peer in PEERS[1:]:
            text, med = span(collect(row, peer))
            cells.append(text + ratio(iso, med, True))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    for key in ("p50", "p99"):
        iso_text, iso = span(collect("latency", "isopool"), key, "{:,.1f}")
        cells = [f"**{iso_text}**"]
        for peer in PEERS[1:]:
            text, med = span(collect("latency", peer), key, "{:,.1f}")
            cells.append(text + ratio(iso, med, False))
        lines.append(f"| enqueue-to-start latency {key}, ms | " + " | ".join(cells) + " |")
    rec = {k: span(collect("recovery", k), fmt="{:.1f} s") for k in runs[0].get("recovery", {})}
    cells = [f"**{rec['isopool'][0]}** (lease 2 s); {rec['isopool-lease-30'][0]} (default 30 s)"]
    cells.append(rec["rq"][0])
    cells.append(f"{rec['celery'][0]} (default); acks_late: {rec['celery-acks-late'][0]}")
    cells.append(rec["dramatiq"][0])
    lines.append(
        "| SIGKILL of a worker mid-job until its result is stored by another | "
        + " | ".join(cells)
        + " |"
    )
    return head + "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes")
    parser.add_argument("--repeats", type=int, default=1, help="repeats of the speed rows (1)")
    parser.add_argument("--json", default=str(HERE / "results-queue.json"))
    parser.add_argument("--merge", nargs="+", metavar="JSON", help="print the table of runs")
    args = parser.parse_args()
    if args.merge:
        print(table([json.loads(Path(p).read_text()) for p in args.merge]))
        return
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda *_: sys.exit(1))  # run the clean-up in finally
    run(args)


if __name__ == "__main__":
    main()

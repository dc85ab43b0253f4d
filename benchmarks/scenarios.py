"""The benchmark scenarios: each measures one thing about one peer and returns numbers.

A scenario is a function ``run(peer, sizes) -> dict`` that starts the peer's pool,
measures, and always stops the pool again. ``run.py`` calls each one in a fresh
subprocess (``run.py --one SCENARIO PEER``), so no scenario inherits another's
workers, threads or heap. Values are numbers, or a short word when there is no
number to give ("hung", "broken (BrokenProcessPool)"). A peer that cannot do
what a scenario asks raises ``peers.Unsupported`` and is reported as "n/a".

Import time of the libraries is not measured: each scenario's clock starts after
``import``. Every wait has a deadline, so a peer that hangs costs a few seconds
and is reported, never waited for.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import statistics
import tempfile
import time
from dataclasses import dataclass

import _bench_tasks as tasks

WAIT = 60.0  # the longest any single result may take before we call the peer hung


@dataclass(frozen=True)
class Sizes:
    """How much work each scenario does; ``QUICK`` is a smoke run, ``FULL`` the real one."""

    submit_tasks: int = 20_000
    map_items: int = 100_000
    map_items_chunksize_1: int = 20_000  # one task per item: fewer items, same rate
    latency_calls: int = 2_000
    cpu_task_seconds: float = 0.05
    cpu_tasks_per_worker: int = 16
    payload_bytes: int = 10_000_000
    payload_round_trips: int = 10
    fresh_tasks: int = 200
    crash_others: int = 20
    crash_sleep: float = 0.5  # each of the other tasks sleeps this long
    crash_delay: float = 0.1  # the crash waits this long, so the others are queued
    crash_wait: float = 5.0  # after this long without an error, the crashed task "hung"
    task_timeout: float = 0.5
    floor_round_trips: int = 5_000
    floor_forks: int = 200
    hol_tiny_tasks: int = 2_000
    hol_slow_seconds: float = 1.0
    observe_rounds: int = 30
    observe_burst: int = 3_000
    observe_calls: int = 200


FULL = Sizes()
QUICK = Sizes(
    submit_tasks=2_000,
    map_items=10_000,
    map_items_chunksize_1=2_000,
    latency_calls=200,
    cpu_tasks_per_worker=2,
    payload_round_trips=3,
    fresh_tasks=20,
    crash_sleep=0.2,
    crash_wait=1.5,
    floor_round_trips=500,
    floor_forks=30,
    hol_tiny_tasks=200,
    hol_slow_seconds=0.3,
    observe_rounds=3,
    observe_burst=500,
    observe_calls=50,
)
MAP_CHUNKSIZES = (1, 100, 1000)


def worker_count():
    """The CPUs this process may use (its affinity mask), as most pools default to."""
    return len(os.sched_getaffinity(0))


# -- helpers ------------------------------------------------------------------------


@contextlib.contextmanager
def running(peer, workers, max_tasks_per_child=None, graceful=True):
    """Start ``peer``; stop it afterwards: shut down if all went well, else terminate."""
    peer.start(workers, max_tasks_per_child)
    try:
        yield peer
    except BaseException:
        peer.terminate()
        raise
    if graceful:
        peer.shutdown()
    else:
        peer.terminate()


def warm_up(peer, workers):
    """Run a few trivial tasks so that start-up is not part of what follows."""
    for future in [peer.submit(tasks.noop) for _ in range(2 * workers)]:
        future.result(timeout=WAIT)


def wait_all(futures, timeout=WAIT):
    deadline = time.monotonic() + timeout
    return [future.result(timeout=max(0.0, deadline - time.monotonic())) for future in futures]


def tree_cpu_seconds():
    """CPU seconds of this process and every live descendant, all threads, from /proc.

    The pool's helpers and workers descend from the measuring process under every peer,
    so this is what a scenario cost the machine, whatever else runs on it: a steadier
    figure than wall time on a busy machine (it does not count the waits for a CPU).
    Read from each thread's ``schedstat`` (nanoseconds on a CPU), not ``stat``'s ticks.
    """
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    parents[int(entry)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue  # exited meanwhile
    tree, frontier = {os.getpid()}, [os.getpid()]
    while frontier:
        pid = frontier.pop()
        for child, parent in parents.items():
            if parent == pid and child not in tree:
                tree.add(child)
                frontier.append(child)
    total = 0
    for pid in tree:
        try:
            threads = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in threads:
            try:
                with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                    total += int(f.read().split()[0])
            except OSError:
                continue
    return total / 1e9


def percentile(values, fraction):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def outcome(future, timeout):
    """("ok", value), ("hung", None) or ("error", exception) for ``future``."""
    try:
        return "ok", future.result(timeout=timeout)
    except TimeoutError as exc:
        return ("hung", None) if not future.done() else ("error", exc)
    except Exception as exc:
        return "error", exc


def error_word(exc):
    return type(exc).__name__


def read_marker(path, timeout):
    """Wait for a task's marker file; return (pid, monotonic time), or None."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(path) as f:
                pid, when = f.read().split()
            return int(pid), float(when)
        except (FileNotFoundError, ValueError):
            time.sleep(0.0005)
    return None


def is_gone(pid):
    """True once ``pid`` has exited (a zombie counts as gone: it runs nothing)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state in ("Z", "X")


def wait_gone(pid, timeout):
    """Seconds until ``pid`` is gone, or None if it outlives ``timeout``."""
    start = time.monotonic()
    while not is_gone(pid):
        if time.monotonic() - start > timeout:
            return None
        time.sleep(0.001)
    return time.monotonic() - start


# -- 1. start-up --------------------------------------------------------------------


def startup(peer, sizes):
    """From constructing the pool to the first result of a trivial task; then shutdown."""
    start = time.perf_counter()
    peer.start(worker_count())
    try:
        peer.submit(tasks.noop).result(timeout=WAIT)
    except BaseException:
        peer.terminate()
        raise
    first = time.perf_counter() - start
    start = time.perf_counter()
    peer.shutdown()
    return {"first_result_ms": first * 1e3, "shutdown_ms": (time.perf_counter() - start) * 1e3}


# -- 2. submit throughput ---------------------------------------------------------------


def submit_throughput(peer, sizes):
    """Submit many no-op tasks, then wait for them all."""
    workers = worker_count()
    with running(peer, workers):
        warm_up(peer, workers)
        cpu = tree_cpu_seconds()
        start = time.perf_counter()
        futures = [peer.submit(tasks.noop) for _ in range(sizes.submit_tasks)]
        wait_all(futures, timeout=10 * WAIT)
        elapsed = time.perf_counter() - start
        cpu = tree_cpu_seconds() - cpu
    return {
        "tasks_per_s": sizes.submit_tasks / elapsed,
        "cpu_us_per_task": cpu / sizes.submit_tasks * 1e6,
    }


# -- 3. map throughput ------------------------------------------------------------------


def map_throughput(peer, sizes):
    """Square integers through map() at several chunksizes; the best is the figure."""
    workers = worker_count()
    rates = {}
    with running(peer, workers):
        warm_up(peer, workers)
        for chunksize in MAP_CHUNKSIZES:
            items = sizes.map_items_chunksize_1 if chunksize == 1 else sizes.map_items
            start = time.perf_counter()
            results = peer.map(tasks.square, range(items), chunksize)
            elapsed = time.perf_counter() - start
            if len(results) != items or results[-1] != (items - 1) ** 2:
                raise AssertionError(f"map at chunksize {chunksize} returned wrong results")
            rates[chunksize] = items / elapsed
    best = max(rates, key=rates.__getitem__)
    values = {"best_items_per_s": rates[best], "best_chunksize": str(best)}
    values.update({f"items_per_s_chunksize_{c}": rate for c, rate in rates.items()})
    return values


# -- 4. round-trip latency ---------------------------------------------------------------


def latency(peer, sizes):
    """One trivial task at a time on a warm pool: submit, wait, repeat."""
    workers = worker_count()
    times = []
    with running(peer, workers):
        warm_up(peer, workers)
        cpu = tree_cpu_seconds()
        for _ in range(sizes.latency_calls):
            start = time.perf_counter()
            peer.submit(tasks.noop).result(timeout=WAIT)
            times.append(time.perf_counter() - start)
        cpu = tree_cpu_seconds() - cpu
    return {
        "p50_us": percentile(times, 0.5) * 1e6,
        "p99_us": percentile(times, 0.99) * 1e6,
        "cpu_us_per_call": cpu / sizes.latency_calls * 1e6,
    }


# -- 4b. what observing costs, paired ------------------------------------------------------

OBSERVE_ARMS = ("lean", "usage", "observed")


def _observe_pools(workers):
    """Three isopool pools side by side: usage and metrics off, usage on, both on.

    The third exports to a registry of its own through ``pool.metrics``; nothing
    scrapes it during the measurement (a scrape costs per second, not per task: it
    is timed on its own, ``scrape_ms``).
    """
    import threading

    import isopool

    # The first pool of a single-threaded process gets a fork server forked from it,
    # the later ones (made once the first one's monitor thread runs) one started
    # afresh: workers of the two kinds differ in round-trip time. An idle thread
    # first gives all three arms the same kind.
    idle = threading.Event()
    threading.Thread(target=idle.wait, name="bench-idle", daemon=True).start()
    pools = {"lean": isopool.Pool(workers, usage=False), "usage": isopool.Pool(workers)}
    registry = None
    try:
        from prometheus_client import CollectorRegistry

        registry = CollectorRegistry()
        pools["observed"] = isopool.Pool(workers, name="observed")
        pools["observed"].metrics(registry)
    except ImportError:
        pass  # without prometheus_client the observed arm is "n/a"
    return pools, registry


def _rotations(names, rounds):
    """``rounds`` orders of ``names``, each rotated by one from the last."""
    for i in range(rounds):
        shift = i % len(names)
        yield names[shift:] + names[:shift]


def observe_cost(_peer, sizes):
    """Submit throughput and p50 round trip with usage and metrics off and on, paired.

    The three pools live in one process and take turns: throughput in bursts of
    ``observe_burst`` no-op tasks, ``observe_rounds`` rounds, each arm once a round in
    rotated order; latency likewise, ``observe_calls`` round trips an arm a round. A
    slow phase of the machine then hits every arm alike, and each arm's throughput
    and p50 are compared with the lean arm's in the same round (the change is the
    median of those per-round ratios), which is steadier than two medians taken
    minutes apart.
    """
    workers = worker_count()
    pools, registry = _observe_pools(workers)
    names = [name for name in OBSERVE_ARMS if name in pools]
    try:
        for pool in pools.values():
            wait_all([pool.submit(tasks.noop) for _ in range(50 * workers)])
        rates = {name: [] for name in names}
        for order in _rotations(names, sizes.observe_rounds):
            for name in order:
                pool = pools[name]
                start = time.perf_counter()
                wait_all([pool.submit(tasks.noop) for _ in range(sizes.observe_burst)])
                rates[name].append(sizes.observe_burst / (time.perf_counter() - start))
        times = {name: [] for name in names}  # one list of round trips per round
        for order in _rotations(names, sizes.observe_rounds):
            for name in order:
                pool = pools[name]
                pool.submit(tasks.noop).result(timeout=WAIT)  # its turn: warm it again
                trips = []
                for _ in range(sizes.observe_calls):
                    start = time.perf_counter()
                    pool.submit(tasks.noop).result(timeout=WAIT)
                    trips.append(time.perf_counter() - start)
                times[name].append(trips)
        scrape = None
        if registry is not None:
            from prometheus_client import generate_latest

            scrape = min(_time_once(lambda: generate_latest(registry)) for _ in range(20))
            if b"isopool_tasks_total" not in generate_latest(registry):
                raise AssertionError("the observed pool exported no isopool_tasks_total")
    finally:
        for pool in pools.values():
            pool.shutdown()
    values = {}
    p50s = {name: [percentile(trips, 0.5) for trips in times[name]] for name in names}
    for name in names:
        values[f"{name}_tasks_per_s"] = statistics.median(rates[name])
        every = [t for trips in times[name] for t in trips]
        values[f"{name}_p50_us"] = percentile(every, 0.5) * 1e6
        if name != "lean":
            paired = [r / base for r, base in zip(rates[name], rates["lean"], strict=True)]
            values[f"{name}_submit_change_pct"] = (statistics.median(paired) - 1) * 100
            paired = [p / base for p, base in zip(p50s[name], p50s["lean"], strict=True)]
            values[f"{name}_p50_change_pct"] = (statistics.median(paired) - 1) * 100
    if scrape is not None:
        values["scrape_ms"] = scrape * 1e3
    return values


def _time_once(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


# -- 5. CPU-bound scaling ------------------------------------------------------------------


def time_burn(loops, runs):
    """The fastest of ``runs`` timings of ``burn(loops)`` here: other load only adds."""
    best = float("inf")
    for _ in range(runs):
        start = time.perf_counter()
        tasks.burn(loops)
        best = min(best, time.perf_counter() - start)
    return best


def calibrate_burn(seconds):
    """The ``burn`` loop count that takes about ``seconds`` here, and its serial time."""
    loops = 100_000
    for _ in range(3):
        loops = max(1, round(loops * seconds / time_burn(loops, 3)))
    return loops, time_burn(loops, 5)


def cpu_scaling(peer, sizes):
    """N pure-Python CPU tasks on W workers: efficiency = N * serial / (W * wall)."""
    workers = worker_count()
    loops, serial = calibrate_burn(sizes.cpu_task_seconds)
    count = workers * sizes.cpu_tasks_per_worker
    with running(peer, workers):
        warm_up(peer, workers)
        start = time.perf_counter()
        wait_all([peer.submit(tasks.burn, loops) for _ in range(count)])
        wall = time.perf_counter() - start
    return {
        "efficiency": count * serial / (workers * wall),
        "wall_s": wall,
        "serial_task_ms": serial * 1e3,
    }


# -- 6. large payloads ------------------------------------------------------------------


def echo_ms(peer, value, round_trips):
    """Median milliseconds for ``value`` to go to a worker and come back.

    One untimed round trip first, so that the worker has imported numpy (a worker
    that did not inherit it imports it to unpickle the first array).
    """
    peer.submit(tasks.echo, value).result(timeout=WAIT)
    times = []
    for _ in range(round_trips):
        start = time.perf_counter()
        back = peer.submit(tasks.echo, value).result(timeout=WAIT)
        times.append(time.perf_counter() - start)
        if len(back) != len(value):
            raise AssertionError("the echoed payload came back with another size")
    return statistics.median(times) * 1e3


def payload(peer, sizes):
    """A 10 MB bytes object and a 10 MB numpy array, echoed by a worker."""
    workers = worker_count()
    data = os.urandom(sizes.payload_bytes)
    try:
        import numpy
    except ImportError:
        array = None
    else:
        array = numpy.frombuffer(os.urandom(sizes.payload_bytes), dtype=numpy.float64).copy()
    with running(peer, workers):
        warm_up(peer, workers)
        values = {"bytes_ms": echo_ms(peer, data, sizes.payload_round_trips)}
        if array is None:
            values["numpy_ms"] = "n/a (numpy not installed)"
        else:
            values["numpy_ms"] = echo_ms(peer, array, sizes.payload_round_trips)
    return values


# -- 7. a fresh process per task -----------------------------------------------------------


def fresh_process(peer, sizes):
    """max_tasks_per_child=1: every task in a new worker process."""
    workers = worker_count()
    with running(peer, workers, max_tasks_per_child=1):
        wait_all([peer.submit(tasks.getpid) for _ in range(workers)])
        start = time.perf_counter()
        pids = wait_all([peer.submit(tasks.getpid) for _ in range(sizes.fresh_tasks)])
        elapsed = time.perf_counter() - start
    return {"tasks_per_s": sizes.fresh_tasks / elapsed, "distinct_pids": len(set(pids))}


# -- 8. crash recovery ---------------------------------------------------------------------


def start_crash(peer, how, marker, delay):
    """Submit a task that dies in ``how`` way; return its future and a crash starter.

    The starter waits for the crash and returns its moment (time.monotonic): for
    "sigkill" it kills the task's worker from outside once ``delay`` has passed; for
    "segfault" and "exit" the task records the moment itself, just before dying.
    """
    submitted = time.monotonic()
    if how == "sigkill":
        future = peer.submit(tasks.mark_then_sleep, marker, 10 * WAIT)
    else:
        future = peer.submit(tasks.mark_then_crash, marker, how, delay)

    def crash():
        found = read_marker(marker, WAIT)
        if found is None:
            raise AssertionError("the crashing task never started")
        pid, when = found
        if how != "sigkill":
            return when
        time.sleep(max(0.0, submitted + delay - time.monotonic()))
        os.kill(pid, signal.SIGKILL)
        return time.monotonic()

    return future, crash


def crash_among_others(peer, how, sizes, marker):
    """One task dies while ``crash_others`` sleeping tasks are running or queued.

    The crashing task is submitted first and dies ``crash_delay`` s later: every
    peer runs tasks in submission order, so a crash submitted last would only come
    once nearly all the others had finished, and there would be nothing to lose.
    """
    workers = worker_count()
    with running(peer, workers, graceful=False):
        warm_up(peer, workers)
        crashing, crash = start_crash(peer, how, marker, sizes.crash_delay)
        others = [
            peer.submit(tasks.sleep_return, sizes.crash_sleep, i) for i in range(sizes.crash_others)
        ]
        crashed_at = crash()
        kind, error = outcome(crashing, max(0.0, crashed_at + sizes.crash_wait - time.monotonic()))
        error_at = time.monotonic()
        budget = sizes.crash_others * sizes.crash_sleep / workers + sizes.crash_wait
        deadline = time.monotonic() + budget
        results = [outcome(f, max(0.0, deadline - time.monotonic())) for f in others]
    if kind == "ok":
        raise AssertionError("the crashing task returned a result")
    return {
        "others_ok": sum(1 for k, _ in results if k == "ok"),
        "others_hung": sum(1 for k, _ in results if k == "hung"),
        "crash_error_ms": (error_at - crashed_at) * 1e3 if kind == "error" else "hung",
        "crash_error": error_word(error) if kind == "error" else "hung",
    }


def recovery_after_crash(peer, how, sizes, marker):
    """On a one-worker pool, from a crash until a task submitted right after returns.

    One worker, so that the new task needs the replacement of the dead one.
    """
    with running(peer, 1, graceful=False):
        warm_up(peer, 1)
        _crashing, crash = start_crash(peer, how, marker, sizes.crash_delay)
        crashed_at = crash()
        try:
            future = peer.submit(tasks.noop)
        except Exception as exc:
            return f"broken ({error_word(exc)})"
        kind, error = outcome(future, sizes.crash_wait)
        if kind == "ok":
            return (time.monotonic() - crashed_at) * 1e3
        return "hung" if kind == "hung" else f"broken ({error_word(error)})"


def crash(how):
    """The crash scenario for one way of dying: "sigkill", "segfault" or "exit"."""

    def scenario(peer, sizes):
        with tempfile.TemporaryDirectory(prefix="isopool-bench-") as tmp:
            values = crash_among_others(peer, how, sizes, os.path.join(tmp, "among"))
            # The same adapter again, on a new pool: start() after terminate() is allowed.
            values["recovery_ms"] = recovery_after_crash(
                peer, how, sizes, os.path.join(tmp, "recovery")
            )
        return values

    scenario.__name__ = f"crash_{how}"
    return scenario


# -- 9. per-task time-out ------------------------------------------------------------------


def task_timeout(peer, sizes):
    """A task that sleeps 60 s, with a per-task time-out: when does it end, and how?"""
    workers = worker_count()
    with (
        tempfile.TemporaryDirectory(prefix="isopool-bench-") as tmp,
        running(peer, workers, graceful=False),
    ):
        warm_up(peer, workers)
        marker = os.path.join(tmp, "marker")
        future = peer.submit_with_timeout(tasks.mark_then_sleep, sizes.task_timeout, marker, 60)
        found = read_marker(marker, WAIT)
        if found is None:
            raise AssertionError("the task never started")
        pid, started = found
        kind, error = outcome(future, 10 * sizes.task_timeout + 10)
        resolved = time.monotonic()
        gone_at_resolve = is_gone(pid)
        gone_after = wait_gone(pid, 10.0)
        start = time.perf_counter()
        next_kind, _ = outcome(peer.submit(tasks.noop), WAIT)
        next_ms = (time.perf_counter() - start) * 1e3
    late = (resolved - started - sizes.task_timeout) * 1e3 if kind != "hung" else "hung"
    return {
        "late_ms": late,
        "error": error_word(error) if kind == "error" else kind,
        "worker_gone_at_resolve": "yes" if gone_at_resolve else "no",
        "worker_gone_after_ms": "alive" if gone_after is None else gone_after * 1e3,
        "next_task_ms": next_ms if next_kind == "ok" else next_kind,
    }


# -- 9b. head-of-line blocking --------------------------------------------------------------


def head_of_line(peer, sizes):
    """One slow task submitted first, then many tiny ones, on 2 workers.

    No tiny task should wait behind the slow one while the other worker is idle, so
    the last tiny result should come after about the tiny tasks' time on one worker
    (measured first, on a one-worker pool of the same peer), long before the slow
    task ends, and the total should be within 10% of ``slow + tiny on one worker``.
    A tiny task that waited behind the slow one comes only once the slow one could
    have ended (``slow_s`` after the start): ``tiny_after_slow`` counts them.
    """
    count, slow_s = sizes.hol_tiny_tasks, sizes.hol_slow_seconds
    with running(peer, 1):
        warm_up(peer, 1)
        start = time.perf_counter()
        wait_all([peer.submit(tasks.noop) for _ in range(count)])
        one_worker = time.perf_counter() - start
    with running(peer, 2):
        warm_up(peer, 2)
        start = time.perf_counter()
        slow = peer.submit(tasks.sleep_return, slow_s)
        tiny = [peer.submit(tasks.noop) for _ in range(count)]
        finished = []
        for future in tiny:
            future.result(timeout=WAIT)
            finished.append(time.perf_counter() - start)
        slow.result(timeout=WAIT)
        total = time.perf_counter() - start
    bound = slow_s + one_worker
    return {
        "total_s": total,
        "over_bound": total / bound,
        "last_tiny_s": finished[-1],
        "tiny_after_slow": sum(1 for t in finished if t >= slow_s),
        "tiny_one_worker_s": one_worker,
    }


# -- 10. floors: what the operating system costs ------------------------------------------


def pipe_echo(conn):
    while True:
        message = conn.recv_bytes()
        if not message:
            return
        conn.send_bytes(message)


def floors(_peer, sizes):
    """A raw multiprocessing.Pipe round trip, and a raw fork() + waitpid()."""
    context = multiprocessing.get_context("fork")
    ours, theirs = context.Pipe()
    child = context.Process(target=pipe_echo, args=(theirs,), daemon=True)
    child.start()
    times = []
    try:
        for _ in range(sizes.floor_round_trips):
            start = time.perf_counter()
            ours.send_bytes(b"x")
            ours.recv_bytes()
            times.append(time.perf_counter() - start)
    finally:
        ours.send_bytes(b"")
        child.join(WAIT)
        if child.is_alive():
            child.kill()
    forks = []
    for _ in range(sizes.floor_forks):
        start = time.perf_counter()
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        os.waitpid(pid, 0)
        forks.append(time.perf_counter() - start)
    return {
        "pipe_round_trip_p50_us": percentile(times, 0.5) * 1e6,
        "fork_waitpid_ms": statistics.median(forks) * 1e3,
    }


# -- 11. memory ---------------------------------------------------------------------------


def smaps_kib(pid, *keys):
    total = 0
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            name, _, rest = line.partition(":")
            if name in keys:
                total += int(rest.split()[0])
    return total


def descendants(root):
    """Every live descendant pid of ``root``, from /proc."""
    children = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[0] != "Z":
                children.setdefault(int(fields[1]), []).append(int(entry))
    found, stack = set(), [root]
    while stack:
        for child in children.get(stack.pop(), []):
            found.add(child)
            stack.append(child)
    return found


def worker_pids(peer, workers):
    """The pids of the pool's workers: run sleeping tasks until each has shown up."""
    pids = set()
    for _ in range(10):
        if len(pids) >= workers:
            break
        pids.update(wait_all([peer.submit(tasks.sleep_getpid, 0.2) for _ in range(workers)]))
    return pids


def memory(peer, sizes):
    """Memory of an idle warm pool: per worker, and all its processes together (PSS)."""
    workers = worker_count()
    with running(peer, workers):
        warm_up(peer, workers)
        pids = worker_pids(peer, workers)
        everyone = descendants(os.getpid())
        per_worker = [smaps_kib(pid, "Pss") for pid in pids]
        uss = [smaps_kib(pid, "Private_Clean", "Private_Dirty") for pid in pids]
        total = sum(smaps_kib(pid, "Pss") for pid in everyone)
    return {
        "worker_pss_mib": statistics.mean(per_worker) / 1024,
        "worker_uss_mib": statistics.mean(uss) / 1024,
        "total_pss_mib": total / 1024,
        "processes": len(everyone),
        "workers_seen": len(pids),
    }


# -- the table of scenarios -----------------------------------------------------------------

SMALLER = ("smaller", "larger")


@dataclass(frozen=True)
class Metric:
    """One figure of a scenario, and how to print and compare it."""

    key: str
    label: str
    fmt: str = "{}"
    better: str | None = None  # "higher", "lower", or None: no ratio is printed
    words: tuple[str, str] = ("faster", "slower")  # "isopool is N x <good>" / "<bad>"


def higher(key, label, fmt="{:,.0f}", words=("faster", "slower")):
    return Metric(key, label, fmt, "higher", words)


def lower(key, label, fmt="{:,.1f}", words=("faster", "slower")):
    return Metric(key, label, fmt, "lower", words)


def shown(key, label, fmt="{}"):
    """A figure printed without a ratio: a count, a word, a setting."""
    return Metric(key, label, fmt)


@dataclass(frozen=True)
class Scenario:
    name: str
    title: str
    run: object  # run(peer, sizes) -> dict of figures
    metrics: tuple[Metric, ...]
    per_peer: bool = True  # False: measured once, with no peer (the floors)
    limits: tuple[float, float] = (30, 180)  # hard time limit in seconds: quick, full


def crash_scenario(how, title):
    return Scenario(
        f"crash-{how}",
        f"crash recovery, {title}: one task dies among 20 sleeping ones",
        crash(how),
        (
            shown("others_ok", "other tasks that completed (of 20; more is better)"),
            shown("others_hung", "other tasks still unsettled at the deadline (hung)"),
            lower("crash_error_ms", "ms from the crash until its future fails"),
            shown("crash_error", "the crashed task's error"),
            lower("recovery_ms", "ms from the crash until a new task returns (1 worker)"),
        ),
        limits=(30, 90),
    )


SCENARIOS = {
    s.name: s
    for s in (
        Scenario(
            "startup",
            "start-up: constructing the pool until the first trivial result",
            startup,
            (
                lower("first_result_ms", "ms to the first result"),
                lower("shutdown_ms", "ms for shutdown(wait=True) after it"),
            ),
            limits=(30, 60),
        ),
        Scenario(
            "submit",
            "submit throughput: no-op tasks via submit(), then wait for all",
            submit_throughput,
            (
                higher("tasks_per_s", "tasks/s"),
                lower("cpu_us_per_task", "CPU microseconds per task (all processes)", "{:,.0f}"),
            ),
        ),
        Scenario(
            "map",
            "map throughput: x*x over integers, chunksize 1, 100 and 1000",
            map_throughput,
            (
                higher("best_items_per_s", "items/s at the best chunksize"),
                shown("best_chunksize", "the best chunksize"),
                *(
                    higher(f"items_per_s_chunksize_{c}", f"items/s at chunksize={c}")
                    for c in MAP_CHUNKSIZES
                ),
            ),
            limits=(30, 300),
        ),
        Scenario(
            "latency",
            "round-trip latency: one trivial task at a time on a warm pool",
            latency,
            (
                lower("p50_us", "p50 microseconds", "{:,.0f}"),
                lower("p99_us", "p99 microseconds", "{:,.0f}"),
                lower("cpu_us_per_call", "CPU microseconds per call (all processes)", "{:,.0f}"),
            ),
            limits=(30, 120),
        ),
        Scenario(
            "observe-cost",
            "what observing costs: isopool with usage and metrics off, usage on, both on, paired",
            observe_cost,
            (
                shown("lean_tasks_per_s", "lean (usage=False, no metrics): tasks/s", "{:,.0f}"),
                shown("usage_tasks_per_s", "usage on: submit tasks/s", "{:,.0f}"),
                shown("observed_tasks_per_s", "usage and metrics on: submit tasks/s", "{:,.0f}"),
                shown("usage_submit_change_pct", "usage on: submit rate change, %", "{:+.1f}"),
                shown(
                    "observed_submit_change_pct",
                    "usage and metrics on: submit throughput change, %",
                    "{:+.1f}",
                ),
                shown("lean_p50_us", "lean: p50 round trip, us", "{:,.0f}"),
                shown("usage_p50_us", "usage on: p50 round trip, us", "{:,.0f}"),
                shown("observed_p50_us", "usage and metrics on: p50 round trip, us", "{:,.0f}"),
                shown("usage_p50_change_pct", "usage on: p50 change, %", "{:+.1f}"),
                shown("observed_p50_change_pct", "usage and metrics on: p50 change, %", "{:+.1f}"),
                shown("scrape_ms", "one scrape of the observed pool's registry, ms", "{:.2f}"),
            ),
            per_peer=False,
            limits=(60, 240),
        ),
        Scenario(
            "cpu",
            "CPU-bound scaling: ~50 ms pure-Python tasks on cpu_count workers",
            cpu_scaling,
            (
                higher(
                    "efficiency",
                    "efficiency = N*serial / (W*wall); 1.0 is perfect",
                    "{:.3f}",
                    ("higher", "lower"),
                ),
                shown("wall_s", "wall seconds for all N tasks", "{:.3f}"),
                shown(
                    "serial_task_ms", "one task alone in the parent, ms (fastest of 5)", "{:.1f}"
                ),
            ),
            limits=(30, 120),
        ),
        Scenario(
            "payload",
            "10 MB round trip: a 10 MB argument echoed back by a worker",
            payload,
            (
                lower("bytes_ms", "ms per round trip, bytes"),
                lower("numpy_ms", "ms per round trip, numpy float64 array"),
            ),
            limits=(30, 120),
        ),
        Scenario(
            "fresh",
            "a fresh process per task: max_tasks_per_child=1",
            fresh_process,
            (
                higher("tasks_per_s", "tasks/s", "{:,.1f}"),
                shown("distinct_pids", "distinct worker pids seen (one per task is right)"),
            ),
        ),
        crash_scenario("sigkill", "SIGKILL of the worker from outside"),
        crash_scenario("segfault", "segfault (ctypes.string_at(0))"),
        crash_scenario("exit", "os._exit(1)"),
        Scenario(
            "timeout",
            "per-task time-out: a 60 s sleep with a 0.5 s time-out",
            task_timeout,
            (
                lower("late_ms", "ms after the deadline until the future fails"),
                shown("error", "the error"),
                shown("worker_gone_at_resolve", "worker process gone when the future fails"),
                shown("worker_gone_after_ms", "ms after that until it is gone", "{:,.1f}"),
                lower("next_task_ms", "ms for the next task on the same pool"),
            ),
            limits=(30, 60),
        ),
        Scenario(
            "head-of-line",
            "head-of-line: one 1 s task, then 2,000 tiny ones, on 2 workers",
            head_of_line,
            (
                lower("total_s", "wall seconds for all of them", "{:.3f}"),
                lower(
                    "over_bound",
                    "total / (1 s + the tiny tasks on one worker); <= 1.10 is the target",
                    "{:.3f}",
                ),
                lower("last_tiny_s", "s until the last tiny result", "{:.3f}"),
                shown("tiny_after_slow", "tiny results only after the slow one's 1 s (0 is right)"),
                shown("tiny_one_worker_s", "s for the tiny tasks on a 1-worker pool", "{:.3f}"),
            ),
            limits=(30, 120),
        ),
        Scenario(
            "memory",
            "memory of an idle pool of cpu_count workers (PSS: shared pages split)",
            memory,
            (
                lower("worker_pss_mib", "MiB PSS per worker", words=SMALLER),
                lower("worker_uss_mib", "MiB private (USS) per worker", words=SMALLER),
                lower("total_pss_mib", "MiB PSS of all the pool's processes", words=SMALLER),
                shown("processes", "processes (workers and helpers)"),
            ),
            limits=(30, 60),
        ),
        Scenario(
            "floors",
            "floors: what the OS costs, with no pool at all",
            floors,
            (
                shown(
                    "pipe_round_trip_p50_us", "multiprocessing.Pipe round trip, p50 us", "{:.1f}"
                ),
                shown("fork_waitpid_ms", "os.fork() + waitpid() of a trivial child, ms", "{:.3f}"),
            ),
            per_peer=False,
            limits=(30, 60),
        ),
    )
}

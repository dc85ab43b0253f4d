"""The command line: ``isopool demo``, ``worker``, ``node``, ``dead-letters``, ``schedules``.

``worker`` serves a Redis queue (and declares its ``--cron`` schedules); ``schedules``
lists them. ``status`` and ``dashboard`` are parsed here and run in ``_status``. These
two are the only modules that print.
"""

from __future__ import annotations

import argparse
import ctypes
import logging
import os
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import CancelledError, as_completed
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from ._errors import RestartLimitError, TaskCrashError, TaskTimeoutError
from ._pool import Pool
from ._task import Task

if TYPE_CHECKING:
    from prometheus_client.registry import CollectorRegistry

    from ._dist.queue_worker import QueueWorker

__all__ = ["main"]


# -- demo tasks (module-level, so workers import them by name) ------------------


def count_primes(limit: int) -> int:
    """Count the primes below ``limit`` the slow way: honest CPU work."""
    sieve = bytearray([1]) * limit
    sieve[:2] = b"\x00\x00"
    for n in range(2, int(limit**0.5) + 1):
        if sieve[n]:
            sieve[n * n :: n] = bytes(len(range(n * n, limit, n)))
    return sum(sieve)


def segfault() -> None:
    """Dereference NULL: the worker dies with SIGSEGV."""
    ctypes.string_at(0)


def hang_forever() -> None:
    """Sleep for an hour (until the time-out stops it)."""
    time.sleep(3600)


def flaky(counter: str, failures: int) -> str:
    """Fail the first ``failures`` runs (counted in a file), then succeed."""
    path = Path(counter)
    runs = int(path.read_text() or 0) + 1 if path.exists() else 1
    path.write_text(str(runs))
    if runs <= failures:
        raise ConnectionError(f"flaky service unavailable (run {runs})")
    return f"succeeded on run {runs}"


# -- the demo -------------------------------------------------------------------


class _Painter:
    def __init__(self, stream: TextIO) -> None:
        self.color = (
            hasattr(stream, "isatty") and stream.isatty() and not os.environ.get("NO_COLOR")
        )

    def __call__(self, text: str, code: str) -> str:
        return f"\033[{code}m{text}\033[0m" if self.color else text


def demo(workers: int = 2) -> int:
    """Run a short, visual demo of isolation, time-outs, restarts and results."""
    paint = _Painter(sys.stdout)
    print(paint("isopool demo", "1") + f": {workers} worker processes, each task isolated\n")
    _show_supervisor_log(paint)
    start = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp, Pool(workers, name="demo") as pool:
        tasks: dict[Task[Any], str] = {}
        for limit in (2_000_000, 4_000_000, 8_000_000):
            tasks[pool.submit(count_primes, limit)] = f"count_primes({limit:,})"
        tasks[pool.submit(segfault)] = "segfault()  (dereferences NULL)"
        tasks[pool.options(timeout=1.0).submit(hang_forever)] = "hang_forever()  (timeout=1 s)"
        retry = pool.options(restart="transient", max_restarts=3)
        tasks[retry.submit(flaky, os.path.join(tmp, "runs"), 2)] = (
            "flaky()  (fails twice, restart='transient')"
        )
        for limit in (3_000_000, 6_000_000):
            tasks[pool.submit(count_primes, limit)] = f"count_primes({limit:,})"
        for done in as_completed(tasks):
            task = next(t for t in tasks if t is done)
            print(_describe(task, tasks[task], time.monotonic() - start, paint))
        stats = pool.stats()
    print(
        f"\n{stats['completed']} completed, {stats['crashed']} crashed, "
        f"{stats['timed_out']} timed out, {stats['restarted']} restarts, "
        f"{stats['workers_replaced']} workers replaced; the pool never broke "
        f"({time.monotonic() - start:.1f} s)"
    )
    return 0


def _show_supervisor_log(paint: _Painter) -> None:
    """Print isopool's WARNING log lines (crashes, time-outs, restarts), dimmed."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter(paint("        supervisor: %(message)s", "2")))
    logger = logging.getLogger("isopool")
    logger.addHandler(handler)
    logger.setLevel(logging.WARNING)


def _describe(task: Task[Any], label: str, elapsed: float, paint: _Painter) -> str:
    where = f"pid {task.pid}, attempt {task.attempts}"
    stamp = f"{elapsed:5.2f}s"
    try:
        value = task.result(timeout=0)
    except TaskCrashError as exc:
        return f"{stamp}  {paint('CRASHED', '31')}   {label}: worker {exc.pid} {_reason(exc)}"
    except TaskTimeoutError as exc:
        return f"{stamp}  {paint('TIMED OUT', '33')} {label}: worker {exc.pid} stopped"
    except RestartLimitError as exc:
        return f"{stamp}  {paint('GAVE UP', '31')}   {label}: {exc}"
    except CancelledError:
        return f"{stamp}  {paint('CANCELLED', '33')} {label}"
    except Exception as exc:
        return f"{stamp}  {paint('FAILED', '31')}    {label}: {type(exc).__name__}: {exc}"
    return f"{stamp}  {paint('OK', '32')}        {label} = {value!r}  ({where})"


def _reason(exc: TaskCrashError) -> str:
    if exc.signal:
        return f"killed by {exc.signal}"
    return f"exited with code {exc.exitcode}"


# -- entry point ------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="isopool", description="Every task in its own process, supervised."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    demo_cmd = commands.add_parser("demo", help="show isolation, time-outs and restarts")
    demo_cmd.add_argument("--workers", type=int, default=2, help="worker processes (2)")
    worker = commands.add_parser("worker", help="run jobs from a Redis queue")
    worker.add_argument(
        "--redis",
        required=True,
        help="Redis URL (redis://, rediss://; redis+cluster:// for a Redis Cluster)",
    )
    worker.add_argument("--queue", required=True, help="the queue's name")
    worker.add_argument(
        "--cron",
        metavar="'CRON=module:function'",
        action="append",
        default=[],
        help="declare a periodic job, e.g. '*/5 * * * *=myapp.tasks:cleanup' (a "
        "'CRON_TZ=Europe/Paris ' prefix sets its zone); repeat for several",
    )
    worker.add_argument(
        "--key-id", default=None, help="the key id of this worker's secret (default: 'default')"
    )
    _add_common(worker)
    node = commands.add_parser("node", help="serve named supervisors to other machines")
    node.add_argument("--name", required=True, help="this node's name, unique among live nodes")
    node.add_argument(
        "--redis",
        required=True,
        help="Redis URL (redis://, rediss://; redis+cluster:// for a Redis Cluster)",
    )
    node.add_argument(
        "--supervisor",
        action="append",
        required=True,
        help="Name[:restart=transient,...] to serve; repeat for several",
    )
    _add_common(node)
    dead = commands.add_parser("dead-letters", help="list, or re-queue, dead-lettered jobs")
    dead.add_argument("--redis", required=True, help="Redis URL")
    dead.add_argument("--queue", required=True, help="the queue's name")
    dead.add_argument("--secret-file", default=None, help="file holding the signing secret")
    dead.add_argument(
        "--requeue",
        metavar="JOB_ID",
        action="append",
        default=[],
        help="put this job back in its queue; repeat for several",
    )
    schedules = commands.add_parser("schedules", help="list a queue's periodic jobs")
    schedules.add_argument("--redis", required=True, help="Redis URL")
    schedules.add_argument("--queue", required=True, help="the queue's name")
    schedules.add_argument("--secret-file", default=None, help="file holding the signing secret")
    _add_inspect_commands(commands)
    return parser


def _add_inspect_commands(commands: Any) -> None:  # noqa: ANN401 - argparse's subparsers
    status = commands.add_parser("status", help="show queues, workers and nodes")
    status.add_argument("--redis", required=True, help="Redis URL")
    status.add_argument("--queue", default=None, help="only this queue (default: all)")
    status.add_argument("--json", action="store_true", help="print JSON for scripts")
    board = commands.add_parser("dashboard", help="serve a live web page of queues and nodes")
    board.add_argument("--redis", required=True, help="Redis URL")
    board.add_argument("--host", default="127.0.0.1", help="address to bind (127.0.0.1)")
    board.add_argument("--port", type=int, default=8731, help="port (8731)")
    board.add_argument(
        "--token",
        default=None,
        help="enable actions (requeue, delete, cancel) for who types this token; prefer "
        "the ISOPOOL_DASHBOARD_TOKEN environment variable (a command line is visible in ps)",
    )
    board.add_argument(
        "--allow-host",
        action="append",
        default=[],
        help="a host name the page is reached by (behind a proxy); repeat for several",
    )


def _add_common(cmd: argparse.ArgumentParser) -> None:
    cmd.add_argument("--workers", type=int, default=None, help="worker processes (CPU count)")
    cmd.add_argument(
        "--secret-file", default=None, help="file holding the signing secret (or ISOPOOL_SECRET)"
    )
    cmd.add_argument("--lease", type=float, default=30.0, help="job lease in seconds (30)")
    cmd.add_argument(
        "--drain", type=float, default=30.0, help="seconds to finish running jobs on stop (30)"
    )
    cmd.add_argument("--log-level", default="INFO", help="logging level (INFO)")
    cmd.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        help="serve Prometheus metrics on this port at /metrics (needs isopool[metrics])",
    )
    cmd.add_argument(
        "--metrics-host", default="127.0.0.1", help="address for --metrics-port (127.0.0.1)"
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``isopool`` command line; return its exit code."""
    args = _parser().parse_args(argv)
    if args.command == "demo":
        if args.workers < 1:
            print(
                f"isopool demo: --workers must be at least 1, got {args.workers}", file=sys.stderr
            )
            return 2
        return demo(args.workers)
    if args.command == "worker":
        return _serve(args)
    if args.command == "node":
        return _node(args)
    if args.command == "dead-letters":
        return _dead_letters(args)
    if args.command == "schedules":
        return _schedules(args)
    if args.command in ("status", "dashboard"):
        return _inspect_command(args)
    return 2  # pragma: no cover - argparse rejects unknown commands


def _serve(args: argparse.Namespace) -> int:
    """``isopool worker``: serve a Redis queue until SIGTERM or Ctrl-C."""
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    from ._dist.queue_worker import QueueWorker
    from ._dist.redis_queue import RedisQueue
    from ._errors import QueueUnavailableError, SignatureError

    try:
        crons = [_parse_cron_option(text) for text in args.cron]
        functions = [function for _cron, function in crons]
        if len(set(functions)) != len(functions):
            raise ValueError(
                "--cron names one function twice; a schedule is named by its function, "
                "so give it one cron expression (or use queue.schedule(..., name=...))"
            )
        registry = _start_metrics(args)
        queue = RedisQueue(
            args.redis,
            args.queue,
            secret_file=args.secret_file,
            key_id=args.key_id,
            lease=args.lease,
        )
        for cron, function in crons:
            queue.schedule(cron, function)
        worker = QueueWorker(queue, workers=args.workers, drain=args.drain)
    except (ValueError, ImportError, OSError, QueueUnavailableError, SignatureError) as exc:
        print(f"isopool worker: {exc}", file=sys.stderr)
        return 2
    _export_metrics(registry, [worker])
    _on_stop_signals(worker.stop)
    try:
        worker.run()
    except QueueUnavailableError as exc:
        print(f"isopool worker: {exc}", file=sys.stderr)
        return 3
    return 0


def _parse_cron_option(text: str) -> tuple[str, str]:
    """``'*/5 * * * *=pkg.mod:fn'`` -> (cron, function); the last '=' splits them."""
    cron, sep, function = text.rpartition("=")
    if not sep or not cron.strip() or ":" not in function:
        raise ValueError(f"--cron wants 'CRON=module:function', got {text!r}")
    return cron.strip(), function.strip()


def _schedules(args: argparse.Namespace) -> int:
    """``isopool schedules``: list a queue's periodic jobs with their next run."""
    from ._dist.redis_queue import RedisQueue
    from ._errors import QueueUnavailableError

    try:
        queue = RedisQueue(args.redis, args.queue, secret_file=args.secret_file)
        found = queue.schedules()
    except (ValueError, QueueUnavailableError) as exc:
        print(f"isopool schedules: {exc}", file=sys.stderr)
        return 2
    if not found:
        print(f"queue {args.queue!r} has no schedules")
    now = time.time()
    for item in found:
        when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(item.next_run))
        last = (
            "never"
            if item.last_run is None
            else time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(item.last_run))
        )
        late = " (due: the next worker fires it)" if item.next_run <= now else ""
        print(
            f"{item.name}  [{item.cron}  {item.zone}]  {item.function}  "
            f"next {when}{late}  last {last}"
        )
    return 0


def _inspect_command(args: argparse.Namespace) -> int:
    """``isopool status`` and ``isopool dashboard`` (in ``_status``)."""
    try:
        import redis
    except ImportError:
        print(
            f"isopool {args.command} needs redis-py: pip install 'isopool[dashboard]'",
            file=sys.stderr,
        )
        return 2
    from . import _status

    try:
        if args.command == "status":
            return _status.run_status(args.redis, args.queue, args.json, sys.stdout)
        return _status.run_dashboard(args.redis, args.host, args.port, args.token, args.allow_host)
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        print(f"isopool {args.command}: cannot reach Redis: {exc}", file=sys.stderr)
        return 2


def _node(args: argparse.Namespace) -> int:
    """``isopool node``: serve supervisors by name until SIGTERM or Ctrl-C."""
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    from ._dist.node import Node, SupervisorSpec
    from ._errors import QueueUnavailableError

    try:
        specs = [SupervisorSpec.parse(text) for text in args.supervisor]
        registry = _start_metrics(args)
        node = Node(
            args.name,
            args.redis,
            specs,
            workers=args.workers,
            secret_file=args.secret_file,
            lease=args.lease,
            drain=args.drain,
        )
    except (ValueError, TypeError, ImportError, OSError, QueueUnavailableError) as exc:
        print(f"isopool node: {exc}", file=sys.stderr)
        return 2
    _export_metrics(registry, node.queue_workers)
    _on_stop_signals(node.stop)
    node.run()
    return 0


def _start_metrics(args: argparse.Namespace) -> CollectorRegistry | None:
    """``--metrics-port``: serve /metrics now (empty), before any worker starts.

    Raises:
        ImportError: prometheus_client is missing (with the extra to install).
        OSError: the port cannot be bound.
    """
    if args.metrics_port is None:
        return None
    try:
        from ._prometheus import serve
    except ImportError as exc:
        raise ImportError(
            f"--metrics-port needs prometheus_client: pip install 'isopool[metrics]' ({exc})"
        ) from exc
    try:
        return serve(args.metrics_port, args.metrics_host)
    except OSError as exc:
        raise OSError(
            f"--metrics-port: cannot serve on {args.metrics_host}:{args.metrics_port}: {exc}"
        ) from exc


def _export_metrics(registry: CollectorRegistry | None, workers: list[QueueWorker]) -> None:
    if registry is not None:
        from ._prometheus import export_workers

        export_workers(registry, workers)


def _dead_letters(args: argparse.Namespace) -> int:
    """``isopool dead-letters``: show the dead-letter stream, or re-queue jobs."""
    from ._dist.redis_queue import RedisQueue
    from ._errors import QueueUnavailableError

    try:
        queue = RedisQueue(args.redis, args.queue, secret_file=args.secret_file)
        for job_id in args.requeue:
            done = queue.requeue(job_id)
            print(f"{job_id}: {'re-queued' if done else 'not dead, failed or cancelled'}")
        if not args.requeue:
            for letter in queue.dead_letters():
                when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(letter.at))
                print(f"{letter.job_id}  {when}  {letter.reason}")
    except (ValueError, QueueUnavailableError) as exc:
        print(f"isopool dead-letters: {exc}", file=sys.stderr)
        return 2
    return 0


def _on_stop_signals(stop: Callable[[], None]) -> None:
    """SIGTERM and the first Ctrl-C stop gracefully; a second Ctrl-C exits at once."""

    def handler(signum: int, _frame: object) -> None:
        if signum == signal.SIGINT and getattr(handler, "seen", False):
            raise KeyboardInterrupt
        handler.seen = True  # type: ignore[attr-defined]  # a flag on the function
        stop()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)

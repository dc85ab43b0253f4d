"""One small adapter interface over every process pool the benchmarks compare.

Each peer wraps one library behind the same five calls, so a scenario is written
once and runs against all of them:

    load()                                import the library (before any clock starts)
    start(workers, max_tasks_per_child=None)
    submit(fn, *args)                     -> a future: result(timeout), done()
    map(fn, items, chunksize)             -> list of results, in order
    submit_with_timeout(fn, timeout, *a)  -> a future, or Unsupported
    shutdown()  /  terminate()            -> wait for the work  /  stop now

A peer that cannot do what a scenario asks raises ``Unsupported`` with the reason,
and the scenario is reported as "n/a". Libraries are imported in ``start`` only, so
a scenario pays for the imports of the peer it measures and no other, and a peer
whose library is missing is skipped (``missing()`` says why).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import multiprocessing
from abc import ABC, abstractmethod

# loky stops a worker that stays idle this long (its default is 10 s); longer than any
# scenario, so no worker retires mid-measurement.
LOKY_IDLE_TIMEOUT = 600


class Unsupported(Exception):
    """The peer has no way to do what the scenario asks (reported as "n/a")."""


class Peer(ABC):
    """A process pool under test: ``start``, use, then ``shutdown`` or ``terminate``.

    After a stop, ``start`` may be called again for a new pool.
    """

    name: str  # the name used on the command line and in the tables
    distribution: str  # the package that provides it, for the header and missing()
    start_method: str  # how it makes worker processes

    def __init__(self):
        self.pool = None

    @classmethod
    def missing(cls):
        """Why the peer cannot run here (its library is not installed), or None."""
        module = cls.distribution.lower()
        if importlib.util.find_spec(module) is None:
            return f"{cls.distribution} is not installed (pip install {cls.distribution})"
        return None

    @classmethod
    def version(cls):
        try:
            return importlib.metadata.version(cls.distribution)
        except importlib.metadata.PackageNotFoundError:
            return "stdlib" if cls.distribution == "multiprocessing" else "not installed"

    modules: tuple[str, ...] = ()  # what ``load`` imports

    def load(self):
        """Import the peer's library, so that no scenario's clock counts the import."""
        for module in self.modules:
            importlib.import_module(module)

    @abstractmethod
    def start(self, workers, max_tasks_per_child=None): ...

    @abstractmethod
    def submit(self, fn, *args): ...

    @abstractmethod
    def map(self, fn, items, chunksize): ...

    def submit_with_timeout(self, fn, timeout, *args):
        raise Unsupported(f"{self.name} has no per-task time-out")

    @abstractmethod
    def shutdown(self): ...

    @abstractmethod
    def terminate(self): ...


class _ExecutorPeer(Peer):
    """A ``concurrent.futures.Executor``: submit and map are the Executor's own."""

    def submit(self, fn, *args):
        return self.pool.submit(fn, *args)

    def map(self, fn, items, chunksize):
        return list(self.pool.map(fn, items, chunksize=chunksize))

    def shutdown(self):
        self.pool.shutdown(wait=True)


class IsopoolPeer(_ExecutorPeer):
    name = "isopool"
    distribution = "isopool"
    modules = ("isopool",)
    start_method = "fork server (a fork of the caller if it runs one thread), then fork per worker"

    def start(self, workers, max_tasks_per_child=None):
        import isopool

        self.pool = isopool.Pool(workers, max_tasks_per_child=max_tasks_per_child)

    def submit_with_timeout(self, fn, timeout, *args):
        return self.pool.options(timeout=timeout).submit(fn, *args)

    def terminate(self):
        self.pool.terminate()


class IsopoolLeanPeer(IsopoolPeer):
    """isopool with nothing measured: ``Pool(usage=False)``, no metrics (``--overhead``)."""

    name = "isopool-lean"
    start_method = "as isopool; Pool(usage=False), no metrics"

    def start(self, workers, max_tasks_per_child=None):
        import isopool

        self.pool = isopool.Pool(workers, max_tasks_per_child=max_tasks_per_child, usage=False)


class IsopoolObservedPeer(IsopoolPeer):
    """isopool with usage and Prometheus metrics on, scraped every 0.5 s (``--overhead``).

    Prometheus scrapes every 15 s or so; a scrape every half second, from a thread of
    the measuring process, makes this an upper bound on what metrics cost.
    """

    name = "isopool-observed"
    distribution = "isopool"
    start_method = "as isopool; usage on, pool.metrics(), a scrape every 0.5 s"
    SCRAPE_EVERY = 0.5

    @classmethod
    def missing(cls):
        if importlib.util.find_spec("prometheus_client") is None:
            return "prometheus_client is not installed (pip install 'isopool[metrics]')"
        return None

    def start(self, workers, max_tasks_per_child=None):
        import threading

        from prometheus_client import CollectorRegistry, generate_latest

        import isopool

        self.pool = isopool.Pool(workers, max_tasks_per_child=max_tasks_per_child)
        registry = CollectorRegistry()
        self.pool.metrics(registry)
        self._stop = threading.Event()

        def scrape():
            while not self._stop.wait(self.SCRAPE_EVERY):
                generate_latest(registry)

        self._scraper = threading.Thread(target=scrape, name="bench-scraper", daemon=True)
        self._scraper.start()

    def _stop_scraping(self):
        self._stop.set()
        self._scraper.join(5)

    def shutdown(self):
        self._stop_scraping()
        super().shutdown()

    def terminate(self):
        self._stop_scraping()
        super().terminate()


class _StdlibExecutorPeer(_ExecutorPeer):
    """concurrent.futures.ProcessPoolExecutor with one multiprocessing start method."""

    distribution = "multiprocessing"
    modules = ("concurrent.futures.process",)

    @classmethod
    def missing(cls):
        return None

    def start(self, workers, max_tasks_per_child=None):
        from concurrent.futures import ProcessPoolExecutor

        if max_tasks_per_child is not None and self.start_method == "fork":
            raise Unsupported("ProcessPoolExecutor refuses max_tasks_per_child with fork")
        context = multiprocessing.get_context(self.start_method)
        self.pool = ProcessPoolExecutor(
            workers, mp_context=context, max_tasks_per_child=max_tasks_per_child
        )

    def terminate(self):
        # Python 3.11 has no way to stop running workers; run.py kills what is left.
        self.pool.shutdown(wait=False, cancel_futures=True)


class PPEForkPeer(_StdlibExecutorPeer):
    name = "ppe-fork"
    start_method = "fork"


class PPEForkserverPeer(_StdlibExecutorPeer):
    name = "ppe-forkserver"
    start_method = "forkserver"


class LokyPeer(_ExecutorPeer):
    name = "loky"
    distribution = "loky"
    modules = ("loky",)
    start_method = "loky (a fresh interpreter per worker)"

    def start(self, workers, max_tasks_per_child=None):
        import loky

        if max_tasks_per_child is not None:
            raise Unsupported("loky has no max_tasks_per_child")
        self.pool = loky.get_reusable_executor(max_workers=workers, timeout=LOKY_IDLE_TIMEOUT)

    def terminate(self):
        self.pool.shutdown(wait=False, kill_workers=True)


class _AsyncResultFuture:
    """multiprocessing's AsyncResult with the Future calls the scenarios use."""

    __slots__ = ("_result",)

    def __init__(self, result):
        self._result = result

    def result(self, timeout=None):
        try:
            return self._result.get(timeout)
        except multiprocessing.TimeoutError:
            raise TimeoutError(f"no result within {timeout} s") from None

    def done(self):
        return self._result.ready()


class MpPoolPeer(Peer):
    name = "mp-pool"
    distribution = "multiprocessing"
    modules = ("multiprocessing.pool",)
    start_method = "fork"

    @classmethod
    def missing(cls):
        return None

    def start(self, workers, max_tasks_per_child=None):
        context = multiprocessing.get_context("fork")
        self.pool = context.Pool(workers, maxtasksperchild=max_tasks_per_child)

    def submit(self, fn, *args):
        return _AsyncResultFuture(self.pool.apply_async(fn, args))

    def map(self, fn, items, chunksize):
        return self.pool.map(fn, items, chunksize)

    def shutdown(self):
        self.pool.close()
        self.pool.join()

    def terminate(self):
        self.pool.terminate()
        self.pool.join()


class PebblePeer(Peer):
    name = "pebble"
    distribution = "pebble"
    modules = ("pebble",)
    start_method = "fork"

    def start(self, workers, max_tasks_per_child=None):
        import pebble

        self.pool = pebble.ProcessPool(
            workers,
            max_tasks=max_tasks_per_child or 0,
            context=multiprocessing.get_context("fork"),
        )

    def submit(self, fn, *args):
        return self.pool.schedule(fn, args=args)

    def submit_with_timeout(self, fn, timeout, *args):
        return self.pool.schedule(fn, args=args, timeout=timeout)

    def map(self, fn, items, chunksize):
        return list(self.pool.map(fn, items, chunksize=chunksize).result())

    def shutdown(self):
        self.pool.close()
        self.pool.join()

    def terminate(self):
        self.pool.stop()
        self.pool.join()


# isopool first: every ratio is isopool against the peer in that row.
PEERS = {
    peer.name: peer
    for peer in (IsopoolPeer, PPEForkPeer, PPEForkserverPeer, MpPoolPeer, LokyPeer, PebblePeer)
}

# isopool with its measurements off and on, for ``run.py --overhead`` only (not in a
# default run): what usage and metrics cost on the submit and latency rows.
OVERHEAD_PEERS = {peer.name: peer for peer in (IsopoolLeanPeer, IsopoolPeer, IsopoolObservedPeer)}
ALL_PEERS = {**PEERS, **OVERHEAD_PEERS}

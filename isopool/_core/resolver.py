"""The resolver: one thread per pool that runs done-callbacks and crash logs.

Why it exists: the monitor thread enforces every time-out and reads every pipe, so it
must never run user code. A done-callback is user code, and so is a logging handler
the user installed; a slow or hostile one (it sleeps, it raises ``KeyboardInterrupt``)
would otherwise delay every other task's time-out and crash report. The monitor hands
such work here with ``defer``; a failure of one job is logged and the next one runs.

The thread starts on first use and stops after ``close``; ``join`` waits until every
job handed over before ``close`` has run (``Pool.shutdown(wait=True)`` uses it, so
callbacks have run when shutdown returns, as with the stdlib).
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable

__all__ = ["Resolver"]

log = logging.getLogger(__name__)

_STOP = object()


class Resolver:
    """Runs callables, in order, on one daemon thread named ``isopool-resolver[NAME]``."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._jobs: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._closed = False

    def defer(self, job: Callable[[], object]) -> None:
        """Run ``job()`` on the resolver thread (at once inline if already closed)."""
        with self._lock:
            if self._closed:
                run_inline = True
            else:
                run_inline = False
                if self._thread is None:
                    self._thread = threading.Thread(
                        target=self._run, name=f"isopool-resolver[{self.name}]", daemon=True
                    )
                    self._thread.start()
                self._jobs.put(job)
        if run_inline:
            _run_one(job)

    def close(self) -> None:
        """Take no more jobs: those handed over still run, then the thread ends."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._thread is not None:
                self._jobs.put(_STOP)

    def join(self, timeout: float | None = None) -> None:
        """Wait until the thread has run every job (never from the thread itself)."""
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def is_current(self) -> bool:
        """Whether the calling thread is this resolver's thread."""
        return self._thread is threading.current_thread()

    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            if job is _STOP:
                return
            _run_one(job)  # type: ignore[arg-type]  # only callables and _STOP are queued
            del job  # keep no reference to the last task while waiting for the next


def _run_one(job: Callable[[], object]) -> None:
    try:
        job()
    except BaseException:  # a job is user code: it must not end the thread
        log.exception("isopool: a deferred callback failed")

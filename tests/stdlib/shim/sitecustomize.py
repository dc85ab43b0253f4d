"""Make ``isopool.Pool`` the ``ProcessPoolExecutor`` of interpreters the stdlib tests start.

Some stdlib tests (``test_interpreter_shutdown``, ``test_submit_after_interpreter_shutdown``)
start a fresh Python with ``from concurrent.futures import <executor_type.__name__>``.
``tests/stdlib/run.py`` puts this folder on their ``PYTHONPATH``, so they test isopool
too; both names they may use are bound.
"""

import concurrent.futures

import isopool

concurrent.futures.ProcessPoolExecutor = isopool.Pool  # type: ignore[misc]
setattr(concurrent.futures, isopool.Pool.__name__, isopool.Pool)

"""Dispatch: which worker a call is written to, seen from the monitor's own records.

White-box on purpose: how many calls sit on each worker is the monitor's business,
and no public figure shows it without timing, which tests must not assert.
"""

from __future__ import annotations

import time

import isopool
from isopool import _monitor
from tests import _tasks
from tests.conftest import wait_for


def test_dispatch_slow_call_on_one_worker_leaves_the_other_pipelined(tmp_path):
    """Behind a long call on one worker, the other still gets many calls at once."""
    ready, gate = tmp_path / "ready", tmp_path / "gate"
    with isopool.Pool(2) as pool:
        monitor = pool._monitor
        # Recent calls must be tiny for calls to be pipelined at all (a loaded machine
        # can make them look slow for a while).
        assert wait_for(
            lambda: (
                [f.result(timeout=60) for f in [pool.submit(abs, -1) for _ in range(32)]]
                and monitor._ema is not None
                and monitor._ema < _monitor._FAST_TASK
            ),
            timeout=30,
        )
        slow = pool.submit(_tasks.ready_then_wait_for_gate, str(ready), str(gate))
        try:
            assert wait_for(ready.exists, timeout=30)
            busy = next(w for w in monitor._workers if slow in w.tasks)
            other = next(w for w in monitor._workers if w is not busy)
            assert wait_for(
                lambda: _monitor._running_long(busy, time.monotonic(), monitor._ema), timeout=30
            )
            peak = 0
            tiny = []
            for _ in range(200):
                tiny.append(pool.submit(abs, -1))
                peak = max(peak, len(other.tasks))
            assert [t.result(timeout=60) for t in tiny] == [1] * 200
            assert peak > 1, "the free worker got one call at a time"
        finally:
            gate.touch()
        assert slow.result(timeout=60) is True

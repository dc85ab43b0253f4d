"""Restart policies and OTP's restart intensity, as pure logic with the clock as a parameter.

OTP's rule: a supervisor (here: a task, or a TaskSupervisor across its children)
may restart at most ``max_restarts`` times within any window of ``max_seconds``; one
restart more and it gives up. This module decides; it never sleeps, starts or stops
anything, so it is tested with a fake clock.
"""

from __future__ import annotations

import collections
import random
from typing import Final, Literal

from .._spec import Restart

__all__ = ["MAX_BACKOFF", "Exit", "RestartIntensity", "backoff_delay", "should_restart"]

MAX_BACKOFF: Final = 60.0  # seconds; past a minute a retry loop has stopped being a loop


Exit = Literal["normal", "abnormal"]
"""How a run ended: ``normal`` (returned, or raised ``isopool.Shutdown``) or ``abnormal``."""


def should_restart(restart: Restart, exit: Exit) -> bool:
    """Return whether a run that ended with ``exit`` is re-run under ``restart``.

    ``temporary`` never re-runs; ``transient`` re-runs after an abnormal exit
    (exception, crash, time-out); ``permanent`` always re-runs.
    """
    if restart == "permanent":
        return True
    return restart == "transient" and exit == "abnormal"


def backoff_delay(base: float, retry: int, rand: random.Random | None = None) -> float:
    """Seconds to wait before retry number ``retry`` (1, 2, ...): exponential, jittered.

    The delay doubles per retry from ``base`` up to ``MAX_BACKOFF``, then "equal
    jitter" keeps it in [d/2, d], so retries of many tasks do not stampede together.
    """
    # Cap the exponent first: 2.0 ** 1024 overflows long before min() could cap it.
    delay = min(MAX_BACKOFF, base * 2.0 ** min(retry - 1, 64))
    uniform = rand.uniform if rand is not None else random.uniform
    jitter = uniform(0, delay / 2)
    return delay / 2 + jitter


class RestartIntensity:
    """Counts restarts in a sliding window of ``max_seconds``.

    Not thread-safe: its owner calls it under its own lock.

    Example:
        >>> intensity = RestartIntensity(max_restarts=1, max_seconds=5.0)
        >>> intensity.allow(now=0.0)
        True
        >>> intensity.allow(now=1.0)
        False
        >>> intensity.allow(now=7.0)
        True
    """

    __slots__ = ("_times", "max_restarts", "max_seconds", "tripped")

    def __init__(self, max_restarts: int, max_seconds: float) -> None:
        self.max_restarts = max_restarts
        self.max_seconds = max_seconds
        self.tripped = False  # refused once: the owner gave up (sticky)
        self._times: collections.deque[float] = collections.deque()

    def allow(self, now: float) -> bool:
        """Record a restart at ``now`` and return False if it exceeds the intensity.

        A refused restart is not recorded, but it sets ``tripped`` for good: a
        supervisor that gave up stays down (the monitor starts none of its tasks).
        """
        horizon = now - self.max_seconds
        # OTP keeps a restart exactly max_seconds old in the window (>= Now - Period).
        while self._times and self._times[0] < horizon:
            self._times.popleft()
        if len(self._times) >= self.max_restarts:
            self.tripped = True
            return False
        self._times.append(now)
        return True

    @property
    def recent(self) -> int:
        """How many restarts are in the current window (as of the last ``allow``)."""
        return len(self._times)

"""Restart policies, restart intensity and back-off: pure logic with a fake clock.

No test here sleeps: ``now`` is a plain number the test advances, as OTP's own
supervisor tests do with a mocked monotonic time.
"""

from __future__ import annotations

import random

import pytest

from isopool._core.policy import MAX_BACKOFF, RestartIntensity, backoff_delay, should_restart

# -- should_restart -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("restart", "exit", "expected"),
    [
        ("temporary", "normal", False),
        ("temporary", "abnormal", False),
        ("transient", "normal", False),
        ("transient", "abnormal", True),
        ("permanent", "normal", True),
        ("permanent", "abnormal", True),
    ],
    ids=[
        "temporary-normal",
        "temporary-abnormal",
        "transient-normal",
        "transient-abnormal",
        "permanent-normal",
        "permanent-abnormal",
    ],
)
def test_should_restart_follows_otp_policies(restart, exit, expected):
    """temporary never re-runs, transient after an abnormal exit, permanent always."""
    assert should_restart(restart, exit) is expected


# -- RestartIntensity ---------------------------------------------------------------------


def test_restart_intensity_allows_max_restarts_within_the_window():
    """Up to max_restarts restarts within max_seconds are allowed."""
    intensity = RestartIntensity(max_restarts=3, max_seconds=5.0)
    assert [intensity.allow(now=t) for t in (0.0, 1.0, 2.0)] == [True, True, True]
    assert intensity.recent == 3


def test_restart_intensity_refuses_one_more_within_the_window():
    """The restart after max_restarts within max_seconds is refused."""
    intensity = RestartIntensity(max_restarts=3, max_seconds=5.0)
    for t in (0.0, 1.0, 2.0):
        intensity.allow(now=t)
    assert not intensity.allow(now=4.9)


def test_restart_intensity_refusal_is_not_recorded():
    """A refused restart does not count, so it does not extend the window."""
    intensity = RestartIntensity(max_restarts=1, max_seconds=5.0)
    assert intensity.allow(now=0.0)
    assert not intensity.allow(now=4.0)
    assert intensity.recent == 1
    # Had 4.0 been recorded, 6.0 would still see it inside the window.
    assert intensity.allow(now=6.0)


def test_restart_intensity_old_restarts_leave_the_window():
    """Restarts older than max_seconds no longer count."""
    intensity = RestartIntensity(max_restarts=2, max_seconds=5.0)
    assert intensity.allow(now=0.0)
    assert intensity.allow(now=1.0)
    assert not intensity.allow(now=3.0)
    assert intensity.allow(now=5.5)  # 0.0 has left the window; 1.0 has not
    assert intensity.recent == 2
    assert not intensity.allow(now=5.9)
    assert intensity.allow(now=6.5)  # now 1.0 has left it too


def test_restart_intensity_window_slides_with_steady_restarts():
    """Restarts spaced wider than max_seconds / max_restarts are allowed for ever."""
    intensity = RestartIntensity(max_restarts=2, max_seconds=1.0)
    assert all(intensity.allow(now=0.6 * i) for i in range(100))


def test_restart_intensity_zero_restarts_refuses_every_restart():
    """max_restarts=0 means a failure is never re-run."""
    intensity = RestartIntensity(max_restarts=0, max_seconds=5.0)
    assert not intensity.allow(now=0.0)
    assert not intensity.allow(now=100.0)
    assert intensity.recent == 0


def test_restart_intensity_zero_window_allows_restarts_at_distinct_times():
    """With max_seconds=0 only restarts at the very same instant count together."""
    intensity = RestartIntensity(max_restarts=1, max_seconds=0.0)
    assert intensity.allow(now=1.0)
    assert intensity.allow(now=1.0 + 1e-9)


def test_restart_intensity_fresh_has_no_recent_restarts():
    """A new RestartIntensity has counted nothing."""
    intensity = RestartIntensity(max_restarts=3, max_seconds=5.0)
    assert intensity.recent == 0
    assert (intensity.max_restarts, intensity.max_seconds) == (3, 5.0)


# -- backoff_delay ------------------------------------------------------------------------


class _FixedUniform:
    """A stand-in for random.Random whose uniform(a, b) returns a chosen end."""

    def __init__(self, end: str) -> None:
        self.end = end

    def uniform(self, a: float, b: float) -> float:
        return a if self.end == "low" else b


@pytest.mark.parametrize(
    ("retry", "full"), [(1, 0.1), (2, 0.2), (3, 0.4), (5, 1.6)], ids=["1", "2", "3", "5"]
)
def test_backoff_delay_doubles_per_retry_with_equal_jitter(retry, full):
    """Retry n waits between d/2 and d, where d = base * 2**(n-1)."""
    low = backoff_delay(0.1, retry, _FixedUniform("low"))
    high = backoff_delay(0.1, retry, _FixedUniform("high"))
    assert low == pytest.approx(full / 2)
    assert high == pytest.approx(full)


def test_backoff_delay_is_capped_at_max_backoff():
    """Past MAX_BACKOFF the delay stops growing."""
    assert backoff_delay(0.1, 30, _FixedUniform("high")) == MAX_BACKOFF
    assert backoff_delay(0.1, 30, _FixedUniform("low")) == MAX_BACKOFF / 2


def test_backoff_delay_random_jitter_stays_in_bounds():
    """With a real random source every delay lies in [d/2, d]."""
    rand = random.Random(1234)
    for retry in range(1, 20):
        full = min(MAX_BACKOFF, 0.05 * 2 ** (retry - 1))
        assert full / 2 <= backoff_delay(0.05, retry, rand) <= full


def test_backoff_delay_zero_base_never_waits():
    """backoff=0 retries at once."""
    assert backoff_delay(0.0, 7, random.Random(0)) == 0.0


def test_backoff_delay_many_retries_stays_capped():
    """A task with a large max_retries keeps getting MAX_BACKOFF, never an error.

    Regression test: 2.0 ** (retry - 1) overflowed past retry 1024 before the cap,
    which would have killed the monitor thread (fixed in ab8fc47).
    """
    assert backoff_delay(0.1, 2000, _FixedUniform("high")) == MAX_BACKOFF

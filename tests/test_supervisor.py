"""TaskSupervisor, with real processes: names, restart policies, restart intensity across
children, per-child retries with back-off, max_children, terminate_child, children(),
async_/async_nolink/async_stream(_nolink), and closing.

The restart-intensity and back-off rules themselves are pure logic; the last section
tests them with a fake clock and a seeded random source, the way the supervisor uses them.
"""

from __future__ import annotations

import functools
import itertools
import logging
import random
from collections.abc import Iterator

import pytest

import isopool
from isopool import Reply, Task, TaskGroup, TaskSupervisor
from isopool._core.policy import MAX_BACKOFF, RestartIntensity, backoff_delay
from tests import _tasks
from tests.conftest import pid_alive, started, wait_for

_names = itertools.count(1)


pytestmark = pytest.mark.usefixtures("fresh_default_pool")


@pytest.fixture
def sup() -> Iterator[TaskSupervisor]:
    """A uniquely named two-worker supervisor, closed after the test whatever happened."""
    supervisor = TaskSupervisor(f"test-sup-{next(_names)}", max_workers=2)
    try:
        yield supervisor
    finally:
        supervisor.close()


def unique(prefix: str = "sup") -> str:
    """A supervisor name no other test uses (the registry is per process)."""
    return f"{prefix}-{next(_names)}"


# -- names ---------------------------------------------------------------------------------


def test_supervisor_whereis_finds_it_by_name():
    """TaskSupervisor.whereis(name) returns the running supervisor of that name."""
    name = unique("MyApp.TaskSupervisor")
    with TaskSupervisor(name, max_workers=1) as sup:
        assert TaskSupervisor.whereis(name) is sup
        assert sup.name == name
    assert TaskSupervisor.whereis(name) is None


def test_supervisor_whereis_unknown_name_returns_none():
    """whereis of a name nobody registered returns None."""
    assert TaskSupervisor.whereis(unique("nobody")) is None


def test_supervisor_duplicate_name_raises_value_error():
    """Registering a name that is taken raises ValueError and leaves the first one alone."""
    name = unique()
    with TaskSupervisor(name, max_workers=1) as first:
        with pytest.raises(ValueError, match="already running"):
            TaskSupervisor(name, max_workers=1)
        assert TaskSupervisor.whereis(name) is first
        assert first.async_(_tasks.echo, 1).await_(30) == 1


def test_supervisor_name_is_freed_after_close():
    """After close() the name can be registered again."""
    name = unique()
    TaskSupervisor(name, max_workers=1).close()
    with TaskSupervisor(name, max_workers=1) as again:
        assert TaskSupervisor.whereis(name) is again


def test_supervisor_without_name_gets_a_unique_one():
    """Two unnamed supervisors get distinct generated names."""
    with (
        TaskSupervisor(max_workers=1) as a,
        TaskSupervisor(max_workers=1) as b,
    ):
        assert a.name != b.name
        assert TaskSupervisor.whereis(a.name) is a


def test_supervisor_bad_max_children_raises_value_error():
    """max_children must be positive: the error names it."""
    with pytest.raises(ValueError, match="max_children"):
        TaskSupervisor(unique(), max_children=0)


# -- start_child and restart policies --------------------------------------------------------


def test_start_child_temporary_runs_once_even_when_it_fails(sup, tmp_path):
    """The default (temporary) child is never re-run."""
    counter = tmp_path / "runs"
    child = sup.start_child(_tasks.fail_n_times, str(counter), 1)
    with pytest.raises(RuntimeError, match="failure 1 of 1"):
        child.result(timeout=30)
    assert child.attempts == 1
    assert _tasks.runs(counter) == 1


def test_start_child_transient_restarts_until_success(sup, tmp_path):
    """A transient child that fails twice succeeds on its third run."""
    counter = tmp_path / "runs"
    child = sup.options(restart="transient").start_child(_tasks.fail_n_times, str(counter), 2)
    assert child.result(timeout=30) == "ok"
    assert child.attempts == 3
    assert _tasks.runs(counter) == 3


def test_start_child_transient_restarts_after_a_crash(sup, tmp_path):
    """A transient child whose worker dies is re-run."""
    counter = tmp_path / "runs"
    child = sup.options(restart="transient").start_child(_tasks.crash_n_times, str(counter), 1)
    assert child.result(timeout=30) == "ok"
    assert child.attempts == 2


def test_start_child_transient_raising_shutdown_is_not_restarted(sup, tmp_path):
    """A transient child raising isopool.Shutdown exited normally: it is not re-run."""
    counter = tmp_path / "runs"
    child = sup.options(restart="transient").start_child(_tasks.raise_shutdown, str(counter))
    assert isinstance(child.exception(timeout=30), isopool.Shutdown)
    assert child.attempts == 1
    assert _tasks.runs(counter) == 1
    assert TaskSupervisor.whereis(sup.name) is sup


def test_start_child_restarts_are_logged_with_the_supervisor_name(sup, tmp_path, caplog):
    """Each restart of a child is logged at WARNING and names the supervisor."""
    caplog.set_level(logging.WARNING, logger="isopool")
    counter = tmp_path / "runs"
    child = sup.options(restart="transient").start_child(_tasks.fail_n_times, str(counter), 1)
    assert child.result(timeout=30) == "ok"
    # Logs come from the pool's resolver thread (handlers are user code): wait for them.
    assert wait_for(lambda: any("restarting it" in r.getMessage() for r in caplog.records))
    restarts = [r for r in caplog.records if "restarting it" in r.getMessage()]
    assert len(restarts) == 1
    assert restarts[0].levelno == logging.WARNING
    assert sup.name in restarts[0].getMessage()


def test_start_child_permanent_reruns_after_success_until_terminated(tmp_path):
    """A permanent child runs again after each success; terminate_child ends it."""
    counter = tmp_path / "runs"
    # Each re-run counts against the intensity, as in OTP: allow plenty of them.
    with TaskSupervisor(unique(), max_workers=2, max_restarts=10_000, max_seconds=1.0) as sup:
        child = sup.options(restart="permanent").start_child(_tasks.count_run, str(counter))
        assert wait_for(lambda: _tasks.runs(counter) >= 3, timeout=30)
        assert not child.done()  # a permanent child never resolves by itself
        assert sup.terminate_child(child) is True
        assert child.cancelled()
        ran = _tasks.runs(counter)
        assert sup.async_(_tasks.echo, "after").await_(30) == "after"  # it lives on
        assert _tasks.runs(counter) == ran


def test_start_child_permanent_returning_fast_trips_the_restart_intensity(tmp_path):
    """A permanent child that keeps returning at once counts restarts: the supervisor gives up."""
    counter = tmp_path / "runs"
    with TaskSupervisor(unique(), max_workers=1, max_restarts=3, max_seconds=60) as sup:
        child = sup.options(restart="permanent").start_child(_tasks.count_run, str(counter))
        with pytest.raises(isopool.RestartLimitError):
            child.result(timeout=30)
        assert _tasks.runs(counter) == 4
        assert wait_for(lambda: TaskSupervisor.whereis(sup.name) is None)


def test_start_child_permanent_is_stopped_by_close(tmp_path):
    """Closing the supervisor stops a permanent child for good."""
    counter = tmp_path / "runs"
    with TaskSupervisor(unique(), max_workers=1, max_restarts=10_000, max_seconds=1.0) as sup:
        child = sup.options(restart="permanent").start_child(_tasks.count_run, str(counter))
        assert wait_for(lambda: _tasks.runs(counter) >= 2, timeout=30)
    assert child.done()
    assert TaskSupervisor.whereis(sup.name) is None


# -- restart intensity: OTP's circuit breaker -------------------------------------------------


def test_supervisor_restart_intensity_across_children_gives_up(tmp_path, caplog):
    """More than max_restarts restarts across children: every child fails, it refuses work."""
    caplog.set_level(logging.WARNING, logger="isopool")
    name = unique()
    with TaskSupervisor(name, max_workers=2, max_restarts=2, max_seconds=60) as sup:
        transient = sup.options(restart="transient")
        children = [
            transient.start_child(_tasks.fail_always, str(tmp_path / f"runs{i}")) for i in range(2)
        ]
        for child in children:
            with pytest.raises(isopool.RestartLimitError):
                child.result(timeout=30)
        assert sum(_tasks.runs(tmp_path / f"runs{i}") for i in range(2)) <= 4
        with pytest.raises(isopool.RestartLimitError):
            sup.start_child(_tasks.echo, 1)
        # The supervisor reacts to its child's exit as OTP's does: asynchronously (its
        # done-callback runs on the pool's resolver thread), so wait for it.
        assert wait_for(lambda: TaskSupervisor.whereis(name) is None)
        assert wait_for(
            lambda: any(
                "shutting down" in r.getMessage() and name in r.getMessage() for r in caplog.records
            )
        )


def test_supervisor_giving_up_stops_its_other_children(tmp_path):
    """When the supervisor gives up, a healthy running child is stopped with RestartLimitError."""
    with TaskSupervisor(unique(), max_workers=2, max_restarts=1, max_seconds=60) as sup:
        healthy = sup.start_child(_tasks.hang)
        pid = started(healthy)
        flaky = sup.options(restart="transient").start_child(
            _tasks.fail_always, str(tmp_path / "runs")
        )
        with pytest.raises(isopool.RestartLimitError):
            flaky.result(timeout=30)
        with pytest.raises(isopool.RestartLimitError) as info:
            healthy.result(timeout=30)
        assert isinstance(info.value.__cause__, isopool.RestartLimitError)
        assert wait_for(lambda: not pid_alive(pid), timeout=10)


def test_supervisor_giving_up_never_starts_a_pending_child(tmp_path):
    """A child still pending when the supervisor gives up fails without ever running."""
    with TaskSupervisor(unique(), max_workers=1, max_restarts=2, max_seconds=60) as sup:
        flaky = sup.options(restart="transient", priority=0).start_child(
            _tasks.fail_always, str(tmp_path / "flaky")
        )
        pending = sup.options(priority=9).start_child(_tasks.count_run, str(tmp_path / "pending"))
        with pytest.raises(isopool.RestartLimitError):
            flaky.result(timeout=30)
        assert isinstance(pending.exception(timeout=30), isopool.RestartLimitError)
        assert pending.attempts == 0


def test_supervisor_restarts_spread_out_in_time_do_not_give_up(tmp_path):
    """Restarts within the intensity (here: one failure, max_restarts=1) are fine."""
    with TaskSupervisor(unique(), max_workers=1, max_restarts=1, max_seconds=60) as sup:
        child = sup.options(restart="transient").start_child(
            _tasks.fail_n_times, str(tmp_path / "runs"), 1
        )
        assert child.result(timeout=30) == "ok"
        assert sup.async_(_tasks.echo, 2).await_(30) == 2


# -- max_retries with back-off: a per-child retry loop ----------------------------------------


def test_start_child_max_retries_with_backoff_retries_until_success(sup, tmp_path):
    """A child failing twice succeeds on its third run within max_retries=3."""
    counter = tmp_path / "runs"
    child = sup.options(restart="transient", max_retries=3, backoff=0.05).start_child(
        _tasks.fail_n_times, str(counter), 2
    )
    assert child.result(timeout=30) == "ok"
    assert child.attempts == 3


def test_start_child_max_retries_exhausted_fails_without_giving_up(tmp_path):
    """Past max_retries the child fails with RestartLimitError; the supervisor lives on."""
    counter = tmp_path / "runs"
    name = unique()
    # max_restarts=1 would make the supervisor give up at once if retries counted there.
    with TaskSupervisor(name, max_workers=1, max_restarts=1, max_seconds=60) as sup:
        child = sup.options(restart="transient", max_retries=2, backoff=0.05).start_child(
            _tasks.fail_always, str(counter)
        )
        with pytest.raises(isopool.RestartLimitError) as info:
            child.result(timeout=30)
        assert isinstance(info.value.__cause__, RuntimeError)
        assert _tasks.runs(counter) == 3
        assert child.attempts == 3
        assert TaskSupervisor.whereis(name) is sup
        assert sup.async_(_tasks.echo, "alive").await_(30) == "alive"


def test_start_child_max_retries_exhausted_error_names_max_retries(sup, tmp_path):
    """The RestartLimitError of a spent retry budget says max_retries, not the intensity."""
    child = sup.options(restart="transient", max_retries=1, backoff=0.01).start_child(
        _tasks.fail_always, str(tmp_path / "runs")
    )
    error = child.exception(timeout=30)
    assert isinstance(error, isopool.RestartLimitError)
    assert "max_retries" in str(error)


def test_start_child_max_retries_zero_never_retries(sup, tmp_path):
    """max_retries=0 runs a transient child once."""
    counter = tmp_path / "runs"
    child = sup.options(restart="transient", max_retries=0).start_child(
        _tasks.fail_always, str(counter)
    )
    with pytest.raises(isopool.RestartLimitError):
        child.result(timeout=30)
    assert _tasks.runs(counter) == 1


# -- max_children, children(), terminate_child --------------------------------------------------


def test_start_child_over_max_children_raises_max_children_error():
    """A supervisor at max_children refuses another child with MaxChildrenError."""
    with TaskSupervisor(unique(), max_workers=2, max_children=2) as sup:
        children = [sup.start_child(_tasks.hang) for _ in range(2)]
        with pytest.raises(isopool.MaxChildrenError, match="max_children=2") as info:
            sup.start_child(_tasks.echo, 1)
        assert isinstance(info.value, RuntimeError)
        with pytest.raises(isopool.MaxChildrenError):
            sup.async_(_tasks.echo, 1)
        assert sup.terminate_child(children[0])
        assert sup.async_(_tasks.echo, "room again").await_(30) == "room again"


def test_supervisor_children_lists_running_children(sup):
    """children() lists the children running now, and drops them once they end."""
    a, b = sup.start_child(_tasks.hang), sup.start_child(_tasks.hang)
    assert wait_for(lambda: set(sup.children()) == {a, b})
    sup.terminate_child(a)
    assert sup.children() == [b]
    sup.terminate_child(b)
    assert sup.children() == []


def test_supervisor_children_leaves_out_finished_ones(sup):
    """A child that returned is no longer listed."""
    child = sup.start_child(_tasks.echo, 1)
    assert child.result(timeout=30) == 1
    assert wait_for(lambda: sup.children() == [])


def test_terminate_child_stops_a_running_child(sup):
    """terminate_child stops the child's process; it is cancelled and not restarted."""
    child = sup.options(restart="transient").start_child(_tasks.hang)
    pid = started(child)
    assert sup.terminate_child(child) is True
    assert child.cancelled()
    assert not pid_alive(pid)
    assert child.attempts == 1


def test_terminate_child_gives_a_sigterm_trapping_child_its_grace(sup, tmp_path):
    """terminate_child is polite first: the child's SIGTERM handler runs."""
    marker, ready = tmp_path / "marker", tmp_path / "ready"
    child = sup.options(shutdown=5.0).start_child(
        _tasks.trap_sigterm_ready_then_hang, str(marker), str(ready)
    )
    assert wait_for(ready.exists)
    assert sup.terminate_child(child) is True
    assert marker.read_text() == "cleaned up"


def test_terminate_child_of_another_supervisor_returns_false(sup):
    """A task that is not a live child of this supervisor: False, and it is left alone."""
    with TaskSupervisor(unique(), max_workers=1) as other:
        stranger = other.start_child(_tasks.hang)
        pid = started(stranger)
        assert sup.terminate_child(stranger) is False
        assert pid_alive(pid)
        assert not stranger.done()


def test_terminate_child_finished_child_returns_false(sup):
    """A child that already finished is no longer a child: False."""
    child = sup.start_child(_tasks.echo, 1)
    assert child.result(timeout=30) == 1
    assert wait_for(lambda: sup.terminate_child(child) is False)


# -- async_, async_nolink, async_stream, async_stream_nolink ------------------------------------


def test_supervisor_async_returns_an_awaitable_task(sup):
    """sup.async_ runs the task on the supervisor; await_ returns its result."""
    task = sup.async_(pow, 2, 64)
    assert Task.await_(task, 30) == 2**64


def test_supervisor_async_failure_raises_from_await(sup):
    """await_ on a failing sup.async_ task raises its exception."""
    task = sup.async_(_tasks.raise_value_error, "supervised")
    with pytest.raises(ValueError, match="supervised"):
        task.await_(30)


def test_supervisor_async_is_never_restarted(sup, tmp_path):
    """An async task is not restarted, even on a supervisor view with defaults."""
    counter = tmp_path / "runs"
    task = sup.options(shutdown=1.0).async_(_tasks.fail_n_times, str(counter), 1)
    with pytest.raises(RuntimeError):
        task.await_(30)
    assert _tasks.runs(counter) == 1


def test_supervisor_async_in_a_group_joins_the_group(sup):
    """sup.async_ is linked to the caller's TaskGroup: its failure fails the group."""
    with pytest.raises(ExceptionGroup) as info, TaskGroup():
        sup.async_(_tasks.raise_value_error, "linked to group")
    assert [str(e) for e in info.value.exceptions] == ["linked to group"]


def test_supervisor_async_nolink_failure_comes_back_through_yield(sup):
    """async_nolink's failure does not fail the caller's group; yield_ returns it."""
    with TaskGroup():
        task = sup.async_nolink(_tasks.raise_value_error, "nolink")
        reply = task.yield_(30)
    assert reply is not None
    assert reply.status == "exit"
    assert isinstance(reply.value, ValueError)


@pytest.mark.parametrize(
    "option",
    [{"restart": "transient"}, {"restart": "permanent"}, {"max_retries": 2}],
    ids=["transient", "permanent", "max-retries"],
)
@pytest.mark.parametrize("method", ["async_", "async_nolink"])
def test_supervisor_async_with_restart_option_raises_value_error(sup, option, method):
    """async_/async_nolink accept only shutdown: a restart policy raises ValueError."""
    view = sup.options(**option)
    with pytest.raises(ValueError, match="only the shutdown option"):
        getattr(view, method)(_tasks.echo, 1)


def test_supervisor_async_stream_with_restart_option_raises_value_error(sup):
    """async_stream on a view with a restart policy raises ValueError."""
    with pytest.raises(ValueError, match="only the shutdown option"):
        sup.options(restart="transient").async_stream(_tasks.echo, [1])


def test_supervisor_async_stream_yields_ok_replies_in_order(sup):
    """sup.async_stream yields Reply('ok', v) in input order."""
    replies = list(sup.async_stream(_tasks.echo, range(5), timeout=30))
    assert replies == [Reply("ok", i) for i in range(5)]


def test_supervisor_async_stream_raising_item_raises(sup):
    """A failing item in the linked sup.async_stream raises its exception."""
    with pytest.raises(ValueError, match="bad item"):
        list(sup.async_stream(_tasks.raise_if, ["a", "bad"], max_concurrency=1, timeout=30))


def test_supervisor_async_stream_nolink_yields_exit_for_a_failing_item(sup):
    """async_stream_nolink yields Reply('exit', exc) for a failing item and goes on."""
    replies = list(
        sup.async_stream_nolink(_tasks.raise_if, ["a", "bad", "c"], max_concurrency=1, timeout=30)
    )
    assert replies[0] == Reply("ok", "a")
    assert replies[1].status == "exit"
    assert isinstance(replies[1].value, ValueError)
    assert replies[2] == Reply("ok", "c")


def test_supervisor_async_stream_nolink_zip_input_on_exit_pairs_the_input(sup):
    """With zip_input_on_exit a failed item's reason is (input, exc)."""
    replies = list(
        sup.async_stream_nolink(
            _tasks.raise_if, ["bad"], max_concurrency=1, timeout=30, zip_input_on_exit=True
        )
    )
    item, reason = replies[0].value
    assert item == "bad"
    assert isinstance(reason, ValueError)


def test_supervisor_async_stream_kill_task_yields_timeout(sup):
    """sup.async_stream with on_timeout='kill_task' yields Reply('exit', 'timeout')."""
    replies = list(
        sup.async_stream(_tasks.hang_if, ["a", "hang"], timeout=0.5, on_timeout="kill_task")
    )
    assert replies == [Reply("ok", "a"), Reply("exit", "timeout")]


def test_supervisor_async_stream_never_runs_more_than_max_concurrency(tmp_path):
    """With four workers and max_concurrency=2, at most two items ever run at once."""
    fn = functools.partial(_tasks.record_span, str(tmp_path), seconds=0.1)
    with TaskSupervisor(unique(), max_workers=4) as sup:
        replies = list(sup.async_stream(fn, range(8), max_concurrency=2, timeout=30))
    assert [r.value for r in replies] == list(range(8))
    spans = [tuple(map(float, (tmp_path / str(i)).read_text().split()[1:])) for i in range(8)]
    events = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans])
    running = peak = 0
    for _, delta in events:
        running += delta
        peak = max(peak, running)
    assert peak <= 2


def test_supervisor_async_stream_children_count_against_max_children():
    """Stream tasks are children too: a full supervisor refuses the stream's tasks."""
    with TaskSupervisor(unique(), max_workers=2, max_children=1) as sup:
        blocker = sup.start_child(_tasks.hang)
        started(blocker)
        with pytest.raises(isopool.MaxChildrenError):
            list(sup.async_stream(_tasks.echo, [1], timeout=30))


# -- closing -----------------------------------------------------------------------------------


def test_supervisor_close_stops_children_politely(tmp_path):
    """Closing stops each child with SIGTERM first: a trapping child writes its marker."""
    marker, ready = tmp_path / "marker", tmp_path / "ready"
    with TaskSupervisor(unique(), max_workers=1) as sup:
        child = sup.options(shutdown=5.0).start_child(
            _tasks.trap_sigterm_ready_then_hang, str(marker), str(ready)
        )
        assert wait_for(ready.exists)
        pid = started(child)
    assert marker.read_text() == "cleaned up"
    assert child.cancelled()
    assert not pid_alive(pid)


def test_supervisor_close_brutal_kill_child_gets_no_grace(tmp_path):
    """A child with shutdown='brutal_kill' is SIGKILLed at close: no marker."""
    marker, ready = tmp_path / "marker", tmp_path / "ready"
    with TaskSupervisor(unique(), max_workers=1) as sup:
        sup.options(shutdown="brutal_kill").start_child(
            _tasks.trap_sigterm_ready_then_hang, str(marker), str(ready)
        )
        assert wait_for(ready.exists)
    assert not marker.exists()


def test_supervisor_closed_refuses_new_children():
    """After close, start_child raises PoolClosedError; close is idempotent."""
    sup = TaskSupervisor(unique(), max_workers=1)
    sup.close()
    sup.close()
    with pytest.raises(isopool.PoolClosedError):
        sup.start_child(_tasks.echo, 1)


def test_supervisor_on_a_passed_pool_leaves_it_usable_after_close(pool):
    """A supervisor on your pool stops its children at close but not the pool."""
    with TaskSupervisor(unique(), pool=pool) as sup:
        assert sup.pool is pool
        child = sup.start_child(_tasks.hang)
        pid = started(child)
    assert child.cancelled()
    assert not pid_alive(pid)
    assert pool.submit(_tasks.echo, "still here").result(timeout=30) == "still here"


def test_supervisor_exit_on_error_still_stops_children():
    """An exception in the with block stops the children and propagates unchanged."""
    children: list[Task] = []

    def fail_in_block() -> None:
        with TaskSupervisor(unique(), max_workers=1) as sup:
            children.append(sup.start_child(_tasks.hang))
            started(children[0])
            raise LookupError("block failed")

    with pytest.raises(LookupError):
        fail_in_block()
    assert children[0].cancelled()


# -- the pure rules the supervisor applies: fake clock, seeded random --------------------------


def test_restart_intensity_shared_by_children_counts_every_childs_restart():
    """One RestartIntensity for all children: restarts of different children add up."""
    intensity = RestartIntensity(max_restarts=2, max_seconds=5.0)
    now = 100.0
    assert intensity.allow(now)  # child A's restart
    assert intensity.allow(now + 0.1)  # child B's restart
    assert not intensity.allow(now + 0.2)  # A again: past max_restarts, give up


def test_restart_intensity_fake_clock_window_expires_after_max_seconds():
    """After max_seconds without restarts, the budget is whole again."""
    intensity = RestartIntensity(max_restarts=3, max_seconds=5.0)
    for t in (0.0, 1.0, 2.0):
        assert intensity.allow(t)
    assert not intensity.allow(4.0)
    assert intensity.allow(7.5)  # 0.0, 1.0 and 2.0 have left the window
    assert intensity.recent == 1


def test_restart_intensity_otp_defaults_allow_three_restarts_in_five_seconds():
    """OTP's defaults (3 within 5 s): the fourth restart within 5 s is refused."""
    intensity = RestartIntensity(max_restarts=3, max_seconds=5.0)
    assert [intensity.allow(t) for t in (0.0, 0.5, 1.0, 1.5)] == [True, True, True, False]


@pytest.mark.parametrize("seed", [0, 1, 42])
def test_backoff_delay_seeded_random_stays_within_equal_jitter_bounds(seed):
    """Retry n waits in [d/2, d] with d = min(MAX_BACKOFF, base * 2**(n-1))."""
    rand = random.Random(seed)
    for retry in range(1, 16):
        full = min(MAX_BACKOFF, 0.05 * 2 ** (retry - 1))
        assert full / 2 <= backoff_delay(0.05, retry, rand) <= full


def test_backoff_delay_same_seed_gives_the_same_delays():
    """The jitter comes only from the random source: a seed reproduces it."""
    first = [backoff_delay(0.5, n, random.Random(7)) for n in range(1, 6)]
    second = [backoff_delay(0.5, n, random.Random(7)) for n in range(1, 6)]
    assert first == second


def test_backoff_delay_jitter_spreads_retries_apart():
    """Different random draws give different delays: retries do not stampede."""
    rand = random.Random(3)
    delays = {backoff_delay(1.0, 3, rand) for _ in range(20)}
    assert len(delays) > 1

"""``progress=`` on every long call: a callable, a tqdm instance, a real bar, or nothing.

Real pools run the tasks; a callable records what it was told, a tqdm bar writes to an
``io.StringIO``, and "off costs nothing" is checked in a fresh interpreter's
``sys.modules``.
"""

from __future__ import annotations

import concurrent.futures
import io
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import isopool
from isopool import Task, TaskSupervisor
from tests import _tasks

tqdm = pytest.importorskip("tqdm").tqdm

ROOT = Path(__file__).resolve().parent.parent


class Recorder:
    """A progress callable that keeps every (done, total, counts) it is given."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, int | None, dict[str, int]]] = []

    def __call__(self, done: int, total: int | None, counts: dict[str, int]) -> None:
        self.calls.append((done, total, counts))

    @property
    def last(self) -> tuple[int, int | None, dict[str, int]]:
        return self.calls[-1]


def run_script(code: str) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter from the repository root, stderr piped."""
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


# -- map ---------------------------------------------------------------------------------


def test_map_progress_callable_sees_every_item(pool):
    """A callable hears of each result as it is taken, with the total, then once at the end."""
    recorder = Recorder()
    assert list(pool.map(abs, [-1, -2, -3], progress=recorder)) == [1, 2, 3]
    assert [done for done, _, _ in recorder.calls] == [1, 2, 3, 3]
    assert all(total == 3 for _, total, _ in recorder.calls)
    assert recorder.last[2] == {"ok": 3, "failed": 0, "crashed": 0, "timed_out": 0, "cancelled": 0}


def test_map_progress_chunks_count_items(pool):
    """With chunksize, progress counts items, not chunks."""
    recorder = Recorder()
    assert list(pool.map(abs, range(10), chunksize=3, progress=recorder)) == list(range(10))
    assert recorder.last[:2] == (10, 10)


def test_map_progress_endless_input_has_no_total(pool):
    """An iterable without len() gives total None."""
    recorder = Recorder()
    results = pool.map(abs, iter([-1, -2]), progress=recorder)
    assert list(results) == [1, 2]
    assert recorder.last[:2] == (2, None)


def test_map_progress_crash_is_counted_before_it_raises(pool):
    """A crashed task counts under 'crashed' before map raises its error."""
    recorder = Recorder()
    results = pool.map(_tasks.exit_with, [3], progress=recorder)
    with pytest.raises(isopool.TaskCrashError):
        list(results)
    assert recorder.last[2]["crashed"] == 1


def test_options_map_progress_tqdm_instance_writes_bar(pool):
    """PoolOptions.map drives a given tqdm bar: its total is filled in, it reaches 4/4."""
    out = io.StringIO()
    bar = tqdm(file=out, mininterval=0)
    assert list(pool.options(timeout=60).map(abs, [1, 2, 3, 4], progress=bar)) == [1, 2, 3, 4]
    assert bar.n == 4
    assert bar.total == 4
    bar.close()
    assert "4/4" in out.getvalue()


def test_map_progress_bad_value_is_refused_at_the_call(pool):
    """A progress= that is none of the accepted kinds fails before anything runs."""
    with pytest.raises(TypeError, match="progress"):
        pool.map(abs, [1], progress=42)
    with pytest.raises(ValueError, match="progress"):
        pool.map(abs, [1], progress="sometimes")
    assert pool.stats()["submitted"] == 0


# -- await_many, yield_many, as_completed, async_stream ------------------------------------


def test_await_many_progress_counts_a_crash(pool):
    """await_many reports the tasks that finished, a crash among them, then raises it."""
    recorder = Recorder()
    tasks = [pool.submit(abs, -1), pool.submit(_tasks.exit_with, 3)]
    with pytest.raises(isopool.TaskCrashError):
        Task.await_many(tasks, 60, progress=recorder)
    assert recorder.last[2]["crashed"] == 1
    assert recorder.last[1] == 2


def test_await_many_progress_all_ok(pool):
    """await_many with progress returns the results and reports all of them done."""
    recorder = Recorder()
    tasks = [pool.submit(abs, -n) for n in range(5)]
    assert Task.await_many(tasks, 60, progress=recorder) == list(range(5))
    assert recorder.last[:2] == (5, 5)
    assert recorder.last[2]["ok"] == 5


def test_yield_many_progress_tqdm_postfix_shows_crashed_and_timed_out(pool):
    """A crashed and a timed-out task show in the bar's postfix; the bar reaches 3/3."""
    out = io.StringIO()
    bar = tqdm(file=out, mininterval=0)
    tasks = [
        pool.submit(abs, -1),
        pool.options(timeout=0.2).submit(_tasks.hang),
        pool.submit(_tasks.exit_with, 3),
    ]
    replies = Task.yield_many(tasks, 60, progress=bar)
    bar.close()
    assert replies[0] == isopool.Reply("ok", 1)
    assert isinstance(replies[1].reason, isopool.TaskTimeoutError)  # type: ignore[union-attr]
    assert isinstance(replies[2].reason, isopool.TaskCrashError)  # type: ignore[union-attr]
    text = out.getvalue()
    assert "timed_out=1" in text
    assert "crashed=1" in text
    assert "3/3" in text


def test_yield_many_progress_late_task_is_not_counted(pool):
    """A task still running at the time-out is a None, and not counted as done."""
    recorder = Recorder()
    tasks = [pool.submit(abs, -1), pool.submit(_tasks.hang)]
    tasks[0].result(timeout=30)  # done before the wait starts, however loaded the machine
    replies = Task.yield_many(tasks, 0.5, on_timeout="kill_task", progress=recorder)
    assert replies[1] is None
    assert recorder.last[:2] == (1, 2)


def test_as_completed_progress_yields_each_future_once(pool):
    """isopool.as_completed yields every future once (duplicates too) and reports them."""
    recorder = Recorder()
    tasks = [pool.submit(abs, -n) for n in range(4)]
    seen = list(isopool.as_completed([*tasks, tasks[0]], progress=recorder))
    assert sorted(t.result() for t in seen) == [0, 1, 2, 3]
    assert recorder.last[:2] == (4, 4)


def test_as_completed_without_progress_is_the_stdlib_timeout(pool):
    """Off, it is the stdlib's as_completed: a pending future times out on next()."""
    task = pool.submit(_tasks.hang)
    try:
        with pytest.raises(TimeoutError):
            next(isopool.as_completed([task], timeout=0.1))
        with pytest.raises(TimeoutError):
            next(isopool.as_completed([task], timeout=0.1, progress=Recorder()))
    finally:
        task.kill()


def test_as_completed_progress_plain_futures_work():
    """Any Future works, not only isopool's Tasks."""
    recorder = Recorder()
    futures: list[concurrent.futures.Future[int]] = [concurrent.futures.Future() for _ in range(2)]
    futures[0].set_result(1)
    futures[1].set_exception(ValueError("x"))
    assert set(isopool.as_completed(futures, progress=recorder)) == set(futures)
    assert recorder.last[2]["ok"] == 1
    assert recorder.last[2]["failed"] == 1


def test_async_stream_progress_callable_counts_each_reply(pool):
    """async_stream reports each yielded reply, with the input's length as total."""
    recorder = Recorder()
    sup = TaskSupervisor(pool=pool)
    replies = list(sup.async_stream_nolink(_tasks.raise_if, ["a", "bad", "c"], progress=recorder))
    assert [r.ok for r in replies] == [True, False, True]
    assert recorder.last[:2] == (3, 3)
    assert recorder.last[2]["failed"] == 1


# -- off costs nothing; True only on a terminal; "always" --------------------------------


def test_progress_off_never_imports_tqdm():
    """Without progress= (or with True on a non-terminal stderr), tqdm is never imported."""
    result = run_script(
        """
        import sys
        import isopool
        from isopool import Task
        with isopool.Pool(1) as pool:
            list(pool.map(abs, [1, 2]))
            list(pool.map(abs, [1, 2], progress=True))  # stderr is a pipe here
            Task.await_many([pool.submit(abs, 1)], 60)
            Task.yield_many([pool.submit(abs, 1)], 60, progress=True)
            list(isopool.as_completed([pool.submit(abs, 1)]))
        print("tqdm" in sys.modules)
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"
    assert "it/s" not in result.stderr
    assert "task/s" not in result.stderr


def test_progress_always_draws_a_bar_on_a_pipe():
    """progress='always' draws the bar on stderr even when it is not a terminal."""
    result = run_script(
        """
        import isopool
        with isopool.Pool(1) as pool:
            print(list(pool.map(abs, [-1, -2, -3], progress="always")))
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[1, 2, 3]"
    assert "3/3" in result.stderr

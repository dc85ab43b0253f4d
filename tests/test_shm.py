"""Large buffers travel in shared memory (issue 8): equal, out of band, leak-free, guarded.

Buffers of ``_oob.THRESHOLD`` bytes or more (numpy arrays, bytearrays, top-level
``bytes``) go through memfds that the parent owns; these tests check that they come
back equal, that only large ones leave the pipe, that a worker killed mid-transfer
leaves no descriptor or /dev/shm entry behind, and that a bogus descriptor from a
hostile task fails that task only.
"""

from __future__ import annotations

import contextlib
import fcntl
import gc
import os
import pickle
import time
from collections.abc import Iterator

import pytest

import isopool
from isopool._core import oob as _oob
from isopool._core import wire as _wire
from tests import _tasks

numpy = pytest.importorskip("numpy")

BIG = 10_000_000  # the benchmark's 10 MB
SMALL = _oob.THRESHOLD // 2


def _fds() -> tuple[int, int]:
    """(descriptors of this process that are not isopool memfds, those that are)."""
    other = shared = 0
    for name in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # the listing's own descriptor is gone
            target = os.readlink(f"/proc/self/fd/{name}")
            if target.startswith("/memfd:isopool-"):
                shared += 1
            else:
                other += 1
    return other, shared


def _shm_entries() -> set[str]:
    """isopool's entries in /dev/shm (other processes on the machine make their own)."""
    if not os.path.isdir("/dev/shm"):
        return set()
    return {name for name in os.listdir("/dev/shm") if "isopool" in name}


@pytest.fixture
def settled() -> Iterator[None]:
    """Check that after the test every slab is idle and no descriptor was left open."""
    gc.collect()
    before, _shared = _fds()
    shm = _shm_entries()
    yield
    gc.collect()
    other, shared = _fds()
    assert other == before
    # Each idle slab: its memfd and the duplicate its mmap keeps (Python < 3.13).
    assert shared <= 2 * len(_oob._pool._idle)
    assert _oob._pool._live == len(_oob._pool._idle)
    assert _shm_entries() <= shm  # memfds only: nothing named, so nothing to leak


def _shared_stats(pool: isopool.Pool) -> tuple[float, float]:
    stats = pool.stats()
    return stats.get("shared_calls", 0), stats.get("shared_results", 0)


@pytest.mark.usefixtures("settled")
def test_ten_megabyte_bytes_round_trip_comes_back_equal() -> None:
    """A 10 MB bytes argument echoed back is equal, and went both ways out of band."""
    data = os.urandom(BIG)
    with isopool.Pool(2) as pool:
        for _ in range(3):  # the second and third reuse the slabs
            assert pool.submit(_tasks.echo, data).result(timeout=30) == data
        assert _shared_stats(pool) == (3, 3)


@pytest.mark.usefixtures("settled")
def test_numpy_array_round_trip_comes_back_equal_and_writable() -> None:
    """A 10 MB float64 array comes back with the same bytes, shape and dtype, writable."""
    array = numpy.frombuffer(os.urandom(BIG), dtype=numpy.float64).reshape(1250, 1000)
    array = array.copy()
    with isopool.Pool(2) as pool:
        for _ in range(3):
            back = pool.submit(_tasks.echo, array).result(timeout=30)
            assert back.tobytes() == array.tobytes()
            assert (back.shape, back.dtype) == (array.shape, array.dtype)
            back[0, 0] = 1.0  # its own memory: the next result must not see it
            del back
        assert _shared_stats(pool) == (3, 3)


@pytest.mark.usefixtures("settled")
def test_buffer_below_threshold_stays_in_the_pipe() -> None:
    """Buffers under the threshold go in band: no call or result is shared."""
    with isopool.Pool(1) as pool:
        assert pool.submit(_tasks.echo, b"x" * SMALL).result(timeout=30) == b"x" * SMALL
        small = numpy.arange(SMALL // 8, dtype=numpy.float64)
        assert (pool.submit(_tasks.echo, small).result(timeout=30) == small).all()
        assert _shared_stats(pool) == (0, 0)


@pytest.mark.usefixtures("settled")
def test_nested_array_above_threshold_goes_out_of_band() -> None:
    """A large array inside a dict argument is shared too (pickle's buffer_callback)."""
    array = numpy.arange(_oob.THRESHOLD // 8 * 2, dtype=numpy.int64)
    with isopool.Pool(1) as pool:
        back = pool.submit(_tasks.echo, {"a": [array]}).result(timeout=30)
        assert (back["a"][0] == array).all()
        assert _shared_stats(pool) == (1, 1)


@pytest.mark.usefixtures("settled")
def test_worker_of_one_call_waits_for_its_shared_result_to_be_opened() -> None:
    """max_tasks_per_child=1: the worker exits only after the parent has the result."""
    data = os.urandom(BIG)
    with isopool.Pool(1, max_tasks_per_child=1) as pool:
        for _ in range(3):
            assert pool.submit(_tasks.echo, data).result(timeout=30) == data
        assert _shared_stats(pool) == (3, 3)


@pytest.mark.usefixtures("settled")
def test_growing_buffers_come_back_equal_as_slabs_grow() -> None:
    """Each call larger than the last: the worker remaps the slab the parent grew."""
    with isopool.Pool(1) as pool:
        for factor in (1, 4, 16, 2, 64):
            data = os.urandom(_oob.THRESHOLD * factor)
            assert pool.submit(_tasks.echo, data).result(timeout=30) == data
        assert _shared_stats(pool) == (5, 5)


@pytest.mark.usefixtures("settled")
def test_uncollected_shared_result_is_freed_with_its_task() -> None:
    """A large result nobody reads goes back to the pool when its Task is dropped."""
    array = numpy.ones(BIG // 8)
    with isopool.Pool(1) as pool:
        futures = [pool.submit(_tasks.echo, array) for _ in range(3)]
        for future in futures:
            future.exception(timeout=30)  # done, value never unpickled
        assert _oob._pool._live > len(_oob._pool._idle)  # the results hold slabs
        del futures


@pytest.mark.usefixtures("settled")
def test_worker_killed_holding_a_shared_argument_fails_only_that_task() -> None:
    """SIGKILL while the worker has the call's slab mapped: a crash, then work goes on."""
    data = os.urandom(BIG)
    with isopool.Pool(1) as pool:
        error = pool.submit(_tasks.die_holding, data).exception(timeout=30)
        assert isinstance(error, isopool.TaskCrashError)
        del error  # never raised: no traceback holds the pool (the descriptor count)
        assert pool.submit(_tasks.echo, data).result(timeout=30) == data


@pytest.mark.parametrize("delay", [0.0, 0.001, 0.004], ids=["at-once", "1ms", "4ms"])
@pytest.mark.usefixtures("settled")
def test_worker_killed_mid_reply_leaks_nothing(delay: float) -> None:
    """SIGKILL while a 40 MB result is being shared: no descriptor or /dev/shm entry left."""
    data = os.urandom(4 * BIG)
    with isopool.Pool(1) as pool:
        assert pool.submit(_tasks.echo, data).result(timeout=30) == data  # a slab is lent
        future = pool.submit(_tasks.echo_then_die_after, data, delay)
        error = future.exception(timeout=30)
        if error is None:  # the reply won the race
            assert future.result(timeout=30) == data
        else:
            assert isinstance(error, isopool.TaskCrashError)
        del future, error
        assert pool.submit(_tasks.echo, b"ok").result(timeout=30) == b"ok"


@pytest.mark.parametrize(
    "how", ["bad-fd", "negative-fd", "not-a-memfd", "too-large", "unsealed", "truncated"]
)
@pytest.mark.usefixtures("settled")
def test_bogus_shared_descriptor_from_worker_fails_only_that_task(how: str) -> None:
    """A hostile task's bogus descriptor fails it with SharedBufferError; the pool serves."""
    with isopool.Pool(1) as pool:
        error = pool.submit(_tasks.send_bogus_shared_result, how).exception(timeout=30)
        assert isinstance(error, _oob.SharedBufferError)
        assert "shared buffers are unusable" in str(error)
        del error
        # The hostile worker exits once it is answered; the next task must not race it.
        deadline = time.monotonic() + 30
        while pool.stats()["workers_replaced"] < 1:
            assert time.monotonic() < deadline, "the hostile worker was never replaced"
            time.sleep(0.01)
        assert pool.submit(_tasks.echo, 7).result(timeout=30) == 7


# -- the envelope checks themselves, in one process --------------------------------------


def _envelope(fd: int, token: int, offset: int, length: int, pid: int | None = None) -> bytes:
    head = _oob._HEAD.pack(_oob.MAGIC, os.getpid() if pid is None else pid, fd, 1, token)
    return head + _oob._ENTRY.pack(offset, length, 1) + pickle.dumps(None)


def test_claim_of_own_memfd_returns_its_bytes() -> None:
    """A sealed memfd of ours, described right, loads (the baseline of the checks below)."""
    buffers: list[pickle.PickleBuffer] = []
    data = pickle.dumps(pickle.PickleBuffer(b"y" * SMALL), 5, buffer_callback=buffers.append)
    payload = _oob.share(data, buffers)
    assert bytes(_oob.claim(payload, os.getpid()).load()) == b"y" * SMALL  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("fd", "token", "offset", "length", "message"),
    [
        (-1, 1, 0, 10, "malformed"),
        (987654, 1, 0, 10, "cannot open"),
        (0, 1, 0, 10, "not its memfd"),
        ("memfd", 5, 0, 1 << 40, "do not fit"),
        ("memfd", 5, 100, 10, "malformed"),
        ("memfd", 6, 0, 10, "not its memfd"),
    ],
    ids=["negative-fd", "no-such-fd", "stdin", "past-the-end", "unaligned", "wrong-token"],
)
def test_claim_of_bogus_descriptor_raises_shared_buffer_error(
    fd: int | str, token: int, offset: int, length: int, message: str
) -> None:
    """Every field is checked before a byte is read: no out-of-bounds read, no SIGBUS."""
    memfd = os.memfd_create("isopool-5", os.MFD_ALLOW_SEALING)
    try:
        os.ftruncate(memfd, 4096)
        seals = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE
        fcntl.fcntl(memfd, fcntl.F_ADD_SEALS, seals)
        number = memfd if fd == "memfd" else int(fd)
        with pytest.raises(_oob.SharedBufferError, match=message):
            _oob.claim(_envelope(number, token, offset, length), os.getpid())
    finally:
        os.close(memfd)


def test_claim_of_unsealed_memfd_raises_shared_buffer_error() -> None:
    """A memfd that its sender could still shrink is refused (it could SIGBUS us)."""
    memfd = os.memfd_create("isopool-7")
    try:
        os.ftruncate(memfd, 4096)
        with pytest.raises(_oob.SharedBufferError, match="not sealed"):
            _oob.claim(_envelope(memfd, 7, 0, 10), os.getpid())
    finally:
        os.close(memfd)


def test_claim_of_memfd_said_held_by_another_process_raises() -> None:
    """A descriptor naming a process other than the worker's is refused unopened."""
    with pytest.raises(_oob.SharedBufferError, match="not"):
        _oob.claim(_envelope(3, 1, 0, 10, pid=1), os.getpid())


def test_loads_of_unclaimed_envelope_raises_shared_buffer_error() -> None:
    """_wire.loads never opens another process's memory by itself."""
    with pytest.raises(_oob.SharedBufferError, match="claimed"):
        _wire.loads(_envelope(3, 1, 0, 10))

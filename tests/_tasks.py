"""Importable task functions for the tests: each does one thing to its worker."""

from __future__ import annotations

import ctypes
import dataclasses
import os
import signal
import subprocess
import sys
import time
from pathlib import Path


def echo(value):
    return value


def add(a, b):
    return a + b


def getpid():
    return os.getpid()


def getpgid():
    return os.getpgid(0)


def segfault():
    ctypes.string_at(0)


def exit_with(code):
    os._exit(code)


def sys_exit(code):
    sys.exit(code)


def raise_value_error(message="boom"):
    raise ValueError(message)


def raise_interrupt():
    raise KeyboardInterrupt("from the task")


def hang(seconds=3600.0):
    time.sleep(seconds)


def busy_hang():
    """Spin in a C call that never returns to the interpreter loop for long."""
    while True:
        sum(range(10**7))


def sleep_then(seconds, value=None):
    time.sleep(seconds)
    return value


def kill_self(sig=signal.SIGKILL):
    os.kill(os.getpid(), sig)


def allocate(nbytes):
    block = bytearray(nbytes)
    return len(block)


def count_run(path, value=None):
    """Append a line to ``path`` (one per run) and return ``value``."""
    with open(path, "a") as f:
        f.write(f"{os.getpid()}\n")
    return value


def runs(path):
    p = Path(path)
    return len(p.read_text().splitlines()) if p.exists() else 0


def fail_n_times(path, n, value="ok"):
    """Fail (raise) the first ``n`` runs, counted in ``path``; then return ``value``."""
    count_run(path)
    if runs(path) <= n:
        raise RuntimeError(f"failure {runs(path)} of {n}")
    return value


def crash_n_times(path, n, value="ok"):
    count_run(path)
    if runs(path) <= n:
        os._exit(9)
    return value


def spawn_grandchild_and_hang(pid_file):
    """Start a sleeping child process, record its pid, then hang."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"])
    Path(pid_file).write_text(str(child.pid))
    time.sleep(3600)


def trap_sigterm_then_hang(marker):
    """On SIGTERM, write ``marker`` and exit cleanly; until then, hang."""

    def on_term(signum, frame):
        Path(marker).write_text("cleaned up")
        os._exit(0)

    signal.signal(signal.SIGTERM, on_term)
    time.sleep(3600)


def ignore_sigterm_then_hang(ready_file):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    Path(ready_file).write_text("ready")
    time.sleep(3600)


def write_then_hang(path):
    """Write this worker's pid to ``path`` (atomically: readers never see it empty), hang."""
    partial = Path(f"{path}.partial")
    partial.write_text(str(os.getpid()))
    partial.rename(path)
    time.sleep(3600)


def print_lines(n):
    for i in range(n):
        print(f"line {i} from the task")
    return n


def return_unpicklable():
    return lambda: None  # cloudpickle handles lambdas: picklable


def return_lock():
    import threading

    return threading.Lock()


def raise_unpicklable():
    import threading

    class Bad(Exception):
        def __init__(self):
            super().__init__("bad")
            self.lock = threading.Lock()

    raise Bad()


def identity_sum(*args, **kwargs):
    return sum(args) + sum(kwargs.values())


# -- for test_task.py, test_group.py and test_supervisor.py -------------------------------


def trap_sigterm_ready_then_hang(marker, ready):
    """As trap_sigterm_then_hang, but write ``ready`` once the SIGTERM handler is set."""

    def on_term(signum, frame):
        Path(marker).write_text("cleaned up")
        os._exit(0)

    signal.signal(signal.SIGTERM, on_term)
    Path(ready).write_text(str(os.getpid()))
    time.sleep(3600)


def write_after(path, seconds):
    """Sleep ``seconds``, then write ``path``: proof that the task ran to its end."""
    time.sleep(seconds)
    Path(path).write_text("done")


def record_span(directory, item, seconds=0.2):
    """Write this run's pid and start/end times to ``directory/item``; return ``item``."""
    start = time.time()
    time.sleep(seconds)
    Path(directory, str(item)).write_text(f"{os.getpid()} {start} {time.time()}")
    return item


def sleep_item(item):
    """Sleep ``item[0]`` seconds and return ``item[1]``: for completion-order tests."""
    seconds, value = item
    time.sleep(seconds)
    return value


def hang_if(item, bad="hang"):
    """Hang when ``item == bad``; otherwise return ``item``."""
    if item == bad:
        time.sleep(3600)
    return item


def raise_if(item, bad="bad"):
    """Raise ValueError when ``item == bad``; otherwise return ``item``."""
    if item == bad:
        raise ValueError(f"bad item {item!r}")
    return item


def raise_shutdown(path=None, reason="done"):
    """Count a run in ``path`` (if given), then exit normally with isopool.Shutdown."""
    import isopool

    if path is not None:
        count_run(path)
    raise isopool.Shutdown(reason)


def fail_always(path):
    """Count a run in ``path``, then raise RuntimeError."""
    count_run(path)
    raise RuntimeError(f"failure {runs(path)}")


def stream_item(item):
    """Act out ``item``: ("ok", v) returns v; ("raise", msg) raises ValueError(msg);
    ("hang", path) writes this process's pid to ``path`` and hangs."""
    kind, arg = item
    if kind == "raise":
        raise ValueError(arg)
    if kind == "hang":
        write_then_hang(arg)
    return arg


def echo_or_hang(directory, n, item):
    """Return ``item`` if it is below ``n``; else write the pid to ``directory/item`` and hang."""
    if item < n:
        return item
    write_then_hang(str(Path(directory, str(item))))


# -- for test_redis_queue.py and test_node.py ---------------------------------------------


def mark_then_sleep(path, seconds, value=None):
    """Append this run's pid to ``path`` (one line per run), sleep, then return ``value``."""
    count_run(path)
    time.sleep(seconds)
    return value


def mark_then_sleep_env(path, seconds, name):
    """As mark_then_sleep, but return the environment variable ``name`` of the worker."""
    count_run(path)
    time.sleep(seconds)
    return os.environ.get(name)


def record_start(path, label):
    """Append ``label`` to ``path`` as this task starts (the start order); return it."""
    with open(path, "a") as f:
        f.write(f"{label}\n")
    return label


def ready_then_wait_for_gate(ready, gate, timeout=60.0):
    """Write ``ready``, then block until ``gate`` exists (or ``timeout`` s): a blocker."""
    partial = Path(f"{ready}.partial")  # atomic: a reader never sees it empty
    partial.write_text(str(os.getpid()))
    partial.rename(ready)
    deadline = time.monotonic() + timeout
    while not os.path.exists(gate) and time.monotonic() < deadline:
        time.sleep(0.01)
    return os.path.exists(gate)


def node_identity():
    """Return the node this worker belongs to (``ISOPOOL_NODE``) and this process's pid."""
    return os.environ.get("ISOPOOL_NODE"), os.getpid()


@dataclasses.dataclass(frozen=True)
class FrozenError(Exception):
    """A frozen dataclass exception: setattr of anything, __cause__ too, raises."""

    code: int


def raise_frozen(code):
    raise FrozenError(code)


def count_then_exit(path, code):
    """Append a line to ``path`` (one per run), then sys.exit(code)."""
    with open(path, "a") as f:
        f.write(f"{os.getpid()}\n")
    sys.exit(code)


def _own_result_fd():
    """The worker's result pipe, found the way a hostile task could: up the stack."""
    frame = sys._getframe()
    while frame is not None:
        if "result_fd" in frame.f_locals:
            return frame.f_locals["result_fd"]
        frame = frame.f_back
    raise RuntimeError("not running in an isopool worker")


def write_into_result_pipe(data, then_return="done"):
    """Write ``data`` into the worker's own result pipe, then return normally."""
    os.write(_own_result_fd(), data)
    return then_return


def announce_huge_frame_with_cookie(length):
    """Write a well-stamped header that claims ``length`` bytes, and send none of them."""
    from isopool._core import wire as _wire
    from isopool._core import worker as _worker

    os.write(_own_result_fd(), _wire.pack_header(_wire.RESULT, 1, length, _worker._cookie))
    return "the parent is still waiting for the rest"


def touch(path, value=None):
    Path(path).touch()
    return value


def burn_cpu(seconds):
    """Spin until this process has used ``seconds`` of CPU time; return how much it used."""
    start = time.process_time()
    while time.process_time() - start < seconds:
        pass
    return time.process_time() - start


def burn_cpu_in_child(seconds):
    """Run a child process that burns ``seconds`` of CPU, and reap it."""
    code = f"import time\ns = time.process_time()\nwhile time.process_time() - s < {seconds}: pass"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def touch_bytes(nbytes):
    """Allocate ``nbytes`` and write every page, so they count in the resident set."""
    data = bytearray(nbytes)
    for i in range(0, nbytes, 4096):
        data[i] = 1
    return len(data)


def affinity():
    """The CPUs this worker may run on, sorted."""
    return sorted(os.sched_getaffinity(0))


def affinity_of_child():
    """The CPUs a child process of this worker may run on, sorted."""
    out = subprocess.run(
        [sys.executable, "-c", "import os; print(sorted(os.sched_getaffinity(0)))"],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return out.stdout.strip()


def raise_then_crash(path):
    """Raise on the first run (a reply), exit hard on every later one (no reply)."""
    marker = Path(path)
    if not marker.exists():
        marker.write_text("ran")
        raise ValueError("first run")
    os._exit(9)


def _own_task_id():
    """The id of the call this worker is running, found up the stack as for the pipe."""
    frame = sys._getframe()
    while frame is not None:
        if "task_id" in frame.f_locals and "result_fd" in frame.f_locals:
            return frame.f_locals["task_id"]
        frame = frame.f_back
    raise RuntimeError("not running in an isopool worker")


def send_bogus_shared_result(how):
    """Write a well-stamped RESULT whose shared-buffer descriptor is bogus, then exit.

    ``how``: "bad-fd" (no such descriptor), "negative-fd", "not-a-memfd" (its stdin),
    "too-large" (a buffer past the memfd's end), "unsealed", "truncated".
    """
    import pickle

    from isopool._core import oob as _oob
    from isopool._core import wire as _wire
    from isopool._core import worker as _worker
    from isopool._core import worker_slabs as _slabs

    pid, fd, token, length = os.getpid(), 987654, 1, 4096
    if how == "negative-fd":
        fd = -5
    elif how == "not-a-memfd":
        fd = 0
    elif how in ("too-large", "unsealed"):
        token = 424242
        fd = os.memfd_create(f"isopool-{token:x}", os.MFD_ALLOW_SEALING)
        os.ftruncate(fd, 4096)
        if how == "too-large":  # sealed as the real ones are, but 1 GiB short
            import fcntl

            length = 1 << 30
            seals = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, seals)
    head = _oob._HEAD.pack(_oob.MAGIC, pid, fd, 1, token)
    entry = _oob._ENTRY.pack(0, length, 0)
    body = pickle.dumps(bytearray(b"x"), protocol=5)
    payload = (head + entry)[:10] if how == "truncated" else head + entry + body
    payload += _wire.NOT_RUN
    header = _wire.pack_header(_wire.RESULT, _own_task_id(), len(payload), _worker._cookie)
    # Stay alive (with the memfd) until the parent has looked at it: it RELEASEs every
    # shared result it reads, on this worker's control pipe (token 0: unreadable), and
    # the watcher thread pops the token from _held then.
    awaited = 0 if how == "truncated" else token
    with _slabs._held_changed:
        _slabs._held[awaited] = None
    os.write(_own_result_fd(), header + payload)
    with _slabs._held_changed:
        _slabs._held_changed.wait_for(lambda: awaited not in _slabs._held, 30.0)
    os._exit(0)


def echo_then_die_after(value, delay):
    """Return ``value``, and SIGKILL this worker ``delay`` seconds from now, mid-reply."""
    import signal
    import threading
    import time

    def kill():
        time.sleep(delay)
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=kill, daemon=True).start()
    return value


def die_holding(value):
    """SIGKILL this worker while it holds ``value`` (a large argument)."""
    import signal

    os.kill(os.getpid(), signal.SIGKILL)

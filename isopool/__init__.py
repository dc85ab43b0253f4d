"""isopool: every task in its own process, supervised the way OTP supervises tasks.

A guide, in the order of Elixir's ``Task`` docs:

1. Run and wait: ``Pool.submit(fn, *args)`` returns a ``Task`` (a
   ``concurrent.futures.Future``); ``task.result(timeout)`` waits for it.
2. Tasks are processes: each runs in a worker process forked from isopool's fork
   server; calls and results are pickled (cloudpickle for lambdas and closures).
3. Crashes and time-outs: a worker that dies fails only the task it ran
   (``TaskCrashError``); ``timeout=`` stops a task's whole process group
   (``TaskTimeoutError``); ``task.kill()`` stops one task.
4. Restarts: ``restart="transient"`` re-runs a failed task, at most
   ``max_restarts`` times within ``max_seconds`` (``RestartLimitError``).
5. The Executor drop-in: ``Pool`` is a ``concurrent.futures.Executor``.
6. Elixir's Task API: ``Task.async_``/``await_``/``yield_``/``shutdown``,
   ``async_stream``, linked tasks in a ``TaskGroup``, and ``TaskSupervisor``.
"""

# Layout: three layers, imports pointing down only (STYLE.md §1).
#   _core/   the process engine; knows nothing of Task's API or Redis:
#            wire (frames, pickling) · oob (large buffers in memfd slabs) · worker (the
#            child's loop) · forkserver / process / reaper (OS processes) · share
#            (multiprocessing objects in initargs) · run (a run's record, phases; the
#            Runnable protocol the engine sees tasks through) · handle (a worker's record
#            and pipes) · dispatch / machine (the decisions: a state machine fed events
#            and a clock, no I/O) · monitor (the epoll thread and the machine's port) ·
#            outcome (settling futures without user code) · resolver (callbacks, logs) ·
#            policy / queue (restart intensity, back-off; pending queues) · usage ·
#            metrics (plain-int counters)
#   the API  _errors · _spec (options) · _task (Task) · _pool (Pool) · _batched (map's
#            batches) · _group (links, TaskGroup) · _many (await_many, yield_many,
#            as_completed) · _progress · _stream (async_stream) · _supervisor ·
#            _prometheus (collectors, loaded on use) · _cli / _status (the command line)
#   _dist/   Redis and remote nodes, imported lazily (see __getattr__): signing ·
#            redis_common / redis_queue / redis_async / redis_lua / redis_connect (the
#            queue, both clients, its scripts, Redis or Cluster) · schedules / cron ·
#            queue_worker (isopool worker) · node / remote (isopool node, connect) ·
#            inspect / dashboard (the read-only snapshot and the web app, _static/)

from __future__ import annotations

from typing import TYPE_CHECKING as _TYPE_CHECKING

from ._core.usage import Usage as Usage
from ._errors import BrokenPoolError as BrokenPoolError
from ._errors import IsopoolError as IsopoolError
from ._errors import JobNotFoundError as JobNotFoundError
from ._errors import MaxChildrenError as MaxChildrenError
from ._errors import NodeDownError as NodeDownError
from ._errors import PoolClosedError as PoolClosedError
from ._errors import ProtocolError as ProtocolError
from ._errors import QueueUnavailableError as QueueUnavailableError
from ._errors import RestartLimitError as RestartLimitError
from ._errors import SerializationError as SerializationError
from ._errors import Shutdown as Shutdown
from ._errors import SignatureError as SignatureError
from ._errors import TaskCrashError as TaskCrashError
from ._errors import TaskError as TaskError
from ._errors import TaskTimeoutError as TaskTimeoutError
from ._errors import UnknownSupervisorError as UnknownSupervisorError
from ._group import TaskGroup as TaskGroup
from ._many import as_completed as as_completed
from ._pool import Pool as Pool
from ._pool import PoolOptions as PoolOptions
from ._spec import Restart as Restart
from ._spec import ShutdownTimeout as ShutdownTimeout
from ._spec import TaskOptions as TaskOptions
from ._supervisor import SupervisorOptions as SupervisorOptions
from ._supervisor import TaskSupervisor as TaskSupervisor
from ._task import Reply as Reply
from ._task import Task as Task
from ._version import __version__ as __version__

if _TYPE_CHECKING:  # the distributed layer, loaded on first use (see __getattr__)
    from ._dist.redis_async import AsyncJob as AsyncJob
    from ._dist.redis_async import AsyncRedisQueue as AsyncRedisQueue
    from ._dist.redis_queue import DeadLetter as DeadLetter
    from ._dist.redis_queue import Job as Job
    from ._dist.redis_queue import JobOptions as JobOptions
    from ._dist.redis_queue import QueueOptions as QueueOptions
    from ._dist.redis_queue import RedisQueue as RedisQueue
    from ._dist.redis_queue import Schedule as Schedule
    from ._dist.remote import Cluster as Cluster
    from ._dist.remote import NodeInfo as NodeInfo
    from ._dist.remote import RemoteSupervisor as RemoteSupervisor
    from ._dist.remote import RemoteTask as RemoteTask
    from ._dist.remote import connect as connect

# The Redis queue and remote nodes are imported when first used, not with isopool:
# every worker's fork server imports this package, and worker start-up is a
# benchmark figure (the core never imports the distributed layer; STYLE.md §1).
_LAZY = {
    "AsyncJob": "_dist.redis_async",
    "AsyncRedisQueue": "_dist.redis_async",
    "Cluster": "_dist.remote",
    "DeadLetter": "_dist.redis_queue",
    "Job": "_dist.redis_queue",
    "JobOptions": "_dist.redis_queue",
    "NodeInfo": "_dist.remote",
    "QueueOptions": "_dist.redis_queue",
    "RedisQueue": "_dist.redis_queue",
    "RemoteSupervisor": "_dist.remote",
    "RemoteTask": "_dist.remote",
    "Schedule": "_dist.redis_queue",
    "connect": "_dist.remote",
}


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'isopool' has no attribute {name!r}")
    import importlib

    obj = getattr(importlib.import_module(f".{module}", __name__), name)
    if isinstance(obj, type):
        obj.__module__ = "isopool"
    globals()[name] = obj
    return obj


__all__ = [
    "AsyncJob",
    "AsyncRedisQueue",
    "BrokenPoolError",
    "Cluster",
    "DeadLetter",
    "IsopoolError",
    "Job",
    "JobNotFoundError",
    "JobOptions",
    "MaxChildrenError",
    "NodeDownError",
    "NodeInfo",
    "Pool",
    "PoolClosedError",
    "PoolOptions",
    "ProtocolError",
    "QueueOptions",
    "QueueUnavailableError",
    "RedisQueue",
    "RemoteSupervisor",
    "RemoteTask",
    "Reply",
    "Restart",
    "RestartLimitError",
    "Schedule",
    "SerializationError",
    "Shutdown",
    "ShutdownTimeout",
    "SignatureError",
    "SupervisorOptions",
    "Task",
    "TaskCrashError",
    "TaskError",
    "TaskGroup",
    "TaskOptions",
    "TaskSupervisor",
    "TaskTimeoutError",
    "UnknownSupervisorError",
    "Usage",
    "__version__",
    "as_completed",
    "connect",
]

# Show public objects as isopool.X in reprs, tracebacks and pickles.
for _name in __all__:
    _obj = globals().get(_name)
    if isinstance(_obj, type):
        _obj.__module__ = "isopool"
del _name, _obj

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

# Layout: _errors (exceptions) · _spec (task options) · _policy (restart logic) ·
# _wire (frames, pickling) · _worker (the worker loop) · _forkserver / _process (OS
# processes) · _share (multiprocessing objects in initargs) · _monitor (the supervising
# thread) · _outcome (settling futures) ·
# _queue (pending tasks) · _task (Task) · _pool (Pool) · _group (links, TaskGroup) ·
# _many (await_many, yield_many, as_completed) · _progress (progress=) · _usage
# (Usage) · _stream (async_stream) · _supervisor
# (TaskSupervisor) · _signing (HMAC envelopes) · _redis_queue (RedisQueue, Job) ·
# _redis_lua (its scripts) · _redis_connect (Redis or Redis Cluster clients) ·
# _redis_async (AsyncRedisQueue, AsyncJob) · _redis_common (what both clients say) ·
# _queue_worker (isopool worker) · _node (isopool node) · _remote (connect, remote
# supervisors) · _cli (the command line) · _inspect (read-only snapshot of queues and
# nodes) · _status (isopool status, dashboard) · _dashboard (the web app, _static/).

from __future__ import annotations

from typing import TYPE_CHECKING as _TYPE_CHECKING

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
from ._usage import Usage as Usage
from ._version import __version__ as __version__

if _TYPE_CHECKING:  # the distributed layer, loaded on first use (see __getattr__)
    from ._redis_async import AsyncJob as AsyncJob
    from ._redis_async import AsyncRedisQueue as AsyncRedisQueue
    from ._redis_queue import DeadLetter as DeadLetter
    from ._redis_queue import Job as Job
    from ._redis_queue import JobOptions as JobOptions
    from ._redis_queue import QueueOptions as QueueOptions
    from ._redis_queue import RedisQueue as RedisQueue
    from ._redis_queue import Schedule as Schedule
    from ._remote import Cluster as Cluster
    from ._remote import NodeInfo as NodeInfo
    from ._remote import RemoteSupervisor as RemoteSupervisor
    from ._remote import RemoteTask as RemoteTask
    from ._remote import connect as connect

# The Redis queue and remote nodes are imported when first used, not with isopool:
# every worker's fork server imports this package, and worker start-up is a
# benchmark figure (the core never imports the distributed layer; STYLE.md §1).
_LAZY = {
    "AsyncJob": "_redis_async",
    "AsyncRedisQueue": "_redis_async",
    "Cluster": "_remote",
    "DeadLetter": "_redis_queue",
    "Job": "_redis_queue",
    "JobOptions": "_redis_queue",
    "NodeInfo": "_remote",
    "QueueOptions": "_redis_queue",
    "RedisQueue": "_redis_queue",
    "RemoteSupervisor": "_remote",
    "RemoteTask": "_remote",
    "Schedule": "_redis_queue",
    "connect": "_remote",
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

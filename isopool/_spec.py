"""Validate the description of a task: its function and its per-task options.

Every check of task arguments happens here, so the rest of isopool can trust what it
is given: a time-out is a non-negative float, a restart policy is one of OTP's three
words, a memory limit is a number of bytes, and a ``"pkg.mod:func"`` name imports.
Errors are plain ``ValueError``/``TypeError`` that name the parameter and the value.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
import os
import re
import sys
from collections.abc import Callable, Iterable
from typing import Final, Literal

__all__ = [
    "DEFAULT_PRIORITY",
    "MAX_MEMORY_LIMIT",
    "MAX_PRIORITY",
    "MAX_SECONDS",
    "Restart",
    "ShutdownTimeout",
    "TaskOptions",
    "check_buffersize",
    "check_cpus",
    "check_duration",
    "check_max_workers",
    "check_positive_int",
    "check_seconds",
    "check_wait",
    "describe_function",
    "parse_memory_limit",
    "resolve_function",
]

Restart = Literal["temporary", "transient", "permanent"]
"""OTP's restart policies: never re-run, re-run after an abnormal exit, always re-run."""

ShutdownTimeout = float | Literal["brutal_kill"]
"""Seconds of grace between SIGTERM and SIGKILL, or ``"brutal_kill"`` for SIGKILL at once."""

RESTARTS: Final = ("temporary", "transient", "permanent")

# Priorities are small integers so that the Redis queue can keep one stream per band;
# ten bands (0 most urgent) is what Celery and most brokers offer.
MAX_PRIORITY: Final = 9
DEFAULT_PRIORITY: Final = 5

# The longest duration accepted anywhere: about 31.7 years, longer than any real wait,
# and far enough under threading.TIMEOUT_MAX (292 years on Linux) that a deadline plus
# a stop's grace and margin never overflows Lock.acquire or epoll (OverflowError).
MAX_SECONDS: Final = 1e9

# setrlimit() takes a C long (RLIM_INFINITY, 2**64 - 1, is "no limit" and does not fit
# one): a memory_limit above this could never be applied in the worker.
MAX_MEMORY_LIMIT: Final = sys.maxsize

_UNITS: Final = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "m": 1000**2,
    "mb": 1000**2,
    "g": 1000**3,
    "gb": 1000**3,
    "t": 1000**4,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}
_MEMORY_RE: Final = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")


def check_seconds(name: str, value: object, *, none_allowed: bool = True) -> float | None:
    """Return ``value`` as float seconds, or raise naming ``name``.

    NaN, infinities and anything above ``MAX_SECONDS`` are refused: None (where
    allowed) is how isopool spells "no limit", never ``math.inf``.

    Raises:
        TypeError: ``value`` is neither a number nor None.
        ValueError: ``value`` is negative, NaN, infinite or above ``MAX_SECONDS``.
    """
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number of seconds, got {value!r}")
    try:
        seconds = float(value)
    except OverflowError:
        seconds = math.inf
    if math.isnan(seconds) or seconds < 0:
        raise ValueError(f"{name} must be a non-negative number of seconds, got {value!r}")
    if seconds > MAX_SECONDS:
        hint = "; use None for no limit" if none_allowed else ""
        raise ValueError(
            f"{name} must be a non-negative number of seconds up to 1e9 (31 years), "
            f"got {value!r}{hint}"
        )
    return seconds


def check_duration(name: str, value: object) -> float:
    """Return ``value`` as float seconds (None not allowed), or raise naming ``name``."""
    if value is None:
        raise TypeError(f"{name} must be a number of seconds, got None")
    seconds = check_seconds(name, value, none_allowed=False)
    return 0.0 if seconds is None else seconds


def check_wait(name: str, value: object) -> float | None:
    """Return a ``Future.result``-style wait in seconds: None, or a number.

    As in ``concurrent.futures``, a negative wait is allowed and means "do not
    block" (``Executor.map`` passes what is left of its time-out, which may be
    below zero). NaN, infinities and waits above ``MAX_SECONDS`` are refused.

    Raises:
        TypeError: ``value`` is neither a number nor None.
        ValueError: ``value`` is NaN, infinite or above ``MAX_SECONDS``.
    """
    if value is None:
        return None
    if isinstance(value, int | float) and not isinstance(value, bool) and value < 0:
        return 0.0  # what Condition.wait does with any negative time-out
    return check_seconds(name, value)


def check_max_workers(value: object) -> int:
    """Return ``value`` if it is a worker count >= 1, with the stdlib's wording."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"max_workers must be an integer, got {value!r}")
    if value <= 0:
        # ProcessPoolExecutor's own words, so code matching its message still matches.
        raise ValueError(f"max_workers must be greater than 0, got {value!r}")
    return value


def check_buffersize(value: object) -> int | None:
    """Return ``Executor.map``'s ``buffersize`` (Python 3.14): None or an int >= 1.

    The messages begin with 3.14's words; like 3.14, a bool passes as an int.
    """
    if value is None:
        return None
    if not isinstance(value, int):
        raise TypeError(f"buffersize must be an integer or None, got {value!r}")
    if value < 1:
        raise ValueError(f"buffersize must be None or > 0, got {value!r}")
    return int(value)


def check_positive_int(name: str, value: object, *, allow_zero: bool = False) -> int:
    """Return ``value`` if it is an int >= 1 (>= 0 with ``allow_zero``), else raise."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    if value < (0 if allow_zero else 1):
        bound = "non-negative" if allow_zero else "at least 1"
        raise ValueError(f"{name} must be {bound}, got {value!r}")
    return value


def check_restart(value: object) -> Restart:
    """Return ``value`` if it is a restart policy name, else raise ValueError."""
    if value not in RESTARTS:
        raise ValueError(f"restart must be 'temporary', 'transient' or 'permanent', got {value!r}")
    return value


def check_shutdown(value: object) -> ShutdownTimeout:
    """Return a grace period in seconds or ``"brutal_kill"``, else raise."""
    if value == "brutal_kill":
        return "brutal_kill"
    if isinstance(value, str):
        raise ValueError(f"shutdown must be a number of seconds or 'brutal_kill', got {value!r}")
    return check_duration("shutdown", value)


def check_priority(value: object) -> int:
    """Return ``value`` if it is a priority 0..MAX_PRIORITY (0 is most urgent)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"priority must be an integer 0..{MAX_PRIORITY}, got {value!r}")
    if not 0 <= value <= MAX_PRIORITY:
        raise ValueError(
            f"priority must be between 0 (most urgent) and {MAX_PRIORITY}, got {value!r}"
        )
    return value


def parse_memory_limit(value: object) -> int | None:
    """Return a memory limit in bytes from an int or a string such as ``"512MB"``.

    Units are decimal (kB, MB, GB, TB) or binary (KiB, MiB, GiB, TiB), case-blind.

    Raises:
        TypeError: ``value`` is neither None, an int nor a str.
        ValueError: the string does not parse, or the limit is below 1 MiB or above
            ``MAX_MEMORY_LIMIT`` (the most ``setrlimit`` takes).
    """
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise TypeError(f"memory_limit must be bytes or a string like '512MB', got {value!r}")
    if isinstance(value, int):
        limit = value
    else:
        match = _MEMORY_RE.match(value)
        unit = match.group(2).lower() if match else None
        if match is None or unit not in _UNITS:
            raise ValueError(
                f"memory_limit must be bytes or a string like '512MB' or '2GiB', got {value!r}"
            )
        number = float(match.group(1))  # inf for a 400-digit string: refused below
        limit = int(number * _UNITS[unit]) if number <= MAX_MEMORY_LIMIT else MAX_MEMORY_LIMIT + 1
    if limit < 1024**2:
        raise ValueError(f"memory_limit must be at least 1 MiB, got {value!r}")
    if limit > MAX_MEMORY_LIMIT:
        raise ValueError(
            f"memory_limit must be at most {MAX_MEMORY_LIMIT} bytes (the most setrlimit "
            f"accepts; None for no limit), got {value!r}"
        )
    return limit


def check_cpus(value: object) -> frozenset[int] | None:
    """Return the CPUs to pin to, as a frozenset, from an iterable of CPU numbers.

    Each CPU must exist on this machine and be in this process's affinity set
    (``os.sched_getaffinity(0)``): a worker cannot be given a CPU its parent may not
    use (a container's cpuset, a ``taskset`` around the program).

    Raises:
        TypeError: ``value`` is not None nor an iterable of ints.
        ValueError: it is empty, or a CPU does not exist or is not allowed; the
            message names the CPU and the CPUs that are.
    """
    if value is None:
        return None
    if isinstance(value, str | bytes) or not isinstance(value, Iterable):
        raise TypeError(f"cpus must be an iterable of CPU numbers or None, got {value!r}")
    cpus = list(value)
    for cpu in cpus:
        if isinstance(cpu, bool) or not isinstance(cpu, int):
            raise TypeError(f"cpus must be CPU numbers (ints), got {cpu!r} in {value!r}")
    if not cpus:
        raise ValueError(f"cpus must name at least one CPU, got {value!r}")
    allowed = os.sched_getaffinity(0)
    count = os.cpu_count() or 0
    for cpu in sorted(set(cpus)):
        if not 0 <= cpu < count:
            raise ValueError(
                f"cpus: CPU {cpu} does not exist (this machine has CPUs 0-{count - 1})"
            )
        if cpu not in allowed:
            raise ValueError(
                f"cpus: CPU {cpu} is not in this process's CPU affinity set "
                f"({', '.join(map(str, sorted(allowed)))}), so no worker may run on it"
            )
    return frozenset(cpus)


def resolve_function(name: str) -> Callable[..., object]:
    """Import and return the function named ``"package.module:function"``.

    The part after the colon may be a dotted path (``"pkg.mod:Class.method"``).

    Raises:
        ValueError: the name is malformed, the module does not import, or the
            attribute is missing or not callable; the message says which.
    """
    module_name, sep, attr_path = name.partition(":")
    if not sep or not module_name or not attr_path:
        raise ValueError(f"fn must be a callable or 'package.module:function', got {name!r}")
    try:
        obj: object = importlib.import_module(module_name)
    except Exception as exc:  # ImportError, or whatever the module raised while importing
        raise ValueError(
            f"fn {name!r}: module {module_name!r} does not import: {type(exc).__name__}: {exc}"
        ) from exc
    for part in attr_path.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ValueError(
                f"fn {name!r}: {module_name!r} has no attribute {attr_path!r}"
            ) from None
    if not callable(obj):
        raise ValueError(f"fn {name!r} is not callable (it is {type(obj).__name__})")
    return obj


def describe_function(fn: object) -> str:
    """Return a short readable name for a task's function, for messages and logs."""
    if isinstance(fn, str):
        return fn
    name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None)
    if isinstance(name, str):
        return name
    return type(fn).__name__


@dataclasses.dataclass(frozen=True, slots=True)
class TaskOptions:
    """The validated per-task settings; one instance is shared by many tasks.

    Attributes:
        timeout: Seconds a run may take before it is stopped; None for no limit.
        restart: "temporary", "transient" or "permanent".
        max_restarts: Restarts allowed within ``max_seconds``.
        max_seconds: The restart-intensity window, in seconds.
        shutdown: Grace seconds between SIGTERM and SIGKILL, or "brutal_kill".
        memory_limit: Bytes the worker may hold while running the task, or None.
        priority: 0 (most urgent) to 9; pending tasks start by priority, then FIFO.
        max_retries: None (default) for OTP's restart intensity; a number for a
            per-task retry budget with exponential back-off instead.
        backoff: Seconds before the first retry when ``max_retries`` is set; each
            retry doubles it (up to 60 s), with jitter.
        cpus: The CPUs the task runs on (its worker's affinity is set around the
            call and restored after); None: wherever its worker runs.
    """

    timeout: float | None = None
    restart: Restart = "temporary"
    max_restarts: int = 3
    max_seconds: float = 5.0
    shutdown: ShutdownTimeout = 5.0
    memory_limit: int | None = None
    priority: int = DEFAULT_PRIORITY
    max_retries: int | None = None
    backoff: float = 0.1
    cpus: frozenset[int] | None = None

    @classmethod
    def build(
        cls,
        *,
        timeout: object = None,
        restart: object = "temporary",
        max_restarts: object = 3,
        max_seconds: object = 5.0,
        shutdown: object = 5.0,
        memory_limit: object = None,
        priority: object = DEFAULT_PRIORITY,
        max_retries: object = None,
        backoff: object = 0.1,
        cpus: object = None,
    ) -> TaskOptions:
        """Validate every option and return the frozen set; raise on the first bad one."""
        return cls(
            timeout=check_seconds("timeout", timeout),
            restart=check_restart(restart),
            max_restarts=check_positive_int("max_restarts", max_restarts, allow_zero=True),
            max_seconds=check_duration("max_seconds", max_seconds),
            shutdown=check_shutdown(shutdown),
            memory_limit=parse_memory_limit(memory_limit),
            priority=check_priority(priority),
            max_retries=(
                None
                if max_retries is None
                else check_positive_int("max_retries", max_retries, allow_zero=True)
            ),
            backoff=check_duration("backoff", backoff),
            cpus=check_cpus(cpus),
        )

    def replace(self, **changes: object) -> TaskOptions:
        """Return a copy with ``changes`` validated and applied; unknown names raise."""
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise TypeError(f"unknown task option(s): {', '.join(sorted(unknown))}")
        merged = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        merged.update(changes)
        return TaskOptions.build(**merged)

"""Run CPython's own test_concurrent_futures process-pool classes against isopool.Pool.

Usage (from the repository root)::

    python tests/stdlib/run.py --list                  # the classes it can run
    python tests/stdlib/run.py ProcessPoolSpawnWaitTest FutureTests
    python tests/stdlib/run.py ProcessPoolSpawnProcessPoolExecutorTest.test_traceback
    python tests/stdlib/run.py --run-pending ...       # also run the PENDING_FIXES tests
    python tests/stdlib/run.py --pending-only ...      # only those, as expected failures

Before the stdlib test modules are imported, ``concurrent.futures.ProcessPoolExecutor``
is replaced by ``isopool.Pool``, in this process only (``tests/test_stdlib_suite.py``
starts one such process per class, never patching pytest's own). The fork, forkserver
and spawn mixins all bind it at class creation, so all three run isopool (which
accepts ``mp_context`` and ignores it). Interpreters the tests start themselves get the
same substitution from ``shim/sitecustomize.py``.

Two lists below say which tests are not expected to pass, each entry with its reason:
``BY_DESIGN`` (isopool differs on purpose) and ``PENDING_FIXES`` (isopool should pass,
does not yet; the lead engineer empties it). Both are skipped, with the reason, so a
change in either direction shows in the output.
"""

from __future__ import annotations

import argparse
import faulthandler
import importlib
import json
import os
import pkgutil
import signal
import sys
import unittest
from collections.abc import Iterator
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[1]

# Tests whose assertion contradicts isopool's design: a worker's death fails only its
# task (the pool is never broken by a task), and ProcessPoolExecutor's private
# attributes do not exist. Keyed by "<class that defines the test>.<test name>".
_PRIVATE = "reads ProcessPoolExecutor's private "
BY_DESIGN: dict[str, str] = {
    "ProcessPoolExecutorTest.test_killed_child": (
        "asserts that one killed worker breaks the whole pool (and reads _processes)"
    ),
    "ProcessPoolExecutorTest.test_saturation": _PRIVATE + "_processes and _max_workers",
    "ProcessPoolExecutorTest.test_idle_process_reuse_one": _PRIVATE + "_processes",
    "ProcessPoolExecutorTest.test_idle_process_reuse_multiple": _PRIVATE + "_processes",
    "ProcessPoolExecutorTest.test_max_tasks_per_child": _PRIVATE + "_processes",
    "ProcessPoolExecutorTest.test_max_tasks_per_child_defaults_to_spawn_context": (
        _PRIVATE + "_mp_context"
    ),
    "ProcessPoolShutdownTest.test_processes_terminate": _PRIVATE + "_processes",
    "ProcessPoolShutdownTest.test_context_manager_shutdown": _PRIVATE + "_processes",
    "ProcessPoolShutdownTest.test_del_shutdown": (
        _PRIVATE + "_executor_manager_thread, _processes and _call_queue"
    ),
    "ProcessPoolShutdownTest.test_shutdown_no_wait": (
        _PRIVATE + "_executor_manager_thread, _processes and _call_queue"
    ),
    "ExecutorDeadlockTest.test_shutdown_deadlock_pickle": _PRIVATE + "_executor_manager_thread",
    # 3.13+: stops ProcessPoolExecutor's second internal thread (its queue feeder) from
    # starting; isopool starts one thread, so nothing fails and map() runs mul(x).
    "ProcessPoolExecutorTest.test_python_finalization_error": (
        "mocks threading._start_joinable_thread to fail ProcessPoolExecutor's private second thread"
    ),
}

# Tests that isopool should pass but does not yet; each entry is a diagnosis: what the
# test asserts, what isopool does instead, what change in isopool makes it pass. Empty:
# every stdlib test that is not in BY_DESIGN passes.
PENDING_FIXES: dict[str, str] = {}

# The stdlib's process-pool classes are these groups, each crossed with these mixins
# (test_concurrent_futures' create_executor_tests names them "<mixin><group>Test").
MIXINS = ("ProcessPoolFork", "ProcessPoolForkserver", "ProcessPoolSpawn")
GROUPS = (
    "Initializer",
    "FailingInitializer",
    "ProcessPoolShutdown",
    "Wait",
    "AsCompleted",
    "ProcessPoolExecutor",
    "ExecutorDeadlock",
)
# Classes outside that cross that run what a Pool returns; the second is 3.13+.
EXTRA_CLASSES = ("FutureTests", "FailingInitializerResourcesTest")


def expected_classes(version: tuple[int, int] | None = None) -> list[str]:
    """The classes this runner should find in the suite for ``version``, sorted."""
    version = version or sys.version_info[:2]
    names = [f"{mixin}{group}Test" for mixin in MIXINS for group in GROUPS]
    names += EXTRA_CLASSES if version >= (3, 13) else EXTRA_CLASSES[:1]
    return sorted(names)


RESULT_MARK = "STDLIB-RESULT "


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("classes", nargs="*", help="stdlib TestCase class names")
    parser.add_argument("--list", action="store_true", help="print the runnable classes")
    parser.add_argument("--root", help="folder holding the stdlib's test package")
    parser.add_argument("--run-pending", action="store_true", help="run PENDING_FIXES too")
    parser.add_argument(
        "--pending-only",
        action="store_true",
        help="run only the PENDING_FIXES tests, as expected failures",
    )
    parser.add_argument(
        "--check-lists", action="store_true", help="print list keys that name no test"
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=0,
        help="dump every thread's stack and exit after this many s (via SIGALRM)",
    )
    args = parser.parse_args(argv)
    # Line by line, so a hang's faulthandler dump (which exits at once) follows the
    # name of the test that hung.
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    if args.timeout:
        # Not faulthandler.dump_traceback_later: its watchdog is a thread, and a
        # process with threads cannot hand fork-context objects to isopool's workers
        # (the stdlib tests pass such Queues). SIGALRM needs no thread: faulthandler
        # dumps every stack on it, and the process then dies of the alarm.
        faulthandler.register(signal.SIGALRM, all_threads=True, chain=True)
        signal.alarm(max(1, int(args.timeout)))
    root = Path(args.root) if args.root else _suite_root()
    install_isopool(root)
    classes = process_pool_classes()
    if args.list:
        print("\n".join(sorted(classes)))
        return 0
    if args.check_lists:
        print(json.dumps(unknown_list_keys()))
        return 0
    unknown = [name for name in args.classes if name.partition(".")[0] not in classes]
    if unknown or not args.classes:
        parser.error(f"unknown or no class names {unknown}; see --list")
    suite = load(classes, args.classes)
    if args.pending_only:
        suite = only_pending(suite)
    else:
        mark_expected_differences(suite, run_pending=args.run_pending)
    result = unittest.TextTestRunner(stream=sys.stdout, verbosity=2).run(suite)
    if args.pending_only:
        stop_leftover_children()
    failed = [test.id() for test, _ in result.failures + result.errors]
    failed += [test.id() for test in result.unexpectedSuccesses]
    # testsRun counts skipped tests before 3.12 only: report what was collected too.
    counts = {"collected": suite.countTestCases(), "run": result.testsRun}
    print(RESULT_MARK + json.dumps({**counts, "failed": failed}), flush=True)
    return 0 if result.wasSuccessful() else 1


def _suite_root() -> Path:
    sys.path.insert(0, str(HERE))
    import suite  # tests/stdlib/suite.py, next to this file

    return suite.suite_root()


def install_isopool(root: Path) -> None:
    """Put the stdlib suite first on the path and isopool.Pool in ProcessPoolExecutor's place."""
    sys.path[:0] = [str(root), str(REPO_ROOT)]
    # Interpreters started by test.support.script_helper must find the same suite and
    # get the same substitution; script_helper drops the environment (-I) unless it
    # believes the interpreter needs it, which it now does.
    inherited = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(
        [str(HERE / "shim"), str(root), str(REPO_ROOT), *([inherited] if inherited else [])]
    )
    from test.support import script_helper

    setattr(script_helper, "__cached_interp_requires_environment", True)

    import concurrent.futures

    import isopool

    concurrent.futures.ProcessPoolExecutor = isopool.Pool  # type: ignore[misc]


def process_pool_classes() -> dict[str, type[unittest.TestCase]]:
    """Every stdlib TestCase class that runs a ProcessPoolExecutor, by name."""
    found: dict[str, type[unittest.TestCase]] = {}
    for module in _suite_modules():
        for name, value in vars(module).items():
            if not (isinstance(value, type) and issubclass(value, unittest.TestCase)):
                continue
            if value.__module__ != module.__name__:
                continue
            mixins = [klass.__name__ for klass in value.__mro__]
            if name in EXTRA_CLASSES or any(
                m.startswith("ProcessPool") and m.endswith("Mixin") for m in mixins
            ):
                found[name] = value
    return found


def _suite_modules() -> Iterator[object]:
    package = importlib.import_module("test.test_concurrent_futures")
    yield package
    for info in pkgutil.iter_modules(getattr(package, "__path__", [])):
        if info.name.startswith("test_"):
            yield importlib.import_module(f"{package.__name__}.{info.name}")


def load(classes: dict[str, type[unittest.TestCase]], names: list[str]) -> unittest.TestSuite:
    """A suite of the named classes ("Class") and single tests ("Class.test_name")."""
    loader = unittest.TestLoader()
    suite = unittest.TestSuite()
    for name in names:
        class_name, _, test_name = name.partition(".")
        cls = classes[class_name]
        suite.addTest(cls(test_name) if test_name else loader.loadTestsFromTestCase(cls))
    return suite


def mark_expected_differences(suite: unittest.TestSuite, *, run_pending: bool) -> None:
    """Skip the BY_DESIGN and (unless asked to run them) PENDING_FIXES tests, with reasons."""
    for test in _tests(suite):
        name = test._testMethodName
        cls = type(test)
        key = f"{_defining_class(cls, name)}.{name}"
        if key in BY_DESIGN:
            reason = f"isopool differs by design: {BY_DESIGN[key]}"
        elif key in PENDING_FIXES and not run_pending:
            reason = f"PENDING_FIXES: {PENDING_FIXES[key]}"
        else:
            continue
        setattr(cls, name, unittest.skip(reason)(getattr(cls, name)))


def only_pending(suite: unittest.TestSuite) -> unittest.BaseTestSuite:
    """The PENDING_FIXES tests of ``suite``, each marked as an expected failure.

    A pending test that passes is then an "unexpected success", which fails the run:
    isopool was fixed, and its entry must leave PENDING_FIXES.
    """
    # BaseTestSuite runs no module fixtures: a failing pending test may leave a
    # multiprocessing Manager behind (test_ressources_gced_in_workers does), and the
    # stdlib's module clean-up would wait for it for ever.
    pending = unittest.BaseTestSuite()
    for test in _tests(suite):
        name = test._testMethodName
        cls = type(test)
        if f"{_defining_class(cls, name)}.{name}" in PENDING_FIXES:
            setattr(cls, name, unittest.expectedFailure(getattr(cls, name)))
            pending.addTest(test)
    return pending


def stop_leftover_children() -> None:
    """Terminate the multiprocessing children that failed tests left running."""
    import multiprocessing

    for child in multiprocessing.active_children():
        child.terminate()
        child.join(10)


def unknown_list_keys() -> dict[str, list[str]]:
    """The BY_DESIGN and PENDING_FIXES keys whose class, or test, this suite lacks."""
    defined: dict[str, type] = {}
    for module in _suite_modules():
        defined.update((n, v) for n, v in vars(module).items() if isinstance(v, type))
    unknown: dict[str, list[str]] = {"classes": [], "tests": []}
    for key in [*BY_DESIGN, *PENDING_FIXES]:
        class_name, _, test_name = key.partition(".")
        if class_name not in defined:
            unknown["classes"].append(key)
        elif not hasattr(defined[class_name], test_name):
            unknown["tests"].append(key)
    return unknown


def _tests(suite: unittest.TestSuite) -> Iterator[unittest.TestCase]:
    for item in suite:
        if isinstance(item, unittest.TestSuite):
            yield from _tests(item)
        else:
            yield item


def _defining_class(cls: type, name: str) -> str:
    for klass in cls.__mro__:
        if name in vars(klass):
            return klass.__name__
    return cls.__name__


if __name__ == "__main__":
    sys.exit(main())

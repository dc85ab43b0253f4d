"""CPython's own test_concurrent_futures, run with isopool.Pool as ProcessPoolExecutor.

The drop-in promise, checked by the suite that defines the contract. Each stdlib
TestCase class is one pytest item that runs ``tests/stdlib/run.py <Class>`` in a fresh
interpreter; only that interpreter has ``concurrent.futures.ProcessPoolExecutor``
replaced, never this pytest process. xdist spreads the classes over its workers.

The suite comes from this interpreter (3.13+) or from Debian's libpython3.11-testsuite
(3.11, 3.12), fetched once into ``.ci/cache/`` (see ``tests/stdlib/suite.py``). Where it
cannot be had, the items skip and say why; CI sets ``ISOPOOL_REQUIRE_STDLIB_SUITE=1``
to make that a failure instead. Tests isopool differs on by design, or does not pass
yet, are listed with their reasons in ``run.py`` (``BY_DESIGN``, ``PENDING_FIXES``).

Run just this suite with ``python -m pytest tests/test_stdlib_suite.py -n auto``.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.stdlib import run as runner
from tests.stdlib import suite

RUNNER = Path(runner.__file__)
# A class runs in 1-20 s on two busy cores; this bounds a hang with a 10x margin. The
# runner dumps every thread's stack a little earlier, so a hang shows where it hung.
CLASS_TIMEOUT = 200.0
# Measured under 1 s each; every other class takes 3-20 s, so it is marked slow.
FAST_GROUPS = ("InitializerTest",)


@pytest.fixture(scope="session")
def stdlib_root() -> Path:
    """The folder whose ``test`` package is CPython's suite, fetched on first use."""
    try:
        return suite.suite_root()
    except suite.SuiteUnavailableError as exc:
        if os.environ.get("ISOPOOL_REQUIRE_STDLIB_SUITE"):
            pytest.fail(f"the stdlib suite is required here but unavailable: {exc}")
        pytest.skip(f"CPython's test_concurrent_futures is unavailable: {exc}")


def run_stdlib(root: Path, *args: str) -> tuple[int, str]:
    """Run the runner in its own session; return its exit code and combined output."""
    command = [sys.executable, str(RUNNER), "--root", str(root), *args]
    with subprocess.Popen(
        command,
        cwd=runner.REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    ) as process:
        try:
            output, _ = process.communicate(timeout=CLASS_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            output, _ = process.communicate()
            output += f"\n[killed after {CLASS_TIMEOUT:.0f} s]"
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)  # anything it left in its group
    return process.returncode, output


def summary(output: str) -> dict[str, object] | None:
    """The runner's last result line: how many tests ran and which failed."""
    for line in reversed(output.splitlines()):
        if line.startswith(runner.RESULT_MARK):
            result: dict[str, object] = json.loads(line.removeprefix(runner.RESULT_MARK))
            return result
    return None


def params() -> list[object]:
    return [
        pytest.param(name, id=name, marks=() if name.endswith(FAST_GROUPS) else pytest.mark.slow)
        for name in runner.expected_classes()
    ]


@pytest.mark.timeout(CLASS_TIMEOUT + 60)
@pytest.mark.parametrize("name", params())
def test_stdlib_class_passes_with_isopool_pool(stdlib_root: Path, name: str):
    """Every test of one stdlib class passes with isopool.Pool, except the listed ones."""
    code, output = run_stdlib(stdlib_root, "--timeout", str(CLASS_TIMEOUT - 20), name)
    result = summary(output)
    if result is None:
        pytest.fail(f"{name}: the runner ended with code {code} and no result:\n{output}")
    failed = result["failed"]
    if code != 0 or failed:
        details = output[output.find("=" * 70) :] if "=" * 70 in output else output
        names = "\n".join(f"  {test}" for test in failed)  # type: ignore[attr-defined]
        pytest.fail(f"{name}: stdlib tests failed with isopool.Pool:\n{names}\n\n{details}")
    assert result["collected"], f"{name} has no tests:\n{output}"


def test_stdlib_class_list_covers_every_process_pool_class(stdlib_root: Path):
    """The parametrized class list is exactly the suite's process-pool classes."""
    code, output = run_stdlib(stdlib_root, "--list")
    assert code == 0, output
    assert output.split() == runner.expected_classes()


def test_stdlib_skip_lists_name_tests_that_exist(stdlib_root: Path):
    """Every BY_DESIGN and PENDING_FIXES key names a test of the suite, and none is in both."""
    code, output = run_stdlib(stdlib_root, "--check-lists")
    assert code == 0, output
    unknown = json.loads(output.splitlines()[-1])
    if sys.version_info >= (3, 13):
        assert unknown == {"classes": [], "tests": []}
    else:  # Debian's 3.11 file lacks the tests and the class added later
        newer_class = f"{runner.EXTRA_CLASSES[1]}."
        assert all(key.startswith(newer_class) for key in unknown["classes"]), unknown
    assert not set(runner.BY_DESIGN) & set(runner.PENDING_FIXES)


# The pending tests are the same in every mixin, since isopool ignores mp_context.
@pytest.mark.slow
@pytest.mark.timeout(CLASS_TIMEOUT + 60)
@pytest.mark.parametrize("mixin", ["ProcessPoolForkserver", "ProcessPoolSpawn"])
def test_stdlib_pending_fixes_still_fail_with_isopool_pool(stdlib_root: Path, mixin: str):
    """Each PENDING_FIXES test still fails; one that passes must leave the list."""
    if not runner.PENDING_FIXES:
        pytest.skip("PENDING_FIXES is empty: every test not skipped by design must pass")
    names = [f"{mixin}{group}Test" for group in runner.GROUPS]
    resources = runner.EXTRA_CLASSES[1]  # 3.13+; last, as it stops the resource tracker
    if mixin == "ProcessPoolSpawn" and resources in runner.expected_classes():
        names.append(resources)
    timeout = str(CLASS_TIMEOUT - 20)
    code, output = run_stdlib(stdlib_root, "--timeout", timeout, "--pending-only", *names)
    result = summary(output)
    assert result is not None, output
    assert result["collected"], f"no PENDING_FIXES test ran:\n{output}"
    assert code == 0, (
        "PENDING_FIXES tests now pass with isopool.Pool; remove them from "
        f"tests/stdlib/run.py: {result['failed']}\n{output}"
    )

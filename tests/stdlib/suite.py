"""Find, or fetch once, CPython's own ``test_concurrent_futures`` for this interpreter.

isopool promises to be a drop-in ``ProcessPoolExecutor``; the strongest check of that
promise is the stdlib's own test suite. CPython's files are never committed here: they
come from where the interpreter or the system already has them.

- Python 3.13+: the interpreter's own ``Lib/test/test_concurrent_futures/`` package
  (pyenv and python.org builds install it).
- Python 3.11 and 3.12: Debian's ``libpython3.11-testsuite`` package, downloaded with
  ``apt-get download`` and unpacked with ``dpkg-deb -x`` into a cache folder outside git
  (``.ci/cache/`` by default, or ``$ISOPOOL_STDLIB_CACHE``). pyenv's 3.11 and 3.12 ship
  ``test.support`` but not ``test_concurrent_futures``. The 3.11 suite, with its own
  ``test.support``, also runs on 3.12 (checked: the same classes pass and fail there).

The first caller downloads; concurrent callers (xdist workers) wait on a file lock, and
the unpacked tree appears by an atomic rename, so nobody ever sees half a tree.
"""

from __future__ import annotations

import fcntl
import glob
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

DEBIAN_PACKAGE = "libpython3.11-testsuite"
# apt-get download of a 3 MB package takes seconds; this bounds a stuck mirror.
FETCH_TIMEOUT = 300.0
REPO_ROOT = Path(__file__).resolve().parents[2]


class SuiteUnavailableError(RuntimeError):
    """The stdlib suite cannot be found or fetched on this machine; says why."""


def cache_dir() -> Path:
    """The folder the Debian package is unpacked into (ignored by git)."""
    configured = os.environ.get("ISOPOOL_STDLIB_CACHE")
    return Path(configured) if configured else REPO_ROOT / ".ci" / "cache" / "stdlib"


def suite_root(version: tuple[int, int] | None = None) -> Path:
    """Return the folder to put first on ``sys.path`` so ``import test`` finds the suite.

    Raises:
        SuiteUnavailableError: nothing that works for this interpreter is available.
    """
    version = version or sys.version_info[:2]
    if version >= (3, 13):
        stdlib = Path(sysconfig.get_paths()["stdlib"])
        if (stdlib / "test" / "test_concurrent_futures" / "__init__.py").is_file():
            return stdlib
        raise SuiteUnavailableError(
            f"this Python {version[0]}.{version[1]} was installed without its test suite "
            f"({stdlib}/test/test_concurrent_futures is missing)"
        )
    if version >= (3, 11):
        return debian_suite()
    raise SuiteUnavailableError(f"isopool needs Python 3.11+, not {version}")


def debian_suite() -> Path:
    """Return the folder holding Debian's ``test`` package, fetching it on first use.

    The folder holds only ``test/``: Debian's test files, and an ``__init__.py`` written
    here that adds this interpreter's own ``test`` folder to the package path, so
    ``test.support`` matches the running interpreter. isopool's workers import
    ``test.test_concurrent_futures`` by ``sys.path`` alone, which this layout allows.
    """
    root = cache_dir() / DEBIAN_PACKAGE
    if _is_complete(root):
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    with open(root.parent / f"{DEBIAN_PACKAGE}.lock", "w") as lock:
        # Another xdist worker may be fetching: wait for it, then use its tree.
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _is_complete(root):
            return root
        with tempfile.TemporaryDirectory(dir=root.parent, prefix=".fetch-") as work:
            deb = _download(Path(work))
            unpacked = Path(work) / "unpacked"
            _run(["dpkg-deb", "-x", str(deb), str(unpacked)], cwd=Path(work))
            tree = Path(work) / "tree"
            tree.mkdir()
            os.rename(unpacked / "usr" / "lib" / "python3.11" / "test", tree / "test")
            (tree / "test" / "__init__.py").write_text(_PACKAGE_INIT)
            if not _is_complete(tree):
                raise SuiteUnavailableError(f"{deb.name} has no test/test_concurrent_futures.py")
            if root.exists():  # a tree left incomplete by hand: replace it
                shutil.rmtree(root)
            os.rename(tree, root)
    return root


_PACKAGE_INIT = '''"""Debian's libpython3.11-testsuite files, with this interpreter's test.support.

Written by isopool's tests/stdlib/suite.py; not a CPython file.
"""

import os
import sysconfig

__path__.append(os.path.join(sysconfig.get_paths()["stdlib"], "test"))
'''


def _is_complete(root: Path) -> bool:
    return (root / "test" / "test_concurrent_futures.py").is_file() and (
        root / "test" / "__init__.py"
    ).is_file()


def _download(folder: Path) -> Path:
    for tool in ("apt-get", "dpkg-deb"):
        if shutil.which(tool) is None:
            raise SuiteUnavailableError(
                f"fetching {DEBIAN_PACKAGE} needs {tool} (a Debian or Ubuntu machine)"
            )
    _run(["apt-get", "download", "-q", DEBIAN_PACKAGE], cwd=folder)
    debs = glob.glob(str(folder / f"{DEBIAN_PACKAGE}_*.deb"))
    if len(debs) != 1:
        raise SuiteUnavailableError(f"apt-get download left {debs}, not one .deb")
    return Path(debs[0])


def _run(command: list[str], cwd: Path) -> None:
    try:
        done = subprocess.run(
            command, cwd=cwd, capture_output=True, text=True, timeout=FETCH_TIMEOUT, check=False
        )
    except subprocess.TimeoutExpired:
        raise SuiteUnavailableError(f"{command[0]} took over {FETCH_TIMEOUT:.0f} s") from None
    if done.returncode != 0:
        hint = " (run `apt-get update` first?)" if command[0] == "apt-get" else ""
        raise SuiteUnavailableError(
            f"{' '.join(command)} failed with exit code {done.returncode}{hint}: "
            f"{done.stderr.strip()[-500:]}"
        )


if __name__ == "__main__":
    print(suite_root())

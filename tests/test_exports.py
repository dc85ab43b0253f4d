"""The public surface: what ``isopool`` exports, and how it presents itself.

Modelled on anyio's ``test_all_attributes.py`` and httpx's ``test_exported_members.py``:
a name added to the package without being exported (or exported without a home,
a docstring or the ``isopool`` module name) fails here.
"""

from __future__ import annotations
import __future__

import importlib.metadata
import inspect
import pkgutil
import subprocess
import sys
import textwrap
import types

import pytest

import isopool

PUBLIC = [name for name in isopool.__all__ if name != "__version__"]
PUBLIC_CLASSES = [name for name in PUBLIC if isinstance(getattr(isopool, name), type)]
# Type aliases (Restart, ...) are left out: an alias cannot carry a docstring at run time.
DOCUMENTABLE = [
    name
    for name in PUBLIC
    if inspect.isclass(getattr(isopool, name)) or inspect.isroutine(getattr(isopool, name))
]


def _public_members(cls: type) -> list[tuple[str, object]]:
    """Public methods and properties that ``cls`` itself defines."""
    members = []
    for attr, value in vars(cls).items():
        if attr.startswith("_"):
            continue
        if isinstance(value, classmethod | staticmethod):
            members.append((attr, value.__func__))
        elif isinstance(value, property) or inspect.isfunction(value):
            members.append((attr, value))
    return members


def test_all_is_sorted():
    """__all__ is kept sorted."""
    assert isopool.__all__ == sorted(isopool.__all__)


def test_all_has_no_duplicates():
    """No name is listed twice in __all__."""
    assert len(isopool.__all__) == len(set(isopool.__all__))


@pytest.mark.parametrize("name", isopool.__all__)
def test_all_name_exists(name):
    """Every name in __all__ is an attribute of the package."""
    assert hasattr(isopool, name)


def test_every_public_attribute_is_in_all():
    """Nothing public is reachable from the package without being listed in __all__."""
    public = {
        name
        for name, value in vars(isopool).items()
        if not name.startswith("_")
        and not isinstance(value, types.ModuleType | __future__._Feature)
    }
    assert public <= set(isopool.__all__)


@pytest.mark.parametrize("name", PUBLIC_CLASSES)
def test_public_class_module_is_isopool(name):
    """Public classes show as isopool.X in reprs, tracebacks and pickles."""
    assert getattr(isopool, name).__module__ == "isopool"


def test_package_has_a_docstring():
    """The package opens with a guide."""
    assert (isopool.__doc__ or "").strip()


@pytest.mark.parametrize("name", DOCUMENTABLE)
def test_public_object_has_a_docstring(name):
    """Every public class and function has a docstring of its own."""
    obj = getattr(isopool, name)
    assert (obj.__doc__ or "").strip(), name


@pytest.mark.parametrize("name", PUBLIC_CLASSES)
def test_public_methods_have_docstrings(name):
    """Every public method and property of a public class has a docstring."""
    cls = getattr(isopool, name)
    missing = [attr for attr, value in _public_members(cls) if not (value.__doc__ or "").strip()]
    assert not missing, f"{name} members without a docstring: {missing}"


def test_no_public_submodule():
    """Every module in the package is private (its name starts with an underscore)."""
    names = [info.name for info in pkgutil.iter_modules(isopool.__path__)]
    assert names
    assert [name for name in names if not name.startswith("_")] == []


def test_version_matches_the_installed_metadata():
    """isopool.__version__ is the version the package was installed as."""
    assert isopool.__version__ == importlib.metadata.version("isopool")


def _run_python(code: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_import_and_exit_print_nothing():
    """Importing every engine module and exiting writes nothing to stderr.

    A module-level struct sequence (``resource.struct_rusage``) alive at exit once
    made Python 3.11 print ``SystemError: ... bad argument to internal function`` from
    the garbage collector's last pass, after every program that imported isopool.
    """
    import pkgutil

    from isopool import _core

    modules = [f"isopool._core.{m.name}" for m in pkgutil.iter_modules(_core.__path__)]
    done = subprocess.run(
        [sys.executable, "-X", "dev", "-c", "; ".join(f"import {m}" for m in modules)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (done.returncode, done.stderr) == (0, "")


def test_import_has_no_side_effects():
    """Importing isopool starts no thread and registers no exit hook of its own.

    The standard library modules isopool uses are imported first, because some of
    them (logging, multiprocessing, concurrent.futures.process) register exit hooks
    of their own when imported.
    """
    stdlib = _run_python(
        """
        import sys
        before = set(sys.modules)
        import isopool
        print(" ".join(sorted(m for m in set(sys.modules) - before
                              if m.partition(".")[0] in sys.stdlib_module_names)))
        """
    ).split()
    assert "logging" in stdlib
    counts = _run_python(
        f"""
        import atexit, os, threading
        for name in {stdlib!r}:
            __import__(name)
        callbacks = atexit._ncallbacks()
        thread_hooks = len(threading._threading_atexits)
        import isopool
        print(threading.active_count(), len(os.listdir(f"/proc/{{os.getpid()}}/task")),
              atexit._ncallbacks() - callbacks, len(threading._threading_atexits) - thread_hooks)
        """
    )
    threads, os_threads, atexit_hooks, thread_exit_hooks = counts.split()
    assert (threads, os_threads) == ("1", "1")
    assert (atexit_hooks, thread_exit_hooks) == ("0", "0")

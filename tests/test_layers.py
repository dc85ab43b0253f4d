"""The package's layers: the engine imports nothing above it, the API nothing of Redis.

Read from the source with ``ast`` (no import runs): module-level imports only, since an
import under ``if TYPE_CHECKING:`` names a type and loads nothing, and a function-level
import is what a lazy layer looks like. STYLE.md §1 draws the picture.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "isopool"
# What the engine may import from outside _core/: the exceptions and option checks.
CORE_MAY_USE = {"isopool._errors", "isopool._spec", "isopool._version"}


def _module(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _runtime_imports(path: Path) -> set[str]:
    """The isopool modules ``path`` imports when it is imported."""
    tree = ast.parse(path.read_text())
    here = _module(path).split(".")
    package = here if path.name == "__init__.py" else here[:-1]
    found: set[str] = set()
    for node in tree.body:  # module level only: not functions, not TYPE_CHECKING blocks
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1])
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            if not target.startswith("isopool"):
                continue
            names = [f"{target}.{alias.name}" for alias in node.names]
            modules = [
                n for n in names if (PACKAGE.parent / (n.replace(".", "/") + ".py")).exists()
            ]
            found.update(modules or [target])
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("isopool"))
    return found


def _modules(folder: str) -> list[Path]:
    return sorted((PACKAGE / folder).glob("*.py")) if folder else sorted(PACKAGE.glob("*.py"))


@pytest.mark.parametrize("path", _modules("_core"), ids=lambda p: p.stem)
def test_core_module_imports_only_the_engine_errors_and_options(path: Path) -> None:
    """A module of _core/ imports nothing of the API or of _dist/ at import time."""
    upward = {
        m
        for m in _runtime_imports(path)
        if not m.startswith("isopool._core") and m not in CORE_MAY_USE
    }
    assert upward == set(), f"{path.name} imports {sorted(upward)}"


@pytest.mark.parametrize(
    "path", [p for p in _modules("") if p.name != "__init__.py"], ids=lambda p: p.stem
)
def test_api_module_never_imports_the_distributed_layer_at_import_time(path: Path) -> None:
    """The API's modules load _dist/ only lazily (in a function), never when imported."""
    dist = {m for m in _runtime_imports(path) if m.startswith("isopool._dist")}
    assert dist == set(), f"{path.name} imports {sorted(dist)}"


def test_package_init_loads_the_distributed_layer_lazily() -> None:
    """isopool/__init__.py names _dist/ only under TYPE_CHECKING and in its lazy table."""
    dist = {m for m in _runtime_imports(PACKAGE / "__init__.py") if m.startswith("isopool._dist")}
    assert dist == set()

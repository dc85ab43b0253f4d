"""The package version, in one place (read by the package and by nodes)."""

from __future__ import annotations

__version__ = "0.1.0"

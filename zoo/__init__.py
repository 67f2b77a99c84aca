"""zoo: a plugin-based PyTorch model zoo with one shared training engine.

Importing ``zoo`` is cheap: torch is imported only when a model, loss or
dataset is built.
"""

from __future__ import annotations

from zoo.errors import PluginError, RunError, UsageError, ZooError
from zoo.hookspecs import hookimpl
from zoo.registry import get_registry

__version__ = "0.1.0"

__all__ = [
    "PluginError",
    "RunError",
    "UsageError",
    "ZooError",
    "__version__",
    "get_registry",
    "hookimpl",
]

"""zoo: a plugin-based PyTorch model zoo with one shared training engine.

Importing ``zoo`` is cheap: torch is imported only when a model, loss or
dataset is built. The Python API (:mod:`zoo.api`: ``list_models``,
``create_model``, ``load_run``...) is offered here.
"""

from __future__ import annotations

__version__ = "0.1.0"

from zoo.errors import PluginError, RunError, UsageError, ZooError  # noqa: E402
from zoo.hookspecs import hookimpl
from zoo.registry import get_registry
from zoo import api  # the Python API; it imports no torch until one of its functions runs
from zoo.api import *  # noqa: F401,F403

__all__ = [
    "PluginError",
    "RunError",
    "UsageError",
    "ZooError",
    "__version__",
    "get_registry",
    "hookimpl",
    *api.__all__,
]

"""zoo: a plugin-based PyTorch model zoo with one shared training engine.

Importing ``zoo`` is cheap: torch is imported only when a model, loss or
dataset is built. The Python API (:mod:`zoo.api`: ``list_models``,
``create_model``, ``load_run``...) is imported on first use.
"""

from __future__ import annotations

from typing import Any

from zoo.errors import PluginError, RunError, UsageError, ZooError
from zoo.hookspecs import hookimpl
from zoo.registry import get_registry

__version__ = "0.1.0"

# Names of zoo.api offered here; zoo.api is imported when one is first used.
_API = (
    "LoadedRun",
    "create_dataset",
    "create_loss",
    "create_model",
    "list_datasets",
    "list_losses",
    "list_models",
    "load_run",
)

__all__ = [
    "PluginError",
    "RunError",
    "UsageError",
    "ZooError",
    "__version__",
    "get_registry",
    "hookimpl",
    *_API,
]


def __getattr__(name: str) -> Any:
    """Import :mod:`zoo.api` on first use of one of its names (keeps ``import zoo`` light)."""
    if name in _API:
        from zoo import api
        return getattr(api, name)
    raise AttributeError(f"module 'zoo' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))

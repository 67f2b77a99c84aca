"""Where installed plugins' source files are, found without importing them (so without torch).

Caches of what a plugin's classes say (``zoo info``'s descriptions) are keyed by a fingerprint of
these files: their paths, sizes and modification times, so an edited plugin is never described
from a stale cache.
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import os
import sys
from pathlib import Path
from typing import Iterable

from zoo.registry import Registry

CORE_PACKAGES = ("zoo", "train_cli")  # what describes a plugin: zoo's own code counts too
_SKIPPED_FOLDERS = {"__pycache__", ".git", "tests"}


def _top_level_spec(module: str) -> importlib.machinery.ModuleSpec | None:
    """The spec of ``module``'s top-level package; finding it imports nothing (a submodule's would)."""
    top = module.partition(".")[0]
    if not top.isidentifier():
        return None
    try:
        return importlib.util.find_spec(top)
    except (ImportError, ValueError):
        return None


def module_file(module: str) -> Path | None:
    """The source file of ``module`` (``pkg.sub.mod``), found on disk without importing its packages."""
    spec = _top_level_spec(module)
    if spec is None:
        return None
    parts = module.split(".")[1:]
    if not parts:
        return Path(spec.origin) if spec.origin and spec.origin.endswith(".py") else None
    for folder in spec.submodule_search_locations or ():
        base = Path(folder).joinpath(*parts)
        for candidate in (base.with_suffix(".py"), base / "__init__.py"):
            if candidate.is_file():
                return candidate
    return None


def _python_files(folder: str) -> Iterable[tuple[str, int, int]]:
    """``(path, size, mtime_ns)`` of every ``.py`` file under ``folder``, in a stable order."""
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if d not in _SKIPPED_FOLDERS)
        for name in sorted(files):
            if name.endswith(".py"):
                path = os.path.join(root, name)
                try:
                    stat = os.stat(path)
                except OSError:
                    continue
                yield path, stat.st_size, stat.st_mtime_ns


def package_files(module: str) -> list[tuple[str, int, int]]:
    """``(path, size, mtime_ns)`` of the source files of ``module``'s top-level package (or lone module)."""
    spec = _top_level_spec(module)
    if spec is None:
        return [(f"<{module} not found>", 0, 0)]
    if spec.submodule_search_locations:
        return [found for folder in spec.submodule_search_locations for found in _python_files(folder)]
    if spec.origin and os.path.isfile(spec.origin):
        stat = os.stat(spec.origin)
        return [(spec.origin, stat.st_size, stat.st_mtime_ns)]
    return [(f"<{module}: {spec.origin}>", 0, 0)]


def plugin_modules(registry: Registry) -> list[str]:
    """The top-level packages whose code the registry's plugins run: their own, and those of their targets."""
    modules = {info.module.partition(":")[0] for info in registry.plugins.values()}
    modules |= {entry.target.partition(":")[0] for entry in registry.entries()}
    return sorted({module.partition(".")[0] for module in modules} | set(CORE_PACKAGES))


def fingerprint(registry: Registry) -> str:
    """A hash of everything a description of an installed entry depends on: Python, zoo's and every plugin's
    distribution, version and status, and the paths, sizes and times of their source files."""
    digest = hashlib.sha256(sys.version.encode())
    for info in sorted(registry.plugins.values(), key=lambda p: p.name):
        digest.update(repr((info.name, info.distribution, info.version, info.status, info.module)).encode())
    for module in plugin_modules(registry):
        digest.update(repr((module, package_files(module))).encode())
    return digest.hexdigest()

"""A cache of ``zoo info``'s descriptions, so a second ``zoo info NAME`` never imports torch.

Each entry's description (its text and option names, as JSON) is kept under the user's cache folder,
keyed by a fingerprint of every installed plugin: distribution, version, status and the sizes and
modification times of its source files (``zoo.plugin_sources``), plus zoo's own and torch's version.
An edited or upgraded plugin changes the key, and the description is made again. Shell completion
reads the option names from here.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import re
import weakref
from pathlib import Path
from typing import Any

import zoo
from zoo.plugin_sources import fingerprint
from zoo.registry import Entry, Registry

FORMAT = 1  # bump when the cached document changes shape
_KEYS: weakref.WeakKeyDictionary[Registry, str] = weakref.WeakKeyDictionary()  # a registry's files are statted once


def cache_root() -> Path:
    """zoo's cache folder: ``$ZOO_CACHE_DIR``, else ``$XDG_CACHE_HOME/zoo``, else ``~/.cache/zoo``."""
    if os.environ.get("ZOO_CACHE_DIR"):
        return Path(os.environ["ZOO_CACHE_DIR"])
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]) / "zoo"
    return Path.home() / ".cache" / "zoo"


def _torch_version() -> str:
    try:
        return importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        return "none"


def cache_key(registry: Registry) -> str:
    """What every cached description of this registry's entries is valid for (see the module's docstring)."""
    if registry not in _KEYS:
        parts = (FORMAT, zoo.__version__, _torch_version(), fingerprint(registry))
        _KEYS[registry] = hashlib.sha256(repr(parts).encode()).hexdigest()
    return _KEYS[registry]


def _path(entry: Entry) -> Path:
    """One file per entry (a new key overwrites it): ``info/<kind>-<plugin>-<name>.json``."""
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", f"{entry.kind}-{entry.plugin}-{entry.name}")
    return cache_root() / "info" / f"{safe}.json"


def read(registry: Registry, entry: Entry) -> dict[str, Any] | None:
    """The cached description of ``entry`` (``text`` and ``options``) if it is still valid, else None."""
    try:
        document = json.loads(_path(entry).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(document, dict) or document.get("key") != cache_key(registry) \
            or document.get("entry") != [entry.kind, entry.qualified_name, entry.target]:
        return None
    if not isinstance(document.get("text"), str) or not isinstance(document.get("options"), list):
        return None
    return document


def write(registry: Registry, entry: Entry, text: str, options: list[str]) -> None:
    """Keep ``entry``'s description; a cache folder that cannot be written only costs the next call time."""
    from zoo.engine.rundir import write_text_atomic

    document = {"key": cache_key(registry), "entry": [entry.kind, entry.qualified_name, entry.target],
                "text": text, "options": options}
    path = _path(entry)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, json.dumps(document, indent=1) + "\n")
    except OSError:
        pass


def described(registry: Registry, entry: Entry) -> str:
    """``zoo info``'s text for ``entry``: from the cache when valid, else made (importing torch) and cached."""
    cached = read(registry, entry)
    if cached is not None:
        return cached["text"]
    from train_cli import describe

    text = describe.describe(registry, entry)
    write(registry, entry, text, describe.option_names(entry))
    return text

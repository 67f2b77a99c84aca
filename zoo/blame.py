"""Which plugin an unexpected exception came from: the innermost frame of a plugin's own code.

An exception no check of zoo's anticipated (a ``ZeroDivisionError`` in a model's ``forward``, a
shape error in a dataset) is that plugin's bug when a plugin's code is on its way up. zoo then
names the plugin, the entry and the file:line of that plugin's innermost frame, instead of
calling it an internal error of zoo.
"""

from __future__ import annotations

import os
import traceback
from dataclasses import dataclass
from typing import Any

from zoo.errors import first_line
from zoo.registry import Registry


@dataclass
class Blame:
    """The plugin (and entry, where the frame is in an entry's own module) an exception came from."""

    plugin: str
    entry: str | None
    filename: str
    lineno: int
    function: str

    def message(self, exc: BaseException) -> str:
        """The one line that names the plugin's bug and what to do."""
        where = os.path.relpath(self.filename) if not os.path.relpath(self.filename).startswith("..") \
            else self.filename
        part = f" ({self.entry})" if self.entry else ""
        return (f"plugin '{self.plugin}'{part} failed at {where}:{self.lineno} in {self.function}: {first_line(exc)}; "
                f"a bug in the plugin: report it to its authors, or leave it out (--disable-plugin {self.plugin}).")


def _owners(registry: Registry) -> tuple[dict[str, list[tuple[str, str | None, str]]], list[tuple[str, str]]]:
    """Modules that belong to a plugin: entry modules exactly (each entry with its class), and package prefixes."""
    exact: dict[str, list[tuple[str, str | None, str]]] = {}
    prefixes: list[tuple[str, str]] = []
    for entry in registry.entries():
        module, _, attribute = entry.target.partition(":")
        exact.setdefault(module, []).append((entry.plugin, f"{entry.kind} '{entry.name}'", attribute))
    for info in registry.plugins.values():
        exact.setdefault(info.module, [(info.name, None, "")])
    for entry in registry.entries():
        module = entry.target.split(":", 1)[0]
        package = module.rpartition(".")[0]
        if package:
            prefixes.append((package + ".", entry.plugin))
            prefixes.append((module.split(".", 1)[0] + ".", entry.plugin))  # the plugin's helpers beside it
    prefixes.sort(key=lambda pair: -len(pair[0]))  # the deepest package first
    return exact, prefixes


def blame(exc: BaseException, registry: Registry) -> Blame | None:
    """The innermost frame of a plugin's code in ``exc``'s traceback, or None when none is a plugin's."""
    exact, prefixes = _owners(registry)
    found = None
    for frame, lineno in traceback.walk_tb(exc.__traceback__):
        module = frame.f_globals.get("__name__", "")
        owner: Any = _entry_of(exact.get(module), frame)
        if owner is None:
            owner = next(((plugin, None) for prefix, plugin in prefixes if module.startswith(prefix)), None)
        if owner is not None:
            found = Blame(owner[0], owner[1], frame.f_code.co_filename, lineno, frame.f_code.co_name)
    return found


def _entry_of(candidates: list[tuple[str, str | None, str]] | None, frame: Any) -> tuple[str, str | None] | None:
    """The plugin, and the entry where the frame's class (or the module's only entry) says which."""
    if not candidates:
        return None
    if len(candidates) == 1:
        return candidates[0][:2]
    owner = frame.f_locals.get("self")
    classes = [cls.__name__ for cls in type(owner).__mro__] if owner is not None else []
    named = next((c for name in classes for c in candidates if c[2] == name), None)
    return named[:2] if named else (candidates[0][0], None)

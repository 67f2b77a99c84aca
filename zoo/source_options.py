"""A plugin class's option names read from its source with ``ast``, without importing it (nor torch).

Shell completion offers ``--model-opt KEY=`` from these when ``zoo info`` has not cached the class's
own signature yet. It follows ``__init__`` through base classes defined in the same module or
imported by name from another; what it cannot follow counts as offering no options.
"""

from __future__ import annotations

import ast
from pathlib import Path

from zoo.plugin_sources import module_file

_MAX_DEPTH = 8  # base classes followed through modules


def option_names(target: str, exclude: tuple[str, ...] = ()) -> list[str] | None:
    """The keyword options of ``target`` (``pkg.module:Class`` or ``:function``) as its source declares them,
    minus ``exclude``; None when the source cannot be found or read."""
    module, _, attr = target.partition(":")
    names = _options_of(module, attr.split("."), 0)
    return None if names is None else [name for name in names if name not in exclude]


def _parse(module: str) -> ast.Module | None:
    file = module_file(module)
    if file is None:
        return None
    try:
        return ast.parse(Path(file).read_text(encoding="utf-8"))
    except (OSError, SyntaxError, UnicodeDecodeError, ValueError):
        return None


def _options_of(module: str, path: list[str], depth: int) -> list[str] | None:
    """Options of the object at ``path`` (``["Outer", "Inner"]``) in ``module``; None where it is not found."""
    tree = _parse(module)
    if tree is None or depth > _MAX_DEPTH:
        return None
    body, node = tree.body, None
    for name in path:
        node = next((n for n in body if isinstance(n, (ast.ClassDef, ast.FunctionDef)) and n.name == name), None)
        if node is None:
            return _imported(tree, module, path, depth)
        body = node.body if isinstance(node, ast.ClassDef) else []
    if isinstance(node, ast.FunctionDef):
        return _parameters(node, drop_first=_is_classmethod(node))
    init = next((n for n in node.body if isinstance(n, ast.FunctionDef) and n.name == "__init__"), None) \
        if isinstance(node, ast.ClassDef) else None
    if init is not None:
        return _parameters(init, drop_first=True)
    for base in node.bases if isinstance(node, ast.ClassDef) else ():
        if isinstance(base, ast.Name):
            found = _options_of(module, [base.id], depth + 1)
            if found is not None:
                return found
    return []  # only bases it cannot read (nn.Module...): no options of its own


def _imported(tree: ast.Module, module: str, path: list[str], depth: int) -> list[str] | None:
    """Follow ``from X import NAME`` for the first name of ``path``."""
    for node in tree.body:
        if not isinstance(node, ast.ImportFrom):
            continue
        for alias in node.names:
            if (alias.asname or alias.name) == path[0]:
                source = node.module or ""
                if node.level:  # relative: from the module's package (a module file's package is its parent)
                    parts = module.split(".") + (["__init__"] if _is_package(module) else [])
                    package = parts[:-node.level] if node.level < len(parts) else []
                    source = ".".join(package + ([source] if source else []))
                return _options_of(source, [alias.name, *path[1:]], depth + 1) if source else None
    return None


def _is_package(module: str) -> bool:
    file = module_file(module)
    return file is not None and file.name == "__init__.py"


def _is_classmethod(node: ast.FunctionDef) -> bool:
    return any(isinstance(d, ast.Name) and d.id == "classmethod" for d in node.decorator_list)


def _parameters(node: ast.FunctionDef, drop_first: bool) -> list[str]:
    """Named parameters of a function (no ``*args``/``**kwargs``), ``self`` or ``cls`` dropped."""
    args = node.args
    names = [a.arg for a in (*args.posonlyargs, *args.args)]
    if drop_first:
        names = names[1:]
    return names + [a.arg for a in args.kwonlyargs]

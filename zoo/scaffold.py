"""``zoo new-plugin NAME [DIR]``: a plugin package skeleton that installs, passes ``zoo check`` and its tests.

The files are templates in ``zoo/templates/plugin/`` with ``{{name}}``, ``{{dist}}`` and
``{{zoo_version}}`` filled in; ``FILES`` says where each one goes.
"""

from __future__ import annotations

import keyword
import re
from pathlib import Path

from zoo import __version__
from zoo.errors import UsageError

TEMPLATES = Path(__file__).parent / "templates" / "plugin"
FILES = {  # template: where it goes in the package ({name} is the plugin's)
    "pyproject.toml.tmpl": "pyproject.toml",
    "README.md.tmpl": "README.md",
    "__init__.py.tmpl": "src/{name}/__init__.py",
    "plugin.py.tmpl": "src/{name}/plugin.py",
    "model.py.tmpl": "src/{name}/model.py",
    "loss.py.tmpl": "src/{name}/loss.py",
    "dataset.py.tmpl": "src/{name}/dataset.py",
    "hook.py.tmpl": "src/{name}/hook.py",
    "test_plugin.py.tmpl": "tests/test_{name}.py",
}
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


def check_name(name: str) -> None:
    """A plugin name must be a lower-case Python package name (it names the package and the entry point)."""
    if not _NAME.match(name) or keyword.iskeyword(name):
        raise UsageError(f"plugin name '{name}' must be a lower-case Python name (letters, digits, _; "
                         f"starting with a letter), e.g. {re.sub(r'[^a-z0-9_]', '_', name.lower()).strip('_') or 'my_plugin'}.")


def write_plugin(name: str, folder: Path) -> list[Path]:
    """Write the skeleton of plugin ``name`` into ``folder`` (new or empty); return the files written."""
    check_name(name)
    folder = Path(folder)
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise UsageError(f"{folder} already exists and is not an empty folder; pick another DIR.")
    values = {"name": name, "dist": name.replace("_", "-"), "zoo_version": _minor(__version__),
              "zoo_below": _next_major(__version__)}
    written = []
    for template, target in FILES.items():
        text = (TEMPLATES / template).read_text(encoding="utf-8")
        for key, value in values.items():
            text = text.replace("{{" + key + "}}", value)
        path = folder / target.format(name=name)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written


def _next_major(version: str) -> str:
    """``1`` for zoo 0.x, ``2`` for 1.x: the first zoo the skeleton does not claim to fit."""
    return str(int(version.split(".")[0]) + 1)


def _minor(version: str) -> str:
    """``0.1`` of ``0.1.0``: the lowest zoo the skeleton asks for."""
    return ".".join(version.split(".")[:2])

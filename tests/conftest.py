"""Shared fixtures: installed fake plugin distributions and the real ``zoo`` CLI in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
_ZOO_VARS = ("ZOO_DISABLE_PLUGINS", "ZOO_DISABLE_PLUGIN_AUTOLOAD", "ZOO_DEBUG", "PYTHONPATH")


@pytest.fixture(scope="session", autouse=True)
def _private_caches(tmp_path_factory):
    """zoo's caches (info descriptions, decoded images) in a folder of the session's, never the user's."""
    before = os.environ.get("ZOO_CACHE_DIR")
    os.environ["ZOO_CACHE_DIR"] = str(tmp_path_factory.mktemp("zoo-cache"))
    yield
    if before is None:
        os.environ.pop("ZOO_CACHE_DIR", None)
    else:
        os.environ["ZOO_CACHE_DIR"] = before


def _install_plugin(site: Path, dist: str, source: str, plugin: str | None = None,
                    module: str | None = None, version: str = "1.0.0") -> Path:
    """Write ``<dist>-<version>.dist-info`` (METADATA, entry_points.txt ``[zoo] <plugin> = <module>``)
    and ``<module>.py`` into ``site``; return ``site``."""
    plugin = plugin or dist
    module = module or f"{dist}_zoo_plugin"
    info = site / f"{dist}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text(f"[zoo]\n{plugin} = {module}\n")
    (site / f"{module}.py").write_text(textwrap.dedent(source))
    return site


@pytest.fixture
def make_plugin(tmp_path):
    """``make_plugin(dist, source, plugin=None, module=None, version="1.0.0")`` installs a plugin
    distribution into ``tmp_path/site`` (shared by all calls of a test) and returns that site."""
    return lambda *args, **kwargs: _install_plugin(tmp_path / "site", *args, **kwargs)


@pytest.fixture(scope="session")
def install_plugin():
    """``install_plugin(site, dist, source, ...)`` for module-scoped fixtures."""
    return _install_plugin


def _run_zoo(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run ``python -m train_cli ARGS`` with the zoo variables cleared, plus ``env``."""
    full = {k: v for k, v in os.environ.items() if k not in _ZOO_VARS}
    full["COLUMNS"] = "250"  # tables cut their last column to the terminal width
    full.update(env or {})
    return subprocess.run([sys.executable, "-m", "train_cli", *args], env=full, cwd=REPO,
                          capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="session")
def run_zoo():
    """The ``run_zoo(*args, env=None)`` helper; returns a CompletedProcess (text, captured)."""
    return _run_zoo


@pytest.fixture
def zoo_cli(capsys):
    """``zoo_cli(*args)`` runs the zoo command in-process; returns (exit code, stdout, stderr)."""
    from train_cli.main import main

    def run(*args: str) -> tuple[int, str, str]:
        with pytest.raises(SystemExit) as exited:
            main(list(args))
        out, err = capsys.readouterr()
        return exited.value.code, out, err

    return run

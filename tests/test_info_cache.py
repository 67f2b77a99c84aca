"""``zoo info``'s cache: a second call imports no torch and says the same; an edited plugin is described anew."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from train_cli import describe, info_cache
from zoo.registry import clear_cache

REPO = Path(__file__).resolve().parents[1]
# runs zoo with ARGS and says on stderr whether torch was imported by the end
_WRAPPER = textwrap.dedent("""
    import sys
    from train_cli.main import main
    try:
        main(sys.argv[1:])
    finally:
        print("torch imported:", "torch" in sys.modules, file=sys.stderr)
""")
EDITED_PLUGIN = """
    import torch
    from zoo import hookimpl
    from zoo.recipe import Recipe

    class Edited(Recipe):
        task = "generation"

        def __init__(self, width: int = 4):
            super().__init__()
            self.net = torch.nn.Linear(width, 2)

    @hookimpl
    def zoo_register(registry):
        registry.model("edited", "edited_zoo_plugin:Edited", "A model whose file the test edits")
"""


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    """A fresh info cache under tmp_path, and a registry discovered anew (and forgotten after)."""
    monkeypatch.setenv("ZOO_CACHE_DIR", str(tmp_path / "cache"))
    clear_cache()
    yield tmp_path / "cache"
    clear_cache()


def test_a_second_info_imports_no_torch_and_says_the_same(cache_dir, zoo_cli):
    code, cold, err = zoo_cli("info", "dcgan")  # in this process: builds the description and caches it
    assert code == 0, err
    assert list((cache_dir / "info").glob("model-*dcgan*.json"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("ZOO_")}
    env.update(ZOO_CACHE_DIR=str(cache_dir), PYTHONPATH=str(REPO))
    warm = subprocess.run([sys.executable, "-c", _WRAPPER, "info", "dcgan"], env=env, cwd=cache_dir.parent,
                          capture_output=True, text=True, timeout=60)
    assert warm.returncode == 0, warm.stderr
    assert warm.stdout == cold
    assert "torch imported: False" in warm.stderr


def test_an_edited_plugin_is_described_anew(cache_dir, zoo_cli, make_plugin, monkeypatch):
    site = make_plugin("edited", EDITED_PLUGIN)
    monkeypatch.syspath_prepend(str(site))
    made = []
    monkeypatch.setattr(describe, "describe", lambda *args, real=describe.describe: made.append(1) or real(*args))

    def info() -> str:
        sys.modules.pop("edited_zoo_plugin", None)  # as a new process would: the file as it is now
        clear_cache()
        code, out, err = zoo_cli("info", "edited")
        assert code == 0, err
        return out

    first = info()
    assert "width" in first and info() == first and len(made) == 1  # the second came from the cache
    source = site / "edited_zoo_plugin.py"
    later = source.stat().st_mtime + 10
    source.write_text(source.read_text().replace("width", "breadth"))
    os.utime(source, (later, later))
    edited = info()
    assert "breadth" in edited and "width" not in edited and len(made) == 2
    os.utime(source, (later + 10, later + 10))  # touched only: a new time is enough to describe it again
    assert info() == edited and len(made) == 3
    sys.modules.pop("edited_zoo_plugin", None)


def test_cache_folder_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("ZOO_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert info_cache.cache_root() == tmp_path / "xdg" / "zoo"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert info_cache.cache_root() == tmp_path / "home" / ".cache" / "zoo"
    monkeypatch.setenv("ZOO_CACHE_DIR", str(tmp_path / "mine"))
    assert info_cache.cache_root() == tmp_path / "mine"


def test_an_unwritable_cache_costs_only_time(cache_dir, zoo_cli):
    cache_dir.write_text("a file where the folder would be")
    code, out, err = zoo_cli("info", "shapes")
    assert code == 0 and "shapes" in out and err == ""

"""Shell completion through click's protocol: names and option keys from the lazy registry, never torch."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from zoo.build import load_recipe_class
from zoo.options import option_specs
from zoo.registry import clear_cache, get_registry

REPO = Path(__file__).resolve().parents[1]
# runs zoo as the shell's Tab does and says on stderr whether torch was imported by then
_WRAPPER = textwrap.dedent("""
    import sys
    from train_cli.main import main
    try:
        main([])
    finally:
        print("torch imported:", "torch" in sys.modules, file=sys.stderr)
""")

# a model whose class is made by a function: its options cannot be read from the source, only from the class
MADE_MODELS = """
    import torch
    from zoo.recipe import Recipe

    def _make():
        class Made(Recipe):
            task = "generation"

            def __init__(self, width: int = 4, depth: int = 2):
                super().__init__()
                self.net = torch.nn.Linear(width, depth)
        return Made

    Made = _make()
"""
MADE_PLUGIN = """
    from zoo import hookimpl

    @hookimpl
    def zoo_register(registry):
        registry.model("made", "madeplug_models:Made", "A model made by a function")
"""


def complete(words: str, tmp_path, *, shell: str = "bash", site=None) -> list[str]:
    """The values zoo offers for the last word of ``words`` (click's ``bash_complete``/``zsh_complete``)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ZOO_")}
    parts = words.split(" ")
    env.update(_ZOO_COMPLETE=f"{shell}_complete", COMP_WORDS=words, COMP_CWORD=str(len(parts) - 1),
               ZOO_CACHE_DIR=str(tmp_path / "cache"),
               PYTHONPATH=os.pathsep.join([str(REPO)] + ([str(site)] if site else [])))
    done = subprocess.run([sys.executable, "-c", _WRAPPER], env=env, cwd=tmp_path, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert "torch imported: False" in done.stderr
    if shell == "zsh":  # type, value, help: three lines each
        return done.stdout.splitlines()[1::3]
    return [line.split(",", 1)[1] for line in done.stdout.splitlines() if line]


def _names(kind: str | None, prefix: str, only=lambda entry: True) -> set[str]:
    return {e.name for e in get_registry().entries(kind) if e.name.startswith(prefix) and only(e)}


@pytest.mark.parametrize("words, kind, prefix", [
    ("zoo train --model d", "model", "d"),
    ("zoo train --model dcgan --loss ", "loss", ""),
    ("zoo train --dataset s", "dataset", "s"),
    ("zoo train --hook e", "hook", "e"),
    ("zoo info mnist", None, "mnist"),
    ("zoo list datasets ", "dataset", ""),
])
def test_names_complete_from_the_registry_without_torch(tmp_path, words, kind, prefix):
    offered = complete(words, tmp_path)
    assert set(offered) == _names(kind, prefix) and offered


def test_no_hook_offers_the_hooks_that_are_on(tmp_path):
    offered = complete("zoo train --hook ema --no-hook ", tmp_path, shell="zsh")
    assert set(offered) == _names("hook", "", lambda e: e.default) | {"ema"}


def test_model_opt_offers_the_keys_of_the_model_given_before(tmp_path):
    keys = [spec.name for spec in option_specs(load_recipe_class(get_registry().resolve("model", "dcgan")))]
    offered = complete("zoo train --model dcgan --model-opt nz=3 --model-opt n", tmp_path)
    assert offered == [f"{key}=" for key in keys if key.startswith("n") and key != "nz"] and offered
    assert complete("zoo train --model-opt n", tmp_path) == []  # no model yet: nothing to offer
    hooks = complete("zoo train --hook-opt early_stopping.p", tmp_path)
    assert hooks == ["early_stopping.patience="]


def test_model_opt_keys_of_a_class_the_source_hides_come_from_the_info_cache(
        tmp_path, monkeypatch, make_plugin, zoo_cli):
    site = make_plugin("madeplug", MADE_PLUGIN)
    (site / "madeplug_models.py").write_text(textwrap.dedent(MADE_MODELS))
    assert complete("zoo train --model made --model-opt ", tmp_path, site=site) == []
    monkeypatch.setenv("ZOO_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.syspath_prepend(str(site))
    clear_cache()
    try:
        code, out, err = zoo_cli("info", "made")  # describes the class and caches its options
    finally:
        for module in ("madeplug_zoo_plugin", "madeplug_models"):
            sys.modules.pop(module, None)
        clear_cache()
    assert code == 0, err
    assert "width" in out
    assert complete("zoo train --model made --model-opt ", tmp_path, site=site) == ["width=", "depth="]

"""Plugin compatibility: a plugin's own requirement on zoo, and mis-signed lifecycle hooks."""

from __future__ import annotations

import json
import shutil
import textwrap
from pathlib import Path

import pytest

from zoo import __version__
from zoo.config import TrainConfig
from zoo.engine.rundir import prepare_new
from zoo.engine.trainer import Trainer
from zoo.errors import PluginError
from zoo.registry import discover

PLUGIN_SOURCE = """
    from zoo import hookimpl

    class BadHook:
        @hookimpl
        def on_step_end(self, run, stepp):
            pass

    @hookimpl
    def zoo_register(registry):
        registry.model("compat_model", "plugins.models.dcgan:DCGAN", "a DCGAN under another name")
        registry.hook("bad_hook", "{module}:BadHook", "a hook with a misspelt argument")
"""


def install(site: Path, dist: str, requires: str | None) -> None:
    """A real distribution on sys.path: METADATA (with Requires-Dist), entry point, module."""
    module = f"{dist}_plugin"
    info = site / f"{dist}-2.0.dist-info"
    info.mkdir(parents=True)
    requirement = f"Requires-Dist: {requires}\n" if requires else ""
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 2.0\n{requirement}")
    (info / "entry_points.txt").write_text(f"[zoo]\n{dist} = {module}\n")
    (site / f"{module}.py").write_text(textwrap.dedent(PLUGIN_SOURCE.replace("{module}", module)))


@pytest.fixture
def site(tmp_path, monkeypatch):
    folder = tmp_path / "site"
    folder.mkdir()
    monkeypatch.syspath_prepend(str(folder))
    return folder


def test_a_plugin_made_for_another_zoo_is_listed_incompatible_and_skipped(site):
    install(site, "future", "zoo>=99")
    install(site, "current", f"zoo>={__version__}")
    install(site, "unpinned", None)
    registry = discover()
    future = registry.plugins["future"]
    assert future.status == "incompatible"
    assert "needs zoo>=99" in future.error and __version__ in future.error
    assert registry.plugins["current"].status == "ok"
    assert registry.plugins["unpinned"].status == "ok"
    assert [e.plugin for e in registry.entries("model") if e.name == "compat_model"] == ["current", "unpinned"]
    assert future in registry.broken()  # so other commands warn about it in one line


def test_a_mis_signed_lifecycle_hook_is_that_plugins_error(site, tmp_path):
    install(site, "current", None)
    registry = discover()
    config = TrainConfig(model="dcgan", model_opt={"ngf": 8, "ndf": 8, "nz": 8}, max_steps=1,
                         dataset_opt={"train_count": 16, "test_count": 4}, batch_size=8, device="cpu",
                         hooks=["bad_hook"], run_dir=str(tmp_path / "run"))
    prepare_new(tmp_path / "run", overwrite=False)
    with pytest.raises(PluginError) as failed:
        Trainer(config, registry, tmp_path / "run")
    message = str(failed.value)
    assert "current:bad_hook" in message and "stepp" in message and "on_step_end" in message
    assert "Traceback" not in message and "\n" not in message


CHANGING_DEFAULT = """
    from plugins.models.dcgan import DCGAN
    from zoo import hookimpl

    class Widths(DCGAN):
        def __init__(self, image_size: int = 64, ngf: int = {ngf}, ndf: int = 8, nz: int = 8, nc: int = 3):
            super().__init__(image_size=image_size, nz=nz, ngf=ngf, ndf=ndf, nc=nc)

    @hookimpl
    def zoo_register(registry):
        registry.model("widths", "widths_zoo_plugin:Widths", "a DCGAN whose ngf default changes between versions")
"""


def test_a_plugin_whose_new_version_changes_a_default_still_tests_and_resumes_its_old_runs(make_plugin, run_zoo,
                                                                                          tmp_path):
    site = make_plugin("widths", CHANGING_DEFAULT.replace("{ngf}", "8"), version="0.1.0")
    env = {"PYTHONPATH": str(site)}
    small = ["--model", "widths", "--loss", "mse", "--batch-size", "8", "--device", "cpu", "--dataset-opt",
             "train_count=16", "--dataset-opt", "test_count=4", "--no-hook", "samples", "--no-hook", "tensorboard"]
    made = run_zoo("train", *small, "--max-steps", "2", "--run-dir", str(tmp_path / "old"), env=env)
    assert made.returncode == 0, made.stderr
    recorded = json.loads((tmp_path / "old" / "config.json").read_text())["resolved"]["model_options"]
    assert recorded["ngf"] == 8 and "ngf" not in json.loads((tmp_path / "old" / "config.json").read_text())["config"][
        "model_opt"]  # a default, recorded all the same
    for info in site.glob("widths-*.dist-info"):
        shutil.rmtree(info)
    make_plugin("widths", CHANGING_DEFAULT.replace("{ngf}", "16"), version="0.2.0")
    tested = run_zoo("test", "--run", str(tmp_path / "old"), "--device", "cpu", env=env)
    assert tested.returncode == 0, tested.stderr
    resumed = run_zoo("train", "--resume", str(tmp_path / "old"), "--max-steps", "3", env=env)
    assert resumed.returncode == 0, resumed.stderr
    assert "done at step 3" in resumed.stderr
    new = run_zoo("train", *small, "--max-steps", "1", "--run-dir", str(tmp_path / "new"), env=env)
    assert new.returncode == 0, new.stderr
    assert json.loads((tmp_path / "new" / "config.json").read_text())["resolved"]["model_options"]["ngf"] == 16

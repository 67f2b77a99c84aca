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
from zoo.options import option_values, parse_options
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


CHANGING_PARTS = """
    from pathlib import Path

    from plugins.datasets.shapes import ShapesDataset
    from plugins.losses import MSELoss
    from plugins.models.dcgan import DCGAN
    from zoo import hookimpl

    class Gan(DCGAN):
        losses = ("weighted_mse",)

        def __init__(self, image_size: int = 64, ngf: int = 8, ndf: int = 8, nz: int = 8, nc: int = 3):
            super().__init__(image_size=image_size, nz=nz, ngf=ngf, ndf=ndf, nc=nc)

    class CountedShapes(ShapesDataset):
        def __init__(self, split: str, *, task: str, data: str | None = None, image_size: int | None = None,
                     channels: int | None = None, train_count: int = 16, test_count: int = {test_count}):
            super().__init__(split, task=task, data=data, image_size=image_size, channels=channels,
                             train_count=train_count, test_count=test_count)

    class WeightedMSE(MSELoss):
        def __init__(self, weight: float = {weight}):
            super().__init__()
            self.weight = weight

        def forward(self, x, y):
            return self.weight * super().forward(x, y)

    class Marker:
        def __init__(self, label: str = "{label}"):
            self.label = label

        @hookimpl
        def on_train_start(self, run):
            with open(Path(run.run_dir) / "labels.txt", "a") as out:
                out.write(self.label + "\\n")

    @hookimpl
    def zoo_register(registry):
        registry.model("parts_gan", "parts_zoo_plugin:Gan", "a small DCGAN")
        registry.dataset("counted_shapes", "parts_zoo_plugin:CountedShapes", "shapes whose test_count default changes")
        registry.loss("weighted_mse", "parts_zoo_plugin:WeightedMSE", "an MSE whose weight default changes")
        registry.hook("marker", "parts_zoo_plugin:Marker", "writes its label default at each start")
"""
PARTS_V1 = {"{test_count}": "4", "{weight}": "1.0", "{label}": "old"}
PARTS_V2 = {"{test_count}": "8", "{weight}": "10.0", "{label}": "new"}


def parts_plugin(make_plugin, site: Path | None, values: dict[str, str], version: str) -> Path:
    """Install (or replace) the plugin whose loss, dataset and hook defaults are ``values``."""
    for info in (site.glob("parts-*.dist-info") if site else ()):
        shutil.rmtree(info)
    source = CHANGING_PARTS
    for key, value in values.items():
        source = source.replace(key, value)
    return make_plugin("parts", source, version=version)


def metrics_of(run_zoo, run_dir: Path, env: dict[str, str]) -> dict:
    """``zoo test --json`` of a run: its sample count and metrics."""
    tested = run_zoo("test", "--run", str(run_dir), "--device", "cpu", "--json", env=env)
    assert tested.returncode == 0, tested.stderr
    result = json.loads(tested.stdout)
    return {"samples": result["samples"], "metrics": result["metrics"]}


def test_a_plugin_whose_new_version_changes_loss_dataset_and_hook_defaults_still_tests_and_resumes_its_old_runs(
        make_plugin, run_zoo, tmp_path):
    site = parts_plugin(make_plugin, None, PARTS_V1, "0.1.0")
    env, run = {"PYTHONPATH": str(site)}, tmp_path / "old"
    made = run_zoo("train", "--model", "parts_gan", "--loss", "weighted_mse", "--dataset", "counted_shapes",
                   "--batch-size", "8", "--device", "cpu", "--no-hook", "samples", "--no-hook", "tensorboard",
                   "--hook", "marker", "--hook", "ema", "--max-steps", "2", "--run-dir", str(run), env=env)
    assert made.returncode == 0, made.stderr
    saved = json.loads((run / "config.json").read_text())
    resolved = saved["resolved"]
    assert resolved["loss_options"] == {"weight": 1.0}
    assert resolved["dataset_options"] == {"train_count": 16, "test_count": 4}
    assert resolved["hook_options"]["parts:marker"] == {"label": "old"}
    assert resolved["hook_options"]["builtin:ema"] == {"decay": 0.999, "warmup": 0, "every": 1}
    assert saved["config"]["loss_opt"] == saved["config"]["dataset_opt"] == saved["config"]["hook_opt"] == {}
    before = metrics_of(run_zoo, run, env)
    assert before["samples"] == 4

    parts_plugin(make_plugin, site, PARTS_V2, "0.2.0")
    assert metrics_of(run_zoo, run, env) == before  # the same loss and test split: the same figures
    resumed = run_zoo("train", "--resume", str(run), "--max-steps", "3", "--no-hook", "ema", env=env)
    assert resumed.returncode == 0, resumed.stderr
    assert "done at step 3" in resumed.stderr
    assert (run / "labels.txt").read_text().split() == ["old", "old"]  # the hook kept its recorded default
    resolved = json.loads((run / "config.json").read_text())["resolved"]
    assert (resolved["loss_options"], resolved["dataset_options"]["test_count"]) == ({"weight": 1.0}, 4)
    assert resolved["hook_options"]["builtin:ema"]["decay"] == 0.999  # switched off, its record kept


def test_an_old_run_whose_weights_no_longer_fit_a_changed_default_says_so_with_the_defaults(make_plugin, run_zoo,
                                                                                          tmp_path):
    site = make_plugin("widths", CHANGING_DEFAULT.replace("{ngf}", "8"), version="0.1.0")
    env, run = {"PYTHONPATH": str(site)}, tmp_path / "old"
    made = run_zoo("train", "--model", "widths", "--loss", "mse", "--batch-size", "8", "--device", "cpu",
                   "--dataset-opt", "train_count=16", "--dataset-opt", "test_count=4", "--no-hook", "samples",
                   "--no-hook", "tensorboard", "--max-steps", "1", "--run-dir", str(run), env=env)
    assert made.returncode == 0, made.stderr
    document = json.loads((run / "config.json").read_text())
    for key in ("model_options", "loss_options", "dataset_options", "hook_options"):  # as a run saved before them
        del document["resolved"][key]
    (run / "config.json").write_text(json.dumps(document))
    for info in site.glob("widths-*.dist-info"):
        shutil.rmtree(info)
    make_plugin("widths", CHANGING_DEFAULT.replace("{ngf}", "16"), version="0.2.0")
    for command in (["test", "--run", str(run), "--device", "cpu"],
                    ["train", "--resume", str(run), "--max-steps", "2"]):
        failed = run_zoo(*command, env=env)
        assert failed.returncode != 0
        message = failed.stderr.strip().splitlines()[-1]
        assert "does not fit model 'widths'" in message and "predates recorded option defaults" in message
        assert "ngf=16, ndf=8, nz=8" in message and '"model_opt"' in message and "Traceback" not in failed.stderr
    document["config"]["model_opt"] = {"ngf": 8}  # the fix the message names
    (run / "config.json").write_text(json.dumps(document))
    assert run_zoo("test", "--run", str(run), "--device", "cpu", env=env).returncode == 0
    resumed = run_zoo("train", "--resume", str(run), "--max-steps", "2", env=env)
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads((run / "config.json").read_text())["resolved"]["model_options"]["ngf"] == 8


def test_option_values_are_every_option_as_json_keeps_it_and_read_back_as_given():
    class Part:
        def __init__(self, split: str, needed: int, sizes: tuple[int, ...] = (1, 2), unset: int = None,
                     scale: float = 1, shape=object(), name: str = "a") -> None:
            pass

    values = option_values(Part, {"name": "b"}, exclude=("split",))
    assert values == {"sizes": [1, 2], "unset": None, "scale": 1, "name": "b"}  # no required, no object
    assert parse_options("part", Part, json.loads(json.dumps(values))) == \
        {"sizes": (1, 2), "unset": None, "scale": 1.0, "name": "b"}

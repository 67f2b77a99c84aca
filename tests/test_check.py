"""``zoo check PLUGIN`` and ``zoo.testing``: a conforming plugin passes; each kind of broken one fails, named."""

from __future__ import annotations

import importlib
import json
import sys

import pytest
import torch

from zoo import testing
from zoo.conformance import check_plugin
from zoo.errors import UsageError
from zoo.registry import clear_cache, discover

GOOD = """
    from typing import Annotated
    import torch
    from zoo import hookimpl
    from zoo.data import ZooDataset, item_rng
    from zoo.options import Range
    from plugins.models.mnist_net import MnistNet

    class Small(MnistNet):
        \"\"\"mnist_net under another name, with an option of its own.\"\"\"
        def __init__(self, num_classes: int = 10, scale: Annotated[float, Range(0.0)] = 1.0):
            super().__init__(num_classes=num_classes)

    class Dots(ZooDataset):
        \"\"\"Random dots, a class per quadrant.\"\"\"
        tasks = ("classification",)
        needs_data = reads_data = False
        def __init__(self, split, *, task, data=None, image_size=None, channels=None,
                     count: Annotated[int, Range(1)] = 16):
            super().__init__(split, task=task, data=data, image_size=image_size, channels=channels)
            self.count = count
            self.image_shape = (channels or 1, image_size or 28, image_size or 28)
            self.classes = ["a", "b", "c", "d"]
        def __len__(self):
            return self.count
        def __getitem__(self, index):
            generator = torch.Generator().manual_seed(index)
            image = torch.rand(self.image_shape, generator=generator) * 2 - 1
            if self.split == "train":
                image = image + 0.01 * torch.randn(image.shape, generator=item_rng())
            return image, index % 4

    class Counter:
        \"\"\"Counts steps; saves the count.\"\"\"
        def __init__(self, every: Annotated[int, Range(1)] = 1):
            self.steps = 0
        @hookimpl
        def on_train_step(self, run, step, losses):
            self.steps += 1
        def state_dict(self):
            return {"steps": self.steps}
        def load_state_dict(self, state):
            self.steps = state["steps"]

    @hookimpl
    def zoo_register(registry):
        registry.model("small", "{module}:Small", "a small classifier")
        registry.dataset("dots", "{module}:Dots", "random dots")
        registry.hook("counter", "{module}:Counter", "counts steps")
"""


def install(make_plugin, name: str, source: str) -> None:
    """Install plugin ``name`` (its module ``NAME_zoo_plugin``), fresh: a module of that name imported by an
    earlier test is forgotten."""
    module = f"{name}_zoo_plugin"
    make_plugin(name, source.replace("{module}", module))
    sys.modules.pop(module, None)
    importlib.invalidate_caches()
    clear_cache()


def by_check(results) -> dict[tuple[str, str], testing.Any]:
    return {(r.subject, r.check): r for r in results}


def failures(results) -> list[str]:
    return [r.line() for r in results if r.status == "failed"]


@pytest.fixture
def site(make_plugin, monkeypatch, tmp_path):
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    yield make_plugin
    clear_cache()


def test_a_conforming_plugin_passes_every_check(site):
    install(site, "good", GOOD)
    results = check_plugin("good", discover())
    assert failures(results) == []
    checks = by_check(results)
    assert checks[("model 'good:small'", "trains and resumes exactly with loss 'cross_entropy'")].status == "ok"
    assert "on 'good:dots'" in checks[("model 'good:small'",
                                       "trains and resumes exactly with loss 'cross_entropy'")].detail
    assert checks[("model 'good:small'", "evaluation_step")].detail == "accuracy, count, loss"
    assert checks[("dataset 'good:dots'", "items (classification)")].status == "ok"
    assert checks[("hook 'good:counter'", "state round trip")].detail == "restored by load_state_dict"
    assert checks[("hook 'good:counter'", "resumes exactly")].status == "ok"


@pytest.mark.parametrize("change, subject, check, words", [
    (("{module}:Small", "no_such_module:Small"), "model 'bad:small'", "imports",
     ["could not be loaded from no_such_module:Small", "ModuleNotFoundError"]),
    (("every: Annotated[int, Range(1)] = 1", "every: Annotated[int, Range(1)] = 0"), "hook 'bad:counter'",
     "option defaults", ["option every", "default 0 is not at least 1", "a bug in plugin 'bad'"]),
    (("self.image_shape = (channels or 1, image_size or 28, image_size or 28)",
      "self.image_shape = (channels or 1, image_size or 28, image_size or 28); self.drawn = (1, 27, 28)"
      ), "dataset 'bad:dots'", "items (classification)", ["its input has shape (1, 27, 28)",
                                                          "but its image_shape is (1, 28, 28)"]),
    (("self.steps = state[\"steps\"]", "pass"), "hook 'bad:counter'", "state round trip",
     ["gives back another: state_dict()['steps']: 3 against 0", "load_state_dict must restore everything"]),
    (("            self.steps += 1\n", "            self.steps += 1\n            with torch.no_grad():\n"
      "                for p in run.recipe.parameters():\n                    p.mul_(1 - 0.01 * self.steps)\n"),
     "hook 'bad:counter'", "resumes exactly", ["differ from 3 straight", "weights["]),
])
def test_each_broken_plugin_fails_naming_the_cause(site, change, subject, check, words):
    source = GOOD.replace(*change)
    if "p.mul_" in change[1]:  # a count that steers training but is not saved
        source = source.replace('return {"steps": self.steps}', "return {}").replace(
            'self.steps = state["steps"]', "pass")
    if "self.drawn" in change[1]:  # items drawn at another size than the dataset says
        source = source.replace("torch.rand(self.image_shape, generator=generator)",
                                "torch.rand(self.drawn, generator=generator)")
    install(site, "bad", source)
    results = check_plugin("bad", discover())
    found = by_check(results)[(subject, check)]
    assert found.status == "failed", found
    for word in words:
        assert word in found.detail, found.detail


def test_a_model_that_forgets_state_on_resume_fails_the_resume_check(site, tmp_path):
    forgetful = GOOD.replace('''        def __init__(self, num_classes: int = 10, scale: Annotated[float, Range(0.0)] = 1.0):
            super().__init__(num_classes=num_classes)''', '''        def __init__(self, num_classes: int = 10, scale: Annotated[float, Range(0.0)] = 1.0):
            super().__init__(num_classes=num_classes)
            self.calls = 0  # a plain attribute: not in state_dict, so a resumed run starts it again
        def training_step(self, batch, loss_fn):
            self.calls += 1
            for name, loss in super().training_step(batch, loss_fn):
                yield name, loss * self.calls''')
    install(site, "forgetful", forgetful)
    found = by_check(check_plugin("forgetful", discover()))[
        ("model 'forgetful:small'", "trains and resumes exactly with loss 'cross_entropy'")]
    assert found.status == "failed"
    assert "weights[" in found.detail and "differs" in found.detail and "state_dict/load_state_dict" in found.detail
    with pytest.raises(AssertionError, match="a run stopped at step 2 and resumed to 3 differs from a straight "
                                             "3-step run: weights"):
        testing.assert_exact_resume("forgetful:small", tmp_path / "again", dataset="forgetful:dots")


def test_a_plugin_that_fails_to_import_fails_the_first_check(site):
    install(site, "broken", GOOD.replace("    import torch\n", "    import torch\n    import no_such_package_anywhere\n"))
    results = check_plugin("broken", discover())
    assert [(r.check, r.status) for r in results] == [("loads", "failed")]
    assert "no_such_package_anywhere" in results[0].detail


def test_a_dataset_that_needs_data_is_skipped_not_failed(site):
    install(site, "needy", GOOD.replace("needs_data = reads_data = False", "needs_data = reads_data = True\n"
                                        "        data_help = 'a folder of dots'"))
    results = check_plugin("needy", discover())
    found = by_check(results)[("dataset 'needy:dots'", "items (classification)")]
    assert found.status == "skipped" and "needs --data: a folder of dots" in found.detail
    assert failures(results) == []  # the model ran on the embedded data instead


def test_a_name_shared_with_a_builtin_is_checked_as_plugin_name(site):
    install(site, "mine", GOOD.replace('registry.hook("counter"', 'registry.hook("ema"'))
    results = check_plugin("mine", discover())
    assert failures(results) == []
    assert by_check(results)[("hook 'mine:ema'", "resumes exactly")].status == "ok"


def test_an_unknown_plugin_is_a_usage_error_with_suggestions(site):
    install(site, "goodness", GOOD)
    with pytest.raises(UsageError, match="no plugin named 'godness'.*Did you mean: goodness"):
        check_plugin("godness", discover())


def test_the_cli_prints_a_line_per_check_exits_1_on_failure_and_has_json(site, run_zoo, tmp_path):
    install(site, "bad", GOOD.replace("every: Annotated[int, Range(1)] = 1", "every: Annotated[int, Range(1)] = 0"))
    env = {"PYTHONPATH": str(tmp_path / "site")}
    result = run_zoo("check", "bad", env=env)
    assert result.returncode == 1, result.stderr
    lines = result.stdout.splitlines()
    assert any(line.startswith("FAIL  hook 'bad:counter': option defaults") for line in lines)
    assert lines[-1].startswith(f"{len(lines) - 1} checks: ") and "1 failed" in lines[-1]
    as_json = run_zoo("check", "bad", "--json", env=env)
    records = json.loads(as_json.stdout)
    assert as_json.returncode == 1 and {r["status"] for r in records} == {"ok", "failed"}
    assert set(records[0]) == {"check", "subject", "status", "detail"}
    unknown = run_zoo("check", "nope", env=env)
    assert unknown.returncode == 2 and unknown.stderr.startswith("zoo: error: no plugin named 'nope'")


def test_testing_helpers_train_resume_and_check_items(tmp_path):
    run = testing.tiny_run("mnist_net", tmp_path / "run", steps=2, hooks=["ema"])
    assert run.step == 2 and run.checkpoint.name == "step-2" and set(run.weight_sets) == {"ema"}
    assert run.weights.keys() == run.weight_sets["ema"].keys()
    straight, resumed = testing.assert_exact_resume("mnist_net", tmp_path / "pair", hooks=["ema"])
    assert all(torch.equal(straight.weights[k], resumed.weights[k]) for k in straight.weights)
    assert testing.check_items("shapes", task="classification", options={"train_count": 8}) == []
    assert testing.first_difference({"a": torch.ones(2)}, {"a": torch.tensor([1.0, 2.0])}, "s") == \
        "s['a'] differs (largest gap 1)"


def test_first_difference_compares_numpy_arrays_and_nan_bitwise():
    import numpy as np

    assert testing.first_difference(np.arange(3), np.arange(3)) is None
    assert "differs" in testing.first_difference({"a": np.zeros(2)}, {"a": np.ones(2)})
    nan = torch.tensor([float("nan"), 1.0])
    assert testing.first_difference(nan, nan.clone()) is None
    assert testing.first_difference(nan, torch.tensor([float("nan"), 2.0])) is not None


def test_tiny_run_gives_the_caller_its_random_generators_back(tmp_path):
    torch.manual_seed(1234)
    expected = torch.rand(3)
    torch.manual_seed(1234)
    testing.tiny_run("mnist_net", tmp_path / "run", steps=1)
    assert torch.equal(torch.rand(3), expected)


def test_a_model_whose_check_fails_is_not_used_again_for_the_plugins_hooks(site):
    install(site, "crashy", GOOD.replace('''            super().__init__(num_classes=num_classes)
''', '''            super().__init__(num_classes=num_classes)
        def training_step(self, batch, loss_fn):
            raise RuntimeError("boom")
            yield
''', 1))
    results = by_check(check_plugin("crashy", discover()))
    assert results[("model 'crashy:small'", "trains and resumes exactly with loss 'cross_entropy'")].status == "failed"
    hook_run = results[("hook 'crashy:counter'", "runs")]
    assert hook_run.status == "ok" and "crashy:small" not in hook_run.detail

"""A plugin's bug is named as that plugin's, in one line: its defaults, and exceptions raised in its code."""

from __future__ import annotations

import pytest

BUGGY_PLUGIN = """
    import torch.nn.functional as F
    from typing import Annotated
    from zoo import hookimpl
    from zoo.options import Range
    from plugins.models.mnist_net import MnistNet

    class OutOfRange(MnistNet):
        def __init__(self, num_classes: int = 10, depth: Annotated[int, Range(1)] = 0):
            super().__init__(num_classes=num_classes)
            self.depth = depth

    class WrongType(MnistNet):
        def __init__(self, num_classes: int = 10, depth: int = "two"):
            super().__init__(num_classes=num_classes)

    class WrongBool(MnistNet):
        def __init__(self, num_classes: int = 10, residual: bool = "no"):
            super().__init__(num_classes=num_classes)

    class Divides(MnistNet):
        def training_step(self, batch, loss_fn):
            images, labels = batch
            every = 0
            if len(labels) % every:  # a plugin's arithmetic bug
                pass
            yield "model", F.cross_entropy(self.net(images), labels)

    class WrongTarget(MnistNet):
        def training_step(self, batch, loss_fn):
            images, labels = batch
            yield "model", F.mse_loss(self.net(images), images)  # a target of the wrong shape

    @hookimpl
    def zoo_register(registry):
        for name in ("OutOfRange", "WrongType", "WrongBool", "Divides", "WrongTarget"):
            registry.model(name.lower(), f"buggy_zoo_plugin:{name}", "a model with a bug")
"""

TINY = ["--device", "cpu", "--batch-size", "4", "--max-steps", "1", "--dataset-opt", "train_count=8",
        "--dataset-opt", "test_count=4", "--no-hook", "samples", "--no-hook", "tensorboard"]


@pytest.fixture
def buggy_site(make_plugin):
    return make_plugin("buggy", BUGGY_PLUGIN)


@pytest.mark.parametrize("model, words", [
    ("outofrange", ["model 'buggy:outofrange' option depth", "default 0 is not at least 1", "plugin 'buggy'",
                    "--model-opt depth=VALUE"]),
    ("wrongtype", ["option depth", "default 'two' is not an integer", "plugin 'buggy'"]),
    ("wrongbool", ["option residual", "default 'no' is not true or false", "plugin 'buggy'"]),
    ("divides", ["plugin 'buggy' (model 'divides') failed at", "buggy_zoo_plugin.py:", "in training_step",
                 "ZeroDivisionError"]),
    ("wrongtarget", ["plugin 'buggy' (model 'wrongtarget') failed at", "buggy_zoo_plugin.py:", "RuntimeError"]),
])
def test_a_plugin_bug_is_one_line_naming_the_plugin(run_zoo, buggy_site, tmp_path, model, words):
    done = run_zoo("train", "--model", model, *TINY, "--run-dir", str(tmp_path / "run"),
                   env={"PYTHONPATH": str(buggy_site)})
    assert done.returncode == 1, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.startswith(("zoo: error", "zoo: internal"))]
    assert len(lines) == 1 and "internal error" not in lines[0] and "Traceback" not in done.stderr, done.stderr
    assert all(word in lines[0] for word in words), lines[0]


def test_a_user_value_for_a_bad_default_goes_around_it(run_zoo, buggy_site, tmp_path):
    done = run_zoo("train", "--model", "outofrange", "--model-opt", "depth=2", *TINY, "--run-dir",
                   str(tmp_path / "run"), env={"PYTHONPATH": str(buggy_site)})
    assert done.returncode == 0, done.stderr


def test_zoos_own_bugs_are_still_internal_errors():
    from zoo.blame import blame
    from zoo.registry import discover

    try:
        {}["missing"]
    except KeyError as exc:
        assert blame(exc, discover()) is None

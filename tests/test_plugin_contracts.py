"""A plugin that breaks zoo's contracts is named in one line, with what it broke, instead of failing deep inside.

Found by writing a third-party plugin: wrong items from a dataset, a loss that is no scalar, hook methods
that are never called, and the like.
"""

from __future__ import annotations

import json
import textwrap

import numpy as np
import pytest
import torch

from plugins.datasets.shapes import ShapesDataset
from zoo.data import item_problem

FLAWED_PLUGIN = """
    import torch
    from zoo import hookimpl
    from plugins.datasets.shapes import ShapesDataset

    class Flawed(ShapesDataset):
        '''shapes, with one flaw on item ``at`` (on every item with -1).'''

        def __init__(self, split, *, task, data=None, image_size=None, channels=None,
                     flaw: str = "none", at: int = -1):
            super().__init__(split, task=task, data=data, image_size=image_size, channels=channels,
                             train_count=32, test_count=8)
            self.flaw, self.at = flaw, at

        def __getitem__(self, index):
            image, target = super().__getitem__(index)
            if self.at not in (-1, index):
                return image, target
            if self.flaw == "raise":
                raise RuntimeError(f"cannot draw item {index}")
            if self.flaw == "crop":
                image = image[:, :, :-1]
            elif self.flaw == "label":
                target = len(self.classes)
            return image, target

    @hookimpl
    def zoo_register(registry):
        registry.dataset("flawed", "flawed_zoo_plugin:Flawed", "shapes with a flaw")
"""

TINY = ["--device", "cpu", "--batch-size", "4", "--log-every", "1"]


@pytest.fixture
def flawed_site(make_plugin):
    return make_plugin("flawed", FLAWED_PLUGIN)


def error_lines(err: str) -> list[str]:
    """The error line and what follows it."""
    assert "Traceback" not in err and "internal error" not in err, err
    lines = err.splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("zoo: error"))
    return [line for line in lines[first:] if line.startswith("zoo:")]


# ------------------------------------------------------------------ items a dataset gives


@pytest.fixture(scope="module")
def classes_split():
    return ShapesDataset("train", task="classification", train_count=4, test_count=4)


def test_a_right_item_has_no_problem(classes_split):
    assert item_problem(classes_split, classes_split[0]) is None
    image, label = classes_split[1]
    assert item_problem(classes_split, (image, torch.tensor(label))) is None  # a 0-d long tensor
    assert item_problem(classes_split, (image, np.int64(label))) is None  # numpy's ints, as default_collate takes


@pytest.mark.parametrize("flaw, words", [
    (lambda image, label: (image[:, :, :-1], label), "its input has shape (3, 32, 31), but its image_shape is (3, 32, 32)"),
    (lambda image, label: (image[:1], label), "its input has shape (1, 32, 32)"),
    (lambda image, label: ((image * 100).to(torch.uint8), label), "input must be a float32 image tensor, got uint8 tensor"),
    (lambda image, label: (image.numpy(), label), "input must be a float32 image tensor, got ndarray"),
    (lambda image, label: (image, 4), "its label is 4, outside 0..3 (4 classes)"),
    (lambda image, label: (image, -1), "its label is -1, outside 0..3"),
    (lambda image, label: (image, float(label)), "its label must be an int, got float"),
    (lambda image, label: (image, torch.tensor([label, label])), "its label must be an int, got int64 tensor"),
    (lambda image, label: (image, True), "its label must be an int, got bool"),
    (lambda image, label: image, "an item must be an (input, target) pair, got float32 tensor of shape (3, 32, 32)"),
    (lambda image, label: (image, label, 0), "an item must be an (input, target) pair, got tuple of 3"),
])
def test_an_item_that_breaks_the_contract_is_described(classes_split, flaw, words):
    assert words in item_problem(classes_split, flaw(*classes_split[0]))


class _FlawAt:
    """A dataset whose item ``at`` is passed through ``flaw``; it declares what the wrapped one declares."""

    def __init__(self, dataset, at, flaw):
        self.dataset, self.at, self.flaw = dataset, at, flaw
        self.task, self.image_shape, self.classes = dataset.task, dataset.image_shape, dataset.classes

    def __getitem__(self, index):
        item = self.dataset[index]
        return self.flaw(*item) if index == self.at else item

    def __len__(self):
        return len(self.dataset)


@pytest.mark.parametrize("flaw, words", test_an_item_that_breaks_the_contract_is_described.pytestmark[0].args[1])
def test_a_batch_names_its_one_wrong_item_and_keeps_the_others(classes_split, flaw, words):
    """The loader checks a batch at once (zoo.data.items_fit); a batch with a wrong item never passes that check,
    and each of its items is then checked alone, so the wrong one is named by its index."""
    from zoo.data import items_fit
    from zoo.engine.feed import BadItem, SeededItems

    flawed = _FlawAt(classes_split, 2, flaw)
    assert not items_fit(flawed, [flawed[index] for index in range(4)])
    items = SeededItems(flawed).__getitems__([(index, 7) for index in range(4)])
    assert [type(item) is BadItem for item in items] == [False, False, True, False]
    assert items[2].index == 2 and items[2].dataset_bug and words in items[2].message
    assert all(torch.equal(items[i][0], classes_split[i][0]) and items[i][1] == classes_split[i][1] for i in (0, 1, 3))


@pytest.mark.parametrize("other_form", [
    lambda image, label: (image, torch.tensor(label)),
    lambda image, label: (image, np.int64(label)),
    lambda image, label: [image, label],
])
def test_items_in_other_right_forms_pass_the_batch_check_item_by_item(classes_split, other_form):
    from zoo.data import items_fit
    from zoo.engine.feed import SeededItems

    varied = _FlawAt(classes_split, 1, other_form)
    assert items_fit(classes_split, [classes_split[0], classes_split[1]])
    assert not items_fit(varied, [varied[0], varied[1]])  # not the common form: checked one by one
    items = SeededItems(varied).__getitems__([(0, 1), (1, 1)])
    assert items[1] is not None and type(items[1]) is type(varied[1]) and int(items[1][1]) == classes_split[1][1]


def test_image_to_image_targets_are_float_images_of_any_shape():
    """A colouriser's or an upscaler's target differs from its input: only the input has image_shape."""
    pairs = ShapesDataset("train", task="image_to_image", train_count=2, test_count=2)
    degraded, clean = pairs[0]
    assert item_problem(pairs, (degraded, clean)) is None
    assert item_problem(pairs, (degraded[:1], clean)) == "its input has shape (1, 32, 32), but its image_shape is " \
                                                        "(3, 32, 32)"
    assert item_problem(pairs, (degraded, torch.zeros(3, 64, 64))) is None
    assert "its target must be a float image tensor, got int" in item_problem(pairs, (degraded, 3))


def test_a_dataset_whose_declarations_cannot_be_read_is_named(classes_split):
    from zoo.engine.feed import SeededItems

    broken = ShapesDataset("train", task="classification", train_count=2, test_count=2)
    broken.classes = 4  # not a list: len() fails
    item = SeededItems(broken)[(0, 0)]
    assert item.dataset_bug and "its image_shape or classes cannot be read (TypeError" in item.message


def test_generation_labels_are_not_checked():
    """Unlabelled data gives label 0; a generative model never reads it."""
    images = ShapesDataset("train", task="generation", train_count=2, test_count=2)
    image, _ = images[0]
    assert item_problem(images, (image, 99)) is None


def test_a_dataset_giving_wrong_shapes_is_named_in_one_line(run_zoo, flawed_site, tmp_path):
    run = tmp_path / "run"
    done = run_zoo("train", "--model", "mnist_net", "--dataset", "flawed", "--dataset-opt", "flaw=crop",
                   *TINY, "--max-steps", "3", "--run-dir", str(run), env={"PYTHONPATH": str(flawed_site)})
    assert done.returncode == 1, done.stderr
    lines = error_lines(done.stderr)
    assert lines[0].startswith("zoo: error: dataset 'flawed' gave a wrong item ")
    assert "its input has shape (1, 28, 27), but its image_shape is (1, 28, 28)" in lines[0]  # as mnist_net asked
    assert "fix its __getitem__" in lines[0]
    assert lines[1] == f"zoo: no step was done; fix the dataset plugin and start again (--overwrite to reuse {run})."


def test_an_exception_of_a_dataset_names_the_dataset(run_zoo, flawed_site, tmp_path):
    done = run_zoo("train", "--model", "mnist_net", "--dataset", "flawed", "--dataset-opt", "flaw=raise",
                   "--dataset-opt", "at=5", *TINY, "--max-steps", "20", "--run-dir", str(tmp_path / "run"),
                   env={"PYTHONPATH": str(flawed_site)})
    assert done.returncode == 1
    assert error_lines(done.stderr)[0].startswith("zoo: error: dataset 'flawed' sample 5: RuntimeError: cannot "
                                                  "draw item 5; or pass --skip-bad-files")


def test_a_label_out_of_range_mid_run_saves_the_steps_done_and_is_not_skipped(run_zoo, flawed_site, tmp_path):
    """--skip-bad-files is for unreadable files; a dataset bug stops the run whatever it says."""
    run = tmp_path / "run"
    done = run_zoo("train", "--model", "mnist_net", "--dataset", "flawed", "--dataset-opt", "flaw=label",
                   "--dataset-opt", "at=5", *TINY, "--epochs", "1",
                   "--eval-every", "0", "--skip-bad-files", "--run-dir", str(run),
                   env={"PYTHONPATH": str(flawed_site)})
    assert done.returncode == 1, done.stderr
    lines = error_lines(done.stderr)
    assert "its label is 4, outside 0..3 (4 classes)" in lines[-2]
    step = int(lines[-1].split("step ")[1].split(" ")[0])
    assert step >= 1
    assert lines[-1] == f"zoo: step {step} is saved; fix the dataset plugin and resume (zoo train --resume {run})"
    assert json.loads((run / "checkpoints" / f"step-{step}" / "state.json").read_text())["step"] == step


# ------------------------------------------------------------------ what a model, a loss or a hook returns

PARTS_PLUGIN = """
    import torch
    import torch.nn.functional as F
    from torch import nn
    from zoo import hookimpl
    from plugins.models.mnist_net import MnistNet

    class FlawedNet(MnistNet):
        '''mnist_net whose steps break the recipe contract as ``flaw`` says.'''

        losses = ("cross_entropy", "flawed_loss")

        def __init__(self, num_classes: int = 10, flaw: str = "none"):
            super().__init__(num_classes=num_classes)
            self.flaw = flaw

        def training_step(self, batch, loss_fn):
            images, labels = batch
            losses = F.cross_entropy(self.net(images), labels, reduction="none")
            if self.flaw == "return":
                return losses.mean()
            return self._steps(images, labels, losses, loss_fn)

        def _steps(self, images, labels, losses, loss_fn):
            if self.flaw == "nothing":
                return
            if self.flaw == "vector":
                yield "model", losses
            elif self.flaw == "detached":
                yield "model", losses.mean().detach()
            elif self.flaw == "bare":
                yield losses.mean()
            elif self.flaw == "optimizer":
                yield "generator", losses.mean()
            elif self.flaw == "one_element":  # shape (1,): backward takes it, so zoo does too
                yield "model", losses.mean().view(1)
            elif self.flaw == "list":
                yield ["model", losses.mean()]
            else:
                yield "model", loss_fn(self.net(images), labels)

        def evaluation_step(self, batch, loss_fn, generator):
            sums = super().evaluation_step(batch, loss_fn, generator)
            if self.flaw == "no_count":
                del sums["count"]
            elif self.flaw == "eval_vector":
                sums["loss"] = sums["loss"].expand(3)
            return sums

    class FlawedLoss(nn.Module):
        def __init__(self, flaw: str = "none"):
            super().__init__()
            self.flaw = flaw

        def forward(self, prediction, target):
            losses = F.cross_entropy(prediction, target, reduction="none")
            if self.flaw == "none_reduce":
                return losses
            if self.flaw == "detach":
                return losses.mean().detach()
            if self.flaw == "float":
                return float(losses.mean())
            return losses.mean()

    class Unmarked:
        def on_step_end(self, run, step, scalars):
            raise RuntimeError("never called")

    class Misspelt:
        @hookimpl
        def on_step_ends(self, run, step, scalars):
            pass

    class Logger:
        @hookimpl
        def on_step_end(self, run, step, scalars):
            run.log("extra", 1.0)

    class LogBreaker:
        @hookimpl
        def on_log(self, run, step, name, value):
            raise RuntimeError("on_log exploded")

    class BadState:
        def __init__(self, kind: str = "raise"):
            self.kind = kind

        @hookimpl
        def on_train_start(self, run):
            pass

        def state_dict(self):
            if self.kind == "raise":
                raise RuntimeError("state exploded")
            return {"handle": object()}

        def load_state_dict(self, state):
            pass

    class NoLoad:
        @hookimpl
        def on_train_start(self, run):
            pass

        def state_dict(self):
            return {"n": 1}

    @hookimpl
    def zoo_register(registry):
        registry.model("flawed_net", "parts_zoo_plugin:FlawedNet", "mnist_net with flaws")
        registry.loss("flawed_loss", "parts_zoo_plugin:FlawedLoss", "cross entropy with flaws")
        for name, target in (("unmarked", "Unmarked"), ("misspelt", "Misspelt"), ("logger", "Logger"),
                             ("log_breaker", "LogBreaker"), ("bad_state", "BadState"), ("no_load", "NoLoad")):
            registry.hook(name, f"parts_zoo_plugin:{target}", "a hook with a flaw")
"""


@pytest.fixture(scope="module")
def parts_site(tmp_path_factory, install_plugin):
    return install_plugin(tmp_path_factory.mktemp("parts") / "site", "parts", PARTS_PLUGIN)


def run_flawed(run_zoo, site, tmp_path, *args: str, steps: int = 2):
    """``zoo train --model flawed_net ARGS`` on a tiny split, with the plugin installed; the finished process."""
    return run_zoo("train", "--model", "flawed_net", *args, *TINY, "--max-steps", str(steps),
                   "--dataset-opt", "train_count=16", "--dataset-opt", "test_count=8",
                   "--run-dir", str(tmp_path / "run"), env={"PYTHONPATH": str(site)})


def train_with_flaw(run_zoo, site, tmp_path, *args: str) -> tuple[int, list[str]]:
    done = run_flawed(run_zoo, site, tmp_path, *args)
    return done.returncode, error_lines(done.stderr) if done.returncode else []


@pytest.mark.parametrize("args, words", [
    (["--model-opt", "flaw=return"], "model 'flawed_net': training_step must be a generator that yields "
                                     "(optimizer name, loss) pairs, got float32 tensor of shape () (yield, not return)."),
    (["--model-opt", "flaw=vector"], "model 'flawed_net': the loss of optimizer 'model' must be a scalar tensor, "
                                     "got float32 tensor of shape (4,) (reduce it, e.g. with .mean())."),
    (["--model-opt", "flaw=detached"], "model 'flawed_net' yielded a loss for optimizer 'model' that does not "
                                       "depend on its parameters (no grad_fn)"),
    (["--model-opt", "flaw=bare"], "model 'flawed_net': training_step must yield (optimizer name, loss) pairs, "
                                   "got float32 tensor of shape ()."),
    (["--model-opt", "flaw=optimizer"], "model 'flawed_net' yielded a loss for optimizer 'generator' but "
                                        "configured only 'model'."),
    (["--model-opt", "flaw=no_count"], "model 'flawed_net': evaluation_step must return a dict of per-batch sums "
                                       "with 'count' (the batch's number of samples"),
    (["--model-opt", "flaw=eval_vector"], "its 'loss' must be a number or a one-element tensor, got float32 "
                                          "tensor of shape (3,)."),
    (["--loss", "flawed_loss", "--loss-opt", "flaw=none_reduce"],
     "loss 'flawed_loss' must return a scalar tensor, got float32 tensor of shape (4,) (reduce it in forward"),
    (["--loss", "flawed_loss", "--loss-opt", "flaw=detach"],
     "model 'flawed_net' yielded a loss for optimizer 'model' that does not depend on its parameters"),
    (["--loss", "flawed_loss", "--loss-opt", "flaw=float"], "loss 'flawed_loss' must return a scalar tensor, got float"),
    (["--hook", "unmarked"], "hook 'parts:unmarked': on_step_end is not marked @zoo.hookimpl, so zoo would never "
                             "call it"),
    (["--hook", "misspelt"], "hook 'parts:misspelt': on_step_ends is marked @zoo.hookimpl but zoo has no such "
                             "hook; name it after one of: on_train_start, on_train_step, on_step_end"),
    (["--hook", "no_load"], "hook 'parts:no_load' has state_dict() but no load_state_dict(): its state could not "
                            "come back on resume; define both (or neither)."),
    (["--hook", "logger", "--hook", "log_breaker", "--log-every", "1"],
     "zoo: error: hook 'parts:log_breaker' failed in on_log: RuntimeError: on_log exploded"),
])
def test_a_part_that_breaks_its_contract_is_named_in_one_line(run_zoo, parts_site, tmp_path, args, words):
    code, lines = train_with_flaw(run_zoo, parts_site, tmp_path, "--eval-every", "1", *args)
    assert code == 1
    assert words in lines[0]
    assert len(lines) <= 2


@pytest.mark.parametrize("args", [["--model-opt", "flaw=one_element"], ["--model-opt", "flaw=list"]])
def test_what_backward_takes_is_taken(run_zoo, parts_site, tmp_path, args):
    code, _ = train_with_flaw(run_zoo, parts_site, tmp_path, *args)
    assert code == 0


def test_a_step_that_yields_no_loss_is_said_once_and_not_refused(run_zoo, parts_site, tmp_path):
    done = run_flawed(run_zoo, parts_site, tmp_path, "--model-opt", "flaw=nothing", steps=3)
    assert done.returncode == 0, done.stderr
    assert done.stderr.count("training_step yielded no (optimizer name, loss) pair at step 1, so nothing was "
                             "updated (said once)") == 1


@pytest.mark.parametrize("kind, words", [
    ("raise", "hook 'parts:bad_state' failed in state_dict: RuntimeError: state exploded"),
    ("object", "hook 'parts:bad_state': state_dict() must return JSON values (numbers, strings, lists, dicts) "
               "and tensors; cannot store a object in a checkpoint"),
])
def test_a_hook_state_a_checkpoint_cannot_hold_is_named_after_the_steps_are_saved(run_zoo, parts_site, tmp_path,
                                                                                 kind, words):
    run = tmp_path / "run"
    code, lines = train_with_flaw(run_zoo, parts_site, tmp_path, "--hook", "bad_state",
                                  "--hook-opt", f"bad_state.kind={kind}", "--save-every", "1")
    assert code == 1
    assert lines == [f"zoo: error: {words}",
                     f"zoo: step 1 is saved without that hook's state; fix the hook or turn it off (--no-hook), "
                     f"then: zoo train --resume {run}"]
    assert (run / "checkpoints" / "step-1" / "state.json").exists()


def test_a_hook_state_left_out_of_the_last_save_is_a_warning_not_a_failure(run_zoo, parts_site, tmp_path):
    done = run_flawed(run_zoo, parts_site, tmp_path, "--hook", "bad_state", steps=1)
    assert done.returncode == 0, done.stderr
    assert ("zoo: warning: hook 'parts:bad_state' failed in state_dict: RuntimeError: state exploded\n"
            "zoo: step 1 is saved without that hook's state.") in done.stderr


DECLARATIONS = """
    from plugins.models.mnist_net import MnistNet

    class WrongTask(MnistNet):
        task = "classify"

    class WrongMetric(MnistNet):
        metric = ("acc", "max")

    class WrongDirection(MnistNet):
        metric = ("accuracy", "up")

    class ReportsOthers(MnistNet):
        '''reports other metrics than its parent declared: declares none, so any metric goes'''
        metric = ("f1", "max")

        def evaluation_step(self, batch, loss_fn, generator):
            return {"f1": 0.0, "count": 1}
"""


@pytest.mark.parametrize("target, words", [
    ("WrongTask", "its task 'classify' is none of generation, classification, image_to_image"),
    ("WrongMetric", "its metric 'acc', which picks the best checkpoint, is not among its eval_metrics (loss, accuracy)"),
    ("WrongDirection", "its metric ('accuracy', 'up') must be (name, 'max' or 'min') or None"),
    ("ReportsOthers", None),
])
def test_a_model_class_declaring_what_cannot_be_is_refused_as_a_plugin_bug(tmp_path, monkeypatch, target, words):
    from zoo.build import load_recipe_class
    from zoo.errors import PluginError
    from zoo.registry import Entry

    (tmp_path / "declarations_zoo_plugin.py").write_text(textwrap.dedent(DECLARATIONS))
    monkeypatch.syspath_prepend(str(tmp_path))
    entry = Entry("model", "odd", f"declarations_zoo_plugin:{target}", "", "odd")
    if words is None:
        assert load_recipe_class(entry).metric == ("f1", "max")
        return
    with pytest.raises(PluginError) as refused:
        load_recipe_class(entry)
    assert str(refused.value) == f"model 'odd:odd': {words}; fix or disable plugin 'odd'."


# ------------------------------------------------------------------ options a constructor does not type


def untyped(depth=None, mult=2, *, gamma, beta: float, name: str | None = None):
    return locals()


def test_an_option_with_no_hint_and_no_default_value_is_read_as_a_literal():
    from zoo.options import parse_options
    given = {"depth": "3", "gamma": "0.5", "beta": "2"}
    assert parse_options("model 'odd'", untyped, given) == {"depth": 3, "gamma": 0.5, "beta": 2.0}
    assert parse_options("model 'odd'", untyped, {"depth": "none", "gamma": "true"}) == {"depth": None,
                                                                                       "gamma": True}
    assert parse_options("model 'odd'", untyped, {"depth": "deep"}) == {"depth": "deep"}
    assert parse_options("model 'odd'", untyped, {"depth": "nan", "gamma": "inf"}) == {"depth": "nan", "gamma": "inf"}
    assert parse_options("model 'odd'", untyped, {"mult": "3"}) == {"mult": 3}  # the default's type
    assert parse_options("model 'odd'", untyped, {"name": "none"}) == {"name": None}


def test_a_required_option_left_out_names_the_flag_to_pass():
    from zoo.errors import UsageError
    from zoo.options import missing_required
    missing_required("model 'odd'", untyped, ["gamma", "beta"], "--model-opt ")  # all given: nothing said
    with pytest.raises(UsageError) as refused:
        missing_required("model 'odd'", untyped, ["depth"], "--model-opt ")
    assert str(refused.value) == ("model 'odd' needs options gamma, beta: pass --model-opt gamma=VALUE "
                                  "--model-opt beta=VALUE.")
    with pytest.raises(UsageError, match=r"hook 'odd' needs option gamma: pass --hook-opt odd.gamma=VALUE\.$"):
        missing_required("hook 'odd'", untyped, ["beta"], "--hook-opt odd.")


def test_info_flags_hook_methods_that_would_never_be_called(run_zoo, parts_site):
    done = run_zoo("info", "unmarked", env={"PYTHONPATH": str(parts_site)})
    assert done.returncode == 0, done.stderr
    assert "  implements: nothing" in done.stdout
    assert "  not marked @zoo.hookimpl (never called; a run refuses it): on_step_end" in done.stdout
    done = run_zoo("info", "misspelt", env={"PYTHONPATH": str(parts_site)})
    assert "  implements: nothing" in done.stdout
    assert "  marked but no such hook (never called; a run refuses it): on_step_ends" in done.stdout


def test_a_helper_method_named_on_something_is_no_hook_method():
    from zoo import hookimpl
    from zoo.hookspecs import hook_methods

    class Mixed:
        @hookimpl
        def on_step_end(self, run, step, scalars):
            pass

        def on_nan(self):  # the hook's own helper: neither a hookspec nor marked
            pass

    assert hook_methods(Mixed) == (["on_step_end"], [], [])


SHAPELESS = """
    from plugins.datasets.shapes import ShapesDataset
    from zoo.data import ZooDataset

    class NoShape(ZooDataset):
        tasks = ("classification",)
        needs_data = reads_data = False

        def __init__(self, split, *, task, data=None, image_size=None, channels=None):
            super().__init__(split, task=task, data=data, image_size=image_size, channels=channels)

    class KeepsItsChannels(ShapesDataset):
        def __init__(self, split, *, task, data=None, image_size=None, channels=None):
            super().__init__(split, task=task, data=data, image_size=image_size, channels=None, train_count=4)
"""


@pytest.mark.parametrize("target, channels, words", [
    ("NoShape", None, "dataset 'odd:odd' must set image_shape to its items' (C, H, W) in __init__, got None"),
    ("KeepsItsChannels", 1, "dataset 'odd:odd' was asked for channels=1, image_size=28 but its image_shape is "
                            "(3, 28, 28): it must convert and resize its images to what it is given"),
])
def test_a_dataset_that_does_not_say_or_keep_its_shape_is_named(tmp_path, monkeypatch, target, channels, words):
    from zoo.build import build_dataset
    from zoo.errors import PluginError
    from zoo.registry import Entry

    (tmp_path / "shapeless_zoo_plugin.py").write_text(textwrap.dedent(SHAPELESS))
    monkeypatch.syspath_prepend(str(tmp_path))
    entry = Entry("dataset", "odd", f"shapeless_zoo_plugin:{target}", "", "odd")
    with pytest.raises(PluginError) as refused:
        build_dataset(entry, "train", task="classification", data=None, options={}, channels=channels,
                      image_size=28 if channels else None)
    assert str(refused.value).startswith(words)


def test_items_of_a_batch_that_cannot_be_stacked_are_named_as_a_dataset_bug():
    from zoo.engine.feed import BadItems, WrongItemError, collate_items
    batch, bad = collate_items([(torch.zeros(3, 4, 4), torch.zeros(3, 4, 4)), (torch.zeros(3, 4, 4),
                                                                                torch.zeros(3, 5, 5))])
    assert batch is None and bad[0].dataset_bug
    with pytest.raises(WrongItemError, match=r"the dataset's items of one batch cannot be stacked \(RuntimeError: "
                                             r"stack expects each tensor to be equal size"):
        BadItems(skip=True).check(bad)


def test_a_batch_loads_each_item_under_its_own_seed_and_puts_the_callers_seed_back():
    from zoo.data import item_rng, seeded_item
    from zoo.engine.feed import SeededItems

    class Draws:
        task, image_shape, classes = "classification", (1, 2, 2), ["a"]

        def __getitem__(self, index):
            return torch.rand(1, 2, 2, generator=item_rng()), 0

    with seeded_item(5):
        before = item_rng().get_state()
        items = SeededItems(Draws()).__getitems__([(0, 11), (1, 12), (2, 11)])
        assert torch.equal(item_rng().get_state(), before)
    assert torch.equal(items[0][0], items[2][0]) and not torch.equal(items[0][0], items[1][0])
    with seeded_item(12) as generator:
        assert torch.equal(items[1][0], torch.rand(1, 2, 2, generator=generator))
    assert item_rng() is None

"""The example plugin's own tests: fast, on the CPU, importing the package directly.

Run with the package installed (``pip install -e .`` or ``pip install --target DIR .``
plus ``PYTHONPATH=DIR``) and zoo importable: ``python -m pytest tests``.
"""

from __future__ import annotations

import math

import pytest
import torch

from zoo.data import seeded_item
from zoo.options import parse_options
from zoo.recipe import Recipe
from zoo.registry import Registrar
from zoo_plugin_example import plugin
from zoo_plugin_example.datasets import ORIENTATIONS, StripesDataset
from zoo_plugin_example.hooks import LossSpikeAlarm
from zoo_plugin_example.losses import SSIMLiteLoss
from zoo_plugin_example.model import TinyAutoencoder


def test_register_offers_one_of_each_kind_and_every_target_loads():
    registrar = Registrar("example")
    plugin.zoo_register(registry=registrar)
    by_kind = {entry.kind: entry for entry in registrar.entries}
    assert {k: e.name for k, e in by_kind.items()} == {
        "model": "tiny_autoencoder", "loss": "ssim_lite", "dataset": "stripes", "hook": "loss_spike_alarm"}
    assert all(entry.plugin == "example" and entry.summary for entry in registrar.entries)
    assert issubclass(by_kind["model"].load(), Recipe)
    assert by_kind["dataset"].load() is StripesDataset


def test_stripes_items_are_deterministic_and_shaped():
    data = StripesDataset("test", task="image_to_image", size=16, test_count=8)
    noisy, clean = data[3]
    again_noisy, again_clean = data[3]
    assert noisy.shape == clean.shape == (3, 16, 16) == data.image_shape
    assert torch.equal(noisy, again_noisy) and torch.equal(clean, again_clean)
    assert clean.min() >= -1 and clean.max() <= 1 and not torch.equal(noisy, clean)
    assert not torch.equal(data[3][1], StripesDataset("train", task="image_to_image", size=16)[3][1])
    grey = StripesDataset("train", task="classification", image_size=20, channels=1)
    image, label = grey[5]
    assert image.shape == (1, 20, 20) and label == 5 % len(ORIENTATIONS) and grey.classes == ORIENTATIONS


def test_stripes_augmentation_draws_only_from_item_rng():
    data = StripesDataset("train", task="image_to_image", size=16)
    with seeded_item(7):
        first = data[2]
    torch.manual_seed(123)  # the global RNG must not matter inside the engine
    with seeded_item(7):
        second = data[2]
    with seeded_item(8):
        other = data[2]
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    assert not torch.equal(first[0], other[0])


def test_stripes_rejects_bad_options():
    with pytest.raises(ValueError, match="1 or 3 channels"):
        StripesDataset("train", task="image_to_image", channels=2)
    with pytest.raises(ValueError, match="noise"):
        StripesDataset("train", task="image_to_image", noise=-1.0)


def test_ssim_lite_is_zero_for_equal_images_and_grows_with_noise():
    loss = SSIMLiteLoss()
    image = torch.rand(2, 3, 16, 16) * 2 - 1
    assert loss(image, image).item() == pytest.approx(0.0, abs=1e-5)
    small = loss(image + 0.05 * torch.randn_like(image), image).item()
    large = loss(image + 0.5 * torch.randn_like(image), image).item()
    assert 0 < small < large <= 2
    prediction = image.clone().requires_grad_(True)
    SSIMLiteLoss(window=3, l1_weight=1.0)(prediction, image.flip(0)).backward()
    assert torch.isfinite(prediction.grad).all()


def test_tiny_autoencoder_adapts_trains_and_evaluates():
    options, wanted = TinyAutoencoder.adapt_to_data((1, 30, 30), None, {"depth": 3})
    assert wanted == (1, 32) and options["image_size"] == 32  # rounded up to a multiple of 2**3
    with pytest.raises(ValueError, match="multiple"):
        TinyAutoencoder(image_size=30)
    torch.manual_seed(0)
    model = TinyAutoencoder(channels=3, width=4, depth=2, image_size=16)
    optimizer = model.configure_optimizers(None)["model"]
    assert model.configure_schedulers({"model": optimizer})["model"].optimizer is optimizer
    batch = (torch.rand(4, 3, 16, 16) * 2 - 1, torch.rand(4, 3, 16, 16) * 2 - 1)
    (name, loss), = list(model.training_step(batch, SSIMLiteLoss()))
    assert name == "model" and loss.requires_grad and "l1" in model.pop_logs()
    model.eval()
    with torch.no_grad():
        sums = model.evaluation_step(batch, None, torch.Generator())
    assert sums["count"] == 4 and math.isfinite(float(sums["psnr"])) and model.sample(4, torch.Generator()) is None


class FakeRun:
    """The two RunContext methods the hook uses."""

    def __init__(self):
        self.logged, self.stop_reason = [], None

    def log(self, name, value):
        self.logged.append((name, value))

    def request_stop(self, reason):
        self.stop_reason = reason


def test_loss_spike_alarm_logs_and_stops_above_threshold():
    options = parse_options("hook 'loss_spike_alarm'", LossSpikeAlarm, {"threshold": "2.5"})
    hook, run = LossSpikeAlarm(**options), FakeRun()
    scalars = {"loss": 0.5, "l1": 0.2, "compute_efficiency": 0.9, "samples_per_sec": 900.0, "lr/model": 1e-3}
    hook.on_train_start(run=run)
    hook.on_step_end(run=run, step=20, scalars=scalars)
    assert run.logged == [("loss_spike_alarm/max_loss", 0.5)] and run.stop_reason is None
    hook.on_step_end(run=run, step=40, scalars={**scalars, "loss": 3.0})
    assert "'loss' is 3 at step 40" in run.stop_reason and hook.tripped == (40, "loss", 3.0)
    watching = LossSpikeAlarm(threshold=1.0, watch="generator")
    watching.on_step_end(run=FakeRun(), step=1, scalars=scalars)  # no such scalar: nothing to check
    assert LossSpikeAlarm().threshold == 10.0
    with pytest.raises(ValueError):
        LossSpikeAlarm(threshold=-1)


def test_training_on_stripes_resumes_exactly(tmp_path):
    """Through zoo's engine (the plugin must be installed): 2 steps + resume to 4 == 4 straight steps."""
    from safetensors.torch import load_file

    from zoo.config import TrainConfig
    from zoo.engine import checkpoint
    from zoo.engine.rundir import prepare_new
    from zoo.engine.trainer import Trainer
    from zoo.registry import discover

    registry = discover()
    assert registry.plugins["example"].status == "ok", "install the plugin first (see README)"

    def train(run_dir, max_steps, resume=False):
        config = TrainConfig(model="tiny_autoencoder", dataset="stripes", hooks=["loss_spike_alarm"],
                             no_hooks=["tensorboard", "samples"], model_opt={"width": 4},
                             dataset_opt={"size": 16, "train_count": 24, "test_count": 8},
                             batch_size=8, log_every=1, device="cpu", max_steps=max_steps,
                             run_dir=str(run_dir))
        if not resume:
            prepare_new(run_dir, overwrite=True)
        Trainer(config, registry, run_dir, resume=resume).fit()
        return load_file(str(checkpoint.list_steps(run_dir)[-1][1] / "model.safetensors"))

    straight = train(tmp_path / "straight", 4)  # 3 steps per epoch: crosses an epoch and reshuffles
    train(tmp_path / "resumed", 2)
    resumed = train(tmp_path / "resumed", 4, resume=True)
    assert straight.keys() == resumed.keys()
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)


def test_zoo_check_passes_every_check():
    """zoo's conformance kit (``zoo check example``): imports, option defaults, items, exact resume, hooks."""
    from zoo.conformance import check_plugin
    from zoo.registry import discover

    results = check_plugin("example", discover())
    assert [result.line() for result in results if result.status == "failed"] == []
    assert any(r.check.startswith("trains and resumes exactly") and r.status == "ok" for r in results)


def test_the_autoencoder_resumes_bitwise_with_zoo_testing(tmp_path):
    """The same as the test above, in one call of zoo.testing."""
    from zoo.testing import assert_exact_resume

    assert_exact_resume("example:tiny_autoencoder", tmp_path, dataset="example:stripes", hooks=["loss_spike_alarm"],
                        model_opt={"width": 4}, dataset_opt={"size": 16, "train_count": 24, "test_count": 8})

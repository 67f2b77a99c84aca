"""Image grids of a run: image-to-image runs show fixed test inputs, outputs and targets; drawing them changes nothing."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torchvision.transforms.v2.functional import pil_to_tensor

from zoo.api import load_run
from zoo.config import TrainConfig
from zoo.engine import pictures
from zoo.engine.rundir import prepare_new
from zoo.engine.tester import evaluate_run
from zoo.engine.trainer import Trainer
from zoo.errors import RunError
from zoo.recipe import predictor
from zoo.registry import discover

SIZE = 16
I2I = dict(model="resnet_i2i", loss="l1", model_opt={"ngf": 4, "blocks": 1},
           dataset_opt={"train_count": 32, "test_count": 10, "degrade": "noise", "size": SIZE},
           batch_size=8, log_every=2, device="cpu", max_steps=6, eval_every=0)


@pytest.fixture(scope="module")
def registry():
    return discover()


def train(registry, run_dir: Path, **overrides) -> Trainer:
    prepare_new(run_dir, overwrite=True)
    trainer = Trainer(TrainConfig(**dict(I2I, run_dir=str(run_dir), **overrides)), registry, run_dir,
                      resume=False, command_line=["zoo", "test-run"])
    trainer.fit()
    return trainer


def grid_cells(path: Path, rows: int, columns: int, size: int = SIZE) -> torch.Tensor:
    """The images of a saved grid (make_grid's 2-pixel padding) as ``(rows, columns, C, size, size)`` uint8."""
    grid = pil_to_tensor(Image.open(path).convert("RGB"))
    cell = size + 2
    assert grid.shape[1:] == (rows * cell + 2, columns * cell + 2)
    return torch.stack([torch.stack([grid[:, 2 + r * cell:2 + r * cell + size, 2 + c * cell:2 + c * cell + size]
                                     for c in range(columns)]) for r in range(rows)])


def as_png_bytes(images: torch.Tensor) -> torch.Tensor:
    """Images in ``[-1, 1]`` as the uint8 values save_image writes."""
    return ((images.float() + 1) / 2).clamp(0, 1).mul(255).add(0.5).clamp(0, 255).to(torch.uint8)


def test_an_image_to_image_run_saves_test_inputs_outputs_and_targets(registry, tmp_path):
    trainer = train(registry, tmp_path / "run", epochs=None)
    cells = grid_cells(tmp_path / "run" / "samples" / "latest.png", rows=3, columns=8)
    indices = pictures.preview_indices(len(trainer.run.test_set))
    assert len(set(indices)) == 8 and sorted(indices) == indices and max(indices) < 10
    inputs = torch.stack([trainer.run.test_set[i][0] for i in indices])
    targets = torch.stack([trainer.run.test_set[i][1] for i in indices])
    outputs = load_run(tmp_path / "run", device="cpu").predict(inputs)
    for row, expected in enumerate((inputs, outputs, targets)):
        difference = (cells[row].int() - as_png_bytes(expected).int()).abs().max().item()
        assert difference <= 1, f"row {row} differs by {difference} grey levels"
    assert not torch.equal(cells[0], cells[2])  # the inputs are degraded, not the targets again

    result = evaluate_run(registry, tmp_path / "run", device="cpu")
    assert result["sample_grid"] == str(tmp_path / "run" / "samples" / "test-step-6.png")
    assert torch.equal(grid_cells(Path(result["sample_grid"]), 3, 8), cells)  # the same weights, the same grid


def test_drawing_the_grids_leaves_training_bitwise_unchanged(registry, tmp_path, monkeypatch):
    monkeypatch.setattr(pictures, "GRID_SHARE", 1.0)  # no budget: a grid at every epoch's end
    quiet = train(registry, tmp_path / "quiet", no_hooks=["samples", "tensorboard"], max_steps=9)
    shown = train(registry, tmp_path / "shown", max_steps=9)  # grids at the ends of epochs 1 and 2
    assert sorted(p.name for p in (tmp_path / "shown" / "samples").iterdir()) == \
        ["latest.png", "step-4.png", "step-8.png", "step-9.png"]
    assert not (tmp_path / "quiet" / "samples").exists()
    for (name, a), (_, b) in zip(quiet.run.recipe.state_dict().items(), shown.run.recipe.state_dict().items()):
        assert torch.equal(a, b), name


def test_epoch_end_grids_past_their_budget_are_skipped_alike_by_both_hooks_and_the_end_still_has_one(
        registry, tmp_path, monkeypatch):
    from test_engine import read_events

    monkeypatch.setattr(pictures, "GRID_SHARE", 0.0)  # nothing to spend: the first epoch's end alone
    train(registry, tmp_path / "run", max_steps=13)  # 4 steps an epoch: ends at 4, 8, 12
    assert sorted(p.name for p in (tmp_path / "run" / "samples").iterdir()) == \
        ["latest.png", "step-13.png", "step-4.png"]
    latest = tmp_path / "run" / "samples" / "latest.png"
    assert latest.read_bytes() == (tmp_path / "run" / "samples" / "step-13.png").read_bytes()
    shown = [e.step for e in read_events(tmp_path / "run" / "tensorboard") for v in e.summary.value
             if v.tag == "samples"]
    assert shown == [4, 13]


def test_the_tensorboard_hook_charges_its_writer_threads_checksum_of_a_grid_to_the_budget(
        registry, tmp_path, monkeypatch):
    from test_engine import read_events

    import plugins.hooks.tensorboard as tensorboard_hook
    monkeypatch.setattr(pictures, "GRID_SHARE", 1.0)  # no budget for drawing: a grid at every epoch's end
    monkeypatch.setattr(tensorboard_hook, "checksum_seconds_per_byte", lambda: 0.0)
    train(registry, tmp_path / "cheap", no_hooks=["samples"], max_steps=13)  # 4 steps an epoch
    monkeypatch.setattr(tensorboard_hook, "checksum_seconds_per_byte", lambda: 1.0)  # a second a byte
    train(registry, tmp_path / "dear", no_hooks=["samples"], max_steps=13)
    shown = {name: [e.step for e in read_events(tmp_path / name / "tensorboard") for v in e.summary.value
                    if v.tag == "samples"] for name in ("cheap", "dear")}
    assert shown == {"cheap": [4, 8, 12, 13], "dear": [4, 13]}  # the first epoch's end and the run's end


def test_tensorboards_checksum_cost_is_timed_on_the_writers_own_function():
    import plugins.hooks.tensorboard as tensorboard_hook
    cost = tensorboard_hook.checksum_seconds_per_byte()
    assert 0 < cost < 1e-3  # pure Python: about 0.2 us a byte; the native module: far less


def test_the_grid_budget_allows_a_grid_while_grids_took_at_most_their_share_of_the_time(monkeypatch):
    monkeypatch.setattr(pictures, "GRID_SHARE", 0.02)
    now = [100.0]
    budget = pictures.GridBudget(clock=lambda: now[0])
    now[0] += 1.0
    assert budget.due(23)  # nothing spent yet: the first epoch's end has one
    with budget.charged():
        now[0] += 0.1  # the grid took 0.1 s
    assert budget.spent == pytest.approx(0.1)
    assert budget.due(23)  # one answer a step: the second hook draws it too
    now[0] += 1.0
    assert not budget.due(46)  # 0.1 s of 2.1 s
    now[0] = 105.5
    assert budget.due(69)  # 0.1 s of 5.5 s: under 2%
    budget.start()  # a new start: nothing spent
    assert budget.spent == 0.0 and budget.due(69)


def test_a_classifier_frames_its_test_images_green_where_right_and_red_where_wrong(registry, tmp_path):
    trainer = train(registry, tmp_path / "run", model="mnist_net", loss=None, model_opt={},
                    dataset_opt={"train_count": 64, "test_count": 40, "size": SIZE}, max_steps=5)
    size = trainer.run.test_set.image_shape[1]  # the classifier's own input size
    indices = pictures.preview_indices(len(trainer.run.test_set), pictures.CLASSIFIED_COUNT)
    images = torch.stack([trainer.run.test_set[i][0] for i in indices])
    labels = torch.tensor([trainer.run.test_set[i][1] for i in indices])
    right = load_run(tmp_path / "run", device="cpu").predict(images).argmax(dim=1) == labels
    assert 0 < int(right.sum()) < len(right)  # half-trained: both colours show

    grid = pil_to_tensor(Image.open(tmp_path / "run" / "samples" / "latest.png").convert("RGB"))
    scale = pictures.LABELLED_SIDE // size  # small images are shown scaled up by a whole factor
    shown = size * scale
    cell_w, cell_h = shown + 2 * pictures.FRAME + 2, shown + 2 * pictures.FRAME + pictures.NAME_HEIGHT + 2
    assert grid.shape[1:] == (4 * cell_h + 2, 8 * cell_w + 2)  # 32 images, 8 a row, a name under each
    tops = [(2 + (n // 8) * cell_h, 2 + (n % 8) * cell_w) for n in range(32)]  # each frame's top-left pixel
    corners = [grid[:, y, x] for y, x in tops]
    green, red = (torch.tensor(c).mul(255).round().to(torch.uint8) for c in (pictures.RIGHT, pictures.WRONG))
    assert [torch.equal(c, green) for c in corners] == right.tolist()
    assert all(torch.equal(c, green) or torch.equal(c, red) for c in corners)
    inside = grid[:, 2 + pictures.FRAME:2 + pictures.FRAME + shown, 2 + pictures.FRAME:2 + pictures.FRAME + shown]
    first = as_png_bytes(images[0]).expand(3, -1, -1)
    assert torch.equal(inside, first.repeat_interleave(scale, 1).repeat_interleave(scale, 2))  # gray as RGB

    # under each image its predicted class's name: alike where the predictions are alike, and never blank
    below = shown + 2 * pictures.FRAME
    strips = [grid[:, y + below:y + below + pictures.NAME_HEIGHT, x:x + cell_w - 2] for y, x in tops]
    predicted = load_run(tmp_path / "run", device="cpu").predict(images).argmax(dim=1).tolist()
    assert all(int(strip.max()) > 150 for strip in strips)  # light text on black
    for a in range(32):
        for b in range(a + 1, 32):
            assert torch.equal(strips[a], strips[b]) == (predicted[a] == predicted[b])


class _Items:
    """A test split whose item 1 is an unreadable file and whose items draw from the global RNG."""

    def __init__(self, length: int) -> None:
        self.length = length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int):
        if index == 1:
            raise RunError("cannot read images/1.png")
        noise = torch.rand(1, 2, 2) * random.random() * np.random.rand()  # against the contract: no effect allowed
        return torch.full((1, 2, 2), float(index)) + noise, torch.zeros(1, 2, 2)


def test_the_preview_leaves_out_unreadable_items_and_restores_the_global_rngs():
    def draws() -> tuple:
        return torch.rand(3).tolist(), random.random(), np.random.rand()

    for seed in (torch.manual_seed, random.seed, np.random.seed):
        seed(5)
    expected = draws()
    for seed in (torch.manual_seed, random.seed, np.random.seed):
        seed(5)
    inputs, targets = pictures.preview_batch(_Items(4), seed=0)
    assert draws() == expected
    assert inputs[:, 0, 0, 0].floor().tolist() == [0.0, 2.0, 3.0]
    assert targets.shape == (3, 1, 2, 2)
    assert pictures.preview_batch(_Items(0), seed=0) is None


def test_a_classifier_s_large_images_are_shown_scaled_down():
    class Logits(_TwoNets):
        def predict(self, inputs):
            return torch.tensor([[0.0, 1.0], [1.0, 0.0]])

    batch = (torch.zeros(2, 3, 224, 160), torch.tensor([1, 1]))
    grid = pictures.classified_grid(Logits(), batch, torch.device("cpu"))
    frame = 2 * pictures.FRAME
    height, width = pictures.CLASSIFIED_SIDE + frame, 160 * pictures.CLASSIFIED_SIDE // 224 + frame
    assert grid.shape == (3, height + pictures.NAME_HEIGHT + 4, 2 * (width + 2) + 2)  # the longer side scaled to
    # CLASSIFIED_SIDE, the name of the predicted class below
    assert grid[:, 2, 2].tolist() == pytest.approx(pictures.RIGHT)  # predicted 1, labelled 1
    assert grid[:, 2, 4 + width].tolist() == pytest.approx(pictures.WRONG)  # predicted 0, labelled 1


def test_the_preview_spreads_its_items_and_takes_all_of_a_small_split():
    assert pictures.preview_indices(3) == [0, 1, 2]
    picked = pictures.preview_indices(512, 32)
    assert len(set(picked)) == 32 and picked == sorted(picked) and picked == pictures.preview_indices(512, 32)
    assert len({index % 4 for index in picked}) == 4  # labels that repeat every 4 items: every class shows
    assert pictures.preview_indices(512, 32, seed=1) != picked  # another run seed, other images


class _TwoNets(nn.Module):
    task = "image_to_image"

    def __init__(self) -> None:
        super().__init__()
        self.encoder, self.decoder = nn.Identity(), nn.Identity()


def test_predictor_picks_predict_then_forward_then_the_only_network():
    class WithPredict(_TwoNets):
        def predict(self, inputs):
            return -inputs

    class WithForward(_TwoNets):
        def forward(self, inputs):
            return inputs * 2

    class OneNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Flatten()

    x = torch.ones(2, 1, 2, 2)
    assert torch.equal(predictor(WithPredict())(x), -x)
    assert torch.equal(predictor(WithForward())(x), x * 2)
    assert predictor(OneNet())(x).shape == (2, 4)
    assert predictor(_TwoNets()) is None


def test_no_grid_when_the_model_cannot_say_what_to_run_or_gives_no_images():
    batch = (torch.zeros(2, 1, 4, 4), torch.zeros(2, 1, 4, 4))
    assert pictures.restoration_grid(_TwoNets(), batch, torch.device("cpu")) is None

    class Flattens(_TwoNets):
        def predict(self, inputs):
            return inputs.flatten(1)

    assert pictures.restoration_grid(Flattens(), batch, torch.device("cpu")) is None


def test_a_colouriser_s_and_an_upscaler_s_rows_are_shown_at_the_targets_size_and_colour():
    """Grey 8x8 inputs, colour 16x16 outputs and targets: every row in colour at 16x16, inputs as their pixels."""

    class Upscales(_TwoNets):
        def predict(self, inputs):
            return F.interpolate(inputs, scale_factor=2, mode="nearest").expand(-1, 3, -1, -1) * 0 + 0.5

    inputs = torch.linspace(-1, 1, 2 * 64).reshape(2, 1, 8, 8)
    targets = -torch.ones(2, 3, 16, 16)
    grid = pictures.restoration_grid(Upscales(), (inputs, targets), torch.device("cpu"))
    assert grid is not None and grid.shape[0] == 3
    pad = 2  # image_grid's padding
    first_input = grid[:, pad:pad + 16, pad:pad + 16]
    expected = ((F.interpolate(inputs[:1], size=(16, 16), mode="nearest") + 1) / 2).expand(1, 3, -1, -1)[0]
    assert torch.allclose(first_input, expected)
    first_output = grid[:, 16 + 2 * pad:2 * 16 + 2 * pad, pad:pad + 16]
    assert torch.allclose(first_output, torch.full_like(first_output, 0.75))
    first_target = grid[:, 2 * 16 + 3 * pad:3 * 16 + 3 * pad, pad:pad + 16]
    assert torch.equal(first_target, torch.zeros_like(first_target))


def test_a_grid_that_cannot_be_drawn_is_given_up_in_one_line_and_training_goes_on():
    class Broken(_TwoNets):
        task = "classification"

        def predict(self, inputs):
            raise RuntimeError("expected a dict batch\nmore detail")

    said = []
    shown = pictures.Pictures(Broken(), [(torch.zeros(1, 4, 4), 0)] * 3, seed=0, device=torch.device("cpu"),
                              say=said.append)
    assert shown.grid() is None and shown.grid() is None
    assert said == ["zoo: no grid of test images for this run (RuntimeError: expected a dict batch); "
                    "going on without it."]


@pytest.mark.parametrize("item", [
    (torch.zeros(4, 4, 4), 0),  # four channels: no PNG shows them
    (torch.zeros(1, 4, 4), torch.tensor([0, 1])),  # not one class index per image
    ({"image": torch.zeros(1, 4, 4)}, 0),  # not an image tensor
])
def test_no_classifier_grid_for_items_that_are_not_labelled_images(item):
    class Scores(_TwoNets):
        task = "classification"

        def predict(self, inputs):
            return torch.zeros(len(inputs), 2)

    said = []
    shown = pictures.Pictures(Scores(), [item] * 2, seed=0, device=torch.device("cpu"), say=said.append)
    assert shown.grid() is None and said == []


# ------------------------------------------------------------------ BatchNorm statistics while drawing


def _generator_with_batchnorm(tracked: int) -> nn.Module:
    net = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.Dropout(0.5))
    with torch.no_grad():
        net[1].running_mean.fill_(5.0)  # far from the data: eval mode with these gives near-identical outputs
        net[1].running_var.fill_(100.0)
        net[1].num_batches_tracked.fill_(tracked)
    return net.eval()


def test_unsettled_batchnorm_draws_with_the_batchs_statistics_and_keeps_its_buffers():
    from zoo.engine.norm_stats import SETTLED_BATCHES, batch_statistics_until_settled

    net, inputs = _generator_with_batchnorm(SETTLED_BATCHES - 1), torch.randn(16, 4, generator=torch.Generator().manual_seed(0))
    before = {name: buffer.clone() for name, buffer in net.named_buffers()}
    with torch.no_grad():
        running = net(inputs)
        with batch_statistics_until_settled(net) as layers:
            drawn = net(inputs)
    assert layers == 1
    expected = F.batch_norm(net[0](inputs), None, None, net[1].weight, net[1].bias, training=True)
    assert torch.allclose(drawn, expected, atol=1e-6)  # batch statistics; dropout stayed off (eval)
    assert drawn.std(0).mean() > 5 * running.std(0).mean()  # the tiles differ, where running stats flatten them
    assert all(torch.equal(before[name], buffer) for name, buffer in net.named_buffers())
    assert not net.training and not net[1].training


def test_settled_batchnorm_draws_with_its_running_statistics():
    from zoo.engine.norm_stats import SETTLED_BATCHES, batch_statistics_until_settled

    net, inputs = _generator_with_batchnorm(SETTLED_BATCHES), torch.randn(16, 4)
    with torch.no_grad():
        running = net(inputs)
        with batch_statistics_until_settled(net) as layers:
            assert layers == 0
            assert torch.equal(net(inputs), running)


def test_an_early_gan_grid_shows_different_samples_and_training_goes_on_unchanged(registry, tmp_path, monkeypatch):
    """A DCGAN grid after 2 steps: its tiles differ far more than in eval mode, whose running statistics (still
    near their start) make every tile alike; drawing it changed no buffer."""
    from zoo.engine import norm_stats

    trainer = train(registry, tmp_path / "gan", model="dcgan", loss=None, model_opt={"image_size": 32, "ngf": 4,
                    "ndf": 4}, dataset="shapes", dataset_opt={"train_count": 16, "test_count": 4}, max_steps=2)
    recipe = trainer.run.recipe
    before = {name: buffer.clone() for name, buffer in recipe.named_buffers()}
    drawn = pictures.sample_grid(recipe, seed=0, device=torch.device("cpu"))
    monkeypatch.setattr(norm_stats, "SETTLED_BATCHES", 0)  # every layer settled: plain eval mode
    evaluated = pictures.sample_grid(recipe, seed=0, device=torch.device("cpu"))

    def spread(grid: torch.Tensor) -> float:  # how much the 64 tiles differ from one another
        tiles = grid.unfold(1, 34, 34).unfold(2, 34, 34)  # (C, 8, 8, 34, 34)
        return float(tiles.reshape(3, 64, -1).std(dim=1).mean())

    assert spread(drawn) > 100 * spread(evaluated), (spread(drawn), spread(evaluated))
    assert all(torch.equal(before[name], buffer) for name, buffer in recipe.named_buffers())

"""The builtin ema hook: updated every step on the device, resumed bitwise, evaluated as ``ema/<metric>``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from test_engine import TINY_DCGAN, TINY_SHAPES, interrupt_at
from zoo.config import TrainConfig
from zoo.engine import checkpoint
from zoo.engine.rundir import prepare_new
from zoo.engine.trainer import Interrupted, Trainer
from zoo.registry import discover

QUIET = ["samples", "tensorboard"]
MODELS = {
    "mnist_net": dict(model="mnist_net", model_opt={}),
    "dcgan": dict(model="dcgan", loss="mse", model_opt=dict(TINY_DCGAN)),
}


@pytest.fixture(scope="module")
def registry():
    return discover()


def config(run_dir: Path, model: str, **overrides) -> TrainConfig:
    values = dict(MODELS[model], dataset_opt=dict(TINY_SHAPES), batch_size=8, log_every=4, device="cpu",
                  run_dir=str(run_dir), max_steps=12, hooks=["ema"], no_hooks=QUIET,
                  hook_opt={"ema": {"decay": 0.9, "warmup": 2}})
    values.update(overrides)
    return TrainConfig(**values)


def new_trainer(registry, settings: TrainConfig, resume: bool = False) -> Trainer:
    if not resume:
        prepare_new(Path(settings.run_dir), overwrite=True)
    return Trainer(settings, registry, Path(settings.run_dir), resume=resume)


def saved(run_dir: Path) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The newest checkpoint's weights and the ema hook's average."""
    model_state, state = checkpoint.load(checkpoint.list_steps(run_dir)[-1][1])
    return model_state, state["hooks"]["builtin:ema"]["average"]


@pytest.mark.parametrize("model", sorted(MODELS))
def test_an_interrupted_run_with_ema_resumes_bitwise_average_included(registry, tmp_path, model):
    new_trainer(registry, config(tmp_path / "straight", model)).fit()
    stopped = new_trainer(registry, config(tmp_path / "resumed", model))
    interrupt_at(stopped, 5)  # 8 steps an epoch: mid-epoch
    with pytest.raises(Interrupted):
        stopped.fit()
    new_trainer(registry, config(tmp_path / "resumed", model), resume=True).fit()
    (weights_a, average_a), (weights_b, average_b) = saved(tmp_path / "straight"), saved(tmp_path / "resumed")
    assert average_a.keys() == weights_a.keys()
    for name in weights_a:
        assert torch.equal(weights_a[name], weights_b[name]), name
        assert torch.equal(average_a[name], average_b[name]), name
    moved = [name for name in weights_a if weights_a[name].is_floating_point()
             and not torch.equal(average_a[name], weights_a[name])]
    assert moved  # an average, not a copy of the weights


def test_the_average_follows_every_step_after_the_warmup(registry, tmp_path):
    trainer = new_trainer(registry, config(tmp_path / "run", "mnist_net", max_steps=5))
    snapshots = []
    step = trainer.run.stepper.step

    def step_and_snapshot(batches):
        values = step(batches)
        snapshots.append({k: v.detach().clone() for k, v in trainer.run.recipe.state_dict().items()})
        return values

    trainer.run.stepper.step = step_and_snapshot
    trainer.fit()
    expected = dict(snapshots[1])  # steps 1 and 2 are the warmup: the weights themselves
    for weights in snapshots[2:]:
        expected = {k: torch.lerp(expected[k], weights[k], 0.1) if weights[k].is_floating_point() else weights[k]
                    for k in weights}
    average = saved(tmp_path / "run")[1]
    for name, value in expected.items():
        assert torch.equal(average[name], value), name


def test_evaluations_report_the_average_beside_the_raw_weights_and_leave_training_unchanged(registry, tmp_path):
    new_trainer(registry, config(tmp_path / "ema", "mnist_net", eval_every=4)).fit()
    new_trainer(registry, config(tmp_path / "plain", "mnist_net", eval_every=4, hooks=[], hook_opt={})).fit()
    with_ema, without = saved(tmp_path / "ema")[0], checkpoint.load(checkpoint.list_steps(tmp_path / "plain")[-1][1])[0]
    assert all(torch.equal(with_ema[k], without[k]) for k in without)  # evaluating the average changed nothing

    def evals(run_dir: Path) -> list[dict]:
        lines = (run_dir / "metrics.jsonl").read_text().splitlines()
        return [record for record in map(json.loads, lines) if record["kind"] == "eval"]

    for ema_record, plain_record in zip(evals(tmp_path / "ema"), evals(tmp_path / "plain"), strict=True):
        assert {"ema/accuracy", "ema/loss"} <= ema_record.keys()
        assert ema_record["accuracy"] == plain_record["accuracy"]


@pytest.mark.parametrize("option, value, words", [("decay", "1.5", "decay must be in [0, 1)"),
                                                   ("every", "0", "every must be at least 1")])
def test_ema_options_out_of_range_are_one_line(zoo_cli, tmp_path, option, value, words):
    code, _, err = zoo_cli("train", "--model", "mnist_net", "--max-steps", "1", "--hook", "ema", "--hook-opt",
                           f"ema.{option}={value}", "--run-dir", str(tmp_path / "run"))
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.startswith("zoo:")]
    assert len(lines) == 1 and words in lines[0] and "ema" in lines[0], err

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


# ---------------------------------------------------------------- the averaged weights after training
@pytest.fixture(scope="module")
def ema_runs(registry, tmp_path_factory):
    """A DCGAN and a classifier trained with ema, each with one checkpoint holding weights-ema.safetensors."""
    root = tmp_path_factory.mktemp("ema_runs")
    for model in MODELS:
        new_trainer(registry, config(root / model, model, max_steps=6, eval_every=0)).fit()
    return root


def test_a_checkpoint_keeps_the_average_beside_the_weights_and_load_run_takes_either(ema_runs):
    import zoo

    folder = checkpoint.list_steps(ema_runs / "dcgan")[-1][1]
    assert checkpoint.weight_set_names(folder) == ["ema"]
    _, average = saved(ema_runs / "dcgan")
    raw, averaged = zoo.load_run(ema_runs / "dcgan"), zoo.load_run(ema_runs / "dcgan", weights="ema")
    assert (raw.weights, averaged.weights, averaged.weight_sets) == (None, "ema", ["ema"])
    for name, value in averaged.recipe.state_dict().items():
        assert torch.equal(value, average[name]), name
    assert any(not torch.equal(a, b) for a, b in zip(raw.recipe.state_dict().values(),
                                                      averaged.recipe.state_dict().values()))


def test_zoo_test_with_weights_writes_apart_from_the_raw_results(zoo_cli, ema_runs):
    run = ema_runs / "dcgan"
    code, out, err = zoo_cli("test", "--run", str(run), "--device", "cpu", "--json")
    assert code == 0, err
    code, out_ema, err = zoo_cli("test", "--run", str(run), "--device", "cpu", "--weights", "ema", "--json")
    assert code == 0, err
    raw, ema = json.loads(out), json.loads(out_ema)
    assert (raw["weights"], ema["weights"], ema["weight_sets"]) == ("raw", "ema", ["raw", "ema"])
    assert raw["metrics"] != ema["metrics"]  # the chosen set's figures, at the top level
    assert json.loads((run / "test-metrics.json").read_text())["metrics"] == raw["metrics"]
    assert json.loads((run / "test-metrics-ema.json").read_text())["metrics"] == ema["metrics"]
    assert Path(ema["sample_grid"]).name == "test-ema-step-6.png" and Path(raw["sample_grid"]).name == "test-step-6.png"
    code, text, err = zoo_cli("test", "--run", str(run), "--device", "cpu")
    assert "also in this checkpoint: --weights ema" in text


def test_zoo_sample_and_predict_take_weights(zoo_cli, ema_runs, tmp_path):
    from PIL import Image

    code, out, err = zoo_cli("sample", "--run", str(ema_runs / "dcgan"), "-n", "4", "--device", "cpu",
                             "--weights", "ema")
    assert code == 0, err
    assert Path(out.strip()) == ema_runs / "dcgan" / "samples" / "sample-ema-seed0.png" and Path(out.strip()).is_file()
    image = tmp_path / "digit.png"
    Image.new("L", (28, 28), 128).save(image)
    code, out, err = zoo_cli("predict", "--run", str(ema_runs / "mnist_net"), str(image), "--device", "cpu",
                             "--weights", "ema", "--json")
    assert code == 0, err
    assert json.loads(out)["weights"] == "ema"


def test_an_unknown_weight_set_is_one_line_naming_the_sets_there(zoo_cli, ema_runs):
    code, _, err = zoo_cli("test", "--run", str(ema_runs / "dcgan"), "--device", "cpu", "--weights", "swa")
    assert code == 2
    lines = [line for line in err.splitlines() if line.startswith("zoo:")]
    assert len(lines) == 1 and "no weight set 'swa'" in lines[0] and "it holds: ema" in lines[0], err


def test_the_best_checkpoint_can_be_chosen_by_the_averaged_weights_metric(registry, tmp_path):
    settings = config(tmp_path / "run", "mnist_net", max_steps=12, eval_every=3, best_metric="ema/accuracy")
    trainer = new_trainer(registry, settings)
    trainer.fit()
    recorded = json.loads((tmp_path / "run" / "config.json").read_text())["resolved"]["best_metric"]
    assert recorded == {"name": "ema/accuracy", "mode": "max"}
    evaluations = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
                   if json.loads(line).get("kind") == "eval"]
    best = max(evaluations, key=lambda e: (e["ema/accuracy"], -e["step"]))  # the first of the highest
    assert trainer.best["metric"] == "ema/accuracy" and trainer.best["step"] == best["step"]
    assert trainer.best["value"] == best["ema/accuracy"]
    plain = new_trainer(registry, config(tmp_path / "plain", "mnist_net", max_steps=3, eval_every=3))
    plain.fit()
    assert json.loads((tmp_path / "plain" / "config.json").read_text())["resolved"]["best_metric"] == \
        {"name": "accuracy", "mode": "max"}  # the model's own, said all the same


@pytest.mark.parametrize("chosen, hooks, words", [
    ("ema/accuracy", [], "no hook of this run offers weight sets; add the hook that does (--hook ema"),
    ("ema/precision", ["ema"], "does not report 'precision' (it reports: loss, accuracy)"),
    ("accuracy:up", ["ema"], "must be max or min"),
])
def test_a_best_metric_that_cannot_work_is_refused_before_training(registry, tmp_path, chosen, hooks, words):
    from zoo.errors import UsageError

    with pytest.raises(UsageError, match=words.replace("(", r"\(").replace(")", r"\)")):
        new_trainer(registry, config(tmp_path / "run", "mnist_net", hooks=hooks, best_metric=chosen,
                                     hook_opt={"ema": {"decay": 0.9}} if hooks else {}))

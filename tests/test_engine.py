"""The training engine on tiny runs: run folder, exact resume, signals, NaN, hooks, zoo test."""

from __future__ import annotations

import json
import os
import random
import signal
import struct
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from zoo.config import TrainConfig
from zoo.engine import checkpoint, schedule
from zoo.engine.rundir import prepare_new
from zoo.engine.tester import evaluate_run
from zoo.engine.trainer import Interrupted, Trainer
from zoo.errors import RunError, UsageError
from zoo.registry import Entry, PluginInfo, discover

TINY_DCGAN = {"ngf": 8, "ndf": 8, "nz": 16}
TINY_SHAPES = {"train_count": 64, "test_count": 16}


@pytest.fixture(scope="module")
def registry():
    return discover()


def tiny_config(run_dir: Path, **overrides) -> TrainConfig:
    values = dict(model="dcgan", loss="mse", model_opt=dict(TINY_DCGAN), dataset_opt=dict(TINY_SHAPES),
                  batch_size=8, log_every=1, device="cpu", run_dir=str(run_dir), max_steps=12)
    values.update(overrides)
    return TrainConfig(**values)


def train(registry, config: TrainConfig, resume: bool = False) -> Trainer:
    run_dir = Path(config.run_dir)
    if not resume:
        prepare_new(run_dir, overwrite=True)
    trainer = Trainer(config, registry, run_dir, resume=resume, command_line=["zoo", "test-run"])
    trainer.fit()
    return trainer


def newest_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    step, folder = checkpoint.list_steps(run_dir)[-1]
    return load_file(str(folder / "model.safetensors"))


def assert_bitwise_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"weights differ: {different[:5]}"


def interrupt_at(trainer: Trainer, step: int, signum: int = signal.SIGTERM) -> None:
    """Deliver a real signal to this process right after ``step`` completes."""
    original = trainer.run.stepper.step

    def step_then_signal(batches):
        values = original(batches)
        if trainer.step + 1 == step:
            os.kill(os.getpid(), signum)
        return values

    trainer.run.stepper.step = step_then_signal


def registry_with_hook(tmp_path: Path, monkeypatch, module: str, cls: str, name: str):
    """The installed plugins plus a hook from a module the test wrote into ``tmp_path``."""
    monkeypatch.syspath_prepend(str(tmp_path))
    local = discover()
    local.add_plugin(PluginInfo("testhooks", "testhooks", "1.0", module),
                     [Entry("hook", name, f"{module}:{cls}", "a test hook", "testhooks")])
    return local


def read_events(folder: Path) -> list:
    """Parse tensorboardX event files (TFRecord framing) back into Event protos."""
    from tensorboardX.proto import event_pb2
    events = []
    for path in sorted(folder.glob("events.out.tfevents.*")):
        data = path.read_bytes()
        offset = 0
        while offset < len(data):
            (length,) = struct.unpack("<Q", data[offset:offset + 8])
            record = data[offset + 12: offset + 12 + length]
            offset += 12 + length + 4
            event = event_pb2.Event()
            event.ParseFromString(record)
            events.append(event)
    return events


def test_run_folder_has_config_checkpoint_metrics_events_and_samples(registry, tmp_path):
    config = tiny_config(tmp_path / "run", max_steps=10, log_every=4)
    trainer = train(registry, config)
    run_dir = tmp_path / "run"
    saved = json.loads((run_dir / "config.json").read_text())
    assert saved["config"]["max_steps"] == 10
    assert saved["resolved"]["model"]["name"] == "builtin:dcgan"
    assert saved["resolved"]["model"]["version"]
    assert saved["resolved"]["loss"]["name"] == "builtin:mse"
    assert saved["resolved"]["dataset"]["name"] == "builtin:shapes"
    assert saved["command_line"] == ["zoo", "test-run"]
    assert "torch" in saved["versions"]
    assert saved["resolved"]["input_shape"] == [3, 32, 32]
    steps = [s for s, _ in checkpoint.list_steps(run_dir)]
    assert steps[-1] == 10 and trainer.step == 10
    weights = newest_weights(run_dir)
    assert any(k.startswith("generator.") for k in weights)
    assert any(k.startswith("discriminator.") for k in weights)
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train_steps = [r["step"] for r in records if r["kind"] == "train"]
    assert train_steps == [4, 8, 10]  # every --log-every steps, and the final step
    assert all(0.0 <= r["compute_efficiency"] <= 1.0 for r in records if r["kind"] == "train")
    assert any(r["kind"] == "eval" and "discriminator" in r and "generator" in r for r in records)
    png = run_dir / "samples" / "latest.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    events = read_events(run_dir / "tensorboard")
    tags = {v.tag for e in events for v in e.summary.value}
    assert {"train/discriminator", "train/generator", "train/compute_efficiency",
            "train/lr/generator", "train/samples_per_sec", "samples"} <= tags
    final = [v.simple_value for e in events if e.step == 10 for v in e.summary.value if v.tag == "train/generator"]
    assert final and final[-1] == pytest.approx(records[[r["step"] for r in records].index(10)]["generator"])
    # TensorBoard's own reader sees each figure as its own series, at every log step
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    accumulator = EventAccumulator(str(run_dir / "tensorboard"))
    accumulator.Reload()
    for tag in ("train/generator", "train/discriminator", "train/samples_per_sec"):
        assert [scalar.step for scalar in accumulator.Scalars(tag)] == [4, 8, 10]


def test_a_run_ending_with_an_epoch_writes_its_last_grid_to_tensorboard_once(registry, tmp_path):
    trainer = train(registry, tiny_config(tmp_path / "run", max_steps=1, eval_every=0))
    steps_per_epoch = trainer.run.schedule.steps_per_epoch
    train(registry, tiny_config(tmp_path / "run", max_steps=steps_per_epoch, eval_every=0))
    events = read_events(tmp_path / "run" / "tensorboard")
    grids = [e.step for e in events for v in e.summary.value if v.tag == "samples"]
    assert grids == [steps_per_epoch]  # the epoch's end drew it; the run's end did not write it again


def test_resume_after_sigterm_at_a_random_step_is_bitwise_equal(registry, tmp_path):
    straight = train(registry, tiny_config(tmp_path / "straight", max_steps=13))
    stop_at = random.randint(1, 12)  # 8 steps per epoch: mostly mid-epoch
    config = tiny_config(tmp_path / "resumed", max_steps=13)
    prepare_new(tmp_path / "resumed", overwrite=True)
    trainer = Trainer(config, registry, tmp_path / "resumed")
    interrupt_at(trainer, stop_at)
    with pytest.raises(Interrupted) as stopped:
        trainer.fit()
    assert stopped.value.exit_code == 143
    assert "--resume" in str(stopped.value)
    assert checkpoint.list_steps(tmp_path / "resumed")[-1][0] == stop_at
    resumed = Trainer(config, registry, tmp_path / "resumed", resume=True)
    assert (resumed.run.context.step, resumed.step) == (stop_at, stop_at)  # hooks see where the run is
    resumed.fit()
    assert resumed.step == straight.step == 13
    assert_bitwise_equal(newest_weights(tmp_path / "straight"), newest_weights(tmp_path / "resumed"))


def test_extending_a_finished_run_matches_one_long_run(registry, tmp_path):
    train(registry, tiny_config(tmp_path / "long", max_steps=20))
    short = tiny_config(tmp_path / "short", max_steps=11)
    train(registry, short)
    short.max_steps = 20
    train(registry, short, resume=True)
    assert_bitwise_equal(newest_weights(tmp_path / "long"), newest_weights(tmp_path / "short"))


def test_resume_with_loader_workers_and_accumulation_is_exact(registry, tmp_path):
    options = dict(max_steps=7, workers=2, accumulate=2, batch_size=4)
    train(registry, tiny_config(tmp_path / "a", **options))
    config = tiny_config(tmp_path / "b", **options)
    prepare_new(tmp_path / "b", overwrite=True)
    trainer = Trainer(config, registry, tmp_path / "b")
    interrupt_at(trainer, 3, signal.SIGINT)
    with pytest.raises(Interrupted) as stopped:
        trainer.fit()
    assert stopped.value.exit_code == 130
    train(registry, config, resume=True)
    assert_bitwise_equal(newest_weights(tmp_path / "a"), newest_weights(tmp_path / "b"))


def ctrl_c_at(registry, config: TrainConfig, step: int) -> dict:
    """Run ``config`` afresh until Ctrl-C after ``step``; the training state its last checkpoint saved."""
    prepare_new(Path(config.run_dir), overwrite=True)
    trainer = Trainer(config, registry, Path(config.run_dir))
    interrupt_at(trainer, step, signal.SIGINT)
    with pytest.raises(Interrupted):
        trainer.fit()
    return checkpoint.load(checkpoint.list_steps(Path(config.run_dir))[-1][1])[1]


def eval_steps(run_dir: Path) -> list[int]:
    """The steps metrics.jsonl has an evaluation of."""
    return [r["step"] for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
            if r["kind"] == "eval"]


def test_a_stop_at_the_last_step_leaves_the_final_evaluation_to_the_resumed_run(registry, tmp_path):
    """Ctrl-C in the run's last step saves before the final evaluation; --resume then does it, not 'complete'."""
    config = tiny_config(tmp_path / "run", max_steps=4, eval_every=3)
    state = ctrl_c_at(registry, config, 4)
    assert eval_steps(tmp_path / "run") == [3]
    assert state["step"] == 4 and state["eval_owed"] is True
    train(registry, config, resume=True)
    assert eval_steps(tmp_path / "run") == [3, 4]


def test_a_stop_where_no_evaluation_is_due_evaluates_the_steps_a_straight_run_does(registry, tmp_path):
    """Ctrl-C at step 5 (evaluations every 4): the resumed run evaluates 8 and the end, as a straight run does;
    an evaluation at 5 would be one more, and could take the best checkpoint from the straight run's."""
    train(registry, tiny_config(tmp_path / "straight", max_steps=10, eval_every=4))
    config = tiny_config(tmp_path / "run", max_steps=10, eval_every=4)
    state = ctrl_c_at(registry, config, 5)
    assert state["step"] == 5 and state["eval_owed"] is False
    train(registry, config, resume=True)
    assert eval_steps(tmp_path / "run") == eval_steps(tmp_path / "straight") == [4, 8, 10]


def test_second_ctrl_c_aborts_without_saving(registry, tmp_path):
    config = tiny_config(tmp_path / "run", save_every=0)
    prepare_new(tmp_path / "run", overwrite=True)
    trainer = Trainer(config, registry, tmp_path / "run")
    original = trainer.run.stepper.step

    def double_interrupt(batches):
        values = original(batches)
        if trainer.step == 2:
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)
        return values

    trainer.run.stepper.step = double_interrupt
    with pytest.raises(KeyboardInterrupt):
        trainer.fit()
    assert checkpoint.list_steps(tmp_path / "run") == []


def test_non_finite_loss_stops_with_step_and_no_bad_checkpoint(registry, tmp_path):
    config = tiny_config(tmp_path / "run", max_steps=12, save_every=2, log_every=3)
    prepare_new(tmp_path / "run", overwrite=True)
    trainer = Trainer(config, registry, tmp_path / "run")
    original = trainer.run.recipe.training_step

    def poisoned(batch, loss_fn):
        for name, loss in original(batch, loss_fn):
            yield name, loss * float("nan") if trainer.step >= 4 else loss

    trainer.run.recipe.training_step = poisoned
    with pytest.raises(RunError, match="step") as failed:
        trainer.fit()
    assert "nan" in str(failed.value).lower()
    assert str(failed.value).endswith("Lower --lr, add --clip-grad 1.0 or skip such steps with --skip-nonfinite "
                                      "(a bad sample, say).")  # not --precision 32: the run has it already
    for _, folder in checkpoint.list_steps(tmp_path / "run"):
        weights = load_file(str(folder / "model.safetensors"))
        assert all(torch.isfinite(t).all() for t in weights.values()), folder
    assert [s for s, _ in checkpoint.list_steps(tmp_path / "run")] == [2, 4]


def test_keep_prunes_old_checkpoints_but_keeps_the_best(registry, tmp_path):
    config = tiny_config(tmp_path / "run", model="mnist_net", loss=None, model_opt={},
                         max_steps=24, save_every=2, eval_every=2, keep=2, log_every=5)
    trainer = train(registry, config)
    steps = [s for s, _ in checkpoint.list_steps(tmp_path / "run")]
    best = trainer.best["step"]
    assert steps[-2:] == [22, 24]
    assert set(steps) == {best, 22, 24}


def test_the_best_checkpoint_survives_when_an_evaluation_falls_on_an_epoch_end(registry, tmp_path, monkeypatch):
    # 8 steps an epoch and --eval-every 8: each epoch's end is saved and evaluated at the same step; the
    # evaluation must come first, so the checkpoint knows it is the best and pruning keeps it
    monkeypatch.setattr(schedule, "SAVE_SHARE", 1.0)  # no save budget: a checkpoint at every epoch's end
    config = tiny_config(tmp_path / "run", model="mnist_net", loss=None, model_opt={}, max_steps=None,
                         epochs=6, eval_every=8, keep=1, log_every=8)
    trainer = train(registry, config)
    best = trainer.best
    assert best is not None and best["saved"]
    steps = [s for s, _ in checkpoint.list_steps(tmp_path / "run")]
    assert best["step"] in steps
    assert set(steps) == {best["step"], 48}
    evals = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    accuracies = {record["step"]: record["accuracy"] for record in evals if record["kind"] == "eval"}
    first_best = min(step for step, value in accuracies.items() if value == max(accuracies.values()))
    assert best["step"] == first_best


def test_zoo_test_reports_accuracy_of_a_model_that_learned(registry, tmp_path):
    config = tiny_config(tmp_path / "run", model="mnist_net", loss=None, model_opt={},
                         dataset_opt={"train_count": 768, "test_count": 128}, batch_size=32,
                         max_steps=None, epochs=4, log_every=10)
    trainer = train(registry, config)
    result = evaluate_run(registry, tmp_path / "run", device="cpu")
    assert result["metrics"]["accuracy"] > 0.6  # four balanced classes: chance is 0.25
    assert result["metrics"]["accuracy"] == pytest.approx(trainer.last_eval["accuracy"])
    saved = json.loads((tmp_path / "run" / "test-metrics.json").read_text())
    assert saved["metrics"]["accuracy"] == pytest.approx(result["metrics"]["accuracy"])


def test_image_to_image_run_reports_psnr_that_improves(registry, tmp_path):
    config = tiny_config(tmp_path / "run", model="resnet_i2i", loss="l1", model_opt={"ngf": 8, "blocks": 1},
                         dataset_opt={"train_count": 128, "test_count": 16, "degrade": "noise"},
                         max_steps=None, epochs=3, batch_size=16, log_every=4)
    trainer = train(registry, config)
    evals = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
             if json.loads(line)["kind"] == "eval"]
    assert len(evals) == 3 and all("psnr" in e for e in evals)
    result = evaluate_run(registry, tmp_path / "run", device="cpu")
    assert result["metrics"]["psnr"] == pytest.approx(trainer.last_eval["psnr"])
    from plugins.models.resnet_i2i import batch_psnr
    pairs = [trainer.run.test_set[i] for i in range(len(trainer.run.test_set))]
    degraded = torch.stack([x for x, _ in pairs])
    clean = torch.stack([y for _, y in pairs])
    input_psnr = batch_psnr(degraded, clean).mean().item()
    assert result["metrics"]["psnr"] > input_psnr + 0.3  # restored: closer to clean than the input


def test_zoo_test_of_a_gan_writes_losses_and_a_grid(registry, tmp_path):
    train(registry, tiny_config(tmp_path / "run", max_steps=3))
    result = evaluate_run(registry, tmp_path / "run", device="cpu")
    assert {"discriminator", "generator"} <= set(result["metrics"])
    assert Path(result["sample_grid"]).read_bytes()[:4] == b"\x89PNG"


def test_evaluation_and_samples_do_not_change_training(registry, tmp_path):
    train(registry, tiny_config(tmp_path / "quiet", max_steps=12, eval_every=0, no_hooks=["samples", "tensorboard"]))
    train(registry, tiny_config(tmp_path / "busy", max_steps=12, eval_every=3))
    assert_bitwise_equal(newest_weights(tmp_path / "quiet"), newest_weights(tmp_path / "busy"))


def test_a_hook_that_raises_stops_the_run_naming_it(registry, tmp_path, monkeypatch):
    module = tmp_path / "failing_hook_module.py"
    module.write_text(textwrap.dedent("""
        from zoo import hookimpl

        class Exploding:
            @hookimpl
            def on_step_end(self, run, step, scalars):
                if step == 2:
                    raise ValueError("boom")
    """))
    local = registry_with_hook(tmp_path, monkeypatch, "failing_hook_module", "Exploding", "exploding")
    with pytest.raises(RunError, match="testhooks:exploding.*on_step_end.*boom"):
        train(local, tiny_config(tmp_path / "run", hooks=["exploding"]))


@pytest.mark.parametrize("overrides, message", [
    (dict(model="mnist_net", loss="perceptual"), "losses that fit: cross_entropy"),
    (dict(model="mnist_net", loss=None, dataset="glob_patches", data="x/*.png"), "datasets that fit"),
    (dict(model_opt={"ngf": "abc"}), "ngf expects an integer"),
    (dict(model_opt={"ngff": "8"}), "Did you mean: ngf"),
    (dict(batch_size=512), "lower --batch-size"),
    (dict(dataset="imagefolder", dataset_opt={}), "needs --data"),
])
def test_bad_combinations_are_usage_errors(registry, tmp_path, overrides, message):
    config = tiny_config(tmp_path / "run", **overrides)
    with pytest.raises(UsageError, match=message):
        Trainer(config, registry, tmp_path / "run")


def test_resume_refuses_a_checkpoint_of_another_model(registry, tmp_path):
    train(registry, tiny_config(tmp_path / "run", max_steps=2))
    other = tiny_config(tmp_path / "run", model_opt={"ngf": 16, "ndf": 8, "nz": 16})
    with pytest.raises(UsageError, match="does not fit model 'dcgan'.*shape"):
        Trainer(other, registry, tmp_path / "run", resume=True)


def test_sigterm_to_a_real_zoo_train_saves_and_resumes_exactly(tmp_path):
    import subprocess
    import time

    base = [sys.executable, "-m", "train_cli", "train", "--model", "dcgan", "--loss", "mse",
            "--model-opt", "ngf=8", "--model-opt", "ndf=8", "--model-opt", "nz=16",
            "--dataset-opt", "train_count=64", "--dataset-opt", "test_count=16",
            "--batch-size", "8", "--log-every", "1", "--device", "cpu", "--max-steps", "40"]
    straight = subprocess.run(base + ["--run-dir", str(tmp_path / "straight")], capture_output=True, text=True)
    assert straight.returncode == 0, straight.stderr
    proc = subprocess.Popen(base + ["--run-dir", str(tmp_path / "killed"), "--workers", "2"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    metrics = tmp_path / "killed" / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 3:
            break
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGTERM)  # the loader workers too, as a job scheduler does
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143, stderr
    assert "zoo train --resume" in stderr and "Traceback" not in stderr
    stopped_at = checkpoint.list_steps(tmp_path / "killed")[-1][0]
    assert 3 <= stopped_at < 40
    resumed = subprocess.run([sys.executable, "-m", "train_cli", "train", "--resume", str(tmp_path / "killed")],
                             capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert_bitwise_equal(newest_weights(tmp_path / "straight"), newest_weights(tmp_path / "killed"))


def test_early_stopping_hook_stops_the_run_and_saves(registry, tmp_path):
    config = tiny_config(tmp_path / "run", model="mnist_net", loss=None, model_opt={}, lr=1e-9,
                         max_steps=None, epochs=50, eval_every=1, save_every=0, log_every=5,
                         hooks=["early_stopping"], hook_opt={"early_stopping": {"patience": "2", "metric": "loss",
                                                                                "min_delta": "0.5"}})
    trainer = train(registry, config)
    assert trainer.step == 3  # first eval sets the best, two more without a 0.5 improvement stop it
    assert trainer.run.context.stop_reason and "loss has not improved" in trainer.run.context.stop_reason
    assert [s for s, _ in checkpoint.list_steps(tmp_path / "run")] == [3]


def test_a_hook_logs_scalars_and_images_through_run_log(registry, tmp_path, monkeypatch):
    module = tmp_path / "logging_hook_module.py"
    module.write_text(textwrap.dedent("""
        import torch
        from zoo import hookimpl

        class Logger:
            @hookimpl
            def on_step_end(self, run, step, scalars):
                run.log("double_step", 2.0 * step)
                if step == 2:
                    run.log("checker", torch.ones(3, 4, 4) * 0.5)
    """))
    local = registry_with_hook(tmp_path, monkeypatch, "logging_hook_module", "Logger", "logger")
    train(local, tiny_config(tmp_path / "run", hooks=["logger"], max_steps=3))
    run_dir = tmp_path / "run"
    logged = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()
              if json.loads(line)["kind"] == "log"]
    assert [(r["step"], r["double_step"]) for r in logged] == [(1, 2.0), (2, 4.0), (3, 6.0)]
    assert (run_dir / "samples" / "checker-step-2.png").read_bytes()[:4] == b"\x89PNG"
    tags = {v.tag for e in read_events(run_dir / "tensorboard") for v in e.summary.value}
    assert {"log/double_step", "log/checker"} <= tags


def test_early_stopping_keeps_its_patience_across_a_resume(registry, tmp_path):
    options = dict(model="mnist_net", loss=None, model_opt={}, lr=1e-9, max_steps=None, epochs=50, eval_every=1,
                   save_every=1, log_every=5, hooks=["early_stopping"],
                   hook_opt={"early_stopping": {"patience": "3", "metric": "loss", "min_delta": "0.5"}})
    straight = train(registry, tiny_config(tmp_path / "a", **options))
    config = tiny_config(tmp_path / "b", **options)
    prepare_new(tmp_path / "b", overwrite=True)
    first = Trainer(config, registry, tmp_path / "b")
    interrupt_at(first, 2)
    with pytest.raises(Interrupted):
        first.fit()
    resumed = train(registry, config, resume=True)
    assert resumed.step == straight.step == 4  # best at step 1, then three evaluations without improvement


def test_live_tensors_do_not_grow_over_steps(registry, tmp_path, monkeypatch):
    """Nothing accumulates per step (losses kept with their graphs, per-step records): memory stays flat."""
    module = tmp_path / "tensor_counting_hook.py"
    module.write_text(textwrap.dedent("""
        import gc
        import warnings

        import torch
        from zoo import hookimpl

        COUNTS = []

        class TensorCounter:
            @hookimpl
            def on_step_end(self, run, step, scalars):
                gc.collect()
                with warnings.catch_warnings():  # isinstance touches deprecated torch objects
                    warnings.simplefilter("ignore")
                    COUNTS.append(sum(1 for o in gc.get_objects() if isinstance(o, torch.Tensor)))
    """))
    local = registry_with_hook(tmp_path, monkeypatch, "tensor_counting_hook", "TensorCounter", "tensor_counter")
    train(local, tiny_config(tmp_path / "run", hooks=["tensor_counter"], max_steps=60, log_every=6,
                             eval_every=30, save_every=30))
    counts = sys.modules["tensor_counting_hook"].COUNTS
    assert len(counts) == 10
    # batches waiting in the prefetch queue move the count by up to 6 or so; one tensor kept per step
    # would add 30 over the second half
    assert max(counts[5:]) <= max(counts[1:5]) + 12, counts


def test_a_stop_asked_at_an_epoch_end_saves_without_evaluating_first(registry, tmp_path, monkeypatch):
    module = tmp_path / "epoch_end_signal.py"
    module.write_text(textwrap.dedent("""
        import os
        import signal

        from zoo import hookimpl

        class StopAtEpochEnd:
            @hookimpl
            def on_epoch_end(self, run, epoch):
                os.kill(os.getpid(), signal.SIGINT)
    """))
    local = registry_with_hook(tmp_path, monkeypatch, "epoch_end_signal", "StopAtEpochEnd", "stop_at_epoch_end")
    config = tiny_config(tmp_path / "run", hooks=["stop_at_epoch_end"], max_steps=None, epochs=3)
    prepare_new(tmp_path / "run", overwrite=True)
    trainer = Trainer(config, local, tmp_path / "run")
    with pytest.raises(Interrupted):
        trainer.fit()
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert not [r for r in records if r["kind"] == "eval"]  # evaluating could take minutes: saved first
    first_epoch = trainer.run.schedule.steps_per_epoch
    assert checkpoint.list_steps(tmp_path / "run")[-1][0] == first_epoch
    train(registry, tiny_config(tmp_path / "run", max_steps=None, epochs=3), resume=True)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["kind"] == "eval"] == [first_epoch, 2 * first_epoch, 3 * first_epoch]


def test_a_resumed_run_tells_tensorboard_to_drop_what_followed_its_checkpoint(registry, tmp_path):
    from tensorboardX.proto import event_pb2
    run_dir = tmp_path / "run"
    train(registry, tiny_config(run_dir, max_steps=4, save_every=2, keep=5))
    os.rename(run_dir / "checkpoints" / "step-4", tmp_path / "lost")  # steps 3 and 4 were logged, then lost
    train(registry, tiny_config(run_dir, max_steps=4, save_every=2, keep=5), resume=True)
    starts = [event.step for event in read_events(run_dir / "tensorboard")
              if event.session_log.status == event_pb2.SessionLog.START]
    assert starts == [3]  # TensorBoard discards earlier events from step 3 on


@pytest.mark.parametrize("model, options, watched, reported", [
    ("dcgan", {}, "loss", "discriminator, generator"),  # dcgan's evaluation has no loss
    ("mnist_net", {"metric": "foo"}, "foo", "accuracy, loss"),
])
def test_early_stopping_refuses_a_metric_the_model_does_not_report(registry, tmp_path, model, options,
                                                                   watched, reported):
    extra = {"loss": None, "model_opt": {}} if model == "mnist_net" else {}
    config = tiny_config(tmp_path / "run", model=model, max_steps=4, eval_every=1, save_every=0, log_every=5,
                         hooks=["early_stopping"], hook_opt={"early_stopping": options}, **extra)
    prepare_new(tmp_path / "run", overwrite=True)
    with pytest.raises(UsageError) as caught:  # known before any step: the model declares its eval_metrics
        Trainer(config, registry, tmp_path / "run")
    assert str(caught.value) == (f"hook 'early_stopping': it watches '{watched}', which this run's evaluation does "
                                 f"not report (it reports: {reported}); pass --hook-opt early_stopping.metric=NAME.")


def test_eval_batches_evaluates_on_the_first_batches_only(registry, tmp_path):
    config = tiny_config(tmp_path / "run", model="mnist_net", loss=None, model_opt={}, max_steps=2, eval_every=1,
                         eval_batches=1, batch_size=4, no_hooks=["samples", "tensorboard"])
    prepare_new(tmp_path / "run", overwrite=True)
    trainer = Trainer(config, registry, tmp_path / "run")
    seen = []
    evaluation_step = trainer.run.recipe.evaluation_step

    def counted(batch, loss_fn, generator):
        seen.append(len(batch[0]))
        return evaluation_step(batch, loss_fn, generator)

    trainer.run.recipe.evaluation_step = counted
    trainer.fit()
    assert len(trainer.run.test_set) > 4 and seen == [4, 4]  # one batch at each of the two evaluations
    with pytest.raises(UsageError, match="--eval-batches must be at least 1"):
        TrainConfig(model="mnist_net", eval_batches=0).check()


def test_item_seeds_come_from_the_run_seed_epoch_and_index_whichever_way_an_item_is_loaded():
    from zoo.data import item_rng, item_seed, load_items, seeded_item
    from zoo.engine.feed import EpochOrder
    from zoo.engine.rng import derive_seed

    order = EpochOrder(10, seed=5, shuffle=True)
    order.set_epoch(3)
    keys = list(order)
    assert [index for index, _ in keys] == order.order()
    assert [item_seed(seed, index) for index, seed in keys] == [derive_seed(5, "item", 3, i) for i, _ in keys]
    index, seed = keys[0]  # a pinned-memory batch of older torch turns the parts tuple into a list
    assert item_seed(list(seed), index) == item_seed(seed, index)

    class Draws:
        def __getitem__(self, index: int) -> float:
            return torch.rand((), generator=item_rng()).item()

    drawn = load_items(Draws(), keys, failed=None)
    for (index, _), value in zip(keys, drawn):
        with seeded_item(derive_seed(5, "item", 3, index)) as generator:
            assert value == torch.rand((), generator=generator).item()
    assert item_rng() is None  # outside loading: torch's global generator


def test_a_backward_is_limited_to_its_optimizers_parameters_only_where_others_train(registry, tmp_path):
    prepare_new(tmp_path / "gan", overwrite=True)
    stepper = Trainer(tiny_config(tmp_path / "gan"), registry, tmp_path / "gan").run.stepper
    for name in ("discriminator", "generator"):  # each loss reaches the other network too: limited
        assert stepper.backward_inputs[name] is stepper.params[name]
    config = tiny_config(tmp_path / "frozen", freeze=["discriminator.*"])
    prepare_new(tmp_path / "frozen", overwrite=True)
    stepper = Trainer(config, registry, tmp_path / "frozen").run.stepper
    assert stepper.backward_inputs["generator"] is None  # it trains every trainable parameter: a plain backward


def test_a_loss_is_checked_until_a_call_passes_then_costs_nothing(registry):
    from zoo.build import build_loss

    loss = build_loss(registry.resolve("loss", "mse"), {})
    assert loss._forward_hooks  # the scalar check
    assert loss(torch.zeros(2, 3), torch.ones(2, 3)).item() == 1.0
    assert not loss._forward_hooks  # removed: torch's fast call path from now on


def test_metrics_records_are_on_disk_as_written_and_a_rewrite_is_followed(tmp_path):
    from zoo.engine.rundir import MetricsLog

    log = MetricsLog(tmp_path)
    for step in (1, 2, 3):
        log.write({"kind": "train", "step": step})
        assert json.loads(log.path.read_text().splitlines()[-1])["step"] == step  # flushed, the file still open
    log.drop_after(1)  # rewritten (a resume): later records go to the new file
    log.write({"kind": "train", "step": 2})
    assert [json.loads(line)["step"] for line in log.path.read_text().splitlines()] == [1, 2]
    log.clear()
    log.write({"kind": "train", "step": 1})
    log.close()
    assert [json.loads(line)["step"] for line in log.path.read_text().splitlines()] == [1]

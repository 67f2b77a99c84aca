"""--optimizer, --momentum, --nesterov, --weight-decay, --lr-schedule, --warmup and [optimizers.NAME] tables."""

from __future__ import annotations

import json
import pytest
import torch

from zoo.engine.optim import StepwiseLR, schedule_factor
from zoo.optim_flags import warmup_steps
from zoo.testing import assert_exact_resume, tiny_run

GAN = dict(model_opt={"ngf": 8, "ndf": 8, "nz": 16}, dataset_opt={"train_count": 8, "test_count": 8})  # 2 steps/epoch


def test_the_run_uses_the_optimizers_and_options_asked_for_per_optimizer(tmp_path):
    run = tiny_run("dcgan", tmp_path / "run", steps=1, optimizer="SGD", momentum=0.9, nesterov=True,
                   weight_decay=0.01, optimizers={"generator": {"optimizer": "adamw", "lr": 1e-3}}, **GAN)
    optimizers = run.trainer.run.stepper.optimizers
    sgd, adamw = optimizers["discriminator"], optimizers["generator"]
    assert type(sgd) is torch.optim.SGD and type(adamw) is torch.optim.AdamW
    assert (sgd.param_groups[0]["momentum"], sgd.param_groups[0]["nesterov"]) == (0.9, True)
    assert sgd.param_groups[0]["weight_decay"] == adamw.param_groups[0]["weight_decay"] == 0.01
    assert sgd.param_groups[0]["lr"] == 2e-4 and adamw.param_groups[0]["lr"] == 1e-3  # the model's, and its own
    document = json.loads((run.run_dir / "config.json").read_text())
    assert document["config"]["optimizers"] == {"generator": {"optimizer": "adamw", "lr": 1e-3}}
    used = document["resolved"]["optimizers"]
    assert used["discriminator"]["class"] == "SGD" and used["generator"] == {
        "class": "AdamW", "lr": 1e-3, "weight_decay": 0.01, "betas": [0.9, 0.999], "eps": 1e-8}


def test_without_flags_the_models_own_optimizers_and_schedulers_stay(tmp_path):
    run = tiny_run("dcgan", tmp_path / "run", steps=1, **GAN)
    discriminator = run.trainer.run.stepper.optimizers["discriminator"]
    assert type(discriminator) is torch.optim.Adam and discriminator.param_groups[0]["betas"] == (0.5, 0.999)
    assert json.loads((run.run_dir / "config.json").read_text())["resolved"]["lr_schedule"]["warmup_steps"] == 0


def test_schedules_give_the_learning_rate_asked_for_at_each_step():
    assert [schedule_factor("constant", step, 3, 10) for step in range(5)] == [0.25, 0.5, 0.75, 1.0, 1.0]
    assert schedule_factor("cosine", 0, 0, 10) == 1.0 and schedule_factor("cosine", 10, 0, 10) == 0.0
    assert schedule_factor("cosine", 5, 0, 10) == pytest.approx(0.5)
    assert schedule_factor("cosine", 2, 2, 12) == 1.0  # the cosine starts where the warm-up ends
    peak = max(range(100), key=lambda step: schedule_factor("one-cycle", step, 0, 100))
    assert peak == 30 and schedule_factor("one-cycle", 0, 0, 100) == pytest.approx(1 / 25)
    assert [schedule_factor("step", step, 0, 8) for step in (3, 4, 6)] == pytest.approx([1.0, 0.1, 0.01])
    assert warmup_steps("2e", 8) == 16 and warmup_steps(5, 8) == 5 and warmup_steps(None, 8) == 0


def test_a_warm_up_multiplies_the_models_own_epoch_schedule():
    weight = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([weight], lr=1.0)
    epochs = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    schedule = StepwiseLR(optimizer, "constant", warmup=4, total=100, epoch_scheduler=epochs)
    assert optimizer.param_groups[0]["lr"] == 0.2
    schedule.at(1)
    optimizer.step()
    schedule.step()  # an epoch ends during the warm-up: the model's schedule halves the target, not the ramp
    assert schedule.targets == [0.5] and optimizer.param_groups[0]["lr"] == pytest.approx(0.5 * 0.4)
    schedule.at(9)
    assert optimizer.param_groups[0]["lr"] == 0.5


def test_cosine_with_warm_up_resumes_bitwise_exactly(tmp_path):
    straight, _ = assert_exact_resume("dcgan", tmp_path, steps=3, stop_at=2, lr_schedule="cosine", warmup="1e",
                                      optimizer="adamw", **GAN)
    lr = straight.state["optimizers"]["generator"]["param_groups"][0]["lr"]
    assert lr == 2e-4  # step 3's: the two warm-up steps are over and the cosine (one step long) starts
    assert straight.state["schedulers"]["generator"]["last_step"] == 2


@pytest.mark.parametrize("flags, message", [
    (["--optimizer", "adamx"], "Did you mean: Adam"),
    (["--optimizer", "adam", "--momentum", "0.9"], "--momentum: no optimizer of model 'dcgan' takes it"),
    (["--optimizer", "generator=adam", "--momentum", "generator=0.9"], "(Adam) takes no momentum; it takes lr"),
    (["--optimizer", "critic=sgd"], "has no optimizer 'critic'; its optimizers: discriminator, generator"),
    (["--warmup", "2x"], "--warmup takes N steps or Ne epochs"),
    (["--weight-decay", "much"], "--weight-decay takes [NAME=]VALUE"),
])
def test_bad_settings_are_one_line_usage_errors(zoo_cli, flags, message):
    code, _, err = zoo_cli("train", "--model", "dcgan", *flags, "--print-config")
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err


def test_print_config_shows_the_settings_and_takes_them_back(zoo_cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    flags = ["--optimizer", "sgd", "--optimizer", "generator=adamw", "--momentum", "discriminator=0.8",
             "--weight-decay", "0.05", "--lr-schedule", "one-cycle", "--warmup", "2e"]
    code, printed, err = zoo_cli("train", "--model", "dcgan", *flags, "--print-config")
    assert code == 0, err
    assert 'generator.optimizer = "adamw"' in printed and "discriminator.momentum = 0.8" in printed
    (tmp_path / "given.toml").write_text(printed)
    code, again, err = zoo_cli("train", "--config", "given.toml", "--print-config")
    assert code == 0, err
    settings = [line.split("#")[0] for line in printed.splitlines() if not line.startswith("#")]
    assert settings == [line.split("#")[0] for line in again.splitlines() if not line.startswith("#")]
    assert 'lr_schedule = "one-cycle"' in again and "weight_decay = 0.05" in again

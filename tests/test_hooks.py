"""Training hooks: the per-step hook, the calling order, and the hookspecs kept in step with the engine and docs."""

from __future__ import annotations

import re
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from zoo import hookspecs
from zoo.config import TrainConfig
from zoo.engine.rundir import prepare_new
from zoo.engine.trainer import Trainer
from zoo.registry import Entry, PluginInfo, discover

ROOT = Path(__file__).resolve().parents[1]

HOOKS_MODULE = textwrap.dedent("""
    import torch
    from zoo import hookimpl

    CALLS = []
    STEPS = []

    def _named(name):
        class Hook:
            @hookimpl(tryfirst=name.startswith("first"), trylast=name.startswith("last"))
            def on_train_start(self, run):
                CALLS.append(name)
        return Hook

    Plain1, First, Plain2, Last = _named("plain1"), _named("first"), _named("plain2"), _named("last")

    class StepWatcher:
        @hookimpl
        def on_train_start(self, run):
            self.before = [p.detach().clone() for p in run.recipe.parameters()]

        @hookimpl
        def on_train_step(self, run, step, losses):
            moved = any(not torch.equal(a, p) for a, p in zip(self.before, run.recipe.parameters()))
            STEPS.append((step, run.step, {k: (type(v), v.dim(), v.device.type) for k, v in losses.items()}, moved))

    class SlowEpochEnd:
        @hookimpl
        def on_epoch_end(self, run, epoch):
            import time
            time.sleep(0.3)
""")


@pytest.fixture
def local(tmp_path, monkeypatch):
    """The installed plugins plus this file's test hooks (plugin ``testhooks``)."""
    (tmp_path / "ordered_hooks.py").write_text(HOOKS_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("ordered_hooks", None)
    registry = discover()
    names = {"plain1": "Plain1", "first": "First", "plain2": "Plain2", "last": "Last", "watcher": "StepWatcher",
             "slow_epoch_end": "SlowEpochEnd"}
    registry.add_plugin(PluginInfo("testhooks", "testhooks", "1.0", "ordered_hooks"),
                        [Entry("hook", name, f"ordered_hooks:{cls}", "a test hook", "testhooks")
                         for name, cls in names.items()])
    return registry


def train(registry, run_dir: Path, hooks: list[str], **overrides) -> Trainer:
    values = dict(model="mnist_net", dataset_opt={"train_count": 32, "test_count": 8}, batch_size=8,
                  device="cpu", run_dir=str(run_dir), max_steps=5, eval_every=0, hooks=hooks,
                  no_hooks=["samples", "tensorboard"])
    values.update(overrides)
    prepare_new(run_dir, overwrite=True)
    trainer = Trainer(TrainConfig(**values), registry, run_dir)
    trainer.fit()
    return trainer


def test_on_train_step_follows_every_optimizer_step_with_device_tensors(local, tmp_path):
    train(local, tmp_path / "run", ["watcher"], accumulate=2)
    steps = sys.modules["ordered_hooks"].STEPS
    assert [step for step, *_ in steps] == [1, 2, 3, 4, 5]
    assert all(step == seen for step, seen, *_ in steps)  # run.step agrees with the argument
    assert all(moved for *_, moved in steps)  # called after the optimizer stepped
    for _, _, losses, _ in steps:
        assert "loss" in losses or "model" in losses
        assert all(kind is torch.Tensor and dim == 0 and device == "cpu" for kind, dim, device in losses.values())


def test_samples_per_sec_counts_the_wall_time_epoch_ends_take(local, tmp_path):
    """4 steps an epoch of 8 samples, one log window of 8 steps holding an epoch end that sleeps 0.3 s: the
    window's rate is at most 64 samples / 0.3 s, not the rate of the steps after the epoch end alone."""
    import json

    train(local, tmp_path / "run", ["slow_epoch_end"], max_steps=8, log_every=8)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    logged = [r for r in records if r["kind"] == "train"]
    assert [r["step"] for r in logged] == [8]
    assert 0 < logged[0]["samples_per_sec"] <= 64 / 0.3, logged


def test_the_run_eta_is_the_pace_so_far_times_the_steps_left(monkeypatch):
    from zoo.engine import progress

    now = [100.0]
    monkeypatch.setattr(progress.time, "perf_counter", lambda: now[0])
    window = progress.Window()
    assert window.run_eta(10, 50) is None  # not started
    window.start_clock(10)  # resumed at step 10
    now[0] = 104.0
    window.start_clock(12)  # a later epoch's start does not restart the run's clock
    assert window.run_eta(10, 50) is None  # no step done yet in this process
    window.reset()
    assert window.run_eta(14, 50) == 4.0 / 4 * 36  # 1 s a step, 36 steps left
    assert window.run_eta(50, 50) == 0.0


def test_hooks_are_called_in_the_order_selected_with_tryfirst_and_trylast(local, tmp_path):
    train(local, tmp_path / "run", ["last", "plain1", "first", "plain2"], max_steps=1)
    assert sys.modules["ordered_hooks"].CALLS == ["first", "plain1", "plain2", "last"]


def _engine_calls() -> set[str]:
    """Every hook name the engine calls through its hook caller, read from the engine's source."""
    called = set()
    for path in (ROOT / "zoo").rglob("*.py"):
        called.update(re.findall(r"""\.call\(\s*["'](on_\w+)["']""", path.read_text()))
    return called


def test_hookspecs_declare_every_hook_the_engine_calls():
    called = _engine_calls()
    assert {"on_train_start", "on_train_step", "on_step_end", "on_train_end"} <= called
    assert called == set(hookspecs.lifecycle_hook_names())
    assert set(hookspecs.optional_method_names()) == {"check_run", "state_dict", "load_state_dict", "weight_sets"}
    for name in hookspecs.lifecycle_hook_names() + hookspecs.optional_method_names():
        spec = getattr(hookspecs.LifecycleSpecs, name, None) or getattr(hookspecs.OptionalMethods, name)
        assert (spec.__doc__ or "").strip(), f"{name} has no docstring"


def test_the_hooks_table_of_the_plugin_reference_lists_exactly_the_hookspecs():
    text = (ROOT / "docs" / "plugin-reference.md").read_text()
    section = text.split("\n## Hooks", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    documented = [re.match(r"\| `(\w+)`", row).group(1) for row in rows]
    declared = hookspecs.lifecycle_hook_names() + hookspecs.optional_method_names()
    assert len(documented) == len(set(documented)), documented
    assert set(documented) == set(declared)


def test_tensorboard_hands_log_steps_scalars_to_its_writer_in_batches_and_all_of_them_by_the_end():
    """tensorboardX's writer thread takes the interpreter from training for each event: a log step's scalars
    wait (at most HAND_OFF_SECS) and go together; an evaluation and the run's end hand over what waits."""
    from plugins.hooks import tensorboard

    class Writer:
        def __init__(self) -> None:
            self.steps: list[int] = []
            self.file_writer = self

        def add_summary(self, summary, step, walltime) -> None:
            assert {value.tag for value in summary.value} == {"train/loss", "train/samples_per_sec"}
            assert logged_from <= walltime <= tensorboard.time.time()  # when logged, not when handed over
            self.steps.append(step)

        def add_scalar(self, tag, value, step) -> None:
            self.steps.append(f"{tag}@{step}")

    hook = tensorboard.TensorboardHook()
    hook.writer = writer = Writer()
    logged_from = tensorboard.time.time()
    hook.handed_at = tensorboard.time.monotonic()
    for step in (20, 40, 60):
        hook.on_step_end(run=None, step=step, scalars={"loss": 0.5, "samples_per_sec": 100.0})
    assert writer.steps == []  # waiting: handed over together
    hook.on_eval_end(run=None, step=60, metrics={"accuracy": 0.9})
    assert writer.steps == [20, 40, 60, "eval/accuracy@60"]
    hook.handed_at -= tensorboard.HAND_OFF_SECS  # long enough since: the next log step goes at once
    hook.on_step_end(run=None, step=80, scalars={"loss": 0.4, "samples_per_sec": 100.0})
    assert writer.steps[-1] == 80

"""The run's optimizers and learning-rate schedules as ``--optimizer``, ``--lr-schedule`` and ``--warmup`` ask.

The model's optimizers are rebuilt over the same parameter groups (same learning rates) with the class
and options asked for; the model's own stay when nothing is asked. A schedule other than ``model``
replaces the model's schedulers with a :class:`StepwiseLR` per optimizer, which sets each group's
learning rate before every step from the run's step count (so a resumed run picks it up exactly);
with ``model`` and ``--warmup``, the warm-up multiplies the model's own per-epoch schedule.
"""

from __future__ import annotations

import difflib
import inspect
import math
from typing import Any

import torch

from zoo import optim_flags
from zoo.errors import UsageError

STEP_MILESTONES = (0.5, 0.75)  # --lr-schedule step: x0.1 at half the run and again at three quarters
ONE_CYCLE_PEAK, ONE_CYCLE_START, ONE_CYCLE_END = 0.3, 1 / 25, 1 / 25e4  # as torch's OneCycleLR defaults


def optimizer_classes() -> dict[str, type]:
    """Every ``torch.optim`` optimizer class by lower-case name."""
    return {name.lower(): cls for name, cls in vars(torch.optim).items()
            if isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer) and cls is not torch.optim.Optimizer}


def optimizer_class(name: str) -> type:
    """The ``torch.optim`` class ``name`` names (any case); a usage error with did-you-mean otherwise."""
    classes = optimizer_classes()
    if name.lower() in classes:
        return classes[name.lower()]
    close = difflib.get_close_matches(name.lower(), sorted(classes), n=3, cutoff=0.5)
    hint = f" Did you mean: {', '.join(classes[c].__name__ for c in close)}?" if close else ""
    raise UsageError(f"--optimizer {name}: no torch.optim optimizer of that name (adam, adamw, sgd, ...).{hint}")


def rebuild_optimizers(optimizers: dict[str, torch.optim.Optimizer], config: Any,
                       model: str) -> dict[str, torch.optim.Optimizer]:
    """The model's optimizers with the class and options the config asks for, each over the same groups."""
    optim_flags.check_optimizer_names(config, list(optimizers), model)
    if not optim_flags.changes_optimizers(config):
        return optimizers
    shared, rebuilt, used = optim_flags.shared_settings(config), {}, set()
    for name, optimizer in optimizers.items():
        own = config.optimizers.get(name, {})
        cls = optimizer_class(own.get("optimizer") or shared.get("optimizer") or type(optimizer).__name__)
        taken = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "params")]
        for key in own:
            if key != "optimizer" and key not in taken:
                raise UsageError(f"optimizer '{name}' ({cls.__name__}) takes no {key}; it takes {', '.join(taken)}.")
        settings = {**{k: v for k, v in shared.items() if k in taken}, **own}
        settings.pop("optimizer", None)
        used.update(settings)
        rebuilt[name] = _rebuilt(name, optimizer, cls, settings)
    unused = [key for key in shared if key != "optimizer" and key not in used]
    if unused:
        raise UsageError(f"--{unused[0].replace('_', '-')}: no optimizer of model '{model}' takes it "
                         f"({', '.join(f'{n}: {type(o).__name__}' for n, o in rebuilt.items())}).")
    return rebuilt


def _rebuilt(name: str, optimizer: torch.optim.Optimizer, cls: type,
             settings: dict[str, Any]) -> torch.optim.Optimizer:
    """One optimizer rebuilt: the same class keeps its groups' settings, another class only their learning rates."""
    kept = None if cls is type(optimizer) else ("params", "lr")
    groups = [{key: value for key, value in group.items() if kept is None or key in kept}
              for group in optimizer.param_groups]
    for group in groups:
        group.pop("initial_lr", None)  # a scheduler's mark; the model's schedulers are made again over these
        group.update(settings)
    try:
        return cls(groups)
    except (ValueError, TypeError) as exc:
        raise UsageError(f"optimizer '{name}' ({cls.__name__}): {exc}") from None


def schedule_factor(kind: str, step: int, warmup: int, total: int) -> float:
    """The multiple of its learning rate an optimizer uses for the step after ``step`` steps were taken."""
    factor = (step + 1) / (warmup + 1) if step < warmup else 1.0
    progress = min(max((step - warmup) / max(total - warmup, 1), 0.0), 1.0)
    if kind == "cosine":
        factor *= 0.5 * (1 + math.cos(math.pi * progress))
    elif kind == "step":
        factor *= 0.1 ** sum(progress >= milestone for milestone in STEP_MILESTONES)
    elif kind == "one-cycle":
        if progress < ONE_CYCLE_PEAK:
            rise = (1 - math.cos(math.pi * progress / ONE_CYCLE_PEAK)) / 2
            factor *= ONE_CYCLE_START + (1 - ONE_CYCLE_START) * rise
        else:
            fall = (1 + math.cos(math.pi * (progress - ONE_CYCLE_PEAK) / (1 - ONE_CYCLE_PEAK))) / 2
            factor *= ONE_CYCLE_END + (1 - ONE_CYCLE_END) * fall
    return factor


class StepwiseLR:
    """An optimizer's learning rates set before each step: each group's target times the schedule's factor.

    The targets are the optimizer's own learning rates; a model scheduler (``--lr-schedule model``) still
    moves them once per epoch, the warm-up multiplies what it sets.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, kind: str, warmup: int, total: int,
                 epoch_scheduler: Any = None) -> None:
        self.optimizer, self.kind, self.warmup, self.total = optimizer, kind, warmup, total
        self.epoch_scheduler = epoch_scheduler
        self.targets = [group["lr"] for group in optimizer.param_groups]
        self.last_step = 0
        self.at(0)

    def at(self, step: int) -> None:
        """Set the learning rates for the step after ``step`` steps (a float each: no device sync)."""
        self.last_step = step
        factor = schedule_factor(self.kind, step, self.warmup, self.total)
        for group, target in zip(self.optimizer.param_groups, self.targets):
            group["lr"] = target * factor

    def step(self) -> None:
        """An epoch ended: the model's scheduler moves the targets (it sees them without the warm-up)."""
        if self.epoch_scheduler is None:
            return
        for group, target in zip(self.optimizer.param_groups, self.targets):
            group["lr"] = target
        self.epoch_scheduler.step()
        self.targets = [group["lr"] for group in self.optimizer.param_groups]
        self.at(self.last_step)

    def state_dict(self) -> dict[str, Any]:
        return {"targets": list(self.targets), "last_step": self.last_step,
                "epoch_scheduler": self.epoch_scheduler.state_dict() if self.epoch_scheduler else None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.targets = list(state["targets"])
        if self.epoch_scheduler is not None:
            self.epoch_scheduler.load_state_dict(state["epoch_scheduler"])
        self.at(state["last_step"])


def wrap_schedulers(optimizers: dict[str, torch.optim.Optimizer], schedulers: dict[str, Any], config: Any,
                    steps_per_epoch: int, total_steps: int) -> dict[str, Any]:
    """The run's schedulers: the model's as they are, or a :class:`StepwiseLR` per optimizer where the config
    asks for another schedule or a warm-up."""
    warmup = optim_flags.warmup_steps(config.warmup, steps_per_epoch)
    if config.lr_schedule == "model" and not warmup:
        return schedulers
    keep = config.lr_schedule == "model"
    kind = "constant" if keep else config.lr_schedule
    return {name: StepwiseLR(optimizer, kind, warmup, total_steps, schedulers.get(name) if keep else None)
            for name, optimizer in optimizers.items()}


def set_step_lrs(schedulers: dict[str, Any], step: int) -> None:
    """Before a step: every :class:`StepwiseLR` sets its learning rates for the step after ``step``."""
    for scheduler in schedulers.values():
        if isinstance(scheduler, StepwiseLR):
            scheduler.at(step)


def graph_blocker(config: Any) -> str | None:
    """Why the schedule keeps a CUDA graph from replaying steps, or None (a warm-up ends, then steps replay)."""
    if config.lr_schedule in optim_flags.PER_STEP_SCHEDULES:
        return (f"--lr-schedule {config.lr_schedule} sets a new learning rate every step, which a graph would "
                f"freeze; use step or constant to keep --cuda-graph")
    return None


def describe(optimizers: dict[str, torch.optim.Optimizer], schedulers: dict[str, Any], config: Any,
             steps_per_epoch: int) -> dict[str, Any]:
    """What config.json records of the optimizers and schedule used: classes, hyper-parameters, warm-up steps."""
    used = {}
    for name, optimizer in optimizers.items():
        settings = {key: value for key, value in optimizer.param_groups[0].items()
                    if key in ("lr", "momentum", "nesterov", "weight_decay", "betas", "eps", "rho", "alpha")}
        if isinstance(schedulers.get(name), StepwiseLR):
            settings["lr"] = schedulers[name].targets[0]  # without the warm-up or schedule of this step
        used[name] = {"class": type(optimizer).__name__, **settings}
    model_schedulers = {name: type(getattr(s, "epoch_scheduler", s)).__name__ for name, s in schedulers.items()
                        if getattr(s, "epoch_scheduler", s) is not None}
    return {"optimizers": used, "lr_schedule": {
        "schedule": config.lr_schedule, "warmup_steps": optim_flags.warmup_steps(config.warmup, steps_per_epoch),
        "model_schedulers": model_schedulers if config.lr_schedule == "model" else {}}}

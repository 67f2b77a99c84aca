"""What a new run's config resolves to, worked out before training: ``zoo train --print-config``.

The parts are resolved and built the way a run builds them (``zoo.build``), so a bad combination
fails here with the run's own one-line error; nothing is trained and no run folder is made. The
result is TOML (``zoo.config_toml``) that ``--config`` reads back into the same config: values the
config holds are written as they are, values the run works out (the model's loss and learning rate,
option defaults, what the data fills in) are shown commented out, each with its origin.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

from zoo import build
from zoo.config import NESTED_TABLES, OPTION_TABLES, TrainConfig, same_part_name
from zoo.config_toml import UNSET, Line, Table, render
from zoo.errors import UsageError, ZooError
from zoo.options import option_specs
from zoo.registry import Entry, Registry

DEFAULT, MODEL, DATA, FILE, COMMAND_LINE = "default", "model", "data", "file", "command line"
HEADER = [
    "zoo train's whole config, resolved: 'zoo train --config FILE' runs it as is (flags still override it).",
    "After each value, where it comes from: default, model, data, file or command line. A commented-out key",
    "is one the run works out itself, shown with what it works out to; uncomment it to pin that value.",
]
Origins = dict[tuple[str, ...], str]


@dataclasses.dataclass
class Resolved:
    """What a config resolves to: its parts, every option with its default, the schedule and device."""

    plan: build.Plan
    recipe_class: Any
    model_options: dict[str, Any]
    loss_options: dict[str, Any] | None
    dataset_options: dict[str, Any]
    hook_options: dict[str, dict[str, Any]]  # by qualified hook name
    steps_per_epoch: int
    best_metric: tuple[str, str] | None
    device: str
    augment: str | None = None  # the train split's preset (None: the dataset takes none)


def origins_of(file_values: dict[str, Any], given: dict[str, Any]) -> Origins:
    """Where each value of a merged config comes from, keyed like ``("batch_size",)`` or
    ``("hook_opt", "samples", "every")``: the command line over the file (as ``zoo.config.merge``)."""
    origins: Origins = {}
    for values, origin in ((file_values, FILE), (given, COMMAND_LINE)):
        for key, value in values.items():
            if value is None or (isinstance(value, (list, dict)) and not value):
                continue
            if key in NESTED_TABLES:
                origins.update({(key, name, option): origin for name, opts in value.items() for option in opts})
            elif key in OPTION_TABLES:
                origins.update({(key, option): origin for option in value})
            else:
                origins[(key,)] = origin
    return origins


def resolve(registry: Registry, config: TrainConfig, world_size: int = 1) -> Resolved:
    """Resolve and check a new run's config as the run would, in its order: device, data and model, loaders,
    loss, hooks, best metric. Raises the run's own errors; builds the parts but trains nothing."""
    from zoo.engine import best, optim
    from zoo.engine.assemble import check_split_fits_a_step
    from zoo.engine.precision import resolve_device

    config = copy.deepcopy(config)  # building makes path options absolute in place
    device = str(resolve_device(config.device))
    parts = build.build_parts(registry, config, new_run=True)
    plan = parts.plan
    per_step = config.batch_size * config.accumulate * world_size
    check_split_fits_a_step(len(parts.train_set), config, world_size, plan.dataset.name)  # the run's own check
    if plan.loss is None and config.loss_opt:
        raise UsageError("--loss-opt was given but the run has no --loss.")
    raw_hook_options = build.hook_options(plan.hooks, config.hook_opt, config.no_hooks)
    hooks = build.build_hooks(plan.hooks, config.hook_opt, config.no_hooks)
    optim.rebuild_optimizers(parts.recipe.configure_optimizers(config.lr), config, plan.model.name)  # run's errors
    return Resolved(
        plan=plan, recipe_class=build.load_recipe_class(plan.model), model_options=parts.model_options,
        loss_options=build.recorded_options(plan.loss, config.loss_opt), dataset_options=parts.dataset_options,
        hook_options={entry.qualified_name: build.recorded_options(entry, raw_hook_options[entry.qualified_name])
                      or {} for entry in plan.hooks},
        steps_per_epoch=len(parts.train_set) // per_step,
        best_metric=best.resolve(config.best_metric, parts.recipe, {e.qualified_name: h for e, h in hooks}),
        device=device, augment=getattr(parts.train_set, "augment", None))


def resolved_toml(registry: Registry, config: TrainConfig, origins: Origins, world_size: int = 1) -> str:
    """The TOML text of ``zoo train --print-config``: every key ``--config`` takes, resolved, with origins."""
    resolved = resolve(registry, config, world_size)
    plan = resolved.plan
    model_specs = {spec.name: spec for spec in option_specs(resolved.recipe_class)}
    tables = [
        Table(None, top_level_lines(registry, config, resolved, origins)),
        Table("model_opt", _option_lines("model_opt", config.model_opt, resolved.model_options, origins,
                                         lambda key, value: _model_option_origin(model_specs.get(key), value)),
              f"model {plan.model.qualified_name}: 'zoo info {plan.model.name}' explains its options"),
        Table("loss_opt", _option_lines("loss_opt", config.loss_opt, resolved.loss_options, origins),
              f"loss {plan.loss.qualified_name}" if plan.loss else "the run has no loss"),
        Table("dataset_opt", _option_lines("dataset_opt", config.dataset_opt, resolved.dataset_options, origins),
              f"dataset {plan.dataset.qualified_name}"),
        Table("hook_opt", _hook_lines(registry, config, resolved, origins),
              "keys are HOOK.KEY; the hooks on: " + (", ".join(e.name for e in plan.hooks) or "none")),
        Table("optimizers", [Line((name, key), value, origins.get(("optimizers", name, key), DEFAULT))
                             for name, table in config.optimizers.items() for key, value in table.items()],
              "keys are NAME.KEY for the model's optimizer NAME: optimizer, lr, momentum, nesterov, weight_decay"),
    ]
    try:
        return render(tables, HEADER)
    except ValueError as exc:
        raise UsageError(f"--print-config cannot write this config as TOML: {exc}.") from None


def _spelling(registry: Registry, entry: Entry) -> str:
    """How a config names ``entry``: its bare name where that means it, else ``plugin:name``."""
    try:
        return entry.name if registry.resolve(entry.kind, entry.name) == entry else entry.qualified_name
    except ZooError:
        return entry.qualified_name


def _worked_out(registry: Registry, config: TrainConfig, resolved: Resolved) -> dict[str, tuple[Any, str, str]]:
    """``(value, origin, note)`` of each unset top-level key whose value the run works out itself."""
    from zoo.engine.schedule import DEFAULT_EPOCHS

    plan, steps = resolved.plan, resolved.steps_per_epoch
    metric = resolved.best_metric
    every = (steps, DATA, "each epoch's end")
    return {
        "loss": (_spelling(registry, plan.loss), MODEL, "") if plan.loss else (UNSET, MODEL, "trains without one"),
        "dataset": (_spelling(registry, plan.dataset), DEFAULT, ""),
        "epochs": (UNSET, DEFAULT, "--max-steps ends the run") if config.max_steps is not None
        else (DEFAULT_EPOCHS, DEFAULT, f"{steps} steps each"),
        "max_steps": (UNSET, DEFAULT, "the epochs end the run"),
        "lr": (resolved.recipe_class.default_lr, MODEL, ""),
        "eval_every": every, "save_every": every,
        "eval_batches": (UNSET, DEFAULT, "the whole test split"),
        "best_metric": (f"{metric[0]}:{metric[1]}", MODEL, "") if metric
        else (UNSET, MODEL, "no metric picks a best checkpoint"),
        "clip_grad": (UNSET, DEFAULT, "no clipping"),
        "ddp_comm_hook": (UNSET, DEFAULT, "DDP's own all-reduce, with several processes"),
        "augment": (resolved.augment, DATA, "the dataset's default") if resolved.augment
        else (UNSET, DATA, "the dataset takes no presets"),
        "optimizer": (UNSET, MODEL, "the model's own"), "warmup": (UNSET, DEFAULT, "no warm-up"),
        "run_dir": (UNSET, DEFAULT, "runs/<model>-<loss>-<time>, named when the run starts"),
    }


def top_level_lines(registry: Registry, config: TrainConfig, resolved: Resolved, origins: Origins) -> list[Line]:
    """A line for every top-level key: the config's value where it holds one, else what the run works out."""
    worked_out = _worked_out(registry, config, resolved)
    notes = {"hooks": "on: " + (", ".join(e.name for e in resolved.plan.hooks) or "none"),
             "device": f"here: {resolved.device}" if config.device == "auto" else ""}
    if config.epochs is not None:
        notes["epochs"] = f"{resolved.steps_per_epoch} steps each"
    lines = []
    for field in dataclasses.fields(TrainConfig):
        name, value = field.name, getattr(config, field.name)
        if name in OPTION_TABLES:
            continue
        if value is not None:
            lines.append(Line(name, value, origins.get((name,), DEFAULT), note=notes.get(name, "")))
        else:
            shown, origin, note = worked_out.get(name, (UNSET, DEFAULT, ""))
            lines.append(Line(name, shown, origin, active=False, note=note))
    return lines


def _model_option_origin(spec: Any, value: Any) -> str:
    """``model`` for a model option at its own default, ``data`` for one the data filled in."""
    if spec is None or spec.required:
        return DATA
    default = list(spec.default) if isinstance(spec.default, tuple) else spec.default
    return MODEL if default == value else DATA


def _option_lines(table: str, given: dict[str, Any], resolved: dict[str, Any] | None, origins: Origins,
                  origin_of: Any = None) -> list[Line]:
    """The config's own options of a part (as given), then the others it resolves to (commented out)."""
    lines = [Line(key, value, origins.get((table, key), DEFAULT)) for key, value in given.items()]
    for key, value in (resolved or {}).items():
        if key not in given:
            lines.append(Line(key, value, origin_of(key, value) if origin_of else DEFAULT, active=False))
    return lines


def _hook_lines(registry: Registry, config: TrainConfig, resolved: Resolved, origins: Origins) -> list[Line]:
    """``HOOK.KEY`` lines: the config's hook options (a hook off keeps them), then those of each hook on."""
    on = resolved.plan.hooks
    lines = [Line((hook, key), value, origins.get(("hook_opt", hook, key), DEFAULT),
                  note="" if any(same_part_name(hook, e.qualified_name) for e in on) else "hook off")
             for hook, options in config.hook_opt.items() for key, value in options.items()]
    for entry in on:
        given = {key for hook, options in config.hook_opt.items()
                 if hook in (entry.name, entry.qualified_name) for key in options}
        spelled = _spelling(registry, entry)
        lines += [Line((spelled, key), value, DEFAULT, active=False)
                  for key, value in resolved.hook_options[entry.qualified_name].items() if key not in given]
    return lines

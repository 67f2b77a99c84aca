"""The run record, ``config.json``: the command, the config, what it resolved to, plugin versions.

Written by rank 0 when a run starts or resumes (a resume appends its command line); a resume
with nothing left to do only records where its data moved. ``zoo test``, ``zoo sample`` and
``zoo predict`` rebuild the run from it.
"""

from __future__ import annotations

import inspect
from typing import Any

from zoo.config import same_part_name
from zoo.engine import best, optim
from zoo.engine.rundir import read_config, versions, write_json
from zoo.options import option_specs
from zoo.registry import Registry, keep_first_made_with

_DEFAULTS_LISTED = 6  # a hint names this many of a model's defaults


def describe_entry(registry: Registry, entry: Any) -> dict[str, Any]:
    """A plugin part as config.json records it: ``plugin:name``, its plugin's version and distribution."""
    info = registry.plugins.get(entry.plugin)
    return {"name": entry.qualified_name, "version": info.version if info else None,
            "distribution": info.distribution if info else None}


def cache_origin(registry: Registry, entry: Any) -> str:
    """What keys a dataset's decoded caches besides its files: ``plugin:name@version``."""
    described = describe_entry(registry, entry)  # not the distribution: caches stay valid across a rename
    return f"{described['name']}@{described['version']}"


def resolved(run: Any) -> dict[str, Any]:
    """What the run's config resolved to: its parts and their versions, shapes, device, speed, sizes."""
    plan, registry, recipe = run.plan, run.registry, run.recipe
    return {
        "model": describe_entry(registry, plan.model),
        "loss": describe_entry(registry, plan.loss) if plan.loss else None,
        "dataset": describe_entry(registry, plan.dataset),
        "hooks": [describe_entry(registry, e) for e in plan.hooks],
        "model_options": run.model_options,
        "loss_options": run.loss_options,
        "dataset_options": run.dataset_options,
        "augment": getattr(run.train_set, "augment", None),  # the train split's preset (--augment or its default)
        "hook_options": run.hook_options,
        "best_metric": best.describe(run.best_metric),
        "input_shape": list(run.train_set.image_shape),
        "classes": getattr(run.train_set, "classes", None),
        "task": recipe.task,
        "loss_weights": getattr(run.loss_fn, "weights_source", None),
        "device": str(run.device),
        "speed": run.speed.describe(),
        "decode_on_device": run.device_decoder is not None,
        "steps_per_epoch": run.schedule.steps_per_epoch,
        "processes": run.dist.world_size,  # with config.batch_size (per process): the global batch a resume keeps
        "parameters": sum(p.numel() for p in recipe.parameters()),
        "trainable_parameters": sum(p.numel() for p in recipe.parameters() if p.requires_grad),
        **optim.describe(run.stepper.optimizers, run.stepper.schedulers, run.config, run.schedule.steps_per_epoch),
    }


def write_config(run: Any, command_line: list[str]) -> None:
    """Write ``config.json`` for a new run, or update it for a resumed one (its first versions kept)."""
    path = run.run_dir / "config.json"
    document: dict[str, Any] = {}
    if run.resumed and path.exists():
        document = read_config(run.run_dir)
        document.setdefault("resumed_with", []).append(command_line)
    else:
        document["command_line"] = command_line
    previous = dict(document)
    if run.init_report is not None:
        document["init_from"] = run.init_report
    document.update({"config": run.config.to_dict(), "resolved": resolved(run), "versions": versions()})
    keep_first_made_with(previous.get("resolved"), document["resolved"])
    write_json(path, document)


def record_moved_data(run: Any) -> None:
    """Keep a new --data (the saved one is gone) in config.json, so zoo test finds the data."""
    document = read_config(run.run_dir)
    if document.get("config", {}).get("data") != run.config.data:
        document["config"]["data"] = run.config.data
        write_json(run.run_dir / "config.json", document)


def recorded_processes(resolved: dict[str, Any] | None, default: int) -> int:
    """The number of processes config.json's ``batch_size`` is per process of (``default`` for a run recorded before
    it was saved: such a run resumes with as many processes as its checkpoints were made by)."""
    processes = (resolved or {}).get("processes")
    return processes if isinstance(processes, int) and processes >= 1 else default


def under_recorded(resolved: dict[str, Any], kind: str, name: str | None,
                   given: dict[str, Any]) -> dict[str, Any] | None:
    """The options a saved run recorded for its ``kind`` part (defaults included) under ``given``, its config's,
    which win; None when it recorded none (saved before they were: today's defaults apply), or when they are of
    another part than ``name`` (a config.json changed by hand)."""
    part, recorded = resolved.get(kind), resolved.get(f"{kind}_options")
    same = name is not None and isinstance(part, dict) and same_part_name(part.get("name"), name)
    return {**recorded, **given} if same and isinstance(recorded, dict) else None


def with_earlier_defaults(options: dict[str, Any] | None, part_class: Any) -> dict[str, Any] | None:
    """A saved run's recorded options, plus, for each option its model or dataset gained after the run was saved,
    the value the run was made with (the class's ``earlier_defaults``); None (nothing recorded) stays None.
    A subclass that inherits ``earlier_defaults`` but not the option gets none of it."""
    if options is None:
        return None
    earlier = getattr(part_class, "earlier_defaults", {})
    parameters = inspect.signature(part_class).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        earlier = {name: value for name, value in earlier.items() if name in parameters}
    return {**earlier, **options}


def unrecorded_defaults_hint(entry: Any, options: dict[str, Any], given: dict[str, Any], run_dir: Any) -> str:
    """Why the weights of a run saved before option defaults were recorded may not fit its model: one of the
    model's defaults now (listed briefly) may differ from its weights'; the fix is the old value in config.json."""
    from zoo.build import load_recipe_class  # imports the plugin: only once a checkpoint has failed to fit
    defaults = [f"{spec.name}={spec.default}" for spec in option_specs(load_recipe_class(entry), entry.bound_options)
                if not spec.required and spec.name not in given and options.get(spec.name) == spec.default]
    listed = ", ".join(defaults[:_DEFAULTS_LISTED]) + (", ..." if len(defaults) > _DEFAULTS_LISTED else "")
    return (f"the run predates recorded option defaults, so one of the model's defaults now ({listed or 'none'}) may "
            f"differ from what its weights were made with: add the old value to \"model_opt\" under \"config\" in "
            f"{run_dir}/config.json")

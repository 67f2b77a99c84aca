"""The run record, ``config.json``: the command, the config, what it resolved to, plugin versions.

Written by rank 0 when a run starts or resumes (a resume appends its command line); a resume
with nothing left to do only records where its data moved. ``zoo test``, ``zoo sample`` and
``zoo predict`` rebuild the run from it.
"""

from __future__ import annotations

from typing import Any

from zoo.engine import best
from zoo.engine.rundir import read_config, versions, write_json
from zoo.registry import Registry, keep_first_made_with


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
        "best_metric": best.describe(run.best_metric),
        "input_shape": list(run.train_set.image_shape),
        "classes": getattr(run.train_set, "classes", None),
        "task": recipe.task,
        "loss_weights": getattr(run.loss_fn, "weights_source", None),
        "device": str(run.device),
        "speed": run.speed.describe(),
        "decode_on_device": run.device_decoder is not None,
        "steps_per_epoch": run.schedule.steps_per_epoch,
        "parameters": sum(p.numel() for p in recipe.parameters()),
        "trainable_parameters": sum(p.numel() for p in recipe.parameters() if p.requires_grad),
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

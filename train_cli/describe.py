"""The text of ``zoo info``: summary, options from the signature, what an entry works with."""

from __future__ import annotations

from typing import Any

from zoo import build
from zoo.errors import PluginError
from zoo.hookspecs import hook_methods
from zoo.options import option_specs
from zoo.registry import Entry, Registry


def _options_block(factory: Any, exclude: tuple[str, ...]) -> list[str]:
    """One line per option: name, type, default, and the tasks it is for where it is not for every one."""
    specs = option_specs(factory, exclude)
    if not specs:
        return ["  options: none"]
    for_tasks = getattr(factory, "task_options", {})
    rows = [(s.name, s.type_name, "required" if s.required else repr(s.default)) for s in specs]
    notes = [f"  ({', '.join(t.replace('_', '-') for t in for_tasks[s.name])} models only)"
             if s.name in for_tasks else "" for s in specs]
    widths = [max(len(r[i]) for r in rows) for i in range(2)]
    return ["  options:"] + [f"    {n.ljust(widths[0])}  {t.ljust(widths[1])}  default {d}{note}"
                             for (n, t, d), note in zip(rows, notes)]


def _parameter_count(entry: Entry) -> str:
    """Parameters at default options, built on the meta device (no memory, no weights)."""
    import torch
    try:
        with torch.device("meta"):
            recipe, _, _ = build.build_recipe(entry, {})
    except Exception as exc:  # some options may be required; say why instead of failing
        return f"unknown ({type(exc).__name__}: {exc})"
    return (f"{sum(p.numel() for p in recipe.parameters()):,} at default options (a run fills image size, channels "
            f"and classes from its data, and says its own count)")


def describe(registry: Registry, entry: Entry) -> str:
    """A few lines a person reads to decide how to use ``entry``."""
    plugin = registry.plugins.get(entry.plugin)
    version = f" {plugin.version}" if plugin else ""
    lines = [f"{entry.name}  ({entry.kind} from plugin {entry.plugin}{version}; {entry.qualified_name})",
             f"  {entry.summary}" if entry.summary else "", f"  target: {entry.target}"]
    if entry.bound:
        lines.append("  fixed: " + ", ".join(f"{k}={v!r}" for k, v in entry.bound))
    bound = tuple(entry.bound_options)
    if entry.kind == "model":
        cls = build.load_recipe_class(entry)
        datasets = build.compatible_datasets(registry, cls.task)
        accepted = ", ".join(cls.losses) if cls.losses else "any installed loss"
        lines += [
            f"  task: {cls.task.replace('_', '-')}",
            f"  --loss: {cls.loss_role.removeprefix('--loss is ').removeprefix('--loss ')}",
            f"  losses that fit: {accepted} (default: {cls.default_loss or 'none'})",
            "  datasets that fit: " + (", ".join(e.name + (" (default)" if e.default else "") for e in datasets)
                                       or "none installed"),
            f"  parameters: {_parameter_count(entry)}",
        ]
        lines += _options_block(cls, bound)
    elif entry.kind == "loss":
        cls = build.load_loss_class(entry)
        users = []
        for model in registry.entries("model"):
            try:
                model_cls = build.load_recipe_class(model)
            except PluginError:
                continue
            if not model_cls.losses or entry.name in model_cls.losses:
                users.append(model.name)
        shown = users if len(users) <= 12 else users[:12] + [f"... ({len(users) - 12} more)"]
        lines.append("  models that use it: " + (", ".join(shown) or "none installed"))
        lines += _options_block(cls, bound)
    elif entry.kind == "dataset":
        cls = build.load_dataset_class(entry)
        lines += [f"  feeds: {', '.join(t.replace('_', '-') for t in cls.tasks)} models",
                  f"  --data: {_data_line(cls)}"]
        if getattr(cls, "augments", ()):
            lines.append(f"  --augment: {', '.join(cls.augments)} (the train split's preset; docs/datasets.md)")
        lines += _options_block(cls, build.DATASET_RESERVED + bound)
    else:
        cls = entry.load()
        hooks, unmarked, unknown = hook_methods(cls)
        switch = (f"yes (turn off with --no-hook {entry.name})" if entry.default
                  else f"no (turn on with --hook {entry.name})")
        lines += [f"  on by default: {switch}", f"  implements: {', '.join(hooks) or 'nothing'}"]
        if unmarked:
            lines.append(f"  not marked @zoo.hookimpl (never called; a run refuses it): {', '.join(unmarked)}")
        if unknown:
            lines.append(f"  marked but no such hook (never called; a run refuses it): {', '.join(unknown)}")
        lines += _options_block(cls, bound)
        if option_specs(cls):
            lines.append(f"  set with: --hook-opt {entry.name}.KEY=VALUE")
    return "\n".join(line for line in lines if line)


def option_names(entry: Entry) -> list[str]:
    """The keys ``--<kind>-opt`` takes for ``entry`` (shell completion reads them from the info cache)."""
    loaders = {"model": build.load_recipe_class, "loss": build.load_loss_class, "dataset": build.load_dataset_class}
    cls = loaders.get(entry.kind, Entry.load)(entry)
    reserved = build.DATASET_RESERVED if entry.kind == "dataset" else ()
    return [spec.name for spec in option_specs(cls, reserved + tuple(entry.bound_options))]


def _data_line(cls: type) -> str:
    """What ``--data`` means to a dataset: required, optional (with its help) or not read."""
    if cls.needs_data:
        return cls.data_help
    if cls.reads_data:
        return f"optional: {cls.data_help}"
    return "not read"

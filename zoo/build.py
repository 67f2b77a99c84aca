"""Turn names and options into objects: a recipe, a loss, datasets and hooks.

All the checks that need the plugins' classes happen here, before any
training starts: does the loss fit the model, does the dataset feed the
model's task, do the options match the signatures.
"""

from __future__ import annotations

import dataclasses
import inspect
import numbers
from typing import Any, Iterable, Sequence

from zoo import memory
from zoo.config import absolute_data, same_part_name
from zoo.errors import AmbiguousNameError, PluginError, RunError, UsageError, ZooError, name_part
from zoo.options import default_problem, missing_required, option_specs, option_values, parse_options
from zoo.registry import Entry, Registry

DATASET_RESERVED = ("split", "task", "data", "image_size", "channels", "augment")  # augment: --augment's


@dataclasses.dataclass
class Plan:
    """The resolved entries of a run, before anything heavy is built."""

    model: Entry
    loss: Entry | None
    dataset: Entry
    hooks: list[Entry]


def _load_class(entry: Entry, base: type, what: str) -> Any:
    cls = entry.load()
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise PluginError(f"{entry.kind} '{entry.qualified_name}' ({entry.target}) is not a {what}; "
                          f"fix or disable plugin '{entry.plugin}'.")
    return cls


def load_recipe_class(entry: Entry) -> Any:
    """Import a model entry and check it is a ``zoo.Recipe`` whose class attributes make sense."""
    from zoo.recipe import Recipe, class_attribute_problem
    cls = _load_class(entry, Recipe, "zoo.Recipe subclass")
    problem = class_attribute_problem(cls)
    if problem:
        raise PluginError(f"model '{entry.qualified_name}': {problem}; fix or disable plugin '{entry.plugin}'.")
    return cls


def load_dataset_class(entry: Entry) -> Any:
    """Import a dataset entry and check it is a ``zoo.data.ZooDataset``."""
    from zoo.data import ZooDataset
    return _load_class(entry, ZooDataset, "zoo.data.ZooDataset subclass")


def load_loss_class(entry: Entry) -> Any:
    """Import a loss entry and check it is an ``nn.Module`` class."""
    from torch import nn
    return _load_class(entry, nn.Module, "torch.nn.Module subclass")


def _default_loss_entry(registry: Registry, model_entry: Entry, name: str) -> Entry:
    """A model's default loss: its own plugin's loss of that name first, so another plugin's clash cannot hide it."""
    own = [e for e in registry.entries("loss") if e.name == name and e.plugin == model_entry.plugin]
    if len(own) == 1:
        return own[0]
    try:
        return registry.resolve("loss", name)
    except AmbiguousNameError as exc:
        raise UsageError(f"model '{model_entry.name}' trains with loss '{name}' by default, which several plugins "
                         f"offer; pass --loss with one of: {', '.join(exc.spellings)}.") from None
    except UsageError as exc:
        raise UsageError(f"model '{model_entry.name}' trains with loss '{name}' by default: {exc} "
                         f"Pass --loss NAME to pick another.") from None


def plan_run(registry: Registry, model: str, loss: str | None, dataset: str | None,
             hooks: list[str], no_hooks: list[str]) -> Plan:
    """Resolve every name of a run and check that the pieces fit together."""
    model_entry = registry.resolve("model", model)
    recipe_cls = load_recipe_class(model_entry)
    loss_entry = None
    loss_name = loss or recipe_cls.default_loss
    if loss_name:
        loss_entry = registry.resolve("loss", loss_name) if loss else _default_loss_entry(registry, model_entry,
                                                                                         loss_name)
        if recipe_cls.losses and loss_entry.name not in recipe_cls.losses:
            raise UsageError(f"model '{model_entry.name}' cannot train with loss '{loss_entry.name}'; "
                             f"losses that fit: {', '.join(recipe_cls.losses)}.")
    if dataset:
        dataset_entry = registry.resolve("dataset", dataset)
        dataset_cls = load_dataset_class(dataset_entry)
        if recipe_cls.task not in dataset_cls.tasks:
            fits = [e.name for e in compatible_datasets(registry, recipe_cls.task)]
            raise UsageError(
                f"model '{model_entry.name}' needs {recipe_cls.task.replace('_', '-')} data but dataset "
                f"'{dataset_entry.name}' gives {', '.join(t.replace('_', '-') for t in dataset_cls.tasks)}; "
                f"datasets that fit: {', '.join(fits) or 'none installed'}.")
    else:
        defaults = [e for e in compatible_datasets(registry, recipe_cls.task) if e.default]
        if not defaults:
            raise UsageError(f"no default dataset feeds {recipe_cls.task.replace('_', '-')} models; "
                             f"pass --dataset NAME (see 'zoo list datasets').")
        dataset_entry = defaults[0]
    wanted = [e.qualified_name for e in registry.defaults("hook")]
    for name in hooks:
        entry = registry.resolve("hook", name)
        if entry.qualified_name not in wanted:
            wanted.append(entry.qualified_name)
    for name in no_hooks:  # matched among the hooks on (a bare name another plugin also offers is no clash)
        matching = [w for w in wanted if same_part_name(w, name)]
        if not matching:
            registry.resolve("hook", name)  # a typo or an ambiguous name: its one-line error; else nothing to drop
        wanted = [w for w in wanted if w not in matching]
    hook_entries = [registry.resolve("hook", name) for name in wanted]
    return Plan(model_entry, loss_entry, dataset_entry, hook_entries)


def compatible_datasets(registry: Registry, task: str) -> list[Entry]:
    """Dataset entries whose class can feed ``task`` (entries that fail to load are skipped)."""
    found = []
    for entry in registry.entries("dataset"):
        try:
            cls = load_dataset_class(entry)
        except PluginError:
            continue
        if task in cls.tasks:
            found.append(entry)
    return found


def check_defaults(entry: Entry, cls: Any, given: Iterable[str], exclude: tuple[str, ...] = ()) -> None:
    """A plugin's option default that breaks its own type hint or range is the plugin's bug, named before use
    (options ``given`` by the user replace their defaults, so theirs are not checked)."""
    for spec in option_specs(cls, exclude=(*exclude, *entry.bound_options, *given)):
        problem = default_problem(spec)
        if problem:
            given = f"{entry.name}.{spec.name}" if entry.kind == "hook" else spec.name
            raise PluginError(f"{entry.kind} '{entry.qualified_name}' option {spec.name}: {problem} ({spec.type_name}); "
                              f"a bug in plugin '{entry.plugin}': fix the default, or pass --{entry.kind}-opt "
                              f"{given}=VALUE meanwhile.")


def build_dataset(entry: Entry, split: str, *, task: str, data: str | None, options: dict[str, Any],
                  image_size: int | None = None, channels: int | None = None, new_run: bool = False,
                  augment: str | None = None) -> Any:
    """Build one split of a dataset, with the user's options checked against its signature (``new_run``: also
    refuse options meant for another task, which a saved run made before that check may hold)."""
    cls = load_dataset_class(entry)
    check_defaults(entry, cls, options, DATASET_RESERVED)
    parsed = parse_options(f"dataset '{entry.name}'", cls, options, exclude=DATASET_RESERVED + tuple(entry.bound_options))
    if cls.needs_data and not data:
        raise UsageError(f"dataset '{entry.name}' needs --data ({cls.data_help}).")
    missing_required(f"dataset '{entry.name}'", cls, [*parsed, *entry.bound_options], "--dataset-opt ",
                     exclude=DATASET_RESERVED)
    for key in options if new_run else ():  # a saved run keeps the options it was made with
        for_tasks = getattr(cls, "task_options", {}).get(key)
        if for_tasks and task not in for_tasks:
            wanted = " or ".join(t.replace("_", "-") for t in for_tasks)
            raise UsageError(f"dataset '{entry.name}' option {key} is for {wanted} models, not "
                             f"{task.replace('_', '-')} ones: drop --dataset-opt {key}.")
    try:
        dataset = cls(split, task=task, data=data, image_size=image_size, channels=channels,
                      **entry.bound_options, **parsed, **({} if augment is None else {"augment": augment}))
    except (TypeError, ValueError) as exc:
        raise UsageError(f"dataset '{entry.name}' rejected its options: {exc}") from None
    name_part(dataset, entry.name)  # errors about its items name it
    _check_image_shape(entry, dataset, channels, image_size)
    return dataset


def _check_image_shape(entry: Entry, dataset: Any, channels: int | None, image_size: int | None) -> None:
    """A dataset must say its items' shape, and give the channels and size a model asked for: else the model
    would fail deep in torch on the first batch."""
    shape = getattr(dataset, "image_shape", None)
    if not (isinstance(shape, (tuple, list)) and len(shape) == 3
            and all(isinstance(v, numbers.Integral) and v > 0 for v in shape)):
        raise PluginError(f"dataset '{entry.qualified_name}' must set image_shape to its items' (C, H, W) in "
                          f"__init__, got {shape!r}; fix or disable plugin '{entry.plugin}'.")
    if (channels is not None and shape[0] != channels) or (image_size is not None and shape[1] != image_size):
        asked = ", ".join(part for part in (f"channels={channels}" if channels is not None else "",
                                            f"image_size={image_size}" if image_size is not None else "") if part)
        raise PluginError(f"dataset '{entry.qualified_name}' was asked for {asked} but its image_shape is "
                          f"{tuple(shape)}: it must convert and resize its images to what it is given; fix or "
                          f"disable plugin '{entry.plugin}'.")


def build_recipe(entry: Entry, options: dict[str, Any], shape: tuple[int, int, int] | None = None,
                 num_classes: int | None = None, *,
                 dataset: str = "the dataset") -> tuple[Any, dict[str, Any], tuple[int, int] | None]:
    """Build a recipe; with a data shape, fill shape options from it first.

    Returns the recipe, its complete options, and the ``(channels, size)`` the
    model wants its input in (``None`` without a shape). ``dataset`` names the
    data in errors (a class count the model cannot take).
    """
    cls = load_recipe_class(entry)
    check_defaults(entry, cls, options)
    parsed = parse_options(f"model '{entry.name}'", cls, options, exclude=tuple(entry.bound_options))
    full = {**entry.bound_options, **parsed}
    wanted = None
    if shape is not None:
        full, wanted = cls.adapt_to_data(tuple(shape), num_classes, full)
        _check_class_count(cls, entry, full, parsed, num_classes, dataset)
        _check_filled_ranges(cls, entry, full, parsed, tuple(shape), dataset)
    missing_required(f"model '{entry.name}'", cls, full, "--model-opt ")
    try:
        with memory.out_of_memory_said(f"building model '{entry.name}'", f"lower its options (zoo info {entry.name})"):
            recipe = cls(**full)
    except (TypeError, ValueError) as exc:
        raise UsageError(f"model '{entry.name}' rejected its options: {exc}") from None
    name_part(recipe, entry.name)  # errors about what it returns name it
    # every option, its default included, so config.json keeps what the run was built with: a plugin whose new
    # version changes a default still rebuilds the saved run as it was
    own = {key: value for key, value in full.items() if key not in entry.bound_options}
    return recipe, option_values(cls, own, entry.bound_options), wanted


def _check_filled_ranges(cls: type, entry: Entry, options: dict[str, Any], user_options: dict[str, Any],
                         shape: tuple[int, ...], dataset: str) -> None:
    """Refuse what the data filled in (an image size, a channel count) outside an option's declared range."""
    for spec in option_specs(cls):
        value = options.get(spec.name)
        if spec.range is None or spec.name in user_options or value is None or spec.range.contains(value):
            continue
        fix = "give it larger images, or set --model-opt image_size=N to resize them" \
            if spec.name == "image_size" else f"set --model-opt {spec.name}=N"
        raise UsageError(f"{dataset} gives {spec.name} {value} (its items are {shape}), but model '{entry.name}' "
                         f"takes {spec.name} {spec.range.describe()}: {fix}.")


def _check_class_count(cls: type, entry: Entry, options: dict[str, Any], user_options: dict[str, Any],
                       classes: int | None, dataset: str) -> None:
    """Refuse a model of fewer classes than the data has: its labels would index past the logits."""
    params = inspect.signature(cls.__init__).parameters
    if not classes or "num_classes" not in params:
        return
    wanted = options.get("num_classes", params["num_classes"].default)
    if not isinstance(wanted, int) or wanted >= classes:
        return
    if "num_classes" in user_options:
        raise UsageError(f"{dataset} has {classes} classes; --model-opt num_classes={wanted} is too few "
                         f"(leave it unset to take {classes}).")
    fix = ("pick a model or a dataset that fit" if "num_classes" in entry.bound_options
           else f"pass --model-opt num_classes={classes}")
    raise UsageError(f"{dataset} has {classes} classes but model '{entry.name}' is built for {wanted} "
                     f"(num_classes={wanted}); {fix}.")


def build_loss(entry: Entry | None, options: dict[str, Any], recorded_weights: str | None = None) -> Any:
    """Build the loss module, or ``None`` when the run has no loss.

    ``recorded_weights`` is the ``weights_source`` a run recorded: a loss that can load those weights again
    (``options_for_weights``) is built from them, so a resumed or tested run computes the loss it trained with.
    """
    if entry is None:
        if options:
            raise UsageError("--loss-opt was given but the run has no --loss.")
        return None
    cls = load_loss_class(entry)
    check_defaults(entry, cls, options)
    pinned = _recorded_weight_options(entry, cls, recorded_weights) if recorded_weights else {}
    options = {**options, **pinned}
    parsed = parse_options(f"loss '{entry.name}'", cls, options, exclude=tuple(entry.bound_options))
    missing_required(f"loss '{entry.name}'", cls, [*parsed, *entry.bound_options], "--loss-opt ")
    try:
        loss = cls(**entry.bound_options, **parsed)
    except (TypeError, ValueError) as exc:
        raise UsageError(f"loss '{entry.name}' rejected its options: {exc}") from None
    except ZooError as exc:
        if not pinned:
            raise
        said = (UsageError if isinstance(exc, UsageError) else RunError)
        raise said(f"{str(exc).rstrip('.')} (the weights the run recorded: {recorded_weights}, in its config.json).") \
            from None
    from zoo.engine.contracts import ScalarLossCheck  # torch: not imported by commands that build no loss

    check = ScalarLossCheck(entry.name)  # a loss class is an nn.Module (load_loss_class)
    check.handle = loss.register_forward_hook(check)
    return loss


def _recorded_weight_options(entry: Entry, cls: type, recorded: str) -> dict[str, Any]:
    """The options with which a loss loads again the weights a run recorded (its ``options_for_weights``)."""
    method = getattr(cls, "options_for_weights", None)
    if not callable(method):
        return {}
    pinned = method(recorded)
    known = {spec.name for spec in option_specs(cls)}
    if not isinstance(pinned, dict) or not all(isinstance(key, str) and key in known for key in pinned):
        raise PluginError(f"loss '{entry.qualified_name}': options_for_weights({recorded!r}) must return a dict of "
                          f"its options ({', '.join(sorted(known)) or 'none'}; {{}} for a source it does not know), "
                          f"got {pinned!r}; fix or disable plugin '{entry.plugin}'.")
    return {key: value for key, value in pinned.items() if key not in entry.bound_options}


def recorded_options(entry: Entry | None, options: dict[str, Any],
                     exclude: tuple[str, ...] = ()) -> dict[str, Any] | None:
    """A part's options as config.json records them: ``options`` checked and converted, every other one's
    default (``option_values``); None without a part."""
    if entry is None:
        return None
    cls, skip = entry.load(), (*exclude, *entry.bound_options)
    return option_values(cls, parse_options(f"{entry.kind} '{entry.name}'", cls, options, exclude=skip), skip)


def hook_options(entries: list[Entry], options: dict[str, dict[str, Any]] | None = None,
                 switched_off: Sequence[str] = (),
                 recorded: dict[str, dict[str, Any]] | None = None) -> dict[str, dict[str, Any]]:
    """The options of each hook on, by qualified name: those a saved run ``recorded`` under the ``--hook-opt`` ones.

    Options of a hook in ``switched_off`` (``--no-hook``) are left unused, not refused: a run keeps them
    for when the hook is switched on again; recorded options of a hook not on are dropped.
    """
    options = {name: opts for name, opts in (options or {}).items()
               if not any(same_part_name(name, off) for off in switched_off)}
    merged = {entry.qualified_name: {**(recorded or {}).get(entry.qualified_name, {}), **options.pop(entry.name, {}),
                                     **options.pop(entry.qualified_name, {})} for entry in entries}
    if options:
        name = next(iter(options))
        raise UsageError(f"--hook-opt names hook '{name}', which is not on in this run; add --hook {name}.")
    return merged


def build_hooks(entries: list[Entry], options: dict[str, dict[str, Any]] | None = None,
                switched_off: Sequence[str] = ()) -> list[tuple[Entry, Any]]:
    """Instantiate the selected training hooks with their options (see ``hook_options``)."""
    merged, built = hook_options(entries, options, switched_off), []
    for entry in entries:
        cls = entry.load()
        raw = merged[entry.qualified_name]
        check_defaults(entry, cls, raw)
        parsed = parse_options(f"hook '{entry.name}'", cls, raw)
        missing_required(f"hook '{entry.name}'", cls, parsed, f"--hook-opt {entry.name}.")
        try:
            built.append((entry, cls(**parsed)))
        except (TypeError, ValueError) as exc:
            raise UsageError(f"hook '{entry.name}' rejected its options: {exc}") from None
        except Exception as exc:
            raise PluginError(f"hook '{entry.qualified_name}' failed to start: {type(exc).__name__}: {exc}") from exc
    return built


@dataclasses.dataclass
class RunParts:
    """A run's plan, recipe and both dataset splits, built and checked against each other."""

    plan: Plan
    recipe: Any
    model_options: dict[str, Any]
    train_set: Any
    test_set: Any
    dataset_options: dict[str, Any] = dataclasses.field(default_factory=dict)  # defaults included


def build_parts(registry: Registry, config: Any, need_train: bool = True, new_run: bool = False,
                model_options: dict[str, Any] | None = None,
                dataset_options: dict[str, Any] | None = None) -> RunParts:
    """Build the recipe and datasets of a config; the model takes its input shape from the data. ``model_options``
    and ``dataset_options`` (a saved run's recorded ones, defaults included, under those its config names) replace
    the config's ``model_opt`` and ``dataset_opt``."""
    plan = plan_run(registry, config.model or "", config.loss, config.dataset, config.hooks, config.no_hooks)
    from zoo.augment import dataset_preset
    task, augment = load_recipe_class(plan.model).task, dataset_preset(registry, plan.dataset, config)
    paths = [key for key in getattr(load_dataset_class(plan.dataset), "path_options", ())
             if isinstance(config.dataset_opt.get(key), str)]
    for key in paths:  # kept absolute, like --data
        config.dataset_opt[key] = absolute_data(config.dataset_opt[key])
    options = config.dataset_opt if dataset_options is None else \
        {**dataset_options, **{key: config.dataset_opt[key] for key in paths}}
    probe = build_dataset(plan.dataset, "train" if need_train else "test", task=task, data=config.data,
                          options=options, new_run=new_run, augment=augment)
    classes = getattr(probe, "classes", None)
    recipe, model_options, (channels, size) = build_recipe(
        plan.model, config.model_opt if model_options is None else model_options, tuple(probe.image_shape),
        len(classes) if classes else None,
        dataset=f"dataset '{plan.dataset.name}'")

    def split(name: str) -> Any:
        if probe.split == name and (channels, size) == tuple(probe.image_shape[:2]):
            return probe
        return build_dataset(plan.dataset, name, task=task, data=config.data, options=options,
                             image_size=size, channels=channels, augment=augment)

    return RunParts(plan, recipe, model_options, split("train") if need_train else None, split("test"),
                    recorded_options(plan.dataset, options, DATASET_RESERVED) or {})

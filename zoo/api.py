"""The Python API: list and build what is installed, and use what you trained.

Everything here is also reachable from the top-level package (``zoo.load_run``,
``zoo.create_model``...); importing :mod:`zoo` stays cheap because this module
is imported on first use, and it imports torch only inside the functions that
build something (listing never does).

A trained run gives a working model in three lines::

    import zoo
    from PIL import Image

    run = zoo.load_run("runs/mnist_net-cross_entropy-20250101-120000")
    logits = run.recipe.net(run.preprocess(Image.open("digit.png"))[None])
    print(run.classes[logits.argmax(1).item()])

``run.recipe`` is the model in eval mode on the requested device with the
weights of the newest checkpoint (or ``step=N``), ``run.networks`` its networks
by name (the prefixes of the keys in ``model.safetensors``), and
``run.preprocess`` turns a PIL image (or a path) into the model's input the
way the run's dataset prepares its test split. ``run.predict(batch)`` runs a
batch through the model without gradients. Building without a run::

    zoo.list_models("tv_resnet*")          # ['tv_resnet18', 'tv_resnet34', ...]
    model = zoo.create_model("dcgan", ngf=32, nz=64)
    loss = zoo.create_loss("perceptual", weights="random")
    data = zoo.create_dataset("shapes", "test", test_count=16)
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from zoo.errors import PluginError, UsageError
from zoo.images import preprocess_image, read_image, to_image
from zoo.registry import Registry, get_registry

if TYPE_CHECKING:  # only for annotations: importing this module must not import torch
    import torch
    from PIL import Image as PILImage
    from torch import nn

    from zoo.build import Plan
    from zoo.config import TrainConfig
    from zoo.data import ZooDataset
    from zoo.recipe import Recipe

__all__ = [
    "LoadedRun",
    "create_dataset",
    "create_loss",
    "create_model",
    "list_datasets",
    "list_losses",
    "list_models",
    "load_run",
    "preprocess_image",
    "read_image",
    "to_image",
]

# --------------------------------------------------------------------------- argument checks
def _registry(registry: Any) -> Registry:
    """The given registry, or this process's; anything else is a one-line TypeError."""
    if registry is not None and not isinstance(registry, Registry):
        raise TypeError(f"registry must be a zoo.registry.Registry or None, got {type(registry).__name__}.")
    return registry or get_registry()


_EXAMPLES = {"model": "dcgan", "loss": "mse", "dataset": "shapes"}


def _name(kind: str, name: Any) -> str:
    """``name`` if it is a string, else a one-line TypeError naming what ``kind`` names look like."""
    if not isinstance(name, str):
        raise TypeError(f"a {kind} name must be a str such as {_EXAMPLES[kind]!r}, "
                        f"got {type(name).__name__} {name!r}.")
    return name


def _patterns(pattern: Any) -> list[str]:
    """``pattern`` as a list of shell wildcards; anything but a str, a sequence of str or None is a TypeError."""
    if isinstance(pattern, str):
        return [pattern]
    if pattern is None or (isinstance(pattern, Sequence) and all(isinstance(p, str) for p in pattern)):
        return list(pattern or [])
    raise TypeError(f"pattern must be a str such as 'tv_resnet*', a sequence of str or None, got {pattern!r}.")


# --------------------------------------------------------------------------- listing
def _list(kind: str, pattern: str | Sequence[str] | None, registry: Registry | None) -> list[str]:
    """Names of one kind matching ``pattern``; ``plugin:name`` where two plugins offer a name."""
    patterns = _patterns(pattern)
    registry = _registry(registry)
    counts = Counter(entry.name for entry in registry.entries(kind))
    return [entry.name if counts[entry.name] == 1 else entry.qualified_name
            for entry in registry.entries(kind, patterns)]


def list_models(pattern: str | Sequence[str] | None = None, *, registry: Registry | None = None) -> list[str]:
    """Installed model names matching a shell wildcard (or any of several), naturally sorted.

    Like ``timm.list_models``: ``list_models("tv_resnet*")`` gives
    ``['tv_resnet18', 'tv_resnet34', 'tv_resnet50', ...]``. A name two plugins
    offer is listed once per plugin as ``plugin:name``, the spelling
    :func:`create_model` needs for it. Imports no plugin code and no torch.
    """
    return _list("model", pattern, registry)


def list_losses(pattern: str | Sequence[str] | None = None, *, registry: Registry | None = None) -> list[str]:
    """Installed loss names matching a shell wildcard, naturally sorted (see :func:`list_models`)."""
    return _list("loss", pattern, registry)


def list_datasets(pattern: str | Sequence[str] | None = None, *, registry: Registry | None = None) -> list[str]:
    """Installed dataset names matching a shell wildcard, naturally sorted (see :func:`list_models`)."""
    return _list("dataset", pattern, registry)


# --------------------------------------------------------------------------- building
def create_model(name: str, *, registry: Registry | None = None, **options: Any) -> Recipe:
    """Build a model (a ``zoo.Recipe``, untrained, in train mode) from its name and options.

    ``options`` are checked against the model's signature exactly as
    ``--model-opt`` is: an unknown option or a value of the wrong type is a
    :class:`zoo.UsageError` with a did-you-mean. Values may be typed (``ngf=32``)
    or strings (``ngf="32"``). No data is needed: shape options the model does
    not get keep their defaults.
    """
    from zoo.build import build_recipe
    entry = _registry(registry).resolve("model", _name("model", name))
    recipe, _, _ = build_recipe(entry, options)
    return recipe


def create_loss(name: str, *, registry: Registry | None = None, **options: Any) -> nn.Module:
    """Build a loss module from its name and options (checked like ``--loss-opt``)."""
    from zoo.build import build_loss
    entry = _registry(registry).resolve("loss", _name("loss", name))
    return build_loss(entry, options)


def create_dataset(name: str, split: str = "train", *, task: str | None = None, data: str | None = None,
                   image_size: int | None = None, channels: int | None = None,
                   registry: Registry | None = None, **options: Any) -> ZooDataset:
    """Build one split (``"train"`` or ``"test"``) of a dataset.

    ``task`` is the task of the model it would feed (``generation``,
    ``classification`` or ``image_to_image``); it defaults to the first the
    dataset lists. ``data`` is what ``--data`` would be; ``image_size`` and
    ``channels`` ask for resized / converted images; other ``options`` are
    checked like ``--dataset-opt``. Items are ``(input, target)`` pairs of
    ``(C, H, W)`` float images in ``[-1, 1]`` (see :mod:`zoo.data`).
    """
    from zoo.build import build_dataset, load_dataset_class
    if split not in ("train", "test"):
        raise UsageError(f"split must be 'train' or 'test', not {split!r}.")
    entry = _registry(registry).resolve("dataset", _name("dataset", name))
    cls = load_dataset_class(entry)
    task = task or cls.tasks[0]
    if task not in cls.tasks:
        raise UsageError(f"dataset '{entry.name}' cannot feed task '{task}'; it feeds "
                         f"{', '.join(cls.tasks)}.")
    return build_dataset(entry, split, task=task, data=data, options=options, image_size=image_size,
                         channels=channels)


# --------------------------------------------------------------------------- runs
@dataclasses.dataclass
class LoadedRun:
    """A trained run, ready to use: its model with a checkpoint's weights, config and data.

    ``test_set`` is built on first use (it may need the run's ``--data``), so a
    run loads even where its training data is gone.
    """

    run_dir: Path
    recipe: Recipe
    networks: dict[str, nn.Module]
    config: TrainConfig
    resolved: dict[str, Any]
    checkpoint: Path
    step: int | None
    classes: list[str] | None
    device: torch.device
    input_shape: tuple[int, int, int]
    plan: Plan = dataclasses.field(repr=False)
    _test_set: Any = dataclasses.field(default=None, repr=False)
    weights: str | None = None  # the weight set loaded (None: the raw weights)
    weight_sets: list[str] = dataclasses.field(default_factory=list)  # the sets its checkpoint holds

    @property
    def task(self) -> str:
        """The model's task: ``generation``, ``classification`` or ``image_to_image``."""
        return self.recipe.task

    @property
    def test_set(self) -> ZooDataset:
        """The test split of the run's dataset, built with the run's input shape and options (those it recorded,
        defaults included, under its config's)."""
        if self._test_set is None:
            from zoo.build import build_dataset
            from zoo.engine.record import under_recorded
            channels, size = self.input_shape[0], self.input_shape[1]
            options = under_recorded(self.resolved, "dataset", self.plan.dataset.qualified_name,
                                     self.config.dataset_opt)
            self._test_set = build_dataset(self.plan.dataset, "test", task=self.recipe.task,
                                           data=self.config.data, options=options or self.config.dataset_opt,
                                           image_size=size, channels=channels)
        return self._test_set

    def preprocess(self, image: PILImage.Image | str | Path, whole: bool = False) -> torch.Tensor:
        """A PIL image (or an image file) as the model's ``(C, H, W)`` input, on the run's device.

        Resized and centre-cropped to the run's input size, converted to its
        channels and mapped to ``[-1, 1]``, as the dataset does for its test
        split (see :func:`preprocess_image`); ``whole`` keeps its size, for a
        model with ``any_image_size``. Add the batch axis with ``[None]``.
        """
        if isinstance(image, (str, Path)):
            image = read_image(image)
        if whole and not self.recipe.any_image_size:
            raise UsageError(f"whole=True is for models that take any image size; model '{self.plan.model.name}' "
                             f"takes {tuple(self.input_shape)}: leave whole out.")
        from PIL import Image
        if whole and isinstance(image, Image.Image) and min(image.size) < self.recipe.min_image_size:
            raise UsageError(f"the image is {image.size[0]}x{image.size[1]}; model '{self.plan.model.name}' "
                             f"restores images of at least {self.recipe.min_image_size} pixels a side (or pass "
                             f"--crop to resize to the training size).")
        return preprocess_image(image, self.input_shape, whole).to(self.device)

    def predict(self, inputs: torch.Tensor) -> torch.Tensor:
        """Run a batch through the model in eval mode without gradients.

        Calls the recipe's ``predict(inputs)`` if it defines one, else its own ``forward``, else its only
        network. Classifiers return logits, image-to-image models images in
        ``[-1, 1]``.
        """
        import torch
        from zoo.recipe import predictor
        if self.task == "generation" and not callable(getattr(self.recipe, "predict", None)):
            raise UsageError(f"model '{self.plan.model.name}' generates images rather than mapping inputs; use "
                             f"run.recipe.sample(count, generator) (or 'zoo sample').")
        method = predictor(self.recipe)
        if method is None:
            raise PluginError(f"model '{self.plan.model.name}' has networks {', '.join(self.networks)} and neither "
                              f"predict(inputs) nor forward, so zoo cannot tell which to run; its plugin should "
                              f"define predict (or call one of run.networks yourself).")
        self.recipe.eval()
        with torch.no_grad():
            return method(inputs.to(self.device))

    def build_loss(self) -> nn.Module | None:
        """The run's loss module with its saved options, on the run's device (``None`` if it has none)."""
        from zoo.build import build_loss
        from zoo.engine.record import under_recorded
        loss = self.plan.loss.qualified_name if self.plan.loss else None
        options = under_recorded(self.resolved, "loss", loss, self.config.loss_opt) or self.config.loss_opt
        loss = build_loss(self.plan.loss, options, self.resolved.get("loss_weights"))
        return loss.to(self.device) if loss is not None else None


def _steps_text(steps: list[tuple[int, Path]]) -> str:
    shown = [str(s) for s, _ in steps]
    return ", ".join(shown) if len(shown) <= 8 else ", ".join(shown[:3] + ["..."] + shown[-4:])


def choose_checkpoint(run_dir: Path, step: int | None = None, folder: str | Path | None = None) -> Path:
    """The checkpoint folder of a run: ``folder`` if given, else ``step-<step>``, else the newest."""
    from zoo.engine import checkpoint as ckpt
    run_dir = Path(run_dir)
    if folder is not None and step is not None:
        raise UsageError("give a checkpoint step or a checkpoint folder, not both.")
    if folder is not None:
        chosen = Path(folder)
        if chosen.is_file() and (chosen.parent / "model.safetensors").is_file():
            raise UsageError(f"{folder} is a file of a checkpoint; pass its folder, {chosen.parent}.")
        if not (chosen / "model.safetensors").is_file():
            raise UsageError(f"{folder} is not a checkpoint folder (no model.safetensors in it); "
                             f"pass one of {run_dir}/checkpoints/step-*.")
        return chosen
    steps = ckpt.list_steps(run_dir)
    if not steps:
        raise UsageError(f"{run_dir} has no checkpoint yet; train it first (zoo train --resume {run_dir}).")
    if step is None:
        return steps[-1][1]
    for number, path in steps:
        if number == step:
            return path
    raise UsageError(f"{run_dir} has no checkpoint of step {step}; its checkpoints are of steps "
                     f"{_steps_text(steps)}.")


def _load_weights(recipe: Any, folder: Path, model_name: str, run_dir: Path, weight_set: str | None,
                  hint: str) -> None:
    """Load ``model.safetensors`` (or a weight set's file) into the recipe, refusing a checkpoint of another shape
    (``hint`` says why it may not fit).

    A damaged checkpoint's error names the run's other steps, one of which may be whole.
    """
    from zoo.engine import checkpoint as ckpt
    if weight_set is not None and weight_set not in ckpt.weight_set_names(folder):
        held = ", ".join(ckpt.weight_set_names(folder))
        raise UsageError(f"checkpoint {folder} has no weight set '{weight_set}'; "
                         + (f"it holds: {held} (and the raw weights, without --weights)." if held else
                            "it holds the raw weights only (a hook such as ema offers more: --hook ema)."))
    try:
        weights = ckpt.load_weights(folder, weight_set)
    except ckpt.CheckpointError as exc:
        others = [(number, path) for number, path in ckpt.list_steps(run_dir) if path.resolve() != folder.resolve()]
        if not others:
            raise
        raise ckpt.CheckpointError(exc.folder, exc.reason, exc.damaged,
                                   hint=f"pick another checkpoint with --step N (steps {_steps_text(others)})") from None
    ckpt.load_into(recipe, weights, folder, model_name, hint)


def _rebuild(registry: Registry, plan: Plan, config: TrainConfig, resolved: dict[str, Any],
             run_dir: Path) -> tuple[Any, Any, tuple[int, ...], Any, str]:
    """A saved run's model, untrained, from the options it recorded (defaults included: a plugin's new defaults
    do not change the run) under its config's; without them, from its data as training did (and its test split).

    Returns the recipe, the test split (None unless built), the input shape, the classes and what to say if the
    weights do not fit.
    """
    from zoo import build
    from zoo.engine.record import under_recorded, unrecorded_defaults_hint, with_earlier_defaults

    model_options = with_earlier_defaults(under_recorded(resolved, "model", plan.model.qualified_name,
                                                         config.model_opt), build.load_recipe_class(plan.model))
    if model_options is not None and resolved.get("input_shape"):
        recipe, _, _ = build.build_recipe(plan.model, model_options)
        return (recipe, None, tuple(int(v) for v in resolved["input_shape"]), resolved.get("classes"),
                "the run's config.json may have been changed")
    parts = build.build_parts(registry, config, need_train=False, model_options=model_options,
                              dataset_options=under_recorded(resolved, "dataset", config.dataset, config.dataset_opt))
    hint = "the run's config.json may have been changed"
    if "model_options" not in resolved:  # saved before defaults were recorded: the model's may have changed since
        hint = unrecorded_defaults_hint(plan.model, parts.model_options, config.model_opt, run_dir)
    return (parts.recipe, parts.test_set, tuple(int(v) for v in parts.test_set.image_shape),
            getattr(parts.test_set, "classes", None), hint)


def load_run(run_dir: str | Path, step: int | None = None, device: str | Any = "cpu", *,
             checkpoint: str | Path | None = None, registry: Registry | None = None,
             data: str | None = None, weights: str | None = None) -> LoadedRun:
    """Load a run made by ``zoo train``: its model with trained weights, in eval mode, on ``device``.

    ``step`` picks ``checkpoints/step-<step>`` (default: the newest);
    ``checkpoint`` names a checkpoint folder instead. ``device`` is ``cpu``,
    ``auto``, ``cuda``, ``cuda:N``, ``mps`` or a ``torch.device``. The model is
    rebuilt from the options saved in ``config.json`` (no data is read); a
    missing run, a run without checkpoints or an unknown step is a one-line
    :class:`zoo.UsageError`. ``data`` replaces the run's ``--data`` for its
    ``test_set`` (data that has moved). ``weights`` names a weight set a hook saved beside the
    weights (``"ema"``); the default is the raw weights.
    """
    from zoo import build
    from zoo.config import TrainConfig, pin_recorded_parts
    from zoo.engine.checkpoint import weight_set_names
    from zoo.engine.precision import resolve_device
    from zoo.engine.rundir import read_config

    if step is not None and (not isinstance(step, int) or isinstance(step, bool)):
        raise TypeError(f"step must be an int (or None for the newest checkpoint), got {type(step).__name__}.")
    if weights is not None and not isinstance(weights, str):
        raise TypeError(f"weights must be a weight set's name such as 'ema' (or None for the raw weights), got "
                        f"{type(weights).__name__}.")
    run_dir = Path(run_dir)
    saved = read_config(run_dir)  # a zoo run's: its config names a model
    config = TrainConfig.from_dict(saved["config"], f"{run_dir}/config.json")
    if data is not None:
        config.data = data
    parts_named = dataclasses.replace(config)  # the recorded plugin:name spellings; config stays as saved
    pin_recorded_parts(parts_named, saved.get("resolved"))
    folder = choose_checkpoint(run_dir, step, checkpoint)
    torch_device = resolve_device(str(device))  # checked, and a bare 'cuda' given its index
    registry = registry or get_registry()
    resolved = dict(saved.get("resolved") or {})
    plan = build.plan_run(registry, parts_named.model or "", parts_named.loss, parts_named.dataset, [], [])
    recipe, test_set, input_shape, classes, hint = _rebuild(registry, plan, parts_named, resolved, run_dir)
    _load_weights(recipe, folder, plan.model.name, run_dir, weights, hint)
    recipe.to(torch_device)
    recipe.eval()
    number = int(folder.name.split("-")[-1]) if folder.name.startswith("step-") and \
        folder.name.split("-")[-1].isdigit() else None
    return LoadedRun(run_dir=run_dir, recipe=recipe, networks=dict(recipe.named_children()), config=config,
                     resolved=resolved, checkpoint=folder, step=number, classes=list(classes) if classes else None,
                     device=torch_device, input_shape=input_shape,  # type: ignore[arg-type]
                     plan=plan, _test_set=test_set, weights=weights, weight_sets=weight_set_names(folder))

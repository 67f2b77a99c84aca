"""``zoo export``: a run's predictor as an ONNX, exported-program or TorchScript file, with its preprocessing
recorded beside it, checked against PyTorch before it is put in place.

What is exported is what ``zoo predict`` runs (a classifier's logits, an image-to-image model's output), or for a
generative model what ``zoo sample`` draws images with: its generator, from latent noise. Everything is written
into a temporary folder first; only a file that passed the parity check is moved to ``--out``, so a failure leaves
nothing behind. The formats are in :mod:`zoo.export_formats`, the check in :mod:`zoo.export_parity`.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from zoo.errors import PluginError, RunError, UsageError, kind_of
from zoo.export_formats import (BATCH_AXIS, FORMATS, INPUT_NAME, OUTPUT_NAME, ExportFormat, export_format,
                                exporter_reason, quiet_exporter, require_packages)
from zoo.export_parity import TRACE_BATCH, Parity, check_batch, measure, trace_batch

if TYPE_CHECKING:
    import torch
    from torch import nn

    from zoo.api import LoadedRun
    from zoo.registry import Registry

FORMAT_NAMES = tuple(FORMATS)
EXPORTS_FOLDER = "exports"  # the default --out: RUN/exports/<format>[-<weights>]/
PREPROCESSING = "preprocessing.json"
MODEL_CARD = "README.md"  # a run's model card, copied into an export folder
EXPORT_FILES = {f.file_name for f in FORMATS.values()} | {f"{f.file_name}.data" for f in FORMATS.values()} | {
    PREPROCESSING, MODEL_CARD, "samples"}  # what an export folder may hold (samples/: the card's grid), and so what --overwrite may replace


@dataclasses.dataclass
class Target:
    """Where an export goes: a folder (``model.<ext>``, preprocessing.json, the model card) or a file (with
    ``<stem>.preprocessing.json`` beside it)."""

    path: Path
    is_file: bool

    def model_name(self, fmt: ExportFormat) -> str:
        return self.path.name if self.is_file else fmt.file_name

    def record_name(self) -> str:
        return f"{self.path.stem}.{PREPROCESSING}" if self.is_file else PREPROCESSING

    def folder(self) -> Path:
        """The folder the files land in."""
        return self.path.parent if self.is_file else self.path

    def names(self, fmt: ExportFormat) -> list[str]:
        """The file names this export may write in :meth:`folder` (ONNX's external weights included)."""
        model = self.model_name(fmt)
        return [model, f"{model}.data", self.record_name()] + ([] if self.is_file else [MODEL_CARD])


@dataclasses.dataclass
class ExportResult:
    """What ``export_run`` wrote and what its parity check measured."""

    target: Path
    files: list[Path]
    format: str
    runtime: str
    parity: Parity
    record: dict[str, Any]


def plan_target(run_dir: Path, fmt: ExportFormat, out: str | Path | None, weights: str | None) -> Target:
    """``--out`` as a file (it ends in the format's suffix) or a folder; by default ``RUN/exports/<format>``
    (``-<weights>`` for a weight set)."""
    if out is None:
        return Target(run_dir / EXPORTS_FOLDER / (fmt.name + (f"-{weights}" if weights else "")), False)
    path = Path(out)
    return Target(path, path.suffix == fmt.suffix and not path.is_dir())


def check_target(target: Target, fmt: ExportFormat, overwrite: bool) -> None:
    """Refuse a target that holds files unless ``overwrite``, and even then one that holds what is no export."""
    if target.is_file:
        if target.path.is_dir():
            raise UsageError(f"--out {target.path} is a folder; name a new file, or leave the {fmt.suffix} off.")
        taken = [name for name in target.names(fmt) if (target.folder() / name).exists()]
        if taken and not overwrite:
            raise UsageError(f"{target.folder() / taken[0]} exists; pass --overwrite to replace it, or another --out.")
        return
    if target.path.is_file():
        raise UsageError(f"--out {target.path} is a file; name a folder, or a file ending in {fmt.suffix}.")
    held = sorted(p.name for p in target.path.iterdir()) if target.path.is_dir() else []
    if held and not overwrite:
        raise UsageError(f"{target.path} already holds files; pass --overwrite to replace the export there, "
                         f"or another --out.")
    foreign = [name for name in held if name not in EXPORT_FILES]
    if foreign:
        raise UsageError(f"{target.path} holds {foreign[0]}, which no export writes, so --overwrite leaves it "
                         f"alone; pick another --out.")


def _method_module(recipe: nn.Module, method: str) -> nn.Module:
    """A module whose forward is ``recipe.<method>`` (a recipe's predict or generate), the recipe its child."""
    from torch import nn

    class RecipeMethod(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.recipe = recipe

        def forward(self, inputs: torch.Tensor) -> torch.Tensor:
            return getattr(self.recipe, method)(inputs)

    return RecipeMethod().eval()


def _smallest_module(recipe: nn.Module, call: Callable[..., Any], example: torch.Tensor, model: str) -> nn.Module:
    """The module to export for ``call``: the one network it runs, when that network alone gives the same output
    (a GAN's generator, without its discriminator); else the recipe itself or a module calling its method."""
    import torch
    from torch import nn
    if isinstance(call, nn.Module) and call is not recipe:
        return call  # the recipe's only network
    ran: list[str] = []
    handles = [child.register_forward_hook(lambda *_, name=name: ran.append(name))
               for name, child in recipe.named_children()]
    try:
        with torch.no_grad():
            output = call(example)
    finally:
        for handle in handles:
            handle.remove()
    name = getattr(call, "__name__", "forward")
    if not isinstance(output, torch.Tensor):
        raise RunError(f"model '{model}' cannot be exported: its {name} returns {kind_of(output)}, not a tensor.")
    if len(set(ran)) == 1 and _same_output(dict(recipe.named_children())[ran[0]], example, output):
        return dict(recipe.named_children())[ran[0]]
    return recipe if call is recipe else _method_module(recipe, name)


def _same_output(network: nn.Module, example: torch.Tensor, output: torch.Tensor) -> bool:
    """Whether ``network`` alone maps ``example`` to ``output`` exactly (it may not even take it)."""
    import torch
    try:
        with torch.no_grad():
            alone = network(example)
    except Exception:  # it takes something made from the input, not the input itself
        return False
    return isinstance(alone, torch.Tensor) and alone.shape == output.shape and torch.equal(alone, output)


def module_to_export(run: LoadedRun) -> tuple[nn.Module, Callable[[torch.Tensor], torch.Tensor], tuple[int, ...]]:
    """The module to export, what it must agree with (``run.predict``, or the recipe's ``generate``), and the
    shape of one input without the batch axis (an image, or a generator's latent noise)."""
    import torch

    from zoo.recipe import Recipe, predictor
    recipe, model = run.recipe, run.plan.model.name
    if run.task == "generation":
        noise = recipe.sample_inputs(TRACE_BATCH, torch.Generator().manual_seed(0))
        if noise is None or type(recipe).generate is Recipe.generate:
            raise UsageError(f"model '{model}' cannot be exported: zoo exports a generator through its recipe's "
                             f"sample_inputs(count, generator) and generate(inputs), which it does not define.")
        call, reference, shape = recipe.generate, recipe.generate, tuple(int(v) for v in noise.shape[1:])
    else:
        call, reference, shape = predictor(recipe), run.predict, tuple(int(v) for v in run.input_shape)
        if call is None:
            raise PluginError(f"model '{model}' has networks {', '.join(run.networks)} and neither predict(inputs) "
                              f"nor forward, so zoo cannot tell which to export; its plugin should define predict.")
    return _smallest_module(recipe, call, trace_batch(shape), model).eval(), reference, shape


def _image_record(shape: tuple[int, ...]) -> dict[str, Any]:
    """How pixels map to the model's images: the datasets' ``[-1, 1]``, i.e. mean 0.5 and std 0.5 on ``[0, 1]``."""
    channels = shape[0]
    return {"shape": list(shape), "mode": "L" if channels == 1 else "RGB", "value_range": [-1.0, 1.0],
            "mean": [0.5] * channels, "std": [0.5] * channels, "scale": "x = pixel / 127.5 - 1 (pixels 0..255)"}


def preprocessing_record(run: LoadedRun, fmt: ExportFormat, model_file: str, input_shape: tuple[int, ...],
                         output_shape: tuple[int, ...], parity: Parity) -> dict[str, Any]:
    """What preprocessing.json holds: the model's input and output, how images map to them, the classes or the
    latent noise, which weights of which step, the parity check, and the versions that wrote it."""
    import importlib.metadata as md

    import torch

    import zoo
    record: dict[str, Any] = {
        "format": fmt.name, "file": model_file, "model": run.plan.model.name, "task": run.task,
        "input": {"name": INPUT_NAME, "shape": [BATCH_AXIS, *input_shape], "dtype": "float32"},
        "output": {"name": OUTPUT_NAME, "shape": [BATCH_AXIS, *output_shape], "dtype": "float32"}}
    image = _image_record(tuple(run.input_shape))
    if run.task == "generation":
        record["latent"] = {"shape": list(input_shape), "distribution": "standard normal"}
        record["output"]["image"] = image
    else:
        height, width = image["shape"][1:]
        record["preprocessing"] = {**image, "resize": f"antialiased resize to cover {height}x{width}, then a "
                                                      f"centre crop to {height}x{width}"}
    if run.task == "classification":
        record["output"]["meaning"] = "class logits (softmax gives probabilities)"
        record["classes"] = run.classes
    if run.task == "image_to_image":
        record["output"]["image"] = image
    versions = {"zoo": zoo.__version__, "torch": torch.__version__}
    versions.update({package: md.version(package) for package in fmt.packages})
    record.update(weights=run.weights or "raw", step=run.step, run=str(run.run_dir),
                  checkpoint=run.checkpoint.name, parity=parity.record(), versions=versions)
    return record


def _write_and_check(run: LoadedRun, fmt: ExportFormat, staging: Path, target: Target) -> tuple[Parity, dict]:
    """Export into ``staging`` under the target's names, run the parity check, write preprocessing.json and copy
    the model card; return the check and the record."""
    import torch

    from zoo.engine.rundir import write_json
    module, reference, shape = module_to_export(run)
    model_file = staging / target.model_name(fmt)
    try:
        with quiet_exporter():
            fmt.write(module, trace_batch(shape), model_file)
    except Exception as exc:
        others = " or ".join(f"--format {name}" for name in FORMATS if name != fmt.name)
        raise RunError(f"model '{run.plan.model.name}' cannot be exported as {fmt.name}: {exporter_reason(exc)}; "
                       f"try {others}.") from exc
    batch, inputs = check_batch(run)
    with quiet_exporter():
        parity = measure(fmt, model_file, reference, batch, inputs)
        with torch.no_grad():
            output_shape = tuple(int(v) for v in reference(batch[:1]).shape[1:])
    record = preprocessing_record(run, fmt, model_file.name, shape, output_shape, parity)
    write_json(staging / target.record_name(), record, report=True)
    if not target.is_file:
        _carry_card(Path(run.run_dir), staging)
    return parity, record


def _carry_card(run_dir: Path, staging: Path) -> None:
    """The run's model card, made afresh (``zoo test`` results included), with the sample grid it shows."""
    from zoo.card import SAMPLE_GRID, card_text

    (staging / MODEL_CARD).write_text(card_text(run_dir))
    if (run_dir / SAMPLE_GRID).is_file():
        (staging / SAMPLE_GRID).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(run_dir / SAMPLE_GRID, staging / SAMPLE_GRID)


def _place(staging: Path, target: Target, fmt: ExportFormat) -> list[Path]:
    """Move the staged files to the target (replacing an export there) and return where they are."""
    if target.is_file:
        names = [name for name in target.names(fmt) if (staging / name).exists()]  # the model first
        for name in names:
            os.replace(staging / name, target.folder() / name)
        return [target.folder() / name for name in names]
    if target.path.exists():
        shutil.rmtree(target.path)  # check_target let only an export (or nothing) be here
    os.replace(staging, target.path)
    first = [target.path / name for name in target.names(fmt)[:3] if (target.path / name).exists()]
    return first + sorted(path for path in target.path.rglob("*") if path.is_file() and path not in first)


def _new_folders(folder: Path) -> list[Path]:
    """The folders ``folder.mkdir(parents=True)`` would create, innermost first."""
    missing = []
    while not folder.exists():
        missing.append(folder)
        folder = folder.parent
    return missing


def export_run(run_dir: str | Path, format_name: str, out: str | Path | None = None, *, weights: str | None = None,
               step: int | None = None, overwrite: bool = False, registry: Registry | None = None) -> ExportResult:
    """Export a run's predictor (for a GAN its generator) as ``format_name``, check it against PyTorch, and put
    it at ``out`` (default ``RUN/exports/<format>/``) with preprocessing.json; a failure leaves nothing there."""
    from zoo.api import load_run

    fmt = export_format(format_name)
    run_dir = Path(run_dir)
    target = plan_target(run_dir, fmt, out, weights)
    require_packages(fmt)
    check_target(target, fmt, overwrite)
    run = load_run(run_dir, step=step, device="cpu", registry=registry, weights=weights)
    parent = target.path.parent  # the staging folder's: a folder target is the staging folder renamed
    made = _new_folders(parent)
    parent.mkdir(parents=True, exist_ok=True)
    staging = parent / f".{target.path.name}.export-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)  # left by an export that was killed
    staging.mkdir()
    try:
        parity, record = _write_and_check(run, fmt, staging, target)
        files = _place(staging, target, fmt)
    except BaseException:
        for folder in made:  # innermost first; those that hold nothing else
            if folder.is_dir() and not any(p != staging for p in folder.iterdir()):
                shutil.rmtree(folder)
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return ExportResult(target.path, files, fmt.name, fmt.runtime, parity, record)

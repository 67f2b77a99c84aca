"""``zoo test``: evaluate a run's checkpoint on the test split."""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

import torch
from torchvision.utils import save_image

from zoo.api import load_run
from zoo.card import write_card
from zoo.engine import speed
from zoo.engine.confusion import MAX_DRAWN, confusion_image, confusion_matrix, confusion_record
from zoo.engine.evaluate import evaluate
from zoo.engine.feed import BadItems, make_loader
from zoo.engine.pictures import Pictures
from zoo.engine.precision import Precision
from zoo.engine.rundir import write_json
from zoo.registry import Registry


def evaluate_run(registry: Registry, run_dir: Path, *, step: int | None = None, chosen: str | None = None,
                 device: str = "auto", batch_size: int | None = None, workers: int = 0, data: str | None = None,
                 skip_bad_files: bool = False, weights: str | None = None) -> dict[str, Any]:
    """Evaluate a checkpoint; write ``test-metrics.json`` (and a grid of samples, or of test inputs, outputs and targets).

    ``weights`` evaluates a weight set a hook saved (``ema``); its results go to ``test-metrics-<set>.json``
    and ``samples/test-<set>-step-N.png``, never over the raw weights' results.

    When the run folder cannot be written the result says why under ``not_saved``.

    ``data`` reads the test split from there instead of the run's ``--data`` (data that moved).
    """
    run_dir = Path(run_dir)
    run = load_run(run_dir, step, device=device, checkpoint=chosen or None, registry=registry, data=data,
                   weights=weights)
    suffix = f"-{weights}" if weights else ""
    config, folder, recipe, torch_device = run.config, run.checkpoint, run.recipe, run.device
    loss_fn = run.build_loss()
    loader, _ = make_loader(run.test_set, batch_size or config.batch_size, config.seed, workers,
                            shuffle=False, drop_last=False, pin_memory=torch_device.type == "cuda")
    settings = speed.resolve(config, torch_device, lambda _message: None)  # --fast picks the precision
    precision = Precision(settings.precision, torch_device)
    bad_items = BadItems(skip_bad_files or config.skip_bad_files)
    metrics = evaluate(recipe, loss_fn, loader, torch_device, precision.autocast, config.seed, bad_items)
    if bad_items.summary():
        print(bad_items.summary(), file=sys.stderr)
    step = run.step
    skipped = len(bad_items.distinct)
    result: dict[str, Any] = {"checkpoint": str(folder), "step": step, "weights": weights or "raw",
                              "weight_sets": ["raw", *run.weight_sets], "samples": len(run.test_set) - skipped,
                              "metrics": metrics}
    if skipped:
        result["skipped"] = skipped
    if not all(math.isfinite(value) for value in metrics.values()):
        print(f"zoo: warning: checkpoint {folder} gives non-finite metrics; its weights may have diverged "
              f"(saved as null in test-metrics{suffix}.json).", file=sys.stderr)
    grid = Pictures(recipe, run.test_set, config.seed, torch_device, precision.autocast,
                    say=lambda line: print(line, file=sys.stderr)).grid()
    confusion = _confusion(run, loader, precision) if run.task == "classification" else None
    try:
        if confusion is not None:
            result.update(_write_confusion(confusion, run_dir, suffix))
        if grid is not None:
            (run_dir / "samples").mkdir(exist_ok=True)
            grid_path = run_dir / "samples" / f"test{suffix}-step-{step}.png"
            save_image(grid, str(grid_path))
            result["sample_grid"] = str(grid_path)
        write_json(run_dir / f"test-metrics{suffix}.json", result, report=True)
        write_card(run_dir)  # the model card shows the test metrics too
    except OSError as exc:  # the figures still reach the caller; only keeping them failed
        where = f"{exc.filename}: " if exc.filename else ""
        result["not_saved"] = (f"could not save the results in {run_dir} ({where}{exc.strerror or exc}); the "
                               f"figures above are all there is.")
    return result


def _confusion(run: Any, loader: Any, precision: Precision) -> dict[str, Any] | None:
    """The classifier's confusion matrix and per-class figures (a second pass over the test split)."""
    names = [str(name) for name in run.classes or []]
    matrix = confusion_matrix(run.recipe, loader, run.device, precision.autocast, len(names))
    return None if matrix is None else confusion_record(matrix, names)


def _write_confusion(record: dict[str, Any], run_dir: Path, suffix: str) -> dict[str, Any]:
    """``confusion.json`` and, up to ``MAX_DRAWN`` classes, ``confusion.png``; what the result says of them."""
    written = {"per_class": record["per_class"], "confusion": str(run_dir / f"confusion{suffix}.json")}
    write_json(run_dir / f"confusion{suffix}.json", record, report=True)
    if len(record["classes"]) <= MAX_DRAWN:
        picture = run_dir / f"confusion{suffix}.png"
        confusion_image(torch.tensor(record["matrix"]), record["classes"]).save(picture)
        written["confusion_image"] = str(picture)
    return written

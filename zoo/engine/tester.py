"""``zoo test``: evaluate a run's checkpoint on the test split."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torchvision.utils import make_grid, save_image

from zoo import build
from zoo.config import TrainConfig
from zoo.engine import checkpoint
from zoo.engine.evaluate import evaluate
from zoo.engine.feed import make_loader
from zoo.engine.precision import Precision, resolve_device
from zoo.engine.rng import derive_seed
from zoo.engine.rundir import read_config, write_json
from zoo.errors import UsageError
from zoo.registry import Registry


def pick_checkpoint(run_dir: Path, chosen: str | None) -> Path:
    """The checkpoint to read: the one given, or the run's newest."""
    if chosen:
        folder = Path(chosen)
        if not (folder / "model.safetensors").is_file():
            raise UsageError(f"{chosen} is not a checkpoint folder (no model.safetensors); "
                             f"pass one of {run_dir}/checkpoints/step-*.")
        return folder
    steps = checkpoint.list_steps(run_dir)
    if not steps:
        raise UsageError(f"{run_dir} has no checkpoint yet; train it first (zoo train --resume {run_dir}).")
    return steps[-1][1]


def evaluate_run(registry: Registry, run_dir: Path, *, chosen: str | None = None, device: str = "auto",
             batch_size: int | None = None, workers: int = 0) -> dict[str, Any]:
    """Evaluate a checkpoint; write ``test-metrics.json`` (and a sample grid for generative models)."""
    run_dir = Path(run_dir)
    saved = read_config(run_dir)
    config = TrainConfig.from_dict(saved["config"], f"{run_dir}/config.json")
    folder = pick_checkpoint(run_dir, chosen)
    torch_device = resolve_device(device)
    parts = build.build_parts(registry, config, need_train=False)
    recipe = parts.recipe
    weights = checkpoint.load_weights(folder)
    try:
        recipe.load_state_dict(weights)
    except RuntimeError as exc:
        raise UsageError(f"checkpoint {folder} does not fit model '{parts.plan.model.name}': "
                         f"{str(exc).splitlines()[1].strip() if len(str(exc).splitlines()) > 1 else exc}") from None
    recipe.to(torch_device)
    loss_fn = build.build_loss(parts.plan.loss, config.loss_opt)
    if loss_fn is not None:
        loss_fn.to(torch_device)
    loader, _ = make_loader(parts.test_set, batch_size or config.batch_size, config.seed, workers,
                            shuffle=False, drop_last=False, pin_memory=torch_device.type == "cuda")
    precision = Precision(config.precision, torch_device)
    metrics = evaluate(recipe, loss_fn, loader, torch_device, precision.autocast, config.seed)
    step = int(folder.name.split("-")[-1]) if folder.name.startswith("step-") else None
    result: dict[str, Any] = {"checkpoint": str(folder), "step": step, "samples": len(parts.test_set),
                              "metrics": metrics}
    if recipe.task == "generation":
        generator = torch.Generator(device=torch_device)
        generator.manual_seed(derive_seed(config.seed, "samples"))
        recipe.eval()
        with torch.no_grad():
            images = recipe.sample(64, generator)
        if images is not None:
            (run_dir / "samples").mkdir(exist_ok=True)
            grid_path = run_dir / "samples" / f"test-step-{step}.png"
            grid = make_grid(((images.float() + 1) / 2).clamp(0, 1).cpu(), nrow=int(math.sqrt(len(images))))
            save_image(grid, str(grid_path))
            result["sample_grid"] = str(grid_path)
    write_json(run_dir / "test-metrics.json", result)
    return result

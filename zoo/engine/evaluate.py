"""Evaluation on the test split: eval mode, no grad, metrics averaged over samples."""

from __future__ import annotations

import numbers
from typing import Any

import torch
from torch.utils.data import DataLoader

from zoo.engine.feed import BadItems, to_device
from zoo.engine.rng import derive_seed
from zoo.errors import PluginError, kind_of, part_name


def evaluate(recipe: Any, loss_fn: Any, loader: DataLoader, device: torch.device, autocast: Any,
             seed: int, bad_items: BadItems, progress: Any = None) -> dict[str, float]:
    """Run ``recipe.evaluation_step`` over ``loader`` and return per-sample means.

    Randomness comes from a generator seeded from ``seed`` alone, so two
    evaluations of the same weights agree and training RNGs are untouched.
    """
    was_training = recipe.training
    recipe.eval()
    generator = torch.Generator(device=device)
    generator.manual_seed(derive_seed(seed, "eval"))
    totals: dict[str, torch.Tensor] = {}
    try:
        with torch.no_grad():
            for batch, bad in loader:
                bad_items.check(bad)
                if batch is None:
                    continue
                batch = to_device(batch, device, non_blocking=True)
                with autocast():
                    sums = recipe.evaluation_step(batch, loss_fn, generator)
                for key, value in checked_sums(sums, recipe).items():
                    value = torch.as_tensor(value, device=device, dtype=torch.float64)
                    totals[key] = totals[key] + value if key in totals else value
                if progress is not None:
                    progress.update(1)
    finally:
        recipe.train(was_training)
    if not totals:
        return {}
    keys = list(totals)
    values = torch.stack([totals[k].double() for k in keys]).tolist()  # one device sync
    merged = dict(zip(keys, values))
    count = merged.pop("count", 0.0) or 1.0
    return {key: value / count for key, value in merged.items()}


def checked_sums(sums: Any, recipe: Any) -> dict[str, Any]:
    """``evaluation_step``'s result, refused in one line unless it is scalar sums with a ``count`` (no sync)."""
    must = f"model '{part_name(recipe)}': evaluation_step must return a dict of per-batch sums with 'count'"
    if not isinstance(sums, dict):
        raise PluginError(f"{must}, got {kind_of(sums)}.")
    if "count" not in sums:
        raise PluginError(f"{must} (the batch's number of samples, which the sums are divided by); it has "
                          f"{', '.join(map(repr, sums)) or 'nothing'}.")
    for key, value in sums.items():
        if not isinstance(value, numbers.Real) and not (isinstance(value, torch.Tensor) and value.numel() == 1):
            raise PluginError(f"{must}; its {key!r} must be a number or a one-element tensor, got {kind_of(value)}.")
    return sums

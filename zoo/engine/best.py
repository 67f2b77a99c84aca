"""Which evaluation metric picks a run's best checkpoint: the model's own, or ``--best-metric``.

``--best-metric ema/accuracy`` picks by the averaged weights' accuracy (a weight set a hook
offers, evaluated beside the raw weights); ``NAME:max`` or ``NAME:min`` says which way is better
where zoo cannot tell (the model's metric keeps its own direction, a loss is lower-better).
The choice is recorded in ``config.json`` (``resolved.best_metric``).
"""

from __future__ import annotations

from typing import Any

from zoo.errors import UsageError
from zoo.recipe import declared_eval_metrics

MODES = ("max", "min")


def resolve(chosen: str | None, recipe: Any, hook_objects: dict[str, Any]) -> tuple[str, str] | None:
    """``(metric name, "max"/"min")`` that picks the best checkpoint, or ``None`` when nothing does.

    ``hook_objects`` are the run's hooks: a ``SET/NAME`` metric needs one that offers weight sets.
    """
    own = tuple(recipe.metric) if getattr(recipe, "metric", None) else None
    if chosen is None:
        return own  # type: ignore[return-value]
    name, _, mode = chosen.partition(":")
    weight_set, _, base = name.rpartition("/")
    if mode and mode not in MODES:
        raise UsageError(f"--best-metric {chosen}: the direction after ':' must be max or min, e.g. {name}:max.")
    reported = declared_eval_metrics(recipe)
    if not base or (reported and base not in reported):
        listed = f"it reports: {', '.join(reported)}" if reported else "see its evaluation_step"
        raise UsageError(f"--best-metric {chosen}: the model's evaluation does not report '{base}' ({listed}).")
    if weight_set and not any(callable(getattr(obj, "weight_sets", None)) for obj in hook_objects.values()):
        raise UsageError(f"--best-metric {chosen} names weight set '{weight_set}', but no hook of this run offers "
                         f"weight sets; add the hook that does (--hook ema for ema/...).")
    if not mode:
        mode = _direction(base, own, chosen)
    return name, mode


def _direction(base: str, own: tuple[str, str] | None, chosen: str) -> str:
    """The model's metric keeps its direction, a loss is lower-better; otherwise the user says."""
    if own is not None and base == own[0]:
        return own[1]
    if "loss" in base:
        return "min"
    raise UsageError(f"--best-metric {chosen}: say whether higher or lower is better, {chosen}:max or {chosen}:min.")


def describe(metric: tuple[str, str] | None) -> dict[str, str] | None:
    """The choice as config.json records it."""
    return {"name": metric[0], "mode": metric[1]} if metric else None

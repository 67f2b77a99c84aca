"""Helpers for plugin authors' tests: a tiny in-process run, an exact-resume assertion, an item checker.

A stable, documented API (docs/plugin-reference.md, "zoo.testing"); ``zoo check`` is built on it::

    from zoo.testing import assert_exact_resume, check_items, tiny_run

    def test_my_model_trains(tmp_path):
        run = tiny_run("my_model", tmp_path / "run", steps=2)
        assert run.step == 2 and run.weights

    def test_my_model_resumes_exactly(tmp_path):
        assert_exact_resume("my_model", tmp_path, hooks=["my_hook"])

    def test_my_dataset_items():
        assert check_items("my_dataset", task="classification") == []

Every run is on the CPU, with no loader processes, an evaluation on one test batch after every
step (hooks that act on evaluations see the same ones in a straight and a resumed run), no periodic
checkpoints (the end of a run saves), and quiet unless ``quiet=False``. Names may be ``plugin:name``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import math
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from zoo.config import TrainConfig
from zoo.engine import checkpoint, rng
from zoo.engine.rundir import prepare_new
from zoo.registry import Registry, get_registry

__all__ = ["TinyRun", "tiny_run", "assert_exact_resume", "resume_difference", "first_difference", "check_items",
           "first_items"]

QUIET_HOOKS = ("samples", "tensorboard")  # the default hooks that write pictures: off in tiny runs


@dataclasses.dataclass
class TinyRun:
    """What a tiny run left: its folder, step, newest checkpoint and what that checkpoint holds."""

    run_dir: Path
    step: int
    checkpoint: Path
    weights: dict[str, torch.Tensor]  # the model's, as saved
    state: dict[str, Any]  # the rest of the checkpoint: optimizers, schedulers, hooks, rng, step...
    weight_sets: dict[str, dict[str, torch.Tensor]]  # what hooks offered beside the weights (ema...)
    trainer: Any = dataclasses.field(repr=False, default=None)  # the Trainer, to reach the run's built pieces


def tiny_run(model: str, run_dir: str | Path, *, steps: int = 2, resume: bool = False, loss: str | None = None,
             dataset: str | None = None, data: str | None = None, hooks: Sequence[str] = (),
             no_hooks: Sequence[str] = QUIET_HOOKS, model_opt: dict[str, Any] | None = None,
             loss_opt: dict[str, Any] | None = None, dataset_opt: dict[str, Any] | None = None,
             hook_opt: dict[str, dict[str, Any]] | None = None, batch_size: int = 4, seed: int = 0,
             registry: Registry | None = None, quiet: bool = True, **settings: Any) -> TinyRun:
    """Train ``model`` in this process for ``steps`` steps (``resume``: go on from ``run_dir``'s newest checkpoint
    up to ``steps``) and return what its last checkpoint holds. ``settings`` are further ``TrainConfig`` fields."""
    from zoo.engine.trainer import Trainer

    run_dir = Path(run_dir)
    values: dict[str, Any] = dict(
        model=model, loss=loss, dataset=dataset, data=data, hooks=list(hooks), no_hooks=list(no_hooks),
        model_opt=dict(model_opt or {}), loss_opt=dict(loss_opt or {}), dataset_opt=dict(dataset_opt or {}),
        hook_opt={name: dict(opts) for name, opts in (hook_opt or {}).items()}, batch_size=batch_size,
        seed=seed, max_steps=steps, device="cpu", workers=0, eval_every=1, eval_batches=1, save_every=0,
        log_every=steps,
        run_dir=str(run_dir))
    values.update(settings)
    config = TrainConfig(**values)
    config.check("zoo.testing.tiny_run")
    if not resume:
        prepare_new(run_dir, overwrite=True)
    caller_rng = rng.capture()  # a run seeds and restores every generator: the caller's are put back after
    try:
        with _quiet(quiet):
            trainer = Trainer(config, registry or get_registry(), run_dir, resume=resume)
            result = trainer.fit()
    finally:
        rng.restore(caller_rng)
    saved = checkpoint.list_steps(run_dir)
    if result.checkpoint is None and not saved:
        raise AssertionError(f"the run in {run_dir} left no checkpoint")
    folder = result.checkpoint or saved[-1][1]
    weights, state = checkpoint.load(folder)
    sets = {name: checkpoint.load_weights(folder, name) for name in checkpoint.weight_set_names(folder)}
    return TinyRun(run_dir, result.step, folder, weights, state, sets, trainer)


# what must agree between a straight run and an interrupted, resumed one
COMPARED_STATE = ("step", "epoch", "position", "optimizers", "schedulers", "hooks", "rng")


def assert_exact_resume(model: str, tmp_dir: str | Path, *, steps: int = 3, stop_at: int = 2,
                        **run_options: Any) -> tuple[TinyRun, TinyRun]:
    """Train ``steps`` straight, and ``stop_at`` then resumed to ``steps``; assert both end bitwise equal.

    Compared: the weights, the weight sets, and the state that decides later steps (optimizers, schedulers,
    hooks' states, random generators). ``run_options`` are :func:`tiny_run`'s. Returns both runs.
    """
    straight, resumed, difference = resume_difference(model, tmp_dir, steps=steps, stop_at=stop_at, **run_options)
    if difference:
        raise AssertionError(f"a run stopped at step {stop_at} and resumed to {steps} differs from a straight "
                             f"{steps}-step run: {difference}")
    return straight, resumed


def resume_difference(model: str, tmp_dir: str | Path, *, steps: int = 3, stop_at: int = 2,
                      **run_options: Any) -> tuple[TinyRun, TinyRun, str | None]:
    """:func:`assert_exact_resume`'s two runs and where they first differ (``None``: bitwise equal)."""
    if not 0 < stop_at < steps:
        raise ValueError(f"need 0 < stop_at < steps, got stop_at={stop_at}, steps={steps}")
    tmp_dir = Path(tmp_dir)
    straight = tiny_run(model, tmp_dir / "straight", steps=steps, **run_options)
    tiny_run(model, tmp_dir / "resumed", steps=stop_at, **run_options)
    resumed = tiny_run(model, tmp_dir / "resumed", steps=steps, resume=True, **run_options)
    parts = {"weights": (straight.weights, resumed.weights),
             "weight sets": (straight.weight_sets, resumed.weight_sets),
             **{key: (straight.state.get(key), resumed.state.get(key)) for key in COMPARED_STATE}}
    difference = next((d for part, (a, b) in parts.items() if (d := first_difference(a, b, part))), None)
    return straight, resumed, difference


def first_difference(a: Any, b: Any, path: str = "value") -> str | None:
    """Where two nested states (dicts, lists, tensors, numbers) first differ, bitwise, or ``None`` if equal."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)):
            return f"{path} is a tensor on one side only"
        if a.shape != b.shape or a.dtype != b.dtype:
            return f"{path}: {a.dtype} {tuple(a.shape)} against {b.dtype} {tuple(b.shape)}"
        same = torch.equal(a, b) or (a.is_floating_point() and torch.equal(a.isnan(), b.isnan())
                                     and torch.equal(a.nan_to_num(), b.nan_to_num()))  # NaN where the other has NaN
        return None if same else f"{path} differs (largest gap {_gap(a, b)})"
    if isinstance(a, dict) and isinstance(b, dict):
        if set(a) != set(b):
            return f"{path} has keys {sorted(map(str, set(a) ^ set(b)))[:3]} on one side only"
        return next((d for key in a if (d := first_difference(a[key], b[key], f"{path}[{key!r}]"))), None)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            return f"{path} has {len(a)} items against {len(b)}"
        return next((d for i, (x, y) in enumerate(zip(a, b)) if (d := first_difference(x, y, f"{path}[{i}]"))), None)
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return first_difference(torch.as_tensor(np.asarray(a)), torch.as_tensor(np.asarray(b)), path)
    try:
        same = bool(a == b) or (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b))
    except Exception:  # a value that cannot say whether it equals another
        return f"{path}: {type(a).__name__} values zoo cannot compare"
    return None if same else f"{path}: {a!r} against {b!r}"


def _gap(a: torch.Tensor, b: torch.Tensor) -> str:
    if a.is_floating_point() or a.is_complex():
        return f"{(a.double() - b.double()).abs().max().item():.3g}"
    return f"{int((a != b).sum())} elements"


def first_items(dataset: str | Any, count: int = 8, *, split: str = "train", task: str | None = None,
                data: str | None = None, options: dict[str, Any] | None = None,
                registry: Registry | None = None) -> tuple[Any, list[Any]]:
    """A dataset (a registered name, built as ``zoo train`` would, or a built one) and its first ``count``
    items, each read inside the engine's per-item random generator (``zoo.data.seeded_item``)."""
    from zoo.data import seeded_item

    if isinstance(dataset, str):
        dataset = _build_dataset(dataset, split, task, data, options or {}, registry or get_registry())
    items = []
    for index in range(min(count, len(dataset))):
        with seeded_item(index):
            items.append(dataset[index])
    return dataset, items


def check_items(dataset: str | Any, count: int = 8, **where: Any) -> list[str]:
    """The contract problems of a dataset's first ``count`` items (``[]`` when all is well): each an
    ``(input, target)`` pair of ``image_shape``, items the same under the same item seed, targets alike.
    ``where`` is :func:`first_items`' (``split``, ``task``, ``data``, ``options``, ``registry``)."""
    from zoo.data import item_problem, seeded_item

    built, items = first_items(dataset, count, **where)
    problems = [f"item {i}: {problem}" for i, item in enumerate(items) if (problem := item_problem(built, item))]
    if problems or not items:
        return problems or [f"the {getattr(built, 'split', '')} split has no items"]
    with seeded_item(0):
        again = built[0]
    if first_difference(items[0], again, "item 0"):
        problems.append("item 0 differs when read again with the same item seed: draw its randomness from "
                        "zoo.data.item_rng(), not the global generators, or resume cannot be exact")
    targets = {_shape_of(item[1]) for item in items}
    if len(targets) > 1:
        problems.append(f"items' targets differ in shape or type ({', '.join(sorted(map(str, targets)))}); "
                        f"a batch cannot stack them")
    return problems


def _shape_of(value: Any) -> Any:
    return (str(value.dtype), tuple(value.shape)) if isinstance(value, torch.Tensor) else type(value).__name__


def _build_dataset(name: str, split: str, task: str | None, data: str | None, options: dict[str, Any],
                   registry: Registry) -> Any:
    from zoo import build

    entry = registry.resolve("dataset", name)
    cls = build.load_dataset_class(entry)
    return build.build_dataset(entry, split, task=task or cls.tasks[0], data=data, options=options)


@contextlib.contextmanager
def _quiet(quiet: bool) -> Iterator[None]:
    """The run's bar and lines kept from the test's output (a failure still raises)."""
    if not quiet:
        yield
        return
    with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
        yield

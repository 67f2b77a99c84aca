"""A training run, as callers know it: ``Trainer(config, registry, run_dir).fit()``.

The run is put together by ``assemble`` (data, model, optimizers, hooks; new or resumed,
decided here once) and trained by ``loop.fit``; see ``zoo/engine/loop.py`` for the loop
drawn from top to bottom.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from zoo.config import TrainConfig
from zoo.engine import distributed, loop
from zoo.engine.assemble import Run, assemble
from zoo.engine.loop import TrainResult
from zoo.engine.record import cache_origin, describe_entry
from zoo.engine.report import Interrupted
from zoo.registry import Registry

__all__ = ["Interrupted", "TrainResult", "Trainer", "cache_origin", "describe_entry"]


class Trainer:
    """One training run: built from a config, resumable from a run folder (``resume=True``)."""

    def __init__(self, config: TrainConfig, registry: Registry, run_dir: Path, *,
                 resume: bool = False, command_line: list[str] | None = None,
                 dist_context: distributed.DistContext | None = None) -> None:
        self.run: Run = assemble(config, registry, Path(run_dir), resumed=resume, command_line=command_line or [],
                                 dist=dist_context or distributed.DistContext())

    def fit(self) -> TrainResult:
        """Train until the run's length; save at the end. Raises ``Interrupted`` on a signal."""
        return loop.fit(self.run)

    @property
    def after_first_save(self) -> list[Callable[[], None]]:
        """Called once, on rank 0, when the run has written its first checkpoint."""
        return self.run.checkpoints.after_first_save

    @property
    def step(self) -> int:
        return self.run.state.step

    @property
    def best(self) -> dict[str, Any] | None:
        """The best evaluation by the model's metric: its step, value, metric and whether it is saved."""
        return self.run.state.best

    @property
    def last_eval(self) -> dict[str, float]:
        return self.run.state.last_eval

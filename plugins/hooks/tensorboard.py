"""Builtin hook: the run's scalars and sample grids as tensorboardX events."""

from __future__ import annotations

from typing import Any

from zoo import hookimpl


class TensorboardHook:
    """Writes losses, learning rates, compute efficiency, throughput and sample grids to ``tensorboard/``.

    Sample grids are written at epochs' ends as the samples hook saves them, sharing its budget
    (``zoo.engine.pictures.GridBudget``): an epoch's end has one only while the time spent on grids so
    far is at most ``GRID_SHARE`` (0.5%) of the time since training started, so the first epoch's end always
    has one and tiny epochs have one every so many. The run's end always has one. Events reach the disk
    within ``flush_secs`` (30 s) and when the run ends; a grid forces no flush of its own.
    """

    def __init__(self) -> None:
        self.writer: Any = None

    @hookimpl
    def on_train_start(self, run):
        if run.rank != 0:  # one writer per run: rank 0 of a distributed run
            return
        import logging

        from tensorboardX import SummaryWriter
        # a non-finite value is written as it is (the engine itself says so): no stray unprefixed line for it
        logging.getLogger("tensorboardX.x2num").setLevel(logging.ERROR)
        # resumed: TensorBoard drops what the first part logged after its checkpoint (logged again now)
        purge = run.step + 1 if run.step > 0 else None
        self.writer = SummaryWriter(logdir=str(run.run_dir / "tensorboard"), flush_secs=30, purge_step=purge)
        from zoo.engine.pictures import grid_budget
        grid_budget(run).start()

    @hookimpl
    def on_step_end(self, run, step, scalars):
        if self.writer is None:
            return
        for name, value in scalars.items():
            self.writer.add_scalar(f"train/{name}", value, step)

    @hookimpl
    def on_eval_end(self, run, step, metrics):
        if self.writer is None:
            return
        for name, value in metrics.items():
            self.writer.add_scalar(f"eval/{name}", value, step)

    @hookimpl
    def on_log(self, run, step, name, value):
        if self.writer is None:
            return
        if isinstance(value, float):
            self.writer.add_scalar(f"log/{name}", value, step)
        else:
            self.writer.add_image(f"log/{name}", value, step)

    @hookimpl
    def on_epoch_end(self, run, epoch):
        if self.writer is None:
            return
        from zoo.engine.pictures import grid_budget
        budget = grid_budget(run)
        if budget.due(run.step):
            with budget.charged():
                self._add_grid(run)

    @hookimpl
    def on_train_end(self, run, status):
        if self.writer is None:
            return
        if status != "failed":
            self._add_grid(run)
        self.writer.close()
        self.writer = None

    def _add_grid(self, run) -> None:
        grid = run.sample_grid()
        if grid is not None:
            self.writer.add_image("samples", grid, run.step)  # the writer's thread writes it; no fsync here

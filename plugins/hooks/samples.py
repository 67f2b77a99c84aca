"""Builtin hook: PNG grids under ``samples/`` of what the model makes (``run.sample_grid()``)."""

from __future__ import annotations

import shutil

from zoo import hookimpl


class SampleGridHook:
    """Saves ``samples/step-<N>.png`` (and the same picture as ``samples/latest.png``) at epochs' ends and
    at the run's end.

    Epoch-end grids are kept to about 0.25% of the run's wall time (``zoo.engine.pictures.GridBudget``,
    shared with the tensorboard hook): one is saved at an epoch's end only while the time spent on grids
    so far is at most ``GRID_SHARE`` (0.25%) of the time since training started. The first epoch's end always
    has one; epochs lasting over 400 times what a grid takes (evaluations included) each have one; shorter
    ones have one every so many. The run's end (done or interrupted) always has one.
    """

    @hookimpl
    def on_train_start(self, run):
        from zoo.engine.pictures import grid_budget
        grid_budget(run).start()

    @hookimpl
    def on_epoch_end(self, run, epoch):
        from zoo.engine.pictures import grid_budget
        budget = grid_budget(run)
        if budget.due(run.step):
            with budget.charged():
                self._save(run)

    @hookimpl
    def on_train_end(self, run, status):
        if status != "failed":
            self._save(run)

    def _save(self, run) -> None:
        if run.rank != 0:  # rank 0 alone writes files
            return
        grid = run.sample_grid()
        if grid is None:
            return
        from torchvision.utils import save_image
        folder = run.run_dir / "samples"
        folder.mkdir(exist_ok=True)
        saved = folder / f"step-{run.step}.png"
        save_image(grid, str(saved))
        shutil.copyfile(saved, folder / "latest.png")  # the same PNG, encoded once

"""Builtin hook: PNG grids under ``samples/`` of what the model makes (``run.sample_grid()``)."""

from __future__ import annotations

from zoo import hookimpl


class SampleGridHook:
    """Saves ``samples/step-<N>.png`` (and ``samples/latest.png``) at each epoch's end and the run's end."""

    @hookimpl
    def on_epoch_end(self, run, epoch):
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
        save_image(grid, str(folder / f"step-{run.step}.png"))
        save_image(grid, str(folder / "latest.png"))

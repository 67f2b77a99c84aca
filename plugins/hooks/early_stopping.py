"""Builtin hook: stop a run when its evaluation metric stops improving."""

from __future__ import annotations

import difflib
import sys
from typing import Any, Iterable

from tqdm import tqdm

from zoo import hookimpl
from zoo.recipe import declared_eval_metrics


def _absent(name: str, reported: Iterable[str]) -> str:
    """Why ``name`` cannot be watched: what the evaluation reports instead, and the closest name."""
    reported = sorted(reported)
    close = difflib.get_close_matches(name, reported, n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    return (f"watches '{name}', which this run's evaluation does not report (it reports: "
            f"{', '.join(reported) or 'nothing'}); pass --hook-opt early_stopping.metric=NAME{hint}.")


class EarlyStoppingHook:
    """Asks the run to stop after ``patience`` evaluations without improvement.

    Watches the model's own metric (accuracy for classifiers, PSNR for
    image-to-image models) or ``metric`` if given, e.g. ``--hook-opt early_stopping.metric=loss``.
    """

    def __init__(self, patience: int = 3, min_delta: float = 0.0, metric: str | None = None,
                 mode: str | None = None) -> None:
        if patience < 1:
            raise ValueError("patience must be at least 1")
        if mode not in (None, "min", "max"):
            raise ValueError("mode must be min or max")
        self.patience = patience
        self.min_delta = min_delta
        self.metric = metric
        self.mode = mode
        self.best: float | None = None
        self.bad_evals = 0
        self.warned = False

    def state_dict(self) -> dict:
        """What a resumed run needs to stop exactly where a straight run would."""
        return {"best": self.best, "bad_evals": self.bad_evals}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict` after ``--resume``."""
        self.best, self.bad_evals = state["best"], state["bad_evals"]

    def check_run(self, run: Any) -> None:
        """Refuse, before any step, a run where this hook could never act (the engine makes it a usage error)."""
        if run.config.eval_every == 0:
            raise ValueError("it acts after evaluations, which --eval-every 0 turns off; drop --eval-every 0, "
                             "or drop --hook early_stopping.")
        name, _ = self._watched(run.recipe)
        reported = declared_eval_metrics(run.recipe)  # declared by models that know what they report
        if reported and name not in reported:
            raise ValueError(f"it {_absent(name, reported)}")

    def _watched(self, recipe: Any) -> tuple[str, str]:
        """The metric watched and whether it should rise (``max``) or fall (``min``)."""
        name, mode = self.metric, self.mode
        declared = recipe.metric
        if name is None:
            name, mode = declared if declared else ("loss", "min")
        mode = mode or ("max" if declared and declared[0] == name and declared[1] == "max" else "min")
        return name, mode

    @hookimpl
    def on_eval_end(self, run: Any, step: int, metrics: dict[str, float]) -> None:
        """Count evaluations without improvement of the watched metric; after ``patience``, ask the run to stop."""
        name, mode = self._watched(run.recipe)
        if name not in metrics:
            self._warn_absent(run, name, metrics)
            return
        value = metrics[name]
        improved = self.best is None or (value > self.best + self.min_delta if mode == "max"
                                         else value < self.best - self.min_delta)
        if improved:
            self.best, self.bad_evals = value, 0
            return
        self.bad_evals += 1
        if self.bad_evals >= self.patience:
            run.request_stop(f"{name} has not improved for {self.patience} evaluations "
                             f"(best {self.best:.4g})")

    def _warn_absent(self, run: Any, name: str, metrics: dict[str, float]) -> None:
        """Say once per run (rank 0) that the watched metric is not among the evaluation's metrics."""
        if self.warned or run.rank != 0:
            return
        self.warned = True
        tqdm.write(f"zoo: early_stopping {_absent(name, metrics)}", file=sys.stderr)

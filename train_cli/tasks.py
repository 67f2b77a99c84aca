"""Which task a saved run is, and the refusals of ``zoo sample`` and ``zoo predict`` for a run of another task."""

from __future__ import annotations

from pathlib import Path

from zoo.errors import UsageError

TASK_WORDS = {"generation": "a generative model", "classification": "a classifier",
              "image_to_image": "an image-to-image model"}


def saved_task(run_dir: Path) -> str | None:
    """The task recorded in a run's config.json (read before loading any weights), if any."""
    from zoo.engine.rundir import read_config
    resolved = read_config(run_dir).get("resolved") or {}
    task = resolved.get("task") if isinstance(resolved, dict) else None
    return task if isinstance(task, str) else None


def refuse_sample(run_dir: Path, task: str | None) -> None:
    """Refuse to sample from a run that does not generate images, pointing to ``zoo predict``."""
    if task is not None and task != "generation":
        raise UsageError(f"run {run_dir} is {TASK_WORDS.get(task, task)}, which does not generate images; "
                         f"use 'zoo predict --run {run_dir} IMAGE...' instead.")


def refuse_predict(run_dir: Path, task: str | None) -> None:
    """Refuse to predict with a generative run, which takes no images, pointing to ``zoo sample``."""
    if task == "generation":
        raise UsageError(f"run {run_dir} is a generative model, which takes no input images; "
                         f"use 'zoo sample --run {run_dir}' instead.")


def refuse_options_of_the_other_task(task: str | None, out: str | None, top_k: int | None, crop: bool) -> None:
    """Options of the other kind of prediction would be ignored: refuse them, naming what they are for."""
    if task == "classification" and (out or crop):
        flag = "--out" if out else "--crop"
        raise UsageError(f"{flag} is for image-to-image runs; a classifier prints its predictions "
                         f"(add --json to save them).")
    if task == "image_to_image" and top_k is not None:
        raise UsageError("--top-k is for classifiers; an image-to-image run writes restored images (--out DIR).")

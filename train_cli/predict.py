"""``zoo predict``: classify images, or restore them, with a run (through :func:`zoo.api.load_run`)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from train_cli.images import save_image
from train_cli.paths import no_empty_paths
from train_cli.tasks import refuse_options_of_the_other_task, refuse_predict, saved_task
from zoo.errors import UsageError

if TYPE_CHECKING:
    from train_cli.main import Context

PREDICT_BATCH = 32
DEFAULT_TOP_K = 5
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"}


@click.command("predict")
@click.option("--run", "run_dir", required=True, type=click.Path(), help="A run folder of a classifier or an "
              "image-to-image model.")
@click.argument("images", nargs=-1, required=True, metavar="IMAGES...")
@click.option("--top-k", type=click.IntRange(min=1), help="Classes to show per image (classifiers; default 5).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.option("--out", type=click.Path(file_okay=False),
              help="Folder for restored images, PNG files named after the inputs (image-to-image; default RUN/predictions).")
@click.option("--step", type=click.IntRange(min=0), help="Use checkpoints/step-N (default: the newest).")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:N or mps.")
@click.option("--crop", is_flag=True, help="Resize and centre-crop to the training size even where the model "
              "restores whole images.")
@click.option("--weights", metavar="NAME", help="A weight set a hook saved in the checkpoint, e.g. ema (--hook ema); "
                                                 "default: the raw weights.")
@click.pass_obj
def predict_command(ctx: Context, run_dir: str, images: tuple[str, ...], top_k: int | None, as_json: bool,
                    out: str | None, step: int | None, device: str, crop: bool, weights: str | None) -> None:
    """Classify images (top-k classes) or restore them (image-to-image), with the run's own preprocessing."""
    no_empty_paths(run=run_dir, out=out)
    if any(not image.strip() for image in images):
        raise UsageError("an IMAGE argument is an empty path; name image files or folders.")
    run_path = Path(run_dir)
    task = saved_task(run_path)
    refuse_predict(run_path, task)
    paths = _image_files(images)
    refuse_options_of_the_other_task(task, out, top_k, crop)
    from zoo.api import load_run
    from zoo.engine.rundir import json_text

    run = load_run(run_path, step=step, device=device, registry=ctx.registry(), weights=weights)
    refuse_predict(run_path, run.task)
    refuse_options_of_the_other_task(run.task, out, top_k, crop)
    folder = None
    if run.task == "image_to_image":
        folder = Path(out) if out else run_path / ("predictions" + (f"-{weights}" if weights else ""))
        _check_outputs(folder, paths)
    results = _predict(run, paths, folder, top_k, crop, as_json)
    if as_json:
        click.echo(json_text({"checkpoint": str(run.checkpoint), "step": run.step, "weights": weights or "raw",
                              "task": run.task,
                              "predictions": results}))
    elif run.task != "image_to_image":
        _print_classes(results)


def _image_files(images: tuple[str, ...]) -> list[Path]:
    """The image files to read: each folder replaced by the images directly inside it; a typo fails here,
    before any weights are loaded."""
    paths = _expand_images(images)
    for path in paths:
        if not path.is_file():
            reason = "does not exist" if not path.exists() else "is not a file"
            raise UsageError(f"image {path} {reason}; pass image files (png, jpg, ...).")
    return paths


def _expand_images(images: tuple[str, ...]) -> list[Path]:
    """Image paths, with each folder replaced by the image files directly inside it."""
    found: list[Path] = []
    for given in map(Path, images):
        if given.is_dir():
            inside = sorted(p for p in given.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not inside:
                raise UsageError(f"folder {given} holds no images (png, jpg, ...).")
            found += inside
        else:
            found.append(given)
    return found


def _output_name(path: Path) -> str:
    """A restored image's file name: the input's, as a PNG (lossless, whatever format the input was)."""
    return path.stem + ".png"


def _check_outputs(folder: Path, paths: list[Path]) -> None:
    """Refuse restored images that would overwrite one another or an input."""
    names = [_output_name(p) for p in paths]
    duplicate = next((n for n in names if names.count(n) > 1), None)
    if duplicate:
        raise UsageError(f"two inputs would both be restored as {duplicate} (outputs are PNG files named "
                         f"after the inputs, in one folder); rename one of them.")
    clash = next((p for p in paths if (folder / _output_name(p)).resolve() == p.resolve()), None)
    if clash is not None:
        raise UsageError(f"writing to {folder} would overwrite the input {clash}; pass another --out DIR.")


def _predict(run: Any, paths: list[Path], folder: Path | None, top_k: int | None, crop: bool,
             as_json: bool) -> list[dict[str, Any]]:
    """Run the model on the images in batches: write restored images into ``folder`` (each said as it is
    written, unless ``as_json``), or rank each image's classes; one record per image."""
    import torch

    from zoo.api import to_image

    results: list[dict[str, Any]] = []
    whole = run.task == "image_to_image" and run.recipe.any_image_size and not crop
    per_batch = 1 if whole else PREDICT_BATCH  # whole images differ in size
    for start in range(0, len(paths), per_batch):
        chunk = paths[start:start + per_batch]
        batch = torch.stack([_input(run, p, whole) for p in chunk])
        outputs = run.predict(batch).float().cpu()
        if run.task == "image_to_image":
            for path, image in zip(chunk, outputs):
                target = folder / _output_name(path)
                save_image(to_image(image), target)
                results.append({"image": str(path), "output": str(target)})
                if not as_json:  # said as each is written: a later failure leaves no output unannounced
                    click.echo(f"{path} -> {target}")
        else:
            results += _top_classes(run, chunk, outputs, top_k)
    return results


def _top_classes(run: Any, chunk: list[Path], outputs: Any, top_k: int | None) -> list[dict[str, Any]]:
    """Each image's ``top_k`` classes (default 5) with their probabilities."""
    import torch

    probabilities = torch.softmax(outputs.flatten(1), dim=1)
    k = min(top_k or DEFAULT_TOP_K, probabilities.shape[1])
    values, indices = probabilities.topk(k, dim=1)
    records = []
    for path, row_p, row_i in zip(chunk, values.tolist(), indices.tolist()):
        top = [{"class": run.classes[i] if run.classes and i < len(run.classes) else str(i),
                "index": i, "probability": p} for p, i in zip(row_p, row_i)]
        records.append({"image": str(path), "top_k": top})
    return records


def _input(run: Any, path: Path, whole: bool) -> Any:
    """One image file as the run's model input; a file the model cannot take is named in the error."""
    from zoo.api import read_image

    try:
        return run.preprocess(read_image(path), whole)
    except UsageError as exc:
        message = str(exc)
        raise UsageError(message if str(path) in message else f"{path}: {message}") from None


def _print_classes(results: list[dict[str, Any]]) -> None:
    """One line per class: the image (on its first), the class and its probability, in columns."""
    width = max(len(r["image"]) for r in results)
    label_width = max(len(t["class"]) for r in results for t in r["top_k"])
    for record in results:
        for rank, entry in enumerate(record["top_k"]):
            name = record["image"] if rank == 0 else ""
            click.echo(f"{name:<{width}}  {entry['class']:<{label_width}}  {entry['probability']:.4f}")

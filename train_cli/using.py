"""``zoo sample`` and ``zoo predict``: use what a run trained (through :func:`zoo.api.load_run`)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import click

from train_cli.running import no_empty_paths
from zoo.config import check_seed
from zoo.errors import RunError, UsageError

PREDICT_BATCH = 32
DEFAULT_TOP_K = 5
TASK_WORDS = {"generation": "a generative model", "classification": "a classifier",
              "image_to_image": "an image-to-image model"}


def _saved_task(run_dir: Path) -> str | None:
    """The task recorded in a run's config.json (read before loading any weights), if any."""
    from zoo.engine.rundir import read_config
    resolved = read_config(run_dir).get("resolved") or {}
    task = resolved.get("task") if isinstance(resolved, dict) else None
    return task if isinstance(task, str) else None


def _refuse_sample(run_dir: Path, task: str | None) -> None:
    if task is not None and task != "generation":
        raise UsageError(f"run {run_dir} is {TASK_WORDS.get(task, task)}, which does not generate images; "
                         f"use 'zoo predict --run {run_dir} IMAGE...' instead.")


def _refuse_predict(run_dir: Path, task: str | None) -> None:
    if task == "generation":
        raise UsageError(f"run {run_dir} is a generative model, which takes no input images; "
                         f"use 'zoo sample --run {run_dir}' instead.")


def _check_image_path(path: Path, what: str) -> None:
    """Refuse an output path PIL cannot write (by its extension)."""
    from PIL import Image
    if path.suffix.lower() not in Image.registered_extensions():
        raise UsageError(f"{what} {path} has no image extension PIL can write; use a name ending in .png.")


def _save(image: Any, path: Path) -> None:
    """Write a PIL image, turning an OS failure into a one-line error naming the file."""
    blocking = next((part for part in reversed(path.parents) if part.is_file()), None)
    if blocking is not None:
        raise UsageError(f"cannot write {path}: {blocking} is a file, not a folder; pick another path.")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        image.save(path)
    except (OSError, ValueError, KeyError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        raise RunError(f"cannot write {path} ({reason}); check the folder and the file name.") from None


def _refuse_options_of_the_other_task(task: str | None, out: str | None, top_k: int | None, crop: bool) -> None:
    """Options of the other kind of prediction would be ignored: refuse them, naming what they are for."""
    if task == "classification" and (out or crop):
        flag = "--out" if out else "--crop"
        raise UsageError(f"{flag} is for image-to-image runs; a classifier prints its predictions "
                         f"(add --json to save them).")
    if task == "image_to_image" and top_k is not None:
        raise UsageError("--top-k is for classifiers; an image-to-image run writes restored images (--out DIR).")


def _output_name(path: Path) -> str:
    """A restored image's file name: the input's, as a PNG (lossless, whatever format the input was)."""
    return path.stem + ".png"


def _input(run: Any, path: Path, whole: bool) -> Any:
    """One image file as the run's model input; a file the model cannot take is named in the error."""
    from zoo.api import read_image

    try:
        return run.preprocess(read_image(path), whole)
    except UsageError as exc:
        message = str(exc)
        raise UsageError(message if str(path) in message else f"{path}: {message}") from None


def _slerp(a: Any, b: Any, steps: int) -> Any:
    """``steps`` points from ``a`` to ``b`` (same shape) along the great circle (lerp when parallel)."""
    import torch
    flat_a, flat_b = a.flatten().double(), b.flatten().double()
    t = torch.linspace(0, 1, steps, dtype=torch.float64, device=a.device)[:, None]
    cos = torch.dot(flat_a / flat_a.norm(), flat_b / flat_b.norm()).clamp(-1, 1)
    omega = torch.arccos(cos)
    if omega.abs() < 1e-4 or (math.pi - omega).abs() < 1e-4:
        walk = (1 - t) * flat_a + t * flat_b
    else:
        walk = (torch.sin((1 - t) * omega) * flat_a + torch.sin(t * omega) * flat_b) / torch.sin(omega)
    return walk.to(a.dtype).reshape(steps, *a.shape)


@click.command("sample")
@click.option("--run", "run_dir", required=True, type=click.Path(), help="A run folder of a generative model.")
@click.option("-n", "--count", type=click.IntRange(min=1), default=64, show_default=True,
              help="Images to generate (points on the walk with --interpolate).")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed of the noise, -2**63 to 2**64-1; same seed, same images.")
@click.option("--out", type=click.Path(dir_okay=False),
              help="PNG grid to write (default RUN/samples/sample-seed<S>.png, or interpolate-seed<S>.png).")
@click.option("--each", type=click.Path(file_okay=False),
              help="Write every image alone as DIR/0000.png, 0001.png, ...; the grid then only with --out.")
@click.option("--interpolate", is_flag=True, help="Walk (slerp) between two random latent points instead.")
@click.option("--step", type=click.IntRange(min=0), help="Use checkpoints/step-N (default: the newest).")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:N or mps.")
@click.pass_obj
def sample_command(ctx, run_dir: str, count: int, seed: int, out: str | None, each: str | None,
                   interpolate: bool, step: int | None, device: str) -> None:
    """Generate images with a generative run (e.g. dcgan): a PNG grid, or single files with --each."""
    check_seed(seed)
    no_empty_paths(run=run_dir, out=out, each=each)
    run_path = Path(run_dir)
    _refuse_sample(run_path, _saved_task(run_path))
    grid_path = Path(out) if out else None
    if grid_path is not None:
        _check_image_path(grid_path, "--out")
    if interpolate and count < 2:
        raise UsageError("--interpolate needs -n 2 or more (the points of the walk, ends included).")
    import torch

    from zoo.api import load_run, to_image
    from zoo.engine.pictures import image_grid

    run = load_run(run_path, step=step, device=device, registry=ctx.registry())
    _refuse_sample(run_path, run.task)
    model = run.plan.model.name
    generator = torch.Generator(device=run.device)
    generator.manual_seed(seed)
    with torch.no_grad():
        if interpolate:
            ends = run.recipe.sample_inputs(2, generator)
            generate = getattr(run.recipe, "generate", None)
            if ends is None or not callable(generate):
                raise UsageError(f"model '{model}' cannot interpolate: its recipe defines no "
                                 f"sample_inputs()/generate(inputs); use 'zoo sample' without --interpolate.")
            images = generate(_slerp(ends[0], ends[1], count))
            if images is None:
                raise UsageError(f"model '{model}' cannot interpolate: its generate(inputs) returned nothing; "
                                 f"use 'zoo sample' without --interpolate.")
        else:
            images = run.recipe.sample(count, generator)
            if images is None:
                raise UsageError(f"model '{model}' does not implement sample(); it cannot generate images.")
    images = images.detach().float().cpu()
    if each:
        folder = Path(each)
        width = max(4, len(str(count - 1)))
        for index, image in enumerate(images):
            _save(to_image(image), folder / f"{index:0{width}d}.png")
        click.echo(f"wrote {len(images)} images to {folder}/ ({0:0{width}d}.png ... {len(images) - 1:0{width}d}.png)")
    if grid_path is None and not each:
        name = "interpolate" if interpolate else "sample"
        grid_path = run_path / "samples" / f"{name}-seed{seed}.png"
    if grid_path is not None:
        nrow = len(images) if interpolate else max(1, math.ceil(math.sqrt(len(images))))
        grid = image_grid(images, nrow)
        _save(to_image(grid * 2 - 1), grid_path)
        click.echo(str(grid_path))


def _expand_images(images: tuple[str, ...]) -> list[Path]:
    """Image paths, with each folder replaced by the image files directly inside it."""
    found: list[Path] = []
    for given in map(Path, images):
        if given.is_dir():
            inside = sorted(p for p in given.iterdir()
                            if p.suffix.lower() in {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"})
            if not inside:
                raise UsageError(f"folder {given} holds no images (png, jpg, ...).")
            found += inside
        else:
            found.append(given)
    return found


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
@click.pass_obj
def predict_command(ctx, run_dir: str, images: tuple[str, ...], top_k: int | None, as_json: bool,
                    out: str | None, step: int | None, device: str, crop: bool) -> None:
    """Classify images (top-k classes) or restore them (image-to-image), with the run's own preprocessing."""
    no_empty_paths(run=run_dir, out=out)
    if any(not image.strip() for image in images):
        raise UsageError("an IMAGE argument is an empty path; name image files or folders.")
    run_path = Path(run_dir)
    task = _saved_task(run_path)
    _refuse_predict(run_path, task)
    paths = _expand_images(images)
    for path in paths:  # fail on a typo before loading any weights
        if not path.is_file():
            reason = "does not exist" if not path.exists() else "is not a file"
            raise UsageError(f"image {path} {reason}; pass image files (png, jpg, ...).")
    _refuse_options_of_the_other_task(task, out, top_k, crop)
    import torch

    from zoo.api import load_run, to_image
    from zoo.engine.rundir import json_text

    run = load_run(run_path, step=step, device=device, registry=ctx.registry())
    _refuse_predict(run_path, run.task)
    _refuse_options_of_the_other_task(run.task, out, top_k, crop)
    if run.task == "image_to_image":
        folder = Path(out) if out else run_path / "predictions"
        names = [_output_name(p) for p in paths]
        duplicate = next((n for n in names if names.count(n) > 1), None)
        if duplicate:
            raise UsageError(f"two inputs would both be restored as {duplicate} (outputs are PNG files named "
                             f"after the inputs, in one folder); rename one of them.")
        clash = next((p for p in paths if (folder / _output_name(p)).resolve() == p.resolve()), None)
        if clash is not None:
            raise UsageError(f"writing to {folder} would overwrite the input {clash}; pass another --out DIR.")
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
                _save(to_image(image), target)
                results.append({"image": str(path), "output": str(target)})
                if not as_json:  # said as each is written: a later failure leaves no output unannounced
                    click.echo(f"{path} -> {target}")
        else:
            probabilities = torch.softmax(outputs.flatten(1), dim=1)
            k = min(top_k or DEFAULT_TOP_K, probabilities.shape[1])
            values, indices = probabilities.topk(k, dim=1)
            for path, row_p, row_i in zip(chunk, values.tolist(), indices.tolist()):
                top = [{"class": run.classes[i] if run.classes and i < len(run.classes) else str(i),
                        "index": i, "probability": p} for p, i in zip(row_p, row_i)]
                results.append({"image": str(path), "top_k": top})
    if as_json:
        click.echo(json_text({"checkpoint": str(run.checkpoint), "step": run.step, "task": run.task,
                              "predictions": results}))
        return
    if run.task == "image_to_image":
        return
    width = max(len(r["image"]) for r in results)
    label_width = max(len(t["class"]) for r in results for t in r["top_k"])
    for record in results:
        for rank, entry in enumerate(record["top_k"]):
            name = record["image"] if rank == 0 else ""
            click.echo(f"{name:<{width}}  {entry['class']:<{label_width}}  {entry['probability']:.4f}")

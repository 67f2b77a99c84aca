"""``zoo sample``: generate images with a generative run (through :func:`zoo.api.load_run`)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from train_cli.images import check_image_path, save_image
from train_cli.paths import no_empty_paths
from train_cli.tasks import refuse_sample, saved_task
from zoo.config import check_seed
from zoo.errors import UsageError

if TYPE_CHECKING:
    from train_cli.main import Context


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
@click.option("--weights", metavar="NAME", help="A weight set a hook saved in the checkpoint, e.g. ema (--hook ema); "
                                                 "default: the raw weights.")
@click.pass_obj
def sample_command(ctx: Context, run_dir: str, count: int, seed: int, out: str | None, each: str | None,
                   interpolate: bool, step: int | None, device: str, weights: str | None) -> None:
    """Generate images with a generative run (e.g. dcgan): a PNG grid, or single files with --each."""
    check_seed(seed)
    no_empty_paths(run=run_dir, out=out, each=each)
    run_path = Path(run_dir)
    refuse_sample(run_path, saved_task(run_path))
    grid_path = Path(out) if out else None
    if grid_path is not None:
        check_image_path(grid_path, "--out")
    if interpolate and count < 2:
        raise UsageError("--interpolate needs -n 2 or more (the points of the walk, ends included).")
    from zoo.api import load_run, to_image
    from zoo.engine.pictures import image_grid

    run = load_run(run_path, step=step, device=device, registry=ctx.registry(), weights=weights)
    refuse_sample(run_path, run.task)
    images = _generate(run, count, seed, interpolate)
    if each:
        folder = Path(each)
        width = max(4, len(str(count - 1)))
        for index, image in enumerate(images):
            save_image(to_image(image), folder / f"{index:0{width}d}.png")
        click.echo(f"wrote {len(images)} images to {folder}/ ({0:0{width}d}.png ... {len(images) - 1:0{width}d}.png)")
    if grid_path is None and not each:
        name = ("interpolate" if interpolate else "sample") + (f"-{weights}" if weights else "")
        grid_path = run_path / "samples" / f"{name}-seed{seed}.png"
    if grid_path is not None:
        nrow = len(images) if interpolate else max(1, math.ceil(math.sqrt(len(images))))
        grid = image_grid(images, nrow)
        save_image(to_image(grid * 2 - 1), grid_path)
        click.echo(str(grid_path))


def _generate(run: Any, count: int, seed: int, interpolate: bool) -> Any:
    """``count`` images from the run's recipe (on the CPU, as floats): samples, or a walk between two."""
    import torch

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
    return images.detach().float().cpu()


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

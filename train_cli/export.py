"""``zoo export``: a run's predictor as an ONNX, exported-program or TorchScript file (through
:func:`zoo.export.export_run`), checked against PyTorch before it is kept."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from train_cli.paths import no_empty_paths
from zoo.export import FORMAT_NAMES

if TYPE_CHECKING:
    from train_cli.main import Context


@click.command("export")
@click.option("--run", "run_dir", required=True, type=click.Path(), help="A run folder made by 'zoo train'.")
@click.option("--format", "format_name", required=True, type=click.Choice(FORMAT_NAMES),
              help="onnx (needs pip install 'zoo[onnx]'), exported-program (.pt2) or torchscript (.pt).")
@click.option("--out", type=click.Path(), help="A folder (default RUN/exports/FORMAT), or a file ending in "
                                                "the format's suffix (.onnx, .pt2, .pt).")
@click.option("--weights", metavar="NAME", help="A weight set a hook saved in the checkpoint, e.g. ema (--hook ema); "
                                                 "default: the raw weights.")
@click.option("--step", type=click.IntRange(min=0), help="Use checkpoints/step-N (default: the newest).")
@click.option("--overwrite", is_flag=True, help="Replace an export already at --out.")
@click.pass_obj
def export_command(ctx: Context, run_dir: str, format_name: str, out: str | None, weights: str | None,
                   step: int | None, overwrite: bool) -> None:
    """Export what 'zoo predict' runs (a GAN's generator) with a dynamic batch axis and preprocessing.json, after
    checking the file's own runtime against PyTorch on a batch."""
    from zoo.export import export_run
    from zoo.export_parity import TOLERANCE_TEXT

    no_empty_paths(run=run_dir, out=out)
    result = export_run(run_dir, format_name, out, weights=weights, step=step, overwrite=overwrite,
                        registry=ctx.registry())
    for path in result.files:
        click.echo(f"wrote {path}")
    parity = result.parity
    click.echo(f"checked: {result.runtime} against PyTorch on {parity.batch} {parity.inputs}: max abs difference "
               f"{parity.max_abs_difference:.2g} (tolerance {TOLERANCE_TEXT}); step {result.record['step']}, "
               f"{result.record['weights']} weights")

"""``zoo test``: evaluate a run's checkpoint on its test split and print the metrics."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from train_cli.paths import check_data_there, no_empty_paths
from zoo.config import absolute_data
from zoo.errors import RunError
from zoo.registry import changed_plugins

if TYPE_CHECKING:
    from train_cli.main import Context


@click.command("test")
@click.option("--run", "run_dir", required=True, type=click.Path(), help="A run folder made by 'zoo train'.")
@click.option("--step", type=click.IntRange(min=0), help="Use checkpoints/step-N (default: the newest).")
@click.option("--checkpoint", help="A checkpoint folder (default: the run's newest).")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:N or mps.")
@click.option("--batch-size", type=click.IntRange(min=1), help="Batch size (default: the run's).")
@click.option("--workers", type=click.IntRange(min=0), default=0, show_default=True, help="Loader workers.")
@click.option("--data", help="Where the run's data is now, if it moved (default: the run's --data).")
@click.option("--skip-bad-files", is_flag=True, help="Skip unreadable samples (counted) instead of failing.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.option("--weights", metavar="NAME", help="A weight set a hook saved in the checkpoint, e.g. ema (--hook ema); "
                                                 "default: the raw weights.")
@click.pass_obj
def test_command(ctx: Context, run_dir: str, step: int | None, checkpoint: str | None, device: str,
                 batch_size: int | None, workers: int, data: str | None, skip_bad_files: bool, as_json: bool,
                 weights: str | None) -> None:
    """Evaluate a run's checkpoint on its dataset's test split; saves test-metrics.json (test-metrics-NAME.json
    with --weights NAME)."""
    from zoo.engine.rundir import json_text, read_config
    from zoo.engine.tester import evaluate_run

    no_empty_paths(run=run_dir, checkpoint=checkpoint, data=data)
    saved = read_config(Path(run_dir))
    if data is None:
        check_data_there(saved["config"].get("data"), f"zoo test --run {run_dir} --data NEW")
    for note in changed_plugins(ctx.registry(), saved.get("resolved")):
        click.echo(note, err=True)
    result = evaluate_run(ctx.registry(), Path(run_dir), step=step, chosen=checkpoint, device=device,
                          batch_size=batch_size, workers=workers, data=absolute_data(data),
                          skip_bad_files=skip_bad_files, weights=weights)
    unsaved = result.pop("not_saved", None)
    if as_json:
        click.echo(json_text(result))
    else:
        skipped = f" ({result['skipped']} unreadable skipped)" if result.get("skipped") else ""
        chosen = f" ({result['weights']} weights)" if weights else ""
        click.echo(f"checkpoint {result['checkpoint']}{chosen} on {result['samples']} test samples{skipped}:")
        width = max([len(key) for key in result["metrics"]] + [len("samples")])
        for key, value in result["metrics"].items():
            click.echo(f"  {key:<{width}}  {value:.4f}")
        if "sample_grid" in result:
            click.echo(f"  {'samples':<{width}}  {result['sample_grid']}")
        if "per_class" in result:
            _echo_per_class(result)
        if not unsaved:
            click.echo(f"saved {Path(run_dir) / ('test-metrics' + (f'-{weights}' if weights else '') + '.json')}")
        others = [f"--weights {name}" if name != "raw" else "the raw weights (without --weights)"
                  for name in result["weight_sets"] if name != result["weights"]]
        if others:
            click.echo(f"also in this checkpoint: {', '.join(others)}")
    if unsaved:
        raise RunError(unsaved)


SHOWN_CLASSES = 20  # per-class lines zoo test prints; with more classes, the lowest accuracies


def _echo_per_class(result: dict) -> None:
    """Each class's accuracy (the least accurate first when there are many) and where the matrix went."""
    per_class = [(name, figures) for name, figures in result["per_class"].items() if figures["support"]]
    if len(per_class) > SHOWN_CLASSES:
        per_class = sorted(per_class, key=lambda item: item[1]["accuracy"])[:SHOWN_CLASSES]
        click.echo(f"per class (the {SHOWN_CLASSES} least accurate of {len(result['per_class'])}):")
    else:
        click.echo("per class:")
    width = max(len(name) for name, _ in per_class) if per_class else 0
    for name, figures in per_class:
        right = round(figures["accuracy"] * figures["support"])
        click.echo(f"  {name:<{width}}  {figures['accuracy']:.4f}  ({right} of {figures['support']})")
    click.echo(f"confusion matrix: {result.get('confusion_image') or result['confusion']}")

"""``zoo diff RUN_A RUN_B``: where two runs' configs differ, then their metrics side by side."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from train_cli.columns import aligned


@click.command("diff")
@click.argument("run_a", metavar="RUN_A", type=click.Path())
@click.argument("run_b", metavar="RUN_B", type=click.Path())
def diff_command(run_a: str, run_b: str) -> None:
    """Compare two runs: where their configs differ, then their metrics side by side.

    The configs are config.json's config, resolved and versions sections, flattened (options, each part
    with its plugin version, packages); the metrics are each run's last evaluation and what zoo test saved."""
    from zoo.engine.rundir import read_config
    from zoo.runs import ABSENT, config_differences, format_number, run_metrics

    first, second = read_config(Path(run_a)), read_config(Path(run_b))
    differences = config_differences(first, second)
    rows: list[list[str]] = [[f"config: {len(differences)} difference(s)" if differences else
                              "config: the same", run_a, run_b]]
    rows += [[f"  {key}", _shown(a, ABSENT), _shown(b, ABSENT)] for key, a, b in differences]
    metrics_a, metrics_b = run_metrics(Path(run_a)), run_metrics(Path(run_b))
    keys = list(dict.fromkeys([*metrics_a, *metrics_b]))
    rows.append(["metrics" if keys else "metrics: none yet (no evaluation, no zoo test)", "", ""])
    rows += [[f"  {key}", format_number(metrics_a[key]) if key in metrics_a else "-",
              format_number(metrics_b[key]) if key in metrics_b else "-"] for key in keys]
    for line in aligned(rows):
        click.echo(line)


def _shown(value: Any, absent: object) -> str:
    """A config value as config.json has it (strings bare); ``-`` where the run has no such key."""
    if value is absent:
        return "-"
    return value if isinstance(value, str) else json.dumps(value)

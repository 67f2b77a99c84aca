"""``zoo runs [DIR]``: the runs under a folder, a row each (model, loss, dataset, steps, status, best, age)."""

from __future__ import annotations

from pathlib import Path

import click

from train_cli.columns import aligned
from zoo.runs import SORT_KEYS, RunSummary, format_number, list_runs

_HEADER = ["NAME", "MODEL", "LOSS", "DATASET", "STEPS", "STATUS", "BEST", "AGE"]


@click.command("runs")
@click.argument("folder", default="runs", metavar="[DIR]")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list of the runs instead of a table.")
@click.option("--sort", "sort_key", type=click.Choice(SORT_KEYS), default="name", show_default=True,
              help="Order of the rows: age and steps put the newest and the longest first, metric the best "
                   "first (grouped by metric).")
def runs_command(folder: str, as_json: bool, sort_key: str) -> None:
    """List the runs under DIR (default runs/) with their status, steps and best metric.

    A row per run folder up to three folders down: name, model, loss, dataset, steps done / planned,
    status (running, done, interrupted, failed; "failed (crash)" for a run whose process died), best
    metric, and age (since the run last recorded its status)."""
    from zoo.engine.rundir import json_text

    rows = list_runs(Path(folder), sort_key)
    if as_json:
        click.echo(json_text([row.to_dict() for row in rows]))
        return
    if not rows:
        click.echo(f"zoo: no runs under {folder} (a run is a folder holding the config.json zoo train writes).",
                   err=True)
        return
    for line in aligned([_HEADER, *(_cells(row) for row in rows)]):
        click.echo(line)
    for row in rows:
        if row.status == "unreadable":  # why, below the table (it names the file)
            click.echo(f"zoo: {row.detail}", err=True)


def _cells(row: RunSummary) -> list[str]:
    """A run's cells: bare part names (``zoo runs --json`` has them as ``plugin:name``)."""
    steps = "" if row.step is None else f"{row.step}/{'?' if row.planned_steps is None else row.planned_steps}"
    status = "failed (crash)" if row.crashed else row.status
    best = f"{row.best['metric']} {format_number(row.best.get('value'))}" if row.best else ""
    return [row.name, _bare(row.model), _bare(row.loss), _bare(row.dataset), steps, status, best,
            _age(row.age_seconds)]


def _bare(name: str | None) -> str:
    return name.rpartition(":")[2] if name else "-"


def _age(seconds: float | None) -> str:
    """``45s``, ``12m``, ``5h``, ``3d``."""
    if seconds is None:
        return ""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"

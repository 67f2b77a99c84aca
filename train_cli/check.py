"""``zoo check PLUGIN``: the conformance kit, one line per check (zoo/conformance.py does the checks)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from train_cli.paths import no_empty_paths
from zoo.config import absolute_data

if TYPE_CHECKING:
    from train_cli.main import Context


@click.command("check")
@click.argument("plugin")
@click.option("--data", help="Data for the plugin's datasets that need --data (else they are skipped).")
@click.option("--json", "as_json", is_flag=True, help="Print the results as a JSON list.")
@click.pass_obj
def check_command(ctx: Context, plugin: str, data: str | None, as_json: bool) -> None:
    """Check that an installed plugin keeps zoo's contracts: imports, option defaults, dataset items,
    training and bitwise resume of each model with each loss, evaluation, hook states. Exits 1 on a failure."""
    import dataclasses

    from zoo.conformance import check_plugin, iter_lines
    from zoo.engine.rundir import json_text

    no_empty_paths(data=data)
    results = check_plugin(plugin, ctx.registry(warn=False), data=absolute_data(data))
    if as_json:
        click.echo(json_text([dataclasses.asdict(result) for result in results]))
    else:
        for line in iter_lines(results):
            click.echo(line)
    if any(result.status == "failed" for result in results):
        raise click.exceptions.Exit(1)

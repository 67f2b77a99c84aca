"""``zoo info``: what one model, loss, dataset or hook is, its options and what it works with."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from train_cli.completion import any_name
from zoo.errors import UsageError
from zoo.registry import KINDS

if TYPE_CHECKING:
    from train_cli.main import Context


@click.command("info")
@click.argument("name", shell_complete=any_name)
@click.option("--kind", type=click.Choice(KINDS), help="Which kind, when a name is both a model and a loss.")
@click.pass_obj
def info_command(ctx: Context, name: str, kind: str | None) -> None:
    """Show what a model, loss, dataset or hook is, its options and what it works with."""
    from train_cli import info_cache
    registry = ctx.registry()
    if kind:
        entries = [registry.resolve(kind, name)]
    else:
        entries = registry.find_any(name)
        if not entries:
            close = registry.suggest_any(name.rpartition(":")[2])
            hint = f" Did you mean: {', '.join(close)}?" if close else ""
            raise UsageError(f"nothing named '{name}' is installed.{hint} Run 'zoo list' to see "
                             f"all{registry.skipped_note()}.")
        if len({e.kind for e in entries}) == 1 and len(entries) > 1:
            entries = [registry.resolve(entries[0].kind, name)]  # raises, listing plugin:name spellings
    blocks = [info_cache.described(registry, entry) for entry in entries]  # made once, then cached
    click.echo("\n\n".join(blocks))

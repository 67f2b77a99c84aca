"""``zoo new-plugin NAME [DIR]``: write a plugin package skeleton (zoo/scaffold.py writes it)."""

from __future__ import annotations

from pathlib import Path

import click

from zoo.errors import UsageError


@click.command("new-plugin")
@click.argument("name")
@click.argument("folder", required=False, metavar="[DIR]")
def new_plugin_command(name: str, folder: str | None) -> None:
    """Write a plugin package NAME into DIR (default ./NAME): one model, loss, dataset and hook, and tests
    that use zoo.testing. Install it with pip install -e DIR, then run zoo check NAME."""
    from zoo.scaffold import write_plugin

    if folder is not None and not folder.strip():
        raise UsageError("DIR was given as an empty path; name a folder, or leave DIR out for ./NAME.")
    root = Path(folder if folder is not None else name)
    written = write_plugin(name, root)
    click.echo(f"wrote plugin '{name}' in {root}/ ({len(written)} files):")
    for path in written:
        click.echo(f"  {path.relative_to(root)}")
    click.echo(f"next: pip install -e {root}  &&  zoo check {name}  &&  (cd {root} && python -m pytest)")

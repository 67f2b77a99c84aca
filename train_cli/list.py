"""``zoo list``: what is installed (models, losses, datasets, hooks, plugins), as a table or JSON."""

from __future__ import annotations

import difflib
import json
import shutil
import sys
from typing import TYPE_CHECKING

import click

from train_cli.completion import list_words
from zoo.errors import UsageError
from zoo.registry import KINDS, PLURALS, Entry, PluginInfo, Registry

if TYPE_CHECKING:
    from train_cli.main import Context

_PLURAL_OF = {kind: plural for plural, kind in PLURALS.items()}
_GROUP_TITLES = {"model": "Models", "loss": "Losses", "dataset": "Datasets", "hook": "Hooks"}


def _table(rows: list[tuple[str, ...]], indent: str = "  ") -> list[str]:
    """Left-aligned columns; the last column is cut to the terminal width."""
    if not rows:
        return []
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    width = shutil.get_terminal_size((120, 20)).columns if sys.stdout.isatty() else None
    lines = []
    for row in rows:
        head = "  ".join(cell.ljust(w) for cell, w in zip(row, widths))
        line = f"{indent}{head}  {row[-1]}".rstrip()
        lines.append(line if width is None or len(line) <= width else line[: width - 1] + "…")
    return lines


def _entry_record(entry: Entry, registry: Registry) -> dict:
    """An entry as ``zoo list --json`` gives it."""
    info = registry.plugins.get(entry.plugin)
    record = {"kind": entry.kind, "name": entry.name, "plugin": entry.plugin, "summary": entry.summary,
              "target": entry.target, "version": info.version if info else None}
    if entry.kind in ("hook", "dataset"):
        record["default"] = entry.default
    return record


def _plugin_record(plugin: PluginInfo) -> dict:
    """A plugin as ``zoo list --json`` gives it."""
    return {"kind": "plugin", "name": plugin.name, "plugin": plugin.name, "summary": plugin.error or "",
            "distribution": plugin.distribution, "version": plugin.version, "status": plugin.status,
            "module": plugin.module, "registered": dict(plugin.counts)}




@click.command("list")
@click.argument("args", nargs=-1, metavar="[models|losses|datasets|hooks|plugins] [PATTERN]...",
                shell_complete=list_words)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array instead of a table.")
@click.pass_obj
def list_command(ctx: Context, args: tuple[str, ...], as_json: bool) -> None:
    """List installed models, losses, datasets, hooks and plugins.

    PATTERNs are shell wildcards matched against names, e.g. 'zoo list models "tv_resnet*"'.
    """
    registry = ctx.registry(warn=False)
    kind, patterns = _kind_and_patterns(args)
    entries = [] if kind == "plugin" else registry.entries(kind, patterns)
    plugins = sorted(registry.plugins.values(), key=lambda p: p.name)
    if patterns and kind == "plugin":
        import fnmatch
        plugins = [p for p in plugins if any(fnmatch.fnmatchcase(p.name, pat) for pat in patterns)]
    show_plugins = kind == "plugin" or (kind is None and not patterns)
    misspelt = _misspelt_kind(registry, patterns) if kind is None else None
    if misspelt and not entries:  # nothing matched a word that looks like a kind: a typo, not a search
        raise UsageError(misspelt)
    if as_json:
        records = [_entry_record(e, registry) for e in entries]
        if show_plugins:
            records += [_plugin_record(p) for p in plugins]
        click.echo(json.dumps(records, indent=2))
        if misspelt:  # stdout stays JSON
            click.echo(f"zoo: note: {misspelt}", err=True)
        return
    lines = _entry_lines(entries, kind) + (_plugin_lines(plugins) if show_plugins else _skipped_lines(registry))
    if not show_plugins and not entries:
        what = _PLURAL_OF[kind] if kind else "entries"
        lines.append(f"no {what} match {' '.join(patterns)}" if patterns else f"no {what} installed")
    elif misspelt:  # other patterns matched: still point out the word that looks like a kind
        lines.append(f"note: {misspelt}")
    click.echo("\n".join(lines).rstrip())


def _kind_and_patterns(args: tuple[str, ...]) -> tuple[str | None, list[str]]:
    """The kind a first word names (``models``, ``plugin``...; None for every kind) and the name patterns."""
    kind, patterns = None, list(args)
    if patterns and (patterns[0] in PLURALS or patterns[0] == "plugins" or patterns[0] in KINDS + ("plugin",)):
        word = patterns.pop(0)
        kind = "plugin" if word.startswith("plugin") else PLURALS.get(word, word)
    return kind, patterns


def _entry_lines(entries: list[Entry], kind: str | None) -> list[str]:
    """A titled table per kind of the entries, each followed by a blank line."""
    lines: list[str] = []
    for group in KINDS:
        if kind not in (None, group):
            continue
        rows = [(e.name, e.plugin, e.summary + ("  [default]" if e.default else "")) for e in entries
                if e.kind == group]
        if not rows:
            continue
        lines.append(f"{_GROUP_TITLES[group]} ({len(rows)})")
        lines += _table([("NAME", "PLUGIN", "SUMMARY")] + rows)
        lines.append("")
    return lines


def _plugin_lines(plugins: list[PluginInfo]) -> list[str]:
    """The plugins' table: distribution, version, status and what each registered (or why it failed)."""
    rows = []
    for p in plugins:
        made = ", ".join(f"{n} {k if n == 1 else _PLURAL_OF[k]}" for k, n in p.counts.items() if n)
        detail = p.error if p.status != "ok" else made
        rows.append((p.name, p.distribution, p.version, p.status, detail))
    return [f"Plugins ({len(rows)})"] + _table([("NAME", "DISTRIBUTION", "VERSION", "STATUS", "DETAIL")] + rows)


def _skipped_lines(registry: Registry) -> list[str]:
    """A note naming the broken plugins that were skipped, where the plugins' table is not shown."""
    broken = registry.broken()
    if not broken:
        return []
    skipped = ", ".join(f"{p.name}: {p.status}" for p in broken)
    return [f"note: {len(broken)} plugin(s) skipped ({skipped}); 'zoo list plugins' shows why."]


def _misspelt_kind(registry: Registry, patterns: list[str]) -> str | None:
    """A did-you-mean line when the first word matches no name but is close to a kind (``modles``)."""
    if not patterns or registry.entries(None, patterns[:1]):
        return None
    close = difflib.get_close_matches(patterns[0], [*PLURALS, "plugins"], n=1, cutoff=0.6)
    if not close:
        return None
    return f"no kind or name matches '{patterns[0]}'; did you mean 'zoo list {' '.join([*close, *patterns[1:]])}'?"


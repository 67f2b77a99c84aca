"""Shell completion of what click cannot know: model, loss, dataset, hook and plugin names, and option keys.

Everything comes from the lazy registry and from files, never from importing a plugin's classes,
so a Tab press never imports torch. Option keys (``--model-opt KEY=``) come from ``zoo info``'s
cache where it holds the entry, else from the class's source (``zoo.source_options``).
Turn completion on with ``eval "$(_ZOO_COMPLETE=bash_source zoo)"`` (``zsh_source``, ``fish_source``).
"""

from __future__ import annotations

from collections import Counter
from typing import Callable

import click
from click.shell_completion import CompletionItem

from zoo.registry import KINDS, PLURALS, Entry, Registry, get_registry

Completer = Callable[[click.Context, click.Parameter, str], list[CompletionItem]]


def _registry(ctx: click.Context) -> Registry | None:
    """The registry with the plugins that ``--disable-plugin`` skips; None where even that fails."""
    try:
        return get_registry(ctx.find_root().params.get("disabled") or ())
    except Exception:  # a Tab press never prints an error
        return None


def _name_items(entries: list[Entry], incomplete: str) -> list[CompletionItem]:
    """The spellings of ``entries`` that start with ``incomplete``: bare names, ``plugin:name`` where a bare
    name is offered twice or ``incomplete`` has a colon."""
    shared = Counter(entry.name for entry in entries)
    items, seen = [], set()
    for entry in entries:
        spelled = entry.qualified_name if ":" in incomplete or shared[entry.name] > 1 else entry.name
        if spelled.startswith(incomplete) and spelled not in seen:
            seen.add(spelled)
            items.append(CompletionItem(spelled, help=entry.summary or None))
    return items


def names(kind: str) -> Completer:
    """Complete a name of ``kind`` (``model``, ``loss``, ``dataset``, ``hook``)."""
    def complete(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
        registry = _registry(ctx)
        return _name_items(registry.entries(kind), incomplete) if registry else []
    return complete


def hooks_on(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    """Complete ``--no-hook``: the hooks on by default and those switched on earlier with ``--hook``."""
    registry = _registry(ctx)
    if registry is None:
        return []
    given = set(ctx.params.get("hooks") or ())
    return _name_items([e for e in registry.entries("hook")
                        if e.default or e.name in given or e.qualified_name in given], incomplete)


def any_name(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    """Complete ``zoo info NAME``: a name of any kind, or of ``--kind`` where it was given first."""
    registry = _registry(ctx)
    return _name_items(registry.entries(ctx.params.get("kind")), incomplete) if registry else []


def list_words(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    """Complete ``zoo list``'s words: a kind first, then names of that kind (or of any)."""
    registry = _registry(ctx)
    if registry is None:
        return []
    earlier = list(ctx.params.get("args") or ())
    if not earlier:
        kinds = [CompletionItem(word) for word in (*PLURALS, "plugins") if word.startswith(incomplete)]
        return kinds + _name_items(registry.entries(), incomplete)
    kind = PLURALS.get(earlier[0], earlier[0] if earlier[0] in KINDS else None)
    if earlier[0] in ("plugins", "plugin"):
        return [CompletionItem(name) for name in sorted(registry.plugins) if name.startswith(incomplete)]
    return _name_items(registry.entries(kind), incomplete)


def plugin_names(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    """Complete ``--disable-plugin``: the installed plugins."""
    registry = _registry(ctx)
    return [CompletionItem(name, help=registry.plugins[name].distribution) for name in sorted(registry.plugins)
            if name.startswith(incomplete)] if registry else []


def _entry(registry: Registry, kind: str, name: str | None) -> Entry | None:
    """The entry ``name`` means, if it means one; a dataset not named is the default one."""
    if name is None and kind == "dataset":
        defaults = registry.defaults("dataset")
        return defaults[0] if len(defaults) == 1 else None
    try:
        return registry.resolve(kind, name) if name else None
    except Exception:
        return None


def entry_option_names(registry: Registry, entry: Entry) -> list[str]:
    """The option keys of ``entry``: ``zoo info``'s cached ones where valid, else read from its source."""
    from train_cli import info_cache
    from zoo import source_options
    from zoo.build import DATASET_RESERVED  # zoo.build imports no torch until it builds

    cached = info_cache.read(registry, entry)
    if cached is not None:
        return list(cached["options"])
    reserved = DATASET_RESERVED if entry.kind == "dataset" else ()
    return source_options.option_names(entry.target, reserved + tuple(entry.bound_options)) or []


def option_keys(kind: str) -> Completer:
    """Complete ``--<kind>-opt KEY=`` with the keys of the ``--<kind>`` given earlier (not those already set)."""
    def complete(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
        registry = _registry(ctx)
        if registry is None or "=" in incomplete:
            return []
        entry = _entry(registry, kind, ctx.params.get(kind))
        if entry is None:
            return []
        given = {pair.partition("=")[0] for pair in ctx.params.get(f"{kind}_opt") or ()}
        return [CompletionItem(f"{key}=") for key in entry_option_names(registry, entry)
                if key.startswith(incomplete) and key not in given]
    return complete


def hook_option_keys(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    """Complete ``--hook-opt HOOK.KEY=``: a hook name and a dot first, then that hook's keys."""
    registry = _registry(ctx)
    if registry is None or "=" in incomplete:
        return []
    hook, dot, _ = incomplete.rpartition(".")
    entry = _entry(registry, "hook", hook) if dot else None
    if entry is None:
        return [CompletionItem(item.value + ".", help=item.help) for item in _name_items(registry.entries("hook"),
                                                                                          incomplete)]
    return [CompletionItem(f"{hook}.{key}=") for key in entry_option_names(registry, entry)
            if f"{hook}.{key}".startswith(incomplete)]

"""Plugin discovery over pluggy: entry points of the ``zoo`` group, isolation, lookup.

Listing never imports a plugin's torch code: plugins register import strings,
and only :meth:`Entry.load` imports one. A plugin that fails to import, has a
mis-signed hook, or raises while registering is recorded as broken and never
affects the others.
"""

from __future__ import annotations

import dataclasses
import difflib
import fnmatch
import importlib
import importlib.metadata
import os
import re
import traceback
from typing import Any, Iterable, Iterator

import pluggy

from zoo import hookspecs
from zoo.errors import AmbiguousNameError, PluginError, UsageError, first_line

ENTRY_POINT_GROUP = "zoo"
KINDS = ("model", "loss", "dataset", "hook")
PLURALS = {"models": "model", "losses": "loss", "datasets": "dataset", "hooks": "hook"}
BUILTIN_DISTRIBUTION = "zoo"
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.\-]*$")
_TARGET_RE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")


@dataclasses.dataclass(frozen=True)
class Entry:
    """One registered model, loss, dataset or hook, with the plugin that gave it."""

    kind: str
    name: str
    target: str
    summary: str
    plugin: str
    bound: tuple[tuple[str, Any], ...] = ()
    default: bool = False

    @property
    def qualified_name(self) -> str:
        """The unambiguous ``plugin:name`` spelling."""
        return f"{self.plugin}:{self.name}"

    @property
    def bound_options(self) -> dict[str, Any]:
        """Options fixed by the registration (e.g. the architecture of an adapter)."""
        return dict(self.bound)

    def load(self) -> Any:
        """Import and return the target (a class or factory)."""
        module_name, _, attr_path = self.target.partition(":")
        try:
            obj: Any = importlib.import_module(module_name)
            for attr in attr_path.split("."):
                obj = getattr(obj, attr)
        except Exception as exc:  # a plugin's import may fail in any way
            raise PluginError(
                f"{self.kind} '{self.qualified_name}' could not be loaded from {self.target}: "
                f"{type(exc).__name__}: {exc}. Reinstall or disable plugin '{self.plugin}'."
            ) from exc
        return obj


@dataclasses.dataclass
class PluginInfo:
    """What zoo knows of one installed plugin (one entry point of the ``zoo`` group)."""

    name: str
    distribution: str
    version: str
    module: str
    status: str = "ok"  # ok, disabled, broken, incompatible
    error: str = ""
    traceback: str = ""  # where a broken plugin failed, shown with --debug
    counts: dict[str, int] = dataclasses.field(default_factory=dict)

    @property
    def builtin(self) -> bool:
        """True for the plugins shipped inside zoo itself."""
        return self.distribution.lower() == BUILTIN_DISTRIBUTION


class Registrar:
    """The object a plugin's ``zoo_register`` hook receives; records provenance."""

    def __init__(self, plugin: str):
        self._plugin = plugin
        self.entries: list[Entry] = []

    def _add(self, kind: str, name: str, target: str, summary: str,
             bind: dict[str, Any] | None = None, default: bool = False) -> None:
        if not isinstance(name, str) or not _NAME_RE.match(name):
            raise ValueError(f"invalid {kind} name {name!r}: use lowercase letters, digits, '_', '-', '.'")
        if not isinstance(target, str) or not _TARGET_RE.match(target):
            raise ValueError(f"invalid target {target!r} for {kind} '{name}': use 'package.module:Attribute'")
        if any(e.kind == kind and e.name == name for e in self.entries):
            raise ValueError(f"{kind} '{name}' registered twice by the same plugin")
        summary_line = (summary or "").strip().splitlines()[0] if (summary or "").strip() else ""
        self.entries.append(Entry(kind, name, target, summary_line, self._plugin,
                                  tuple(sorted((bind or {}).items())), default))

    def model(self, name: str, target: str, summary: str = "", bind: dict[str, Any] | None = None) -> None:
        """Register a model recipe class (a ``zoo.Recipe`` subclass)."""
        self._add("model", name, target, summary, bind)

    def loss(self, name: str, target: str, summary: str = "", bind: dict[str, Any] | None = None) -> None:
        """Register a loss: an ``nn.Module`` class called as ``loss(prediction, target)``."""
        self._add("loss", name, target, summary, bind)

    def dataset(self, name: str, target: str, summary: str = "", bind: dict[str, Any] | None = None,
                default: bool = False) -> None:
        """Register a dataset class (see ``zoo.data``); ``default=True`` offers it when none is named."""
        self._add("dataset", name, target, summary, bind, default)

    def hook(self, name: str, target: str, summary: str = "", default: bool = False) -> None:
        """Register a training hook class; ``default=True`` switches it on unless ``--no-hook``."""
        self._add("hook", name, target, summary, None, default)


def natural_key(text: str) -> list[Any]:
    """Sort key that orders ``resnet18`` before ``resnet101``."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def validation_detail(exc: pluggy.PluginValidationError) -> str:
    """pluggy's reason for refusing a hookimpl, in one line (its first line only names the hook)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    detail = "; ".join(line.removeprefix("hookimpl definition: ") for line in lines[1:])
    return detail or first_line(exc)


class Registry:
    """Every entry of every installed plugin, with lookup and did-you-mean."""

    def __init__(self) -> None:
        self.plugins: dict[str, PluginInfo] = {}
        self._entries: list[Entry] = []

    def add_plugin(self, info: PluginInfo, entries: Iterable[Entry] = ()) -> None:
        """Record a plugin and the entries it registered."""
        entries = list(entries)
        for kind in KINDS:
            info.counts[kind] = sum(1 for e in entries if e.kind == kind)
        self.plugins[info.name] = info
        self._entries.extend(entries)

    def entries(self, kind: str | None = None, patterns: Iterable[str] = ()) -> list[Entry]:
        """Entries of one kind (or all), filtered by fnmatch patterns, naturally sorted."""
        patterns = list(patterns)
        found = [e for e in self._entries if kind is None or e.kind == kind]
        if patterns:  # a pattern with ':' matches plugin:name, one without it the bare name only
            found = [e for e in found
                     if any(fnmatch.fnmatchcase(e.qualified_name if ":" in p else e.name, p) for p in patterns)]
        return sorted(found, key=lambda e: (KINDS.index(e.kind), natural_key(e.name), e.plugin))

    def names(self, kind: str) -> list[str]:
        """Bare names of one kind, sorted."""
        return sorted({e.name for e in self.entries(kind)}, key=natural_key)

    def broken(self) -> list[PluginInfo]:
        """Plugins skipped for a problem: failed to load or register, or made for another zoo."""
        return [p for p in self.plugins.values() if p.status in ("broken", "incompatible")]

    def resolve(self, kind: str, name: str) -> Entry:
        """Find one entry by ``name`` or ``plugin:name``; a usage error says what to type instead."""
        plugin, sep, bare = name.rpartition(":")
        candidates = [e for e in self._entries if e.kind == kind and e.name == (bare if sep else name)]
        if sep:
            candidates = [e for e in candidates if e.plugin == plugin]
        if len(candidates) == 1:
            return candidates[0]
        if len(candidates) > 1:
            raise AmbiguousNameError(kind, name, [e.qualified_name for e in candidates])
        info = self.plugins.get(plugin) if sep else None
        if info is not None and info.status != "ok":  # broken or incompatible: the plugin's fault (exit 1)
            error = UsageError if info.status == "disabled" else PluginError
            raise error(f"{kind} '{name}' comes from plugin '{plugin}', which is skipped: {info.error}.")
        raise UsageError(self._unknown_message(kind, name))

    def check_known(self, kind: str, names: Iterable[str], flag: str) -> None:
        """Refuse an option given for a name no plugin offers (``--hook-opt nosuch.x=1``), with did-you-mean."""
        known = {spelling for e in self._entries if e.kind == kind for spelling in (e.name, e.qualified_name)}
        unknown = next((name for name in names if name not in known), None)
        if unknown is not None:
            raise UsageError(f"{flag} names {self._unknown_message(kind, unknown)}")

    def _unknown_message(self, kind: str, name: str) -> str:
        pool = {e.name for e in self._entries if e.kind == kind}
        pool |= {e.qualified_name for e in self._entries if e.kind == kind}
        close = difflib.get_close_matches(name, sorted(pool), n=4, cutoff=0.6)
        close = [c for c in close if ":" not in c or c.rpartition(":")[2] not in close][:3]
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        plural = {v: k for k, v in PLURALS.items()}[kind]
        return f"unknown {kind} '{name}'.{hint} Run 'zoo list {plural}' to see all{self.skipped_note()}."

    def skipped_note(self) -> str:
        """`` (plugins skipped: a (broken), b (disabled))`` when some are, for a name not found: it may be theirs."""
        skipped = [f"{p.name} ({p.status})" for p in self.plugins.values() if p.status != "ok"]
        return f" (plugins skipped: {', '.join(skipped)})" if skipped else ""

    def defaults(self, kind: str = "hook") -> list[Entry]:
        """Entries marked default: hooks switched on, the dataset used when none is named."""
        return [e for e in self.entries(kind) if e.default]

    def find_any(self, name: str) -> list[Entry]:
        """Entries of any kind whose name or qualified name is ``name``."""
        return [e for e in self.entries() if name in (e.name, e.qualified_name)]

    def suggest_any(self, name: str) -> list[str]:
        """Did-you-mean candidates across all kinds."""
        pool = sorted({e.name for e in self._entries})
        return difflib.get_close_matches(name, pool, n=3, cutoff=0.6)


def _disabled_from_env() -> set[str]:
    raw = os.environ.get("ZOO_DISABLE_PLUGINS", "")
    return {part.strip() for part in raw.split(",") if part.strip()}


def _autoload_off() -> bool:
    return os.environ.get("ZOO_DISABLE_PLUGIN_AUTOLOAD", "").strip().lower() in {"1", "true", "yes"}


def _entry_points() -> Iterator[importlib.metadata.EntryPoint]:
    seen: set[tuple[str, str]] = set()
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        key = (ep.name, ep.value)
        if key in seen:  # the same distribution found twice on sys.path
            continue
        seen.add(key)
        yield ep


def discover(disabled: Iterable[str] = ()) -> Registry:
    """Load every installed plugin in isolation and return the registry.

    ``disabled`` (plus ``ZOO_DISABLE_PLUGINS``) names plugins to skip; a name that
    matches no installed plugin is a usage error. ``ZOO_DISABLE_PLUGIN_AUTOLOAD=1``
    loads the builtin plugins alone.
    """
    disabled_names = set(disabled) | _disabled_from_env()
    registry = Registry()
    manager = pluggy.PluginManager(ENTRY_POINT_GROUP)
    manager.add_hookspecs(hookspecs.RegistrySpecs)
    points = sorted(_entry_points(), key=lambda ep: natural_key(ep.name))
    installed = {ep.name for ep in points}
    # a plugin name and the name@distribution spelling its second distribution gets (both accepted)
    spellings = installed | {f"{ep.name}@{ep.dist.name}" for ep in points if getattr(ep, "dist", None)}
    unknown = sorted(disabled_names - spellings)
    if unknown:
        raise UsageError(
            f"cannot disable unknown plugin(s) {', '.join(unknown)}; installed plugins: "
            f"{', '.join(sorted(installed)) or 'none'}. Run 'zoo list plugins'."
        )
    autoload_off = _autoload_off()
    for ep in points:
        dist = getattr(ep, "dist", None)
        info = PluginInfo(
            name=ep.name if ep.name not in registry.plugins else f"{ep.name}@{dist.name if dist else '?'}",
            distribution=dist.name if dist else "?",
            version=dist.version if dist else "?",
            module=ep.value,
        )
        spelled = {info.name, ep.name, f"{ep.name}@{info.distribution}"}  # the bare name: all its distributions
        if spelled & disabled_names:
            info.status, info.error = "disabled", "disabled by the user"
            registry.add_plugin(info)
            continue
        if autoload_off and not info.builtin:
            info.status, info.error = "disabled", "ZOO_DISABLE_PLUGIN_AUTOLOAD is set"
            registry.add_plugin(info)
            continue
        problem = _incompatibility(dist)
        if problem:
            info.status, info.error = "incompatible", problem
            registry.add_plugin(info)
            continue
        registry.add_plugin(info, _load_plugin(manager, ep, info))
    return registry


def _incompatibility(dist: importlib.metadata.Distribution | None) -> str:
    """Why a plugin's own requirement on ``zoo`` excludes this zoo, or ``""``."""
    if dist is None or dist.metadata["Name"].lower() == BUILTIN_DISTRIBUTION:
        return ""
    wanted = [r for r in (dist.requires or []) if re.match(rf"^{BUILTIN_DISTRIBUTION}\b(?![-_.\w])", r.strip(), re.I)]
    if not wanted:
        return ""
    from packaging.requirements import InvalidRequirement, Requirement
    from zoo import __version__
    for text in wanted:
        try:
            requirement = Requirement(text)
        except InvalidRequirement:
            return f"its requirement {text!r} on zoo cannot be read"
        if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
            continue
        if requirement.specifier and not requirement.specifier.contains(__version__, prereleases=True):
            return (f"needs zoo{requirement.specifier}, this is zoo {__version__}; "
                    f"install a version of {dist.metadata['Name']} made for zoo {__version__}")
    return ""


def _load_plugin(manager: pluggy.PluginManager, ep: importlib.metadata.EntryPoint,
                 info: PluginInfo) -> list[Entry]:
    """Import one plugin and run its register hook; on any failure mark it broken."""
    try:
        module = ep.load()
        manager.register(module, name=info.name)
    except pluggy.PluginValidationError as exc:
        info.status, info.error = "broken", f"hook signature mismatch: {validation_detail(exc)}"
        return []
    except BaseException as exc:  # noqa: BLE001 - a plugin may raise anything, even SystemExit
        if isinstance(exc, KeyboardInterrupt):
            raise
        info.status, info.error, info.traceback = "broken", first_line(exc), traceback.format_exc()
        return []
    registrar = Registrar(info.name)
    impls = [impl for impl in manager.hook.zoo_register.get_hookimpls() if impl.plugin_name == info.name]
    if not impls:
        info.status, info.error = "broken", _no_register_hook(ep, module)
        return []
    try:
        for impl in impls:
            impl.function(**{name: registrar for name in impl.argnames})
    except BaseException as exc:  # noqa: BLE001
        if isinstance(exc, KeyboardInterrupt):
            raise
        info.status, info.error, info.traceback = "broken", first_line(exc), traceback.format_exc()
        return []
    return registrar.entries


def _no_register_hook(ep: importlib.metadata.EntryPoint, loaded: object) -> str:
    """Why a plugin's entry point gave no ``zoo_register`` hook, and the fix."""
    if ep.attr:
        return (f"its entry point names {ep.value!r}, an object in a module; it must name the module: "
                f"{ep.name} = {ep.module}")
    if callable(getattr(loaded, "zoo_register", None)):
        return f"zoo_register in {ep.module} is not marked @zoo.hookimpl; decorate it (from zoo import hookimpl)"
    return f"module {ep.module} defines no zoo_register hook; add one (see the plugin guide)"


_CACHE: dict[frozenset[str], Registry] = {}


def get_registry(disabled: Iterable[str] = ()) -> Registry:
    """The registry for this process, discovered once per set of disabled plugins."""
    key = frozenset(disabled) | frozenset(_disabled_from_env()) | (
        frozenset({"<no-autoload>"}) if _autoload_off() else frozenset())
    if key not in _CACHE:
        _CACHE[key] = discover(disabled)
    return _CACHE[key]


def clear_cache() -> None:
    """Forget discovered plugins (tests install plugins at run time)."""
    _CACHE.clear()


def keep_first_made_with(before: Any, now: dict[str, Any]) -> None:
    """On resume, keep the plugin version and distribution a part first trained with where it has changed
    (``first_made_with``), so later commands still say the run's steps came from two versions."""
    for kind in ("model", "loss", "dataset"):
        old, new = (before or {}).get(kind), now.get(kind)
        if not isinstance(old, dict) or not isinstance(new, dict):
            continue
        first = old.get("first_made_with") or {"version": old.get("version"),
                                                "distribution": old.get("distribution") or new.get("distribution")}
        if (first["version"], first["distribution"]) != (new.get("version"), new.get("distribution")):
            new["first_made_with"] = first


def changed_plugins(registry: Registry, resolved: dict[str, Any] | None) -> list[str]:
    """Notes on the parts of a saved run (``config.json``'s ``resolved``) whose plugin is now another version
    or distribution than the run was (first) made with: its results may differ from the run's own."""
    notes = []
    for kind in ("model", "loss", "dataset"):
        recorded = (resolved or {}).get(kind)
        if not isinstance(recorded, dict) or not isinstance(recorded.get("name"), str):
            continue
        info = registry.plugins.get(recorded["name"].split(":", 1)[0])
        if info is None or info.status != "ok":
            continue  # resolving the part says what is wrong
        made = recorded.get("first_made_with") if isinstance(recorded.get("first_made_with"), dict) else recorded
        then = (made.get("distribution") or info.distribution, made.get("version"))
        if then != (info.distribution, info.version):
            notes.append(f"zoo: note: {kind} '{recorded['name']}' now comes from {info.distribution} "
                         f"{info.version}; the run was made with {then[0]} {then[1]}, so results may differ.")
    return notes

"""The training configuration: defaults, a TOML file, command-line overrides, checks.

Every field has the name of its long option with underscores (``--batch-size``
is ``batch_size``). A config file may also hold the tables ``[model_opt]``,
``[loss_opt]``, ``[dataset_opt]``, ``[hook_opt]`` and ``[optimizers.NAME]``
(``zoo.optim_flags``). The command line overrides the file.
"""

from __future__ import annotations

import dataclasses
import difflib
import glob
import math
import os
import tomllib
from pathlib import Path
from typing import Any

from zoo import optim_flags
from zoo.errors import UsageError

PRECISIONS = ("32", "bf16", "16-mixed")
DDP_COMM_HOOKS = ("bf16", "fp16", "powersgd")  # --ddp-comm-hook: DistributedDataParallel's own hooks
AUGMENT_PRESETS = ("none", "flip", "standard", "strong")  # zoo.augment's; None in a config: the dataset's default
# What torch's generators take (a negative seed is mapped past 2**63): every seed a run may have been given.
SEED_RANGE = (-2**63, 2**64 - 1)
OPTION_TABLES = ("model_opt", "loss_opt", "dataset_opt", "hook_opt", "optimizers")
NESTED_TABLES = ("hook_opt", "optimizers")  # tables of tables, merged table by table
# Options that only extend or observe a run: allowed beside --resume.
RESUME_OVERRIDABLE = ("max_steps", "epochs", "hooks", "no_hooks", "hook_opt", "device", "workers",
                      "log_every", "eval_every", "eval_batches", "save_every", "keep", "skip_bad_files", "skip_nonfinite",
                      "channels_last", "compile", "cuda_graph", "ddp_comm_hook", "find_unused_parameters")


@dataclasses.dataclass
class TrainConfig:
    """Everything ``zoo train`` needs; ``None`` means "use the default"."""

    model: str | None = None
    loss: str | None = None
    dataset: str | None = None
    data: str | None = None
    epochs: int | None = None
    max_steps: int | None = None
    batch_size: int = 64
    lr: float | None = None
    seed: int = 0
    device: str = "auto"
    workers: int = 0
    precision: str = "32"
    channels_last: bool = False
    compile: bool = False
    cuda_graph: bool = False
    fast: bool = False
    sync_bn: bool = False
    ddp_comm_hook: str | None = None  # a DDP_COMM_HOOKS name; None: DDP's own all-reduce
    find_unused_parameters: bool = False
    cache_decoded: bool = False
    augment: str | None = None  # an AUGMENT_PRESETS name; None: the dataset's own default (imagefolder flips)
    decode_on_device: bool = False
    accumulate: int = 1
    clip_grad: float | None = None
    eval_every: int | None = None
    eval_batches: int | None = None  # evaluate on the first N test batches only (quick checks); None: all
    best_metric: str | None = None  # the metric that picks the best checkpoint (None: the model's)
    save_every: int | None = None
    keep: int = 3
    log_every: int = 20
    skip_bad_files: bool = False
    init_from: str | None = None
    no_strict: bool = False
    freeze: list[str] = dataclasses.field(default_factory=list)
    skip_nonfinite: bool = False
    run_dir: str | None = None
    hooks: list[str] = dataclasses.field(default_factory=list)
    no_hooks: list[str] = dataclasses.field(default_factory=list)
    model_opt: dict[str, Any] = dataclasses.field(default_factory=dict)
    loss_opt: dict[str, Any] = dataclasses.field(default_factory=dict)
    dataset_opt: dict[str, Any] = dataclasses.field(default_factory=dict)
    hook_opt: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    # the training recipe (zoo.optim_flags): None keeps the model's own
    optimizer: str | None = None
    momentum: float | None = None
    nesterov: bool = False
    weight_decay: float | None = None
    lr_schedule: str = "model"
    warmup: str | int | None = None  # N steps, or "Ne" epochs
    optimizers: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)  # per optimizer name

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready copy."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str) -> "TrainConfig":
        """Build from a dict, rejecting unknown keys with did-you-mean."""
        known = {f.name for f in dataclasses.fields(cls)}
        for key in values:
            if key not in known:
                close = difflib.get_close_matches(key, sorted(known), n=3, cutoff=0.6)
                hint = f" Did you mean: {', '.join(close)}?" if close else ""
                raise UsageError(f"{source}: unknown key '{key}'.{hint}")
        config = cls(**values)
        config.check(source)
        return config

    def check(self, source: str = "options") -> None:
        """Validate types and ranges; raise a usage error naming the option and the fix."""
        _check_type(self, source)
        positive = {"batch_size": self.batch_size, "accumulate": self.accumulate, "keep": self.keep,
                    "log_every": self.log_every}
        for name, value in positive.items():
            if value < 1:
                raise UsageError(f"{_flag(name)} must be at least 1, got {value}.")
        for name in ("epochs", "max_steps", "eval_batches"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise UsageError(f"{_flag(name)} must be at least 1, got {value}.")
        for name in ("eval_every", "save_every", "workers"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise UsageError(f"{_flag(name)} must be 0 or more, got {value}.")
        for name in ("lr", "clip_grad"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value > 0):
                raise UsageError(f"{_flag(name)} must be a finite positive number, got {value}.")
        check_seed(self.seed)
        optim_flags.check_settings(self)
        if self.precision not in PRECISIONS:
            raise UsageError(f"--precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}.")
        if self.ddp_comm_hook is not None and self.ddp_comm_hook not in DDP_COMM_HOOKS:
            raise UsageError(f"--ddp-comm-hook must be one of {', '.join(DDP_COMM_HOOKS)}, got {self.ddp_comm_hook!r}.")
        if self.augment is not None and self.augment not in AUGMENT_PRESETS:
            raise UsageError(f"--augment must be one of {', '.join(AUGMENT_PRESETS)}, got {self.augment!r}.")


def _flag(name: str) -> str:
    name = {"hooks": "hook", "no_hooks": "no_hook"}.get(name, name)
    return "--" + name.replace("_", "-")


def check_seed(seed: int) -> None:
    """Refuse a seed outside SEED_RANGE, which torch's generators would reject (or alias another seed)."""
    low, high = SEED_RANGE
    if not low <= seed <= high:
        raise UsageError(f"--seed must be from -2**63 to 2**64-1 (what torch's generators take), got {seed}.")


# A field's type as written in TrainConfig: (the type of the value, the type of each list item or dict value).
_EXPECTED_TYPES: dict[str, tuple[type | tuple[type, ...], type | None]] = {
    "bool": (bool, None), "int": (int, None), "float": ((int, float), None), "str": (str, None),
    "list[str]": (list, str), "dict[str, Any]": (dict, None), "dict[str, dict[str, Any]]": (dict, dict)}


def _is(value: Any, want: type | tuple[type, ...]) -> bool:
    """``isinstance``, except that a bool is no number."""
    return isinstance(value, want) and (want is bool or not isinstance(value, bool))


def _fits(value: Any, want: type | tuple[type, ...], item: type | None) -> bool:
    """Whether ``value`` is a ``want`` whose list items (or table values) are all ``item``s."""
    if not _is(value, want):
        return False
    return item is None or all(_is(one, item) for one in (value.values() if isinstance(value, dict) else value))


def _check_type(config: TrainConfig, source: str) -> None:
    """Reject values of the wrong type, and lists or tables of wrong items (a config file can hold anything)."""
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        type_text = str(field.type).replace(" | None", "")
        if value is not None and type_text in _EXPECTED_TYPES and not _fits(value, *_EXPECTED_TYPES[type_text]):
            raise UsageError(f"{source}: {field.name} must be {type_text}, got {value!r}.")


def load_toml(path: str) -> dict[str, Any]:
    """Read a TOML config file; a missing or malformed file is a usage error."""
    file = Path(path)
    if not file.is_file():
        raise UsageError(f"config file {path} does not exist; pass an existing TOML file to --config.")
    try:
        text = file.read_bytes().decode("utf-8-sig")  # a byte-order mark, as some editors write, is dropped
    except UnicodeDecodeError as exc:
        raise UsageError(f"config file {path} is not a UTF-8 TOML file (byte {exc.object[exc.start]:#04x} at "
                         f"offset {exc.start}); save it as UTF-8.") from None
    except OSError as exc:
        raise UsageError(f"cannot read config file {path}: {exc.strerror or exc}.") from None
    try:
        values = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"config file {path} is not valid TOML: {exc}.") from None
    for table in OPTION_TABLES:
        if table in values and not isinstance(values[table], dict):
            raise UsageError(f"{path}: {table} must be a table like [{table}].")
    for table in NESTED_TABLES:
        for name, options in values.get(table, {}).items():
            if not isinstance(options, dict):
                raise UsageError(f"{path}: {table}.{name} must be a table like [{table}.{name}].")
    return values


def merge(file_values: dict[str, Any], cli_values: dict[str, Any]) -> dict[str, Any]:
    """Command-line values (those not None) override the file; option tables merge key by key."""
    merged = dict(file_values)
    for key, value in cli_values.items():
        if value is None or (isinstance(value, (list, dict)) and not value):
            continue
        if key in NESTED_TABLES:
            tables = {hook: dict(opts) for hook, opts in merged.get(key, {}).items()}
            for hook, opts in value.items():
                tables[hook] = {**tables.get(hook, {}), **opts}
            merged[key] = tables
        elif key in OPTION_TABLES:
            merged[key] = {**merged.get(key, {}), **value}
        else:
            merged[key] = value
    return merged


def data_present(data: str) -> bool:
    """Whether ``--data`` names something on disk: a file or folder, or a glob pattern with matches."""
    path = os.path.expanduser(data)
    return os.path.exists(path) or (glob.has_magic(path) and next(glob.iglob(path, recursive=True), None) is not None)


def absolute_data(data: str | None) -> str | None:
    """``--data`` as an absolute path where it names something on disk, so the run reads it from any folder.

    A value that names nothing (a dataset may take other strings) is kept as given.
    """
    if data is None or not data_present(data):
        return data
    return os.path.abspath(os.path.expanduser(data))


def _switched_hooks(saved: dict[str, Any], overrides: dict[str, Any]) -> tuple[list[str], list[str]]:
    """A resumed run's hooks: the saved switches, then this command's; the later switch of a hook wins."""
    on, off = list(saved.get("hooks") or []), list(saved.get("no_hooks") or [])
    for name in overrides.get("hooks") or []:
        off, on = _switch(name, off, on)
    for name in overrides.get("no_hooks") or []:
        on, off = _switch(name, on, off)
    return on, off


def _switch(name: str, out_of: list[str], into: list[str]) -> tuple[list[str], list[str]]:
    """Move hook ``name`` (any spelling) from one list to the other."""
    return ([hook for hook in out_of if not same_part_name(hook, name)],
            into + ([] if any(same_part_name(hook, name) for hook in into) else [name]))


def same_part_name(one: Any, other: Any) -> bool:
    """Whether two spellings can name the same part: equal, or one bare (``dcgan``) and one ``builtin:dcgan``."""
    if one == other:
        return True
    if not (isinstance(one, str) and isinstance(other, str)) or (":" in one) == (":" in other):
        return False
    qualified, bare = (one, other) if ":" in one else (other, one)
    return qualified.endswith(":" + bare)



def pin_recorded_parts(config: TrainConfig, resolved: dict[str, Any] | None) -> None:
    """Name a saved run's model, loss, dataset and hooks as ``plugin:name``, as its config.json recorded them.

    A plugin installed after the run that offers the same bare name then cannot make the run ambiguous.
    """
    pinned = recorded_part_names({kind: getattr(config, kind) for kind in ("model", "loss", "dataset", "hooks")},
                                 resolved)
    config.model, config.loss, config.dataset = pinned["model"], pinned["loss"], pinned["dataset"]
    config.hooks = pinned["hooks"]


def recorded_part_names(config: dict[str, Any], resolved: dict[str, Any] | None) -> dict[str, Any]:
    """A config's ``model``, ``loss``, ``dataset`` and ``hooks`` in the spelling ``resolved`` recorded them
    (``builtin:dcgan`` for ``dcgan``; the part used where the config named none); other keys as given."""
    def recorded(kind: str, given: str | None) -> str | None:
        """The recorded spelling of the part the config names (its default when it names none)."""
        part = (resolved or {}).get(kind)
        name = part.get("name") if isinstance(part, dict) else None
        return name if name and (given is None or same_part_name(name, given)) else given

    pinned = {**config, **{kind: recorded(kind, config.get(kind)) for kind in ("model", "loss", "dataset")}}
    if isinstance(config.get("hooks"), list):
        hooks = [part.get("name") for part in (resolved or {}).get("hooks") or [] if isinstance(part, dict)]
        pinned["hooks"] = [next((q for q in hooks if q and same_part_name(q, name)), name) for name in config["hooks"]]
    return pinned


def _same_place(one: str, other: str) -> bool:
    """Whether two --data values name the same files (through a symlink, say)."""
    return os.path.realpath(os.path.expanduser(one)) == os.path.realpath(os.path.expanduser(other))


def resume_config(saved: dict[str, Any], overrides: dict[str, Any]) -> TrainConfig:
    """The saved config of a run, with only the options that extend or observe it replaced.

    ``--data`` may name the same data by another path, or new data where the saved one is gone (moved).
    """
    overrides = dict(overrides, data=absolute_data(overrides.get("data")))
    saved = dict(saved, data=absolute_data(saved.get("data")))  # a run saved before paths were made absolute
    saved_data = saved["data"]
    moved = saved_data is not None and overrides["data"] is not None and not data_present(saved_data)
    same_data = saved_data is not None and overrides["data"] is not None and _same_place(saved_data, overrides["data"])
    refused = [key for key, value in overrides.items()
               if value not in (None, [], {}) and key not in RESUME_OVERRIDABLE
               and not same_part_name(saved.get(key), value) and not (key == "data" and (moved or same_data))]
    if refused:
        flags = ", ".join(_flag(k) for k in refused)
        raise UsageError(
            f"{flags} cannot change when resuming: the run keeps its model, data and folder. Drop it, "
            f"or start a new run (--init-from RUN_DIR starts from its weights).")
    values = merge(saved, {key: overrides.get(key) for key in RESUME_OVERRIDABLE + (("data",) if moved else ())})
    values["hooks"], values["no_hooks"] = _switched_hooks(saved, overrides)
    return TrainConfig.from_dict(values, "saved config")

"""Training-recipe settings from the command line and the config file: optimizer, its options, LR schedule, warm-up.

``--optimizer``, ``--momentum`` and ``--weight-decay`` take a bare value (every optimizer of the model) or
``NAME=VALUE`` (the optimizer the model calls NAME); the config file's ``[optimizers.NAME]`` tables say the
same per optimizer, with ``lr`` too. This module only reads and checks the settings (no torch): the
optimizers and schedules are built from them in ``zoo.engine.optim``.
"""

from __future__ import annotations

import difflib
import math
import re
from typing import Any, Callable

from zoo.errors import UsageError

SCHEDULES = ("model", "constant", "step", "cosine", "one-cycle")
PER_STEP_SCHEDULES = ("cosine", "one-cycle")  # a new learning rate every step
# what an [optimizers.NAME] table may set, and how a command-line string becomes its value
PER_OPTIMIZER_KEYS: dict[str, Callable[[str], Any]] = {
    "optimizer": str, "lr": float, "momentum": float, "nesterov": lambda text: text.lower() in ("1", "true", "yes"),
    "weight_decay": float}
_WARMUP = re.compile(r"^\s*(\d+)\s*(e?)\s*$")


def parse_warmup(value: str | int | None) -> tuple[int, bool]:
    """``--warmup`` as ``(count, in_epochs)``: ``100`` is 100 steps, ``2e`` two epochs; None is no warm-up."""
    if value is None:
        return 0, False
    match = _WARMUP.match(str(value)) if not isinstance(value, bool) else None
    if match is None:
        raise UsageError(f"--warmup takes N steps or Ne epochs (e.g. 500 or 2e), got {value!r}.")
    return int(match.group(1)), bool(match.group(2))


def warmup_steps(value: str | int | None, steps_per_epoch: int) -> int:
    """The number of warm-up steps ``--warmup`` asks for, epochs counted in this run's steps."""
    count, in_epochs = parse_warmup(value)
    return count * steps_per_epoch if in_epochs else count


def split_per_optimizer(values: tuple[str, ...] | list[str], flag: str, key: str,
                        optimizers: dict[str, dict[str, Any]]) -> Any:
    """Read a repeatable ``[NAME=]VALUE`` flag: ``NAME=VALUE`` goes into ``optimizers[NAME][key]``; the last bare
    value is returned (it applies to every optimizer), None when there is none."""
    convert, bare = PER_OPTIMIZER_KEYS[key], None
    for text in values:
        name, equals, value = text.partition("=")
        if not equals:
            name, value = "", text
        try:
            converted = convert(value.strip())
        except ValueError:
            raise UsageError(f"{flag} takes [NAME=]VALUE with a number as VALUE, got {text!r}.") from None
        if name.strip():
            optimizers.setdefault(name.strip(), {})[key] = converted
        else:
            bare = converted
    return bare


def command_line_values(optimizer: tuple[str, ...], momentum: tuple[str, ...],
                        weight_decay: tuple[str, ...]) -> dict[str, Any]:
    """The config values of ``--optimizer``, ``--momentum`` and ``--weight-decay`` (per optimizer in ``optimizers``)."""
    tables: dict[str, dict[str, Any]] = {}
    return {"optimizer": split_per_optimizer(optimizer, "--optimizer", "optimizer", tables),
            "momentum": split_per_optimizer(momentum, "--momentum", "momentum", tables),
            "weight_decay": split_per_optimizer(weight_decay, "--weight-decay", "weight_decay", tables),
            "optimizers": tables}


def check_settings(config: Any) -> None:
    """Refuse a schedule, warm-up, number or ``[optimizers.NAME]`` key that cannot be right, naming the fix."""
    if config.lr_schedule not in SCHEDULES:
        raise UsageError(f"--lr-schedule must be one of {', '.join(SCHEDULES)}, got {config.lr_schedule!r}.")
    parse_warmup(config.warmup)
    _check_numbers("", {"momentum": config.momentum, "weight_decay": config.weight_decay})
    for name, table in config.optimizers.items():
        for key, value in table.items():
            if key not in PER_OPTIMIZER_KEYS:
                close = difflib.get_close_matches(key, list(PER_OPTIMIZER_KEYS), n=1)
                hint = f" Did you mean {close[0]}?" if close else ""
                raise UsageError(f"optimizers.{name}: unknown key '{key}'; it takes "
                                 f"{', '.join(PER_OPTIMIZER_KEYS)}.{hint}")
        _check_numbers(f"optimizers.{name}.", {k: table.get(k) for k in ("lr", "momentum", "weight_decay")})
        if not isinstance(table.get("optimizer", ""), str) or not isinstance(table.get("nesterov", False), bool):
            raise UsageError(f"optimizers.{name}: optimizer must be a name and nesterov true or false.")


def _check_numbers(prefix: str, values: dict[str, Any]) -> None:
    """Each given value a finite number, at least 0 (``lr`` above 0)."""
    for key, value in values.items():
        if value is None:
            continue
        flag = prefix + key if prefix else "--" + key.replace("_", "-")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                or value < 0 or (key == "lr" and value == 0):
            raise UsageError(f"{flag} must be a finite number{' above' if key == 'lr' else ' of at least'} 0, "
                             f"got {value!r}.")


def shared_settings(config: Any) -> dict[str, Any]:
    """What the bare flags set for every optimizer (an option goes to those whose class takes it)."""
    shared = {"optimizer": config.optimizer, "momentum": config.momentum,
              "nesterov": config.nesterov or None, "weight_decay": config.weight_decay}
    return {key: value for key, value in shared.items() if value is not None}


def check_optimizer_names(config: Any, names: list[str], model: str) -> None:
    """Refuse settings for an optimizer the model does not have, listing the ones it has."""
    for name in config.optimizers:
        if name not in names:
            raise UsageError(f"model '{model}' has no optimizer '{name}'; its optimizers: {', '.join(names)}.")


def changes_optimizers(config: Any) -> bool:
    """Whether the config asks for anything but the model's own optimizers as they are."""
    return any(v is not None for v in (config.optimizer, config.momentum, config.weight_decay)) \
        or bool(config.nesterov) or bool(config.optimizers)

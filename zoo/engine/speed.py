"""The speed switches: ``--fast`` and what it stands for (bf16, channels-last, torch.compile).

Each feature falls back with one line where the model or the device cannot
take it, so the same command runs everywhere.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import torch


@dataclasses.dataclass
class SpeedSettings:
    """The effective precision, memory layout and compilation of a run."""

    precision: str
    channels_last: bool
    compile: bool

    def describe(self) -> dict[str, Any]:
        """For config.json."""
        return dataclasses.asdict(self)


def resolve(config: Any, device: torch.device, say: Callable[[str], None]) -> SpeedSettings:
    """Turn ``--fast``, ``--channels-last`` and ``--compile`` into settings this device can take."""
    settings = SpeedSettings(config.precision, bool(config.channels_last), bool(config.compile))
    if config.fast:
        if device.type == "cuda":
            if settings.precision == "32":
                settings.precision = "bf16" if torch.cuda.is_bf16_supported() else "16-mixed"
            settings.channels_last = settings.compile = True
        else:
            say(f"zoo: --fast speeds up CUDA runs; on {device.type} it changes nothing.")
    return settings


def apply(recipe: Any, settings: SpeedSettings, say: Callable[[str], None]) -> None:
    """Put the networks in channels-last layout and compile them, as the settings ask."""
    if settings.channels_last:
        recipe.to(memory_format=torch.channels_last)
    if settings.compile:
        if not recipe.compilable:
            say(f"zoo: {type(recipe).__name__} cannot be compiled; running it eagerly.")
            settings.compile = False
            return
        try:
            for network in recipe.children():
                network.compile()
        except Exception as exc:  # an old torch, a missing compiler: run eagerly
            say(f"zoo: torch.compile is not available here ({type(exc).__name__}: {exc}); running eagerly.")
            settings.compile = False

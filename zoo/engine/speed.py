"""The speed switches: ``--fast`` and what it stands for (bf16, channels-last, whole-step CUDA graphs).

Each feature falls back with one line where the model or the device cannot
take it, so the same command runs everywhere.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import torch

from zoo.engine import graphed


@dataclasses.dataclass
class SpeedSettings:
    """The effective precision, memory layout and compilation of a run."""

    precision: str
    channels_last: bool
    compile: bool
    cuda_graph: bool = False

    def describe(self) -> dict[str, Any]:
        """For config.json."""
        return dataclasses.asdict(self)


def native_bf16(device: torch.device) -> bool:
    """Whether this GPU computes in bf16 natively (Ampere, compute capability 8.0, and later).

    ``torch.cuda.is_bf16_supported()`` also says yes where bf16 is emulated, and slow (a V100, a T4).
    """
    return torch.cuda.get_device_capability(device) >= (8, 0)


def resolve(config: Any, device: torch.device, say: Callable[[str], None]) -> SpeedSettings:
    """Turn ``--precision``, ``--fast``, ``--channels-last``, ``--compile`` and ``--cuda-graph`` into settings this
    device can take.

    ``--fast`` is bf16, channels-last and whole-step CUDA graphs (see bench/train_speed.py);
    torch.compile stays a separate switch.
    """
    settings = SpeedSettings(config.precision, bool(config.channels_last), bool(config.compile),
                             bool(config.cuda_graph))
    if config.fast:
        if device.type == "cuda":
            if settings.precision == "32":
                settings.precision = "bf16" if native_bf16(device) else "16-mixed"
            settings.channels_last = settings.cuda_graph = True
        else:
            say(f"zoo: --fast speeds up CUDA runs; on {device.type} it changes nothing.")
    if settings.precision == "16-mixed" and device.type != "cuda":  # its gradient scaler is CUDA's
        say(f"zoo: --precision 16-mixed needs a CUDA device; using bf16 on {device.type}.")
        settings.precision = "bf16"
    if settings.cuda_graph and device.type != "cuda":
        say(f"zoo: --cuda-graph needs a CUDA device; on {device.type} steps run eagerly.")
        settings.cuda_graph = False
    return settings


def graph_blocker(config: Any, settings: SpeedSettings, recipe: Any, optimizers: dict[str, Any],
                  distributed: bool) -> str | None:
    """Why this run's steps cannot be captured in a CUDA graph, or None when they can."""
    if not recipe.capturable:
        return (f"{type(recipe).__name__} does not declare capturable = True (its step may sync with the host "
                f"or keep Python-side state a graph would freeze)")
    if settings.precision == "16-mixed":
        return "the float16 gradient scaler checks every step on the host (bf16 needs no scaler)"
    if config.skip_nonfinite:
        return "--skip-nonfinite checks every step on the host"
    if distributed:
        return "several processes exchange gradients outside the graph"
    return graphed.unsupported_reason(optimizers)


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
            uncompile(recipe)
            settings.compile = False


def uncompile(recipe: Any) -> None:
    """Undo ``compile()`` on the recipe's networks, so they run eagerly again."""
    for network in recipe.children():
        if getattr(network, "_compiled_call_impl", None) is not None:
            network._compiled_call_impl = None

"""Devices and numeric precision: device choice, autocast and the gradient scaler."""

from __future__ import annotations

import contextlib
from typing import ContextManager

import torch

from zoo.errors import UsageError


def resolve_device(name: str) -> torch.device:
    """Turn ``auto|cpu|cuda|cuda:N|mps`` into a device, checking it exists.

    A CUDA device always has its index (``cuda`` is the current one): ``torch.cuda.set_device``
    and device comparisons need it.
    """
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError(f"--device {name!r} is not a device; use auto, cpu, cuda, cuda:N or mps.") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"--device {name}: no CUDA GPU is visible; use --device cpu (or auto).")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UsageError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s); "
                             f"use cuda:0..cuda:{torch.cuda.device_count() - 1}.")
        if device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
    elif device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise UsageError(f"--device {name}: MPS is not available here; use --device cpu (or auto).")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise UsageError(f"--device {name!r} is not supported; use auto, cpu, cuda, cuda:N or mps.")
    return device


class Precision:
    """Autocast settings and the grad scaler for ``--precision 32|bf16|16-mixed`` (as ``speed.resolve`` left it)."""

    def __init__(self, mode: str, device: torch.device) -> None:
        self.mode = mode
        self.device = device
        self.dtype: torch.dtype | None = None
        if mode == "16-mixed" and device.type != "cuda":
            raise ValueError("16-mixed precision needs a CUDA device (speed.resolve falls back to bf16)")
        if mode == "bf16":
            self.dtype = torch.bfloat16
        elif mode == "16-mixed":
            self.dtype = torch.float16
        self.scaler = torch.amp.GradScaler(device.type, enabled=(mode == "16-mixed"))
        self.cache_casts = True  # off under CUDA graphs, whose capture must not keep autocast's cached copies

    def autocast(self) -> ContextManager:
        """The context a forward pass runs in."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype, cache_enabled=self.cache_casts)

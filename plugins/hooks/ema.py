"""Builtin hook: an exponential moving average (EMA) of the model's weights, offered as the weight set ``ema``."""

from __future__ import annotations

from typing import Any

import torch

from zoo import hookimpl


class EmaHook:
    """Keeps ``ema = decay * ema + (1 - decay) * weights`` on the device, after every ``every``-th step.

    For the first ``warmup`` steps the average follows the weights (it does not start from the random
    initialisation). Floating-point tensors (parameters, BatchNorm statistics) are averaged with
    foreach ops, with no device sync; the others (BatchNorm's batch counts) are copied. The average is
    saved in every checkpoint (exact resume keeps it bitwise) and each evaluation reports its metrics
    beside the raw weights' as ``ema/<metric>``.
    """

    def __init__(self, decay: float = 0.999, warmup: int = 0, every: int = 1) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"decay must be in [0, 1), got {decay}")
        if warmup < 0:
            raise ValueError(f"warmup must be 0 or more steps, got {warmup}")
        if every < 1:
            raise ValueError(f"every must be at least 1 step, got {every}")
        self.decay, self.warmup, self.every = decay, warmup, every
        self.average: dict[str, torch.Tensor] | None = None
        self._pairs: tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]] = \
            ([], [], [], [])

    @hookimpl
    def on_train_start(self, run: Any) -> None:
        weights = run.recipe.state_dict()  # tensors sharing the live weights' storage
        if self.average is None:  # a new run (a resumed one got its average back in load_state_dict)
            self.average = {name: tensor.detach().clone() for name, tensor in weights.items()}
        else:
            self.average = {name: tensor.to(weights[name].device) for name, tensor in self.average.items()}
        floating = [name for name, tensor in weights.items() if tensor.is_floating_point()]
        others = [name for name in weights if name not in floating]
        self._pairs = ([self.average[n] for n in floating], [weights[n] for n in floating],
                       [self.average[n] for n in others], [weights[n] for n in others])

    @hookimpl
    def on_train_step(self, run: Any, step: int, losses: dict) -> None:
        if step % self.every:
            return
        averaged, live, copied, counts = self._pairs
        with torch.no_grad():
            if step <= self.warmup:
                torch._foreach_copy_(averaged, live)
            else:
                torch._foreach_lerp_(averaged, live, 1.0 - self.decay)
            if copied:
                torch._foreach_copy_(copied, counts)

    def weight_sets(self) -> dict[str, dict[str, torch.Tensor]]:
        """The averaged weights, as the weight set ``ema`` (keys of the model's state dict)."""
        return {"ema": self.average} if self.average is not None else {}

    def state_dict(self) -> dict:
        """The average, saved with each checkpoint."""
        return {"average": self.average}

    def load_state_dict(self, state: dict) -> None:
        """The average a checkpoint saved (moved to the run's device at ``on_train_start``)."""
        self.average = state["average"]

"""The training figures: summed on the device between log steps, read once per log step.

Between two log steps each step's losses are added up on the device (no sync); at a log step
the window is read in one transfer, averaged across processes, checked for finiteness and
written to ``metrics.jsonl``, the hooks' ``on_step_end`` and the progress bar, with the
compute efficiency (time not spent waiting for data) and samples per second.
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch
from tqdm import tqdm

from zoo.engine import distributed, report


class Window:
    """What the steps since the last log step added up: losses, steps, samples, time waited for data."""

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.steps = 0
        self.samples = 0
        self.waited = 0.0
        self.started = time.perf_counter()
        self.since: tuple[float, int] | None = None  # (time, step) training began at in this process

    def reset(self) -> None:
        """A log step read the window: the next one starts empty, from now (the run's clock goes on)."""
        since = self.since
        self.__init__()
        self.since = since

    def start_clock(self, step: int) -> None:
        """Training begins in this process at ``step``: the window's and the run's clocks count from now.

        Only once: epoch ends, evaluations and checkpoints count in the windows they fall in, so
        ``samples_per_sec`` is samples over wall time and the run's ETA includes them.
        """
        if self.since is None:
            self.started = time.perf_counter()
            self.since = (self.started, step)

    def run_eta(self, step: int, total_steps: int) -> float | None:
        """Seconds to the run's last step at the pace of this process so far; ``None`` before a step is done."""
        if self.since is None or step <= self.since[1]:
            return None
        began, first = self.since
        return (time.perf_counter() - began) / (step - first) * max(0, total_steps - step)

    def add(self, values: dict[str, torch.Tensor]) -> None:
        """One step's losses and figures."""
        for key, value in values.items():
            # a copy, not the tensor itself: a replayed CUDA graph overwrites its outputs in place
            self.sums[key] = self.sums[key] + value if key in self.sums else value.clone()
        self.steps += 1

    def pending(self) -> list[torch.Tensor]:
        """The sums not read yet (a checkpoint checks them for finiteness)."""
        return list(self.sums.values())

    def read(self, dist: distributed.DistContext) -> dict[str, float]:
        """The mean of each figure over the window's steps (and processes): one device sync."""
        keys = list(self.sums)
        stacked = torch.stack([self.sums[k] for k in keys]) if keys else torch.zeros(0)
        if dist.enabled and keys:
            stacked = distributed.average_tensor(stacked, dist)  # the same figures on every process
        return {("loss" if key == "model" else key): value / self.steps for key, value in zip(keys, stacked.tolist())}


def log_step(run: Any, bar: Any) -> None:
    """Read the window's losses (one device sync), check them, and report them everywhere."""
    state, window = run.state, run.window
    state.last_log_step = state.step
    if not window.steps:
        return
    losses = window.read(run.dist)
    for name, value in losses.items():
        if not math.isfinite(value):
            raise report.nonfinite_loss(name, value, state.step, report.nonfinite_fixes(run.config,
                                                                                         run.speed.precision))
    elapsed = max(time.perf_counter() - window.started, 1e-9)
    efficiency = max(0.0, 1.0 - window.waited / elapsed)
    scalars = {**losses, "compute_efficiency": efficiency, "samples_per_sec": window.samples / elapsed}
    for name, opt in run.stepper.optimizers.items():
        scalars[f"lr/{name}"] = opt.param_groups[0]["lr"]
    if run.device.type == "cuda":
        scalars["peak_memory_gib"] = torch.cuda.max_memory_allocated(run.device) / 2**30
        scalars["memory_gib"] = torch.cuda.memory_allocated(run.device) / 2**30  # flat: nothing kept per step
    if run.dist.is_main:
        run.metrics_log.write({"kind": "train", "step": state.step, "epoch": run.schedule.epochs_done(state.step),
                               "time": round(time.time(), 3), **scalars})
    run.hooks.call("on_step_end", run=run.context, step=state.step, scalars=scalars)
    if bar is not None:
        shown = {k: f"{v:.4g}" for k, v in losses.items()}
        shown["eff"] = f"{efficiency:.2f}"
        eta = window.run_eta(state.step, run.schedule.total_steps)
        if eta is not None:
            shown["run_eta"] = tqdm.format_interval(eta)
        bar.set_postfix(shown, refresh=False)
    window.reset()

"""``loss_spike_alarm``: a training hook that logs a scalar and can stop the run."""

from __future__ import annotations

import math

from zoo import hookimpl

# Scalars of on_step_end that are not losses.
_NOT_LOSSES = ("compute_efficiency", "samples_per_sec")


class LossSpikeAlarm:
    """At every log step, logs ``loss_spike_alarm/max_loss`` and stops the run above ``threshold``.

    ``watch`` names the one scalar to check (e.g. ``loss``, or ``generator`` for a
    GAN); by default every scalar of the step is checked except ``compute_efficiency``,
    ``samples_per_sec`` and ``lr/*``: the losses and what the model logged. Options come from this
    signature: ``--hook-opt loss_spike_alarm.threshold=2.5``.
    """

    def __init__(self, threshold: float = 10.0, watch: str | None = None) -> None:
        if not threshold >= 0:
            raise ValueError(f"threshold must be a number >= 0, not {threshold}")
        self.threshold = threshold
        self.watch = watch
        self.tripped: tuple[int, str, float] | None = None

    def _losses(self, scalars: dict[str, float]) -> dict[str, float]:
        if self.watch is not None:
            return {self.watch: scalars[self.watch]} if self.watch in scalars else {}
        return {name: value for name, value in scalars.items()
                if name not in _NOT_LOSSES and not name.startswith("lr/")}

    @hookimpl
    def on_train_start(self, run):
        self.tripped = None

    @hookimpl
    def on_step_end(self, run, step, scalars):
        losses = self._losses(scalars)
        if not losses:
            return
        name, value = max(losses.items(), key=lambda item: item[1])
        run.log("loss_spike_alarm/max_loss", value)  # metrics.jsonl and every on_log hook (tensorboard)
        if value > self.threshold or not math.isfinite(value):
            self.tripped = (step, name, value)
            run.request_stop(f"loss_spike_alarm: '{name}' is {value:.4g} at step {step}, "
                             f"above the threshold {self.threshold:g}")

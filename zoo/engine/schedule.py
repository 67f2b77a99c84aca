"""The run's schedule: its length, and at each step what is due (log, epoch end, evaluate, save).

At a step that ends an epoch and is also an ``--eval-every`` step, the evaluation comes before
the save, so the checkpoint written there knows whether it is the best one.
"""

from __future__ import annotations

from dataclasses import dataclass

from zoo.config import TrainConfig
from zoo.engine.state import TrainState

DEFAULT_EPOCHS = 10


@dataclass
class Limit:
    """An option that ends the run: its name, its value and the step it ends the run at."""

    option: str
    value: int
    ends_at: int


class Schedule:
    """When to log, evaluate and save, and when the run ends, from the config and the epoch's length."""

    def __init__(self, config: TrainConfig, steps_per_epoch: int) -> None:
        self.config = config
        self.steps_per_epoch = steps_per_epoch
        self.batches_per_epoch = steps_per_epoch * config.accumulate
        self._ending = min(self.limits(), key=lambda limit: limit.ends_at)  # the config is fixed for the run

    def limits(self) -> list[Limit]:
        """The options that end the run (``--max-steps``, ``--epochs``: 10 when neither is given)."""
        limits = []
        if self.config.max_steps is not None:
            limits.append(Limit("max-steps", self.config.max_steps, self.config.max_steps))
        if self.config.epochs is not None or self.config.max_steps is None:
            epochs = self.config.epochs or DEFAULT_EPOCHS
            limits.append(Limit("epochs", epochs, epochs * self.steps_per_epoch))
        return limits

    def ending_limit(self) -> Limit:
        """The limit that ends the run (``--max-steps`` where both end it at the same step)."""
        return self._ending

    @property
    def total_steps(self) -> int:
        """The step at which the run ends."""
        return self.ending_limit().ends_at

    @property
    def evaluates(self) -> bool:
        """Whether the run evaluates at all (``--eval-every 0`` switches it off)."""
        return self.config.eval_every != 0

    def running(self, state: TrainState) -> bool:
        """Whether steps are left to take."""
        return state.step < self.total_steps

    def complete(self, state: TrainState) -> bool:
        """Whether the run has reached its length, saved, with nothing owed: a resume has nothing to do."""
        return state.last_save_step == state.step and state.step >= self.total_steps and not state.eval_owed

    def log_due(self, state: TrainState) -> bool:
        """Every ``--log-every`` steps."""
        return state.step % self.config.log_every == 0

    def epoch_ended(self, state: TrainState) -> bool:
        """Whether this step used the epoch's last batches."""
        return state.position >= self.batches_per_epoch

    def eval_due(self, state: TrainState, epoch_ended: bool) -> bool:
        """At each epoch's end by default, else every ``--eval-every`` steps; the run's last step has its own."""
        every = self.config.eval_every
        due = epoch_ended if every is None else bool(every) and state.step % every == 0
        return due and state.last_eval_step != state.step and state.step < self.total_steps

    def save_due(self, state: TrainState, epoch_ended: bool) -> bool:
        """At each epoch's end by default, else every ``--save-every`` steps; the run's last step has its own."""
        every = self.config.save_every
        due = epoch_ended if every is None else bool(every) and state.step % every == 0
        return due and state.last_save_step != state.step and state.step < self.total_steps

    def epochs_done(self, step: int) -> float:
        """Epochs completed at ``step``, as a fraction (e.g. 1.5 halfway through the second)."""
        return round(step / self.steps_per_epoch, 4)

    def epochs_to_extend(self, state: TrainState) -> int:
        """The smallest ``--epochs`` that gives a complete run more steps."""
        return max(self.ending_limit().value, state.step // self.steps_per_epoch) + 1

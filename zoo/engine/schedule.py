"""The run's schedule: its length, and at each step what is due (log, epoch end, evaluate, save).

At a step that ends an epoch and is also an ``--eval-every`` step, the evaluation comes before
the save, so the checkpoint written there knows whether it is the best one. Epoch-end
checkpoints are kept to a share of the run's time (``SaveBudget``), so tiny epochs do not
write one at every step.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator

from zoo.config import TrainConfig
from zoo.engine import distributed
from zoo.engine.state import TrainState

DEFAULT_EPOCHS = 10
SAVE_SHARE = 0.02  # the most of a run's wall time its epoch-end checkpoints may take (see SaveBudget)


@dataclass
class Limit:
    """An option that ends the run: its name, its value and the step it ends the run at."""

    option: str
    value: int
    ends_at: int


class SaveBudget:
    """Keeps a run's epoch-end checkpoints to about ``SAVE_SHARE`` of its wall time, however short its epochs.

    The rule: an epoch's end gets a checkpoint when the time since the last checkpoint was written is at least
    ``1 / SAVE_SHARE - 1`` (49) times what writing it took; otherwise that epoch goes without one. So the first
    epoch's end in a process always has one; epochs longer than 49 checkpoints' time each have one; shorter ones
    have one every so many. Every checkpoint counts (``--save-every``, the run's end, a stop), but only epoch-end
    ones are ever left out.
    """

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self.clock = clock
        self.last_end: float | None = None  # when the last checkpoint of this process was written
        self.last_cost = 0.0  # the seconds it took

    def allows(self) -> bool:
        """Whether an epoch-end checkpoint is due now."""
        if self.last_end is None:
            return True
        return self.clock() - self.last_end >= self.last_cost * (1 / SAVE_SHARE - 1)

    @contextmanager
    def charged(self) -> Iterator[None]:
        """Times the block as the newest checkpoint's writing."""
        began = self.clock()
        try:
            yield
        finally:
            self.last_end = self.clock()
            self.last_cost = self.last_end - began


class Schedule:
    """When to log, evaluate and save, and when the run ends, from the config and the epoch's length."""

    def __init__(self, config: TrainConfig, steps_per_epoch: int, dist: distributed.DistContext | None = None) -> None:
        """``dist``: the run's processes, which agree on each epoch-end checkpoint (each times its own)."""
        self.config = config
        self.steps_per_epoch = steps_per_epoch
        self.batches_per_epoch = steps_per_epoch * config.accumulate
        self._ending = min(self.limits(), key=lambda limit: limit.ends_at)  # the config is fixed for the run
        self.dist = dist
        self.save_budget = SaveBudget()

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

    def final_eval_due(self, state: TrainState, signalled: bool) -> bool:
        """After the loop: the run's own evaluation at its last step, or where a hook stopped it. A signal's stop
        before the end has none, as a straight run evaluates no such step (one due there stays owed)."""
        return self.evaluates and state.last_eval_step != state.step and not (signalled and self.running(state))

    def save_due(self, state: TrainState, epoch_ended: bool) -> bool:
        """Every ``--save-every`` steps; without it, at epochs' ends as the ``SaveBudget`` allows. The run's last step
        has its own."""
        every = self.config.save_every
        due = epoch_ended if every is None else bool(every) and state.step % every == 0
        due = due and state.last_save_step != state.step and state.step < self.total_steps
        return due and (every is not None or self._budget_allows())

    def _budget_allows(self) -> bool:
        """The save budget's answer; in a run of several processes, a save anywhere is a save everywhere."""
        allowed = self.save_budget.allows()
        if self.dist is not None and self.dist.enabled:
            allowed = bool(distributed.max_flag(int(allowed), self.dist))
        return allowed

    def epochs_done(self, step: int) -> float:
        """Epochs completed at ``step``, as a fraction (e.g. 1.5 halfway through the second)."""
        return round(step / self.steps_per_epoch, 4)

    def epochs_to_extend(self, state: TrainState) -> int:
        """The smallest ``--epochs`` that gives a complete run more steps."""
        return max(self.ending_limit().value, state.step // self.steps_per_epoch) + 1

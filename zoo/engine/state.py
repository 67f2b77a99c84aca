"""The training state: where a run is (step, epoch, position), what it owes, what it skipped, its best.

The position is counted in micro-batches as the loop takes them and saved in samples of the
epoch's whole order too, so a run resumed with another number of processes (the same global
batch, another per-process batch) goes on where it was.

One object, saved in every checkpoint through ``state_dict``/``load_state_dict``; the
checkpoint files never know its keys. The markers of what was last done at which step
(logged, evaluated, saved) are not saved: a resumed run starts from its checkpoint's step.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from zoo.engine.bad_items import BadItems


@dataclass
class TrainState:
    """Step, epoch, position in the epoch (micro-batches), the best evaluation, the owed one, skipped items."""

    bad_items: BadItems
    step: int = 0
    epoch: int = 0
    position: int = 0  # micro-batches done in the current epoch
    # samples one micro-batch takes from the epoch's order, over every process (batch x processes)
    samples_per_batch: int = 0
    best: dict[str, Any] | None = None  # {"step", "value", "metric", "saved"}
    # an evaluation that was due but did not finish (a stop request, an unreadable test file):
    # the checkpoint says so and a resumed run does it first
    eval_owed: bool = False
    skipped_nonfinite: int = 0
    # not saved: what was done at which step in this process
    last_log_step: int = -1
    last_eval_step: int = -1
    last_save_step: int = -1
    saved_eval_owed: bool = False
    last_eval: dict[str, float] = field(default_factory=dict)

    def advance(self, micro_batches: int) -> None:
        """One training step done, fed by ``micro_batches`` batches."""
        self.step += 1
        self.position += micro_batches

    @property
    def samples(self) -> int:
        """Samples of the epoch's whole order done (every process's): where its next micro-batches start."""
        return self.position * self.samples_per_batch

    def next_epoch(self) -> None:
        """The training data was seen once more: the next epoch starts at its beginning."""
        self.epoch += 1
        self.position = 0

    def note_evaluation(self, metrics: dict[str, float], metric: tuple[str, str] | None) -> None:
        """Keep the metrics and move the best to this step where ``metric`` (name, "max"/"min") improved."""
        self.last_eval = metrics
        self.last_eval_step = self.step
        self.eval_owed = False
        if not metric or metric[0] not in metrics:
            return
        value = metrics[metric[0]]
        best = self.best
        if best is None or (value > best["value"] if metric[1] == "max" else value < best["value"]):
            self.best = {"step": self.step, "value": value, "metric": metric[0], "saved": False}

    def unsaved(self) -> bool:
        """Whether this step, or what it owes (an evaluation), differs from the newest checkpoint."""
        return self.last_save_step != self.step or self.saved_eval_owed != self.eval_owed

    def mark_best_saved(self) -> None:
        """The checkpoint being written is the best one's (it says so itself, so pruning keeps it)."""
        if self.best is not None and self.best["step"] == self.step:
            self.best["saved"] = True

    def mark_saved(self) -> None:
        """The checkpoint of this step was written."""
        self.last_save_step = self.step
        self.saved_eval_owed = self.eval_owed

    def protected_steps(self) -> tuple[int, ...]:
        """Checkpoints pruning must keep: the best one, once written."""
        return (self.best["step"],) if self.best and self.best.get("saved") else ()

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint keeps of the run's progress (its keys are the checkpoint format's)."""
        counted = {"samples": self.samples} if self.samples_per_batch else {}
        return {"step": self.step, "epoch": self.epoch, "position": self.position, **counted, "best": self.best,
                "skipped_nonfinite": self.skipped_nonfinite, "eval_owed": self.eval_owed,
                "bad_samples": self.bad_items.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Take back a checkpoint's progress; the run is then saved at that step."""
        self.step, self.epoch, self.position = state["step"], state["epoch"], self._saved_position(state)
        self.best = state.get("best")
        self.eval_owed = self.saved_eval_owed = bool(state.get("eval_owed", False))
        self.skipped_nonfinite = state.get("skipped_nonfinite", 0)
        self.bad_items.load_state_dict(state.get("bad_samples") or {})
        self.last_save_step = self.step

    def _saved_position(self, state: dict[str, Any]) -> int:
        """A checkpoint's position in this run's micro-batches: from its samples done, whatever number of processes
        saved it; an older checkpoint counts micro-batches only (of as many processes as now: ``saving`` checks)."""
        if "samples" not in state or not self.samples_per_batch:
            return state["position"]
        batches, rest = divmod(state["samples"], self.samples_per_batch)
        if rest:
            raise ValueError(f"{state['samples']} samples done is not a whole number of batches of "
                             f"{self.samples_per_batch}")
        return batches

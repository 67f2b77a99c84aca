"""A run's checkpoints: what goes in one (from each owner of saved state), writing it, resuming from it.

A checkpoint holds the networks' weights and, gathered here from their owners, the training
state (``TrainState``), the optimizers, schedulers and grad scaler (``StepRunner``), the
hooks' states (``HookCaller``), the random generators and what the run must match to resume
(its model, training split size and global batch). ``checkpoint.py`` writes and reads the
files and knows none of these keys. Pruning keeps the best checkpoint by the model's metric.

A run resumes with any number of processes that splits its global batch evenly: the per-process
batch is scaled to keep it (``per_process_batch``), the data position is in samples of the
epoch's whole order (``TrainState``), the optimizers, schedulers and grad scaler are the same on
every process (saved once, by rank 0), and each process takes back its own random generators;
one the saving run did not have seeds them from (seed, rank, step) instead.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch

from zoo.engine import checkpoint, distributed, record, report, rng
from zoo.errors import RunError, UsageError, ZooError, first_line

REQUIRED_KEYS = frozenset({"model", "step", "epoch", "position", "train_size", "optimizers", "schedulers", "rng"})


class Checkpoints:
    """Saves the run at its current step and resumes it from its newest whole checkpoint."""

    def __init__(self, run: Any) -> None:
        self.run = run
        self.run_dir, self.dist, self.report = run.run_dir, run.dist, run.report
        # called once, on rank 0, when the run has written its first checkpoint (--overwrite's old run goes then)
        self.after_first_save: list[Callable[[], None]] = []

    # ------------------------------------------------------------ contents
    def identity(self) -> dict[str, Any]:
        """What a resumed run must match: the model, the training split's size, the global batch (and, in a
        checkpoint, the number of processes that made it)."""
        run, world = self.run, self.dist.world_size
        return {"model": run.plan.model.qualified_name, "train_size": len(run.train_set), "world_size": world,
                "global_batch": run.config.batch_size * world * run.config.accumulate}

    def state_dict(self) -> dict[str, Any]:
        """Everything but the weights, from each owner; the keys are the checkpoint format's."""
        run = self.run
        state = {**self.identity(), **run.state.state_dict(), **run.stepper.state_dict(),
                 "rng": rng.capture(), "hooks": run.hooks.state_dict()}
        if self.dist.enabled:
            state["rng_by_rank"] = distributed.gather_objects(state["rng"], self.dist)
        return state

    def load_state_dict(self, model_state: dict[str, torch.Tensor], state: dict[str, Any], folder: Path) -> None:
        """Give each owner back its part of a checkpoint, after checking the run matches it."""
        run = self.run
        self._check_identity(state, folder)
        hint = "resume with the same model"
        if "model_options" not in run.recorded:  # saved before defaults were recorded: the model's may have changed
            hint = record.unrecorded_defaults_hint(run.plan.model, run.model_options, run.config.model_opt,
                                                   self.run_dir)
        checkpoint.load_into(run.recipe, model_state, folder, run.plan.model.name, hint)
        run.stepper.load_state_dict(state)
        run.state.load_state_dict(state)
        run.context.step, run.context.epoch = run.state.step, run.state.epoch
        run.hooks.load_state_dict(state.get("hooks", {}))
        self._restore_rng(state)

    def _restore_rng(self, state: dict[str, Any]) -> None:
        """This process's generators as the checkpoint saved them (rank ``r`` takes saving rank ``r``'s); a process
        the saving run did not have (a resume with more processes) seeds them from (seed, rank, step)."""
        saved, rank = state.get("rng_by_rank") or [state["rng"]], self.dist.rank
        if rank < len(saved):
            rng.restore(saved[rank])
        else:
            rng.seed_everything(rng.derive_seed(self.run.config.seed, "rank", rank, "resumed", state["step"]))

    def _check_identity(self, state: dict[str, Any], folder: Path) -> None:
        own = self.identity()
        if state.get("model") != own["model"]:
            raise UsageError(f"checkpoint {folder} is of model '{state.get('model')}', not '{own['model']}'; "
                             f"resume it with its own model.")
        if state.get("train_size") != own["train_size"]:
            raise UsageError(f"the training split now has {own['train_size']} samples but {folder} was made "
                             f"with {state.get('train_size')}; resume with the same data.")
        saved_world, saved_batch = state.get("world_size", 1), state.get("global_batch")
        if saved_batch is None and saved_world != own["world_size"]:  # saved before checkpoints kept it
            raise UsageError(f"{folder} was made by {saved_world} process(es), this run has {own['world_size']}, "
                             f"and predates resumes with another number; resume with --nproc-per-node {saved_world}.")
        if saved_batch is not None and saved_batch != own["global_batch"]:
            raise UsageError(f"{folder} was made with a global batch of {saved_batch} but this run's is "
                             f"{own['global_batch']}; resume with the batch_size config.json recorded.")

    # -------------------------------------------------------------- saving
    def save(self) -> Path:
        """Write the checkpoint of the current step atomically (rank 0), prune old ones, tell the hooks."""
        run, state = self.run, self.run.state
        self._check_finite()  # waits for the steps queued on the device: training's time, not the save's
        with run.schedule.save_budget.charged():  # what it takes spaces out the epoch-end checkpoints that follow
            state.mark_best_saved()
            contents = self.state_dict()
            folder = checkpoint.checkpoint_dir(self.run_dir, state.step)
            if self.dist.is_main:
                self._write(contents)
            state.mark_saved()
            if self.dist.is_main:
                checkpoint.prune(self.run_dir, run.config.keep, state.protected_steps())
            distributed.barrier(self.dist)  # rank 0 has written it when this returns
        while self.dist.is_main and self.after_first_save:
            self.after_first_save.pop()()
        run.hooks.call("on_checkpoint_saved", run=run.context, step=state.step, path=folder)
        return folder

    def _write(self, contents: dict[str, Any]) -> None:
        step = self.run.state.step
        try:
            checkpoint.save(self.run_dir, step, self.run.recipe.state_dict(), contents, self.run.hooks.weight_sets())
        except Exception as exc:  # a full disk, a file-size limit, a vanished folder...
            steps = checkpoint.list_steps(self.run_dir)
            kept = f"{steps[-1][1].name} is intact" if steps else "no earlier checkpoint exists"
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc).splitlines()[0]
            raise report.save_failed(step, self.run_dir, reason, kept) from exc

    def _check_finite(self) -> None:
        """Refuse to save weights or a step whose loss is not finite (one device sync)."""
        run = self.run
        tensors = [p.detach() for p in run.recipe.parameters()]
        finite = torch.stack([torch.isfinite(t).all() for t in tensors]).all() if tensors else torch.tensor(True)
        pending = run.window.pending()
        if pending:
            finite = finite & torch.isfinite(torch.stack(pending)).all().to(finite.device)
        if not bool(finite):
            raise report.nonfinite_weights(run.state.step, report.nonfinite_fixes(run.config, run.speed.precision))

    def saved_or_save(self) -> Path:
        """The checkpoint of this step, written now unless it already is (with what it owes)."""
        if self.run.state.unsaved():
            return self.save()
        return checkpoint.checkpoint_dir(self.run_dir, self.run.state.step)

    def save_before_failing(self, fix: str, skipping_helps: bool) -> str:
        """Save the steps done before a sample stopped the run; say how to go on once ``fix`` is done."""
        step = self.run.state.step
        if self.dist.enabled:  # the other processes are not at a step's end: no saving alone
            return report.after_sample_failure(self.run_dir, fix, skipping_helps, job=True)
        error = None
        if step and self.run.state.unsaved():
            try:
                self.save()
            except ZooError as exc:
                error = first_line(exc)
        return report.after_sample_failure(self.run_dir, fix, skipping_helps, step=step, save_error=error)

    # ------------------------------------------------------------ resuming
    def resume(self) -> None:
        """Load the newest whole checkpoint into the run (rank 0 chooses; every process loads the same)."""
        steps = checkpoint.list_steps(self.run_dir)
        if not steps:
            self.report.no_checkpoint_yet(self.run_dir)
            if self.dist.is_main:
                self.run.metrics_log.clear()
            return
        model_state, state, folder = self._agreed_newest(steps)
        self.load_state_dict(model_state, state, folder)
        if self.dist.is_main:
            self.run.metrics_log.drop_after(self.run.state.step)  # logged after the checkpoint: they come again
        self.report.resuming(self.run_dir, self.run.state)

    def _agreed_newest(self, steps: list[tuple[int, Path]]) -> tuple[dict, dict, Path]:
        """The newest whole checkpoint, as rank 0 chose it (setting damaged ones aside)."""
        if not self.dist.enabled:
            return self._newest_whole(steps)
        if self.dist.is_main:
            try:
                chosen = self._newest_whole(steps)
            except BaseException:
                distributed.broadcast_object(None, self.dist)
                raise
            distributed.broadcast_object(str(chosen[2]), self.dist)
            return chosen
        folder = distributed.broadcast_object(None, self.dist)
        if folder is None:
            raise RunError(f"no whole checkpoint to resume in {self.run_dir}.")
        return (*checkpoint.load(Path(folder)), Path(folder))

    def _newest_whole(self, steps: list[tuple[int, Path]]) -> tuple[dict, dict, Path]:
        """Load the newest checkpoint that is whole; damaged newer ones are set aside with a notice."""
        damaged: list[tuple[Path, str]] = []
        for _, folder in reversed(steps):
            try:
                model_state, state = checkpoint.load(folder)
                missing = sorted(REQUIRED_KEYS - set(state))
                if missing:
                    raise checkpoint.CheckpointError(folder, f"lacks {', '.join(missing)}")
            except checkpoint.CheckpointError as exc:
                damaged.append((folder, exc.reason))
                continue
            for bad, reason in damaged:
                self.report.damaged_set_aside(bad, reason, checkpoint.set_aside(bad))
            return model_state, state, folder
        listed = "; ".join(f"{bad.name} {reason}" for bad, reason in damaged)
        raise RunError(f"no whole checkpoint in {self.run_dir / 'checkpoints'} ({listed}); "
                       f"start the run again with --overwrite.")


def per_process_batch(batch: int, saved_world: int, world: int, accumulate: int = 1) -> int:
    """The per-process batch that keeps a run's global batch (``batch`` on each of ``saved_world`` processes) over
    ``world`` processes; a usage error naming the numbers of processes that can, where ``world`` cannot."""
    total = batch * saved_world
    if total % world:
        raise report.batch_not_divisible(total, accumulate, world, process_counts(total, world))
    return total // world


def process_counts(total: int, near: int, most: int = 8) -> list[int]:
    """Up to ``most`` numbers of processes that split a batch of ``total`` samples evenly, those nearest ``near``
    (by ratio)."""
    divisors = [count for count in range(1, total + 1) if total % count == 0]
    return sorted(sorted(divisors, key=lambda count: (max(count / near, near / count), count))[:most])

"""The training loop, read top to bottom; every piece it calls lives in a module named after it.

::

    fit(run)
    ├── complete already?  say how to extend it; return
    ├── status.json says running; on_train_start; an evaluation the checkpoint owes
    ├── while steps are left and no stop is asked (stopping.py):
    │   ├── batches = feed.next_step()           the step's micro-batches on the device (epochs.py)
    │   ├── train_step(run, batches)             forwards, backwards, optimizer steps (step.py)
    │   ├── log due?        progress.log_step    one device sync per log step (progress.py)
    │   ├── epoch ended?    periodic.end_epoch   schedulers, caches, on_epoch_end (periodic.py)
    │   ├── evaluate due?   periodic.evaluate    before the save, so the best is marked (schedule.py)
    │   └── save due?       checkpoints.save     state from every owner, atomic (saving.py)
    ├── the last log, evaluation and checkpoint
    ├── on_train_end; status.json and the card say how it ended (status.py, zoo/card.py)
    └── what was skipped, why it stopped, where its checkpoint is (report.py)

A failure in a sample or a dataset saves the steps done first and says how to go on; a
signal saves and raises ``Interrupted``.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch

from zoo.engine import checkpoint, periodic, progress, report, status
from zoo.engine.bad_items import BadSampleError, WrongItemError
from zoo.engine.epochs import EpochFeed


@dataclass
class TrainResult:
    """Where a finished run left things."""

    run_dir: Path
    step: int
    epoch: int
    checkpoint: Path | None
    metrics: dict[str, float]


def fit(run: Any) -> TrainResult:
    """Train until the run's length or a stop; save at the end. Raises ``Interrupted`` on a signal."""
    state, schedule, checkpoints = run.state, run.schedule, run.checkpoints
    if schedule.complete(state):
        run.report.already_complete(run.run_dir, state, schedule)
        return _result(run, checkpoint.checkpoint_dir(run.run_dir, state.step))
    run.report.start(run)
    feed = EpochFeed(run, state, run.window)
    run.recipe.train()
    with _training(run, feed) as outcome:
        run.hooks.call("on_train_start", run=run.context)
        if state.eval_owed and schedule.evaluates:
            periodic.evaluate_now(run)  # due at the checkpoint's step, not done before it was saved
        while schedule.running(state) and not run.stopper.should_stop():
            train_step(run, feed.next_step())
            feed.stepped()
            if schedule.log_due(state):
                progress.log_step(run, feed.bar)
            epoch_ended = schedule.epoch_ended(state)
            if epoch_ended:
                feed.close()
                periodic.end_epoch(run)
            if schedule.eval_due(state, epoch_ended):
                periodic.evaluate_unless_stopping(run)
            if schedule.save_due(state, epoch_ended) and not run.stopper.signalled():
                checkpoints.save()
            if run.hooks.unsaved:  # saved at a step's end, where the run can go on once the hook is fixed
                raise report.hook_state_failed(_hook_state_left_out(run), run.run_dir)
        feed.close()
        if state.last_log_step != state.step:
            progress.log_step(run, None)
        if schedule.final_eval_due(state, run.stopper.signalled()):
            periodic.evaluate_unless_stopping(run)  # stopping: owed, and done first by the resumed run
        saved = checkpoints.saved_or_save()
        outcome.status = run.stopper.status
    if run.hooks.unsaved:  # the run ended (or was stopped) with its steps saved: said, not raised
        run.report.hook_state_warning(_hook_state_left_out(run))
    if run.stopper.signal is not None:
        raise report.interrupted(run.stopper.signal, state.step, run.run_dir)
    run.report.finished(run, saved)
    return _result(run, saved)


def train_step(run: Any, batches: list[Any]) -> None:
    """One step through the step runner; its figures join the log window and reach ``on_train_step``."""
    values = run.stepper.step(batches)
    run.state.advance(run.config.accumulate)
    run.context.step, run.context.epoch = run.state.step, run.state.epoch
    run.window.samples += run.config.batch_size * run.config.accumulate
    if values is not None:
        run.window.add(values)
        run.hooks.call("on_train_step", run=run.context, step=run.state.step, losses=values)


@dataclass
class _Outcome:
    status: str = "failed"  # until the loop reaches its end


@contextmanager
def _training(run: Any, feed: EpochFeed) -> Iterator[_Outcome]:
    """Signals caught while training; failures said (steps saved first); ``on_train_end`` in any case; the
    run's status recorded when it starts and after it ends (``status.json``, the card)."""
    outcome = _Outcome()
    with run.stopper.catching_signals(), status.recorded(run, outcome):  # status.json and the card, around it
        try:
            with _failures_said(run):
                yield outcome
        finally:
            try:
                feed.close()
                run.hooks.call("on_train_end", run=run.context, status=outcome.status)
            finally:
                run.metrics_log.close()


@contextmanager
def _failures_said(run: Any) -> Iterator[None]:
    """An unreadable sample or a wrong dataset item: the steps done are saved first, and how to go on is said."""
    try:
        yield
    except BadSampleError as exc:
        after = run.checkpoints.save_before_failing("replace the file (same name)", True)
        raise BadSampleError(f"{exc}\n{after}", one_process=exc.one_process) from None
    except WrongItemError as exc:
        after = run.checkpoints.save_before_failing("fix the dataset plugin", False)
        raise WrongItemError(f"{exc}\n{after}", one_process=exc.one_process) from None
    except torch.OutOfMemoryError:
        raise report.out_of_memory(run.state.step + 1, run.config.batch_size) from None


def _hook_state_left_out(run: Any) -> str:
    return report.hook_state_left_out(run.hooks.unsaved[0], run.state.last_save_step)


def _result(run: Any, saved: Path | None) -> TrainResult:
    return TrainResult(run.run_dir, run.state.step, run.state.epoch, saved, run.state.last_eval)

"""What a run does at set steps besides training: an epoch's end and an evaluation on the test split."""

from __future__ import annotations

import itertools
import sys
from contextlib import contextmanager
from typing import Any, Iterator

import torch
from tqdm import tqdm

from zoo.engine import cache, status
from zoo.engine.evaluate import evaluate


def end_epoch(run: Any) -> None:
    """The training data was seen once more: schedulers step, decoded caches are published, hooks hear of it."""
    run.stepper.step_schedulers()
    run.state.next_epoch()
    run.context.epoch = run.state.epoch
    if isinstance(run.train_set, cache.DecodedCache):
        if run.device_decoder is not None:  # what the epoch left out, decoded as the rest was
            run.device_decoder.fill_rest(run.config.batch_size)
        run.train_set.finalize()  # the first epoch filled it: publish it for the next
    run.hooks.call("on_epoch_end", run=run.context, epoch=run.state.epoch)


def evaluate_unless_stopping(run: Any) -> None:
    """Evaluate now, or, when a signal asks to stop, leave the evaluation owed to the resumed run."""
    if run.stopper.signalled():  # evaluating could take minutes
        run.state.eval_owed = True
    else:
        evaluate_now(run)


def evaluate_now(run: Any) -> dict[str, float]:
    """Evaluate on the test split (and each weight set the hooks offer, as ``<set>/<metric>``); log the
    metrics, move the best (by ``--best-metric``, else the model's metric), tell the hooks, say them, record
    them (status.json, the card)."""
    state = run.state
    state.last_eval_step = state.step
    state.eval_owed = True  # until it completes
    metrics = _evaluate(run, "eval")
    if isinstance(run.test_set, cache.DecodedCache):
        run.test_set.finalize()  # the first evaluation filled it: publish it for the next
    for name, weights in run.hooks.weight_sets().items():
        with _weights_in(run.recipe, weights):
            metrics.update({f"{name}/{key}": value for key, value in _evaluate(run, f"eval {name}").items()})
    state.note_evaluation(metrics, run.best_metric)
    if run.best_metric and run.best_metric[0] not in metrics:
        run.report.best_metric_missing(run.best_metric[0], metrics)
    if run.dist.is_main:
        run.metrics_log.write({"kind": "eval", "step": state.step, "epoch": run.schedule.epochs_done(state.step),
                               **metrics})
    run.hooks.call("on_eval_end", run=run.context, step=state.step, metrics=metrics)
    run.report.evaluated(state.step, metrics)
    status.evaluated(run)  # the best in status.json, the metrics in the card
    return metrics


def _evaluate(run: Any, label: str) -> dict[str, float]:
    """The model's metrics on the test split, with a progress bar."""
    batches = len(run.test_loader) if run.config.eval_batches is None else \
        min(len(run.test_loader), run.config.eval_batches)
    bar = tqdm(total=batches, desc=label, unit="batch", leave=False, file=sys.stderr,
               dynamic_ncols=True, mininterval=0.5, disable=not run.dist.is_main)
    try:
        return evaluate(run.recipe, run.loss_fn, itertools.islice(run.test_loader, batches), run.device, run.precision.autocast,
                        run.config.seed, run.state.bad_items, progress=bar)
    finally:
        bar.close()


@contextmanager
def _weights_in(recipe: Any, weights: dict[str, torch.Tensor]) -> Iterator[None]:
    """Within the block the model holds ``weights``; after it, its own again, bitwise (copied in place, so the
    optimizers' and hooks' references to the parameters stay valid)."""
    own = {key: value.detach().clone() for key, value in recipe.state_dict().items()}
    recipe.load_state_dict(weights)
    try:
        yield
    finally:
        recipe.load_state_dict(own)

"""Every line a training run prints, and the errors it raises about its own course.

The loop and its pieces call these by what happened; the words live here. Lines go to
stderr through tqdm (so they do not break a progress bar); processes other than rank 0
of a job stay silent. Refusals of a bad set-up (a usage error, a plugin's broken contract)
are raised beside the check that finds them (``assemble``, ``saving``, ``contracts``).
"""

from __future__ import annotations

import signal
import sys
from typing import Any

from tqdm import tqdm

from zoo.config import TrainConfig
from zoo.engine.schedule import Schedule
from zoo.engine.state import TrainState
from zoo.errors import PluginError, RunError, UsageError, ZooError


class Interrupted(ZooError):
    """The run stopped on SIGINT/SIGTERM after saving; exit 130 or 143."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class Report:
    """Says what a run does, on rank 0 only."""

    def __init__(self, is_main: bool = True) -> None:
        self.quiet = not is_main
        self._said_best_missing = False

    def say(self, line: str) -> None:
        """One line on stderr (nothing on processes other than rank 0)."""
        if not self.quiet:
            tqdm.write(line, file=sys.stderr)

    def notice(self, line: str) -> None:
        """A line prefixed ``zoo:``."""
        self.say(f"zoo: {line}")

    def best_metric_missing(self, name: str, metrics: dict[str, float]) -> None:
        """Once a run: the metric that picks the best checkpoint is not among an evaluation's."""
        if self._said_best_missing:
            return
        self._said_best_missing = True
        self.notice(f"warning: the evaluation reports no '{name}', so no checkpoint is marked best; it reports: "
                    f"{', '.join(metrics) or 'nothing'} (pick one with --best-metric).")

    # ------------------------------------------------------------------ start
    def start(self, run: Any) -> None:
        """The run's shape, before its first step: parts, data, parameters, device, folder."""
        plan, config, dist = run.plan, run.config, run.dist
        if dist.enabled:
            per_step = config.batch_size * dist.world_size * config.accumulate
            self.notice(f"{dist.world_size} processes; global batch {config.batch_size} x {dist.world_size} x "
                        f"accumulate {config.accumulate} = {per_step}")
        params = sum(p.numel() for p in run.recipe.parameters())
        loss = plan.loss.qualified_name if plan.loss else "no loss"
        self.notice(f"{plan.model.qualified_name} + {loss} on {plan.dataset.qualified_name} "
                    f"{tuple(run.train_set.image_shape)} ({len(run.train_set)} train / {len(run.test_set)} test), "
                    f"{params:,} parameters, device {run.device}, {run.schedule.steps_per_epoch} steps/epoch, "
                    f"run dir {run.run_dir}")

    def no_decode_on_device(self, reason: str) -> None:
        self.notice(f"no --decode-on-device: {reason}; the loader's workers prepare the samples.")

    def no_cache(self, dataset: str) -> None:
        self.notice(f"dataset '{dataset}' has no decoded form to cache; --cache-decoded changes nothing.")

    def cache_place(self, path: Any, ready: bool) -> None:
        self.notice(f"decoded images {'read from' if ready else 'kept, as the first epoch decodes them, in'} {path}")

    def sync_bn_alone(self) -> None:
        self.notice("--sync-bn acts across several processes (--nproc-per-node N); with one process BatchNorm "
                    "is unchanged.")

    def froze(self, count: int, patterns: list[str]) -> None:
        self.notice(f"froze {count} parameter tensor(s) matching {', '.join(patterns)}")

    def idle_optimizers(self, names: list[str]) -> None:
        self.notice(f"no trainable parameter left for optimizer {', '.join(names)}; its loss is logged, not stepped.")

    def already_complete(self, run_dir: Any, state: TrainState, schedule: Schedule) -> None:
        """A resume of a run that has nothing left to do: how to give it more steps."""
        limit = schedule.ending_limit()
        if limit.option == "max-steps":
            extend = f"extend it with --max-steps beyond {state.step}."
        else:
            extend = (f"its --epochs {limit.value} ends it at step {limit.ends_at}; extend it with --epochs "
                      f"{schedule.epochs_to_extend(state)} or more.")
        self.notice(f"{run_dir} is already complete at step {state.step}; {extend}")

    def resuming(self, run_dir: Any, state: TrainState) -> None:
        self.notice(f"resuming {run_dir} from step {state.step} (epoch {state.epoch + 1}).")

    def batch_rescaled(self, saved_world: int, world: int, saved_batch: int, batch: int, accumulate: int) -> None:
        """A resume with another number of processes: the per-process batch that keeps the global batch."""
        self.notice(f"resumed with {world} process(es) instead of {saved_world}: per-process batch {saved_batch} -> "
                    f"{batch} keeps the global batch {batch * world * accumulate}")

    def no_checkpoint_yet(self, run_dir: Any) -> None:
        self.notice(f"{run_dir} has no checkpoint yet; starting over with its saved config.")

    def damaged_set_aside(self, folder: Any, reason: str, aside: Any) -> None:
        self.notice(f"skipping damaged checkpoint {folder.name} ({reason}); moved to {aside.name}.")

    # ------------------------------------------------------------- during it
    def signal_received(self, signum: int, overwrite_pending: bool) -> None:
        """A stop asked by a signal: the run saves after this step."""
        again = ""
        if signum == signal.SIGINT:
            again = " (press Ctrl-C again to abort without saving)"
            if overwrite_pending:  # the save would end the run --overwrite keeps
                again = (", and the run --overwrite set aside goes then (press Ctrl-C again to abort without "
                         "saving and get that run back)")
        self.notice(f"{signal.Signals(signum).name} received; saving after this step{again}.")

    def evaluated(self, step: int, metrics: dict[str, float]) -> None:
        if metrics:
            self.notice(f"eval at step {step}: " + ", ".join(f"{k} {v:.4g}" for k, v in metrics.items()))

    def no_loss_yielded(self, model: str, step: int) -> None:
        self.notice(f"warning: model '{model}': training_step yielded no (optimizer name, loss) pair at step "
                    f"{step}, so nothing was updated (said once).")

    def no_cuda_graph(self, blocker: str) -> None:
        self.notice(f"no CUDA graph: {blocker}; steps run eagerly.")

    def compile_failed(self, reason: str) -> None:
        self.notice(f"torch.compile failed on this model's first step ({reason}); running eagerly.")

    # -------------------------------------------------------------------- end
    def finished(self, run: Any, saved: Any) -> None:
        """The run's last lines: what was skipped, why it stopped early, where its checkpoint is."""
        state, schedule = run.state, run.schedule
        for line in (state.bad_items.summary(),
                     f"zoo: skipped {state.skipped_nonfinite} step(s) with a non-finite loss"
                     if state.skipped_nonfinite else None):
            if line:
                self.say(line)
        if run.context.stop_reason:
            self.notice(f"stopped early at step {state.step}: {run.context.stop_reason}")
        limit = schedule.ending_limit()
        reached = f" (--{limit.option} {limit.value} reached)" if state.step >= schedule.total_steps else ""
        self.notice(f"done at step {state.step}{reached}; checkpoint {saved}")

    def status_not_written(self, run_dir: Any, reason: str) -> None:
        self.notice(f"warning: could not update status.json and README.md in {run_dir} ({reason}); the "
                    f"checkpoints are unaffected.")

    def hook_state_warning(self, left_out: str) -> None:
        self.notice(f"warning: {left_out.removeprefix('zoo: ')}.")


# ------------------------------------------------------------------- errors
def batch_not_divisible(total: int, accumulate: int, world: int, counts: list[int]) -> UsageError:
    """A resume whose global batch (``total`` samples a micro-batch) does not split over ``world`` processes."""
    batch = f"{total}" if accumulate == 1 else f"{total * accumulate} ({total} x accumulate {accumulate})"
    listed = ", ".join(map(str, counts[:-1])) + f" or {counts[-1]}" if len(counts) > 1 else str(counts[0])
    return UsageError(f"the run's global batch {batch} cannot be split over {world} processes; resume with "
                      f"--nproc-per-node {listed}.")


def interrupted(signum: int, step: int, run_dir: Any) -> Interrupted:
    return Interrupted(f"zoo: stopped by {signal.Signals(signum).name} at step {step}; checkpoint saved. "
                       f"Resume with: zoo train --resume {run_dir}", 128 + int(signum))


def hook_state_left_out(reason: str, saved_step: int) -> str:
    """Why the newest checkpoint holds no state for a hook whose ``state_dict()`` failed."""
    return f"{reason}\nzoo: step {saved_step} is saved without that hook's state"


def hook_state_failed(left_out: str, run_dir: Any) -> PluginError:
    return PluginError(f"{left_out}; fix the hook or turn it off (--no-hook), then: zoo train --resume {run_dir}")


def out_of_memory(step: int, batch_size: int) -> RunError:
    return RunError(f"out of device memory at step {step} (batch size {batch_size}); use a smaller --batch-size, "
                    f"--accumulate 2 with half the batch, or --precision bf16.", one_process=True)


def whole_step_unreadable(step: int, rank: int) -> RunError:
    return RunError(f"every sample of step {step} on process {rank} was unreadable; remove the bad files "
                    f"(--skip-bad-files cannot skip a whole step when several processes train together).",
                    one_process=True)


def unused_parameters(model: str, step: int) -> UsageError:
    """DDP met a step that gave some of a network's parameters no gradient."""
    return UsageError(f"model '{model}' left some parameters without gradients by step {step}, which several "
                      f"processes must be told of: add --find-unused-parameters (or --freeze them).")


def nonfinite_fixes(config: TrainConfig, precision: str) -> str:
    """What may keep a loss finite, for this run's settings (not a setting it already has)."""
    fixes = ["lower --lr"]
    if config.clip_grad is None:
        fixes.append("add --clip-grad 1.0")
    if precision != "32":
        fixes.append("use --precision 32")
    if not config.skip_nonfinite:
        fixes.append("skip such steps with --skip-nonfinite (a bad sample, say)")
    text = ", ".join(fixes[:-1]) + f" or {fixes[-1]}" if len(fixes) > 1 else fixes[0]
    return text[0].upper() + text[1:] + "."


def nonfinite_loss(name: str, value: float, step: int, fixes: str) -> RunError:
    return RunError(f"loss '{name}' is {value} at step {step}; no checkpoint was written for it. {fixes}")


def nonfinite_weights(step: int, fixes: str) -> RunError:
    return RunError(f"non-finite loss or weights at step {step}; no checkpoint was written. {fixes}")


def save_failed(step: int, run_dir: Any, reason: str, kept: str) -> RunError:
    return RunError(f"could not write checkpoint step-{step} in {run_dir} ({reason}); {kept}. "
                    f"Free some disk space, then: zoo train --resume {run_dir}")


def after_sample_failure(run_dir: Any, fix: str, skipping_helps: bool, *, job: bool = False, step: int = 0,
                         save_error: str | None = None) -> str:
    """The line after an unreadable sample or a wrong dataset item: what was saved and how to go on.

    ``job``: several processes, none saves alone; ``step``: the step saved (0: none was done);
    ``save_error``: why saving it failed.
    """
    resume = f"zoo train --resume {run_dir}"
    go_on = f", or go on with: {resume} --skip-bad-files" if skipping_helps else ""
    if job:
        return f"zoo: {fix} and resume from the last checkpoint{go_on or ' (' + resume + ')'}"
    if step == 0:
        again = ", or start again with --skip-bad-files" if skipping_helps else " and start again"
        return f"zoo: no step was done; {fix}{again} (--overwrite to reuse {run_dir})."
    if save_error is not None:
        return f"zoo: and saving step {step} failed too: {save_error}"
    return f"zoo: step {step} is saved; {fix} and resume{go_on or ' (' + resume + ')'}"

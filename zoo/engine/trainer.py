"""The training loop every zoo model shares.

Read top to bottom: ``Trainer.__init__`` builds the pieces, ``fit`` runs
steps until the run's length is reached or a signal arrives, ``_train_step``
runs one recipe step (backward and optimizer steps live here, never in a
model), and ``save`` writes an atomic checkpoint.
"""

from __future__ import annotations

import copy
import math
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch.nn.utils import clip_grad_norm_
from tqdm import tqdm

from zoo import build
from zoo.config import TrainConfig
from zoo.engine import cache, checkpoint, device_decode, distributed, finetune, graphed, pictures, rng, speed
from zoo.engine.evaluate import evaluate
from zoo.engine.feed import (BadItems, BadSampleError, DeviceFeed, WrongItemError, make_loader, prefetching,
                             to_device)
from zoo.engine.hooks import HookCaller, RunContext
from zoo.engine.precision import Precision, resolve_device
from zoo.engine.rundir import MetricsLog, read_config, versions, write_json
from zoo.errors import PluginError, RunError, UsageError, ZooError, first_line, kind_of
from zoo.registry import Registry, keep_first_made_with

DEFAULT_EPOCHS = 10
STATE_KEYS = frozenset({"model", "step", "epoch", "position", "train_size", "optimizers", "schedulers", "rng"})


def describe_entry(registry: Registry, entry: Any) -> dict[str, Any]:
    """A plugin part as config.json records it: ``plugin:name``, its plugin's version and distribution."""
    info = registry.plugins.get(entry.plugin)
    return {"name": entry.qualified_name, "version": info.version if info else None,
            "distribution": info.distribution if info else None}


def cache_origin(registry: Registry, entry: Any) -> str:
    """What keys a dataset's decoded caches besides its files: ``plugin:name@version``."""
    described = describe_entry(registry, entry)  # not the distribution: caches stay valid across a rename
    return f"{described['name']}@{described['version']}"


def _one_process(error: ZooError) -> ZooError:
    """An error only the process that met it can say (its own GPU, its own samples): not quieted in a job."""
    error.met_by_one_process = True
    return error


class Interrupted(ZooError):
    """The run stopped on SIGINT/SIGTERM after saving; exit 130 or 143."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass
class TrainResult:
    """Where a finished run left things."""

    run_dir: Path
    step: int
    epoch: int
    checkpoint: Path | None
    metrics: dict[str, float]


_QUIET = {"on": False}  # processes other than rank 0 stay silent


def _host_copy(tree: Any) -> Any:
    """A copy of a state dict with its tensors in host memory (device memory stays free)."""
    if isinstance(tree, torch.Tensor):
        return tree.detach().to("cpu", copy=True)
    if isinstance(tree, dict):
        return {key: _host_copy(value) for key, value in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(_host_copy(item) for item in tree)
    return copy.deepcopy(tree)


def _echo(message: str) -> None:
    if not _QUIET["on"]:
        tqdm.write(message, file=sys.stderr)


class Trainer:
    """One training run: built from a config, resumable from a run folder."""

    def __init__(self, config: TrainConfig, registry: Registry, run_dir: Path, *,
                 resume: bool = False, command_line: list[str] | None = None,
                 dist_context: distributed.DistContext | None = None) -> None:
        self.config = config
        self.registry = registry
        self.run_dir = Path(run_dir)
        self.dist = dist_context or distributed.DistContext()
        _QUIET["on"] = not self.dist.is_main
        self.device = resolve_device(config.device)
        if self.dist.enabled and self.device.type == "cuda":
            self.device = torch.device("cuda", self.dist.local_rank)
        self.speed = speed.resolve(config, self.device, _echo)
        self.precision = Precision(self.speed.precision, self.device)
        rng.seed_everything(config.seed)  # the same initial weights on every process
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)  # streams, graphs and generators follow --device cuda:N
            torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick the fastest kernels
        self._build_data_and_model(resume)
        recorded = (read_config(run_dir).get("resolved") or {}).get("loss_weights") if resume else None
        self.loss_fn = build.build_loss(self.plan.loss, config.loss_opt, recorded)
        if self.loss_fn is not None:
            self.loss_fn.to(self.device)
        self.init_report = self._fine_tune(resume)
        if config.sync_bn and not self.dist.enabled:
            _echo("zoo: --sync-bn acts across several processes (--nproc-per-node N); with one process "
                  "BatchNorm is unchanged.")
        if self.dist.enabled and config.sync_bn:
            if self.device.type == "cuda":
                self.recipe = torch.nn.SyncBatchNorm.convert_sync_batchnorm(self.recipe)
            else:
                _echo(f"zoo: --sync-bn needs CUDA devices; on {self.device.type} BatchNorm statistics "
                      f"stay per process.")
        speed.apply(self.recipe, self.speed, _echo)
        self.optimizers = self.recipe.configure_optimizers(config.lr)
        if not self.optimizers:
            raise PluginError(f"model '{self.plan.model.qualified_name}' configured no optimizer.")
        self.schedulers = self.recipe.configure_schedulers(self.optimizers)
        self.params = {name: [p for group in opt.param_groups for p in group["params"] if p.requires_grad]
                       for name, opt in self.optimizers.items()}
        self._check_trainable()
        self.hooks = HookCaller(build.build_hooks(self.plan.hooks, config.hook_opt, config.no_hooks))
        self.metrics_log = MetricsLog(self.run_dir)
        self.pictures = pictures.Pictures(self.recipe, self.test_set, config.seed, self.device,
                                          self.precision.autocast, say=_echo)
        self.context = RunContext(self.run_dir, config, self.recipe, self.device, self.pictures.grid,
                                  self.metrics_log, self._emit_log)
        self.step = self.epoch = self.position = 0
        # called once, on rank 0, when the run has written its first checkpoint (--overwrite's old run goes then)
        self.after_first_save: list[Callable[[], None]] = []
        self.best: dict[str, Any] | None = None
        self.last_eval: dict[str, float] = {}
        self._last_eval_step = self._last_save_step = self._last_log_step = -1
        # an evaluation that was due but did not finish (a stop request, an unreadable test file):
        # the checkpoint says so and a resumed run does it first
        self._eval_owed = self._saved_eval_owed = False
        self._stop_signal: int | None = None
        self._agreed_signal = False  # the processes' shared view of _stop_signal (distributed runs)
        self.bad_items = BadItems(config.skip_bad_files)
        self.skipped_nonfinite = 0
        self._said_no_loss = False  # a step that yielded no loss was said (once a run)
        self._reset_window()
        if self.dist.enabled:
            rng.seed_everything(rng.derive_seed(config.seed, "rank", self.dist.rank))  # own noise per process
        self.context.rank = self.dist.rank
        self._check_hooks(resume)
        if resume:
            self._resume()
        self.step_graph = self._make_step_graph()
        self._compiled_step_ran = False
        if self.dist.is_main:
            if resume and self._complete():  # a resume with nothing to do changes nothing but where data moved
                self._record_moved_data()
            else:
                self._write_config(command_line or [], resume)

    # ----------------------------------------------------------------- setup
    def _make_step_graph(self) -> graphed.StepGraph | None:
        """The CUDA-graph runner for steps when --cuda-graph (or --fast) asks and the run allows it."""
        if self.speed.cuda_graph:
            reason = speed.graph_blocker(self.config, self.speed, self.recipe, self.optimizers, self.dist.enabled)
            if reason:
                _echo(f"zoo: no CUDA graph: {reason}; steps run eagerly.")
                self.speed.cuda_graph = False
        # whatever a checkpoint saved: capturable only for graphs
        graphed.set_capturable(self.optimizers, self.device, self.speed.cuda_graph)
        if not self.speed.cuda_graph:
            return None
        self.precision.cache_casts = False
        return graphed.StepGraph(self._run_step, self.optimizers, _echo, on_failure=self.recipe.pop_logs)

    def _build_data_and_model(self, resume: bool) -> None:
        config = self.config
        parts = build.build_parts(self.registry, config, new_run=not resume)
        self.plan, self.recipe, self.model_options = parts.plan, parts.recipe, parts.model_options
        self.train_set, self.test_set = parts.train_set, parts.test_set
        self._check_data_is_read(resume)
        decoding_on_device = self._decoding_on_device()
        if config.cache_decoded:
            if cache.supports_cache(self.train_set):
                root = cache.default_root()
                if not self.dist.is_main:
                    distributed.barrier(self.dist)  # rank 0 builds the cache once
                # one process: the first pass over each split fills its cache; several: rank 0 builds them first
                # (the training split's, on the device when it decodes there: another cache, another key)
                train_decoder = device_decode.cache_decoder_name(self.train_set) if decoding_on_device else None
                origin = cache_origin(self.registry, self.plan.dataset)  # a new plugin version: new caches
                self.train_set, self.test_set = (
                    cache.DecodedCache(split, root, workers=config.workers, fill_on_read=not self.dist.enabled,
                                       decoder=decoder, origin=origin)
                    for split, decoder in ((self.train_set, train_decoder), (self.test_set, None)))
                if self.dist.is_main:
                    distributed.barrier(self.dist)
                    ready = self.train_set.complete
                    _echo(f"zoo: decoded images {'read from' if ready else 'kept, as the first epoch decodes them, in'}"
                          f" {self.train_set.path}")
            else:
                _echo(f"zoo: dataset '{self.plan.dataset.name}' has no decoded form to cache; "
                      f"--cache-decoded changes nothing.")
        self._move_model()
        per_step = config.batch_size * config.accumulate * self.dist.world_size
        if len(self.train_set) == 0:
            raise UsageError(f"the training split of '{self.plan.dataset.name}' has no samples; check --data "
                             f"and the dataset's options (zoo info {self.plan.dataset.name}).")
        if len(self.train_set) < per_step:
            raise UsageError(
                f"a step needs {per_step} samples (--batch-size {config.batch_size} x --accumulate "
                f"{config.accumulate} x {self.dist.world_size} process(es)) but the training split of "
                f"'{self.plan.dataset.name}' has {len(self.train_set)}; lower --batch-size.")
        self.steps_per_epoch = len(self.train_set) // per_step
        self.batches_per_epoch = self.steps_per_epoch * config.accumulate
        pin = self.device.type == "cuda"
        # decoding on the device, the workers send bytes and uint8 images; the device decodes and finishes them
        self.device_decoder = device_decode.DeviceDecoder(self.train_set, self.device, say=_echo) \
            if decoding_on_device else None
        worker_side = dict(items=self.device_decoder.items, collate=device_decode.collate_encoded) \
            if self.device_decoder is not None else {}
        self.loader, self.order = make_loader(self.train_set, config.batch_size, config.seed, config.workers,
                                              shuffle=True, drop_last=True, pin_memory=pin,
                                              shard=(self.dist.rank, self.dist.world_size), **worker_side)
        self.test_loader, _ = make_loader(self.test_set, config.batch_size, config.seed, config.workers,
                                          shuffle=False, drop_last=False, pin_memory=pin)

    def _move_model(self) -> None:
        """Put the model on the run's device; a device too small for it is one line naming its size."""
        name = self.plan.model.name
        with build.out_of_memory_said(f"putting model '{name}' on {self.device}",
                                      f"lower its options (zoo info {name}) or pick another --device"):
            self.recipe.to(self.device)

    def _check_data_is_read(self, resume: bool) -> None:
        """Refuse a --data the dataset ignores: the run would train on other data than the user named.

        A run saved before this was refused only hears of it, so it still resumes.
        """
        if not self.config.data or self.train_set.reads_data:
            return
        problem = (f"dataset '{self.plan.dataset.name}' does not read --data {self.config.data}; to train on "
                   f"those files pick a dataset that reads them, e.g. --dataset imagefolder ('zoo list datasets').")
        if not resume:
            raise UsageError(problem)
        if self.dist.is_main:
            _echo(f"zoo: {problem}")

    def _check_hooks(self, resume: bool) -> None:
        """Let each hook refuse the run before any step (its optional ``check_run(run)``).

        A ``ValueError`` or usage error there is a usage error naming the hook: an option that
        cannot work with this model or config (a metric it never reports, evaluation switched off).
        A resumed run only hears of it, so runs saved before a hook checked this still go on.
        """
        for entry in self.plan.hooks:
            check = getattr(self.hooks.objects[entry.qualified_name], "check_run", None)
            if not callable(check):
                continue
            try:
                check(self.context)
            except (ValueError, UsageError) as exc:
                if not resume:
                    raise UsageError(f"hook '{entry.name}': {exc}") from None
                if self.dist.is_main:
                    _echo(f"zoo: hook '{entry.name}': {exc}")
            except ZooError:
                raise
            except Exception as exc:
                raise PluginError(f"hook '{entry.qualified_name}' failed in check_run: {first_line(exc)}") from exc

    def _decoding_on_device(self) -> bool:
        """Whether --decode-on-device applies to this run; when it cannot, say why in one line."""
        if not self.config.decode_on_device:
            return False
        reason = device_decode.blocker(self.train_set, self.device,
                                       cache_built_first=self.config.cache_decoded and self.dist.enabled)
        if reason:
            _echo(f"zoo: no --decode-on-device: {reason}; the loader's workers prepare the samples.")
        return reason is None

    def _fine_tune(self, resume: bool) -> dict[str, Any] | None:
        """Start from --init-from weights (new runs, and resumed ones that start over: no checkpoint yet)
        and apply --freeze (always)."""
        report = None
        starting = not resume or not checkpoint.list_steps(self.run_dir)
        if self.config.init_from and starting:
            weights, source = finetune.initial_weights(self.config.init_from)
            fit = finetune.apply_initial_weights(self.recipe, weights, not self.config.no_strict, source,
                                                 model_name=self.plan.model.name)
            for line in finetune.describe_fit(fit):
                _echo(line)
            report = {"source": source, **fit}
        if self.config.freeze:
            frozen = finetune.freeze(self.recipe, self.config.freeze)
            _echo(f"zoo: froze {len(frozen)} parameter tensor(s) matching {', '.join(self.config.freeze)}")
        return report

    def _check_trainable(self) -> None:
        """Refuse a run that would train nothing; say which optimizers --freeze leaves without parameters."""
        idle = [name for name, params in self.params.items() if not params]
        if len(idle) == len(self.params):
            if not self.config.freeze:
                raise PluginError(f"model '{self.plan.model.qualified_name}' gave its optimizers no trainable "
                                  f"parameter.")
            raise UsageError(f"--freeze {' '.join(self.config.freeze)} leaves no trainable parameter, so nothing "
                             f"would train; freeze fewer parameters.")
        if idle:
            _echo(f"zoo: no trainable parameter left for optimizer {', '.join(idle)}; its loss is logged, "
                  f"not stepped.")

    def _limits(self) -> list[tuple[str, int, int]]:
        """The options that end the run: (option, its value, the step it ends the run at)."""
        limits = []
        if self.config.max_steps is not None:
            limits.append(("max-steps", self.config.max_steps, self.config.max_steps))
        if self.config.epochs is not None or self.config.max_steps is None:
            epochs = self.config.epochs or DEFAULT_EPOCHS
            limits.append(("epochs", epochs, epochs * self.steps_per_epoch))
        return limits

    @property
    def total_steps(self) -> int:
        """The step at which the run ends: --max-steps or --epochs, whichever comes first."""
        return self._ending_limit()[2]

    def _ending_limit(self) -> tuple[str, int, int]:
        """The limit that ends the run (--max-steps where both end it at the same step)."""
        return min(self._limits(), key=lambda limit: limit[2])

    def _how_to_extend(self) -> str:
        """What to pass with --resume to go on, naming the limit that ends the run."""
        option, value, ends_at = self._ending_limit()
        if option == "max-steps":
            return f"extend it with --max-steps beyond {self.step}."
        enough = max(value, self.step // self.steps_per_epoch) + 1
        return f"its --epochs {value} ends it at step {ends_at}; extend it with --epochs {enough} or more."

    def _complete(self) -> bool:
        """Whether the run has reached its length, saved, with nothing owed: a resume has nothing to do."""
        return self._last_save_step == self.step and self.step >= self.total_steps and not self._eval_owed

    def _record_moved_data(self) -> None:
        """Keep a new --data (the saved one is gone) in config.json, so zoo test finds the data."""
        document = read_config(self.run_dir)
        if document.get("config", {}).get("data") != self.config.data:
            document["config"]["data"] = self.config.data
            write_json(self.run_dir / "config.json", document)

    def _write_config(self, command_line: list[str], resumed: bool) -> None:
        path = self.run_dir / "config.json"
        document: dict[str, Any] = {}
        if resumed and path.exists():
            document = read_config(self.run_dir)
            document.setdefault("resumed_with", []).append(command_line)
        else:
            document["command_line"] = command_line
        previous = dict(document)
        plugins = self.plan
        if self.init_report is not None:
            document["init_from"] = self.init_report
        document.update({
            "config": self.config.to_dict(),
            "resolved": {
                "model": describe_entry(self.registry, plugins.model),
                "loss": describe_entry(self.registry, plugins.loss) if plugins.loss else None,
                "dataset": describe_entry(self.registry, plugins.dataset),
                "hooks": [describe_entry(self.registry, e) for e in plugins.hooks],
                "model_options": self.model_options,
                "input_shape": list(self.train_set.image_shape),
                "classes": getattr(self.train_set, "classes", None),
                "task": self.recipe.task,
                "loss_weights": getattr(self.loss_fn, "weights_source", None),
                "device": str(self.device),
                "speed": self.speed.describe(),
                "decode_on_device": self.device_decoder is not None,
                "steps_per_epoch": self.steps_per_epoch,
                "parameters": sum(p.numel() for p in self.recipe.parameters()),
                "trainable_parameters": sum(p.numel() for p in self.recipe.parameters() if p.requires_grad),
            },
            "versions": versions(),
        })
        keep_first_made_with(previous.get("resolved"), document["resolved"])
        write_json(path, document)

    # ------------------------------------------------------------- resuming
    def _resume(self) -> None:
        steps = checkpoint.list_steps(self.run_dir)
        if not steps:
            _echo(f"zoo: {self.run_dir} has no checkpoint yet; starting over with its saved config.")
            if self.dist.is_main:
                self.metrics_log.clear()
            return
        if not self.dist.enabled:
            model_state, state, folder = self._newest_whole_checkpoint(steps)
        elif self.dist.is_main:
            try:
                model_state, state, folder = self._newest_whole_checkpoint(steps)
            except BaseException:
                distributed.broadcast_object(None, self.dist)
                raise
            distributed.broadcast_object(str(folder), self.dist)
        else:  # rank 0 chose (and set damaged ones aside); load the same one
            chosen = distributed.broadcast_object(None, self.dist)
            if chosen is None:
                raise RunError(f"no whole checkpoint to resume in {self.run_dir}.")
            folder = Path(chosen)
            model_state, state = checkpoint.load(folder)
        if state.get("model") != self.plan.model.qualified_name:
            raise UsageError(f"checkpoint {folder} is of model '{state.get('model')}', not "
                             f"'{self.plan.model.qualified_name}'; resume it with its own model.")
        if state.get("train_size") != len(self.train_set):
            raise UsageError(f"the training split now has {len(self.train_set)} samples but {folder} was made "
                             f"with {state.get('train_size')}; resume with the same data.")
        checkpoint.load_into(self.recipe, model_state, folder, self.plan.model.name, "resume with the same model")
        for name, opt in self.optimizers.items():
            opt.load_state_dict(state["optimizers"][name])
        for name, scheduler in self.schedulers.items():
            scheduler.load_state_dict(state["schedulers"][name])
        if state.get("scaler"):
            self.precision.scaler.load_state_dict(state["scaler"])
        self.step, self.epoch, self.position = state["step"], state["epoch"], state["position"]
        self.context.step, self.context.epoch = self.step, self.epoch
        self.best = state.get("best")
        self._eval_owed = self._saved_eval_owed = bool(state.get("eval_owed", False))
        self.skipped_nonfinite = state.get("skipped_nonfinite", 0)
        self.hooks.restore(state.get("hooks", {}))
        bad = state.get("bad_samples") or {}
        self.bad_items.count = bad.get("count", 0)
        self.bad_items.distinct = set(bad.get("distinct", []))
        self.bad_items.first = bad.get("first")
        self._last_save_step = self.step
        saved_world = state.get("world_size", 1)
        if saved_world != self.dist.world_size:
            raise UsageError(f"{folder} was made by {saved_world} process(es), this run has "
                             f"{self.dist.world_size}; resume with --nproc-per-node {saved_world}.")
        rng.restore(state["rng_by_rank"][self.dist.rank] if self.dist.enabled else state["rng"])
        if self.dist.is_main:
            self.metrics_log.drop_after(self.step)  # logged after the checkpoint: they come again
        _echo(f"zoo: resuming {self.run_dir} from step {self.step} (epoch {self.epoch + 1}).")

    def _newest_whole_checkpoint(self, steps: list[tuple[int, Path]]) -> tuple[dict, dict, Path]:
        """Load the newest checkpoint that is whole; damaged newer ones are set aside with a notice."""
        damaged: list[tuple[Path, str]] = []
        for _, folder in reversed(steps):
            try:
                model_state, state = checkpoint.load(folder)
                missing = sorted(STATE_KEYS - set(state))
                if missing:
                    raise checkpoint.CheckpointError(folder, f"lacks {', '.join(missing)}")
            except checkpoint.CheckpointError as exc:
                damaged.append((folder, exc.reason))
                continue
            for bad, reason in damaged:
                aside = checkpoint.set_aside(bad)
                _echo(f"zoo: skipping damaged checkpoint {bad.name} ({reason}); moved to {aside.name}.")
            return model_state, state, folder
        listed = "; ".join(f"{bad.name} {reason}" for bad, reason in damaged)
        raise RunError(f"no whole checkpoint in {self.run_dir / 'checkpoints'} ({listed}); "
                       f"start the run again with --overwrite.")

    # ------------------------------------------------------------ the loop
    def fit(self) -> TrainResult:
        """Train until the run's length; save at the end. Raises Interrupted on a signal."""
        if self._complete():
            _echo(f"zoo: {self.run_dir} is already complete at step {self.step}; {self._how_to_extend()}")
            return TrainResult(self.run_dir, self.step, self.epoch,
                               checkpoint.checkpoint_dir(self.run_dir, self.step), self.last_eval)
        previous = self._install_signal_handlers()
        params = sum(p.numel() for p in self.recipe.parameters())
        if self.dist.enabled:
            _echo(f"zoo: {self.dist.world_size} processes; global batch {self.config.batch_size} x "
                  f"{self.dist.world_size} x accumulate {self.config.accumulate} = "
                  f"{self.config.batch_size * self.dist.world_size * self.config.accumulate}")
        _echo(f"zoo: {self.plan.model.qualified_name} + {self.plan.loss.qualified_name if self.plan.loss else 'no loss'}"
              f" on {self.plan.dataset.qualified_name} {tuple(self.train_set.image_shape)} "
              f"({len(self.train_set)} train / {len(self.test_set)} test), {params:,} parameters, "
              f"device {self.device}, {self.steps_per_epoch} steps/epoch, run dir {self.run_dir}")
        status = "failed"
        feed = bar = None
        self.recipe.train()
        try:
            self.hooks.call("on_train_start", run=self.context)
            if self._eval_owed and self.config.eval_every != 0:
                self._evaluate()  # due at the checkpoint's step, not done before it was saved
            while self.step < self.total_steps and not self._should_stop():
                if feed is None:
                    feed, bar = self._open_epoch()
                started = time.perf_counter()
                batches = []
                for _ in range(self.config.accumulate):
                    batch, bad = next(feed)
                    self.bad_items.check(bad)
                    if batch is not None:
                        batches.append(batch)
                fed = time.perf_counter()
                self._train_step(batches)
                self.step += 1
                self.position += self.config.accumulate
                self.context.step, self.context.epoch = self.step, self.epoch
                self._window_wait += fed - started
                self._window_samples += self.config.batch_size * self.config.accumulate
                bar.update(1)
                if self.step % self.config.log_every == 0:
                    self._log(bar)
                if self.position >= self.batches_per_epoch:
                    feed.close()
                    bar.close()
                    feed = bar = None
                    self._end_epoch()
                self._periodic()
                left_out = self._hook_state_left_out()
                if left_out:  # saved at a step's end, where the run can go on once the hook is fixed
                    raise PluginError(f"{left_out}; fix the hook or turn it off (--no-hook), then: "
                                      f"zoo train --resume {self.run_dir}")
            if feed is not None:
                feed.close()
                bar.close()
                feed = None
            if self._last_log_step != self.step:
                self._log(None)
            if self.config.eval_every != 0 and self._last_eval_step != self.step:
                self._evaluate_unless_stopping()  # stopping: owed, and done first by the resumed run
            saved = self.save() if self._unsaved() else checkpoint.checkpoint_dir(self.run_dir, self.step)
            status = "interrupted" if (self._stop_signal or self.context.stop_reason) else "done"
        except BadSampleError as exc:
            raise BadSampleError(f"{exc}\n{self._save_before_failing('replace the file (same name)', True)}") from None
        except WrongItemError as exc:
            raise WrongItemError(f"{exc}\n{self._save_before_failing('fix the dataset plugin', False)}") from None
        except torch.OutOfMemoryError:
            raise _one_process(RunError(f"out of device memory at step {self.step + 1} (batch size "
                                        f"{self.config.batch_size}); use a smaller --batch-size, --accumulate 2 "
                                        f"with half the batch, or --precision bf16.")) from None
        finally:
            if feed is not None:
                feed.close()
                bar.close()
            try:
                self.hooks.call("on_train_end", run=self.context, status=status)
            finally:
                self._restore_signal_handlers(previous)
        left_out = self._hook_state_left_out()
        if left_out:  # the run ended (or was stopped) with its steps saved: said, not raised
            _echo(f"zoo: warning: {left_out.removeprefix('zoo: ')}.")
        if self._stop_signal is not None:
            code = 128 + int(self._stop_signal)
            raise Interrupted(f"zoo: stopped by {signal.Signals(self._stop_signal).name} at step {self.step}; "
                              f"checkpoint saved. Resume with: zoo train --resume {self.run_dir}", code)
        for line in (self.bad_items.summary(),
                     f"zoo: skipped {self.skipped_nonfinite} step(s) with a non-finite loss"
                     if self.skipped_nonfinite else None):
            if line:
                _echo(line)
        if self.context.stop_reason:
            _echo(f"zoo: stopped early at step {self.step}: {self.context.stop_reason}")
        option, value, _ = self._ending_limit()
        reached = f" (--{option} {value} reached)" if self.step >= self.total_steps else ""
        _echo(f"zoo: done at step {self.step}{reached}; checkpoint {saved}")
        return TrainResult(self.run_dir, self.step, self.epoch, saved, self.last_eval)

    def _unsaved(self) -> bool:
        """Whether this step, or what it owes (an evaluation), differs from the newest checkpoint."""
        return self._last_save_step != self.step or self._saved_eval_owed != self._eval_owed

    def _save_before_failing(self, fix: str, skipping_helps: bool) -> str:
        """Save the steps done before a sample stopped the run; say how to go on once ``fix`` is done."""
        resume = f"zoo train --resume {self.run_dir}"
        go_on = f", or go on with: {resume} --skip-bad-files" if skipping_helps else ""
        if self.dist.enabled:  # the other processes are not at a step's end: no saving alone
            return f"zoo: {fix} and resume from the last checkpoint{go_on or ' (' + resume + ')'}"
        if self.step == 0:
            again = ", or start again with --skip-bad-files" if skipping_helps else " and start again"
            return f"zoo: no step was done; {fix}{again} (--overwrite to reuse {self.run_dir})."
        if self._unsaved():
            try:
                self.save()
            except ZooError as exc:
                return f"zoo: and saving step {self.step} failed too: {first_line(exc)}"
        return f"zoo: step {self.step} is saved; {fix} and resume{go_on or ' (' + resume + ')'}"

    def _nonfinite_fixes(self) -> str:
        """What may keep a loss finite, for this run's settings (not a setting it already has)."""
        fixes = ["lower --lr"]
        if self.config.clip_grad is None:
            fixes.append("add --clip-grad 1.0")
        if self.speed.precision != "32":
            fixes.append("use --precision 32")
        if not self.config.skip_nonfinite:
            fixes.append("skip such steps with --skip-nonfinite (a bad sample, say)")
        text = ", ".join(fixes[:-1]) + f" or {fixes[-1]}" if len(fixes) > 1 else fixes[0]
        return text[0].upper() + text[1:] + "."

    def _nonfinite_anywhere(self, loss: torch.Tensor) -> bool:
        """True when this loss is not finite here or, when distributed, on any process."""
        bad = not bool(torch.isfinite(loss.detach()))
        return bool(distributed.max_flag(int(bad), self.dist)) if self.dist.enabled else bad

    def _should_stop(self) -> bool:
        """A signal or a hook's stop request here, or (when distributed) on any process."""
        local = self._stop_signal or (1 if self.context.stop_reason else 0)
        if self.dist.enabled:
            agreed = distributed.max_flag(local, self.dist)
            if agreed and not local:
                if agreed > 1:
                    self._stop_signal = agreed
                else:
                    self.context.stop_reason = "another process asked the run to stop"
            local = agreed
            self._agreed_signal = agreed > 1
        return bool(local)

    def _signalled(self) -> bool:
        """Whether a signal asks to stop, as every process agrees at the last check (or here, alone)."""
        return self._agreed_signal if self.dist.enabled else self._stop_signal is not None

    def _open_epoch(self) -> tuple[DeviceFeed, tqdm]:
        self.order.set_epoch(self.epoch, start=self.position * self.config.batch_size)
        feed = DeviceFeed(prefetching(self.loader, self.config.workers, max(2, 2 * self.config.accumulate)),
                          self.device, self.speed.channels_last, assemble=self.device_decoder)
        bar = tqdm(total=self.steps_per_epoch, initial=self.position // self.config.accumulate,
                   desc=f"epoch {self.epoch + 1}", unit="step", dynamic_ncols=True, leave=True,
                   file=sys.stderr, mininterval=0.5, disable=not self.dist.is_main)
        self._window_start = time.perf_counter()
        return feed, bar

    def _train_step(self, batches: list[Any]) -> None:
        """One step: every micro-batch through the recipe, backward per optimizer, then step.

        The work itself is ``_compute_step``; under ``--cuda-graph`` it runs as a replayed
        graph. Its per-step figures join the logging window here, without a device sync.
        """
        if not batches:  # every sample of the step was unreadable (--skip-bad-files)
            if self.dist.enabled:
                raise _one_process(RunError(f"every sample of step {self.step + 1} on process {self.dist.rank} "
                                            f"was unreadable; remove the bad files (--skip-bad-files cannot skip a "
                                            f"whole step when several processes train together)."))
            return
        values = self.step_graph(batches) if self.step_graph is not None else self._run_step(batches)
        if values is None:  # skipped: a non-finite loss under --skip-nonfinite
            return
        for key, value in values.items():
            self._add_to_window(key, value)
        self._window_steps += 1

    def _run_step(self, batches: list[Any]) -> dict[str, torch.Tensor] | None:
        """``_compute_step``, except that a compiled run's first step may fall back to eager."""
        if self.speed.compile and not self._compiled_step_ran:
            return self._first_compiled_step(batches)
        return self._compute_step(batches)

    def _first_compiled_step(self, batches: list[Any]) -> dict[str, torch.Tensor] | None:
        """The first step of a compiled run; where the compiler fails on it, uncompile and step eagerly.

        Weights and optimizer states are put back as they were before the step, so an
        update made before the failure (a GAN's discriminator) does not happen twice.
        """
        before = (_host_copy(self.recipe.state_dict()),
                  {name: _host_copy(opt.state_dict()) for name, opt in self.optimizers.items()})
        try:
            values = self._compute_step(batches)
        except (ZooError, torch.OutOfMemoryError):
            raise
        except Exception as exc:  # a compiler bug on this model: the eager model still trains
            _echo(f"zoo: torch.compile failed on this model's first step ({first_line(exc)}); running eagerly.")
            speed.uncompile(self.recipe)
            self.speed.compile = False
            self.recipe.pop_logs()
            self.recipe.load_state_dict(before[0])
            for name, opt in self.optimizers.items():
                opt.load_state_dict(before[1][name])
            values = self._compute_step(batches)
        self._compiled_step_ran = True
        return values

    def _compute_step(self, batches: list[Any]) -> dict[str, torch.Tensor] | None:
        """Run a step's forwards, backwards and optimizer updates; return its losses and logged figures.

        With --skip-nonfinite, a non-finite loss skips its own update and the rest of the
        step (updates yielded before it, e.g. a GAN's discriminator, have already happened)
        and returns None.
        """
        scaler = self.precision.scaler
        stepped = False
        values: dict[str, torch.Tensor] = {}

        def add(key: str, value: torch.Tensor) -> None:
            value = value.detach().float()
            values[key] = values[key] + value if key in values else value

        for opt in self.optimizers.values():
            opt.zero_grad(set_to_none=True)
        last = len(batches) - 1
        yielded = False
        for index, batch in enumerate(batches):
            batch = to_device(batch, self.device, True, self.speed.channels_last)  # no-op once fed
            pairs = self.recipe.training_step(batch, self.loss_fn)
            if not isinstance(pairs, Iterator):
                raise PluginError(f"model '{self.plan.model.name}': training_step must be a generator that yields "
                                  f"(optimizer name, loss) pairs, got {kind_of(pairs)} (yield, not return).")
            while True:
                with self.precision.autocast():
                    try:
                        pair = next(pairs)
                    except StopIteration:
                        break
                name, loss = self._check_yielded(pair)
                yielded = True
                if self.config.skip_nonfinite and self._nonfinite_anywhere(loss):  # one sync
                    self.skipped_nonfinite += 1
                    for opt in self.optimizers.values():
                        opt.zero_grad(set_to_none=True)
                    pairs.close()
                    self.recipe.pop_logs()
                    if stepped:
                        scaler.update()  # the scaler saw the updates already made this step
                    return None
                scaled = loss / len(batches) if len(batches) > 1 else loss
                add(name, scaled)
                if not self.params[name]:  # all frozen: logged, not stepped
                    continue
                scaler.scale(scaled).backward(inputs=self.params[name])
                if index == last:
                    if self.dist.enabled:
                        distributed.average_gradients(self.params[name], self.dist)
                    if self.config.clip_grad is not None:
                        scaler.unscale_(self.optimizers[name])
                        clip_grad_norm_(self.params[name], self.config.clip_grad)
                    scaler.step(self.optimizers[name])
                    stepped = True
            for key, value in self.recipe.pop_logs().items():
                add(key, value / len(batches) if len(batches) > 1 else value)
        if batches and not yielded and not self._said_no_loss:  # fine once in a while; always is a bug
            self._said_no_loss = True
            _echo(f"zoo: warning: model '{self.plan.model.name}': training_step yielded no (optimizer name, loss) "
                  f"pair at step {self.step + 1}, so nothing was updated (said once).")
        scaler.update()
        return values

    def _check_yielded(self, pair: Any) -> tuple[str, torch.Tensor]:
        """A ``(optimizer name, loss)`` pair from ``training_step``, checked on metadata only (no device sync)."""
        model = f"model '{self.plan.model.name}'"
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            raise PluginError(f"{model}: training_step must yield (optimizer name, loss) pairs, got "
                              f"{kind_of(pair)}.")
        name, loss = pair
        if not isinstance(name, str) or name not in self.optimizers:
            raise PluginError(f"{model} yielded a loss for optimizer {name!r} but configured only "
                              f"{', '.join(repr(key) for key in self.optimizers)}.")
        if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
            raise PluginError(f"{model}: the loss of optimizer '{name}' must be a scalar tensor, got "
                              f"{kind_of(loss)} (reduce it, e.g. with .mean()).")
        if self.params[name] and not loss.requires_grad:
            raise PluginError(f"{model} yielded a loss for optimizer '{name}' that does not depend on its "
                              f"parameters (no grad_fn): compute it from the networks' outputs, without "
                              f".detach(), .item() or torch.no_grad().")
        return name, loss.reshape(())  # a one-element loss of shape (1,) is logged beside the scalars

    # ------------------------------------------------------ bookkeeping
    def _reset_window(self) -> None:
        self._window: dict[str, torch.Tensor] = {}
        self._window_steps = 0
        self._window_wait = 0.0
        self._window_samples = 0
        self._window_start = time.perf_counter()

    def _add_to_window(self, key: str, value: torch.Tensor) -> None:
        # a copy, not the tensor itself: a replayed CUDA graph overwrites its outputs in place
        self._window[key] = self._window[key] + value if key in self._window else value.clone()

    def _loss_names(self, key: str) -> str:
        return "loss" if key == "model" else key

    def _log(self, bar: tqdm | None) -> None:
        """Read the window's losses (one device sync), check them, and report them."""
        self._last_log_step = self.step
        if not self._window_steps:
            return
        keys = list(self._window)
        stacked = torch.stack([self._window[k] for k in keys]) if keys else torch.zeros(0)
        if self.dist.enabled and keys:
            stacked = distributed.average_tensor(stacked, self.dist)  # the same figures on every process
        values = stacked.tolist()
        losses = {self._loss_names(k): v / self._window_steps for k, v in zip(keys, values)}
        for name, value in losses.items():
            if not math.isfinite(value):
                raise RunError(f"loss '{name}' is {value} at step {self.step}; no checkpoint was written for it. "
                               f"{self._nonfinite_fixes()}")
        elapsed = max(time.perf_counter() - self._window_start, 1e-9)
        efficiency = max(0.0, 1.0 - self._window_wait / elapsed)
        scalars = dict(losses)
        scalars["compute_efficiency"] = efficiency
        scalars["samples_per_sec"] = self._window_samples / elapsed
        for name, opt in self.optimizers.items():
            scalars[f"lr/{name}"] = opt.param_groups[0]["lr"]
        if self.device.type == "cuda":
            scalars["peak_memory_gib"] = torch.cuda.max_memory_allocated(self.device) / 2**30
            scalars["memory_gib"] = torch.cuda.memory_allocated(self.device) / 2**30  # flat: nothing kept per step
        if self.dist.is_main:
            self.metrics_log.write({"kind": "train", "step": self.step, "epoch": self._epochs_done(),
                                    "time": round(time.time(), 3), **scalars})
        self.hooks.call("on_step_end", run=self.context, step=self.step, scalars=scalars)
        if bar is not None:
            shown = {k: f"{v:.4g}" for k, v in losses.items()}
            shown["eff"] = f"{efficiency:.2f}"
            bar.set_postfix(shown, refresh=False)
        self._reset_window()

    def _epochs_done(self) -> float:
        """Epochs completed so far, as a fraction (e.g. 1.5 halfway through the second)."""
        return round(self.step / self.steps_per_epoch, 4)

    def _end_epoch(self) -> None:
        """Schedulers step, hooks hear of it, and by default evaluate and save."""
        for scheduler in self.schedulers.values():
            scheduler.step()
        self.epoch += 1
        self.position = 0
        self.context.epoch = self.epoch
        if isinstance(self.train_set, cache.DecodedCache):
            if self.device_decoder is not None:  # what the epoch left out, decoded as the rest was
                self.device_decoder.fill_rest(self.config.batch_size)
            self.train_set.finalize()  # the first epoch filled it: publish it for the next
        self.hooks.call("on_epoch_end", run=self.context, epoch=self.epoch)
        if self.config.eval_every is None and self.step < self.total_steps:
            self._evaluate_unless_stopping()
        if self.config.save_every is None and self.step < self.total_steps and not self._signalled():
            self.save()

    def _periodic(self) -> None:
        every_eval, every_save = self.config.eval_every, self.config.save_every
        if every_eval and self.step % every_eval == 0 and self._last_eval_step != self.step \
                and self.step < self.total_steps:
            self._evaluate_unless_stopping()
        if every_save and self.step % every_save == 0 and self._last_save_step != self.step \
                and self.step < self.total_steps:
            self.save()

    def _evaluate_unless_stopping(self) -> None:
        """Evaluate now, or, when a stop is asked, save first and leave the evaluation to the resumed run."""
        if self._signalled():  # evaluating could take minutes
            self._eval_owed = True
        else:
            self._evaluate()

    def _evaluate(self) -> dict[str, float]:
        self._last_eval_step = self.step
        self._eval_owed = True  # until it completes
        bar = tqdm(total=len(self.test_loader), desc="eval", unit="batch", leave=False, file=sys.stderr,
                   dynamic_ncols=True, mininterval=0.5, disable=not self.dist.is_main)
        try:
            metrics = evaluate(self.recipe, self.loss_fn, self.test_loader, self.device,
                               self.precision.autocast, self.config.seed, self.bad_items, progress=bar)
        finally:
            bar.close()
        if isinstance(self.test_set, cache.DecodedCache):
            self.test_set.finalize()  # the first evaluation filled it: publish it for the next
        self._eval_owed = False
        self.last_eval = metrics
        if self.dist.is_main:
            self.metrics_log.write({"kind": "eval", "step": self.step, "epoch": self._epochs_done(), **metrics})
        self.hooks.call("on_eval_end", run=self.context, step=self.step, metrics=metrics)
        metric = self.recipe.metric
        if metric and metric[0] in metrics:
            value = metrics[metric[0]]
            improved = self.best is None or (
                value > self.best["value"] if metric[1] == "max" else value < self.best["value"])
            if improved:
                self.best = {"step": self.step, "value": value, "metric": metric[0], "saved": False}
        if metrics:
            _echo(f"zoo: eval at step {self.step}: " + ", ".join(f"{k} {v:.4g}" for k, v in metrics.items()))
        return metrics

    # ------------------------------------------------------- checkpoints
    def _check_finite(self) -> None:
        """Refuse to save weights or a step whose loss is not finite."""
        tensors = [p.detach() for p in self.recipe.parameters()]
        finite = torch.stack([torch.isfinite(t).all() for t in tensors]).all() if tensors else torch.tensor(True)
        pending = [v for v in self._window.values()]
        if pending:
            finite = finite & torch.isfinite(torch.stack(pending)).all().to(finite.device)
        if not bool(finite):
            raise RunError(f"non-finite loss or weights at step {self.step}; no checkpoint was written. "
                           f"{self._nonfinite_fixes()}")

    def save(self) -> Path:
        """Write the checkpoint of the current step atomically and prune old ones."""
        self._check_finite()
        state = {
            "model": self.plan.model.qualified_name,
            "step": self.step, "epoch": self.epoch, "position": self.position,
            "train_size": len(self.train_set),
            "optimizers": {name: opt.state_dict() for name, opt in self.optimizers.items()},
            "schedulers": {name: s.state_dict() for name, s in self.schedulers.items()},
            "scaler": self.precision.scaler.state_dict(),
            "rng": rng.capture(),
            "world_size": self.dist.world_size,
            "best": self.best,
            "skipped_nonfinite": self.skipped_nonfinite,
            "eval_owed": self._eval_owed,
            "bad_samples": {"count": self.bad_items.count, "distinct": sorted(self.bad_items.distinct),
                            "first": self.bad_items.first},
            "hooks": self.hooks.state(),
        }
        if self.dist.enabled:
            state["rng_by_rank"] = distributed.gather_objects(state["rng"], self.dist)
        if self.best is not None and self.best["step"] == self.step:
            self.best["saved"] = True
        if not self.dist.is_main:
            self._last_save_step = self.step
            self._saved_eval_owed = self._eval_owed
            folder = checkpoint.checkpoint_dir(self.run_dir, self.step)
            distributed.barrier(self.dist)  # rank 0 has written it when this returns
            self.hooks.call("on_checkpoint_saved", run=self.context, step=self.step, path=folder)
            return folder
        try:
            folder = checkpoint.save(self.run_dir, self.step, self.recipe.state_dict(), state)
        except Exception as exc:  # a full disk, a file-size limit, a vanished folder...
            steps = checkpoint.list_steps(self.run_dir)
            kept = f"{steps[-1][1].name} is intact" if steps else "no earlier checkpoint exists"
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc).splitlines()[0]
            raise RunError(f"could not write checkpoint step-{self.step} in {self.run_dir} ({reason}); {kept}. "
                           f"Free some disk space, then: zoo train --resume {self.run_dir}") from exc
        self._last_save_step = self.step
        self._saved_eval_owed = self._eval_owed
        protect = (self.best["step"],) if self.best and self.best.get("saved") else ()
        checkpoint.prune(self.run_dir, self.config.keep, protect)
        distributed.barrier(self.dist)
        while self.after_first_save:
            self.after_first_save.pop()()
        self.hooks.call("on_checkpoint_saved", run=self.context, step=self.step, path=folder)
        return folder

    def _hook_state_left_out(self) -> str | None:
        """Why the newest checkpoint holds no state for a hook whose ``state_dict()`` failed, or ``None``."""
        if not self.hooks.unsaved:
            return None
        return f"{self.hooks.unsaved[0]}\nzoo: step {self._last_save_step} is saved without that hook's state"

    def _emit_log(self, run: RunContext, step: int, name: str, value: Any) -> None:
        self.hooks.call("on_log", run=run, step=step, name=name, value=value)

    # ------------------------------------------------------------ signals
    def _install_signal_handlers(self) -> dict[int, Any]:
        previous: dict[int, Any] = {}

        def handle(signum: int, _frame: Any) -> None:
            if self._stop_signal is not None and signum == signal.SIGINT:
                raise KeyboardInterrupt
            self._stop_signal = signum
            again = " (press Ctrl-C again to abort without saving)" if signum == signal.SIGINT else ""
            if self.after_first_save and signum == signal.SIGINT:  # the save would end the run --overwrite keeps
                again = (", and the run --overwrite set aside goes then (press Ctrl-C again to abort without "
                         "saving and get that run back)")
            _echo(f"zoo: {signal.Signals(signum).name} received; saving after this step{again}.")

        try:
            for sig in (signal.SIGINT, signal.SIGTERM):
                previous[sig] = signal.signal(sig, handle)
            # Past a file-size limit, writes fail with an error we report instead of killing us.
            previous[signal.SIGXFSZ] = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        except ValueError:  # not the main thread: leave signals alone
            return {}
        return previous

    def _restore_signal_handlers(self, previous: dict[int, Any]) -> None:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

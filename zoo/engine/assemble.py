"""Setting a run up: the device, the data, the model, its loss and optimizers, the hooks, the bookkeeping.

Whether the run is new or resumed is decided once, by the caller, and kept as ``run.resumed``:
a resumed run reads its recorded loss weights, lets hooks' refusals pass as notices, and loads
its newest whole checkpoint here, before the first step.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from zoo import build, memory
from zoo.config import TrainConfig
from zoo.engine import (best, cache, checkpoint, contracts, device_decode, distributed, finetune, optim, pictures,
                        record, rng, speed)
from zoo.engine.data_parallel import DataParallel, DDPOptions
from zoo.engine.feed import BadItems, make_loader
from zoo.engine.hooks import HookCaller, RunContext
from zoo.engine.precision import Precision, resolve_device
from zoo.engine.progress import Window
from zoo.engine.report import Report
from zoo.engine.rundir import MetricsLog, read_config
from zoo.engine.saving import Checkpoints, per_process_batch
from zoo.engine.schedule import Schedule
from zoo.engine.state import TrainState
from zoo.engine.step import StepRunner
from zoo.engine.stopping import Stopper
from zoo.errors import UsageError
from zoo.registry import Registry


class Run:
    """Every piece of one training run, as ``assemble`` puts them together; the loop reads it.

    The pieces: ``state`` (where the run is; saved), ``schedule`` (what is due when), ``stepper``
    (one step; owns the optimizers), ``feed`` (the batches, epoch after epoch), ``window`` (figures
    since the last log), ``hooks``, ``checkpoints`` (saving and resuming), ``stopper`` (signals),
    ``report`` (every line printed), with the data, model, loss, device and config they share.
    (The loop makes the feed, ``epochs.EpochFeed``, from the loaders here.)
    """

    # where and how (``_device``)
    device: torch.device
    speed: speed.SpeedSettings
    precision: Precision
    # the plugins' parts and the data (``_data_and_model``, ``_loaders``, ``_loss_and_weights``)
    plan: build.Plan
    recipe: Any
    # every option of each part, defaults included, as config.json records them
    model_options: dict[str, Any]
    dataset_options: dict[str, Any]
    loss_options: dict[str, Any] | None
    hook_options: dict[str, dict[str, Any]]
    train_set: Any
    test_set: Any
    decoding_on_device: bool
    device_decoder: device_decode.DeviceDecoder | None
    loader: Any
    order: Any
    test_loader: Any
    loss_fn: Any
    init_report: dict[str, Any] | None
    # the training pieces (``_optimizers``, ``_bookkeeping``)
    schedule: Schedule
    state: TrainState
    stepper: StepRunner
    hooks: HookCaller
    metrics_log: MetricsLog
    pictures: pictures.Pictures
    context: RunContext
    window: Window
    checkpoints: Checkpoints
    stopper: Stopper
    best_metric: tuple[str, str] | None  # (name, "max"/"min") that picks the best checkpoint

    def __init__(self, config: TrainConfig, registry: Registry, run_dir: Path, resumed: bool,
                 dist: distributed.DistContext) -> None:
        self.config, self.registry, self.run_dir = config, registry, Path(run_dir)
        self.resumed, self.dist = resumed, dist
        self.report = Report(dist.is_main)
        # what config.json recorded of a resumed run (its parts' options, loss weights): read once
        self.recorded: dict[str, Any] = (read_config(self.run_dir).get("resolved") or {}) if resumed else {}


def assemble(config: TrainConfig, registry: Registry, run_dir: Path, *, resumed: bool,
             command_line: list[str], dist: distributed.DistContext) -> Run:
    """Build a run from its config (resumed: from its newest checkpoint too) and record it in config.json."""
    run = Run(config, registry, run_dir, resumed, dist)
    _keep_global_batch(run)
    _device(run)
    rng.seed_everything(config.seed)  # the same initial weights on every process
    _data_and_model(run)
    _loaders(run)
    _loss_and_weights(run)
    _optimizers(run)
    _bookkeeping(run)
    if dist.enabled:
        rng.seed_everything(rng.derive_seed(config.seed, "rank", dist.rank))  # own noise per process
    contracts.run_hook_checks([(entry, run.hooks.objects[entry.qualified_name]) for entry in run.plan.hooks],
                              run.context, resumed, run.report.notice)
    run.best_metric = best.resolve(config.best_metric, run.recipe, run.hooks.objects)
    if resumed:
        run.checkpoints.resume()
    run.stepper.use_graph((speed.graph_blocker(config, run.speed, run.recipe, run.stepper.optimizers, dist.enabled)
                           or optim.graph_blocker(config)) if run.speed.cuda_graph else None)
    if dist.is_main:
        if resumed and run.schedule.complete(run.state):  # nothing to do changes nothing but where data moved
            record.record_moved_data(run)
        else:
            record.write_config(run, command_line)
    return run


def _keep_global_batch(run: Run) -> None:
    """A run resumed with another number of processes keeps its global batch: the per-process batch is scaled."""
    saved_world = record.recorded_processes(run.recorded, run.dist.world_size)
    if not run.resumed or saved_world == run.dist.world_size:
        return
    config = run.config
    batch = per_process_batch(config.batch_size, saved_world, run.dist.world_size, config.accumulate)
    run.report.batch_rescaled(saved_world, run.dist.world_size, config.batch_size, batch, config.accumulate)
    config.batch_size = batch


def _device(run: Run) -> None:
    """The run's device (each process its own GPU), speed settings and precision."""
    run.device = resolve_device(run.config.device)
    if run.dist.enabled and run.device.type == "cuda":
        run.device = torch.device("cuda", run.dist.local_rank)
    run.speed = speed.resolve(run.config, run.device, run.report.say)
    run.precision = Precision(run.speed.precision, run.device)
    if run.device.type == "cuda":
        torch.cuda.set_device(run.device)  # streams, graphs and generators follow --device cuda:N
        torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick the fastest kernels


def _data_and_model(run: Run) -> None:
    """The plugins' parts: the model (on the device), the dataset's splits (cached decoded if asked)."""
    config = run.config
    # a resumed run is rebuilt with the options it recorded, defaults included (a plugin's new defaults do not
    # change it); those its config names win
    parts = build.build_parts(run.registry, config, new_run=not run.resumed,
                              model_options=_recorded_options(run, "model", config.model, config.model_opt),
                              dataset_options=_recorded_options(run, "dataset", config.dataset, config.dataset_opt))
    run.plan, run.recipe, run.model_options = parts.plan, parts.recipe, parts.model_options
    run.dataset_options = parts.dataset_options
    run.train_set, run.test_set = parts.train_set, parts.test_set
    contracts.check_data_is_read(config.data, run.train_set, run.plan.dataset.name, run.resumed,
                                 run.report.notice if run.dist.is_main else lambda _line: None)
    run.decoding_on_device = _decoding_on_device(run)
    if config.cache_decoded:
        _cache_decoded(run)
    name = run.plan.model.name
    with memory.out_of_memory_said(f"putting model '{name}' on {run.device}",
                                  f"lower its options (zoo info {name}) or pick another --device"):
        run.recipe.to(run.device)


def _recorded_options(run: Run, kind: str, name: str | None, given: dict[str, Any]) -> dict[str, Any] | None:
    """A resumed run's recorded options of its model or dataset (``record.under_recorded``), with the value it was
    made with for each option the plugin gained after it was saved (the class's ``earlier_defaults``)."""
    options = record.under_recorded(run.recorded, kind, name, given)
    if options is None or name is None:
        return options
    entry = run.registry.resolve(kind, name)
    return record.with_earlier_defaults(
        options, build.load_recipe_class(entry) if kind == "model" else build.load_dataset_class(entry))


def _decoding_on_device(run: Run) -> bool:
    """Whether --decode-on-device applies to this run; when it cannot, say why in one line."""
    if not run.config.decode_on_device:
        return False
    reason = device_decode.blocker(run.train_set, run.device,
                                   cache_built_first=run.config.cache_decoded and run.dist.enabled)
    if reason:
        run.report.no_decode_on_device(reason)
    return reason is None


def _cache_decoded(run: Run) -> None:
    """Wrap both splits in decoded caches (one process: the first pass fills them; several: rank 0 first)."""
    if not cache.supports_cache(run.train_set):
        run.report.no_cache(run.plan.dataset.name)
        return
    root, dist = cache.default_root(), run.dist
    if not dist.is_main:
        distributed.barrier(dist)  # rank 0 builds the cache once
    # the training split's, on the device when it decodes there: another cache, another key
    train_decoder = device_decode.cache_decoder_name(run.train_set) if run.decoding_on_device else None
    origin = record.cache_origin(run.registry, run.plan.dataset)  # a new plugin version: new caches
    run.train_set, run.test_set = (
        cache.DecodedCache(split, root, workers=run.config.workers, fill_on_read=not dist.enabled,
                           decoder=decoder, origin=origin)
        for split, decoder in ((run.train_set, train_decoder), (run.test_set, None)))
    if dist.is_main:
        distributed.barrier(dist)
        ready = run.train_set.complete
        run.report.cache_place(run.train_set.path, ready)


def check_split_fits_a_step(count: int, config: TrainConfig, world_size: int, dataset: str) -> None:
    """Refuse a training split of ``count`` samples that cannot fill one step of every process."""
    per_step = config.batch_size * config.accumulate * world_size
    if count == 0:
        raise UsageError(f"the training split of '{dataset}' has no samples; check --data and the dataset's "
                         f"options (zoo info {dataset}).")
    if count < per_step:
        raise UsageError(f"a step needs {per_step} samples (--batch-size {config.batch_size} x --accumulate "
                         f"{config.accumulate} x {world_size} process(es)) but the training split of "
                         f"'{dataset}' has {count}; lower --batch-size.")


def _loaders(run: Run) -> None:
    """The epoch's length and the loaders of both splits (training sharded over processes)."""
    config, dist, dataset = run.config, run.dist, run.plan.dataset.name
    per_step = config.batch_size * config.accumulate * dist.world_size
    check_split_fits_a_step(len(run.train_set), config, dist.world_size, dataset)
    run.schedule = Schedule(config, len(run.train_set) // per_step, dist)
    pin = run.device.type == "cuda"
    # decoding on the device, the workers send bytes and uint8 images; the device decodes and finishes them
    run.device_decoder = device_decode.DeviceDecoder(run.train_set, run.device, say=run.report.say) \
        if run.decoding_on_device else None
    worker_side = dict(items=run.device_decoder.items, collate=device_decode.collate_encoded) \
        if run.device_decoder is not None else {}
    run.loader, run.order = make_loader(run.train_set, config.batch_size, config.seed, config.workers,
                                        shuffle=True, drop_last=True, pin_memory=pin,
                                        shard=(dist.rank, dist.world_size), **worker_side)
    run.test_loader, _ = make_loader(run.test_set, config.batch_size, config.seed, config.workers,
                                     shuffle=False, drop_last=False, pin_memory=pin)


def _loss_and_weights(run: Run) -> None:
    """The loss (a resumed run keeps its recorded weights), --init-from and --freeze, --sync-bn, speed."""
    config = run.config
    options = record.under_recorded(run.recorded, "loss", config.loss, config.loss_opt) or config.loss_opt
    run.loss_fn = build.build_loss(run.plan.loss, options, run.recorded.get("loss_weights"))
    run.loss_options = build.recorded_options(run.plan.loss, options)
    if run.loss_fn is not None:
        run.loss_fn.to(run.device)
    run.init_report = _fine_tune(run)
    if config.sync_bn and not run.dist.enabled:
        run.report.sync_bn_alone()
    if run.dist.enabled and config.sync_bn:
        distributed.check_sync_bn(run.device.type)
        run.recipe = torch.nn.SyncBatchNorm.convert_sync_batchnorm(run.recipe)
    speed.apply(run.recipe, run.speed, run.report.say)


def _fine_tune(run: Run) -> dict[str, Any] | None:
    """Start from --init-from weights (new runs, and resumed ones without a checkpoint yet); apply --freeze."""
    config, report = run.config, None
    starting = not run.resumed or not checkpoint.list_steps(run.run_dir)
    if config.init_from and starting:
        weights, source = finetune.initial_weights(config.init_from)
        fit = finetune.apply_initial_weights(run.recipe, weights, not config.no_strict, source,
                                             model_name=run.plan.model.name)
        for line in finetune.describe_fit(fit):
            run.report.say(line)
        report = {"source": source, **fit}
    if config.freeze:
        frozen = finetune.freeze(run.recipe, config.freeze)
        run.report.froze(len(frozen), config.freeze)
    return report


def _optimizers(run: Run) -> None:
    """The model's optimizers and schedulers, in the step runner; a run that would train nothing is refused."""
    model = run.plan.model.qualified_name
    optimizers = run.recipe.configure_optimizers(run.config.lr)
    contracts.check_optimizers(optimizers, model)
    optimizers = optim.rebuild_optimizers(optimizers, run.config, run.plan.model.name)  # --optimizer and its options
    schedulers = optim.wrap_schedulers(optimizers, run.recipe.configure_schedulers(optimizers), run.config,
                                       run.schedule.steps_per_epoch, run.schedule.total_steps)
    run.state = TrainState(BadItems(run.config.skip_bad_files),
                           samples_per_batch=run.config.batch_size * run.dist.world_size)
    run.stepper = StepRunner(run, optimizers, schedulers, run.precision, run.report, run.state)
    idle = contracts.idle_optimizers(run.stepper.params, run.config.freeze, model)
    if idle:
        run.report.idle_optimizers(idle)
    if run.dist.enabled:  # each network in DistributedDataParallel (after --freeze and --sync-bn)
        # DDP's static graph cannot skip the syncs of accumulating micro-batches (no_sync): only without them
        static = bool(getattr(run.recipe, "ddp_static_graph", False)) and run.config.accumulate == 1
        options = DDPOptions(run.config.ddp_comm_hook, run.config.find_unused_parameters, static_graph=static)
        run.stepper.parallel = DataParallel(run.recipe, run.stepper.params, run.device, options,
                                            run.plan.model.name)


def _bookkeeping(run: Run) -> None:
    """Hooks, the metrics log, sample grids, what hooks see of the run, the window, stops and checkpoints."""
    config = run.config
    recorded = run.recorded.get("hook_options") or {}
    options = build.hook_options(run.plan.hooks, config.hook_opt, config.no_hooks, recorded)
    run.hooks = HookCaller(build.build_hooks(run.plan.hooks, options))
    # the hooks on, defaults included; a hook switched off keeps what it recorded, for when it is on again
    run.hook_options = dict(recorded)
    for entry in run.plan.hooks:
        run.hook_options[entry.qualified_name] = build.recorded_options(entry, options[entry.qualified_name]) or {}
    run.metrics_log = MetricsLog(run.run_dir)
    run.pictures = pictures.Pictures(run.recipe, run.test_set, config.seed, run.device, run.precision.autocast,
                                     say=run.report.say)
    run.context = RunContext(run.run_dir, config, run.recipe, run.device, run.pictures.grid, run.metrics_log,
                             lambda context, step, name, value: run.hooks.call("on_log", run=context, step=step,
                                                                                name=name, value=value))
    run.context.rank = run.dist.rank
    run.window = Window()
    run.checkpoints = Checkpoints(run)
    run.stopper = Stopper(run.dist, run.context, lambda signum: run.report.signal_received(
        signum, overwrite_pending=bool(run.checkpoints.after_first_save)))

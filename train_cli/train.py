"""``zoo train``: parse options into a config, then train here, or in N processes through torchrun."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from train_cli import completion, jobs, run_folder
from train_cli.paths import check_data_there, no_empty_paths
from zoo.config import AUGMENT_PRESETS, DDP_COMM_HOOKS, TrainConfig, absolute_data, load_toml, merge, pin_recorded_parts, resume_config
from zoo.errors import UsageError
from zoo.optim_flags import command_line_values
from zoo.options import split_assignments, split_hook_assignments
from zoo.registry import Entry, Registry, changed_plugins

if TYPE_CHECKING:
    from train_cli.main import Context

@click.command("train")
@click.option("--model", shell_complete=completion.names("model"), help="Model name (see 'zoo list models'); NAME or plugin:NAME.")
@click.option("--loss", shell_complete=completion.names("loss"), help="Loss name; what it means depends on the model ('zoo info MODEL').")
@click.option("--dataset", shell_complete=completion.names("dataset"), help="Dataset name; default: the embedded procedural dataset.")
@click.option("--data", help="Where the dataset reads from: a folder, or a glob for glob_patches.")
@click.option("--epochs", type=int, help="Passes over the training split (default 10 unless --max-steps).")
@click.option("--max-steps", type=int, help="Stop after this many steps (with --epochs: whichever ends first).")
@click.option("--batch-size", type=int, help="Samples per batch (default 64).")
@click.option("--lr", type=float, help="Learning rate (default: the model's own).")
@click.option("--optimizer", multiple=True, metavar="[NAME=]CLASS",
              help="adam, adamw, sgd or any torch.optim class; NAME=CLASS for the model's optimizer NAME only "
                   "(repeatable; default: the model's own).")
@click.option("--momentum", multiple=True, metavar="[NAME=]X", help="Momentum (sgd, rmsprop...); NAME=X for one optimizer.")
@click.option("--nesterov", is_flag=True, default=None, help="Nesterov momentum (sgd).")
@click.option("--weight-decay", multiple=True, metavar="[NAME=]X",
              help="Weight decay (decoupled for adamw); NAME=X for one optimizer.")
@click.option("--lr-schedule", type=click.Choice(["model", "constant", "step", "cosine", "one-cycle"]),
              help="Learning-rate schedule: cosine and one-cycle over the run's steps (default: the model's own).")
@click.option("--warmup", metavar="N|Ne", help="Linear learning-rate warm-up over N steps, or N epochs as Ne (e.g. 2e).")
@click.option("--seed", type=int, help="Seed for every RNG, -2**63 to 2**64-1 (default 0).")
@click.option("--device", help="auto, cpu, cuda, cuda:N or mps (default auto).")
@click.option("--workers", type=int, help="DataLoader worker processes (default 0).")
@click.option("--precision", type=click.Choice(["32", "bf16", "16-mixed"]), help="Numeric precision (default 32).")
@click.option("--channels-last", is_flag=True, default=None, help="Channels-last memory layout (fast on CUDA).")
@click.option("--compile", is_flag=True, default=None, help="torch.compile the networks (falls back if not possible).")
@click.option("--cuda-graph", is_flag=True, default=None,
              help="Capture each training step in a CUDA graph and replay it (falls back if not possible).")
@click.option("--fast", is_flag=True, default=None,
              help="On CUDA: bf16, channels-last and CUDA graphs together (on the CPU: no change).")
@click.option("--nproc-per-node", type=int,
              help="Train in N processes through torchrun (DistributedDataParallel; NCCL on GPUs, gloo on CPU).")
@click.option("--sync-bn", is_flag=True, default=None,
              help="With several processes on GPUs: SyncBatchNorm (BatchNorm statistics over the global batch).")
@click.option("--ddp-comm-hook", type=click.Choice(DDP_COMM_HOOKS),
              help="With several processes: send gradients in bf16 or fp16, or compressed by PowerSGD (default off).")
@click.option("--find-unused-parameters", is_flag=True, default=None,
              help="With several processes: for models whose steps leave some parameters without gradients.")
@click.option("--cache-decoded", is_flag=True, default=None,
              help="Decode images once into a memory-mapped uint8 cache ($ZOO_CACHE_DIR or ~/.cache/zoo/decoded).")
@click.option("--decode-on-device", is_flag=True, default=None,
              help="Decode training JPEGs on the GPU a batch at a time; workers only read files (falls back if not possible).")
@click.option("--augment", type=click.Choice(AUGMENT_PRESETS),
              help="Train-split augmentation preset (default: the dataset's own; imagefolder flips; docs/datasets.md).")
@click.option("--accumulate", type=int, help="Batches per optimizer step (virtual batch; default 1).")
@click.option("--clip-grad", type=float, help="Clip each optimizer's gradient norm to this value.")
@click.option("--eval-every", type=int, help="Evaluate every N steps; 0 = never (default: each epoch's end).")
@click.option("--best-metric", metavar="NAME[:max|min]",
              help="The evaluation metric that picks the best checkpoint, e.g. ema/accuracy for the averaged "
                   "weights (default: the model's own).")
@click.option("--eval-batches", type=int, help="Evaluate on the first N test batches only, for quick checks "
                                               "(default: the whole test split).")
@click.option("--save-every", type=int, help="Checkpoint every N steps; 0 = only at the end (default: each epoch's end).")
@click.option("--keep", type=int, help="Checkpoints to keep (default 3; the best by the model's metric is kept too).")
@click.option("--log-every", type=int, help="Log losses every N steps (default 20).")
@click.option("--skip-bad-files", is_flag=True, default=None,
              help="Skip samples that cannot be read (counted at the end) instead of stopping.")
@click.option("--skip-nonfinite", is_flag=True, default=None,
              help="Check every step's loss (one device sync a step) and skip non-finite steps.")
@click.option("--init-from", metavar="RUN_DIR|FILE.safetensors",
              help="Start from these weights (a run's newest checkpoint, a checkpoint folder or a file).")
@click.option("--no-strict", is_flag=True, default=None,
              help="With --init-from: load what fits and list the missing and unexpected keys.")
@click.option("--freeze", multiple=True, metavar="PATTERN",
              help="Freeze parameters whose names match (fnmatch, e.g. 'net.features.*'; repeatable).")
@click.option("--run-dir", type=click.Path(file_okay=False), help="Run folder (default runs/<model>-<loss>-<time>).")
@click.option("--resume", type=click.Path(), help="Continue the run in this folder from its newest checkpoint.")
@click.option("--overwrite", is_flag=True, help="Replace the run already in --run-dir.")
@click.option("--hook", "hooks", multiple=True, metavar="NAME", shell_complete=completion.names("hook"),
              help="Turn a training hook on (repeatable).")
@click.option("--no-hook", "no_hooks", multiple=True, metavar="NAME", shell_complete=completion.hooks_on,
              help="Turn a default hook off (repeatable).")
@click.option("--model-opt", multiple=True, metavar="KEY=VALUE", shell_complete=completion.option_keys("model"),
              help="A model option (repeatable; see 'zoo info').")
@click.option("--loss-opt", multiple=True, metavar="KEY=VALUE", shell_complete=completion.option_keys("loss"),
              help="A loss option (repeatable).")
@click.option("--dataset-opt", multiple=True, metavar="KEY=VALUE", shell_complete=completion.option_keys("dataset"),
              help="A dataset option (repeatable).")
@click.option("--hook-opt", multiple=True, metavar="HOOK.KEY=VALUE", shell_complete=completion.hook_option_keys,
              help="A hook option, e.g. early_stopping.patience=5 (repeatable).")
@click.option("--config", "config_file", type=click.Path(dir_okay=False),
              help="TOML file of options (keys like batch_size; tables [model_opt] ...); flags override it.")
@click.option("--print-config", is_flag=True,
              help="Print the run's whole config as TOML, each value's origin in a comment, and exit without "
                   "training; --config takes the file back as is.")
@click.pass_obj
def train_command(ctx: Context, resume: str | None, overwrite: bool, config_file: str | None, print_config: bool,
                  **options: Any) -> None:
    """Train a model; Ctrl-C or SIGTERM saves a checkpoint first (exit 130 / 143)."""
    no_empty_paths(resume=resume, config=config_file, run_dir=options.get("run_dir"))
    registry = ctx.registry()
    given = _given(options)
    nproc = given.pop("nproc_per_node")
    if resume:
        if print_config:
            raise UsageError(f"--print-config shows a new run's config; a resumed run keeps its own, in "
                             f"{Path(resume) / 'config.json'}.")
        config, saved, moved_from = _resumed_config(resume, overwrite, config_file, given)
        run_dir = Path(resume)
    else:
        config, run_dir, file_values = _new_config(registry, config_file, given)
    registry.check_known("hook", given["hook_opt"], "--hook-opt")  # a typo fails before any folder is made
    if print_config:
        from zoo.config_resolve import origins_of, resolved_toml

        click.echo(resolved_toml(registry, config, origins_of(file_values, given), nproc or 1), nl=False)
        return
    from zoo.engine.distributed import launched_by_torchrun

    if not launched_by_torchrun():  # said once: by the launcher or the lone process
        if resume:
            for note in changed_plugins(registry, saved.get("resolved")):
                click.echo(note, err=True)
            if moved_from is not None:
                click.echo(f"zoo: the run's data {moved_from} is gone; reading {config.data} instead.", err=True)
        if nproc is not None:
            _check_before_launch(config, nproc, saved if resume else None)
            jobs.launch(nproc, run_dir, given_run_dir=bool(resume or config.run_dir))
            return
    _train(registry, config, run_dir, bool(resume), overwrite)


def _check_before_launch(config: TrainConfig, nproc: int, saved: dict[str, Any] | None) -> None:
    """What N processes would each refuse, refused once here before they start: too few GPUs, --sync-bn off
    CUDA, a resumed global batch that does not split over N."""
    import torch

    from zoo.engine.distributed import check_gpu_count, check_sync_bn

    check_gpu_count(config.device, nproc)
    if config.sync_bn and nproc > 1:
        auto = "cuda" if torch.cuda.is_available() else "cpu"
        check_sync_bn(auto if config.device == "auto" else config.device.split(":")[0])
    if saved is not None:
        _check_global_batch_splits(config, saved, nproc)


def _given(options: dict[str, Any]) -> dict[str, Any]:
    """The options as config values: repeatable ones as lists, KEY=VALUE ones as tables."""
    given = dict(options)
    for name in ("hooks", "no_hooks", "freeze"):
        given[name] = list(given[name])
    for table in ("model_opt", "loss_opt", "dataset_opt"):
        given[table] = split_assignments(given[table], "--" + table.replace("_", "-"))
    given["hook_opt"] = split_hook_assignments(given["hook_opt"])
    given.update(command_line_values(given["optimizer"], given["momentum"], given["weight_decay"]))
    both = next((name for name in given["hooks"] if name in given["no_hooks"]), None)
    if both is not None:
        raise UsageError(f"--hook {both} and --no-hook {both} contradict each other; keep the one you mean.")
    return given


def _resumed_config(resume: str, overwrite: bool, config_file: str | None,
                    given: dict[str, Any]) -> tuple[TrainConfig, dict[str, Any], str | None]:
    """The saved run's config with the options given now; also what the run saved, and its --data if that
    has moved (the saved path, else None)."""
    from zoo.engine.rundir import read_config

    if overwrite:
        raise UsageError("--overwrite starts a run over and --resume goes on with it; drop one of them.")
    if config_file:
        raise UsageError("--config cannot be combined with --resume; the run keeps its saved config.")
    run_folder.put_back_set_aside(Path(resume))
    saved = read_config(Path(resume))
    if given.get("data") is None:
        check_data_there(saved["config"].get("data"), f"zoo train --resume {resume} --data NEW")
    config = resume_config(saved.get("config", {}), given)
    pin_recorded_parts(config, saved.get("resolved"))
    moved_from = None
    if config.data != absolute_data(saved.get("config", {}).get("data")):
        moved_from = saved["config"]["data"]
    return config, saved, moved_from


def _check_global_batch_splits(config: TrainConfig, saved: dict[str, Any], nproc: int) -> None:
    """A usage error where the resumed run's global batch cannot be split over ``nproc`` processes."""
    from zoo.engine.record import recorded_processes
    from zoo.engine.saving import per_process_batch

    per_process_batch(config.batch_size, recorded_processes(saved.get("resolved"), nproc), nproc, config.accumulate)


def _new_config(registry: Registry, config_file: str | None,
                given: dict[str, Any]) -> tuple[TrainConfig, Path, dict[str, Any]]:
    """A new run's config (the --config file, overridden by the options), its run folder and the file's values."""
    from zoo.engine.rundir import default_run_dir

    file_values = load_toml(config_file) if config_file else {}
    config = TrainConfig.from_dict(merge(file_values, given), config_file or "options")
    config.data = absolute_data(config.data)
    if not config.model:
        raise UsageError("--model is required; 'zoo list models' shows the choices.")
    if config.no_strict and not config.init_from:  # a new run's mistake; a saved run keeps what it had
        raise UsageError("--no-strict only changes how --init-from loads weights; add --init-from RUN_DIR "
                         "or drop --no-strict.")
    model_entry = registry.resolve("model", config.model)  # a typo fails before any folder is made
    run_dir = Path(config.run_dir) if config.run_dir else default_run_dir(
        config.model, config.loss or _default_loss(model_entry))
    return config, run_dir, file_values


def _default_loss(entry: Entry) -> str | None:
    """The loss a model trains with when --loss is not given (for the run folder's name)."""
    from zoo.build import load_recipe_class
    return load_recipe_class(entry).default_loss


def _train(registry: Registry, config: TrainConfig, run_dir: Path, resume: bool, overwrite: bool) -> None:
    """Train in this process: alone, or as one process of a torchrun job (whose errors are said once)."""
    from zoo.engine.distributed import broadcast_object, setup, teardown

    dist_context = setup(config.device)
    try:
        if dist_context.enabled and not resume and not config.run_dir:
            run_dir = Path(broadcast_object(str(run_dir), dist_context))  # one folder for every process
        config.run_dir = str(run_dir)
        with run_folder.taken(run_dir, config, resume, overwrite, dist_context) as folder:
            from zoo.engine.trainer import Trainer  # imports torch: after the cheap checks above

            trainer = Trainer(config, registry, run_dir, resume=resume, command_line=["zoo", *sys.argv[1:]],
                              dist_context=dist_context)
            folder.holds_run(trainer)
            jobs.fit(trainer, dist_context)
    except BaseException as exc:  # the process group is left as it is: the process exits now (main._exit)
        said = jobs.job_error(exc, dist_context.rank) if dist_context.enabled and isinstance(exc, Exception) else exc
        if said is exc:
            raise
        raise said from exc
    teardown(dist_context)

"""``zoo train`` and ``zoo test``: parse options, build a config, hand it to the engine."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import click

from zoo.config import TrainConfig, absolute_data, data_present, load_toml, merge, pin_recorded_parts, resume_config
from zoo.errors import RunError, UsageError, ZooError, first_line
from zoo.registry import changed_plugins
from zoo.options import split_assignments, split_hook_assignments

@click.command("train")
@click.option("--model", help="Model name (see 'zoo list models'); NAME or plugin:NAME.")
@click.option("--loss", help="Loss name; what it means depends on the model ('zoo info MODEL').")
@click.option("--dataset", help="Dataset name; default: the embedded procedural dataset.")
@click.option("--data", help="Where the dataset reads from: a folder, or a glob for glob_patches.")
@click.option("--epochs", type=int, help="Passes over the training split (default 10 unless --max-steps).")
@click.option("--max-steps", type=int, help="Stop after this many steps (with --epochs: whichever ends first).")
@click.option("--batch-size", type=int, help="Samples per batch (default 64).")
@click.option("--lr", type=float, help="Learning rate (default: the model's own).")
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
              help="Train in N processes through torchrun (DDP-style data parallel; NCCL on GPUs, gloo on CPU).")
@click.option("--sync-bn", is_flag=True, default=None, help="With several processes: synchronise BatchNorm statistics.")
@click.option("--cache-decoded", is_flag=True, default=None,
              help="Decode images once into a memory-mapped uint8 cache ($ZOO_CACHE_DIR or ~/.cache/zoo/decoded).")
@click.option("--decode-on-device", is_flag=True, default=None,
              help="Decode training JPEGs on the GPU a batch at a time; workers only read files (falls back if not possible).")
@click.option("--accumulate", type=int, help="Batches per optimizer step (virtual batch; default 1).")
@click.option("--clip-grad", type=float, help="Clip each optimizer's gradient norm to this value.")
@click.option("--eval-every", type=int, help="Evaluate every N steps; 0 = never (default: each epoch's end).")
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
@click.option("--hook", "hooks", multiple=True, metavar="NAME", help="Turn a training hook on (repeatable).")
@click.option("--no-hook", "no_hooks", multiple=True, metavar="NAME", help="Turn a default hook off (repeatable).")
@click.option("--model-opt", multiple=True, metavar="KEY=VALUE", help="A model option (repeatable; see 'zoo info').")
@click.option("--loss-opt", multiple=True, metavar="KEY=VALUE", help="A loss option (repeatable).")
@click.option("--dataset-opt", multiple=True, metavar="KEY=VALUE", help="A dataset option (repeatable).")
@click.option("--hook-opt", multiple=True, metavar="HOOK.KEY=VALUE",
              help="A hook option, e.g. early_stopping.patience=5 (repeatable).")
@click.option("--config", "config_file", type=click.Path(dir_okay=False),
              help="TOML file of options (keys like batch_size; tables [model_opt] ...); flags override it.")
@click.pass_obj
def train_command(ctx, resume: str | None, overwrite: bool, config_file: str | None, **options) -> None:
    """Train a model; Ctrl-C or SIGTERM saves a checkpoint first (exit 130 / 143)."""
    from zoo.engine.rundir import default_run_dir, read_config

    no_empty_paths(resume=resume, config=config_file, run_dir=options.get("run_dir"))
    registry = ctx.registry()
    given = {key: value for key, value in options.items()}
    given["hooks"] = list(given["hooks"])
    given["no_hooks"] = list(given["no_hooks"])
    given["freeze"] = list(given["freeze"])
    for table in ("model_opt", "loss_opt", "dataset_opt"):
        given[table] = split_assignments(given[table], "--" + table.replace("_", "-"))
    given["hook_opt"] = split_hook_assignments(given["hook_opt"])
    both = next((name for name in given["hooks"] if name in given["no_hooks"]), None)
    if both is not None:
        raise UsageError(f"--hook {both} and --no-hook {both} contradict each other; keep the one you mean.")
    nproc = given.pop("nproc_per_node")
    moved_from = None  # the saved --data of a resumed run whose data has moved
    if resume:
        if overwrite:
            raise UsageError("--overwrite starts a run over and --resume goes on with it; drop one of them.")
        if config_file:
            raise UsageError("--config cannot be combined with --resume; the run keeps its saved config.")
        _put_back_set_aside(Path(resume))
        saved = read_config(Path(resume))
        if given.get("data") is None:
            _check_data_there(saved["config"].get("data"), f"zoo train --resume {resume} --data NEW")
        config = resume_config(saved.get("config", {}), given)
        pin_recorded_parts(config, saved.get("resolved"))
        if config.data != absolute_data(saved.get("config", {}).get("data")):
            moved_from = saved["config"]["data"]
        run_dir = Path(resume)
    else:
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
    registry.check_known("hook", given["hook_opt"], "--hook-opt")  # a typo fails before any folder is made
    from zoo.engine.distributed import broadcast_object, check_gpu_count, launched_by_torchrun, teardown
    from zoo.engine.distributed import setup as distributed_setup

    if resume and not launched_by_torchrun():  # said once: by the launcher or the lone process
        for note in changed_plugins(registry, saved.get("resolved")):
            click.echo(note, err=True)
    if moved_from is not None and not launched_by_torchrun():
        click.echo(f"zoo: the run's data {moved_from} is gone; reading {config.data} instead.", err=True)
    if nproc is not None and not launched_by_torchrun():
        check_gpu_count(config.device, nproc)
        _launch(nproc, run_dir, given_run_dir=bool(resume or config.run_dir))
        return
    dist_context = distributed_setup(config.device)
    try:
        if dist_context.enabled and not resume and not config.run_dir:
            run_dir = Path(broadcast_object(str(run_dir), dist_context))  # one folder for every process
        config.run_dir = str(run_dir)
        _train(registry, config, run_dir, bool(resume), overwrite, dist_context)
    except Exception as exc:
        said = _once_per_job(exc, dist_context.is_main) if dist_context.enabled else exc
        if said is exc:
            raise
        raise said from exc
    finally:
        teardown(dist_context)


# what a process's collective calls raise when another process of the job has left
_PEER_GONE = ("connection closed by peer", "connection reset by peer", "broken pipe", "socket closed")


def _once_per_job(exc: Exception, is_main: bool) -> Exception:
    """A process's error in a job of several, made quiet where another process says why the job ended.

    A usage error, or an error of the training steps (which every process takes in step), is the same
    on every process: rank 0 says it. A process whose peer left (it stopped on an error it printed, or
    the launcher names the signal that killed it) ends quietly, not as an internal error. Other errors
    of one process (its GPU full, an unreadable file it met) are its own to say.
    """
    if isinstance(exc, ZooError):
        same_everywhere = isinstance(exc, UsageError) or getattr(exc, "same_on_every_process", False)
        exc.quiet = exc.quiet or (not is_main and same_everywhere)
        return exc
    if any(words in str(exc).lower() for words in _PEER_GONE):
        ended = RunError(f"another process of the job stopped ({first_line(exc)})")
        ended.quiet = True
        return ended
    return exc


def no_empty_paths(**paths: str | None) -> None:
    """An empty path option (``--resume ""``, ``--out ""``...) is a mistake, not the option left out."""
    for name, value in paths.items():
        if value is not None and not value.strip():
            flag = "--" + name.replace("_", "-")
            optional = "" if name == "run" else f", or leave {flag} out"  # --run is required where it is taken
            raise UsageError(f"{flag} was given an empty path; name a folder or file{optional}.")


def _put_back_set_aside(run_dir: Path) -> None:
    """Before reading a run to resume: put back one a start killed right after setting it aside left hidden."""
    from zoo.engine.lock import RunLock
    from zoo.engine.rundir import ASIDE_PREFIX, recover_set_aside

    if (run_dir / "config.json").exists() or not any(run_dir.glob(f"{ASIDE_PREFIX}*")):
        return
    lock = RunLock(run_dir)
    lock.acquire()  # a start still running there is named, and nothing moves
    try:
        recover_set_aside(run_dir)
    finally:
        lock.release()


def _check_data_there(saved_data: str | None, fix: str) -> None:
    """A run's saved --data that was a path and is gone: say so, and how to name its new place."""
    if saved_data and os.path.isabs(saved_data) and not data_present(saved_data):
        raise UsageError(f"the run's data {saved_data} is gone; if it moved, name its new place: {fix}")


def _default_loss(entry) -> str | None:
    """The loss a model trains with when --loss is not given (for the run folder's name)."""
    from zoo.build import load_recipe_class
    return load_recipe_class(entry).default_loss


def _train(registry, config: TrainConfig, run_dir: Path, resume: bool, overwrite: bool, dist_context) -> None:
    """Take the run folder (rank 0), prepare it and train.

    A run ``--overwrite`` replaces stays aside until the new one has written its first checkpoint;
    anything that ends the new run before that (a mistake, a crash, Ctrl-C) puts it back.
    """
    from zoo.engine.distributed import barrier
    from zoo.engine.lock import RunLock
    from zoo.engine.rundir import discard_replaced, prepare_new, recover_set_aside, restore_replaced

    lock = RunLock(run_dir) if dist_context.is_main else None
    created = not run_dir.exists()
    finished = False
    replaced = None  # the run --overwrite replaces, kept aside until the new one has saved
    try:
        if lock is not None:
            if overwrite and config.init_from and _in_run(Path(config.init_from), run_dir):
                raise UsageError(f"--init-from {config.init_from} is in the run --overwrite replaces; copy the "
                                 f"checkpoint out of {run_dir} first, or pick another --run-dir.")
            try:
                run_dir.mkdir(parents=True, exist_ok=True)
                lock.acquire()
                recover_set_aside(run_dir)
                if not resume:
                    replaced = prepare_new(run_dir, overwrite, keep_replaced=True)
            except OSError as exc:
                raise UsageError(f"cannot write the run folder {run_dir} ({exc.strerror or exc}); pick a "
                                 f"writable --run-dir.") from None
        barrier(dist_context)
        from zoo.engine.trainer import Trainer  # imports torch: after the cheap checks above

        trainer = Trainer(config, registry, run_dir, resume=resume, command_line=["zoo", *sys.argv[1:]],
                          dist_context=dist_context)
        finished = True  # built: from here on the folder is a run, whatever happens
        if replaced is not None:
            trainer.after_first_save.append(lambda: discard_replaced(replaced))
        try:
            trainer.fit()
        except ZooError as exc:  # in step with rank 0, which says the same (an unreadable file: the one that met it)
            exc.same_on_every_process = not getattr(exc, "met_by_one_process", False)
            raise
    except BaseException:
        if replaced is not None and replaced.exists():  # the new run saved nothing: the old one comes back
            restore_replaced(replaced)
            click.echo(f"zoo: the run in {run_dir} that --overwrite was replacing is back as it was.", err=True)
        raise
    finally:
        if lock is not None:
            lock.release()
            if created and not finished and not resume:
                shutil.rmtree(run_dir, ignore_errors=True)  # a run that never started leaves nothing


def _in_run(path: Path, run_dir: Path) -> bool:
    """Whether ``path`` is the run folder or lies in what a run keeps there (its checkpoints, say)."""
    from zoo.engine.rundir import RUN_ENTRIES

    path, run_dir = path.expanduser().resolve(), run_dir.expanduser().resolve()
    return path == run_dir or any(path == run_dir / name or run_dir / name in path.parents for name in RUN_ENTRIES)


def _launch(nproc: int, run_dir: Path, given_run_dir: bool) -> None:
    """Run this same command in ``nproc`` processes through torch's own launcher (torchrun)."""
    if nproc < 1:
        raise UsageError(f"--nproc-per-node must be at least 1, got {nproc}.")
    argv, skip = [], False
    for arg in sys.argv[1:]:
        if skip:
            skip = False
            continue
        if arg == "--nproc-per-node":
            skip = True
            continue
        if arg.startswith("--nproc-per-node="):
            continue
        argv.append(arg)
    if not given_run_dir:
        argv += ["--run-dir", str(run_dir)]
    command = [sys.executable, "-m", "train_cli.launch", "--standalone", "--nnodes=1",
               f"--nproc-per-node={nproc}", "-m", "train_cli", *argv]
    env = dict(os.environ)
    # torchrun sets 1 thread per process and prints a banner saying so; share the cores instead, quietly
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    env.setdefault("OMP_NUM_THREADS", str(max(1, cores // nproc)))
    process = subprocess.Popen(command, env=env)
    received: list[int] = []

    def forward(signum: int, _frame: object) -> None:  # the launcher stops its workers cleanly
        received.append(signum)
        process.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        code = process.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if received:
        raise click.exceptions.Exit(128 + received[0])  # the workers saved before stopping
    if code:
        raise click.exceptions.Exit(code)


@click.command("test")
@click.option("--run", "run_dir", required=True, type=click.Path(), help="A run folder made by 'zoo train'.")
@click.option("--step", type=click.IntRange(min=0), help="Use checkpoints/step-N (default: the newest).")
@click.option("--checkpoint", help="A checkpoint folder (default: the run's newest).")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:N or mps.")
@click.option("--batch-size", type=click.IntRange(min=1), help="Batch size (default: the run's).")
@click.option("--workers", type=click.IntRange(min=0), default=0, show_default=True, help="Loader workers.")
@click.option("--data", help="Where the run's data is now, if it moved (default: the run's --data).")
@click.option("--skip-bad-files", is_flag=True, help="Skip unreadable samples (counted) instead of failing.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.pass_obj
def test_command(ctx, run_dir: str, step: int | None, checkpoint: str | None, device: str, batch_size: int | None,
                 workers: int, data: str | None, skip_bad_files: bool, as_json: bool) -> None:
    """Evaluate a run's checkpoint on its dataset's test split; saves test-metrics.json."""
    from zoo.engine.rundir import json_text, read_config
    from zoo.engine.tester import evaluate_run

    no_empty_paths(run=run_dir, checkpoint=checkpoint, data=data)
    saved = read_config(Path(run_dir))
    if data is None:
        _check_data_there(saved["config"].get("data"), f"zoo test --run {run_dir} --data NEW")
    for note in changed_plugins(ctx.registry(), saved.get("resolved")):
        click.echo(note, err=True)
    result = evaluate_run(ctx.registry(), Path(run_dir), step=step, chosen=checkpoint, device=device,
                          batch_size=batch_size, workers=workers, data=absolute_data(data),
                          skip_bad_files=skip_bad_files)
    unsaved = result.pop("not_saved", None)
    if as_json:
        click.echo(json_text(result))
    else:
        skipped = f" ({result['skipped']} unreadable skipped)" if result.get("skipped") else ""
        click.echo(f"checkpoint {result['checkpoint']} on {result['samples']} test samples{skipped}:")
        width = max([len(key) for key in result["metrics"]] + [len("samples")])
        for key, value in result["metrics"].items():
            click.echo(f"  {key:<{width}}  {value:.4f}")
        if "sample_grid" in result:
            click.echo(f"  {'samples':<{width}}  {result['sample_grid']}")
        if not unsaved:
            click.echo(f"saved {Path(run_dir) / 'test-metrics.json'}")
    if unsaved:
        raise RunError(unsaved)

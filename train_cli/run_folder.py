"""The folder ``zoo train`` runs in: taken under a lock, emptied for a new run or ``--overwrite``, and left
as it was found when the run never starts."""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import click

from zoo.config import TrainConfig
from zoo.errors import UsageError

if TYPE_CHECKING:
    from zoo.engine.distributed import DistContext  # imports torch
    from zoo.engine.lock import RunLock
    from zoo.engine.trainer import Trainer


class TakenFolder:
    """A run folder a run is starting in, and the run ``--overwrite`` replaces there (kept aside), if any."""

    def __init__(self) -> None:
        self.replaced: Path | None = None
        self.started = False

    def holds_run(self, trainer: Trainer) -> None:
        """The trainer is built: from here on the folder is a run, whatever happens; the run it replaces
        goes once the new one has written its first checkpoint."""
        from zoo.engine.rundir import discard_replaced

        self.started = True
        replaced = self.replaced
        if replaced is not None:
            trainer.after_first_save.append(lambda: discard_replaced(replaced))


@contextlib.contextmanager
def taken(run_dir: Path, config: TrainConfig, resume: bool, overwrite: bool,
          dist_context: DistContext) -> Iterator[TakenFolder]:
    """Take the run folder (rank 0) and prepare it; the other processes wait until it is ready.

    A run ``--overwrite`` replaces stays aside until the new one has written its first checkpoint;
    anything that ends the new run before that (a mistake, a crash, Ctrl-C) puts it back.
    """
    from zoo.engine.distributed import barrier
    from zoo.engine.lock import RunLock
    from zoo.engine.rundir import restore_replaced

    lock = RunLock(run_dir) if dist_context.is_main else None
    created = not run_dir.exists()
    folder = TakenFolder()
    try:
        if lock is not None:
            folder.replaced = _prepare(lock, run_dir, config, resume, overwrite)
        barrier(dist_context)
        yield folder
    except BaseException:
        if folder.replaced is not None and folder.replaced.exists():  # the new run saved nothing: put the old back
            restore_replaced(folder.replaced)
            click.echo(f"zoo: the run in {run_dir} that --overwrite was replacing is back as it was.", err=True)
        raise
    finally:
        if lock is not None:
            lock.release()
            if created and not folder.started and not resume:
                shutil.rmtree(run_dir, ignore_errors=True)  # a run that never started leaves nothing


def _prepare(lock: RunLock, run_dir: Path, config: TrainConfig, resume: bool, overwrite: bool) -> Path | None:
    """Make and lock the run folder and empty it for a new run; return the run ``--overwrite`` set aside."""
    from zoo.engine.rundir import prepare_new, recover_set_aside

    if overwrite and config.init_from and _in_run(Path(config.init_from), run_dir):
        raise UsageError(f"--init-from {config.init_from} is in the run --overwrite replaces; copy the "
                         f"checkpoint out of {run_dir} first, or pick another --run-dir.")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        lock.acquire()
        recover_set_aside(run_dir)
        return None if resume else prepare_new(run_dir, overwrite, keep_replaced=True)
    except OSError as exc:
        raise UsageError(f"cannot write the run folder {run_dir} ({exc.strerror or exc}); pick a "
                         f"writable --run-dir.") from None


def _in_run(path: Path, run_dir: Path) -> bool:
    """Whether ``path`` is the run folder or lies in what a run keeps there (its checkpoints, say)."""
    from zoo.engine.rundir import RUN_ENTRIES

    path, run_dir = path.expanduser().resolve(), run_dir.expanduser().resolve()
    return path == run_dir or any(path == run_dir / name or run_dir / name in path.parents for name in RUN_ENTRIES)


def put_back_set_aside(run_dir: Path) -> None:
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

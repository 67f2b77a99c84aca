"""Training in several processes: the torchrun launch, and which process of a job says each error.

Every process of a job meets an error on its own; printed by each, a job of N says it N times.
A process's errors in a job are raised as :class:`JobError` (the error, the process's rank, whether
the training steps raised it) and :func:`said_here`, asked by ``zoo``'s error printing, decides once
per error whether this process prints it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from zoo.errors import RunError, UsageError, ZooError, first_line

if TYPE_CHECKING:  # both import torch
    from zoo.engine.distributed import DistContext
    from zoo.engine.trainer import Trainer

# what a process's collective calls raise when another process of the job has left
_PEER_GONE = ("connection closed by peer", "connection reset by peer", "broken pipe", "socket closed")


class PeerGone(RunError):
    """Another process of the job left (it stopped on an error it printed, or a signal killed it)."""


class JobError(ZooError):
    """An error one process of a job of several met: the error, that process's rank, and whether the
    training steps (which every process takes in step) raised it; says what ``error`` says."""

    def __init__(self, error: ZooError, rank: int, in_steps: bool = False) -> None:
        super().__init__(str(error), one_process=error.one_process)
        self.error, self.rank, self.in_steps = error, rank, in_steps
        self.exit_code = error.exit_code

    def __reduce__(self) -> tuple:  # crosses process boundaries like any exception
        return type(self), (self.error, self.rank, self.in_steps)


def job_error(exc: Exception, rank: int, in_steps: bool = False) -> Exception:
    """What the process of ``rank`` in a job of several raises for ``exc``: a :class:`JobError`,
    or ``exc`` itself where it is a bug of this process (an internal error every process shows)."""
    if isinstance(exc, JobError):
        return exc
    if isinstance(exc, ZooError):
        return JobError(exc, rank, in_steps)
    if any(words in str(exc).lower() for words in _PEER_GONE):
        return JobError(PeerGone(f"another process of the job stopped ({first_line(exc)})"), rank, in_steps)
    return exc


def said_here(exc: ZooError) -> bool:
    """Whether this process prints ``exc``, so that a job says each error once.

    A usage error, or an error of the training steps, is the same on every process: rank 0 says it.
    A process whose peer left ends quietly (the peer said why, or the launcher names the signal that
    killed it). An error only one process can say (``one_process``) and any other error of one
    process (a plugin that failed to build there) are its own to say; so is every error of a process
    training alone.
    """
    if not isinstance(exc, JobError):
        return True
    if isinstance(exc.error, PeerGone):
        return False
    if exc.one_process:
        return True
    same_everywhere = isinstance(exc.error, UsageError) or exc.in_steps
    return exc.rank == 0 or not same_everywhere


def fit(trainer: Trainer, dist_context: DistContext) -> None:
    """Run the training steps; in a job of several, an error they raise is a :class:`JobError` of the steps."""
    try:
        trainer.fit()
    except ZooError as exc:
        if not dist_context.enabled:
            raise
        raise JobError(exc, dist_context.rank, in_steps=True) from exc


def launch(nproc: int, run_dir: Path, given_run_dir: bool) -> None:
    """Run this same command in ``nproc`` processes through torch's own launcher (torchrun)."""
    if nproc < 1:
        raise UsageError(f"--nproc-per-node must be at least 1, got {nproc}.")
    argv = _without_nproc(sys.argv[1:])
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


def _without_nproc(argv: list[str]) -> list[str]:
    """The command line without ``--nproc-per-node N`` (each process of the job trains as one)."""
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg == "--nproc-per-node":
            skip = True
            continue
        if arg.startswith("--nproc-per-node="):
            continue
        kept.append(arg)
    return kept

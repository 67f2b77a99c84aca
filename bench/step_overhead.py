"""zoo's per-step time against a plain loop on mnist_net and MNIST-format digits: what the engine and its hooks cost.

Both sides train mnist_net's small network (``--model-opt arch=small``, 21,840 parameters, in both the
zoo config and the plain loop: the figures are the engine's per-step overhead on a small model, where it
shows most; ``--arch official`` times the default network, 1.2M parameters, instead) on scikit-learn's handwritten digits (``load_digits``: 1,797
8x8 images, upscaled to 28x28), written as MNIST IDX files into a temporary folder and
read by zoo's ``mnist`` dataset: 1,500 training images, so 23 steps an epoch at batch 64.
Evaluation and periodic checkpoints are off (``--eval-every 0 --save-every 0``); loaders
have ``--workers`` processes (default 0). Three sides:

* zoo with its default hooks (logging, tensorboard, sample grids, progress bar);
* zoo with ``--no-hook samples --no-hook tensorboard``;
* the plain loop: a DataLoader over the same training split, the same model, its own
  optimizer (``recipe.configure_optimizers(lr)``) and its own ``training_step``:
  zero_grad/backward/step, nothing else.

zoo is timed in-process around ``Trainer.fit()`` (not Python's start-up nor building
the run). Each side runs at two lengths (``--short``/``--long`` steps, default 50 and
400), ``--repeats`` times each (default 3), in turn, the sides' order rotating; the
per-step time is the slope between the two lengths' fastest runs, so what a run pays
once (its start, its final checkpoint and grid) drops out and what it pays every epoch
stays in.

    python bench/step_overhead.py                    # CPU
    python bench/step_overhead.py --short 100 --long 800 --repeats 5

Each zoo line also says the time spent inside hook calls (all hooks, timed around
``HookCaller.call``), as a slope and as a share of the fastest long run: on a shared,
noisy machine it shows what the hooks cost even when the wall times cannot.

Needs scikit-learn (``pip install scikit-learn``). zoo's progress bars and messages
go to /dev/null while it is timed.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's zoo, and the tests' IDX writers

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from tests.test_datasets import write_idx_images, write_idx_labels  # noqa: E402
from train_speed import _sync  # noqa: E402
from zoo.build import build_parts  # noqa: E402
from zoo.config import TrainConfig  # noqa: E402
from zoo.engine.rundir import prepare_new  # noqa: E402
from zoo.engine.trainer import Trainer  # noqa: E402
from zoo.registry import get_registry  # noqa: E402

CLOCK = time.perf_counter  # --clock cpu: time.process_time
TRAIN_COUNT = 1500  # of load_digits' 1,797 images; the rest are the test split
SIDES = {  # name: the hooks that zoo side turns off (None: the plain loop)
    "zoo (default hooks)": [],
    "zoo --no-hook samples --no-hook tensorboard": ["samples", "tensorboard"],
    "plain loop": None,
}


def write_digits(root: Path) -> None:
    """scikit-learn's digits as MNIST IDX files in ``root/MNIST/raw`` (28x28 uint8, bilinear upscaling)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    small = torch.from_numpy(digits.images).float().unsqueeze(1) / 16.0  # (N, 1, 8, 8) in [0, 1]
    images = F.interpolate(small, size=(28, 28), mode="bilinear", align_corners=False).squeeze(1)
    images = (images.clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    labels = digits.target.astype(np.uint8)
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for prefix, part in (("train", slice(0, TRAIN_COUNT)), ("t10k", slice(TRAIN_COUNT, None))):
        write_idx_images(raw / f"{prefix}-images-idx3-ubyte", images[part])
        write_idx_labels(raw / f"{prefix}-labels-idx1-ubyte", labels[part])


def config(args: argparse.Namespace, data: Path, steps: int, folder: Path, no_hooks: list[str]) -> TrainConfig:
    """The ``zoo train`` settings of a run of ``steps`` steps (the plain loop reads the same split)."""
    return TrainConfig(model="mnist_net", model_opt={"arch": args.arch}, dataset="mnist", data=str(data),
                       batch_size=args.batch_size, max_steps=steps, device=args.device, workers=args.workers,
                       eval_every=0, save_every=0, run_dir=str(folder), no_hooks=list(no_hooks))


def zoo_seconds(args: argparse.Namespace, data: Path, steps: int, folder: Path,
                no_hooks: list[str]) -> tuple[float, float]:
    """Wall time of ``Trainer.fit()`` for a new run of ``steps`` steps, and the time spent in its hooks' calls."""
    prepare_new(folder, overwrite=True)
    trainer = Trainer(config(args, data, steps, folder, no_hooks), get_registry(), folder)
    in_hooks = [0.0]
    call = trainer.run.hooks.call

    def timed(hook_name: str, **kwargs: Any) -> None:
        began = CLOCK()
        try:
            call(hook_name, **kwargs)
        finally:
            in_hooks[0] += CLOCK() - began

    trainer.run.hooks.call = timed
    with open(os.devnull, "w") as quiet, contextlib.redirect_stderr(quiet), contextlib.redirect_stdout(quiet):
        _sync(torch.device(args.device))
        started = CLOCK()
        trainer.fit()
        _sync(torch.device(args.device))
        return CLOCK() - started, in_hooks[0]


def plain_seconds(args: argparse.Namespace, data: Path, steps: int) -> float:
    """Wall time of a hand-written loop of ``steps`` steps over the same model, optimizer and training step."""
    device = torch.device(args.device)
    parts = build_parts(get_registry(), config(args, data, steps, Path("unused"), []))
    recipe = parts.recipe.to(device).train()
    optimizers = recipe.configure_optimizers(None)
    loader = torch.utils.data.DataLoader(parts.train_set, batch_size=args.batch_size, shuffle=True,
                                         drop_last=True, num_workers=args.workers,
                                         pin_memory=device.type == "cuda")
    done = 0
    _sync(device)
    started = CLOCK()
    while done < steps:
        for batch in loader:
            batch = [part.to(device, non_blocking=True) for part in batch]
            for name, loss in recipe.training_step(batch, None):
                optimizers[name].zero_grad(set_to_none=True)
                loss.backward()
                optimizers[name].step()
            done += 1
            if done == steps:
                break
    _sync(device)
    return CLOCK() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--short", type=int, default=50, help="steps of the short runs (default 50)")
    parser.add_argument("--long", type=int, default=400, help="steps of the long runs (default 400)")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each length and side (default 3); "
                                                                "the fastest counts")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="wall time (default), or this process's CPU time: steadier on a shared machine, "
                             "where other work steals the cores; use it with OMP_NUM_THREADS=1, as idle torch "
                             "threads spin and count")
    parser.add_argument("--arch", choices=("small", "official"), default="small",
                        help="mnist_net's network: small (default, 21,840 parameters: overhead shows most) or "
                             "official (the model's default, 1.2M parameters)")
    args = parser.parse_args()
    global CLOCK
    CLOCK = time.process_time if args.clock == "cpu" else time.perf_counter
    if not 0 < args.short < args.long or args.repeats < 1:
        parser.error("need 0 < --short < --long and --repeats >= 1")
    # side: steps: [(wall seconds, seconds in hooks)] of each run
    times: dict[str, dict[int, list[tuple[float, float]]]] = {side: {args.short: [], args.long: []} for side in SIDES}
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "digits"
        write_digits(data)
        for repeat in range(args.repeats):  # in turn, so drift hits every side alike
            for steps in (args.short, args.long):
                for side in rotated(list(SIDES), repeat):  # each side first, second, third in turn
                    no_hooks = SIDES[side]
                    seconds = (plain_seconds(args, data, steps), 0.0) if no_hooks is None else \
                        zoo_seconds(args, data, steps, Path(tmp) / "run", no_hooks)
                    times[side][steps].append(seconds)
                    hooks = "" if no_hooks is None else f"  (in hooks {seconds[1]:.3f} s)"
                    print(f"run {repeat + 1}: {steps:4d} steps  {side:<44} {seconds[0]:7.3f} s{hooks}", file=sys.stderr)
    fastest = {side: {steps: min(runs[steps]) for steps in runs} for side, runs in times.items()}
    per_step = {side: (runs[args.long][0] - runs[args.short][0]) / (args.long - args.short)
                for side, runs in fastest.items()}
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({os.cpu_count()} cores)"
    print(f"{args.clock} clock; device {name}; mnist_net ({args.arch} network) on {TRAIN_COUNT} digits (28x28 IDX), "
          f"batch {args.batch_size} ({TRAIN_COUNT // args.batch_size} steps/epoch), {args.workers} workers; slope between "
          f"{args.short} and {args.long} steps, fastest of {args.repeats} runs each")
    plain = per_step["plain loop"]
    for side, ms in per_step.items():
        short, long = fastest[side][args.short], fastest[side][args.long]
        hooks = "" if SIDES[side] is None else \
            (f"; in hooks {1000 * (long[1] - short[1]) / (args.long - args.short):.2f} ms/step, "
             f"{100 * long[1] / long[0]:.1f}% of the {args.long}-step run")
        print(f"{side:<44} {1000 * ms:7.2f} ms/step   ({args.short} steps {short[0]:.3f} s, "
              f"{args.long} steps {long[0]:.3f} s{hooks})")
    for side in list(SIDES)[:2]:
        print(f"ratio {side} / plain loop: {per_step[side] / plain:.3f} (fastest runs); "
              f"{median_with_interval(paired_ratios(times[side], times['plain loop'], args))} (median of the repeats' own "
              f"slopes)")


def rotated(sides: list[str], repeat: int) -> list[str]:
    """The sides in the order of repeat ``repeat``: each takes every place in turn, so what one run leaves the
    next (freed memory, a writer thread finishing) does not always fall on the same side."""
    shift = repeat % len(sides)
    return sides[shift:] + sides[:shift]


def paired_ratios(side: dict[int, list[tuple[float, float]]], plain: dict[int, list[tuple[float, float]]],
                  args: argparse.Namespace) -> list[float]:
    """Each repeat's (side's slope / the plain loop's slope), sorted: the sides ran in turn, so a repeat slowed
    by other work slows both and its ratio holds."""
    return sorted((side[args.long][i][0] - side[args.short][i][0]) / (plain[args.long][i][0] - plain[args.short][i][0])
                  for i in range(args.repeats))


def median_with_interval(values: list[float]) -> str:
    """``median (95% interval low-high)`` of sorted values: the interval from the order statistics around the
    median (binomial, normal approximation), which assumes nothing of the noise's shape; none below 6 values."""
    n = len(values)
    middle = values[n // 2] if n % 2 else (values[n // 2 - 1] + values[n // 2]) / 2
    if n < 6:
        return f"{middle:.3f}"
    half = 0.98 * n ** 0.5  # 1.96 * sqrt(n) / 2
    low, high = values[max(0, int(n / 2 - half))], values[min(n - 1, int(math.ceil(n / 2 + half)) - 1)]
    return f"{middle:.3f} (95% interval {low:.3f}-{high:.3f})"


if __name__ == "__main__":
    main()

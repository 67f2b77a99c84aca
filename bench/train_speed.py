"""zoo train against a plain PyTorch loop on the same DCGAN and data, alternately: prints throughput and ratios.

Both sides train the reference DCGAN (BCE, Adam) on the embedded shapes dataset
with evaluation and periodic checkpoints off. zoo runs with its defaults
(logging, tensorboard and sample hooks, progress bar, prefetch); the plain loop is
the one every guide shows: a DataLoader, zero_grad/backward/step, nothing else.

    python bench/train_speed.py                       # CPU, small enough for 2 cores
    python bench/train_speed.py --device cuda --image-size 64 --batch-size 128 --steps 300 \
        --workers 12 --cache-decoded --variants default,fast   # GPU: the default path and --fast

On a GPU, drawing the shapes on the fly cannot keep up with a fast step; with
``--cache-decoded`` both sides read them from zoo's decoded cache (the one ``zoo train``
keys, built in full before the first round), so the figures time the training rather
than the drawing.

Every measurement runs in a fresh process (so no run inherits another's allocator,
threads or caches), in the order plain, then each variant, round after round.

``--variants`` names the zoo settings to time, each against the same plain fp32 loop:
default (no speed flags), fast (``--fast``: bf16 + channels-last + CUDA graphs), bf16,
bf16-cl (bf16 + channels-last), graph (``--cuda-graph`` alone, fp32), compile (``--compile``
alone), compile-bf16-cl (bf16 + channels-last + ``--compile``) and default-thread (the
default, but keeping the prefetch thread beside loader workers, as zoo did before).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from zoo.build import build_parts, build_recipe
from zoo.config import TrainConfig
from zoo.engine.cache import DecodedCache, default_root
from zoo.engine.rundir import prepare_new
from zoo.engine.trainer import Trainer, cache_origin
from zoo.registry import get_registry


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def bench_config(args: argparse.Namespace, folder: Path, variant: str = "default") -> TrainConfig:
    """The ``zoo train`` settings of a zoo side (the plain side reads the same training split)."""
    return TrainConfig(model="dcgan", batch_size=args.batch_size, max_steps=args.warmup + args.steps,
                       device=str(args.device), workers=args.workers, eval_every=0, save_every=0,
                       model_opt={"image_size": args.image_size},
                       dataset_opt={"train_count": args.train_count}, run_dir=str(folder),
                       cache_decoded=args.cache_decoded, **VARIANTS[variant])


def training_split(args: argparse.Namespace) -> Any:
    """The shapes both sides train on; with ``--cache-decoded``, served from the decoded cache zoo keys for
    them, built in full (published) when it is not there yet."""
    registry = get_registry()
    parts = build_parts(registry, bench_config(args, Path("unused")))
    if not args.cache_decoded:
        return parts.train_set
    return DecodedCache(parts.train_set, default_root(), workers=args.workers,
                        origin=cache_origin(registry, parts.plan.dataset))


def plain_loop(args: argparse.Namespace, device: torch.device) -> float:
    """Samples per second of a hand-written loop (after a warm-up)."""
    registry = get_registry()
    dataset = training_split(args)
    torch.manual_seed(0)
    recipe, _, _ = build_recipe(registry.resolve("model", "dcgan"), {"image_size": args.image_size, "nc": 3})
    torch.backends.cudnn.benchmark = True  # as PyTorch's DCGAN example sets it
    netG, netD = recipe.generator.to(device), recipe.discriminator.to(device)
    optD = torch.optim.Adam(netD.parameters(), lr=2e-4, betas=(0.5, 0.999))
    optG = torch.optim.Adam(netG.parameters(), lr=2e-4, betas=(0.5, 0.999))
    loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch_size, shuffle=True, drop_last=True,
                                         num_workers=args.workers, pin_memory=device.type == "cuda")
    done, started = 0, None
    while True:
        for real, _ in loader:
            if done == args.warmup:
                _sync(device)
                started = time.perf_counter()
            real = real.to(device, non_blocking=True)
            noise = torch.randn(real.size(0), 100, 1, 1, device=device)
            fake = netG(noise)
            optD.zero_grad(set_to_none=True)
            out_real, out_fake = netD(real), netD(fake.detach())
            loss_d = (F.binary_cross_entropy_with_logits(out_real, torch.ones_like(out_real))
                      + F.binary_cross_entropy_with_logits(out_fake, torch.zeros_like(out_fake)))
            loss_d.backward()
            optD.step()
            optG.zero_grad(set_to_none=True)
            out = netD(fake)
            loss_g = F.binary_cross_entropy_with_logits(out, torch.ones_like(out))
            loss_g.backward()
            optG.step()
            done += 1
            if done == args.warmup + args.steps:
                _sync(device)
                return args.steps * args.batch_size / (time.perf_counter() - started)


VARIANTS: dict[str, dict[str, object]] = {
    "default": {},
    "fast": {"fast": True},
    "bf16": {"precision": "bf16"},
    "bf16-cl": {"precision": "bf16", "channels_last": True},
    "graph": {"cuda_graph": True},
    "compile": {"compile": True},
    "compile-bf16-cl": {"precision": "bf16", "channels_last": True, "compile": True},
    "default-thread": {},  # default, with the prefetch thread kept even beside loader workers
}


def zoo_loop(args: argparse.Namespace, device: torch.device, folder: Path, variant: str) -> float:
    """Samples per second of zoo's engine on the same work (after a warm-up)."""
    config = bench_config(args, folder, variant)
    if variant == "default-thread":
        from zoo.engine import epochs, feed
        epochs.prefetching = lambda loader, workers, depth, device=None: feed.Prefetcher(loader, max_prefetch=depth)
    prepare_new(folder, overwrite=True)
    trainer = Trainer(config, get_registry(), folder)
    stamps: dict[str, float] = {}
    original = trainer.run.stepper.step

    def timed(batches):
        if trainer.step == args.warmup:
            _sync(device)
            stamps["start"] = time.perf_counter()
        values = original(batches)
        if trainer.step + 1 == args.warmup + args.steps:
            _sync(device)
            stamps["end"] = time.perf_counter()
        return values

    trainer.run.stepper.step = timed
    trainer.fit()
    return args.steps * args.batch_size / (stamps["end"] - stamps["start"])


def measure_once(args: argparse.Namespace) -> None:
    """One measurement in this process; prints its samples/s as JSON."""
    device = torch.device(args.device)
    if args.one == "plain":
        rate = plain_loop(args, device)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            rate = zoo_loop(args, device, Path(tmp) / "run", args.one)
    print(json.dumps({"rate": rate}))


def run_in_child(args: argparse.Namespace, side: str, log: Path) -> float:
    """Samples/s of one side, measured in a fresh process; NaN (and its log's tail) when it fails."""
    command = [sys.executable, __file__, "--one", side] + [
        f"--{key.replace('_', '-')}={value}" for key, value in vars(args).items()
        if key not in ("one", "cache_decoded", "rounds", "variants")] + (["--cache-decoded"] if args.cache_decoded else [])
    with log.open("w") as errors:
        done = subprocess.run(command, stdout=subprocess.PIPE, stderr=errors, text=True)
    if done.returncode != 0:
        print(f"{side} failed (exit {done.returncode}):\n" + "\n".join(log.read_text().splitlines()[-5:]),
              file=sys.stderr)
        return float("nan")
    return json.loads(done.stdout.strip().splitlines()[-1])["rate"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--train-count", type=int, default=4096)
    parser.add_argument("--cache-decoded", action="store_true",
                        help="both sides read the shapes from the decoded cache (cheap data: times the model)")
    parser.add_argument("--variants", default="default",
                        help=f"comma-separated zoo settings to time: {', '.join(VARIANTS)}")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: measure one side in this process
    args = parser.parse_args()
    if args.one:
        measure_once(args)
        return
    variants = [name.strip() for name in args.variants.split(",") if name.strip()]
    unknown = [name for name in variants if name not in VARIANTS]
    if unknown or not variants:
        parser.error(f"unknown variant(s) {', '.join(unknown) or '(none)'}; choose from {', '.join(VARIANTS)}")
    if args.cache_decoded:  # before any timing: no side pays for drawing or reads a partly filled cache
        training_split(args)
    plain: list[float] = []
    ours: dict[str, list[float]] = {name: [] for name in variants}
    with tempfile.TemporaryDirectory() as tmp:
        for round_index in range(args.rounds):  # alternate, so drift hits every side alike
            plain.append(run_in_child(args, "plain", Path(tmp) / "plain.log"))
            line = f"round {round_index + 1}: plain {plain[-1]:8.1f}"
            for name in variants:
                ours[name].append(run_in_child(args, name, Path(tmp) / f"{name}.log"))
                line += f"   {name} {ours[name][-1]:8.1f} ({ours[name][-1] / plain[-1]:.3f})"
            print(line + "  samples/s", file=sys.stderr)
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({os.cpu_count()} cores)"
    print(f"device {name}; DCGAN {args.image_size}x{args.image_size}, batch {args.batch_size}, "
          f"{args.steps} timed steps after {args.warmup}, {args.rounds} rounds, {args.workers} workers"
          f"{', cached shapes' if args.cache_decoded else ''}")
    print(f"plain fp32 loop     median {statistics.median(plain):9.1f} samples/s")
    for name in variants:
        ratios = [z / p for z, p in zip(ours[name], plain)]
        if any(math.isnan(r) for r in ratios):
            print(f"zoo {name:<15} failed in some rounds: {ours[name]}")
            continue
        print(f"zoo {name:<15} median {statistics.median(ours[name]):9.1f} samples/s   ratio to plain: median "
              f"{statistics.median(ratios):.3f} (min {min(ratios):.3f}, max {max(ratios):.3f})")


if __name__ == "__main__":
    main()

"""zoo train against a plain PyTorch loop on the same DCGAN and data, alternately: prints throughput and ratios.

Both sides train the reference DCGAN (BCE, Adam) on the embedded shapes dataset
with evaluation and periodic checkpoints off. zoo runs with its defaults
(logging, tensorboard and sample hooks, progress bar, prefetch); the plain loop is
the one every guide shows: a DataLoader, zero_grad/backward/step, nothing else.

    python bench/train_speed.py                       # CPU, small enough for 2 cores
    python bench/train_speed.py --device cuda --image-size 64 --batch-size 128 --steps 300
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from zoo.build import build_dataset, build_recipe
from zoo.config import TrainConfig
from zoo.engine.rundir import prepare_new
from zoo.engine.trainer import Trainer
from zoo.registry import get_registry


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def plain_loop(args: argparse.Namespace, device: torch.device) -> float:
    """Samples per second of a hand-written loop (after a warm-up)."""
    registry = get_registry()
    torch.manual_seed(0)
    dataset = build_dataset(registry.resolve("dataset", "shapes"), "train", task="generation", data=None,
                            options={"train_count": args.train_count}, image_size=args.image_size, channels=3)
    recipe, _, _ = build_recipe(registry.resolve("model", "dcgan"), {"image_size": args.image_size, "nc": 3})
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


def zoo_loop(args: argparse.Namespace, device: torch.device, folder: Path) -> float:
    """Samples per second of zoo's engine on the same work (after a warm-up)."""
    config = TrainConfig(model="dcgan", batch_size=args.batch_size, max_steps=args.warmup + args.steps,
                         device=str(device), workers=args.workers, eval_every=0, save_every=0,
                         model_opt={"image_size": args.image_size},
                         dataset_opt={"train_count": args.train_count}, run_dir=str(folder))
    prepare_new(folder, overwrite=True)
    trainer = Trainer(config, get_registry(), folder)
    stamps: dict[str, float] = {}
    original = trainer._train_step

    def timed(batches):
        if trainer.step == args.warmup:
            _sync(device)
            stamps["start"] = time.perf_counter()
        original(batches)
        if trainer.step + 1 == args.warmup + args.steps:
            _sync(device)
            stamps["end"] = time.perf_counter()

    trainer._train_step = timed
    trainer.fit()
    return args.steps * args.batch_size / (stamps["end"] - stamps["start"])


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
    args = parser.parse_args()
    device = torch.device(args.device)
    plain, ours = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for round_index in range(args.rounds):  # alternate, so drift hits both sides alike
            plain.append(plain_loop(args, device))
            ours.append(zoo_loop(args, device, Path(tmp) / f"run{round_index}"))
            print(f"round {round_index + 1}: plain {plain[-1]:8.1f} samples/s   zoo {ours[-1]:8.1f} samples/s   "
                  f"ratio {ours[-1] / plain[-1]:.3f}", file=sys.stderr)
    ratios = [z / p for z, p in zip(ours, plain)]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({os.cpu_count()} cores)"
    print(f"device {name}; DCGAN {args.image_size}x{args.image_size}, batch {args.batch_size}, "
          f"{args.steps} timed steps after {args.warmup}, {args.rounds} rounds")
    print(f"plain loop  median {statistics.median(plain):9.1f} samples/s")
    print(f"zoo train   median {statistics.median(ours):9.1f} samples/s")
    print(f"ratio zoo/plain: median {statistics.median(ratios):.3f} (min {min(ratios):.3f}, max {max(ratios):.3f})")


if __name__ == "__main__":
    main()

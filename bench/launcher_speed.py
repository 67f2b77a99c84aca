"""``zoo train`` alone against ``zoo train --nproc-per-node 1`` (through torchrun), alternately.

Both run the same command; throughput is the median of the logged ``samples_per_sec``
windows after the first (which holds start-up). A ratio near 1 means going through the
launcher costs nothing measurable. One launched process trains as a single process (zoo
sets up a process group, gradient all-reduce and agreed stop checks only for two or more),
so this times the launcher, not that machinery.

    python bench/launcher_speed.py --device cuda --batch-size 128 --steps 600 --workers 8
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path


def run_once(args: argparse.Namespace, folder: Path, nproc: int) -> float:
    """Median logged samples/s of one ``zoo train`` run (``nproc`` 0: no launcher)."""
    command = [sys.executable, "-m", "train_cli", "train", "--model", "dcgan", "--device", args.device,
               "--batch-size", str(args.batch_size), "--max-steps", str(args.steps), "--workers",
               str(args.workers), "--eval-every", "0", "--save-every", "0", "--log-every", str(args.log_every),
               "--model-opt", f"image_size={args.image_size}", "--dataset-opt", f"train_count={args.train_count}",
               "--run-dir", str(folder), "--overwrite"]
    if nproc:
        command += ["--nproc-per-node", str(nproc)]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    windows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    rates = [entry["samples_per_sec"] for entry in windows if entry.get("kind") == "train"][1:]
    if not rates:
        raise SystemExit(f"too few logged windows in {folder}; raise --steps or lower --log-every")
    return statistics.median(rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--log-every", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--train-count", type=int, default=20000)
    args = parser.parse_args()
    alone, launched = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for index in range(args.rounds):
            alone.append(run_once(args, Path(tmp) / f"alone{index}", 0))
            launched.append(run_once(args, Path(tmp) / f"launched{index}", 1))
            print(f"round {index + 1}: zoo train {alone[-1]:9.1f}   --nproc-per-node 1 {launched[-1]:9.1f} "
                  f"samples/s", file=sys.stderr)
    ratios = [b / a for a, b in zip(alone, launched)]
    print(f"DCGAN {args.image_size}x{args.image_size}, batch {args.batch_size}, {args.steps} steps, "
          f"device {args.device}, {args.rounds} rounds")
    print(f"zoo train                  median {statistics.median(alone):9.1f} samples/s")
    print(f"zoo train --nproc-per-node 1 median {statistics.median(launched):9.1f} samples/s")
    print(f"ratio launched/alone: median {statistics.median(ratios):.3f} (min {min(ratios):.3f}, "
          f"max {max(ratios):.3f})")


if __name__ == "__main__":
    main()

"""Does a fast run learn like an fp32 one? Trains the DCGAN twice (fp32, then with flags) and compares losses.

Both runs use the same seed and data; the table shows each logged window's losses
side by side, and the summary the mean gap between the two curves over the run's
second half, relative to the fp32 values.

    python bench/loss_tracking.py --device cuda --steps 2000 --flags=--fast
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path


def train(args: argparse.Namespace, folder: Path, flags: list[str]) -> list[dict]:
    """Train once and return the logged training windows."""
    command = [sys.executable, "-m", "train_cli", "train", "--model", "dcgan", "--device", args.device,
               "--batch-size", str(args.batch_size), "--max-steps", str(args.steps), "--workers", str(args.workers),
               "--eval-every", "0", "--save-every", "0", "--log-every", str(args.log_every),
               "--model-opt", f"image_size={args.image_size}", "--dataset-opt", f"train_count={args.train_count}",
               "--run-dir", str(folder), "--overwrite", *flags]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    lines = (folder / "metrics.jsonl").read_text().splitlines()
    return [record for record in map(json.loads, lines) if record.get("kind") == "train"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--flags", default="--fast", help="the flags of the run compared with fp32")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--log-every", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--train-count", type=int, default=50000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        base = train(args, Path(tmp) / "fp32", [])
        fast = train(args, Path(tmp) / "fast", shlex.split(args.flags))
    names = [key for key in ("discriminator", "generator") if key in base[0]]
    print(f"{'step':>6}  " + "  ".join(f"{name + ' fp32':>20} {name + ' ' + args.flags:>24}" for name in names))
    for a, b in zip(base, fast):
        print(f"{a['step']:>6}  " + "  ".join(f"{a[name]:>20.4f} {b[name]:>24.4f}" for name in names))
    half = len(base) // 2
    for name in names:
        gaps = [abs(a[name] - b[name]) / max(abs(a[name]), 1e-8) for a, b in zip(base[half:], fast[half:])]
        print(f"{name}: mean relative gap over the second half {statistics.mean(gaps):.3f}; "
              f"fp32 mean {statistics.mean(a[name] for a in base[half:]):.4f}, "
              f"{args.flags} mean {statistics.mean(b[name] for b in fast[half:]):.4f}")


if __name__ == "__main__":
    main()

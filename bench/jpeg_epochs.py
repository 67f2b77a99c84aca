"""A DCGAN run on a JPEG ImageFolder with ``--cache-decoded``: first-epoch throughput and later efficiency.

Runs ``zoo train`` (with a fresh cache folder, so the first epoch pays for decoding)
and reports the first epoch's images/s against one pass of the usual PIL pipeline
with as many workers, counted twice: from the process start (imports, CUDA start-up,
indexing the files) and from the training start (the banner line; the plain pass
too is timed from its loader's start); then the compute efficiency of each later epoch.

    python bench/make_jpeg_set.py bench-data/jpeg --count 20000
    python bench/jpeg_epochs.py --data bench-data/jpeg --workers 8 --device cuda [--flags="--fast --decode-on-device"]
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from data_speed import plain_pass


def _log_every(steps_per_epoch: int) -> int:
    """A logging interval that divides the epoch, so a window ends with it."""
    return next(n for n in range(20, 0, -1) if steps_per_epoch % n == 0)


def _run_noting_start(command: list[str], env: dict[str, str]) -> float:
    """Run ``zoo train``; return when it said it starts training (its banner line), as a wall time."""
    ready = None
    with subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) as process:
        for line in process.stderr:
            if ready is None and b"zoo: " in line and b"run dir" in line:
                ready = time.time()
    if process.returncode != 0 or ready is None:
        raise SystemExit(f"zoo train failed (exit {process.returncode}): {' '.join(command)}")
    return ready


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--flags", default="", help="more zoo train flags, e.g. --fast")
    args = parser.parse_args()
    images = sum(1 for path in (args.data / "train").rglob("*.jpg"))
    steps_per_epoch = images // args.batch_size
    count, seconds = plain_pass(args.data, 64, args.batch_size, args.workers)
    plain = count / seconds
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        env = dict(os.environ, ZOO_CACHE_DIR=str(Path(tmp) / "cache"))
        command = [sys.executable, "-m", "train_cli", "train", "--model", "dcgan", "--dataset", "imagefolder",
                   "--data", str(args.data), "--cache-decoded", "--epochs", str(args.epochs), "--device", args.device,
                   "--workers", str(args.workers), "--batch-size", str(args.batch_size), "--eval-every", "0",
                   "--save-every", "0", "--log-every", str(_log_every(steps_per_epoch)), "--run-dir", str(run),
                   *shlex.split(args.flags)]
        started = time.time()
        ready = _run_noting_start(command, env)
        records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["kind"] == "train"]
    first_end = next(r["time"] for r in train if r["epoch"] >= 1)
    first = steps_per_epoch * args.batch_size / (first_end - started)
    print(f"DCGAN 64x64 on {images} JPEGs, batch {args.batch_size}, {args.workers} workers, "
          f"flags '{args.flags}', {os.cpu_count()} CPUs")
    print(f"plain PIL pipeline, one pass (data only):      {plain:8.0f} img/s")
    print(f"zoo epoch 1, counted from the process start:   {first:8.0f} img/s   {first / plain:.2f}x the PIL pass  "
          f"(start-up {ready - started:.1f}s, then {first_end - ready:.1f}s of training)")
    from_training = steps_per_epoch * args.batch_size / (first_end - ready)
    print(f"zoo epoch 1, counted from the training start:  {from_training:8.0f} img/s   "
          f"{from_training / plain:.2f}x the PIL pass  (timed as the PIL pass is: from its loader's start)")
    for epoch in range(2, args.epochs + 1):
        window = [r for r in train if epoch - 1 < r["epoch"] <= epoch]
        print(f"zoo epoch {epoch}: compute efficiency {statistics.mean(r['compute_efficiency'] for r in window):.3f}, "
              f"{statistics.median(r['samples_per_sec'] for r in window):8.0f} img/s")


if __name__ == "__main__":
    main()

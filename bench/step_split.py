"""Where zoo's per-step time over a plain loop goes: the step, the feed, and the loop's bookkeeping, timed apart.

    python bench/step_split.py [--steps 1200] [--repeats 3]     # needs scikit-learn, as step_overhead.py

The same model, data and sides as ``bench/step_overhead.py`` (mnist_net's small network on scikit-learn's
digits, batch 64, 0 workers; zoo without the two picture hooks), in one process. zoo's ``train_step`` (the
step runner, the log window, ``on_train_step``) and ``EpochFeed.next_step`` (the next batch on the device) are
wrapped in timers; the plain loop times its ``next(loader)`` and its zero_grad/forward/backward/step apart. What
the whole run took beyond the two is the loop's bookkeeping (schedule checks, log steps, the bar).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import step_overhead as overhead  # noqa: E402  (a sibling script)
from zoo.build import build_parts  # noqa: E402
from zoo.engine import epochs, loop  # noqa: E402

PICTURE_HOOKS = ["samples", "tensorboard"]


def timed_zoo(args: argparse.Namespace, data: Path, folder: Path) -> dict[str, float]:
    """Seconds of zoo's run, of its steps and of its feed, over ``args.steps`` steps."""
    spent = {"step": 0.0, "feed": 0.0}
    train_step, next_step = loop.train_step, epochs.EpochFeed.next_step

    def timed_step(run: Any, batches: list[Any]) -> None:
        began = time.perf_counter()
        train_step(run, batches)
        spent["step"] += time.perf_counter() - began

    def timed_next(feed: epochs.EpochFeed) -> list[Any]:
        began = time.perf_counter()
        batches = next_step(feed)
        spent["feed"] += time.perf_counter() - began
        return batches

    loop.train_step, epochs.EpochFeed.next_step = timed_step, timed_next
    try:
        total, _ = overhead.zoo_seconds(args, data, args.steps, folder, PICTURE_HOOKS)
    finally:
        loop.train_step, epochs.EpochFeed.next_step = train_step, next_step
    return {"total": total, **spent}


def timed_plain(args: argparse.Namespace, data: Path) -> dict[str, float]:
    """Seconds of the plain loop's run, of its steps and of its ``next(loader)``, over ``args.steps`` steps."""
    parts = build_parts(overhead.get_registry(), overhead.config(args, data, args.steps, Path("unused"), []))
    recipe = parts.recipe.train()
    optimizers = recipe.configure_optimizers(None)
    loader = torch.utils.data.DataLoader(parts.train_set, batch_size=args.batch_size, shuffle=True, drop_last=True)
    spent, batches = {"step": 0.0, "feed": 0.0}, iter(loader)
    started = time.perf_counter()
    for _ in range(args.steps):
        began = time.perf_counter()
        try:
            batch = next(batches)
        except StopIteration:
            batches = iter(loader)
            batch = next(batches)
        fed = time.perf_counter()
        for name, loss in recipe.training_step(batch, None):
            optimizers[name].zero_grad(set_to_none=True)
            loss.backward()
            optimizers[name].step()
        spent["feed"] += fed - began
        spent["step"] += time.perf_counter() - fed
    return {"total": time.perf_counter() - started, **spent}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1200)
    parser.add_argument("--repeats", type=int, default=3, help="alternating runs of each side; the fastest counts")
    args = parser.parse_args()
    args.device, args.batch_size, args.workers = "cpu", 64, 0
    runs: dict[str, list[dict[str, float]]] = {"zoo": [], "plain": []}
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "digits"
        overhead.write_digits(data)
        for _ in range(args.repeats):
            runs["zoo"].append(timed_zoo(args, data, Path(tmp) / "run"))
            runs["plain"].append(timed_plain(args, data))
    fastest = {side: min(times, key=lambda t: t["total"]) for side, times in runs.items()}
    for side in fastest.values():
        side["bookkeeping"] = side["total"] - side["step"] - side["feed"]
    print(f"ms a step, fastest of {args.repeats} runs of {args.steps} steps; zoo without {' and '.join(PICTURE_HOOKS)}")
    print(f"{'part':<12} {'zoo':>7} {'plain':>7} {'zoo - plain':>12}")
    for part in ("step", "feed", "bookkeeping", "total"):
        zoo, plain = (1000 * fastest[side][part] / args.steps for side in ("zoo", "plain"))
        print(f"{part:<12} {zoo:7.3f} {plain:7.3f} {zoo - plain:12.3f}")


if __name__ == "__main__":
    main()

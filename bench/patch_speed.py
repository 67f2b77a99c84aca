"""Items/s of glob_patches on a few large PNGs: a decode per item against each file decoded once.

    python bench/patch_speed.py --files 5 --workers 0

Writes ``--files`` photo-like PNGs of ``--width`` x ``--height`` (smooth gradients and noise, so PNG
compresses them as it does photos) into a temporary folder, then times one epoch (every file's
``patches_per_image`` patches, 64px, noise degradation) through zoo's loader:

(a) a decode per item: glob_patches with its memory of decoded files switched off (what every
    item cost before files were decoded once);
(b) kept in memory: the default without ``--cache-decoded``, each loading process keeping the files
    it decoded lately (each worker decodes each file once an epoch);
(c) cache filling: ``--cache-decoded``'s first epoch, each file decoded once into the cache;
(d) cached: later epochs and runs, patches cut from the memory-mapped cache.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from plugins.datasets import glob_patches
from zoo.engine.cache import DecodedCache
from zoo.engine.feed import make_loader


def write_photos(folder: Path, count: int, width: int, height: int) -> None:
    """Photo-like PNGs: a smooth gradient per channel plus mild noise."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:height, 0:width]
    for index in range(count):
        bands = [127 + 100 * np.sin(x / (40 + 7 * c + index) + y / (60 + 5 * c)) for c in range(3)]
        pixels = np.stack(bands, axis=-1) + rng.normal(0, 6, size=(height, width, 3))
        Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(folder / f"photo{index:02d}.png")


def epoch(dataset, batch_size: int, workers: int) -> tuple[int, float]:
    """Items and seconds for one shuffled pass through zoo's loader."""
    loader, _ = make_loader(dataset, batch_size, seed=0, workers=workers, shuffle=True, drop_last=False,
                            pin_memory=False)
    started = time.perf_counter()
    count = sum(len(batch[0]) for batch, _ in loader)
    return count, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=5)
    parser.add_argument("--width", type=int, default=1000)
    parser.add_argument("--height", type=int, default=872)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="zoo-patches-") as tmp:
        folder = Path(tmp) / "photos"
        folder.mkdir()
        write_photos(folder, args.files, args.width, args.height)
        options = dict(task="image_to_image", data=str(folder / "*.png"), holdout=0)
        dataset = glob_patches.GlobPatchesDataset("train", **options)
        print(f"{args.files} PNGs of {args.width}x{args.height}, {dataset.patches_per_image} patches each, "
              f"batch {args.batch_size}, {args.workers} workers")
        uncached = glob_patches.GlobPatchesDataset("train", **options)
        uncached._recent.limit = 0  # nothing kept: a decode per item
        rates = {}
        for label, source in (("(a) a decode per item", uncached), ("(b) kept in memory", dataset)):
            count, seconds = epoch(source, args.batch_size, args.workers)
            rates[label[:3]] = count / seconds
            print(f"{label:<24} {count / seconds:8.0f} items/s  ({count} items, {seconds:.2f}s)")
        started = time.perf_counter()
        cache = DecodedCache(glob_patches.GlobPatchesDataset("train", **options), Path(tmp) / "cache",
                             workers=args.workers, fill_on_read=True)
        count, _ = epoch(cache, args.batch_size, args.workers)
        cache.finalize()
        seconds = time.perf_counter() - started
        rates["(c)"] = count / seconds
        print(f"{'(c) cache filling':<24} {count / seconds:8.0f} items/s  ({count} items, {seconds:.2f}s)")
        count, seconds = epoch(cache, args.batch_size, args.workers)
        rates["(d)"] = count / seconds
        print(f"{'(d) cached':<24} {count / seconds:8.0f} items/s  ({count} items, {seconds:.2f}s)")
        base = rates["(a)"]
        print("ratios: " + "   ".join(f"{key}/(a) {rate / base:.1f}" for key, rate in rates.items() if key != "(a)"))


if __name__ == "__main__":
    main()

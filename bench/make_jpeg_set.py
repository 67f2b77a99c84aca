"""Write the benchmark's JPEG ImageFolder: 178x218 images, quality 90, from a fixed seed.

    python bench/make_jpeg_set.py bench-data/jpeg --count 20000
    zoo train --model dcgan --dataset imagefolder --data bench-data/jpeg --workers 8 ...

Images are smooth random colour fields with a few ellipses, so they compress
and decode like photographs rather than like noise. Image ``index`` of split
``train`` (0) or ``test`` (1) draws from ``numpy.random.default_rng([seed, split,
index])``, so the files are the same whatever ``--jobs`` writes them.
"""

from __future__ import annotations

import argparse
import os
from multiprocessing import Pool
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

WIDTH, HEIGHT = 178, 218
SPLITS = ("train", "test")  # a split's position is its part of the image seeds


def make_image(rng: np.random.Generator) -> Image.Image:
    """One photograph-like test image."""
    base = rng.integers(0, 256, size=(HEIGHT // 8, WIDTH // 8, 3), dtype=np.uint8)
    image = Image.fromarray(base).resize((WIDTH, HEIGHT), Image.BICUBIC)
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(2, 6))):
        x, y = int(rng.integers(0, WIDTH)), int(rng.integers(0, HEIGHT))
        rx, ry = int(rng.integers(10, 60)), int(rng.integers(10, 60))
        draw.ellipse((x - rx, y - ry, x + rx, y + ry), fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
    return image.filter(ImageFilter.GaussianBlur(1.0))


def write_image(job: tuple[str, int, int, int]) -> None:
    """Write image ``index`` of ``split`` into ``root/split/images``, from its own seed."""
    root, seed, split, index = job
    rng = np.random.default_rng([seed, split, index])
    make_image(rng).save(Path(root) / SPLITS[split] / "images" / f"{index:06d}.jpg", quality=90)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path, help="folder to write ROOT/train/images and ROOT/test/images into")
    parser.add_argument("--count", type=int, default=20000, help="training images (the test split gets 1 in 20)")
    parser.add_argument("--seed", type=int, default=0, help="each image is drawn from (seed, split, index)")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="processes writing images")
    args = parser.parse_args()
    counts = (args.count, max(1, args.count // 20))
    for split in SPLITS:
        (args.root / split / "images").mkdir(parents=True, exist_ok=True)
    jobs = [(str(args.root), args.seed, split, index) for split, count in enumerate(counts) for index in range(count)]
    if args.jobs > 1:
        with Pool(args.jobs) as pool:
            for _ in pool.imap_unordered(write_image, jobs, chunksize=64):
                pass
    else:
        for job in jobs:
            write_image(job)
    print(f"wrote {counts[0]} train and {counts[1]} test JPEGs ({WIDTH}x{HEIGHT}) under {args.root}")


if __name__ == "__main__":
    main()

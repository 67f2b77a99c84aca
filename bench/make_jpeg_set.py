"""Write the benchmark's JPEG ImageFolder: 178x218 images, quality 90, from a fixed seed.

    python bench/make_jpeg_set.py bench-data/jpeg --count 20000
    zoo train --model dcgan --dataset imagefolder --data bench-data/jpeg --workers 8 ...

Images are smooth random colour fields with a few ellipses, so they compress
and decode like photographs rather than like noise.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

WIDTH, HEIGHT = 178, 218


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path)
    parser.add_argument("--count", type=int, default=20000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    for split, count in (("train", args.count), ("test", max(1, args.count // 20))):
        folder = args.root / split / "images"
        folder.mkdir(parents=True, exist_ok=True)
        for index in range(count):
            make_image(rng).save(folder / f"{index:06d}.jpg", quality=90)
    print(f"wrote {args.count} train and {max(1, args.count // 20)} test JPEGs ({WIDTH}x{HEIGHT}) under {args.root}")


if __name__ == "__main__":
    main()

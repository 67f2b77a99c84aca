"""Images/s of the usual PIL input pipeline against zoo's decoded cache, on a JPEG ImageFolder.

    python bench/make_jpeg_set.py bench-data/jpeg --count 20000
    python bench/data_speed.py --data bench-data/jpeg --workers 8

(a) plain: torchvision's ImageFolder (PIL open, convert RGB, Resize, CenterCrop,
    ToTensor, Normalize) in a DataLoader, one full pass: what every epoch costs without zoo.
(b) build: ``DecodedCache`` built by ``--workers`` processes into a temporary folder
    (imagefolder's decode: JPEG draft mode, resize, crop to uint8), as several processes
    build it before training.
(c) cached: one pass over the built cache through zoo's loader (seeded items, flip,
    range): what epochs 2+ cost.
(d) filled: one pass through zoo's loader over a cache filled as it reads
    (``zoo train --cache-decoded`` in one process): what zoo's first epoch costs.
(e) device: one pass with the workers reading bytes and the device decoding and
    finishing each batch (``zoo train --decode-on-device``), with no cache.
(f) device filling: (e) filling a decoded cache (``--decode-on-device --cache-decoded``).
    (e) and (f) run on ``--device`` (default: CUDA when there is one, else they are skipped;
    ``--device cpu`` times the same pipeline on the CPU).

Every file is read once before timing, so both sides decode from the page cache.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch
from torchvision import datasets, transforms

from plugins.datasets.imagefolder import ImageFolderDataset
from zoo.engine.cache import DecodedCache
from zoo.engine.device_decode import DeviceDecoder, EncodedItems, blocker, collate_encoded
from zoo.engine.feed import make_loader


def plain_pass(root: Path, size: int, batch_size: int, workers: int) -> tuple[int, float]:
    """Images and seconds for one pass of the torchvision-style PIL pipeline."""
    transform = transforms.Compose([transforms.Resize(size), transforms.CenterCrop(size), transforms.ToTensor(),
                                    transforms.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))])
    dataset = datasets.ImageFolder(str(root / "train"), transform=transform)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers)
    started = time.perf_counter()
    count = sum(len(images) for images, _ in loader)
    return count, time.perf_counter() - started


def build_cache(root: Path, size: int, workers: int, cache_dir: Path) -> tuple[DecodedCache, float]:
    """The decoded cache of the train split and the seconds to index the files and build it."""
    started = time.perf_counter()
    dataset = ImageFolderDataset("train", task="generation", data=str(root), image_size=size, channels=3)
    cache = DecodedCache(dataset, cache_dir, workers=workers)
    return cache, time.perf_counter() - started


def cached_pass(cache: DecodedCache, batch_size: int, workers: int) -> tuple[int, float]:
    """Images and seconds for one shuffled pass over the built cache through zoo's loader."""
    loader, _ = make_loader(cache, batch_size, seed=0, workers=workers, shuffle=True, drop_last=False,
                            pin_memory=False)
    started = time.perf_counter()
    count = sum(len(batch[0]) for batch, _ in loader)
    return count, time.perf_counter() - started


def device_pass(source: ImageFolderDataset | DecodedCache, batch_size: int, workers: int,
                device: torch.device) -> tuple[int, float]:
    """Images and seconds for one pass with the workers reading bytes and ``device`` decoding each batch."""
    loader, _ = make_loader(source, batch_size, seed=0, workers=workers, shuffle=True, drop_last=False,
                            pin_memory=device.type == "cuda", items=EncodedItems, collate=collate_encoded)
    decoder = DeviceDecoder(source, device)
    started = time.perf_counter()
    count = 0
    for raw in loader:
        batch, _ = decoder(raw)
        count += len(batch[0]) if batch is not None else 0
    decoder.fill_rest(batch_size)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return count, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="ImageFolder ROOT (ROOT/train/<class>/*.jpg)")
    parser.add_argument("--workers", type=int, default=8, help="loader (and cache build) processes")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else None,
                        help="where (e) and (f) decode (default: cuda when there is one, else they are skipped)")
    args = parser.parse_args()
    if not (args.data / "train").is_dir():
        parser.error(f"no {args.data / 'train'}: write the set first with python bench/make_jpeg_set.py {args.data}")
    for path in sorted((args.data / "train").rglob("*")):  # warm the page cache for both sides
        if path.is_file():
            path.read_bytes()
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"{cpus} CPUs; {args.workers} workers; {args.image_size}x{args.image_size}, batch {args.batch_size}; "
          f"data {args.data}")

    count, seconds = plain_pass(args.data, args.image_size, args.batch_size, args.workers)
    plain = count / seconds
    print(f"(a) plain PIL pipeline, one pass      {plain:8.0f} img/s  ({count} images, {seconds:.2f}s)")
    with tempfile.TemporaryDirectory(prefix="zoo-cache-") as cache_dir:
        cache, build_seconds = build_cache(args.data, args.image_size, args.workers, Path(cache_dir))
        build = len(cache) / build_seconds
        print(f"(b) zoo cache build before training   {build:8.0f} img/s  ({len(cache)} images, {build_seconds:.2f}s)")
        count, read_seconds = cached_pass(cache, args.batch_size, args.workers)
        cached = count / read_seconds
        print(f"(c) zoo cached pass (epochs 2+)       {cached:8.0f} img/s  ({count} images, {read_seconds:.2f}s)")
        dataset = ImageFolderDataset("train", task="generation", data=str(args.data), image_size=args.image_size,
                                     channels=3)
        started = time.perf_counter()
        filling = DecodedCache(dataset, Path(cache_dir) / "filled", workers=args.workers, fill_on_read=True)
        count, fill_seconds = cached_pass(filling, args.batch_size, args.workers)
        fill_seconds += time.perf_counter() - started - fill_seconds  # indexing files counts too
        filled = count / fill_seconds
        print(f"(d) zoo pass filling the cache        {filled:8.0f} img/s  ({count} images, {fill_seconds:.2f}s)")
        ratios = f"(b)/(a) {build / plain:.2f}   (c)/(a) {cached / plain:.2f}   (d)/(a) {filled / plain:.2f}"
        if args.device is None:
            print("(e), (f) skipped: no CUDA device (--device cpu times them on the CPU)")
        else:
            device = torch.device(args.device)
            reason = blocker(dataset, device, cache_built_first=False)  # on CUDA: starts it and nvjpeg, untimed
            if reason is not None and device.type == "cuda":
                raise SystemExit(f"(e), (f): cannot decode on {device}: {reason}")
            count, seconds = device_pass(dataset, args.batch_size, args.workers, device)
            on_device = count / seconds
            print(f"(e) zoo decoding on {device.type:<4}             {on_device:8.0f} img/s  ({count} images, "
                  f"{seconds:.2f}s)")
            started = time.perf_counter()
            filling = DecodedCache(dataset, Path(cache_dir) / "device", workers=args.workers, fill_on_read=True,
                                   decoder=dataset.device_decode_method)
            count, seconds = device_pass(filling, args.batch_size, args.workers, device)
            filling.finalize()
            seconds = time.perf_counter() - started
            device_filled = count / seconds
            print(f"(f) (e) filling the cache            {device_filled:8.0f} img/s  ({count} "
                  f"images, {seconds:.2f}s)")
            ratios += f"   (e)/(a) {on_device / plain:.2f}   (f)/(a) {device_filled / plain:.2f}"
    print(f"ratios on {cpus} CPUs with {args.workers} workers:  {ratios}")


if __name__ == "__main__":
    main()

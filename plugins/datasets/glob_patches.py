"""Degraded/clean patch pairs cut from the images matching a glob pattern.

An epoch cuts ``patches_per_image`` patches from every file of its split, so a few large photos
still make an epoch of many steps. Each file is decoded once for all its patches: with
``--cache-decoded`` into the decoded cache (at full size, one image per file), otherwise into
a small memory of recently decoded files in each loading process.
"""

from __future__ import annotations

import glob
import math
import os
import threading
from collections import OrderedDict
from typing import Annotated, Callable

import torch
import torchvision.transforms.v2.functional as TF

from plugins import ops
from zoo.augment import AUGMENT_PRESETS, augment_pair, train_preset
from zoo.data import ZooDataset, item_generator, item_rng
from zoo.errors import UsageError
from zoo.options import Range

HOLDOUT_EVERY = 10  # the default: the 1st, 11th, 21st... file is held out for the test split
MAX_DEFAULT_PATCHES = 256  # the most patches per image by default (a large photo would give thousands)
MEMORY_BYTES = 256 * 2 ** 20  # decoded files each loading process keeps without --cache-decoded
DECODE_METHOD = "pil-full-size"  # in cache_key: a change rebuilds decoded caches


def _match(pattern: str, option: str) -> list[str]:
    """Sorted image files matching ``pattern`` (``**`` recursive); UsageError when none."""
    matches = sorted(glob.glob(os.path.expanduser(pattern), recursive=True))
    images = [path for path in matches if ops.is_image_file(path)]
    if not images:
        found = f" ({len(matches)} paths match but none is an image file)" if matches else ""
        raise UsageError(f"no images match {pattern!r}{found}: check the {option} pattern "
                         f"(quote it so the shell does not expand it)")
    return images


def _by_stem(paths: list[str], pattern: str) -> dict[str, str]:
    """Map each file stem to its path; UsageError when two files share a stem."""
    stems: dict[str, str] = {}
    for path in paths:
        stem = os.path.splitext(os.path.basename(path))[0]
        if stem in stems:
            raise UsageError(f"{stems[stem]} and {path} (both matching {pattern!r}) share the name "
                             f"{stem!r}: pairs are matched by file name, so make the names unique")
        stems[stem] = path
    return stems


def _pairs(data: str, target: str | None) -> list[tuple[str, str | None]]:
    """(input, clean target or None) for every file matching ``data``, in sorted input order."""
    inputs = _match(data, "--data")
    if target is None:
        return [(path, None) for path in inputs]
    input_stems = _by_stem(inputs, data)
    target_stems = _by_stem(_match(target, "--dataset-opt target="), target)
    unpaired = sorted([path for stem, path in input_stems.items() if stem not in target_stems]
                      + [path for stem, path in target_stems.items() if stem not in input_stems])
    if unpaired:
        raise UsageError(f"{unpaired[0]} has no partner of the same name among {data!r} / {target!r} "
                         f"({len(unpaired)} unpaired): pair every input with a clean target file of the same name")
    return [(path, target_stems[stem]) for stem, path in input_stems.items()]


def held_out(pairs: list, holdout: int, split: str) -> list:
    """The files of ``split``: every ``holdout``-th file (the 1st, the holdout+1-th, ...) is the test split's,
    the rest train. ``holdout=0``, or a single file: both splits are all the files."""
    if holdout == 1:
        raise UsageError("holdout=1 holds out every file and leaves none to train on: use --dataset-opt holdout=N "
                         "with N >= 2 (every Nth file tests), or holdout=0 (the test split is the training files)")
    if holdout == 0 or len(pairs) == 1:
        return list(pairs)
    return [pair for i, pair in enumerate(pairs) if (i % holdout == 0) == (split == "test")]


def default_patches_per_image(width: int, height: int, patch_size: int) -> int:
    """The patches that tile a ``width`` x ``height`` image without overlap, 1 to ``MAX_DEFAULT_PATCHES``."""
    return max(1, min(MAX_DEFAULT_PATCHES, (width // patch_size) * (height // patch_size)))


def fixed_patch_corner(number: int, count: int, height: int, width: int, size: int) -> tuple[int, int]:
    """(top, left) of fixed test patch ``number`` of ``count``: the centres of a near-square grid of cells over
    the image, row by row (a single patch is the centre crop)."""
    columns = math.ceil(math.sqrt(count))
    rows = math.ceil(count / columns)
    row, column = divmod(number, columns)
    return round((row + 0.5) / rows * (height - size)), round((column + 0.5) / columns * (width - size))


def _check_amounts(degrade: str, target: str | None, amounts: dict[str, float], patch_size: int) -> None:
    """Refuse a strength that would be ignored (another kind's, or with paired targets) or outgrows the patch."""
    for kind, amount in amounts.items():
        name = ops.AMOUNT_NAMES[kind]
        if amount == ops.DEFAULT_AMOUNTS[kind]:
            continue
        if target is not None:
            raise UsageError(f"--dataset-opt {name}={amount} has no effect: inputs paired with target= are not "
                             f"degraded; drop it")
        if kind != degrade:
            raise UsageError(f"--dataset-opt {name}={amount} sets degrade={kind}, but degrade is {degrade}: drop it, "
                             f"or add --dataset-opt degrade={kind}")
        if kind != "noise" and amount > patch_size:
            raise UsageError(f"--dataset-opt {name}={amount} is larger than the {patch_size}px patch: "
                             f"use {name}={patch_size} or less")


class _RecentImages:
    """Decoded files this process read lately, up to ``limit`` bytes (least recently used go first)."""

    def __init__(self, limit: int) -> None:
        self.limit, self.size = limit, 0
        self.images: OrderedDict[int, torch.Tensor] = OrderedDict()
        self.lock = threading.Lock()  # the prefetch thread and the main thread may both read items

    def get(self, index: int, decode: Callable[[int], torch.Tensor]) -> torch.Tensor:
        """Image ``index``, decoded by ``decode`` unless it is kept here."""
        with self.lock:
            image = self.images.get(index)
            if image is not None:
                self.images.move_to_end(index)
                return image
        image = decode(index)
        with self.lock:
            if index not in self.images and image.numel() <= self.limit:
                self.images[index] = image
                self.size += image.numel()
                while self.size > self.limit:
                    self.size -= self.images.popitem(last=False)[1].numel()
        return image

    def __getstate__(self) -> dict[str, int]:
        return {"limit": self.limit}  # a loader process starts with none kept

    def __setstate__(self, state: dict[str, int]) -> None:
        self.__init__(state["limit"])


class GlobPatchesDataset(ZooDataset):
    """Square patches of the images matching a glob: (degraded or paired input, clean target)."""

    tasks = ("image_to_image",)
    path_options = ("target",)
    needs_data = True
    augments = AUGMENT_PRESETS  # --augment; none when not given
    earlier_defaults = {"patches_per_image": 1}  # runs saved before the option drew one patch a file an epoch
    data_help = "a glob pattern of images, e.g. 'photos/**/*.png' (quote it)"

    def __init__(self, split: str, *, task: str, data: str | None = None,
                 image_size: int | None = None, channels: int | None = None,
                 patch_size: Annotated[int, Range(1)] = 64,
                 patches_per_image: Annotated[int, Range(1)] | None = None,
                 holdout: Annotated[int, Range(0)] = HOLDOUT_EVERY, degrade: str = "noise",
                 noise_sigma: Annotated[float, Range(0, 1)] = ops.DEFAULT_AMOUNTS["noise"],
                 blur_sigma: Annotated[float, Range(0)] = ops.DEFAULT_AMOUNTS["blur"],
                 scale: Annotated[float, Range(1)] = ops.DEFAULT_AMOUNTS["downscale"],
                 target: str | None = None, augment: str | None = None) -> None:
        """List the matching files; ``target`` is a glob of clean images paired by file name.

        ``patches_per_image`` defaults to the patches that tile the first file without overlap (at most 256);
        ``noise_sigma``, ``blur_sigma`` and ``scale`` set the strength of the ``degrade`` kind; ``augment`` is a
        ``zoo.augment`` preset for the train split's patches (none by default).
        """
        super().__init__(split, task=task, data=data, image_size=image_size, channels=channels)
        self.augment = train_preset(split, augment, "none")
        ops.check_image_options("glob_patches", task, self.tasks, image_size, channels)
        ops.check_degrade_kind(degrade)
        if data is None:
            raise UsageError("glob_patches needs --data PATTERN: a quoted glob of images, "
                             "e.g. --data 'photos/**/*.png'")
        self.patch_size = image_size or patch_size
        if self.patch_size < 1:
            raise UsageError(f"patch size must be at least 1 pixel, not {self.patch_size}: "
                             f"use --dataset-opt patch_size=N")
        amounts = {"noise": noise_sigma, "blur": blur_sigma, "downscale": scale}
        _check_amounts(degrade, target, amounts, self.patch_size)
        pairs = _pairs(data, target)
        self.pairs = held_out(pairs, holdout, split)
        self.degrade, self.amount, self.target = degrade, amounts[degrade], target
        self.image_shape = (channels or 3, self.patch_size, self.patch_size)
        self.classes = None
        # Fail early and cheaply (header only) when the first image is smaller than a patch.
        _, height, width = ops.read_image_header(pairs[0][0])
        self._check_size(pairs[0][0], width, height)
        self.patches_per_image = patches_per_image or default_patches_per_image(width, height, self.patch_size)
        self._recent = _RecentImages(MEMORY_BYTES)

    def _check_size(self, path: str, width: int, height: int) -> None:
        if width < self.patch_size or height < self.patch_size:
            raise UsageError(f"image {path} is {width}x{height}, smaller than the {self.patch_size}px "
                             f"patch: use --dataset-opt patch_size={min(width, height)} or less")

    def __len__(self) -> int:
        return len(self.pairs) * self.patches_per_image

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.finish(self._recent.get(self.decoded_index(index), self.decode), index)

    # ------------------------------------------------ decoded once (see zoo/engine/cache.py)
    def decoded_index(self, index: int) -> int:
        """The file (pair) item ``index`` is cut from."""
        return index // self.patches_per_image

    def decoded_shapes(self) -> list[tuple[int, int, int]]:
        """The shape ``decode`` gives each file (pair), from the files' headers: full size, input and target
        channels stacked."""
        channels = self.image_shape[0] * (1 if self.target is None else 2)
        return [(channels, *ops.read_image_header(path)[1:]) for path, _ in self.pairs]

    def cache_key(self) -> list:
        """What the decoded images depend on: decode method, channels and files (path, size, mtime)."""
        files = [path for pair in self.pairs for path in pair if path is not None]
        stats = [(path, stat.st_size, stat.st_mtime_ns) for path, stat in ((path, os.stat(path)) for path in files)]
        return ["glob_patches", 1, DECODE_METHOD, self.image_shape[0], self.target is not None, stats]

    def decode(self, index: int) -> torch.Tensor:
        """File (pair) ``index`` decoded at full size as uint8 ``(C, H, W)`` (a target's channels after the input's)."""
        input_path, target_path = self.pairs[index]
        source = ops.load_image(input_path, self.image_shape[0])
        self._check_size(input_path, source.width, source.height)
        if target_path is None:
            return TF.pil_to_tensor(source)
        clean = ops.load_image(target_path, self.image_shape[0])
        if source.size != clean.size:
            raise UsageError(f"{input_path} is {source.width}x{source.height} but its target "
                             f"{target_path} is {clean.width}x{clean.height}: paired images must "
                             f"be the same size")
        return torch.cat([TF.pil_to_tensor(source), TF.pil_to_tensor(clean)])

    def finish(self, decoded: torch.Tensor, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Item ``index`` from its decoded file: a random patch and flip (train) or a fixed patch (test), then the
        ``augment`` preset (train), then degraded.

        Training draws the crop, flip, augmentation and noise from ``item_rng()``; a test patch's noise is fixed by
        its index. Input and target get the same augmentation: a paired input and target the same draws
        (``augment_pair``); otherwise the clean patch is augmented, then degraded into the input.
        """
        size, channels = self.patch_size, self.image_shape[0]
        if self.split == "train":
            generator = item_rng()
            patch = ops.random_crop_flip(decoded, size, generator=generator)
        else:
            generator = item_generator(index)
            top, left = fixed_patch_corner(index % self.patches_per_image, self.patches_per_image,
                                          decoded.shape[-2], decoded.shape[-1], size)
            patch = decoded[:, top:top + size, left:left + size]
        patch = ops.from_unit_range(patch.to(torch.float32) / 255.0)
        if self.target is not None:
            source, clean = augment_pair(patch[:channels], patch[channels:], self.augment, generator, task=self.task)
            return source, clean
        patch, _ = augment_pair(patch, None, self.augment, generator, task=self.task)
        return ops.degrade_by(patch, self.degrade, self.amount, generator=generator), patch

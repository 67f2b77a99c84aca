"""Degraded/clean patch pairs cut from the images matching a glob pattern."""

from __future__ import annotations

import glob
import os

import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image

from plugins import ops
from zoo.data import ZooDataset, item_rng
from zoo.errors import UsageError

HOLDOUT_EVERY = 10


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


class GlobPatchesDataset(ZooDataset):
    """Square patches of the images matching a glob: (degraded or paired input, clean target)."""

    tasks = ("image_to_image",)
    path_options = ("target",)
    needs_data = True
    data_help = "a glob pattern of images, e.g. 'photos/**/*.png' (quote it)"

    def __init__(self, split: str, *, task: str, data: str | None = None,
                 image_size: int | None = None, channels: int | None = None,
                 patch_size: int = 64, degrade: str = "noise", target: str | None = None) -> None:
        """List the matching files; ``target`` is a glob of clean images paired by file name."""
        super().__init__(split, task=task, data=data, image_size=image_size, channels=channels)
        ops.check_image_options("glob_patches", task, self.tasks, image_size, channels)
        ops.check_degrade_kind(degrade)
        if data is None:
            raise UsageError("glob_patches needs --data PATTERN: a quoted glob of images, "
                             "e.g. --data 'photos/**/*.png'")
        self.patch_size = image_size or patch_size
        if self.patch_size < 1:
            raise UsageError(f"patch size must be at least 1 pixel, not {self.patch_size}: "
                             f"use --dataset-opt patch_size=N")
        inputs = _match(data, "--data")
        if target is None:
            pairs = [(path, None) for path in inputs]
        else:
            input_stems = _by_stem(inputs, data)
            target_stems = _by_stem(_match(target, "--dataset-opt target="), target)
            unpaired = sorted([path for stem, path in input_stems.items() if stem not in target_stems]
                              + [path for stem, path in target_stems.items() if stem not in input_stems])
            if unpaired:
                raise UsageError(f"{unpaired[0]} has no partner of the same name among "
                                 f"{data!r} / {target!r} ({len(unpaired)} unpaired): pair every input "
                                 f"with a clean target file of the same name")
            pairs = [(path, target_stems[stem]) for stem, path in input_stems.items()]  # input order
        if len(pairs) == 1:
            self.pairs = pairs
        else:
            self.pairs = [pair for i, pair in enumerate(pairs)
                          if (i % HOLDOUT_EVERY == 0) == (split == "test")]
        self.degrade = degrade
        self.target = target
        self.image_shape = (channels or 3, self.patch_size, self.patch_size)
        self.classes = None
        # Fail early and cheaply (header only) when the first image is smaller than a patch.
        _, height, width = ops.read_image_header(pairs[0][0])
        self._check_size(pairs[0][0], width, height)

    def _check_size(self, path: str, width: int, height: int) -> None:
        if width < self.patch_size or height < self.patch_size:
            raise UsageError(f"image {path} is {width}x{height}, smaller than the {self.patch_size}px "
                             f"patch: use --dataset-opt patch_size={min(width, height)} or less")

    def _load(self, path: str) -> Image.Image:
        image = ops.load_image(path, self.image_shape[0])
        self._check_size(path, image.width, image.height)
        return image

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        input_path, target_path = self.pairs[index]
        source = self._load(input_path)
        size = self.patch_size
        if target_path is not None:
            clean = self._load(target_path)
            if source.size != clean.size:
                raise UsageError(f"{input_path} is {source.width}x{source.height} but its target "
                                 f"{target_path} is {clean.width}x{clean.height}: paired images must "
                                 f"be the same size")
            if self.split == "train":
                source, clean = ops.paired_random_crop_flip(source, clean, size, generator=item_rng())
            else:
                source, clean = ops.center_crop_pair(source, clean, size)
            return ops.image_to_tensor(source), ops.image_to_tensor(clean)
        if self.split == "train":
            generator = item_rng()
            patch = ops.image_to_tensor(ops.random_crop_flip(source, size, generator=generator))
            return ops.degrade(patch, self.degrade, generator=generator), patch
        patch = ops.image_to_tensor(TF.center_crop(source, [size, size]))
        generator = torch.Generator().manual_seed(index)
        return ops.degrade(patch, self.degrade, generator=generator), patch

"""Labelled images in class folders: ROOT/train/<class>/* and optionally ROOT/test/<class>/*."""

from __future__ import annotations

import os

import torch
import torchvision.transforms.v2.functional as TF

from plugins import ops
from zoo.augment import AUGMENT_PRESETS, augment_image, train_preset
from zoo.data import ZooDataset, item_generator, item_rng
from zoo.errors import UsageError

LAYOUT = "ROOT/train/<class>/*.png|jpg (and optionally ROOT/test/<class>/*)"
HOLDOUT_EVERY = 10
DECODE_METHOD = "pil-jpeg-draft+bilinear-short-side"  # in cache_key: a change rebuilds decoded caches
DEVICE_DECODE_METHOD = "torchvision-decode-jpeg+float-bilinear-antialias-short-side"


def _list_class_files(folder: str) -> list[str]:
    """All image files under ``folder`` (recursively, hidden entries and broken links left out), sorted."""
    found, pending = [], [folder]
    while pending:
        try:
            with os.scandir(pending.pop()) as entries:
                for entry in entries:
                    if entry.name.startswith("."):
                        continue
                    if entry.is_dir(follow_symlinks=False):
                        pending.append(entry.path)
                    elif ops.has_image_name(entry.name) and entry.is_file():  # a stat only for links
                        found.append(entry.path)
        except OSError:  # an unreadable sub-folder is skipped, as os.walk does
            continue
    return sorted(found)


def _scan(split_dir: str, empty_allowed: bool = False) -> dict[str, list[str]]:
    """Map each class folder name under ``split_dir`` to its sorted image files.

    An empty class folder beside full ones is a mistake in the training split (a class
    with no samples); the test split may lack some classes.
    """
    try:
        names = sorted(entry.name for entry in os.scandir(split_dir)
                       if entry.is_dir() and not entry.name.startswith("."))
    except OSError as exc:
        raise UsageError(f"cannot list {split_dir}: {exc.strerror}; check the folder and its "
                         f"permissions (expected {LAYOUT})") from exc
    classes = {name: _list_class_files(os.path.join(split_dir, name)) for name in names}
    empty = [name for name, files in classes.items() if not files]
    if empty and len(empty) < len(classes) and not empty_allowed:  # all empty: the caller names the folder
        raise UsageError(f"class folder {os.path.join(split_dir, empty[0])} has no images: add some, or remove "
                         f"the folder (a class with no samples)")
    return classes


class ImageFolderDataset(ZooDataset):
    """Images sorted into one folder per class; the test split is ROOT/test or every 10th train file."""

    tasks = ("generation", "classification", "image_to_image")
    task_options = {"degrade": ("image_to_image",)}
    needs_data = True
    augments = AUGMENT_PRESETS  # --augment; flip when not given
    data_help = "a folder ROOT with ROOT/train/<class>/ image folders (ROOT/test/<class>/ optional)"

    def __init__(self, split: str, *, task: str, data: str | None = None,
                 image_size: int | None = None, channels: int | None = None,
                 degrade: str = "noise", augment: str | None = None) -> None:
        """Index the files of one split (no decoding); ``degrade`` is used for image_to_image, ``augment`` (a
        ``zoo.augment`` preset, flip by default) on the train split."""
        super().__init__(split, task=task, data=data, image_size=image_size, channels=channels)
        self.augment = train_preset(split, augment, "flip")
        ops.check_image_options("imagefolder", task, self.tasks, image_size, channels)
        ops.check_degrade_kind(degrade)
        if data is None:
            raise UsageError(f"imagefolder needs --data ROOT: a folder laid out as {LAYOUT}")
        root = os.path.expanduser(data)
        if not os.path.isdir(root):
            raise UsageError(f"data folder {root} does not exist or is not a folder: "
                             f"give --data ROOT laid out as {LAYOUT}")
        train_dir = os.path.join(root, "train")
        if not os.path.isdir(train_dir):
            parent = os.path.dirname(os.path.normpath(root))
            if os.path.basename(os.path.normpath(root)) in ("train", "test") and \
                    os.path.isdir(os.path.join(parent, "train")):
                raise UsageError(f"no train/ folder in {root}: give the folder above it, --data {parent or '.'}")
            raise UsageError(f"no train/ folder in {root}: lay the images out as {LAYOUT}")
        train = _scan(train_dir)
        if not train:
            raise UsageError(f"no class folders in {train_dir}: put each class's images in "
                             f"{train_dir}/<class>/ ({LAYOUT})")
        if task == "classification" and len(train) == 1:  # one class: nothing to tell apart
            raise UsageError(f"only one class folder ({next(iter(train))}) under {train_dir}; a classifier "
                             f"needs at least 2: add a folder for each other class")
        self.classes = list(train)
        train_files = [(path, label) for label, name in enumerate(self.classes) for path in train[name]]
        if not train_files:
            raise UsageError(f"no images (.png, .jpg, ...) in the class folders of {train_dir}: "
                             f"expected {LAYOUT}")

        test_dir = os.path.join(root, "test")
        if os.path.isdir(test_dir):
            test = _scan(test_dir, empty_allowed=True)
            unknown = [name for name in test if name not in train]
            if unknown:
                raise UsageError(f"class folder {os.path.join(test_dir, unknown[0])} has no match in "
                                 f"{train_dir}: test classes must be train classes ({LAYOUT})")
            label_of = {name: label for label, name in enumerate(self.classes)}
            test_files = [(path, label_of[name]) for name in test for path in test[name]]
            if not test_files:
                raise UsageError(f"no images in the class folders of {test_dir}: add test images "
                                 f"or remove {test_dir} to hold out every {HOLDOUT_EVERY}th train image")
            self.files = train_files if split == "train" else test_files
        elif len(train_files) == 1:
            self.files = train_files
        else:
            held = [i % HOLDOUT_EVERY == 0 for i in range(len(train_files))]
            self.files = [f for f, h in zip(train_files, held) if h == (split == "test")]

        self.degrade = degrade
        first_channels, first_height, _ = ops.read_image_header(train_files[0][0])
        self.size = image_size or first_height
        self.image_shape = (channels or first_channels, self.size, self.size)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor | int]:
        return self.finish(self.decode(index), index)

    def cache_key(self) -> list:
        """What the decoded images depend on: decode method, size, channels and files (path, size, mtime)."""
        stats = [(path, stat.st_size, stat.st_mtime_ns) for path, stat in
                 ((path, os.stat(path)) for path, _ in self.files)]
        return ["imagefolder", 2, DECODE_METHOD, self.image_shape, stats]

    def decode(self, index: int) -> torch.Tensor:
        """The deterministic part of an item: the file decoded, resized and cropped, as uint8 ``(C, H, W)``."""
        path, _ = self.files[index]
        image = ops.load_image(path, self.image_shape[0], short_side=self.size)
        return TF.pil_to_tensor(TF.center_crop(image, [self.size, self.size]))

    device_decode_method = DEVICE_DECODE_METHOD

    def encoded(self, index: int) -> torch.Tensor | None:
        """The item's file as bytes when it is a JPEG (for ``decode_batch``); ``None``: use ``decode``."""
        return ops.read_jpeg_bytes(self.files[index][0])

    def decode_batch(self, encoded: list[torch.Tensor], device: torch.device) -> torch.Tensor:
        """JPEG bytes decoded on ``device`` to uint8 ``(N, C, H, W)``, resized and cropped as ``decode`` does."""
        return ops.decode_jpegs(encoded, self.image_shape[0], self.size, device)

    def finish_batch(self, decoded: torch.Tensor, indices: list[int],
                     generators: list[torch.Generator]) -> list[torch.Tensor]:
        """``finish`` for a batch ``(N, C, H, W)`` at once, as the collated items.

        Each item's flip (and noise) comes from its own generator, as in ``finish``, so the values are the same.
        """
        clean = ops.from_unit_range(decoded.to(torch.float32) / 255.0)
        if self.augment == "flip":
            flips = ops.host_values_to([torch.rand((), generator=g).item() < 0.5 for g in generators], clean.device)
            clean = torch.where(flips[:, None, None, None], clean.flip(-1), clean)
        elif self.augment != "none":  # crops and colour: one item at a time, each from its own generator
            clean = torch.stack([augment_image(one, self.augment, g, task=self.task)
                                 for one, g in zip(clean, generators)])
        if self.task == "image_to_image":
            if self.split == "test":
                generators = [item_generator(index) for index in indices]  # fixed per test image
            return [ops.degrade(clean, self.degrade, generator=generators), clean]
        return [clean, ops.host_values_to([self.files[index][1] for index in indices], clean.device)]

    def finish(self, decoded: torch.Tensor, index: int) -> tuple[torch.Tensor, torch.Tensor | int]:
        """The rest of an item from its decoded image: range, augmentation, degradation, label."""
        _, label = self.files[index]
        clean = ops.from_unit_range(decoded.to(torch.float32) / 255.0)
        if self.augment != "none":
            clean = augment_image(clean, self.augment, item_rng(), task=self.task)
        if self.task == "image_to_image":
            generator = item_generator(index) if self.split == "test" else item_rng()  # test: fixed per image
            return ops.degrade(clean, self.degrade, generator=generator), clean
        return clean, label

"""Embedded procedural dataset: one large coloured shape on a plain darker background.

Needs no files. Every item is drawn from a ``torch.Generator`` seeded by
``(split, index)``, so items are reproducible and the splits never share one.
"""

from __future__ import annotations

import torch

from plugins import ops
from zoo.augment import AUGMENT_PRESETS, augment_image, train_preset
from zoo.data import ZooDataset, item_rng
from zoo.errors import UsageError

SHAPE_CLASSES = ["circle", "square", "triangle", "cross"]
_SEED_BASE = 0x5EED_0000


def _hsv_to_rgb(hue: torch.Tensor, saturation: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """Convert scalar HSV tensors (each in [0, 1]) to an RGB tensor of shape (3,)."""
    k = (torch.tensor([5.0, 3.0, 1.0]) + hue * 6.0) % 6.0
    return value - value * saturation * torch.minimum(k, 4.0 - k).clamp(0.0, 1.0)


def draw_shape(label: int, size: int, params: torch.Tensor, grey: bool = False) -> torch.Tensor:
    """Draw shape ``label`` at ``size`` x ``size`` from 9 uniform ``params``; returns [-1, 1] (C, H, W)."""
    radius = 0.24 + 0.14 * params[0]
    centre_x = radius + (1.0 - 2.0 * radius) * params[1]
    centre_y = radius + (1.0 - 2.0 * radius) * params[2]
    coords = (torch.arange(size, dtype=torch.float32) + 0.5) / size
    dx = (coords - centre_x).unsqueeze(0)  # (1, W)
    dy = (coords - centre_y).unsqueeze(1)  # (H, 1)
    if label == 0:  # circle
        mask = dx * dx + dy * dy <= radius * radius
    elif label == 1:  # square
        half = 0.85 * radius
        mask = (dx.abs() <= half) & (dy.abs() <= half)
    elif label == 2:  # triangle, apex up, base as wide as the diameter
        mask = (dy >= -radius) & (dy <= radius) & (dx.abs() <= (dy + radius) / 2.0)
    else:  # cross
        arm = 0.32 * radius
        mask = (((dx.abs() <= arm) & (dy.abs() <= radius))
                | ((dy.abs() <= arm) & (dx.abs() <= radius)))
    if grey:
        foreground = (0.6 + 0.4 * params[5]).reshape(1)
        background = (0.05 + 0.25 * params[8]).reshape(1)
    else:
        foreground = _hsv_to_rgb(params[3], 0.75 + 0.25 * params[4], 0.85 + 0.15 * params[5])
        background = _hsv_to_rgb(params[6], 0.3 + 0.4 * params[7], 0.1 + 0.2 * params[8])
    image = torch.where(mask, foreground[:, None, None], background[:, None, None])
    return ops.from_unit_range(image)


class ShapesDataset(ZooDataset):
    """Procedural circles, squares, triangles and crosses: the default dataset, no files needed."""

    tasks = ("generation", "classification", "image_to_image")
    task_options = {"degrade": ("image_to_image",)}
    needs_data = reads_data = False
    augments = AUGMENT_PRESETS  # --augment; none when not given
    data_help = "nothing (the shapes are drawn on the fly)"

    def __init__(self, split: str, *, task: str, data: str | None = None,
                 image_size: int | None = None, channels: int | None = None,
                 size: int = 32, train_count: int = 4096, test_count: int = 512,
                 degrade: str = "noise", augment: str | None = None) -> None:
        """Build one split; ``size`` is the natural side, ``image_size`` overrides it; ``augment`` is a
        ``zoo.augment`` preset for the train split (none by default)."""
        super().__init__(split, task=task, data=data, image_size=image_size, channels=channels)
        self.augment = train_preset(split, augment, "none")
        ops.check_image_options("shapes", task, self.tasks, image_size, channels)
        ops.check_degrade_kind(degrade)
        if size < 8:
            raise UsageError(f"shapes size {size} is too small to draw: use --dataset-opt size=8 or more")
        for name, count in (("train_count", train_count), ("test_count", test_count)):
            if count < 1:
                raise UsageError(f"shapes {name} must be at least 1, not {count}: "
                                 f"use --dataset-opt {name}=N with N >= 1")
        self.size = image_size or size
        self.count = train_count if split == "train" else test_count
        self.degrade = degrade
        self.image_shape = (channels or 3, self.size, self.size)
        self.classes = list(SHAPE_CLASSES)

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor | int]:
        if not 0 <= index < self.count:
            raise IndexError(f"shapes index {index} out of range 0..{self.count - 1}")
        return self._finish_image(self._draw(index), index)

    def _generator(self, index: int) -> torch.Generator:
        return torch.Generator().manual_seed(_SEED_BASE + 2 * index + (1 if self.split == "test" else 0))

    def _draw(self, index: int) -> torch.Tensor:
        """Item ``index``'s shape in ``[-1, 1]``, the same every time it is drawn."""
        params = torch.rand(9, generator=self._generator(index))
        return draw_shape(index % len(SHAPE_CLASSES), self.size, params, grey=self.image_shape[0] == 1)

    def _finish_image(self, image: torch.Tensor, index: int) -> tuple[torch.Tensor, torch.Tensor | int]:
        """The item from its drawn image, augmented: a degraded copy for image_to_image (the same crop, flip and
        colours on input and target: the input is degraded from the augmented image), else the label."""
        if self.augment != "none":
            image = augment_image(image, self.augment, item_rng(), task=self.task)
        if self.task == "image_to_image":
            if self.split == "test":  # the same noise every time: the generator after the shape's draws
                noise_source = self._generator(index)
                torch.rand(9, generator=noise_source)
            else:
                noise_source = item_rng()
            return ops.degrade(image, self.degrade, generator=noise_source), image
        return image, index % len(SHAPE_CLASSES)

    def cache_key(self) -> list:
        """What the drawn images depend on (for --cache-decoded)."""
        return ["shapes", 1, self.split, self.count, self.image_shape]

    def decode(self, index: int) -> torch.Tensor:
        """Item ``index``'s image as uint8 ``(C, H, W)``, for the decoded cache."""
        return ((self._draw(index) + 1) * 127.5).round().to(torch.uint8)

    def finish(self, decoded: torch.Tensor, index: int) -> tuple[torch.Tensor, torch.Tensor | int]:
        """The item from its cached uint8 image."""
        return self._finish_image(decoded.to(torch.float32) / 127.5 - 1, index)

"""``stripes``: procedural striped images, drawn on the fly (no files).

Each item is drawn from a generator seeded by ``(split, index)``, so item ``i``
is always the same image. Training augmentation (a random shift of the stripes)
and the degradation noise of training pairs draw from ``zoo.data.item_rng()``,
the engine's per-item generator, so a resumed run sees exactly the same batches.
"""

from __future__ import annotations

import math

import torch

from zoo.data import ZooDataset, item_rng

ORIENTATIONS = ["horizontal", "vertical", "diagonal", "antidiagonal"]
_SEED_BASE = 0x5712_0000  # any fixed number; the splits use even and odd offsets


class StripesDataset(ZooDataset):
    """Sine stripes of two colours in four orientations (the class label).

    ``classification`` items are ``(image, orientation)``; ``image_to_image`` items
    are ``(image + Gaussian noise of std noise, image)``.
    """

    tasks = ("image_to_image", "classification")
    needs_data = reads_data = False
    data_help = "nothing (the stripes are drawn on the fly)"
    task_options = {"noise": ("image_to_image",)}  # a classifier given --dataset-opt noise=... is refused

    def __init__(self, split: str, *, task: str, data: str | None = None,
                 image_size: int | None = None, channels: int | None = None,
                 size: int = 24, train_count: int = 512, test_count: int = 128,
                 noise: float = 0.2, shift: bool = True) -> None:
        super().__init__(split, task=task, data=data, image_size=image_size, channels=channels)
        if task not in self.tasks:
            raise ValueError(f"stripes feeds {' and '.join(self.tasks)} models, not {task}")
        if channels not in (None, 1, 3):
            raise ValueError(f"stripes draws 1 or 3 channels, not {channels}")
        if (image_size or size) < 4:
            raise ValueError(f"size must be at least 4, not {image_size or size}")
        if min(train_count, test_count) < 1:
            raise ValueError("train_count and test_count must be at least 1")
        if noise < 0:
            raise ValueError(f"noise must be >= 0, not {noise}")
        self.size = image_size or size  # procedural: draw at the size the model asks for
        self.count = train_count if split == "train" else test_count
        self.noise = noise
        self.shift = shift and split == "train"  # augment the training split only
        self.image_shape = (channels or 3, self.size, self.size)
        self.classes = list(ORIENTATIONS)

    def __len__(self) -> int:
        return self.count

    def draw(self, index: int, generator: torch.Generator, offset: float = 0.0) -> torch.Tensor:
        """The clean image of ``index`` in ``[-1, 1]``, with the stripes moved by ``offset`` periods."""
        label = index % len(ORIENTATIONS)
        params = torch.rand(8, generator=generator)
        period = 3.0 + 5.0 * params[0].item()
        phase = 2 * math.pi * (params[1].item() + offset)
        coords = torch.arange(self.size, dtype=torch.float32)
        ys, xs = coords[:, None], coords[None, :]
        position = [ys + 0 * xs, xs + 0 * ys, (xs + ys) / math.sqrt(2), (xs - ys) / math.sqrt(2)][label]
        wave = (torch.sin(2 * math.pi * position / period + phase) + 1) / 2  # (H, W) in [0, 1]
        channels = self.image_shape[0]
        low = params[2:2 + channels].view(channels, 1, 1) * 0.5  # dark colour
        high = 0.5 + params[5:5 + channels].view(channels, 1, 1) * 0.5  # light colour
        return (low + (high - low) * wave) * 2 - 1

    def __getitem__(self, index: int):
        if not 0 <= index < self.count:
            raise IndexError(f"stripes index {index} out of range 0..{self.count - 1}")
        generator = torch.Generator().manual_seed(_SEED_BASE + 2 * index + (self.split == "test"))
        # Per-item randomness: item_rng() during training (None outside the engine: the global RNG);
        # the test split uses its own per-index generator so evaluation never varies.
        augment = item_rng() if self.split == "train" else generator
        offset = torch.rand(1, generator=augment).item() if self.shift else 0.0
        image = self.draw(index, generator, offset)
        if self.task == "classification":
            return image, index % len(ORIENTATIONS)
        noisy = image + self.noise * torch.randn(image.shape, generator=augment)
        return noisy.clamp(-1, 1), image

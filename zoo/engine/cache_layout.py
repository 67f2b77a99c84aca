"""Where each decoded image lies in a decoded-cache file: many images of one shape, or one shape each.

Most datasets decode one image per item, all of the item's shape (``image_shape``): the file is an
``(N, C, H, W)`` array. A dataset whose items are cut from larger images of differing sizes
(``glob_patches``: many patches of each file) decodes each image once and says how: it offers
``decoded_shapes()`` (one ``(C, H, W)`` per decoded image) and ``decoded_index(index)`` (the image an
item is cut from). Images of differing shapes lie back to back in a flat file, and are read as views
of the mapped file, not copied (an item takes a patch of a large image): ``finish`` must not write
into them.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import torch

from zoo.errors import RunError


class Layout:
    """The decoded images of a dataset in a cache file: how many, their shapes, and where each one lies."""

    def __init__(self, shapes: Sequence[tuple[int, ...]]) -> None:
        """``shapes``: one per decoded image; images of one shape are stored as one array, others back to back."""
        self.count = len(shapes)
        self.uniform = len(set(shapes)) <= 1
        if self.uniform:
            self.shape = tuple(shapes[0]) if shapes else (0,)
            self.nbytes = self.count * math.prod(self.shape)
            self.array_shape: tuple[int, ...] = (self.count, *self.shape)
            self.name = "x".join(map(str, self.array_shape))
        else:
            self.shapes = np.array(shapes, dtype=np.int64)
            self.offsets = np.concatenate([[0], np.cumsum(np.prod(self.shapes, axis=1))])
            self.nbytes = int(self.offsets[-1])
            self.array_shape = (self.nbytes,)
            self.name = f"{self.count}i-{self.nbytes}b"

    @classmethod
    def of(cls, dataset: Any) -> "Layout":
        """The layout of what ``dataset.decode`` gives: ``decoded_shapes()`` where offered, else one image per item."""
        shapes = getattr(dataset, "decoded_shapes", None)
        if callable(shapes):
            return cls([tuple(int(side) for side in shape) for shape in shapes()])
        return cls([tuple(dataset.image_shape)] * len(dataset)) if len(dataset) else cls([])

    def shape_of(self, index: int) -> tuple[int, ...]:
        """The shape of decoded image ``index``."""
        return self.shape if self.uniform else tuple(int(side) for side in self.shapes[index])

    def read(self, array: np.ndarray, index: int) -> torch.Tensor:
        """Decoded image ``index`` from the mapped file as a uint8 tensor: copied out where all images share a
        shape, a view of the (writable: copy-on-write, or the partial file) mapping where they differ."""
        if self.uniform:
            return torch.from_numpy(np.array(array[index]))
        start, end = int(self.offsets[index]), int(self.offsets[index + 1])
        return torch.from_numpy(array[start:end]).view(self.shape_of(index))

    @property
    def published_mode(self) -> str:
        """How a published file is mapped: read-only, or copy-on-write where ``read`` gives views (so a view is
        writable, as torch wants, and a write stays in the process)."""
        return "r" if self.uniform else "c"

    def write(self, array: np.ndarray, indices: list[int], images: torch.Tensor | Sequence[torch.Tensor]) -> None:
        """Store decoded images (a stacked ``(N, C, H, W)`` batch or one tensor each) at ``indices``."""
        if self.uniform and isinstance(images, torch.Tensor):
            if tuple(images.shape[1:]) != self.shape:
                raise self._misfit(indices[0], tuple(images.shape[1:]))
            array[indices] = images.numpy()
            return
        for index, image in zip(indices, images):
            if tuple(image.shape) != self.shape_of(index):
                raise self._misfit(index, tuple(image.shape))
            if self.uniform:
                array[index] = image.numpy()
            else:
                array[int(self.offsets[index]):int(self.offsets[index + 1])] = image.numpy().reshape(-1)

    def _misfit(self, index: int, shape: tuple[int, ...]) -> RunError:
        return RunError(f"the dataset decoded image {index} as {shape}, not the {self.shape_of(index)} it declared "
                        f"(decoded_shapes or image_shape); fix the dataset plugin, or drop --cache-decoded.")

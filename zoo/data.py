"""The dataset interface every zoo dataset plugin implements.

A dataset class is built once per split by the engine::

    Dataset(split, task=..., data=..., image_size=..., channels=..., **options)

``split`` is ``"train"`` or ``"test"``; every dataset has a test split (a
deterministic held-out part where the source has none). ``task`` is the task of
the model being trained. ``image_size``/``channels`` are ``None`` for the
natural shape, or what the model asked for (the dataset resizes / converts).
Items are ``(input, target)`` pairs of float images in ``[-1, 1]`` shaped
``(C, H, W)``: for ``classification`` and ``generation`` the target is the
integer label (0 when unlabelled); for ``image_to_image`` the input is the
degraded image and the target the clean one.

Random augmentation draws from :func:`item_rng` (pass it as ``generator=`` to
torch's random functions) so that training is exactly reproducible.
"""

from __future__ import annotations

import contextlib
import numbers
import threading
from typing import Any, Callable, ClassVar, Iterator

import torch
from torch.utils.data import Dataset

from zoo.engine.rng import derive_seed
from zoo.errors import kind_of


class ZooDataset(Dataset):
    """Base class of zoo datasets; subclasses set the attributes below."""

    tasks: ClassVar[tuple[str, ...]] = ("generation", "classification")
    needs_data: ClassVar[bool] = True  # --data is required
    reads_data: ClassVar[bool] = True  # False: --data means nothing to it (a new run that gives one is refused)
    data_help: ClassVar[str] = "a folder"
    # options that only mean something for some tasks, e.g. {"degrade": ("image_to_image",)}:
    # giving one for another task is refused instead of being ignored
    task_options: ClassVar[dict[str, tuple[str, ...]]] = {}
    # options that name files or globs, e.g. ("target",): made absolute like --data, so a run reads them from
    # any folder
    path_options: ClassVar[tuple[str, ...]] = ()

    image_shape: tuple[int, int, int]
    classes: list[str] | None = None

    def __init__(self, split: str, *, task: str, data: str | None = None,
                 image_size: int | None = None, channels: int | None = None) -> None:
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', not {split!r}")
        self.split = split
        self.task = task
        self.data = data
        self.image_size = image_size
        self.channels = channels


_ITEM = threading.local()  # .slot: [seed, index, generator] of the item this thread loads


def _slot() -> list[Any]:
    """This thread's item slot: the seed and index of the item it loads, and the generator made for it."""
    slot = getattr(_ITEM, "slot", None)
    if slot is None:
        slot = _ITEM.slot = [None, 0, None]
    return slot


def item_rng() -> torch.Generator | None:
    """The generator a dataset should draw per-item randomness from (augmentation, noise).

    While the engine loads a sample it sets a generator seeded from (run seed,
    epoch, index), so augmentation is the same whichever worker loads the item
    and after a resume. Outside the engine it is ``None``: torch's global RNG. The generator is
    made on the first call for an item, so items that draw nothing cost nothing.
    """
    slot = _slot()
    if slot[2] is None and slot[0] is not None:
        slot[2] = item_generator(item_seed(slot[0], slot[1]))
    return slot[2]


def item_seed(seed: int | tuple[int | str, ...] | list[int | str], index: int) -> int:
    """An item's seed: ``seed`` itself, or ``derive_seed(*seed, index)`` where ``seed`` is a tuple of parts (the
    engine's keys share one tuple per epoch, so an item that draws nothing costs no hashing)."""
    # a list: the same parts after a pinned-memory batch (torch before 2.10 pins tuples into lists)
    return derive_seed(*seed, index) if isinstance(seed, (tuple, list)) else int(seed)


def item_generator(seed: int) -> torch.Generator:
    """The CPU generator an item's augmentation draws from, given the item's seed."""
    generator = torch.Generator()
    generator.manual_seed(int(seed))
    return generator


@contextlib.contextmanager
def seeded_item(seed: int | tuple[int | str, ...], index: int = 0) -> Iterator[torch.Generator]:
    """Make :func:`item_rng` return a generator seeded with ``seed`` (of item ``index``: :func:`item_seed`) in this
    thread."""
    previous = enter_item(seed, index)
    try:
        yield item_rng()
    finally:
        leave_item(previous)


def enter_item(seed: int | tuple[int | str, ...] | None, index: int = 0) -> list[Any]:
    """Start loading item ``index`` seeded with ``seed`` (see :func:`item_seed`); returns what :func:`leave_item`
    puts back."""
    slot = _slot()
    previous = slot[:]
    slot[:] = seed, index, None
    return previous


def leave_item(previous: list[Any]) -> None:
    """Done loading the item: the item seed before :func:`enter_item` is back."""
    _slot()[:] = previous


def load_items(dataset: Dataset, keys: list[tuple[int, Any]], failed: Callable[[int, Exception], Any]) -> list[Any]:
    """``dataset[index]`` for each ``(index, seed)`` key, each under its own item seed (:func:`item_seed`); an item
    that raises is ``failed(index, exc)`` instead. (The loader's batches: :func:`enter_item`'s work once per batch,
    not per item.)"""
    previous, items = enter_item(None), []
    slot = _slot()
    try:
        for index, seed in keys:
            slot[0], slot[1], slot[2] = seed, index, None
            try:
                items.append(dataset[index])
            except Exception as exc:  # a dataset may fail in any way on a bad file
                items.append(failed(index, exc))
    finally:
        leave_item(previous)
    return items


def items_fit(dataset: Dataset, items: list[Any]) -> bool:
    """True when every item surely keeps the item contract below, in its common form (tuples, int labels); else
    False, and each item goes to :func:`item_problem`, which also takes the other forms and names what breaks.

    One pass with the dataset's facts read once: a batch's check costs a fraction of the items' own checks.
    """
    task, shape = getattr(dataset, "task", None), getattr(dataset, "image_shape", None)
    shape = tuple(shape) if shape is not None else None
    classes = getattr(dataset, "classes", None) if task == "classification" else None
    count = len(classes) if classes else 0
    tensor, float32 = torch.Tensor, torch.float32
    for item in items:
        if type(item) is not tuple or len(item) != 2:
            return False
        image, target = item
        if type(image) is not tensor or image.dtype is not float32 or image.shape != shape:
            return False
        if task == "classification":
            if type(target) is not int or not 0 <= target < count:
                return False
        elif task == "image_to_image" and (not isinstance(target, tensor) or not target.is_floating_point()):
            return False
    return True


def item_problem(dataset: Dataset, item: object) -> str | None:
    """What breaks the item contract above (a pair, a float input of ``image_shape``, a float target image or
    a label in range), or ``None``.

    A few comparisons of sizes and types, cheap enough for every item: a dataset bug is named where it
    happens instead of surfacing as a shape error deep in a model or loss.
    """
    if not isinstance(item, (tuple, list)) or len(item) != 2:
        return f"an item must be an (input, target) pair, got {kind_of(item)}"
    task = getattr(dataset, "task", None)
    shape = getattr(dataset, "image_shape", None)
    shape = tuple(shape) if shape is not None else None
    image = item[0]
    if not isinstance(image, torch.Tensor) or image.dtype != torch.float32:  # what models' weights are
        return f"its input must be a float32 image tensor, got {kind_of(image)}"
    if shape is not None and tuple(image.shape) != shape:
        return f"its input has shape {tuple(image.shape)}, but its image_shape is {shape}"
    if task == "image_to_image":  # the target's shape is the dataset's own (colourising, upscaling...)
        target = item[1]
        if not isinstance(target, torch.Tensor) or not target.is_floating_point():
            return f"its target must be a float image tensor, got {kind_of(target)}"
    if task == "classification":
        label = item[1]
        if type(label) is not int:  # the common case first: this runs for every item
            if isinstance(label, torch.Tensor) and label.numel() == 1 and not label.is_floating_point() \
                    and label.dtype != torch.bool:
                label = int(label)
            if not isinstance(label, numbers.Integral) or isinstance(label, bool):
                return f"its label must be an int, got {kind_of(item[1])}"
        classes = getattr(dataset, "classes", None)
        count = len(classes) if classes else None
        if label < 0 or (count is not None and label >= count):
            return f"its label is {label}, outside 0..{count - 1 if count else 'N'} ({count or 'no'} classes)"
    return None

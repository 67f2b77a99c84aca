"""Image grids of what a run makes, for people to look at: a generative model's samples, an image-to-image
model's fixed test inputs beside its outputs and the targets, a classifier's fixed test images framed green
where it is right and red where it is wrong, over the class it predicted.

Every grid is drawn so that training never notices: eval mode (restored after), no gradients, generators of
their own, the global RNG as it was; BatchNorm layers that have not yet averaged 100 batches use the drawn
batch's statistics, their running ones restored after (``norm_stats.py``). A test-image grid that cannot be
drawn (a plugin's model or data not shaped as zoo's builtins are) is given up in one line, never stopping the
run. Nor does it slow the run much: the hooks that show grids at epochs' ends share a ``GridBudget`` that
keeps them to ``GRID_SHARE`` of the run's wall time.
"""

from __future__ import annotations

import contextlib
import math
import random
import time
import weakref
from typing import Any, Callable, ContextManager, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont, features
from torch.utils.data import default_collate
from torchvision.utils import make_grid

from zoo.data import seeded_item
from zoo.engine import rng
from zoo.engine.norm_stats import batch_statistics_until_settled
from zoo.engine.rng import derive_seed
from zoo.errors import ZooError, first_line
from zoo.recipe import Recipe, predictor

SAMPLE_COUNT = 64  # images in a generative model's grid (8 x 8)
PREVIEW_COUNT = 8  # test images in an image-to-image grid, one column each
CLASSIFIED_COUNT = 32  # test images in a classifier's grid (4 rows of 8)
FRAME = 3  # pixels of a classified image's frame
CLASSIFIED_SIDE = 96  # larger classified images are shown scaled down to this (an ImageNet model's grid stays small)
LABELLED_SIDE = 56  # smaller classified images are scaled up by a whole factor towards this, so names fit below
NAME_HEIGHT = 12  # pixels of the strip under a classified image that names its predicted class
RIGHT, WRONG = (0.1, 0.75, 0.2), (0.9, 0.1, 0.1)  # frame colours (RGB in [0, 1])
_FREETYPE = features.check("freetype2")  # PIL's default font at a chosen size; else its fixed bitmap font
GRID_SHARE = 0.0025  # the most of a run's wall time its epoch-end grids may take (see GridBudget)


def preview_indices(length: int, count: int = PREVIEW_COUNT, seed: int = 0) -> list[int]:
    """``count`` of ``length`` items drawn at random (the run's seed fixes them), in order; all when fewer.

    Not every n-th item: a split whose labels repeat with the same period (shapes: index % 4) would
    show a single class.
    """
    if length <= count:
        return list(range(length))
    return sorted(random.Random(derive_seed(seed, "preview")).sample(range(length), count))


def preview_batch(test_set: Any, seed: int, count: int = PREVIEW_COUNT) -> Any | None:
    """The fixed test items a grid shows, collated on the CPU; ``None`` when none can be read.

    Each item is read with a generator of its own and the global RNG restored after, so
    training draws what it would have drawn. An unreadable item is left out.
    """
    items = []
    before = rng.capture()  # torch's, numpy's and Python's: a dataset may draw from any of them
    try:
        for index in preview_indices(len(test_set), count, seed):
            with seeded_item(derive_seed(seed, "preview", index)):
                try:
                    items.append(test_set[index])
                except (ZooError, OSError, ValueError):  # a bad file: the grid shows the others
                    continue
    finally:
        rng.restore(before)
    return default_collate(items) if items else None


@contextlib.contextmanager
def _drawing(recipe: Recipe) -> Any:
    """Eval mode (batch statistics where BatchNorm's have not settled) and no gradients while a grid is drawn;
    the recipe's mode and buffers restored after."""
    was_training = recipe.training
    recipe.eval()
    try:
        with torch.no_grad(), batch_statistics_until_settled(recipe):
            yield
    finally:
        recipe.train(was_training)


def image_grid(images: torch.Tensor, columns: int) -> torch.Tensor:
    """Images in ``[-1, 1]`` as one ``(C, H, W)`` grid in ``[0, 1]`` on the CPU."""
    images = ((images.detach().float() + 1) / 2).clamp(0, 1).cpu()
    return make_grid(images, nrow=columns, padding=2)


def sample_grid(recipe: Recipe, seed: int, device: torch.device,
                autocast: Callable[[], ContextManager] = contextlib.nullcontext) -> torch.Tensor | None:
    """A generative model's samples from fixed inputs (the run's seed); ``None`` if it draws none."""
    generator = torch.Generator(device=device)
    generator.manual_seed(derive_seed(seed, "samples"))
    with _drawing(recipe), autocast():
        images = recipe.sample(SAMPLE_COUNT, generator)
    return None if images is None else image_grid(images, int(math.sqrt(len(images))))


def _images(batch: Any) -> bool:
    """Whether a collated batch is images a PNG can show: ``(N, 1 or 3, H, W)``."""
    return isinstance(batch, torch.Tensor) and batch.dim() == 4 and batch.shape[1] in (1, 3)


def _predicted(recipe: Recipe, inputs: torch.Tensor, device: torch.device,
               autocast: Callable[[], ContextManager]) -> torch.Tensor | None:
    """The model's outputs for ``inputs`` on the CPU; ``None`` if it has no single prediction (see ``predictor``)."""
    method = predictor(recipe)
    if method is None:
        return None
    with _drawing(recipe), autocast():
        return method(inputs.to(device)).float().cpu()


def restoration_grid(recipe: Recipe, batch: Any, device: torch.device,
                     autocast: Callable[[], ContextManager] = contextlib.nullcontext) -> torch.Tensor | None:
    """Three rows: the inputs, the model's outputs, the targets; ``None`` if the model has no single prediction."""
    inputs, targets = batch
    if not (_images(inputs) and _images(targets)):
        return None
    outputs = _predicted(recipe, inputs, device, autocast)
    if not _images(outputs) or len(outputs) != len(targets):  # not one image per target: nothing to compare
        return None
    rows = [inputs.float(), outputs.float(), targets.float()]
    channels = max(row.shape[1] for row in rows)  # grey rows beside colour ones are shown in colour
    rows = [_shown_as(row, channels, tuple(targets.shape[2:])) for row in rows]
    return image_grid(torch.cat(rows), len(inputs))


def _shown_as(images: torch.Tensor, channels: int, size: tuple[int, int]) -> torch.Tensor:
    """Images at ``channels`` and the targets' ``size`` (a colouriser's grey inputs, an upscaler's small ones);
    nearest-neighbour resizing, so an upscaler's input shows its own pixels."""
    if images.shape[1] != channels:
        images = images.expand(-1, channels, -1, -1)
    if tuple(images.shape[2:]) != size:
        images = F.interpolate(images, size=size, mode="nearest")
    return images


def classified_grid(recipe: Recipe, batch: Any, device: torch.device,
                    autocast: Callable[[], ContextManager] = contextlib.nullcontext,
                    classes: list[str] | None = None) -> torch.Tensor | None:
    """Test images framed green where the classifier's top class is the label, red where not, each over its
    predicted class's name (``classes``; the index without them); ``None`` if the model has no single
    prediction or its outputs are not one score per class."""
    images, labels = batch
    labels = torch.as_tensor(labels)
    if not _images(images) or labels.shape != (len(images),):  # one class index per image
        return None
    scores = _predicted(recipe, images, device, autocast)
    if scores is None or scores.shape[:1] != labels.shape or scores.dim() != 2:
        return None
    predicted = scores.argmax(dim=1)
    right = predicted == labels
    colours = torch.tensor([RIGHT if ok else WRONG for ok in right.tolist()])
    images = ((images.float() + 1) / 2).clamp(0, 1).expand(-1, 3, -1, -1)  # gray to RGB: frames have colour
    side = max(images.shape[2:])
    scale = CLASSIFIED_SIDE / side if side > CLASSIFIED_SIDE else max(1, LABELLED_SIDE // side)
    if scale != 1:  # large images down, small ones up (nearest: the pixels stay visible) so a name fits below
        images = F.interpolate(images, scale_factor=scale, mode="bilinear" if scale < 1 else "nearest",
                               **({"antialias": True} if scale < 1 else {})).clamp(0, 1)
    framed = colours[:, :, None, None].repeat(1, 1, images.shape[2] + 2 * FRAME, images.shape[3] + 2 * FRAME)
    framed[:, :, FRAME:-FRAME, FRAME:-FRAME] = images
    names = [classes[i] if classes and 0 <= i < len(classes) else str(i) for i in predicted.tolist()]
    return make_grid(torch.cat([framed, _name_strips(names, framed.shape[3])], dim=2), nrow=PREVIEW_COUNT, padding=2)


def _name_strips(names: list[str], width: int) -> torch.Tensor:
    """``(N, 3, 12, width)`` strips with each name in white on black, cut to what fits (PIL's bitmap font)."""
    font = ImageFont.load_default(size=10) if _FREETYPE else ImageFont.load_default()
    strips = []
    for name in names:
        strip = Image.new("RGB", (width, NAME_HEIGHT))
        draw = ImageDraw.Draw(strip)
        while name and draw.textlength(name, font=font) > width - 2:
            name = name[:-1]
        draw.text((1, 0), name, fill=(255, 255, 255), font=font)
        strips.append(torch.from_numpy(np.asarray(strip).copy()).permute(2, 0, 1).float() / 255)
    return torch.stack(strips)


class Pictures:
    """The grid a run shows of its model, by task: samples (generation), inputs/outputs/targets
    (image_to_image), test images framed by right or wrong (classification).

    The test items are read once, at the first grid.
    """

    def __init__(self, recipe: Recipe, test_set: Any, seed: int, device: torch.device,
                 autocast: Callable[[], ContextManager] = contextlib.nullcontext,
                 say: Callable[[str], None] = lambda _line: None) -> None:
        self.recipe, self.test_set, self.seed, self.device, self.autocast = recipe, test_set, seed, device, autocast
        self.say = say
        self._batch: Any | None = None
        self._batch_read = False
        self._given_up = False

    def grid(self) -> torch.Tensor | None:
        """A ``(C, H, W)`` grid in ``[0, 1]`` on the CPU, or ``None`` when the model has nothing to show."""
        task = self.recipe.task
        if task == "generation":
            return sample_grid(self.recipe, self.seed, self.device, self.autocast)
        draw = {"image_to_image": restoration_grid, "classification": classified_grid}.get(task)
        if draw is None or self._given_up:
            return None
        try:
            if not self._batch_read:
                count = CLASSIFIED_COUNT if task == "classification" else PREVIEW_COUNT
                self._batch, self._batch_read = preview_batch(self.test_set, self.seed, count), True
            if self._batch is None:
                return None
            if task == "classification":
                return draw(self.recipe, self._batch, self.device, self.autocast,
                            classes=getattr(self.test_set, "classes", None))
            return draw(self.recipe, self._batch, self.device, self.autocast)
        except torch.OutOfMemoryError:
            raise  # the device is full: training would fail next, and should say so itself
        except Exception as exc:  # a picture is not worth a run: say why once, draw no more
            self._given_up = True
            self.say(f"zoo: no grid of test images for this run ({first_line(exc)}); going on without it.")
            return None


class GridBudget:
    """Keeps a run's epoch-end grids to about ``GRID_SHARE`` of its wall time, however short its epochs.

    The rule: an epoch-end grid is due when the time spent on grids so far (drawing them, encoding
    and writing PNGs and events, by every hook that charges this budget, and what their writer threads
    will spend on them) is at most ``GRID_SHARE``
    of the time since training started in this process; otherwise that epoch goes without one.
    So the first epoch's end always has a grid; epochs lasting over 1 / GRID_SHARE (400) times what a
    grid takes (tens of milliseconds on a CPU), evaluations included, have one each; shorter ones have
    one every so many. The run's end always has one: the hooks draw it without asking. ``due`` gives
    one answer per step, so every hook shows the same steps.
    """

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self.clock = clock
        self.start()

    def start(self) -> None:
        """Training starts (again): nothing spent, the clock from now."""
        self.started = self.clock()
        self.spent = 0.0
        self._answer: tuple[int, bool] | None = None

    def due(self, step: int) -> bool:
        """Whether an epoch-end grid is drawn at ``step`` (the same answer for every call at one step)."""
        if self._answer is None or self._answer[0] != step:
            self._answer = (step, self.spent <= GRID_SHARE * (self.clock() - self.started))
        return self._answer[1]

    def charge(self, seconds: float) -> None:
        """Adds time grids cost outside a ``charged`` block (an event writer's thread checksumming an image)."""
        self.spent += seconds

    @contextlib.contextmanager
    def charged(self) -> Iterator[None]:
        """Adds the time the block takes to what grids have cost."""
        began = self.clock()
        try:
            yield
        finally:
            self.spent += self.clock() - began


_BUDGETS: "weakref.WeakKeyDictionary[Any, GridBudget]" = weakref.WeakKeyDictionary()


def grid_budget(run: Any) -> GridBudget:
    """The ``GridBudget`` of a live run (the ``RunContext`` hooks receive), shared by all its hooks."""
    budget = _BUDGETS.get(run)
    if budget is None:
        budget = _BUDGETS[run] = GridBudget()
    return budget

"""Augmentation presets for image datasets (``zoo train --augment none|flip|standard|strong``).

Shared by every dataset plugin that takes them, so ``standard`` means the same crop everywhere. Every
random choice is drawn from the item's generator (``zoo.data.item_rng()``), never from torch's global
RNG, and applied with ``torchvision.transforms.v2.functional``: an item augments the same way in any
worker and after a resume, and loading it leaves the global RNG as it was.

A dataset takes the presets by listing them in a class attribute ``augments`` and taking an ``augment``
keyword (``None``: its own default, for runs made before the option). The test split is never augmented.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch
import torchvision.transforms.v2.functional as TF

from zoo.config import AUGMENT_PRESETS
from zoo.errors import UsageError

__all__ = ["AUGMENT_PRESETS", "augment_image", "augment_pair", "crop_scale", "train_preset", "dataset_preset"]

CLASSIFICATION_SCALE = (0.08, 1.0)  # RandomResizedCrop's area range, as the torchvision and timm references
MILD_SCALE = (0.25, 1.0)  # for generation and image-to-image, where a tiny crop loses what the model learns
RATIO = (3 / 4, 4 / 3)
JITTER = 0.4  # brightness, contrast and saturation factors drawn from 1 +- JITTER
MAGNITUDE_BINS = 31  # TrivialAugmentWide's magnitude bins
TRANSLATE = 32 / 224  # TrivialAugmentWide's largest shift (32 pixels of 224), as a part of the side


def crop_scale(task: str) -> tuple[float, float]:
    """The crop area range of ``standard`` for a task: the references' for classification, milder otherwise."""
    return CLASSIFICATION_SCALE if task == "classification" else MILD_SCALE


def _uniform(generator: torch.Generator | None, low: float, high: float) -> float:
    return low + (high - low) * torch.rand((), generator=generator).item()


def crop_box(height: int, width: int, scale: tuple[float, float],
             generator: torch.Generator | None) -> tuple[int, int, int, int]:
    """RandomResizedCrop's box ``(top, left, height, width)``, drawn as torchvision draws it (10 tries, then the
    centre crop of the nearest ratio), from ``generator``."""
    area, log_ratio = height * width, (math.log(RATIO[0]), math.log(RATIO[1]))
    for _ in range(10):
        target = area * _uniform(generator, *scale)
        ratio = math.exp(_uniform(generator, *log_ratio))
        w, h = int(round(math.sqrt(target * ratio))), int(round(math.sqrt(target / ratio)))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, (), generator=generator))
            left = int(torch.randint(0, width - w + 1, (), generator=generator))
            return top, left, h, w
    ratio = width / height
    if ratio < RATIO[0]:
        w, h = width, int(round(width / RATIO[0]))
    elif ratio > RATIO[1]:
        h, w = height, int(round(height * RATIO[1]))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def _flip(generator: torch.Generator | None) -> bool:
    return torch.rand((), generator=generator).item() < 0.5


# TrivialAugmentWide's operations on [0, 1] images: (name, geometric, how a magnitude in [0, 1] and a sign act)
def _affine(angle: float = 0.0, shift: tuple[float, float] = (0.0, 0.0),
            shear: tuple[float, float] = (0.0, 0.0)) -> Callable[[torch.Tensor], torch.Tensor]:
    def apply(image: torch.Tensor) -> torch.Tensor:
        height, width = image.shape[-2:]
        return TF.affine(image, angle=angle, translate=[round(shift[0] * width), round(shift[1] * height)],
                         scale=1.0, shear=list(shear), interpolation=TF.InterpolationMode.NEAREST, fill=0.0,
                         center=[0, 0] if shear != (0.0, 0.0) else None)
    return apply


_TRIVIAL_OPS: list[tuple[str, bool, Callable[[float], Callable[[torch.Tensor], torch.Tensor]] | None]] = [
    ("identity", False, None),
    ("shear_x", True, lambda m: _affine(shear=(math.degrees(math.atan(0.99 * m)), 0.0))),
    ("shear_y", True, lambda m: _affine(shear=(0.0, math.degrees(math.atan(0.99 * m))))),
    ("translate_x", True, lambda m: _affine(shift=(TRANSLATE * m, 0.0))),
    ("translate_y", True, lambda m: _affine(shift=(0.0, TRANSLATE * m))),
    ("rotate", True, lambda m: _affine(angle=135.0 * m)),
    ("brightness", False, lambda m: lambda x: TF.adjust_brightness(x, 1.0 + 0.99 * m)),
    ("color", False, lambda m: lambda x: TF.adjust_saturation(x, 1.0 + 0.99 * m)),
    ("contrast", False, lambda m: lambda x: TF.adjust_contrast(x, 1.0 + 0.99 * m)),
    ("sharpness", False, lambda m: lambda x: TF.adjust_sharpness(x, 1.0 + 0.99 * m)),
    ("posterize", False, lambda m: lambda x: TF.posterize(x, int(round(8 - 6 * abs(m))))),
    ("solarize", False, lambda m: lambda x: TF.solarize(x, 1.0 - abs(m))),
    ("autocontrast", False, lambda m: TF.autocontrast),
    ("equalize", False, lambda m: TF.equalize),
]
_SIGNED = ("shear_x", "shear_y", "translate_x", "translate_y", "rotate", "brightness", "color", "contrast",
           "sharpness")


def _trivial_op(generator: torch.Generator | None) -> tuple[str, bool, Callable[[torch.Tensor], torch.Tensor] | None]:
    """One TrivialAugmentWide operation, its magnitude bin and sign drawn from ``generator``."""
    name, geometric, make = _TRIVIAL_OPS[int(torch.randint(len(_TRIVIAL_OPS), (), generator=generator))]
    magnitude = int(torch.randint(MAGNITUDE_BINS, (), generator=generator)) / (MAGNITUDE_BINS - 1)
    if name in _SIGNED and torch.rand((), generator=generator).item() <= 0.5:
        magnitude = -magnitude
    return name, geometric, make(magnitude) if make else None


def _colour_jitter(generator: torch.Generator | None) -> list[Callable[[torch.Tensor], torch.Tensor]]:
    """ColorJitter(0.4, 0.4, 0.4): its three factors and their order, drawn from ``generator``."""
    adjust = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation)
    factors = [_uniform(generator, 1 - JITTER, 1 + JITTER) for _ in adjust]
    order = torch.randperm(len(adjust), generator=generator).tolist()
    return [lambda x, op=adjust[i], f=factors[i]: op(x, f) for i in order]


def augment_pair(image: torch.Tensor, target: torch.Tensor | None, preset: str, generator: torch.Generator | None,
                 *, task: str = "image_to_image") -> tuple[torch.Tensor, torch.Tensor | None]:
    """Augment ``(C, H, W)`` images in ``[-1, 1]`` by ``preset``, the same draws applied to ``image`` and
    ``target`` (may be ``None``; may be another size: the crop box scales to it). Colour operations change the
    target too when it has the image's channels, else only the image; every draw is from ``generator``."""
    if preset not in AUGMENT_PRESETS:
        raise ValueError(f"unknown augment preset {preset!r}; presets: {', '.join(AUGMENT_PRESETS)}")
    images = [image] if target is None else [image, target]
    if preset == "none":
        return image, target
    if preset != "flip":
        box = crop_box(*image.shape[-2:], crop_scale(task), generator)
        images = [_resized_crop(one, box, image.shape[-2:]) for one in images]
    if _flip(generator):
        images = [TF.hflip(one) for one in images]
    if preset == "strong":
        same_colours = target is None or image.shape[0] == target.shape[0]
        jitter = _colour_jitter(generator)
        _, geometric, op = _trivial_op(generator)
        images = [_in_unit_range(one, [*(jitter if colour else []), *([op] if op and (geometric or colour) else [])])
                  for one, colour in zip(images, (True, same_colours))]
    return images[0], images[1] if target is not None else None


def _in_unit_range(image: torch.Tensor, steps: list[Callable[[torch.Tensor], torch.Tensor]]) -> torch.Tensor:
    """``steps`` (which take [0, 1] images, as torchvision's colour operations do) applied to a [-1, 1] image."""
    unit = (image + 1) * 0.5
    for step in steps:
        unit = step(unit)
    return (unit * 2 - 1).clamp(-1.0, 1.0)


def _resized_crop(image: torch.Tensor, box: tuple[int, int, int, int], size: Any) -> torch.Tensor:
    """``image`` cropped to ``box`` (given on an image of ``size``, scaled to this one's) and resized back."""
    height, width = image.shape[-2:]
    sy, sx = height / size[0], width / size[1]
    top, left, h, w = (round(box[0] * sy), round(box[1] * sx), max(1, round(box[2] * sy)), max(1, round(box[3] * sx)))
    return TF.resized_crop(image, top, left, h, w, [height, width], antialias=True).clamp(-1.0, 1.0)


def augment_image(image: torch.Tensor, preset: str, generator: torch.Generator | None, *,
                  task: str = "classification") -> torch.Tensor:
    """One ``(C, H, W)`` image in ``[-1, 1]`` augmented by ``preset``, every draw from ``generator``."""
    return augment_pair(image, None, preset, generator, task=task)[0]


def train_preset(split: str, augment: str | None, default: str) -> str:
    """The preset a dataset split applies: ``augment`` (``None``: the dataset's ``default``) on the train split,
    ``none`` on the test split; ValueError for a name that is no preset."""
    preset = default if augment is None else augment
    if preset not in AUGMENT_PRESETS:
        raise ValueError(f"augment must be one of {', '.join(AUGMENT_PRESETS)}, not {preset!r}")
    return preset if split == "train" else "none"


def dataset_preset(registry: Any, entry: Any, config: Any) -> str | None:
    """The ``augment=`` a config's dataset is built with: its ``--augment``, or ``None`` (the dataset's default;
    also ``none`` for a dataset that takes no presets). Another preset for a dataset that does not list it is
    refused, naming the datasets that do."""
    from zoo.build import load_dataset_class
    from zoo.errors import PluginError

    preset, takes = getattr(config, "augment", None), getattr(load_dataset_class(entry), "augments", ())
    if preset is None or preset in takes:
        return preset
    if preset == "none":
        return None
    takers = []
    for other in registry.entries("dataset"):
        try:
            if preset in getattr(load_dataset_class(other), "augments", ()):
                takers.append(other.name)
        except PluginError:
            continue
    raise UsageError(f"dataset '{entry.name}' does not take --augment {preset}; datasets that do: "
                     f"{', '.join(takers) or 'none installed'} (or drop --augment).")

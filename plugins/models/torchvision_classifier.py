"""Adapter that trains any torchvision classification architecture as a zoo recipe.

The networks are built untrained (``weights=None``) with the data's class count.
They take 3-channel input, so single-channel data is converted by the dataset,
and images are resized up to the smallest size the architecture accepts.
"""

from __future__ import annotations

import difflib
import functools
import sys
from typing import Annotated, Any, ClassVar, Iterator

import torch
import torchvision
from torch import nn
from torch.nn import functional as F

from plugins import hub
from zoo.errors import UsageError
from zoo.options import Range
from zoo.recipe import Recipe

# Architectures whose input size is fixed by construction (positional embeddings, window grids).
FIXED_SIZES: dict[str, int] = {"maxvit_t": 224, "vit_*": 224}

# Smallest square input that runs in train mode even on a batch of one (a BatchNorm
# after the last downsampling needs more than one value per channel). Measured by
# forward passes on torchvision 0.29; sizes above the minimum all work.
MIN_SIZES: dict[str, int] = {
    "alexnet": 64,
    "densenet*": 64,
    "googlenet": 48,
    "inception_v3": 112,
    "squeezenet*": 24,
    "vgg*": 32,
    "convnext*": 32,
    "swin*": 32,
    "efficientnet*": 40,
    "mnasnet*": 40,
    "mobilenet*": 40,
    "regnet*": 40,
    "resnet*": 40,
    "resnext*": 40,
    "shufflenet*": 40,
    "wide_resnet*": 40,
}
DEFAULT_MIN_SIZE = 32

# Builders that return auxiliary classifier outputs in train mode unless told not to.
_NO_AUX = {"googlenet": {"aux_logits": False, "init_weights": True},
           "inception_v3": {"aux_logits": False, "init_weights": True}}


@functools.lru_cache(maxsize=None)
def torchvision_classifiers() -> tuple[str, ...]:
    """The classification architectures this torchvision offers, sorted."""
    return tuple(sorted(torchvision.models.list_models(module=torchvision.models)))


def _lookup(table: dict[str, int], arch: str) -> int | None:
    """The value of the first ``table`` pattern (``name`` or ``prefix*``) matching ``arch``."""
    for pattern, value in table.items():
        if arch == pattern or (pattern.endswith("*") and arch.startswith(pattern[:-1])):
            return value
    return None


def input_size_rule(arch: str) -> tuple[int, int | None]:
    """Return ``(minimum, fixed)`` input size for ``arch``; ``fixed`` is ``None`` when any size fits."""
    fixed = _lookup(FIXED_SIZES, arch)
    if fixed is not None:
        return fixed, fixed
    minimum = _lookup(MIN_SIZES, arch)
    return (DEFAULT_MIN_SIZE if minimum is None else minimum), None


def check_arch(arch: str) -> None:
    """Raise a usage error with a did-you-mean if ``arch`` is not a torchvision classifier."""
    known = torchvision_classifiers()
    if arch in known:
        return
    close = difflib.get_close_matches(str(arch), known, n=3, cutoff=0.6)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    raise UsageError(f"unknown torchvision classifier '{arch}'.{hint} "
                     f"Run 'zoo list models tv_*' to see all {len(known)}.")


def _check_size(arch: str, image_size: int) -> None:
    minimum, fixed = input_size_rule(arch)
    if fixed is not None and image_size != fixed:
        raise UsageError(f"{arch} takes {fixed}x{fixed} images only, not image_size={image_size}; "
                         f"leave image_size unset to resize the data to {fixed}.")
    if image_size < minimum:
        raise UsageError(f"{arch} needs images of at least {minimum}x{minimum}, not image_size={image_size}; "
                         f"leave image_size unset to resize the data to {minimum}.")


class TorchvisionClassifier(Recipe):
    """An untrained torchvision classifier (``net``) trained with cross-entropy and Adam."""

    task: ClassVar[str] = "classification"
    losses: ClassVar[tuple[str, ...]] = ("cross_entropy",)
    default_loss: ClassVar[str | None] = "cross_entropy"
    loss_role: ClassVar[str] = "the classification loss on the network's logits"
    metric: ClassVar[tuple[str, str] | None] = ("accuracy", "max")
    eval_metrics: ClassVar[tuple[str, ...]] = ("loss", "accuracy")  # what evaluation_step reports
    default_lr: ClassVar[float] = 1e-3
    capturable: ClassVar[bool] = True  # the same device work every step: CUDA graphs may hold it
    ddp_static_graph: ClassVar[bool] = True  # one network, every parameter used every step: DDP's static graph

    def __init__(self, arch: str, num_classes: Annotated[int, Range(1)] = 1000, channels: int = 3,
                 image_size: int = 224, weights: str = "none") -> None:
        super().__init__()
        check_arch(arch)
        if channels != 3:
            raise UsageError(f"torchvision {arch} takes 3-channel images, not channels={channels}; "
                             "leave channels unset so the dataset converts its images.")
        if num_classes < 1:
            raise UsageError(f"num_classes must be at least 1, not {num_classes}.")
        _check_size(arch, image_size)
        self.arch = arch
        self.num_classes = num_classes
        self.image_size = image_size
        self.net = torchvision.models.get_model(arch, weights=None, num_classes=num_classes,
                                                **_NO_AUX.get(arch, {}))
        self.weights_source = "none"
        if weights != "none":
            self._load_pretrained(weights)

    def _load_pretrained(self, weights: str) -> None:
        """ImageNet weights (hub cache, strict offline) or a state-dict file; a new head stays as initialised."""
        if weights == "imagenet":
            url = torchvision.models.get_model_weights(self.arch).DEFAULT.url
            state, self.weights_source = hub.pretrained_state(url, f"torchvision {self.arch} ImageNet",
                                                              strict=True, downloader=lambda: hub.download(url))
        else:
            state, self.weights_source = hub.state_from_path(weights, f"torchvision {self.arch}"), f"file:{weights}"
        own = self.net.state_dict()
        unknown = sorted(set(state) - set(own))
        if unknown or not set(own) & set(state):
            raise UsageError(f"weights {weights} do not fit torchvision {self.arch}: unexpected keys "
                             f"{unknown[:3]}; pass weights for this architecture.")
        fitting = {k: v for k, v in state.items() if own[k].shape == v.shape}
        self.net.load_state_dict(fitting, strict=False)
        replaced = sorted(set(own) - set(fitting))
        if replaced:
            print(f"zoo: {self.arch}: pretrained weights loaded except {', '.join(replaced)} "
                  f"(new head for {self.num_classes} classes).", file=sys.stderr)

    @classmethod
    def adapt_to_data(cls, shape: tuple[int, int, int], num_classes: int | None,
                      options: dict[str, Any]) -> tuple[dict[str, Any], tuple[int, int]]:
        """Ask for 3-channel images at the data's size, raised (or fixed) to what ``arch`` accepts."""
        filled = dict(options)
        arch = filled.get("arch")
        minimum, fixed = input_size_rule(arch) if isinstance(arch, str) else (DEFAULT_MIN_SIZE, None)
        if num_classes:
            filled.setdefault("num_classes", num_classes)
        filled.setdefault("channels", 3)
        if "image_size" not in filled:
            filled["image_size"] = fixed if fixed is not None else max(int(shape[1]), minimum)
        return filled, (filled["channels"], filled["image_size"])

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """Class logits of ``images``; main head only if the network also returns auxiliary ones."""
        out = self.net(images)
        return getattr(out, "logits", out)

    def training_step(self, batch: Any, loss_fn: nn.Module | None) -> Iterator[tuple[str, torch.Tensor]]:
        """Yield the classification loss for the single optimizer."""
        images, labels = batch
        logits = self.logits(images)
        yield "model", (loss_fn(logits, labels) if loss_fn is not None else F.cross_entropy(logits, labels))

    def evaluation_step(self, batch: Any, loss_fn: nn.Module | None,
                        generator: torch.Generator) -> dict[str, torch.Tensor]:
        """Summed loss and correct predictions over the batch, with its size."""
        images, labels = batch
        logits = self.logits(images)
        count = labels.shape[0]
        loss = loss_fn(logits, labels) if loss_fn is not None else F.cross_entropy(logits, labels)
        return {
            "loss": loss.detach() * count,
            "accuracy": (logits.argmax(dim=1) == labels).sum(),
            "count": torch.tensor(count, device=labels.device),
        }

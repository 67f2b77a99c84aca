"""Loss modules of the zoo: each is an ``nn.Module`` called as ``loss(prediction, target)``.

Image losses also offer ``match_statistics(fake, real)``, a loss between the batch
statistics of two *unpaired* batches (used by DCGAN's extra generator term).
"""

from __future__ import annotations

import os
import sys
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from plugins import hub
from zoo.errors import RunError, UsageError

# Layer ranges of ``vgg19().features`` ending at relu2_1, relu4_1 and relu5_1.
VGG19_SLICES = ((0, 7), (7, 21), (21, 30))
RANDOM_SEED = 0
_WEIGHT_MODES = ("auto", "imagenet", "random")
_STD_EPS = 1e-8


def batch_statistics(x: torch.Tensor, dims: tuple[int, ...] = (0,)) -> tuple[torch.Tensor,
                                                                               torch.Tensor]:
    """Return the mean and (biased, epsilon-stabilised) std of ``x`` over ``dims``.

    The epsilon keeps the std's gradient finite for a batch of one or a constant batch.
    """
    mean = x.mean(dim=dims)
    std = torch.sqrt(x.var(dim=dims, correction=0) + _STD_EPS)
    return mean, std


def match_batch_statistics(loss_fn: nn.Module, fake: torch.Tensor,
                           real: torch.Tensor) -> torch.Tensor:
    """Apply ``loss_fn`` between the per-position batch mean and std of two unpaired batches."""
    fake_mean, fake_std = batch_statistics(fake)
    real_mean, real_std = batch_statistics(real)
    return loss_fn(fake_mean, real_mean) + loss_fn(fake_std, real_std)


class ImageLoss(nn.Module):
    """Base of the paired image losses; adds the unpaired ``match_statistics`` variant."""

    def match_statistics(self, fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        """Return this loss between the per-position batch means and stds of the two batches."""
        return match_batch_statistics(self, fake, real)


class MSELoss(ImageLoss):
    """Mean squared error, written out as the style guide's custom loss."""

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        loss = torch.mean((x - y) ** 2)
        return loss


class L1Loss(ImageLoss):
    """Mean absolute error; less blurring than MSE for image restoration."""

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return torch.mean(torch.abs(x - y))


class BCELoss(nn.Module):
    """Binary cross-entropy on logits (numerically stable: no separate sigmoid)."""

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(logits, target.to(logits.dtype))


class CrossEntropyLoss(nn.Module):
    """Cross-entropy between class logits ``(N, C)`` and integer labels ``(N,)``."""

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, labels)


def vgg19_weights_url() -> str:
    """Return the URL of torchvision's ImageNet VGG19 weights (``IMAGENET1K_V1``)."""
    from torchvision.models import VGG19_Weights
    return VGG19_Weights.IMAGENET1K_V1.url


def vgg19_cache_path() -> str:
    """Return where torch's hub cache keeps the ImageNet VGG19 weights file."""
    return hub.cache_path(vgg19_weights_url())


def download_vgg19_weights() -> dict[str, torch.Tensor]:
    """Download the ImageNet VGG19 state dict into the hub cache and return it.

    A module-level function so tests (and offline setups) can replace it.
    """
    return hub.download(vgg19_weights_url())


class Vgg19Slices(nn.Module):
    """The first ``layers`` slices of VGG19's features, returning every slice's output.

    Built from ``torchvision.models.vgg19(weights=None).features`` (on the meta device, so
    the unused classifier costs nothing) and initialised as torchvision does; with
    ``init=False`` the weights are left uninitialised for :meth:`load_features` to fill.
    """

    def __init__(self, layers: int = 3, requires_grad: bool = False, init: bool = True) -> None:
        super().__init__()
        from torchvision import models
        with torch.device("meta"):
            vgg_features = models.vgg19(weights=None).features
        for index, (start, end) in enumerate(VGG19_SLICES[:layers], start=1):
            vgg_slice = nn.Sequential()
            for x in range(start, end):
                vgg_slice.add_module(str(x), vgg_features[x])
            self.add_module(f"slice{index}", vgg_slice)
        self.num_slices = layers
        self.to_empty(device="cpu")
        for module in self.modules():
            if init and isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(module.bias)
        if not requires_grad:
            for param in self.parameters():
                param.requires_grad = False

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = []
        for index in range(1, self.num_slices + 1):
            x = getattr(self, f"slice{index}")(x)
            out.append(x)
        return out

    def load_features(self, state: dict[str, Any]) -> None:
        """Load a vgg19 state dict (``features.N.*`` keys) or a features-only one (``N.*``).

        Keys of layers this module does not use (later features, the classifier) are ignored.
        Raises ``ValueError`` naming the first missing or mis-shaped tensor.
        """
        if any(key.startswith("features.") for key in state):
            prefix = "features."
        else:
            prefix = ""
        own = {}
        for name, param in self.named_parameters():
            key = prefix + name.split(".", 1)[1]  # "slice2.10.weight" -> "10.weight"
            if key not in state:
                short = name.split(".", 1)[1]
                raise ValueError(f"missing 'features.{short}' (or '{short}'): "
                                 f"not a VGG19 state dict")
            value = state[key]
            if not isinstance(value, torch.Tensor) or value.shape != param.shape:
                shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value)
                raise ValueError(f"{key!r} has shape {shape}, VGG19 needs {tuple(param.shape)}")
            own[name] = value
        with torch.no_grad():
            for name, param in self.named_parameters():
                param.copy_(own[name])


class PerceptualLoss(ImageLoss):
    """Sum over VGG19 slices of the mean L1 distance between features of two images.

    Inputs in ``[-1, 1]`` are mapped to ``[0, 1]`` and ImageNet-normalised; 1-channel inputs
    are repeated to RGB. The VGG is frozen and stays in eval mode. ``weights`` is ``auto``
    (ImageNet weights from the hub cache or a download, else seeded random ones),
    ``imagenet`` (strict), ``random`` (seeded) or a path to a ``.safetensors``/``.pth`` file.
    ``weights_source`` says which weights were used.
    """

    def __init__(self, weights: str = "auto", layers: int = 3) -> None:
        super().__init__()
        if isinstance(layers, bool) or not isinstance(layers, int) or not 1 <= layers <= 3:
            raise UsageError(f"perceptual loss layers must be 1, 2 or 3, not {layers!r}")
        state, self.weights_source = self._resolve_weights(weights)
        # Build and seed-initialise without touching the global torch RNGs (training is seeded): the CPU
        # generator alone is seeded (torch.manual_seed would reseed every GPU's) and restored after.
        with torch.random.fork_rng(devices=[]):
            torch.random.default_generator.manual_seed(RANDOM_SEED)
            self.vgg = Vgg19Slices(layers, init=state is None)
        if state is not None:
            try:
                self.vgg.load_features(state)
            except ValueError as exc:
                source = self.weights_source.split(":", 1)[1]
                error = RunError if weights in _WEIGHT_MODES else UsageError
                raise error(f"VGG19 weights in {source} do not fit: {exc}") from None
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))
        self.vgg.eval()

    @staticmethod
    def options_for_weights(source: str) -> dict[str, str]:
        """The options that load again the weights a run recorded (its ``weights_source``): a resumed or
        tested run computes the same loss, whatever the hub cache holds now."""
        if source.startswith("random("):
            return {"weights": "random"}
        if source.startswith("imagenet:"):
            return {"weights": "imagenet"}  # strict: a missing file is named, never replaced by random weights
        if source.startswith("file:"):
            return {"weights": source.removeprefix("file:")}
        return {}

    @staticmethod
    def _resolve_weights(weights: str | os.PathLike) -> tuple[dict[str, Any] | None, str]:
        """Return ``(state dict or None for seeded random, weights_source)`` for a mode or path."""
        if isinstance(weights, os.PathLike):
            weights = os.fspath(weights)
        if weights == "random":
            return None, f"random(seed={RANDOM_SEED})"
        if weights in ("auto", "imagenet"):
            state, source = hub.pretrained_state(vgg19_weights_url(), "VGG19 ImageNet",
                                                 strict=weights == "imagenet",
                                                 downloader=lambda: download_vgg19_weights())
            if state is not None:
                return state, source
            print(f"zoo: VGG19 ImageNet weights not in {vgg19_cache_path()} and no network; perceptual loss "
                  f"uses seeded random weights (recorded in config.json)", file=sys.stderr)
            return None, f"random(seed={RANDOM_SEED}, offline fallback)"
        if not isinstance(weights, str) or not os.path.isfile(weights):
            raise UsageError("perceptual weights must be auto, imagenet, random or the path of a VGG19 "
                             f"state dict (.safetensors, .pth or .pt); {weights!r} is none of these (no such file)")
        return hub.state_from_path(weights, "VGG19"), f"file:{weights}"

    def train(self, mode: bool = True) -> PerceptualLoss:
        """Set training mode for this module but keep the frozen VGG in eval mode."""
        super().train(mode)
        self.vgg.eval()
        return self

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Return the VGG slice outputs of images ``x`` in ``[-1, 1]`` (1 or 3 channels)."""
        if x.shape[1] == 1:
            x = x.repeat(1, 3, 1, 1)
        elif x.shape[1] != 3:
            raise ValueError(f"perceptual loss needs 1- or 3-channel images, got {x.shape[1]}")
        x = ((x + 1) / 2 - self.mean) / self.std
        return self.vgg(x)

    def _target_features(self, y: torch.Tensor) -> list[torch.Tensor]:
        """Features of a target: no graph is kept unless the target itself needs gradients."""
        if y.requires_grad:
            return self.features(y)
        with torch.no_grad():
            return self.features(y)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x_features = self.features(x)
        y_features = self._target_features(y)
        loss = 0
        for x_feature, y_feature in zip(x_features, y_features):
            loss = loss + F.l1_loss(x_feature, y_feature)
        return loss

    def match_statistics(self, fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        """L1 between per-channel mean and std of VGG features over each whole batch."""
        loss = 0
        for fake_feature, real_feature in zip(self.features(fake), self._target_features(real)):
            fake_mean, fake_std = batch_statistics(fake_feature, (0, 2, 3))
            real_mean, real_std = batch_statistics(real_feature, (0, 2, 3))
            loss = loss + F.l1_loss(fake_mean, real_mean) + F.l1_loss(fake_std, real_std)
        return loss

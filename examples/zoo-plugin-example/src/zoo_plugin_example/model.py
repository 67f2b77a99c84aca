"""``tiny_autoencoder``: a small convolutional encoder/decoder for image-to-image data."""

from __future__ import annotations

import inspect
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from zoo.recipe import Recipe

_MIN_MSE = 1e-10  # caps the PSNR of a perfect prediction at 100 dB


def batch_psnr(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB of images in ``[-1, 1]``, measured on ``[0, 1]``."""
    prediction = ((prediction.float() + 1) / 2).clamp(0, 1)
    target = ((target.float() + 1) / 2).clamp(0, 1)
    mse = ((prediction - target) ** 2).flatten(1).mean(dim=1)
    return -10 * torch.log10(mse.clamp_min(_MIN_MSE))


class TinyAutoencoder(Recipe):
    """Encoder of ``depth`` stride-2 convolutions, a mirrored decoder, a tanh output.

    Trains on any dataset that feeds ``image_to_image`` pairs ``(degraded, clean)``:
    the embedded ``shapes`` dataset (the default) or this plugin's ``stripes``.
    """

    task = "image_to_image"
    losses = ("ssim_lite", "l1", "mse")
    default_loss = "ssim_lite"
    loss_role = "--loss is the reconstruction loss between the decoded and the clean image"
    metric = ("psnr", "max")
    default_lr = 2e-3

    def __init__(self, channels: int = 3, width: int = 16, depth: int = 2, image_size: int = 32,
                 skip: bool = True) -> None:
        super().__init__()
        if depth < 1:
            raise ValueError(f"depth must be at least 1, not {depth}")
        if width < 1:
            raise ValueError(f"width must be at least 1, not {width}")
        if image_size % (2 ** depth):
            raise ValueError(f"image_size {image_size} must be a multiple of 2**depth = {2 ** depth}")
        self.image_size = image_size
        self.skip = skip
        encoder: list[nn.Module] = [nn.Conv2d(channels, width, 3, padding=1), nn.ReLU(inplace=True)]
        decoder: list[nn.Module] = []
        for level in range(depth):
            wide = width * 2 ** level
            encoder += [nn.Conv2d(wide, wide * 2, 4, stride=2, padding=1), nn.ReLU(inplace=True)]
            decoder = [nn.ConvTranspose2d(wide * 2, wide, 4, stride=2, padding=1), nn.ReLU(inplace=True)] + decoder
        decoder.append(nn.Conv2d(width, channels, 3, padding=1))
        # Child modules are the networks: checkpoint keys read "encoder.*" and "decoder.*".
        self.encoder = nn.Sequential(*encoder)
        self.decoder = nn.Sequential(*decoder)

    @classmethod
    def adapt_to_data(cls, shape, num_classes, options):
        """Take channels and size from the data, rounding the size up to a multiple of 2**depth.

        The engine rebuilds the dataset at the returned ``(channels, size)`` if it differs.
        """
        filled = dict(options)
        filled.setdefault("channels", shape[0])
        depth = filled.get("depth", inspect.signature(cls.__init__).parameters["depth"].default)
        step = 2 ** depth
        filled.setdefault("image_size", -(-shape[1] // step) * step)
        return filled, (filled["channels"], filled["image_size"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.decoder(self.encoder(x))
        return torch.tanh(out + x) if self.skip else torch.tanh(out)

    def configure_optimizers(self, lr: float | None) -> dict[str, torch.optim.Optimizer]:
        """One optimizer named ``model``; ``lr`` is ``--lr`` or ``None``."""
        return {"model": torch.optim.Adam(self.parameters(), lr=lr or self.default_lr, betas=(0.9, 0.99))}

    def configure_schedulers(self, optimizers: dict[str, torch.optim.Optimizer]) -> dict[str, Any]:
        """Halve the learning rate every 10 epochs (stepped by the engine at each epoch's end)."""
        return {"model": torch.optim.lr_scheduler.StepLR(optimizers["model"], step_size=10, gamma=0.5)}

    def _loss(self, loss_fn: nn.Module | None, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.l1_loss(prediction, target) if loss_fn is None else loss_fn(prediction, target)

    def training_step(self, batch: Any, loss_fn: nn.Module | None) -> Iterator[tuple[str, torch.Tensor]]:
        """Yield the reconstruction loss for the ``model`` optimizer; log the L1 error beside it."""
        degraded, clean = batch
        restored = self(degraded)
        self.log("l1", F.l1_loss(restored, clean))  # a tensor: the engine reads it at log steps only
        yield "model", self._loss(loss_fn, restored, clean)

    def evaluation_step(self, batch: Any, loss_fn: nn.Module | None,
                        generator: torch.Generator) -> dict[str, Any]:
        """Sums over the batch of the loss and the per-image PSNR, plus ``count``."""
        degraded, clean = batch
        count = degraded.size(0)
        restored = self(degraded)
        return {"loss": self._loss(loss_fn, restored, clean) * count,
                "psnr": batch_psnr(restored, clean).sum(), "count": count}

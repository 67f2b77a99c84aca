"""Image-to-image ResNet for patch restoration: predicts the clean image from a degraded one."""

from __future__ import annotations

from typing import Annotated, Any, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from plugins.layers import ConvBlock, ResnetBlock
from zoo.options import Range
from zoo.recipe import Recipe

_EDGE = 1e-3  # keeps atanh of the input finite at -1 and 1
_MIN_MSE = 1e-10  # caps the PSNR of a perfect prediction at 100 dB
MIN_IMAGE_SIZE = 4  # the 7x7 reflect-padded convolutions need more than 3 pixels a side


def batch_psnr(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Return the per-image PSNR in dB of images in ``[-1, 1]``, measured on ``[0, 1]``."""
    prediction = ((prediction.float() + 1) / 2).clamp(0, 1)
    target = ((target.float() + 1) / 2).clamp(0, 1)
    mse = ((prediction - target) ** 2).flatten(1).mean(dim=1)
    return -10 * torch.log10(mse.clamp_min(_MIN_MSE))


class RestorationNet(nn.Module):
    """ConvBlock in, ResnetBlocks, ConvBlock out; a global residual under a tanh.

    The body predicts a correction to the input in tanh pre-activation space, so the output
    stays in ``(-1, 1)`` with gradients everywhere and a zero correction returns the input.
    """

    def __init__(self, channels: int = 3, ngf: int = 32, blocks: int = 4) -> None:
        super().__init__()
        layers: list[nn.Module] = [ConvBlock(channels, ngf, 7, norm="instance",
                                             padding_mode="reflect")]
        for _ in range(blocks):
            layers += [ResnetBlock(ngf, norm="instance")]
        head = ConvBlock(ngf, channels, 7, norm=None, activation=None, padding_mode="reflect")
        nn.init.zeros_(head.block[0].weight)  # start as the identity: training only improves on it
        nn.init.zeros_(head.block[0].bias)
        self.body = nn.Sequential(*layers, head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        delta = self.body(x)
        return torch.tanh(torch.atanh(x.clamp(-1 + _EDGE, 1 - _EDGE)) + delta)


class ResnetI2I(Recipe):
    """Patch restoration: learns to map degraded patches to clean ones."""

    task = "image_to_image"
    losses = ("l1", "mse", "perceptual")
    default_loss = "l1"
    loss_role = "--loss is the reconstruction loss between the restored and the clean image"
    metric = ("psnr", "max")
    eval_metrics = ("loss", "psnr")  # what evaluation_step reports (hooks check names against it)
    default_lr = 2e-4
    capturable = True  # the same device work every step: CUDA graphs may hold it
    ddp_static_graph = True  # one network, every parameter used every step: DDP's static graph
    any_image_size = True  # fully convolutional: zoo predict restores whole images
    min_image_size = MIN_IMAGE_SIZE

    def __init__(self, channels: Annotated[int, Range(1)] = 3, ngf: Annotated[int, Range(1)] = 32,
                 blocks: Annotated[int, Range(0)] = 4,
                 image_size: Annotated[int, Range(MIN_IMAGE_SIZE)] = 64) -> None:
        super().__init__()
        self.image_size = image_size  # for shape bookkeeping: the net is fully convolutional
        self.net = RestorationNet(channels, ngf, blocks)

    def _loss(self, loss_fn: nn.Module | None, prediction: torch.Tensor,
              target: torch.Tensor) -> torch.Tensor:
        """The mean loss of a batch (L1 when no ``--loss`` module is given)."""
        if loss_fn is None:
            return F.l1_loss(prediction, target)
        return loss_fn(prediction, target)

    def training_step(self, batch: Any,
                      loss_fn: nn.Module | None) -> Iterator[tuple[str, torch.Tensor]]:
        """Yield the reconstruction loss of one batch for the ``model`` optimizer."""
        x, target = batch
        yield "model", self._loss(loss_fn, self.net(x), target)

    def evaluation_step(self, batch: Any, loss_fn: nn.Module | None,
                        generator: torch.Generator) -> dict[str, Any]:
        """Return the summed loss and summed per-image PSNR of one batch."""
        x, target = batch
        count = x.size(0)
        prediction = self.net(x)
        return {"loss": self._loss(loss_fn, prediction, target) * count,
                "psnr": batch_psnr(prediction, target).sum(), "count": count}

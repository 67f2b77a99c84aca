"""DCGAN (Radford et al.) as in PyTorch's dcgan example, for 64x64 or 32x32 images.

The discriminator returns logits (the example's final sigmoid is folded into
``binary_cross_entropy_with_logits``). For 64x64 images the ``main`` layer indices match
the example, so its ``netG``/``netD`` state dicts load under ``generator.``/``discriminator.``.
"""

from __future__ import annotations

from typing import Annotated, Any, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from plugins.layers import dcgan_weights_init
from plugins.losses import match_batch_statistics
from zoo.options import Range
from zoo.recipe import Recipe

IMAGE_SIZES = (64, 32)


def _num_resamplings(image_size: int) -> int:
    """Return the number of inner stride-2 layers between the 4x4 map and the image layer."""
    if image_size not in IMAGE_SIZES:
        raise ValueError(f"DCGAN image_size must be 64 or 32, not {image_size!r}; "
                         f"the engine resizes the data to it")
    return image_size.bit_length() - 4  # 64 -> 3, 32 -> 2


class DCGANGenerator(nn.Module):
    """Maps noise ``(N, nz, 1, 1)`` to images ``(N, nc, S, S)`` in ``[-1, 1]``."""

    def __init__(self, image_size: int = 64, nz: int = 100, ngf: int = 64, nc: int = 3) -> None:
        super().__init__()
        steps = _num_resamplings(image_size)
        mult = 2 ** steps
        layers: list[nn.Module] = [nn.ConvTranspose2d(nz, ngf * mult, 4, 1, 0, bias=False),
                                   nn.BatchNorm2d(ngf * mult),
                                   nn.ReLU(True)]
        for _ in range(steps):
            layers += [nn.ConvTranspose2d(ngf * mult, ngf * mult // 2, 4, 2, 1, bias=False),
                       nn.BatchNorm2d(ngf * mult // 2),
                       nn.ReLU(True)]
            mult //= 2
        layers += [nn.ConvTranspose2d(ngf, nc, 4, 2, 1, bias=False),
                   nn.Tanh()]
        self.main = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x)


class DCGANDiscriminator(nn.Module):
    """Maps images ``(N, nc, S, S)`` to one real-vs-fake logit each, shape ``(N,)``."""

    def __init__(self, image_size: int = 64, ndf: int = 64, nc: int = 3) -> None:
        super().__init__()
        steps = _num_resamplings(image_size)
        layers: list[nn.Module] = [nn.Conv2d(nc, ndf, 4, 2, 1, bias=False),
                                   nn.LeakyReLU(0.2, inplace=True)]
        mult = 1
        for _ in range(steps):
            layers += [nn.Conv2d(ndf * mult, ndf * mult * 2, 4, 2, 1, bias=False),
                       nn.BatchNorm2d(ndf * mult * 2),
                       nn.LeakyReLU(0.2, inplace=True)]
            mult *= 2
        layers += [nn.Conv2d(ndf * mult, 1, 4, 1, 0, bias=False)]
        self.main = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x).flatten()


def _bce(logits: torch.Tensor, real: bool) -> torch.Tensor:
    """Mean BCE of logits against an all-real (1) or all-fake (0) target."""
    target = torch.ones_like(logits) if real else torch.zeros_like(logits)
    return F.binary_cross_entropy_with_logits(logits, target)


class DCGAN(Recipe):
    """DCGAN generator + discriminator trained with the non-saturating adversarial loss.

    ``--loss`` optionally adds a batch-statistics matching term to the generator's loss.
    """

    task = "generation"
    losses = ("perceptual", "mse", "l1")
    default_loss = None
    loss_role = ("--loss is the generator's extra term between generated and real batches on "
                 "top of the adversarial loss: it matches their statistics (VGG feature "
                 "statistics for perceptual, pixel statistics for mse/l1)")
    metric = None
    eval_metrics = ("discriminator", "generator")  # what evaluation_step reports (hooks check names against it)
    default_lr = 2e-4
    capturable = True  # the same device work every step: CUDA graphs may hold it

    def __init__(self, image_size: int = 64, nz: Annotated[int, Range(1)] = 100,
                 ngf: Annotated[int, Range(1)] = 64, ndf: Annotated[int, Range(1)] = 64,
                 nc: Annotated[int, Range(1)] = 3,
                 extra_weight: Annotated[float, Range(0)] = 1.0) -> None:
        super().__init__()
        _num_resamplings(image_size)  # validate before building anything
        self.image_size = image_size
        self.nz = nz
        self.extra_weight = extra_weight
        self.generator = DCGANGenerator(image_size, nz, ngf, nc)
        self.discriminator = DCGANDiscriminator(image_size, ndf, nc)
        self.generator.apply(dcgan_weights_init)
        self.discriminator.apply(dcgan_weights_init)

    @classmethod
    def adapt_to_data(cls, shape: tuple[int, int, int], num_classes: int | None,
                      options: dict[str, Any]) -> tuple[dict[str, Any], tuple[int, int]]:
        """Take ``nc`` from the data and pick 64 for images larger than 48 pixels, else 32."""
        filled = dict(options)
        filled.setdefault("nc", shape[0])
        filled.setdefault("image_size", 64 if shape[1] > 48 else 32)
        return filled, (filled["nc"], filled["image_size"])

    def configure_optimizers(self, lr: float | None) -> dict[str, torch.optim.Optimizer]:
        """Adam with beta1 0.5 for each network; the discriminator steps first."""
        lr = lr or self.default_lr
        return {
            "discriminator": torch.optim.Adam(self.discriminator.parameters(), lr=lr,
                                              betas=(0.5, 0.999)),
            "generator": torch.optim.Adam(self.generator.parameters(), lr=lr,
                                          betas=(0.5, 0.999)),
        }

    def _extra(self, loss_fn: nn.Module, fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        """The ``--loss`` term between the statistics of a fake and a real batch."""
        match = getattr(loss_fn, "match_statistics", None)
        if match is not None:
            return match(fake, real)
        return match_batch_statistics(loss_fn, fake, real)

    def training_step(self, batch: Any,
                      loss_fn: nn.Module | None) -> Iterator[tuple[str, torch.Tensor]]:
        """Yield the discriminator's loss, then the generator's against the updated one."""
        real = batch[0]
        noise = torch.randn(real.size(0), self.nz, 1, 1, device=real.device)
        fake = self.generator(noise)

        d_loss = _bce(self.discriminator(real), True) + _bce(self.discriminator(fake.detach()),
                                                             False)
        yield "discriminator", d_loss

        g_adv = _bce(self.discriminator(fake), True)
        self.log("g_adv", g_adv)
        g_loss = g_adv
        if loss_fn is not None:
            g_extra = self._extra(loss_fn, fake, real)
            self.log("g_extra", g_extra)
            g_loss = g_adv + self.extra_weight * g_extra
        yield "generator", g_loss

    def evaluation_step(self, batch: Any, loss_fn: nn.Module | None,
                        generator: torch.Generator) -> dict[str, Any]:
        """Return batch sums of both networks' losses on noise drawn from ``generator``."""
        real = batch[0]
        count = real.size(0)
        noise = torch.randn(count, self.nz, 1, 1, generator=generator, device=real.device)
        fake = self.generator(noise)
        fake_logits = self.discriminator(fake)
        d_loss = _bce(self.discriminator(real), True) + _bce(fake_logits, False)
        g_loss = _bce(fake_logits, True)
        if loss_fn is not None:
            g_loss = g_loss + self.extra_weight * self._extra(loss_fn, fake, real)
        # named like the training losses (by optimizer), so train and eval figures line up
        return {"discriminator": d_loss * count, "generator": g_loss * count, "count": count}

    def sample_inputs(self, count: int, generator: torch.Generator) -> torch.Tensor:
        """Fixed noise ``(count, nz, 1, 1)`` drawn from ``generator`` on the generator's device."""
        device = next(self.generator.parameters()).device
        return torch.randn(count, self.nz, 1, 1, generator=generator, device=device)

    def generate(self, inputs: torch.Tensor) -> torch.Tensor:
        """Images in ``[-1, 1]`` from noise ``(count, nz, 1, 1)``, e.g. points between two samples."""
        with torch.no_grad():
            return self.generator(inputs)

    def sample(self, count: int, generator: torch.Generator) -> torch.Tensor:
        """Generate ``count`` images in ``[-1, 1]`` from :meth:`sample_inputs` noise."""
        return self.generate(self.sample_inputs(count, generator))

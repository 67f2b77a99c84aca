"""Reusable network building blocks shared by the zoo's builtin models."""

from __future__ import annotations

import torch
from torch import nn

_NORMS = ("batch", "instance", None)
_ACTIVATIONS = ("relu", "leaky_relu", "tanh", None)
_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d,
          nn.ConvTranspose3d)
_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def _norm_layer(norm: str | None, channels: int) -> list[nn.Module]:
    """Return the normalisation layer named ``norm`` as a (possibly empty) list."""
    if norm == "batch":
        return [nn.BatchNorm2d(channels)]
    if norm == "instance":
        return [nn.InstanceNorm2d(channels, affine=True)]
    if norm is None:
        return []
    raise ValueError(f"norm must be one of {_NORMS}, not {norm!r}")


def _activation_layer(activation: str | None) -> list[nn.Module]:
    """Return the activation named ``activation`` as a (possibly empty) list."""
    if activation == "relu":
        return [nn.ReLU(inplace=True)]
    if activation == "leaky_relu":
        return [nn.LeakyReLU(0.2, inplace=True)]
    if activation == "tanh":
        return [nn.Tanh()]
    if activation is None:
        return []
    raise ValueError(f"activation must be one of {_ACTIVATIONS}, not {activation!r}")


class ConvBlock(nn.Module):
    """Convolution, optional normalisation, optional activation: the recurring unit of a network.

    The convolution has no bias when a normalisation follows it (the norm's shift replaces it).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3,
                 stride: int = 1, padding: int | None = None, norm: str | None = "batch",
                 activation: str | None = "relu", padding_mode: str = "zeros") -> None:
        super().__init__()
        if padding is None:
            padding = kernel_size // 2
        block: list[nn.Module] = [nn.Conv2d(in_channels, out_channels, kernel_size, stride,
                                            padding, bias=norm is None,
                                            padding_mode=padding_mode)]
        block += _norm_layer(norm, out_channels)
        block += _activation_layer(activation)
        self.block = nn.Sequential(*block)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class ResnetBlock(nn.Module):
    """Two 3x3 ConvBlocks with a skip connection: ``x + conv_block(x)``."""

    def __init__(self, dim: int, norm: str | None = "instance", use_dropout: bool = False,
                 padding_mode: str = "reflect") -> None:
        super().__init__()
        self.conv_block = self.build_conv_block(dim, norm, use_dropout, padding_mode)

    @staticmethod
    def build_conv_block(dim: int, norm: str | None, use_dropout: bool,
                         padding_mode: str) -> nn.Sequential:
        """Build conv-norm-relu, optional dropout, conv-norm as one sequential body."""
        conv_block: list[nn.Module] = [ConvBlock(dim, dim, 3, norm=norm, activation="relu",
                                                 padding_mode=padding_mode)]
        if use_dropout:
            conv_block += [nn.Dropout(0.5)]
        conv_block += [ConvBlock(dim, dim, 3, norm=norm, activation=None,
                                 padding_mode=padding_mode)]
        return nn.Sequential(*conv_block)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x + self.conv_block(x)
        return out


def dcgan_weights_init(module: nn.Module) -> None:
    """Initialise one module as the DCGAN paper does; use as ``network.apply(dcgan_weights_init)``.

    Convolutions get N(0, 0.02) weights; batch norms N(1, 0.02) scales and zero shifts.
    """
    if isinstance(module, _CONVS):
        nn.init.normal_(module.weight, 0.0, 0.02)
    elif isinstance(module, _BATCH_NORMS):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)

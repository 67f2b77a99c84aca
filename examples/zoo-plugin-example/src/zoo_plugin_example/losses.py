"""``ssim_lite``: a structural-similarity loss as an ``nn.Module``."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# SSIM's stabilising constants for images in [0, 1] (K1 = 0.01, K2 = 0.03, L = 1).
_C1 = 0.01 ** 2
_C2 = 0.03 ** 2


def ssim_map(x: torch.Tensor, y: torch.Tensor, window: int) -> torch.Tensor:
    """Per-pixel SSIM of images in ``[0, 1]`` shaped ``(N, C, H, W)``, with a uniform window."""
    window = max(1, min(window, x.shape[-2], x.shape[-1]))
    pool = lambda t: F.avg_pool2d(t, window, stride=1)  # noqa: E731
    mu_x, mu_y = pool(x), pool(y)
    var_x = pool(x * x) - mu_x * mu_x
    var_y = pool(y * y) - mu_y * mu_y
    cov = pool(x * y) - mu_x * mu_y
    return ((2 * mu_x * mu_y + _C1) * (2 * cov + _C2)) / ((mu_x ** 2 + mu_y ** 2 + _C1) * (var_x + var_y + _C2))


class SSIMLiteLoss(nn.Module):
    """``1 - mean SSIM`` between prediction and target (both in ``[-1, 1]``), plus ``l1_weight * L1``.

    A "lite" SSIM: a uniform ``window`` x ``window`` window instead of a Gaussian,
    computed per channel. 0 for identical images; at most 2.
    """

    def __init__(self, window: int = 7, l1_weight: float = 0.0) -> None:
        super().__init__()
        if window < 1:
            raise ValueError(f"window must be at least 1, not {window}")
        if l1_weight < 0:
            raise ValueError(f"l1_weight must be >= 0, not {l1_weight}")
        self.window = window
        self.l1_weight = l1_weight

    def forward(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        x = (prediction.float() + 1) / 2
        y = (target.float() + 1) / 2
        loss = 1 - ssim_map(x, y, self.window).mean()
        if self.l1_weight:
            loss = loss + self.l1_weight * F.l1_loss(x, y)
        return loss

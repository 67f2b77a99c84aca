"""Batch statistics for BatchNorm layers whose running statistics have not settled yet.

In eval mode a BatchNorm layer normalises with its running mean and variance. Early in a run
those still hold mostly their starting values (mean 0, variance 1), and a generator's grid
drawn with them is one flat grey: every tile the same. Until a layer has averaged
``SETTLED_BATCHES`` training batches (its start values then weigh 0.9^100 with the default
momentum), pictures are drawn with the statistics of the batch being drawn, as the official
DCGAN example draws its grids, and the running statistics are put back exactly afterwards,
so drawing never changes what training (or a resumed run) computes.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn

SETTLED_BATCHES = 100  # training batches after which a BatchNorm layer's running statistics are used


def unsettled_layers(module: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """The BatchNorm layers of ``module`` that track running statistics but have seen fewer than
    ``SETTLED_BATCHES`` batches (one host read per layer: pictures are rare)."""
    return [layer for layer in module.modules()
            if isinstance(layer, nn.modules.batchnorm._BatchNorm) and layer.track_running_stats
            and layer.num_batches_tracked is not None and int(layer.num_batches_tracked) < SETTLED_BATCHES]


@contextlib.contextmanager
def batch_statistics_until_settled(module: nn.Module) -> Iterator[int]:
    """Within the block, unsettled BatchNorm layers of ``module`` (in eval mode) normalise with the batch's
    statistics; their buffers and modes are restored after. Yields how many layers do."""
    layers = unsettled_layers(module)
    saved = [(layer, layer.training, [buffer.clone() for buffer in _buffers(layer)]) for layer in layers]
    for layer in layers:
        layer.train()
    try:
        yield len(layers)
    finally:
        with torch.no_grad():
            for layer, training, buffers in saved:
                for buffer, value in zip(_buffers(layer), buffers):
                    buffer.copy_(value)  # in place: a captured CUDA graph keeps reading the same memory
                layer.train(training)


def _buffers(layer: nn.modules.batchnorm._BatchNorm) -> list[torch.Tensor]:
    return [layer.running_mean, layer.running_var, layer.num_batches_tracked]

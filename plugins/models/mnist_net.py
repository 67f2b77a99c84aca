"""The digit classifier of PyTorch's mnist example, returning logits: today's network or the older small one.

``arch=official`` (the default) is the network of pytorch/examples ``mnist/main.py`` since 2019;
``arch=small`` is the example's network before 2019, the one the Grokking PyTorch guide walks through.
Both train with the example's recipe today: Adadelta (learning rate 1.0) and StepLR (gamma 0.7) per epoch.
"""

from __future__ import annotations

from typing import Annotated, Any, Iterator, Literal

import torch
import torch.nn.functional as F
from torch import nn

from zoo.errors import UsageError
from zoo.options import Range
from zoo.recipe import Recipe

INPUT_SHAPE = (1, 28)
# The example feeds its network MNIST normalised by the training set's mean and std; zoo's datasets give
# [-1, 1]. The official network maps its input back to the example's scale, so it sees what it saw there.
EXAMPLE_MEAN, EXAMPLE_STD = 0.1307, 0.3081
OFFICIAL_CONV_DROPOUT = 0.25  # the example's dropout after the convolutions (dropout1)


def to_example_scale(images: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] as the example normalises them: (pixel in [0, 1] - 0.1307) / 0.3081."""
    return ((images + 1.0) * 0.5 - EXAMPLE_MEAN) / EXAMPLE_STD


class OfficialMnistClassifier(nn.Module):
    """pytorch/examples mnist's Net since 2019: two 3x3 convolutions, a max-pool, two linear layers (1,199,882
    parameters at 10 classes); the same layer names, so its state dict is the example's under ``net.``."""

    def __init__(self, num_classes: int = 10, dropout: float = 0.5,
                 conv_dropout: float = OFFICIAL_CONV_DROPOUT) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, 1)
        self.conv2 = nn.Conv2d(32, 64, 3, 1)
        self.dropout1 = nn.Dropout(conv_dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.fc1 = nn.Linear(9216, 128)
        self.fc2 = nn.Linear(128, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv1(to_example_scale(x)))
        x = F.relu(self.conv2(x))
        x = self.dropout1(F.max_pool2d(x, 2))
        x = F.relu(self.fc1(x.flatten(1)))
        return self.fc2(self.dropout2(x))


class SmallMnistClassifier(nn.Module):
    """The example's Net before 2019, as in the Grokking PyTorch guide: two 5x5 convolutions and two linear
    layers (21,840 parameters at 10 classes), with the example's dropout after the first linear layer."""

    def __init__(self, num_classes: int = 10, dropout: float = 0.5, conv_dropout: float | None = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 10, kernel_size=5)
        self.conv2 = nn.Conv2d(10, 20, kernel_size=5)
        self.conv2_drop = nn.Dropout2d(dropout if conv_dropout is None else conv_dropout)
        self.fc1 = nn.Linear(320, 50)
        self.fc1_drop = nn.Dropout(dropout)
        self.fc2 = nn.Linear(50, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(F.max_pool2d(self.conv1(x), 2))
        x = F.relu(F.max_pool2d(self.conv2_drop(self.conv2(x)), 2))
        x = x.flatten(1)
        x = F.relu(self.fc1(x))
        x = self.fc1_drop(x)
        return self.fc2(x)


NETWORKS = {"official": OfficialMnistClassifier, "small": SmallMnistClassifier}


class MnistNet(Recipe):
    """Digit classifier trained with Adadelta and a per-epoch StepLR, as in PyTorch's mnist example.

    ``arch``: ``official`` is today's example network (the default); ``small`` the pre-2019 one of the
    Grokking PyTorch guide. ``dropout`` is the dropout before the last layer; ``conv_dropout`` the one after
    the convolutions, unset meaning the network's own (0.25 for official, as ``dropout`` for small).
    """

    task = "classification"
    losses = ("cross_entropy",)
    default_loss = "cross_entropy"
    loss_role = "--loss is the classification loss between the logits and the labels"
    metric = ("accuracy", "max")
    eval_metrics = ("loss", "accuracy")  # what evaluation_step reports (hooks check names against it)
    default_lr = 1.0
    capturable = True  # the same device work every step: CUDA graphs may hold it
    ddp_static_graph = True  # one network, every parameter used every step: DDP's static graph
    earlier_defaults = {"arch": "small"}  # runs saved before arch existed trained the small network

    def __init__(self, num_classes: Annotated[int, Range(1)] = 10,
                 dropout: Annotated[float, Range(0, 1)] = 0.5,
                 arch: Literal["official", "small"] = "official",
                 conv_dropout: Annotated[float, Range(0, 1)] | None = None) -> None:
        super().__init__()
        if arch not in NETWORKS:  # zoo's option checks catch it first; this is for Python callers
            raise UsageError(f"mnist_net has no arch {arch!r}: pass official or small.")
        if arch == "official" and conv_dropout is None:
            conv_dropout = OFFICIAL_CONV_DROPOUT
        self.net = NETWORKS[arch](num_classes, dropout, conv_dropout)

    @classmethod
    def adapt_to_data(cls, shape: tuple[int, int, int], num_classes: int | None,
                      options: dict[str, Any]) -> tuple[dict[str, Any], tuple[int, int]]:
        """Take ``num_classes`` from the data; always ask for 1x28x28 inputs."""
        filled = dict(options)
        if num_classes:
            filled.setdefault("num_classes", num_classes)
        return filled, INPUT_SHAPE

    def configure_optimizers(self, lr: float | None) -> dict[str, torch.optim.Optimizer]:
        """Adadelta, the example's optimizer (learning rate 1.0 unless ``--lr``)."""
        return {"model": torch.optim.Adadelta(self.parameters(), lr=lr or self.default_lr)}

    def configure_schedulers(self, optimizers: dict[str, torch.optim.Optimizer]) -> dict[str, Any]:
        """Decay the learning rate by 0.7 every epoch, as the example does."""
        return {"model": torch.optim.lr_scheduler.StepLR(optimizers["model"], step_size=1,
                                                         gamma=0.7)}

    def _loss(self, loss_fn: nn.Module | None, logits: torch.Tensor,
              labels: torch.Tensor) -> torch.Tensor:
        """The mean loss of a batch (cross-entropy when no ``--loss`` module is given)."""
        if loss_fn is None:
            return F.cross_entropy(logits, labels)
        return loss_fn(logits, labels)

    def training_step(self, batch: Any,
                      loss_fn: nn.Module | None) -> Iterator[tuple[str, torch.Tensor]]:
        """Yield the classification loss of one batch for the ``model`` optimizer."""
        x, labels = batch
        logits = self.net(x)
        yield "model", self._loss(loss_fn, logits, labels)

    def evaluation_step(self, batch: Any, loss_fn: nn.Module | None,
                        generator: torch.Generator) -> dict[str, Any]:
        """Return the summed loss and the number of correct predictions of one batch."""
        x, labels = batch
        count = labels.size(0)
        logits = self.net(x)
        correct = (logits.argmax(dim=1) == labels).sum()
        return {"loss": self._loss(loss_fn, logits, labels) * count, "accuracy": correct,
                "count": count}

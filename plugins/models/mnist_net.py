"""The MNIST classifier of PyTorch's mnist example (and Grokking PyTorch), returning logits."""

from __future__ import annotations

from typing import Annotated, Any, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from zoo.options import Range
from zoo.recipe import Recipe

INPUT_SHAPE = (1, 28)


class MnistClassifier(nn.Module):
    """Two 5x5 convolutions and two linear layers for 1x28x28 digits; returns class logits."""

    def __init__(self, num_classes: int = 10, dropout: float = 0.5) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 10, kernel_size=5)
        self.conv2 = nn.Conv2d(10, 20, kernel_size=5)
        self.conv2_drop = nn.Dropout2d(dropout)
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


class MnistNet(Recipe):
    """Digit classifier trained with Adadelta and a per-epoch StepLR, as in the example."""

    task = "classification"
    losses = ("cross_entropy",)
    default_loss = "cross_entropy"
    loss_role = "--loss is the classification loss between the logits and the labels"
    metric = ("accuracy", "max")
    eval_metrics = ("loss", "accuracy")  # what evaluation_step reports (hooks check names against it)
    default_lr = 1.0
    capturable = True  # the same device work every step: CUDA graphs may hold it

    def __init__(self, num_classes: Annotated[int, Range(1)] = 10,
                 dropout: Annotated[float, Range(0, 1)] = 0.5) -> None:
        super().__init__()
        self.net = MnistClassifier(num_classes, dropout)

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

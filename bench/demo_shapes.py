"""Does `make demo`'s generator draw shapes? A small classifier trained on the embedded shapes judges its samples.

    python bench/demo_shapes.py runs/demo [more runs] [--steps 1000,3000,5000] [--weights ema]

Trains small CNNs (plain PyTorch) to tell the embedded dataset's circles, squares, triangles and crosses apart,
and from a fifth class, "none" (flat colours and blurred colour noise), then classifies images from three
sources: the real test shapes (the reference), the run's generator (its last checkpoint, or ``--steps``, in eval
mode, as `zoo sample` draws), and the same DCGAN untrained (the floor: what the judges say of blobs). A source's
figures are the shares of its images the judges name a shape with at least 90% and at least 50% confidence, and
what they name each image (a generator that draws only one kind of shape is not a good one).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF
from torch import nn

from zoo.api import create_dataset, create_model, load_run


def judge_network(channels: int) -> nn.Module:
    """A small CNN for 32x32 (or larger) shapes: three conv blocks, global average pooling, five logits."""
    def block(inputs: int, outputs: int) -> list[nn.Module]:
        return [nn.Conv2d(inputs, outputs, 3, padding=1), nn.BatchNorm2d(outputs), nn.ReLU(), nn.MaxPool2d(2)]
    return nn.Sequential(*block(channels, 32), *block(32, 64), *block(64, 64),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 5))


def stacked(dataset, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``count`` items of a classification split as one image batch and one label vector."""
    items = [dataset[index] for index in range(min(count, len(dataset)))]
    return torch.stack([image for image, _ in items]), torch.tensor([int(label) for _, label in items])


def not_shapes(channels: int, size: int, count: int) -> torch.Tensor:
    """Images that hold no shape: flat colours, and colour noise blurred at several scales."""
    half = count // 2
    flat = (torch.rand(half, channels, 1, 1) * 2 - 1).expand(-1, -1, size, size)
    scales = torch.randint(1, 4, (count - half,)).tolist()
    noise = torch.cat([F.interpolate(torch.randn(1, channels, size >> s, size >> s), size=size, mode="bilinear")
                       for s in scales]).clamp(-1, 1)
    return torch.cat([flat, noise])


class Ensemble(nn.Module):
    """Judges trained from different seeds, their probabilities averaged: one judge alone is sure of things it never
    saw (a generator's blurry shapes) in ways that change with its seed; the average is steadier."""

    def __init__(self, judges: list[nn.Module]) -> None:
        super().__init__()
        self.judges = nn.ModuleList(judges)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.stack([F.softmax(judge(images), dim=1) for judge in self.judges]).mean(0)


def roughened(images: torch.Tensor) -> torch.Tensor:
    """A training batch blurred and noised by a random amount, as a generator's shapes are, so the judge reads a
    shape by its outline rather than by crisp edges."""
    sigma = float(torch.empty(()).uniform_(0.1, 1.2))
    blurred = TF.gaussian_blur(images, kernel_size=[5, 5], sigma=[sigma, sigma])
    return blurred + torch.randn_like(images) * float(torch.empty(()).uniform_(0.0, 0.1))


def train_judge(images: torch.Tensor, labels: torch.Tensor, channels: int, steps: int, seed: int) -> nn.Module:
    """One judge, trained on shapes and non-shapes for ``steps`` batches of 64 from ``seed``."""
    torch.manual_seed(seed)
    judge = judge_network(channels)
    optimizer = torch.optim.Adam(judge.parameters(), lr=2e-3)
    judge.train()
    for _ in range(steps):
        picked = torch.randint(len(images), (64,))
        loss = F.cross_entropy(judge(roughened(images[picked])), labels[picked])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return judge.eval()


def train_judges(image_size: int, channels: int, steps: int, seeds: range) -> tuple[nn.Module, float, list[str]]:
    """The judges on the shapes' train split plus non-shapes; their accuracy on the test split, the class names."""
    train = create_dataset("shapes", "train", task="classification", image_size=image_size, channels=channels)
    test = create_dataset("shapes", "test", task="classification", image_size=image_size, channels=channels)
    images, labels = stacked(train, len(train))
    torch.manual_seed(0)
    negatives = not_shapes(channels, image_size, len(images) // 4)
    images = torch.cat([images, negatives])
    labels = torch.cat([labels, torch.full((len(negatives),), len(train.classes))])
    ensemble = Ensemble([train_judge(images, labels, channels, steps, seed) for seed in seeds]).eval()
    test_images, test_labels = stacked(test, len(test))
    with torch.no_grad():
        accuracy = (ensemble(test_images).argmax(1) == test_labels).float().mean().item()
    return ensemble, accuracy, [*train.classes, "none"]


def verdict(judge: nn.Module, images: torch.Tensor, classes: list[str]) -> str:
    """The share of ``images`` the judge names a shape with at least 90% and at least 50% confidence, and what
    it names each image (its most likely class)."""
    with torch.no_grad():
        probabilities = judge(images.float().cpu())
    best, named = probabilities.max(1)
    shapes = named < len(classes) - 1
    counts = " ".join(f"{int((named == index).sum()):4d}" for index in range(len(classes)))
    return (f"{(shapes & (best >= 0.9)).float().mean().item():7.1%} {(shapes & (best >= 0.5)).float().mean().item():7.1%}"
            f"   {counts}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="*", default=["runs/demo"], help="run folders (default: make demo's runs/demo)")
    parser.add_argument("--steps", default="", help="comma-separated checkpoint steps to judge (default: the last)")
    parser.add_argument("--weights", default=None, help="a weight set the checkpoints hold (e.g. ema)")
    parser.add_argument("--samples", type=int, default=512)
    parser.add_argument("--judge-steps", type=int, default=600)
    parser.add_argument("--judges", type=int, default=3, help="CNNs whose probabilities are averaged (default 3)")
    parser.add_argument("--judge-seed", type=int, default=0, help="the first judge's seed (default 0)")
    parser.add_argument("--seed", type=int, default=0, help="the generators' noise")
    args = parser.parse_args()

    first = load_run(Path(args.runs[0]), device="cpu")
    channels, image_size = first.input_shape[0], first.input_shape[1]
    judge, accuracy, classes = train_judges(image_size, channels, args.judge_steps,
                                               range(args.judge_seed, args.judge_seed + args.judges))
    print(f"judge: {args.judges} CNNs of {args.judge_steps} steps each, {accuracy:.1%} accuracy on the shapes' "
          f"test split; "
          f"{args.samples} images a source")
    print(f"{'source':<34} {'>=90%':>7} {'>=50%':>7}   " + " ".join(f"{name[:4]:>4}" for name in classes))
    real, _ = stacked(create_dataset("shapes", "test", task="classification", image_size=image_size,
                                     channels=channels), args.samples)
    print(f"{'real test shapes':<34} {verdict(judge, real, classes)}")
    untrained = create_model("dcgan", **first.resolved["model_options"]).eval()
    with torch.no_grad():
        blobs = untrained.sample(args.samples, torch.Generator().manual_seed(args.seed))
    print(f"{'untrained DCGAN':<34} {verdict(judge, blobs, classes)}")
    steps = [int(step) for step in args.steps.split(",") if step] or [None]
    for run_dir in args.runs:
        for step in steps:
            run = load_run(Path(run_dir), step=step, device="cpu", weights=args.weights)
            run.recipe.eval()
            with torch.no_grad():
                drawn = run.recipe.sample(args.samples, torch.Generator().manual_seed(args.seed))
            name = f"{run_dir} step {run.step}" + (f" ({args.weights})" if args.weights else "")
            print(f"{name:<34} {verdict(judge, drawn, classes)}")


if __name__ == "__main__":
    main()

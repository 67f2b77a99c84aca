"""How well mnist_net learns real handwritten digits against PyTorch's mnist example: test accuracy, three seeds.

scikit-learn's digits (``load_digits``: 1,797 8x8 images, upscaled to 28x28) are written as
MNIST IDX files into a temporary folder by ``bench/step_overhead.py``'s ``write_digits``:
1,500 training and 297 test images. ``--split`` says which:

* ``shuffled`` (default): the digits in a fixed random order (numpy seed 0) before the cut, the
  usual train/test split; the reference figures of issue 19 match it;
* ``writers``: ``write_digits``' own order, the last 297 digits as the test split: a much harder
  test (load_digits keeps its file's order; those digits are written unlike the first 1,500).

Each seed of each ``--runs`` entry trains for ``--epochs`` epochs and is scored on the test split:

* ``official``: ``zoo train --model mnist_net --dataset mnist --data DIGITS --epochs 10 --seed S``,
  then ``zoo test --run RUN`` (the last checkpoint, not the best: the test split picks nothing);
* ``small``: the same with ``--model-opt arch=small`` (the Grokking PyTorch guide's network);
* ``example``: pytorch/examples ``mnist/main.py``'s own loop, written out here (its network, log_softmax
  and nll_loss, Adadelta 1.0, StepLR gamma 0.7 per epoch, batch 64, its Normalize((0.1307,), (0.3081,))),
  reading the same IDX files through torchvision; seeded with ``torch.manual_seed(S)`` as it is.

Each line gives the accuracy and the number wrong; the last of each entry the median of the seeds.
The goal for ``official``: a median of at least 98%, at most 5 of 297 wrong.

    python bench/mnist_accuracy.py                                   # official and example, seeds 1 2 3
    python bench/mnist_accuracy.py --runs official small --split writers
    python bench/mnist_accuracy.py --runs official --seeds 1 2 3 4 5 --epochs 14 --device cuda

Needs scikit-learn (``pip install scikit-learn``). Runs on the CPU unless ``--device``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's zoo, and the tests' IDX writers

from step_overhead import write_digits  # noqa: E402
from tests.test_datasets import write_idx_images, write_idx_labels  # noqa: E402

IDX_HEADERS = {"images": 16, "labels": 8}  # bytes before the data: magic number and dimensions
SHUFFLE_SEED = 0


def write_split(root: Path, split: str) -> None:
    """The digits as MNIST IDX files under ``root/MNIST/raw``, in ``write_digits``' order or shuffled before the cut."""
    write_digits(root)
    if split == "writers":
        return
    raw = root / "MNIST" / "raw"
    read = {kind: [np.fromfile(raw / f"{prefix}-{kind}-idx{3 if kind == 'images' else 1}-ubyte", dtype=np.uint8,
                               offset=IDX_HEADERS[kind]) for prefix in ("train", "t10k")] for kind in IDX_HEADERS}
    images = np.concatenate(read["images"]).reshape(-1, 28, 28)
    labels = np.concatenate(read["labels"])
    order = np.random.RandomState(SHUFFLE_SEED).permutation(len(labels))
    train_count = len(read["labels"][0])
    for prefix, part in (("train", order[:train_count]), ("t10k", order[train_count:])):
        write_idx_images(raw / f"{prefix}-images-idx3-ubyte", images[part])
        write_idx_labels(raw / f"{prefix}-labels-idx1-ubyte", labels[part])


def zoo(*args: str) -> str:
    """Run this checkout's ``zoo`` CLI; return its standard output, or stop with its error."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, "-m", "train_cli", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True)
    if done.returncode != 0:
        sys.exit(f"zoo {' '.join(args)} failed (exit {done.returncode}):\n{done.stderr.strip()}")
    return done.stdout


def zoo_accuracy(args: argparse.Namespace, data: Path, arch: str, seed: int, run_dir: Path) -> tuple[float, int]:
    """Train mnist_net for one seed with ``zoo train``, then ``zoo test`` its last checkpoint: (accuracy, images)."""
    options = [] if arch == "official" else ["--model-opt", f"arch={arch}"]
    zoo("train", "--model", "mnist_net", "--dataset", "mnist", "--data", str(data), "--epochs", str(args.epochs),
        "--seed", str(seed), "--device", args.device, "--run-dir", str(run_dir), *options)
    result = json.loads(zoo("test", "--run", str(run_dir), "--device", args.device, "--json"))
    return float(result["metrics"]["accuracy"]), int(result["samples"])


def example_accuracy(args: argparse.Namespace, data: Path, seed: int) -> tuple[float, int]:
    """pytorch/examples mnist/main.py's network, training and test loops on the same files: (accuracy, images)."""
    import torch
    import torch.nn.functional as F
    from torch import nn
    from torchvision import datasets, transforms

    class Net(nn.Module):  # the example's, line for line
        def __init__(self) -> None:
            super().__init__()
            self.conv1, self.conv2 = nn.Conv2d(1, 32, 3, 1), nn.Conv2d(32, 64, 3, 1)
            self.dropout1, self.dropout2 = nn.Dropout(0.25), nn.Dropout(0.5)
            self.fc1, self.fc2 = nn.Linear(9216, 128), nn.Linear(128, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = F.max_pool2d(F.relu(self.conv2(F.relu(self.conv1(x)))), 2)
            x = self.dropout2(F.relu(self.fc1(torch.flatten(self.dropout1(x), 1))))
            return F.log_softmax(self.fc2(x), dim=1)

    torch.manual_seed(seed)
    device = torch.device(args.device)
    transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.1307,), (0.3081,))])
    train = torch.utils.data.DataLoader(datasets.MNIST(data, train=True, transform=transform), batch_size=64,
                                        shuffle=True)
    test = torch.utils.data.DataLoader(datasets.MNIST(data, train=False, transform=transform), batch_size=1000)
    model = Net().to(device)
    optimizer = torch.optim.Adadelta(model.parameters(), lr=1.0)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.7)
    for _ in range(args.epochs):
        model.train()
        for images, labels in train:
            optimizer.zero_grad()
            F.nll_loss(model(images.to(device)), labels.to(device)).backward()
            optimizer.step()
        scheduler.step()
    model.eval()
    with torch.no_grad():
        correct = sum(int((model(images.to(device)).argmax(1) == labels.to(device)).sum()) for images, labels in test)
    return correct / len(test.dataset), len(test.dataset)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", nargs="+", default=["official", "example"], choices=("official", "small", "example"),
                        help="what to train: zoo's mnist_net (official, small) or the example's loop (example); "
                             "default: official example")
    parser.add_argument("--split", choices=("shuffled", "writers"), default="shuffled")
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3], help="default 1 2 3")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "digits"
        write_split(data, args.split)
        for name in args.runs:
            label = "the example's loop" if name == "example" else f"zoo mnist_net arch={name}"
            started, accuracies = time.perf_counter(), []
            for seed in args.seeds:
                accuracy, count = example_accuracy(args, data, seed) if name == "example" else \
                    zoo_accuracy(args, data, name, seed, Path(tmp) / f"{name}-{seed}")
                accuracies.append(accuracy)
                print(f"{label}, seed {seed}: accuracy {100 * accuracy:.2f}%, {round((1 - accuracy) * count)} of "
                      f"{count} wrong", flush=True)
            print(f"{label}: median {100 * statistics.median(accuracies):.2f}% (range {100 * min(accuracies):.2f}-"
                  f"{100 * max(accuracies):.2f}%), seeds {' '.join(map(str, args.seeds))}, {args.epochs} epochs, "
                  f"{args.split} split; {time.perf_counter() - started:.0f} s", flush=True)


if __name__ == "__main__":
    main()

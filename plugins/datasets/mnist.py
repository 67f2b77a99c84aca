"""MNIST digits read by torchvision.datasets.MNIST from IDX files under a local root."""

from __future__ import annotations

import gzip
import os
import shutil
import struct
from typing import Any

import torch
import torchvision.transforms.v2.functional as TF
from torchvision.datasets import MNIST

from plugins import ops
from zoo.augment import AUGMENT_PRESETS, augment_image, train_preset
from zoo.data import ZooDataset, item_rng
from zoo.errors import RunError, UsageError

FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
         "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
IMAGES_MAGIC = 2051
LABELS_MAGIC = 2049
LABELS_HEADER = 8  # magic number and count, 4 bytes each
CLASSES = 10
FIX = "delete it and use --dataset-opt download=true, or copy an intact file there"


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _gunzip_missing(raw_dir: str, names: tuple[str, ...]) -> None:
    """Decompress NAME.gz to NAME for each name present only compressed (as torchvision does)."""
    for name in names:
        path = os.path.join(raw_dir, name)
        if os.path.isfile(path) or not os.path.isfile(path + ".gz"):
            continue
        partial = f"{path}.partial-{os.getpid()}"
        try:
            with gzip.open(path + ".gz", "rb") as source, open(partial, "wb") as target:
                shutil.copyfileobj(source, target)
            os.replace(partial, path)
        except (OSError, EOFError, gzip.BadGzipFile) as exc:
            if os.path.exists(partial):
                os.remove(partial)
            raise RunError(f"cannot decompress {path}.gz: {_one_line(exc)}; replace the file "
                           f"or delete it and use --dataset-opt download=true") from exc


def _read_idx_header(path: str, magic: int, ndims: int) -> tuple[int, ...]:
    """Check an IDX file's magic number and size; return its dimensions."""
    try:
        with open(path, "rb") as handle:
            header = handle.read(4 + 4 * ndims)
        actual_size = os.path.getsize(path)
    except OSError as exc:
        raise RunError(f"cannot read {path}: {exc.strerror}; check the file's permissions") from exc
    if len(header) < 4 + 4 * ndims:
        raise RunError(f"{path} is truncated ({actual_size} bytes, shorter than its header): {FIX}")
    found_magic, *dims = struct.unpack(f">{1 + ndims}I", header)
    if found_magic != magic:
        raise RunError(f"{path} is not an MNIST IDX file (magic number {found_magic}, expected {magic}): "
                       f"{FIX}")
    count = 1
    for dim in dims:
        count *= dim
    expected_size = 4 + 4 * ndims + count
    if actual_size != expected_size:
        state = "truncated" if actual_size < expected_size else "corrupt"
        raise RunError(f"{path} is {state} ({actual_size} bytes, its header says {expected_size}): {FIX}")
    return tuple(dims)


def _check_labels(path: str) -> None:
    """Refuse a label file holding a label outside 0-9: training would index past the 10 logits."""
    try:
        with open(path, "rb") as handle:
            labels = handle.read()[LABELS_HEADER:]
    except OSError as exc:
        raise RunError(f"cannot read {path}: {exc.strerror}; check the file's permissions") from exc
    highest = max(labels, default=0)
    if highest >= CLASSES:
        raise RunError(f"{path} is corrupt (label {highest} at index {labels.index(highest)}; MNIST labels "
                       f"are 0-{CLASSES - 1}): {FIX}")


class MnistDataset(ZooDataset):
    """MNIST handwritten digits (1x28x28, classes "0".."9") from ROOT/MNIST/raw/."""

    tasks = ("generation", "classification")
    needs_data = True
    augments = AUGMENT_PRESETS  # --augment; none when not given (a flipped digit is another shape)
    data_help = "a folder ROOT holding the MNIST IDX files in ROOT/MNIST/raw/"

    def __init__(self, split: str, *, task: str, data: str | None = None,
                 image_size: int | None = None, channels: int | None = None,
                 download: bool = False, augment: str | None = None) -> None:
        """Check the split's IDX files (headers only); ``download=True`` fetches missing files; ``augment`` is a
        ``zoo.augment`` preset for the train split (none by default)."""
        super().__init__(split, task=task, data=data, image_size=image_size, channels=channels)
        self.augment = train_preset(split, augment, "none")
        ops.check_image_options("mnist", task, self.tasks, image_size, channels)
        if data is None:
            raise UsageError("mnist needs --data ROOT: a folder whose MNIST/raw/ holds the IDX files "
                             "(add --dataset-opt download=true to fetch them there)")
        self.root = os.path.expanduser(data)
        raw_dir = os.path.join(self.root, "MNIST", "raw")
        self._mnist: MNIST | None = None
        if download:
            try:
                self._mnist = MNIST(self.root, train=split == "train", download=True)
            except Exception as exc:  # torchvision raises RuntimeError, URLError, OSError...
                raise RunError(f"downloading MNIST into {raw_dir} failed ({_one_line(exc)}): check the "
                               f"network, or copy the four IDX files there and drop download=true") from exc
        _gunzip_missing(raw_dir, FILES)
        missing = [name for name in FILES if not os.path.isfile(os.path.join(raw_dir, name))]
        if missing:
            hint = ""
            if all(os.path.isfile(os.path.join(self.root, n)) or os.path.isfile(os.path.join(self.root, n + ".gz"))
                   for n in FILES):
                hint = f" (they are in {self.root} itself: move them into MNIST/raw/ below it)"
            raise UsageError(f"MNIST files missing in {raw_dir}: {', '.join(missing)} (.gz allowed){hint}; "
                             f"place them there, or add --dataset-opt download=true when online")
        prefix = "train" if split == "train" else "t10k"
        images = os.path.join(raw_dir, f"{prefix}-images-idx3-ubyte")
        labels = os.path.join(raw_dir, f"{prefix}-labels-idx1-ubyte")
        count, height, width = _read_idx_header(images, IMAGES_MAGIC, 3)
        (label_count,) = _read_idx_header(labels, LABELS_MAGIC, 1)
        if label_count != count:
            raise RunError(f"{images} holds {count} images but {labels} holds {label_count} labels: "
                           f"replace the mismatched file")
        _check_labels(labels)
        self.count = count
        self.classes = [str(digit) for digit in range(CLASSES)]
        self.image_shape = (channels or 1, image_size or height, image_size or width)

    def _load(self) -> MNIST:
        if self._mnist is None:
            try:
                self._mnist = MNIST(self.root, train=self.split == "train", download=False)
            except Exception as exc:  # a file changed since construction
                raise RunError(f"cannot read MNIST from {os.path.join(self.root, 'MNIST', 'raw')}: "
                               f"{_one_line(exc)}; replace the IDX files") from exc
        return self._mnist

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_mnist"] = None  # each process reads the files itself, lazily
        return state

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        mnist = self._load()
        image = ops.from_unit_range(mnist.data[index].to(torch.float32).unsqueeze(0) / 255.0)
        if tuple(image.shape[-2:]) != self.image_shape[1:]:
            image = TF.resize(image, list(self.image_shape[1:]), antialias=True).clamp(-1.0, 1.0)
        image = ops.convert_channels(image, self.image_shape[0])
        if self.augment != "none":
            image = augment_image(image, self.augment, item_rng(), task=self.task)
        return image, int(mnist.targets[index])

"""Tests of the builtin datasets and the image ops they share (CPU, all data in tmp_path)."""

from __future__ import annotations

import gzip
import json
import pickle
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image, ImageDraw, JpegImagePlugin

from plugins import ops
from plugins.datasets.glob_patches import GlobPatchesDataset
from plugins.datasets.imagefolder import ImageFolderDataset
from plugins.datasets.mnist import FILES as MNIST_FILES
from plugins.datasets.mnist import MnistDataset
from plugins.datasets.shapes import ShapesDataset
from zoo.data import seeded_item
from zoo.errors import RunError, UsageError

# ----------------------------------------------------------------------------- helpers


def write_image(path: Path, width: int, height: int, mode: str = "RGB", seed: int = 0) -> np.ndarray:
    """Write a random image (PNG or JPEG by suffix) and return its pixels."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    bands = {"L": 1, "RGB": 3, "RGBA": 4}[mode]
    pixels = rng.integers(0, 256, size=(height, width, bands), dtype=np.uint8)
    if mode == "L":
        pixels = pixels[..., 0]
    Image.fromarray(pixels, mode).save(path)
    return pixels


def write_gradient(path: Path, width: int, height: int) -> None:
    """Write an RGB image brighter to the right, so a horizontal flip is visible."""
    path.parent.mkdir(parents=True, exist_ok=True)
    row = np.linspace(0, 255, width).astype(np.uint8)
    pixels = np.repeat(np.repeat(row[None, :, None], height, axis=0), 3, axis=2)
    Image.fromarray(pixels, "RGB").save(path)


def check_image(tensor: torch.Tensor, shape: tuple[int, int, int]) -> None:
    """Assert a dataset image has the documented shape, dtype and range."""
    assert isinstance(tensor, torch.Tensor)
    assert tensor.dtype == torch.float32
    assert tuple(tensor.shape) == shape
    assert tensor.min() >= -1.0 and tensor.max() <= 1.0


def is_crop_of(patch: torch.Tensor, image: torch.Tensor) -> bool:
    """True when ``patch`` equals some crop of ``image`` or of its mirror image."""
    size = patch.shape[-1]
    for candidate in (image, image.flip(-1)):
        windows = candidate.unfold(-2, size, 1).unfold(-2, size, 1)  # C, y, x, size, size
        diff = (windows - patch[:, None, None]).abs().amax(dim=(0, 3, 4))
        if bool((diff < 1e-6).any()):
            return True
    return False


def to_signed_tensor(pixels: np.ndarray) -> torch.Tensor:
    """(H, W, C) or (H, W) uint8 pixels as a (C, H, W) tensor in [-1, 1]."""
    array = torch.from_numpy(pixels.copy()).float() / 255.0 * 2.0 - 1.0
    return array.unsqueeze(0) if array.ndim == 2 else array.permute(2, 0, 1)


# ----------------------------------------------------------------------------- ops


def test_unit_range_round_trip():
    image = torch.linspace(-1, 1, 11)
    assert torch.allclose(ops.to_unit_range(image), torch.linspace(0, 1, 11))
    assert torch.allclose(ops.from_unit_range(ops.to_unit_range(image)), image, atol=1e-6)


@pytest.mark.parametrize("kind", ops.DEGRADE_KINDS)
def test_degrade_changes_image_keeps_shape_and_range(kind):
    clean, _ = ShapesDataset("test", task="generation")[0]
    out = ops.degrade(clean, kind, generator=torch.Generator().manual_seed(0))
    check_image(out, tuple(clean.shape))
    assert (out - clean).abs().mean() > 0.005
    assert torch.equal(ops.degrade(clean, kind, strength=0.0), clean)
    batch = ops.degrade(torch.stack([clean, clean]), kind, generator=torch.Generator().manual_seed(0))
    assert batch.shape == (2, *clean.shape)


def test_degrade_noise_follows_generator_and_global_rng():
    clean = torch.zeros(3, 16, 16)
    first = ops.degrade(clean, "noise", generator=torch.Generator().manual_seed(3))
    again = ops.degrade(clean, "noise", generator=torch.Generator().manual_seed(3))
    other = ops.degrade(clean, "noise", generator=torch.Generator().manual_seed(4))
    assert torch.equal(first, again) and not torch.equal(first, other)
    torch.manual_seed(7)
    global_a = ops.degrade(clean, "noise")
    torch.manual_seed(7)
    assert torch.equal(global_a, ops.degrade(clean, "noise"))


def test_degrade_blur_smooths_and_downscale_loses_detail():
    checker = (torch.arange(16)[:, None] + torch.arange(16)[None, :]) % 2 * 2.0 - 1.0
    image = checker.expand(3, 16, 16).clone()
    for kind in ("blur", "downscale"):
        out = ops.degrade(image, kind)
        assert out.abs().max() < 0.5, kind  # a one-pixel checkerboard averages out towards 0


def test_degrade_unknown_kind_lists_valid_ones():
    with pytest.raises(ValueError) as info:
        ops.degrade(torch.zeros(3, 8, 8), "sharpen")
    message = str(info.value)
    assert "sharpen" in message and all(kind in message for kind in ops.DEGRADE_KINDS)


def test_paired_random_crop_flip_applies_one_crop_and_flip_to_both():
    a = torch.arange(3 * 10 * 12, dtype=torch.float32).reshape(3, 10, 12)
    b = -a
    seen = set()
    flips = set()
    for seed in range(16):
        torch.manual_seed(seed)
        pa, pb = ops.paired_random_crop_flip(a, b, 5)
        assert pa.shape == (3, 5, 5) and torch.equal(pb, -pa)
        assert is_crop_of(pa, a)
        torch.manual_seed(seed)
        pa_again, _ = ops.paired_random_crop_flip(a, b, 5)
        assert torch.equal(pa, pa_again)
        seen.add(tuple(pa.flatten().tolist()))
        flips.add(bool(pa[0, 0, 0] > pa[0, 0, 1]))
    assert len(seen) > 8
    assert flips == {True, False}


def test_paired_random_crop_flip_on_pil_images_and_bad_sizes():
    pixels = np.random.default_rng(0).integers(0, 256, size=(20, 24, 3), dtype=np.uint8)
    image = Image.fromarray(pixels)
    torch.manual_seed(1)
    pa, pb = ops.paired_random_crop_flip(image, image.copy(), 8)
    assert pa.size == (8, 8) and np.array_equal(np.asarray(pa), np.asarray(pb))
    with pytest.raises(ValueError):
        ops.paired_random_crop_flip(image, image.resize((12, 10)), 8)
    with pytest.raises(ValueError):
        ops.paired_random_crop_flip(image, image, 21)


def test_center_crop_pair_takes_the_centre():
    a = torch.arange(36, dtype=torch.float32).reshape(1, 6, 6)
    ca, cb = ops.center_crop_pair(a, a + 100, 2)
    assert torch.equal(ca, a[:, 2:4, 2:4]) and torch.equal(cb, a[:, 2:4, 2:4] + 100)


# ----------------------------------------------------------------------------- shapes


@pytest.mark.parametrize("task", ["generation", "classification"])
def test_shapes_items_are_labelled_images(task):
    data = ShapesDataset("train", task=task, train_count=40)
    assert len(data) == 40 and data.image_shape == (3, 32, 32)
    assert data.classes == ["circle", "square", "triangle", "cross"]
    assert ShapesDataset.needs_data is False
    labels = set()
    for index in range(8):
        image, label = data[index]
        check_image(image, data.image_shape)
        assert isinstance(label, int) and 0 <= label < 4
        labels.add(label)
    assert labels == {0, 1, 2, 3}


def test_shapes_draw_one_large_shape_on_a_plain_background():
    data = ShapesDataset("train", task="generation")
    for index in range(20):
        image, _ = data[index]
        colours, counts = image.reshape(3, -1).T.unique(dim=0, return_counts=True)
        assert len(colours) == 2  # shape and background, both plain
        shape_fraction = counts.min().item() / counts.sum().item()
        assert 0.04 < shape_fraction < 0.6
        assert (colours[0] - colours[1]).abs().max() > 0.5  # clearly visible


def test_shapes_are_deterministic_and_splits_differ():
    first = ShapesDataset("train", task="generation")
    second = ShapesDataset("train", task="generation")
    test = ShapesDataset("test", task="generation")
    for index in range(10):
        assert torch.equal(first[index][0], second[index][0])
        assert not torch.equal(first[index][0], test[index][0])
    assert len(test) == 512
    assert len({tuple(first[i][0].flatten().tolist()) for i in range(50)}) == 50


def test_shapes_size_and_channels():
    grey = ShapesDataset("train", task="classification", image_size=64, channels=1)
    assert grey.image_shape == (1, 64, 64)
    check_image(grey[3][0], (1, 64, 64))
    small = ShapesDataset("test", task="generation", size=16)
    check_image(small[0][0], (3, 16, 16))


@pytest.mark.parametrize("kind", ops.DEGRADE_KINDS)
def test_shapes_image_to_image_pairs(kind):
    test = ShapesDataset("test", task="image_to_image", degrade=kind)
    degraded, clean = test[2]
    check_image(degraded, (3, 32, 32))
    check_image(clean, (3, 32, 32))
    assert not torch.equal(degraded, clean)
    assert torch.equal(clean, ShapesDataset("test", task="generation")[2][0])
    assert torch.equal(ShapesDataset("test", task="image_to_image", degrade=kind)[2][0], degraded)


def test_shapes_train_noise_uses_the_global_rng():
    train = ShapesDataset("train", task="image_to_image")
    torch.manual_seed(1)
    first = train[0][0]
    torch.manual_seed(1)
    assert torch.equal(train[0][0], first)
    torch.manual_seed(2)
    assert not torch.equal(train[0][0], first)


@pytest.mark.parametrize("options, word", [({"degrade": "sharpen"}, "sharpen"), ({"size": 4}, "size"),
                                           ({"train_count": 0}, "train_count")])
def test_shapes_bad_options_are_usage_errors(options, word):
    with pytest.raises(UsageError, match=word):
        ShapesDataset("train", task="generation", **options)


def test_shapes_pickles():
    data = ShapesDataset("test", task="image_to_image", degrade="blur")
    copy = pickle.loads(pickle.dumps(data))
    assert torch.equal(copy[5][0], data[5][0])


# ----------------------------------------------------------------------------- imagefolder


@pytest.fixture
def folder(tmp_path):
    """ROOT/train/{cat: 5 PNG, dog: 6 JPEG} and ROOT/test/{cat, dog: 2 each}; first image 30x24."""
    root = tmp_path / "pets"
    write_image(root / "train" / "cat" / "c0.png", 30, 24, seed=0)
    for i in range(1, 5):
        write_image(root / "train" / "cat" / f"c{i}.png", 20, 26, seed=i)
    for i in range(6):
        write_image(root / "train" / "dog" / f"d{i}.jpg", 28, 28, seed=10 + i)
    for name in ("cat", "dog"):
        for i in range(2):
            write_image(root / "test" / name / f"t{i}.png", 24, 24, seed=20 + i)
    return root


def test_imagefolder_items_and_labels(folder):
    train = ImageFolderDataset("train", task="classification", data=str(folder))
    test = ImageFolderDataset("test", task="classification", data=str(folder))
    assert train.classes == ["cat", "dog"] and test.classes == ["cat", "dog"]
    assert len(train) == 11 and len(test) == 4
    assert train.image_shape == (3, 24, 24)  # the first image's height
    for data in (train, test):
        for index in range(len(data)):
            image, label = data[index]
            check_image(image, (3, 24, 24))
            expected = "cat" if "/cat/" in data.files[index][0].replace("\\", "/") else "dog"
            assert data.classes[label] == expected


def test_imagefolder_holds_out_every_tenth_file_without_test(folder):
    shutil.rmtree(folder / "test")
    train = ImageFolderDataset("train", task="generation", data=str(folder))
    test = ImageFolderDataset("test", task="generation", data=str(folder))
    train_files = {path for path, _ in train.files}
    test_files = {path for path, _ in test.files}
    assert test_files and not train_files & test_files
    assert len(train_files | test_files) == 11 and len(test_files) == 2
    again = ImageFolderDataset("test", task="generation", data=str(folder))
    assert again.files == test.files
    assert torch.equal(again[0][0], test[0][0])


def test_imagefolder_size_and_channels(folder):
    grey = ImageFolderDataset("train", task="generation", data=str(folder), image_size=8, channels=1)
    assert grey.image_shape == (1, 8, 8)
    check_image(grey[0][0], (1, 8, 8))


def test_imagefolder_grey_images_are_natural_grey(tmp_path):
    root = tmp_path / "grey"
    for i in range(3):
        write_image(root / "train" / "a" / f"{i}.png", 12, 12, mode="L", seed=i)
    data = ImageFolderDataset("train", task="generation", data=str(root))
    assert data.image_shape == (1, 12, 12)
    check_image(data[0][0], (1, 12, 12))
    rgb = ImageFolderDataset("train", task="generation", data=str(root), channels=3)
    image = rgb[0][0]
    check_image(image, (3, 12, 12))
    assert torch.equal(image[0], image[1]) and torch.equal(image[1], image[2])


def test_imagefolder_train_flip_uses_global_rng_and_test_is_fixed(tmp_path):
    root = tmp_path / "flip"
    write_gradient(root / "train" / "a" / "g.png", 16, 16)
    write_gradient(root / "test" / "a" / "g.png", 16, 16)
    train = ImageFolderDataset("train", task="generation", data=str(root))
    directions = set()
    for seed in range(12):
        torch.manual_seed(seed)
        image = train[0][0]
        torch.manual_seed(seed)
        assert torch.equal(train[0][0], image)
        directions.add(bool(image[0, 0, 0] < image[0, 0, -1]))
    assert directions == {True, False}
    test = ImageFolderDataset("test", task="generation", data=str(root))
    torch.manual_seed(0)
    first = test[0][0]
    torch.manual_seed(1)
    assert torch.equal(test[0][0], first) and first[0, 0, 0] < first[0, 0, -1]


def test_imagefolder_image_to_image(folder):
    test = ImageFolderDataset("test", task="image_to_image", data=str(folder), degrade="downscale")
    degraded, clean = test[1]
    check_image(degraded, (3, 24, 24))
    check_image(clean, (3, 24, 24))
    assert not torch.equal(degraded, clean)
    assert torch.equal(test[1][0], degraded)


def test_imagefolder_usage_errors(tmp_path, folder):
    with pytest.raises(UsageError, match="--data ROOT"):
        ImageFolderDataset("train", task="generation", data=None)
    missing = tmp_path / "nowhere"
    with pytest.raises(UsageError, match="nowhere"):
        ImageFolderDataset("train", task="generation", data=str(missing))
    (tmp_path / "flat").mkdir()
    with pytest.raises(UsageError, match="no train/ folder"):
        ImageFolderDataset("train", task="generation", data=str(tmp_path / "flat"))
    (tmp_path / "flat" / "train").mkdir()
    with pytest.raises(UsageError, match="no class folders"):
        ImageFolderDataset("train", task="generation", data=str(tmp_path / "flat"))
    (tmp_path / "flat" / "train" / "empty").mkdir()
    (tmp_path / "flat" / "train" / "empty" / "notes.txt").write_text("hello")
    with pytest.raises(UsageError, match="no images") as info:
        ImageFolderDataset("train", task="generation", data=str(tmp_path / "flat"))
    assert str(tmp_path / "flat" / "train") in str(info.value)
    with pytest.raises(UsageError, match="sharpen"):
        ImageFolderDataset("train", task="generation", data=str(folder), degrade="sharpen")


def test_imagefolder_unreadable_images_are_run_errors(folder):
    bad = folder / "train" / "dog" / "d3.jpg"
    bad.write_bytes(bad.read_bytes()[:200])  # truncated JPEG: the header still opens
    data = ImageFolderDataset("train", task="generation", data=str(folder))
    index = [path for path, _ in data.files].index(str(bad))
    with pytest.raises(RunError, match="d3.jpg"):
        data[index]
    first = folder / "train" / "cat" / "c0.png"
    first.write_bytes(b"not an image at all")
    with pytest.raises(RunError, match="c0.png"):
        ImageFolderDataset("train", task="generation", data=str(folder))


def test_imagefolder_pickles(folder):
    data = ImageFolderDataset("test", task="classification", data=str(folder))
    copy = pickle.loads(pickle.dumps(data))
    assert torch.equal(copy[0][0], data[0][0]) and copy[0][1] == data[0][1]


def write_photo(path: Path, seed: int, width: int = 178, height: int = 218) -> None:
    """Write a photograph-like JPEG (smooth colours, a few sharp-edged ellipses), quality 90."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, size=(height // 8, width // 8, 3), dtype=np.uint8)
    image = Image.fromarray(base).resize((width, height), Image.BICUBIC)
    draw = ImageDraw.Draw(image)
    for _ in range(4):
        x, y, rx, ry = (int(v) for v in rng.integers(10, 60, 4))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        draw.ellipse((2 * x - rx, 2 * y - ry, 2 * x + rx, 2 * y + ry), fill=colour)
    image.save(path, quality=90)


@pytest.mark.parametrize("size, channels", [(64, 3), (64, 1), (32, 3), (40, 1)])
def test_imagefolder_decodes_jpegs_at_reduced_scale_close_to_the_full_decode(tmp_path, monkeypatch, size, channels):
    for i in range(4):
        write_photo(tmp_path / "photos" / "train" / "a" / f"{i}.jpg", seed=i)
    data = ImageFolderDataset("train", task="generation", data=str(tmp_path / "photos"), image_size=size,
                              channels=channels)
    boxes = []  # the source area in each draft-decoded image: 178 wide at full scale
    draft = JpegImagePlugin.JpegImageFile.draft

    def spy(self, mode, requested):
        result = draft(self, mode, requested)
        boxes.append(result[1])
        return result

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", spy)
    for index, (path, _) in enumerate(data.files):
        fast = data.decode(index)
        full = ops.load_image(path, channels)  # the whole file, resized and cropped as before draft mode
        full = TF.pil_to_tensor(TF.center_crop(TF.resize(full, [size], antialias=True), [size, size]))
        assert fast.shape == full.shape == (channels, size, size) and fast.dtype == torch.uint8
        assert (fast.float() - full.float()).abs().mean() < 3.0  # grey levels of 255
    assert len(boxes) == len(data) and all(box[2] <= 178 / 2 for box in boxes)  # each at 1/2 scale or less


def test_load_image_with_a_short_side_resizes_like_torchvision(tmp_path):
    write_image(tmp_path / "a.png", 50, 30, seed=1)  # not a JPEG: no draft mode, so exactly TF.resize
    for short_side in (10, 30, 45):
        got = ops.load_image(str(tmp_path / "a.png"), 3, short_side=short_side)
        expected = TF.resize(ops.load_image(str(tmp_path / "a.png"), 3), [short_side], antialias=True)
        assert got.size == expected.size and np.array_equal(np.asarray(got), np.asarray(expected))


# ----------------------------------------------------------------------------- mnist


def write_idx_images(path: Path, images: np.ndarray) -> None:
    count, rows, cols = images.shape
    path.write_bytes(struct.pack(">IIII", 2051, count, rows, cols) + images.astype(np.uint8).tobytes())


def write_idx_labels(path: Path, labels: np.ndarray) -> None:
    path.write_bytes(struct.pack(">II", 2049, len(labels)) + labels.astype(np.uint8).tobytes())


@pytest.fixture
def mnist_root(tmp_path):
    """ROOT/MNIST/raw/ with 12 train and 6 test random 28x28 digits; returns (root, arrays)."""
    raw = tmp_path / "mnist" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    arrays = {}
    for prefix, count in (("train", 12), ("t10k", 6)):
        images = rng.integers(0, 256, size=(count, 28, 28), dtype=np.uint8)
        labels = np.arange(count) % 10
        write_idx_images(raw / f"{prefix}-images-idx3-ubyte", images)
        write_idx_labels(raw / f"{prefix}-labels-idx1-ubyte", labels)
        arrays[prefix] = (images, labels)
    return tmp_path / "mnist", arrays


def test_mnist_items(mnist_root):
    root, arrays = mnist_root
    for split, prefix in (("train", "train"), ("test", "t10k")):
        data = MnistDataset(split, task="classification", data=str(root))
        images, labels = arrays[prefix]
        assert len(data) == len(labels)
        assert data.image_shape == (1, 28, 28) and data.classes == [str(d) for d in range(10)]
        for index in (0, len(data) - 1):
            image, label = data[index]
            check_image(image, (1, 28, 28))
            assert torch.allclose(image, to_signed_tensor(images[index]))
            assert label == labels[index]


def test_mnist_size_and_channels(mnist_root):
    root, _ = mnist_root
    data = MnistDataset("train", task="generation", data=str(root), image_size=32, channels=3)
    assert data.image_shape == (3, 32, 32)
    image, _ = data[1]
    check_image(image, (3, 32, 32))
    assert torch.equal(image[0], image[2])


def test_mnist_reads_gzipped_files(mnist_root):
    root, arrays = mnist_root
    raw = root / "MNIST" / "raw"
    for name in MNIST_FILES:
        with open(raw / name, "rb") as source, gzip.open(raw / f"{name}.gz", "wb") as target:
            target.write(source.read())
        (raw / name).unlink()
    data = MnistDataset("test", task="classification", data=str(root))
    assert torch.allclose(data[2][0], to_signed_tensor(arrays["t10k"][0][2]))


def test_mnist_missing_files_name_them(tmp_path):
    with pytest.raises(UsageError) as info:
        MnistDataset("train", task="classification", data=str(tmp_path))
    message = str(info.value)
    assert all(name in message for name in MNIST_FILES)
    assert str(tmp_path / "MNIST" / "raw") in message and "download=true" in message
    assert "\n" not in message
    with pytest.raises(UsageError, match="--data ROOT"):
        MnistDataset("train", task="classification", data=None)


@pytest.mark.parametrize("name", ["train-images-idx3-ubyte", "train-labels-idx1-ubyte"])
def test_mnist_truncated_file_is_run_error(mnist_root, name):
    root, _ = mnist_root
    path = root / "MNIST" / "raw" / name
    path.write_bytes(path.read_bytes()[:-5])
    with pytest.raises(RunError, match=name):
        MnistDataset("train", task="classification", data=str(root))


def test_mnist_wrong_magic_is_run_error(mnist_root):
    root, _ = mnist_root
    path = root / "MNIST" / "raw" / "t10k-images-idx3-ubyte"
    data = bytearray(path.read_bytes())
    data[3] = 1  # 2049: a label file's magic
    path.write_bytes(bytes(data))
    with pytest.raises(RunError, match="t10k-images-idx3-ubyte"):
        MnistDataset("test", task="classification", data=str(root))


def test_mnist_failed_download_is_one_line_run_error(tmp_path, monkeypatch):
    from torchvision.datasets import MNIST

    def offline(self):
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz:\nTried a mirror")

    monkeypatch.setattr(MNIST, "download", offline)
    with pytest.raises(RunError) as info:
        MnistDataset("train", task="classification", data=str(tmp_path), download=True)
    assert "\n" not in str(info.value) and "download" in str(info.value)


def test_mnist_pickles_without_the_loaded_data(mnist_root):
    root, _ = mnist_root
    data = MnistDataset("train", task="classification", data=str(root))
    image, label = data[3]
    copy = pickle.loads(pickle.dumps(data))
    assert copy._mnist is None
    assert torch.equal(copy[3][0], image) and copy[3][1] == label


# ----------------------------------------------------------------------------- glob_patches


@pytest.fixture
def photos(tmp_path):
    """12 random RGB PNGs of 40x36 in tmp_path/photos/."""
    for i in range(12):
        write_image(tmp_path / "photos" / f"p{i:02d}.png", 40, 36, seed=100 + i)
    return tmp_path / "photos"


def test_glob_patches_splits_hold_out_every_tenth(photos):
    pattern = str(photos / "*.png")
    train = GlobPatchesDataset("train", task="image_to_image", data=pattern, patch_size=16)
    test = GlobPatchesDataset("test", task="image_to_image", data=pattern, patch_size=16)
    train_files = [pair[0] for pair in train.pairs]
    test_files = [pair[0] for pair in test.pairs]
    assert [Path(p).name for p in test_files] == ["p00.png", "p10.png"]
    assert len(train_files) == 10 and not set(train_files) & set(test_files)
    assert GlobPatchesDataset.tasks == ("image_to_image",) and train.classes is None


@pytest.mark.parametrize("kind", ops.DEGRADE_KINDS)
def test_glob_patches_items(photos, kind):
    pattern = str(photos / "*.png")
    one_each = dict(patch_size=16, degrade=kind, patches_per_image=1)  # item i is file i
    train = GlobPatchesDataset("train", task="image_to_image", data=pattern, **one_each)
    assert train.image_shape == (3, 16, 16)
    torch.manual_seed(0)
    degraded, clean = train[4]
    check_image(degraded, (3, 16, 16))
    check_image(clean, (3, 16, 16))
    assert not torch.equal(degraded, clean)
    source = to_signed_tensor(np.asarray(Image.open(train.pairs[4][0])))
    assert is_crop_of(clean, source)
    torch.manual_seed(0)
    again_degraded, again_clean = train[4]
    assert torch.equal(again_clean, clean) and torch.equal(again_degraded, degraded)

    test = GlobPatchesDataset("test", task="image_to_image", data=pattern, **one_each)
    first = test[1]
    second = GlobPatchesDataset("test", task="image_to_image", data=pattern, **one_each)[1]
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    test_source = to_signed_tensor(np.asarray(Image.open(test.pairs[1][0])))
    assert torch.allclose(first[1], test_source[:, 10:26, 12:28])  # the centre crop


def test_glob_patches_train_crops_vary_with_the_seed(photos):
    train = GlobPatchesDataset("train", task="image_to_image", data=str(photos / "*.png"), patch_size=16)
    patches = set()
    for seed in range(6):
        torch.manual_seed(seed)
        patches.add(tuple(train[0][1].flatten().tolist()))
    assert len(patches) > 1


def test_a_relative_target_glob_is_kept_absolute_so_the_run_is_tested_from_anywhere(tmp_path, photos, zoo_cli,
                                                                                   monkeypatch):
    shutil.copytree(photos, tmp_path / "clean")
    monkeypatch.chdir(tmp_path)
    code, _, err = zoo_cli("train", "--model", "resnet_i2i", "--model-opt", "ngf=8", "--model-opt", "blocks=1",
                           "--dataset", "glob_patches", "--data", "photos/*.png", "--dataset-opt", "patch_size=16",
                           "--dataset-opt", "target=clean/*.png", "--device", "cpu", "--batch-size", "4",
                           "--max-steps", "1", "--run-dir", "run")
    assert code == 0, err
    saved = json.loads((tmp_path / "run" / "config.json").read_text())["config"]
    assert saved["dataset_opt"]["target"] == str(tmp_path / "clean" / "*.png")
    assert saved["data"] == str(tmp_path / "photos" / "*.png")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    code, _, err = zoo_cli("test", "--run", str(tmp_path / "run"), "--device", "cpu")
    assert code == 0, err


def test_patches_smaller_than_the_model_takes_are_refused_naming_both(photos, zoo_cli, tmp_path):
    code, _, err = zoo_cli("train", "--model", "resnet_i2i", "--model-opt", "ngf=8", "--model-opt", "blocks=1",
                           "--dataset", "glob_patches", "--data", str(photos / "*.png"), "--dataset-opt",
                           "patch_size=3", "--device", "cpu", "--max-steps", "1", "--run-dir", str(tmp_path / "run"))
    assert code == 2
    assert ("zoo: error: dataset 'glob_patches' gives image_size 3 (its items are (3, 3, 3)), but model "
            "'resnet_i2i' takes image_size at least 4") in err and "internal error" not in err


def test_glob_patches_paired_targets_match_pixel_for_pixel(tmp_path, photos):
    clean_dir = tmp_path / "clean"
    shutil.copytree(photos, clean_dir)
    args = dict(task="image_to_image", data=str(photos / "*.png"), target=str(clean_dir / "*.png"),
                patch_size=12)
    train = GlobPatchesDataset("train", **args)
    crops = set()
    for seed in range(8):
        torch.manual_seed(seed)
        inp, tgt = train[3]
        check_image(inp, (3, 12, 12))
        assert torch.equal(inp, tgt)
        torch.manual_seed(seed)
        assert torch.equal(train[3][0], inp)
        crops.add(tuple(inp.flatten().tolist()))
    assert len(crops) > 1
    test = GlobPatchesDataset("test", **args)
    inp, tgt = test[0]
    assert torch.equal(inp, tgt)
    assert Path(test.pairs[0][1]).parent == clean_dir


def test_glob_patches_paired_input_is_not_degraded(tmp_path, photos):
    clean_dir = tmp_path / "clean"
    clean_dir.mkdir()
    for path in sorted(photos.glob("*.png")):
        Image.fromarray(255 - np.asarray(Image.open(path))).save(clean_dir / path.name)
    test = GlobPatchesDataset("test", task="image_to_image", data=str(photos / "*.png"),
                              target=str(clean_dir / "*.png"), patch_size=8)
    inp, tgt = test[0]
    assert torch.allclose(inp, -tgt, atol=1e-6)


def test_glob_patches_channels_and_image_size(tmp_path):
    write_image(tmp_path / "a" / "grey.png", 20, 20, mode="L", seed=1)
    write_image(tmp_path / "a" / "alpha.png", 20, 20, mode="RGBA", seed=2)
    write_image(tmp_path / "a" / "photo.jpg", 20, 20, seed=3)
    pattern = str(tmp_path / "a" / "*")
    for split in ("train", "test"):
        data = GlobPatchesDataset(split, task="image_to_image", data=pattern, patch_size=8)
        for index in range(len(data)):
            check_image(data[index][1], (3, 8, 8))
    grey = GlobPatchesDataset("train", task="image_to_image", data=pattern, image_size=10, channels=1)
    assert grey.image_shape == (1, 10, 10)
    for index in range(len(grey)):
        check_image(grey[index][0], (1, 10, 10))


def test_glob_patches_recursive_pattern_and_single_file(tmp_path):
    write_image(tmp_path / "deep" / "x" / "y" / "one.png", 16, 16)
    pattern = str(tmp_path / "deep" / "**" / "*.png")
    train = GlobPatchesDataset("train", task="image_to_image", data=pattern, patch_size=8)
    test = GlobPatchesDataset("test", task="image_to_image", data=pattern, patch_size=8)
    assert len(train) == train.patches_per_image == 4 and train.pairs == test.pairs  # 16x16 in 8px patches
    assert Path(train.pairs[0][0]).name == "one.png"


def test_glob_patches_usage_errors(tmp_path, photos):
    pattern = str(tmp_path / "nothing" / "*.png")
    with pytest.raises(UsageError) as info:
        GlobPatchesDataset("train", task="image_to_image", data=pattern)
    assert pattern in str(info.value)
    with pytest.raises(UsageError, match="--data PATTERN"):
        GlobPatchesDataset("train", task="image_to_image", data=None)
    with pytest.raises(UsageError, match="sharpen"):
        GlobPatchesDataset("train", task="image_to_image", data=str(photos / "*.png"), degrade="sharpen")

    clean_dir = tmp_path / "clean"
    shutil.copytree(photos, clean_dir)
    (clean_dir / "p05.png").unlink()
    with pytest.raises(UsageError) as info:
        GlobPatchesDataset("train", task="image_to_image", data=str(photos / "*.png"),
                           target=str(clean_dir / "*.png"), patch_size=8)
    assert str(photos / "p05.png") in str(info.value)


def test_glob_patches_image_smaller_than_patch(photos):
    with pytest.raises(UsageError) as info:
        GlobPatchesDataset("train", task="image_to_image", data=str(photos / "*.png"), patch_size=64)
    message = str(info.value)
    assert "p00.png" in message and "40x36" in message and "64" in message and "patch_size=" in message
    write_image(photos / "p05.png", 10, 10, seed=5)  # a later, smaller image fails when read
    data = GlobPatchesDataset("train", task="image_to_image", data=str(photos / "*.png"), patch_size=16)
    index = [Path(pair[0]).name for pair in data.pairs].index("p05.png")
    with pytest.raises(UsageError, match="p05.png is 10x10"):
        data[index * data.patches_per_image]


def test_glob_patches_unreadable_image_is_run_error(photos):
    (photos / "p03.png").write_bytes(b"\x89PNG garbage")
    data = GlobPatchesDataset("train", task="image_to_image", data=str(photos / "*.png"), patch_size=16)
    index = [Path(pair[0]).name for pair in data.pairs].index("p03.png")
    with pytest.raises(RunError, match="p03.png"):
        data[index * data.patches_per_image + 1]


def test_glob_patches_pickles(photos):
    data = GlobPatchesDataset("test", task="image_to_image", data=str(photos / "*.png"), patch_size=16)
    copy = pickle.loads(pickle.dumps(data))
    assert torch.equal(copy[0][0], data[0][0])


# ----------------------------------------------------------------------------- engine item RNG


def test_train_augmentation_draws_from_the_engine_item_rng(tmp_path, photos):
    write_gradient(tmp_path / "flip" / "train" / "a" / "g.png", 16, 16)
    clean_dir = tmp_path / "clean"
    shutil.copytree(photos, clean_dir)
    datasets = [
        ShapesDataset("train", task="image_to_image"),
        ImageFolderDataset("train", task="generation", data=str(tmp_path / "flip")),
        GlobPatchesDataset("train", task="image_to_image", data=str(photos / "*.png"), patch_size=8),
        GlobPatchesDataset("train", task="image_to_image", data=str(photos / "*.png"),
                           target=str(clean_dir / "*.png"), patch_size=8),
    ]
    for data in datasets:
        outputs = []
        for global_seed in (0, 1):
            torch.manual_seed(global_seed)
            state = torch.get_rng_state()
            with seeded_item(5):
                outputs.append(data[0][0])
            assert torch.equal(torch.get_rng_state(), state), type(data).__name__  # global RNG untouched
        assert torch.equal(outputs[0], outputs[1]), type(data).__name__
        variants = set()
        for seed in range(8):
            with seeded_item(seed):
                variants.add(tuple(data[0][0].flatten().tolist()))
        assert len(variants) > 1, type(data).__name__

"""The decoded-image cache: same items as decoding each time, rebuilt when files change."""

from __future__ import annotations

import os

import pytest
import torch
from PIL import Image

from plugins.datasets.imagefolder import ImageFolderDataset
from zoo.data import seeded_item
from zoo.engine import checkpoint
from zoo.engine.cache import DecodedCache


def write_folder(root, count=12):
    for split in ("train", "test"):
        for label in ("red", "blue"):
            folder = root / split / label
            folder.mkdir(parents=True)
            for i in range(count if split == "train" else 2):
                colour = (200, 30 + 10 * i, 40) if label == "red" else (30, 60 + 10 * i, 220)
                image = Image.new("RGB", (40, 48), colour)
                image.paste((255, 255, 255), (i, i, i + 10, i + 12))
                image.save(folder / f"{i:02d}.png")


def test_cached_items_equal_decoded_items_and_a_change_rebuilds(tmp_path):
    write_folder(tmp_path / "data")
    dataset = ImageFolderDataset("train", task="classification", data=str(tmp_path / "data"), image_size=32)
    cached = DecodedCache(dataset, tmp_path / "cache")
    assert len(cached) == len(dataset) and cached.classes == ["blue", "red"]
    for index in range(len(dataset)):
        with seeded_item(100 + index):
            expected = dataset[index]
        with seeded_item(100 + index):
            got = cached[index]
        assert torch.equal(expected[0], got[0]) and expected[1] == got[1]
    first = cached.path
    assert first.exists() and first.stat().st_size == len(dataset) * 3 * 32 * 32
    changed = tmp_path / "data" / "train" / "red" / "00.png"
    Image.new("RGB", (40, 48), (1, 2, 3)).save(changed)
    os.utime(changed, ns=(1, 1))
    again = DecodedCache(ImageFolderDataset("train", task="classification", data=str(tmp_path / "data"),
                                            image_size=32), tmp_path / "cache")
    assert again.path != first


def test_training_from_the_cache_gives_the_same_weights(zoo_cli, tmp_path, monkeypatch):
    write_folder(tmp_path / "data")
    monkeypatch.setenv("ZOO_CACHE_DIR", str(tmp_path / "cache"))
    common = ["train", "--model", "mnist_net", "--dataset", "imagefolder", "--data", str(tmp_path / "data"),
              "--batch-size", "4", "--max-steps", "8", "--device", "cpu", "--workers", "2"]
    code, _, err = zoo_cli(*common, "--run-dir", str(tmp_path / "plain"))
    assert code == 0, err
    code, _, err = zoo_cli(*common, "--cache-decoded", "--run-dir", str(tmp_path / "cached"))
    assert code == 0, err
    assert len(list((tmp_path / "cache").glob("*.u8"))) == 2  # train and test splits
    a = checkpoint.load_weights(checkpoint.list_steps(tmp_path / "plain")[-1][1])
    b = checkpoint.load_weights(checkpoint.list_steps(tmp_path / "cached")[-1][1])
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_dataset_without_a_decoded_form_says_so(zoo_cli, tmp_path):
    code, _, err = zoo_cli("train", "--model", "mnist_net", "--dataset-opt", "train_count=16",
                       "--dataset-opt", "test_count=4", "--batch-size", "8", "--max-steps", "1", "--device", "cpu",
                       "--cache-decoded", "--run-dir", str(tmp_path / "run"))
    assert code == 0, err
    assert "has no decoded form to cache" in err


def test_a_corrupt_file_in_the_cache_is_reported_or_skipped_like_without_it(zoo_cli, tmp_path, monkeypatch):
    write_folder(tmp_path / "data")
    broken = tmp_path / "data" / "train" / "red" / "03.png"
    broken.write_bytes(broken.read_bytes()[:40])
    monkeypatch.setenv("ZOO_CACHE_DIR", str(tmp_path / "cache"))
    common = ["train", "--model", "mnist_net", "--dataset", "imagefolder", "--data", str(tmp_path / "data"),
              "--batch-size", "4", "--max-steps", "6", "--device", "cpu", "--cache-decoded"]
    code, _, err = zoo_cli(*common, "--run-dir", str(tmp_path / "a"))
    assert code == 1 and "03.png" in err and "--skip-bad-files" in err
    code, _, err = zoo_cli(*common, "--skip-bad-files", "--run-dir", str(tmp_path / "b"))
    assert code == 0, err
    assert "skipped 1 unreadable sample(s)" in err and "03.png" in err

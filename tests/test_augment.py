"""Augmentation presets (``zoo.augment``, ``zoo train --augment``): what each does, exactness, config."""

from __future__ import annotations

import json
import struct
import sys
import tomllib

import numpy as np
import pytest
import torch
from PIL import Image

from plugins.datasets.imagefolder import ImageFolderDataset
from plugins.datasets.mnist import MnistDataset
from plugins.datasets.shapes import ShapesDataset
from zoo import augment, registry
from zoo.data import item_generator, seeded_item
from zoo.testing import assert_exact_resume

SEEDS = range(24)
SMALL_SHAPES = {"train_count": 16, "test_count": 4, "size": 16}


def _ramp(channels: int = 3, size: int = 32) -> torch.Tensor:
    """A [-1, 1] image brighter to the right and to the bottom, with a coloured tint: every change shows."""
    x = torch.linspace(-1, 1, size)
    image = (x[None, :] + x[:, None]) / 2
    return torch.stack([image * (0.5 + 0.2 * c) for c in range(channels)])


def _draw(preset: str, seed: int, image: torch.Tensor, **kwargs) -> torch.Tensor:
    return augment.augment_image(image, preset, torch.Generator().manual_seed(seed), **kwargs)


def test_none_and_flip_only_mirror():
    image = _ramp()
    assert all(torch.equal(_draw("none", seed, image), image) for seed in SEEDS)
    flipped = [_draw("flip", seed, image) for seed in SEEDS]
    assert all(torch.equal(out, image) or torch.equal(out, image.flip(-1)) for out in flipped)
    assert {torch.equal(out, image) for out in flipped} == {True, False}  # both happen


def test_standard_crops_within_the_documented_area_then_flips():
    for task, (low, high) in (("classification", (0.08, 1.0)), ("image_to_image", (0.25, 1.0))):
        areas = []
        for seed in range(200):
            top, left, h, w = augment.crop_box(40, 50, augment.crop_scale(task), torch.Generator().manual_seed(seed))
            assert 0 <= top and 0 <= left and top + h <= 40 and left + w <= 50
            areas.append(h * w / (40 * 50))
        assert low * 0.9 <= min(areas) < low + 0.1 and max(areas) <= high  # the range is used, not exceeded
    image = _ramp()
    outputs = [_draw("standard", seed, image) for seed in SEEDS]
    assert all(out.shape == image.shape for out in outputs)
    # a crop of a ramp, resized back, spans less of it: the row's range shrinks
    assert sum(float(out[0, 16].max() - out[0, 16].min()) < 0.9 * float(image[0, 16].max() - image[0, 16].min())
               for out in outputs) >= len(outputs) // 2


def test_strong_adds_colour_and_trivial_augment_to_standard():
    image = _ramp()
    for seed in SEEDS:  # strong draws standard's crop and flip first, then colour jitter and one operation
        strong, standard = _draw("strong", seed, image), _draw("standard", seed, image)
        assert strong.shape == image.shape and strong.min() >= -1 and strong.max() <= 1
        assert not torch.equal(strong, standard)


@pytest.mark.parametrize("preset", augment.AUGMENT_PRESETS)
def test_a_pair_gets_the_same_draws(preset):
    image = _ramp()
    for seed in SEEDS:
        generator = torch.Generator().manual_seed(seed)
        one, other = augment.augment_pair(image, image.clone(), preset, generator)
        assert torch.equal(one, other)
    # a target of another size and channels (upscaling, colourising): the same crop and flip, scaled to it
    small, large = _ramp(1, 16), _ramp(3, 32)
    for seed in SEEDS:
        low, high = augment.augment_pair(small, large, "standard" if preset == "strong" else preset,
                                         torch.Generator().manual_seed(seed))
        shrunk = torch.nn.functional.avg_pool2d(high[:1], 2)  # channel 0 is the grey ramp, at half the size
        assert (low - shrunk).abs().mean() < 0.1


def test_image_to_image_input_is_degraded_from_the_augmented_target():
    dataset = ShapesDataset("train", task="image_to_image", degrade="blur", augment="strong", **SMALL_SHAPES)
    plain = ShapesDataset("train", task="image_to_image", degrade="blur", augment="none", **SMALL_SHAPES)
    for index in range(8):
        with seeded_item(index):
            degraded, target = dataset[index]
        with seeded_item(index):
            _, unaugmented = plain[index]
        assert not torch.equal(target, unaugmented)  # augmented
        assert (degraded - target).abs().mean() < (degraded - unaugmented).abs().mean()  # input follows it


def test_the_same_item_seed_gives_the_same_tensor_and_leaves_the_global_rng(tmp_path):
    root = tmp_path / "photos"
    for label in ("a", "b"):
        (root / "train" / label).mkdir(parents=True)
        pixels = np.random.default_rng(ord(label)).integers(0, 256, (20, 24, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / "train" / label / "x.png")
    datasets = [ShapesDataset("train", task="classification", augment="strong", **SMALL_SHAPES),
                ImageFolderDataset("train", task="classification", data=str(root), augment="strong")]
    for dataset in datasets:
        torch.manual_seed(123)
        before = torch.get_rng_state()
        with seeded_item(5):
            first = dataset[0][0]
        with seeded_item(5):
            again = dataset[0][0]
        with seeded_item(6):
            other = dataset[0][0]
        assert torch.equal(torch.get_rng_state(), before)
        assert torch.equal(first, again) and not torch.equal(first, other)


def test_defaults_and_the_test_split_are_unchanged(tmp_path):
    root = tmp_path / "photos"
    (root / "train" / "a").mkdir(parents=True)
    Image.fromarray(np.tile(np.linspace(0, 255, 16).astype(np.uint8)[None, :, None], (16, 1, 3))).save(
        root / "train" / "a" / "g.png")
    default = ImageFolderDataset("train", task="generation", data=str(root))
    assert default.augment == "flip"  # as before the option: an old run rebuilds the same items
    for seed in SEEDS:
        with seeded_item(seed):
            flip = torch.rand((), generator=torch.Generator().manual_seed(seed)).item() < 0.5
            clean = default[0][0]
        decoded = ImageFolderDataset("test", task="generation", data=str(root)).decode(0)  # one image: both splits
        expected = decoded.to(torch.float32) / 127.5 - 1
        assert torch.allclose(clean, expected.flip(-1) if flip else expected)
    assert ShapesDataset("train", task="classification").augment == "none"
    strong_test = ShapesDataset("test", task="classification", augment="strong", **SMALL_SHAPES)
    plain_test = ShapesDataset("test", task="classification", **SMALL_SHAPES)
    assert strong_test.augment == "none"
    with seeded_item(3):
        assert torch.equal(strong_test[2][0], plain_test[2][0])
    with pytest.raises(ValueError, match="augment must be one of"):
        ShapesDataset("train", task="classification", augment="wild")


def test_a_bad_preset_is_a_usage_error(zoo_cli):
    code, _, err = zoo_cli("train", "--model", "dcgan", "--augment", "wild", "--print-config")
    assert code == 2 and "'wild' is not one of 'none', 'flip', 'standard', 'strong'" in err


UNAUGMENTED = """
    import torch
    from zoo import hookimpl
    from zoo.data import ZooDataset

    class Plain(ZooDataset):
        \"\"\"Grey squares, no presets.\"\"\"
        tasks = ("generation",)
        needs_data = reads_data = False
        def __init__(self, split, *, task, data=None, image_size=None, channels=None):
            super().__init__(split, task=task, data=data, image_size=image_size, channels=channels)
            self.image_shape = (channels or 3, image_size or 32, image_size or 32)
        def __len__(self):
            return 64
        def __getitem__(self, index):
            return torch.zeros(self.image_shape), 0

    @hookimpl
    def zoo_register(registry):
        registry.dataset("plain", "plain_zoo_plugin:Plain", "grey squares")
"""


@pytest.fixture
def plain_dataset(make_plugin, monkeypatch, tmp_path):
    """The ``plain`` dataset plugin (no presets) installed and discovered in this process, forgotten after."""
    for var in ("ZOO_DISABLE_PLUGINS", "ZOO_DISABLE_PLUGIN_AUTOLOAD"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.syspath_prepend(str(make_plugin("plain", UNAUGMENTED)))
    registry.clear_cache()
    yield
    registry.clear_cache()
    sys.modules.pop("plain_zoo_plugin", None)


def test_a_dataset_without_presets_refuses_one_in_one_line(plain_dataset, zoo_cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    base = ("train", "--model", "dcgan", "--dataset", "plain", "--print-config")
    code, _, err = zoo_cli(*base, "--augment", "standard")
    assert code == 2, err
    line, = err.strip().splitlines()
    assert "dataset 'plain' does not take --augment standard" in line
    assert all(name in line.partition("datasets that do:")[2] for name in ("imagefolder", "mnist", "shapes"))
    code, printed, err = zoo_cli(*base, "--augment", "none")
    assert code == 0, err
    assert tomllib.loads(printed)["augment"] == "none"
    code, printed, err = zoo_cli(*base)
    assert code == 0, err
    assert any(line.startswith("# augment: unset") and "takes no presets" in line for line in printed.splitlines())


def test_print_config_shows_and_takes_back_the_preset(zoo_cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, printed, err = zoo_cli("train", "--model", "dcgan", "--print-config")
    assert code == 0, err
    assert any(line.startswith('# augment = "none"') and "the dataset's default" in line
               for line in printed.splitlines())
    code, printed, err = zoo_cli("train", "--model", "dcgan", "--augment", "strong", "--print-config")
    assert code == 0, err
    assert tomllib.loads(printed)["augment"] == "strong"
    (tmp_path / "printed.toml").write_text(printed)
    code, again, err = zoo_cli("train", "--config", "printed.toml", "--print-config")
    assert code == 0, err
    assert tomllib.loads(again) == tomllib.loads(printed)
    assert any(line.startswith('augment = "strong"') and line.endswith("# file") for line in again.splitlines())


def test_a_strong_run_records_its_preset_and_resumes_bitwise(tmp_path, zoo_cli):
    straight, resumed = assert_exact_resume("mnist_net", tmp_path, dataset="shapes", augment="strong",
                                            dataset_opt=SMALL_SHAPES, steps=3, stop_at=2)
    for run in (straight, resumed):
        document = json.loads((run.run_dir / "config.json").read_text())
        assert document["config"]["augment"] == "strong" and document["resolved"]["augment"] == "strong"
    assert resumed.trainer.run.train_set.augment == "strong"  # the resumed run rebuilt its preset
    code, _, err = zoo_cli("train", "--resume", str(resumed.run_dir), "--augment", "flip")
    assert code == 2 and "--augment cannot change when resuming" in err


@pytest.mark.parametrize("preset", augment.AUGMENT_PRESETS)
def test_imagefolder_batch_finish_augments_as_each_item_does(tmp_path, preset):
    root = tmp_path / "photos"
    for split, label in (("train", "a"), ("train", "b"), ("test", "a")):  # with test/: both train files train
        (root / split / label).mkdir(parents=True)
        pixels = np.random.default_rng(ord(label)).integers(0, 256, (20, 20, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / split / label / "x.png")
    dataset = ImageFolderDataset("train", task="classification", data=str(root), augment=preset)
    indices, seeds = [0, 1, 0], [11, 12, 13]
    decoded = torch.stack([dataset.decode(index) for index in indices])
    images, labels = dataset.finish_batch(decoded, indices, [item_generator(seed) for seed in seeds])
    for image, label, index, seed in zip(images, labels, indices, seeds):
        with seeded_item(seed):
            expected, expected_label = dataset.finish(dataset.decode(index), index)
        assert torch.equal(image, expected) and int(label) == expected_label


def test_mnist_takes_the_presets_on_its_train_split_only(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    images = np.random.default_rng(0).integers(0, 256, size=(4, 28, 28), dtype=np.uint8)
    for prefix in ("train", "t10k"):
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(struct.pack(">IIII", 2051, 4, 28, 28) + images.tobytes())
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">II", 2049, 4) + bytes(range(4)))
    plain = torch.from_numpy(images[1]).float()[None] / 127.5 - 1
    assert MnistDataset("train", task="classification", data=str(tmp_path)).augment == "none"  # as before
    flipped = MnistDataset("train", task="classification", data=str(tmp_path), augment="flip")
    cropped = MnistDataset("train", task="classification", data=str(tmp_path), augment="standard")
    seen = set()
    for seed in SEEDS:
        with seeded_item(seed):
            image, label = flipped[1]
        assert label == 1 and (torch.allclose(image, plain) or torch.allclose(image, plain.flip(-1)))
        seen.add(torch.allclose(image, plain))
        with seeded_item(seed):
            assert not torch.allclose(cropped[1][0], image)
    assert seen == {True, False}
    test = MnistDataset("test", task="classification", data=str(tmp_path), augment="strong")
    with seeded_item(0):
        assert torch.allclose(test[1][0], plain)

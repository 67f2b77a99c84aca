"""--decode-on-device: workers read JPEG bytes, the device decodes and finishes each batch.

On the CPU the engine refuses the option (one line), so the pipeline itself is
tested here with the CPU standing in for the device (the blocker patched out):
torchvision's decode_jpeg takes the same bytes on either device.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

import zoo
from plugins.datasets.imagefolder import ImageFolderDataset
from plugins.datasets.shapes import ShapesDataset
from zoo.data import seeded_item
from zoo.engine import checkpoint, device_decode
from zoo.engine.cache import DecodedCache
from zoo.engine.feed import BadItem, DeviceFeed, make_loader

CPU = torch.device("cpu")


def write_jpeg_folder(root, count=10, size=(56, 44), png_every=0, test_count=2):
    """Two classes of left-right asymmetric photos-like images (a flip shows), JPEG quality 90.

    Every ``png_every``-th image is a PNG instead, and the last red one is larger.
    """
    rng = np.random.default_rng(0)
    for split, n in (("train", count), ("test", test_count)):
        for label, tint in (("red", (1.0, 0.4, 0.3)), ("blue", (0.3, 0.5, 1.0))):
            folder = root / split / label
            folder.mkdir(parents=True)
            for i in range(n):
                width, height = (size[0] + 20, size[1] + 16) if i == n - 1 and label == "red" else size
                y, x = np.mgrid[0:height, 0:width]
                ramp = 255.0 * x / width * (0.5 + 0.5 * y / height)
                pixels = np.stack([ramp * t for t in tint], -1) + rng.normal(0, 6, (height, width, 3))
                image = Image.fromarray(pixels.clip(0, 255).astype(np.uint8))
                if png_every and i % png_every == 0:
                    image.save(folder / f"{i:02d}.png")
                else:
                    image.save(folder / f"{i:02d}.jpg", quality=90)


def dataset_of(root, split="train", task="classification", channels=3, size=32, degrade="noise"):
    return ImageFolderDataset(split, task=task, data=str(root), image_size=size, channels=channels, degrade=degrade)


class BothOrders:
    """Sets the epoch (and start) of two loaders' orders at once."""

    def __init__(self, *orders):
        self.orders = orders

    def set_epoch(self, epoch, start=0):
        for order in self.orders:
            order.set_epoch(epoch, start)


def loaders(source, batch_size=4, workers=0):
    """The usual loader over ``source``, the encoded one with the same seed, and both their orders."""
    plain, plain_order = make_loader(source, batch_size, seed=3, workers=workers, shuffle=True, drop_last=True,
                                     pin_memory=False)
    encoded, encoded_order = make_loader(source, batch_size, seed=3, workers=workers, shuffle=True, drop_last=True,
                                         pin_memory=False, items=device_decode.EncodedItems,
                                         collate=device_decode.collate_encoded)
    return plain, encoded, BothOrders(plain_order, encoded_order)


@pytest.mark.parametrize("channels", [3, 1])
def test_a_batch_decoded_from_bytes_matches_the_cpu_decode_within_a_few_grey_levels(tmp_path, channels):
    write_jpeg_folder(tmp_path / "data")
    dataset = dataset_of(tmp_path / "data", channels=channels)
    encoded = [dataset.encoded(i) for i in range(len(dataset))]
    assert all(data is not None and data.dtype == torch.uint8 for data in encoded)
    on_device = dataset.decode_batch(encoded, CPU)
    on_cpu = torch.stack([dataset.decode(i) for i in range(len(dataset))])
    assert on_device.shape == on_cpu.shape == (len(dataset), channels, 32, 32)
    assert on_device.dtype == torch.uint8
    difference = (on_device.float() - on_cpu.float()).abs()
    assert difference.mean() < 1.5 and difference.max() <= 16  # another decoder and resize, same geometry


def test_only_jpeg_files_come_as_bytes(tmp_path):
    write_jpeg_folder(tmp_path / "data", png_every=3)
    dataset = dataset_of(tmp_path / "data")
    for index, (path, _) in enumerate(dataset.files):
        data = dataset.encoded(index)
        if path.endswith(".png"):
            assert data is None
        else:
            assert bytes(data.numpy()) == open(path, "rb").read()


@pytest.mark.parametrize("task, degrade", [("image_to_image", "noise"), ("image_to_image", "downscale"),
                                           ("image_to_image", "blur"), ("classification", "noise")])
@pytest.mark.parametrize("split", ["train", "test"])  # test: no flips, noise fixed per image
def test_batches_from_png_files_equal_the_usual_loader_exactly(tmp_path, task, degrade, split):
    write_jpeg_folder(tmp_path / "data", png_every=1, test_count=10)  # all PNG: decoded in the worker as usual
    # finish_batch draws each item's flip and noise from its own generator
    dataset = dataset_of(tmp_path / "data", split=split, task=task, degrade=degrade)
    plain, encoded, order = loaders(dataset)
    decoder = device_decode.DeviceDecoder(dataset, CPU)
    for epoch in (0, 1):
        order.set_epoch(epoch, start=4)
        pairs = list(zip(plain, encoded))
        assert len(pairs) == len(dataset) // 4 - 1
        for (expected, _), raw in pairs:
            got, bad = decoder(raw)
            assert not bad
            assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])


def test_batches_decoded_from_jpeg_bytes_keep_each_items_flip_and_label(tmp_path):
    write_jpeg_folder(tmp_path / "data", png_every=3)  # batches mix files' bytes and decoded PNGs
    dataset = dataset_of(tmp_path / "data")
    plain, encoded, order = loaders(dataset, workers=2)
    decoder = device_decode.DeviceDecoder(dataset, CPU)
    order.set_epoch(1)
    flips_seen = 0
    for (expected, _), raw in zip(plain, encoded):
        got, bad = decoder(raw)
        assert not bad and torch.equal(got[1], expected[1])
        error = (got[0] - expected[0]).abs().mean(dim=(1, 2, 3))
        mirrored = (got[0] - expected[0].flip(-1)).abs().mean(dim=(1, 2, 3))
        assert (error < 0.03).all() and (mirrored > 0.2).all()  # a flip missed would be far off
        flips_seen += int((got[0][:, 0, :, 0] > got[0][:, 0, :, -1]).any(dim=1).sum())
    assert flips_seen > 0  # some items were flipped, and matched


def test_a_jpeg_the_device_rejects_is_decoded_on_the_cpu_and_a_broken_one_is_a_bad_item(tmp_path, monkeypatch):
    write_jpeg_folder(tmp_path / "data")
    dataset = dataset_of(tmp_path / "data")
    broken = dataset.files[2][0]
    with open(broken, "r+b") as file:  # a JPEG header and then garbage
        file.seek(200)
        file.write(b"\x00" * 64)
        file.truncate(300)
    rejected = dataset.files[5][0]
    original = ImageFolderDataset.decode_batch
    rejected_bytes = open(rejected, "rb").read()

    def picky(self, encoded, device):
        if any(bytes(data.numpy()) == rejected_bytes for data in encoded):
            raise RuntimeError("nvjpeg: unsupported")
        return original(self, encoded, device)

    monkeypatch.setattr(ImageFolderDataset, "decode_batch", picky)
    items = device_decode.EncodedItems(dataset)
    said = []
    decoder = device_decode.DeviceDecoder(dataset, CPU, say=said.append)
    batch, bad = decoder(device_decode.collate_encoded([items[(i, 10 + i)] for i in range(8)]))
    assert [item.index for item in bad] == [2] and "02.jpg" in bad[0].message
    assert len(batch[0]) == 7
    assert decoder.cpu_only == {5} and len(said) == 1 and "nvjpeg: unsupported" in said[0]
    assert decoder.items(dataset)[(5, 15)].is_image  # from the next epoch the worker decodes it
    with seeded_item(15):
        expected = dataset[5][0]
    assert torch.equal(batch[0][4], expected)  # the rejected file: the CPU decode, exactly


@pytest.mark.parametrize("batch_size", [4, 16])
def test_a_collated_batch_sends_the_same_few_tensors_whatever_its_size(tmp_path, batch_size):
    """Each tensor from a worker holds a shared-memory file open: one per file would run out of them."""
    write_jpeg_folder(tmp_path / "data", count=10, png_every=3)
    dataset = dataset_of(tmp_path / "data")
    items = device_decode.EncodedItems(dataset)
    batch, bad = device_decode.collate_encoded([items[(i, i)] for i in range(batch_size)])
    assert not bad
    tensors = [value for value in batch if isinstance(value, torch.Tensor)]
    assert len(tensors) == 2  # the decoded PNGs stacked, the JPEG files joined
    files = batch.files()
    assert len(files) == len(batch.file_at) == sum(1 for i in range(batch_size)
                                                   if dataset.files[i][0].endswith(".jpg"))
    for position, data in zip(batch.file_at, files):
        assert torch.equal(data, dataset.encoded(batch.keys[position][0]))


def test_running_out_of_device_memory_is_raised_not_taken_for_bad_files(tmp_path, monkeypatch):
    write_jpeg_folder(tmp_path / "data", count=4)
    dataset = dataset_of(tmp_path / "data")

    def out_of_memory(self, encoded, device):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 18.00 GiB")

    monkeypatch.setattr(ImageFolderDataset, "decode_batch", out_of_memory)
    items = device_decode.EncodedItems(dataset)
    decoder = device_decode.DeviceDecoder(dataset, CPU)
    with pytest.raises(torch.OutOfMemoryError):
        decoder(device_decode.collate_encoded([items[(i, i)] for i in range(4)]))
    assert not decoder.cpu_only


@pytest.mark.parametrize("message, device_trouble", [
    ("Error while decoding JPEG images: CUDA out of memory. Tried to allocate 2.00 GiB", True),
    ("Error while decoding JPEG images: Failed to synchronize CUDA stream: 700", True),
    ("Error while decoding JPEG images: Failed to decode batch: 6", True),  # execution failed
    ("Error while decoding JPEG images: Failed to decode jpeg stream: 5", True),  # allocator failure
    ("Error while decoding JPEG images: Failed to initialize batch decoding: 8", True),  # internal error
    ("Error while decoding JPEG images: Failed to create nvjpeg state: 1", True),
    ("Error while decoding JPEG images: Failed to get image info: 3", False),  # bad JPEG
    ("Error while decoding JPEG images: Failed to parse jpeg stream: 4", False),  # JPEG not supported
    ("Error while decoding JPEG images: Failed to decode jpeg stream: 10", False),  # incomplete bitstream
    ("Error while decoding JPEG images: Unknown chroma subsampling", False),
    ("Not a JPEG file: starts with 0x89 0x50", False),
])
def test_torchvision_errors_that_blame_the_device_are_told_from_bad_files(message, device_trouble):
    assert device_decode._is_device_failure(RuntimeError(message)) is device_trouble


def test_a_missing_file_is_a_bad_item_from_the_worker(tmp_path):
    write_jpeg_folder(tmp_path / "data")
    dataset = dataset_of(tmp_path / "data")
    os.remove(dataset.files[1][0])
    item = device_decode.EncodedItems(dataset)[(1, 0)]
    assert isinstance(item, BadItem) and "01.jpg" in item.message and "replace or remove" in item.message


def cpu_as_device(monkeypatch):
    """Let --decode-on-device run with the CPU as the device."""
    monkeypatch.setattr(device_decode, "blocker", lambda *args, **kwargs: None)


def test_a_run_decoding_on_the_device_fills_its_own_cache_and_resumes_exactly(zoo_cli, tmp_path, monkeypatch):
    write_jpeg_folder(tmp_path / "data", count=11, png_every=4)
    monkeypatch.setenv("ZOO_CACHE_DIR", str(tmp_path / "cache"))
    cpu_as_device(monkeypatch)
    calls = {"decode_batch": 0}
    original = ImageFolderDataset.decode_batch

    def counted(self, encoded, device):
        calls["decode_batch"] += 1
        return original(self, encoded, device)

    monkeypatch.setattr(ImageFolderDataset, "decode_batch", counted)
    common = ["train", "--model", "mnist_net", "--dataset", "imagefolder", "--data", str(tmp_path / "data"),
              "--batch-size", "4", "--device", "cpu", "--decode-on-device", "--cache-decoded", "--eval-every", "0"]
    code, _, err = zoo_cli(*common, "--epochs", "2", "--run-dir", str(tmp_path / "straight"))
    assert code == 0, err
    assert "no --decode-on-device" not in err
    assert json.loads((tmp_path / "straight" / "config.json").read_text())["resolved"]["decode_on_device"]
    steps_per_epoch = 22 // 4
    assert calls["decode_batch"] == steps_per_epoch + 1  # the first epoch, then the two images it dropped
    cached = sorted((tmp_path / "cache").glob("*.u8"))
    assert len(cached) == 1  # the training split's (no evaluation read the test split)
    dataset = dataset_of(tmp_path / "data", channels=1, size=28)
    train_cache = DecodedCache(dataset, tmp_path / "cache", decoder=device_decode.cache_decoder_name(dataset),
                               origin=f"builtin:imagefolder@{zoo.__version__}")  # as the run keys it
    assert train_cache.complete and train_cache.path in cached
    assert DecodedCache(dataset, tmp_path / "other", origin=f"builtin:imagefolder@{zoo.__version__}").path.name != \
        train_cache.path.name  # the device's decoder keys a cache of its own
    for index, (path, _) in enumerate(dataset.files):  # JPEGs as the device decodes them, PNGs as the CPU does
        expected = dataset.decode(index) if path.endswith(".png") else \
            dataset.decode_batch([dataset.encoded(index)], CPU)[0]
        assert torch.equal(train_cache.stored(index), expected)

    code, _, err = zoo_cli(*common, "--epochs", "2", "--max-steps", "7", "--run-dir", str(tmp_path / "resumed"))
    assert code == 0, err
    code, _, err = zoo_cli("train", "--resume", str(tmp_path / "resumed"), "--max-steps", str(2 * steps_per_epoch))
    assert code == 0, err
    a = checkpoint.load_weights(checkpoint.list_steps(tmp_path / "straight")[-1][1])
    b = checkpoint.load_weights(checkpoint.list_steps(tmp_path / "resumed")[-1][1])
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_without_a_cache_every_epoch_decodes_on_the_device_and_trains_as_the_loader_path_would(
        zoo_cli, tmp_path, monkeypatch):
    write_jpeg_folder(tmp_path / "data", png_every=1)  # PNGs: the same pixels either way, so equal weights
    cpu_as_device(monkeypatch)
    common = ["train", "--model", "mnist_net", "--dataset", "imagefolder", "--data", str(tmp_path / "data"),
              "--batch-size", "4", "--device", "cpu", "--epochs", "2", "--workers", "2"]
    code, _, err = zoo_cli(*common, "--decode-on-device", "--run-dir", str(tmp_path / "device"))
    assert code == 0, err
    code, _, err = zoo_cli(*common, "--run-dir", str(tmp_path / "loader"))
    assert code == 0, err
    a = checkpoint.load_weights(checkpoint.list_steps(tmp_path / "device")[-1][1])
    b = checkpoint.load_weights(checkpoint.list_steps(tmp_path / "loader")[-1][1])
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_without_a_cache_every_epoch_decodes_jpegs_on_the_device(zoo_cli, tmp_path, monkeypatch):
    write_jpeg_folder(tmp_path / "data", count=8)
    cpu_as_device(monkeypatch)
    calls = {"files": 0}
    original = ImageFolderDataset.decode_batch

    def counted(self, encoded, device):
        calls["files"] += len(encoded)
        return original(self, encoded, device)

    monkeypatch.setattr(ImageFolderDataset, "decode_batch", counted)
    code, _, err = zoo_cli("train", "--model", "mnist_net", "--dataset", "imagefolder", "--data",
                           str(tmp_path / "data"), "--batch-size", "4", "--device", "cpu", "--epochs", "2",
                           "--eval-every", "0", "--decode-on-device", "--run-dir", str(tmp_path / "run"))
    assert code == 0, err
    assert calls["files"] == 2 * 16  # both epochs, every training image


def test_a_run_stopped_while_the_device_fills_the_cache_resumes_exactly(zoo_cli, tmp_path, monkeypatch):
    write_jpeg_folder(tmp_path / "data", count=11, png_every=4)
    cpu_as_device(monkeypatch)
    common = ["train", "--model", "mnist_net", "--dataset", "imagefolder", "--data", str(tmp_path / "data"),
              "--batch-size", "4", "--device", "cpu", "--decode-on-device", "--cache-decoded", "--eval-every", "0",
              "--epochs", "2"]
    monkeypatch.setenv("ZOO_CACHE_DIR", str(tmp_path / "cache-straight"))
    code, _, err = zoo_cli(*common, "--run-dir", str(tmp_path / "straight"))
    assert code == 0, err
    monkeypatch.setenv("ZOO_CACHE_DIR", str(tmp_path / "cache-stopped"))
    code, _, err = zoo_cli(*common, "--max-steps", "3", "--run-dir", str(tmp_path / "stopped"))
    assert code == 0, err
    assert not list((tmp_path / "cache-stopped").glob("*.u8"))  # stopped in epoch 1: only a partial cache
    code, _, err = zoo_cli("train", "--resume", str(tmp_path / "stopped"), "--max-steps", "10")
    assert code == 0, err
    a = checkpoint.load_weights(checkpoint.list_steps(tmp_path / "straight")[-1][1])
    b = checkpoint.load_weights(checkpoint.list_steps(tmp_path / "stopped")[-1][1])
    assert all(torch.equal(a[k], b[k]) for k in a)
    straight, = (tmp_path / "cache-straight").glob("*.u8")
    stopped, = (tmp_path / "cache-stopped").glob("*.u8")
    assert straight.name == stopped.name and straight.read_bytes() == stopped.read_bytes()


def test_a_broken_jpeg_is_skipped_on_request_and_remembered_by_the_cache(zoo_cli, tmp_path, monkeypatch):
    write_jpeg_folder(tmp_path / "data", count=8)
    broken = tmp_path / "data" / "train" / "red" / "03.jpg"
    broken.write_bytes(broken.read_bytes()[:300])
    cpu_as_device(monkeypatch)
    monkeypatch.setenv("ZOO_CACHE_DIR", str(tmp_path / "cache"))
    common = ["train", "--model", "mnist_net", "--dataset", "imagefolder", "--data", str(tmp_path / "data"),
              "--batch-size", "4", "--device", "cpu", "--decode-on-device", "--cache-decoded", "--eval-every", "0",
              "--epochs", "2"]
    code, _, err = zoo_cli(*common, "--run-dir", str(tmp_path / "a"))
    assert code == 1 and "03.jpg" in err and "--skip-bad-files" in err
    code, _, err = zoo_cli(*common, "--skip-bad-files", "--run-dir", str(tmp_path / "b"))
    assert code == 0, err
    assert "skipped 1 unreadable sample(s), 2 times in all" in err and "03.jpg" in err
    bad, = (tmp_path / "cache").glob("*.bad.json")
    assert "03.jpg" in bad.read_text()


def test_on_the_cpu_the_option_says_one_line_and_trains(zoo_cli, tmp_path):
    write_jpeg_folder(tmp_path / "data", count=4)
    code, _, err = zoo_cli("train", "--model", "mnist_net", "--dataset", "imagefolder", "--data",
                           str(tmp_path / "data"), "--batch-size", "4", "--max-steps", "2", "--device", "cpu",
                           "--decode-on-device", "--run-dir", str(tmp_path / "run"))
    assert code == 0, err
    resolved = json.loads((tmp_path / "run" / "config.json").read_text())["resolved"]
    assert resolved["decode_on_device"] is False  # what the run did, beside what it was asked
    lines = [line for line in err.splitlines() if "--decode-on-device" in line]
    assert lines == ["zoo: no --decode-on-device: it needs a CUDA device, not cpu; the loader's workers "
                     "prepare the samples."]


def test_a_dataset_without_batch_decoding_is_refused_by_name(zoo_cli, tmp_path):
    code, _, err = zoo_cli("train", "--model", "mnist_net", "--dataset-opt", "train_count=8", "--dataset-opt",
                           "test_count=4", "--batch-size", "4", "--max-steps", "1", "--device", "cpu",
                           "--decode-on-device", "--run-dir", str(tmp_path / "run"))
    assert code == 0, err
    assert "needs a CUDA device" in err  # the device is checked first
    shapes = ShapesDataset("train", task="classification", train_count=4, test_count=2)
    assert device_decode.blocker(shapes, torch.device("cuda"), False) == (
        "dataset ShapesDataset does not offer it (it needs encoded, decode_batch, decode, finish and "
        "device_decode_method)")


def test_decode_on_device_cannot_change_on_resume(zoo_cli, tmp_path):
    write_jpeg_folder(tmp_path / "data", count=4)
    code, _, err = zoo_cli("train", "--model", "mnist_net", "--dataset", "imagefolder", "--data",
                           str(tmp_path / "data"), "--batch-size", "4", "--max-steps", "1", "--device", "cpu",
                           "--run-dir", str(tmp_path / "run"))
    assert code == 0, err
    code, _, err = zoo_cli("train", "--resume", str(tmp_path / "run"), "--decode-on-device", "--max-steps", "2")
    assert code == 2 and "--decode-on-device cannot change when resuming" in err


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@cuda
def test_nvjpeg_decodes_a_batch_as_the_cpu_does(tmp_path):
    write_jpeg_folder(tmp_path / "data")
    dataset = dataset_of(tmp_path / "data")
    encoded = [dataset.encoded(i) for i in range(len(dataset))]
    assert device_decode.blocker(dataset, torch.device("cuda"), False) is None
    on_gpu = dataset.decode_batch(encoded, torch.device("cuda"))
    assert on_gpu.is_cuda
    difference = (on_gpu.cpu().float() - dataset.decode_batch(encoded, CPU).float()).abs()
    assert difference.mean() < 1.0 and difference.max() <= 12


@cuda
def test_a_gpu_run_decoding_on_the_device_fills_the_cache(zoo_cli, tmp_path, monkeypatch):
    write_jpeg_folder(tmp_path / "data", count=11)
    monkeypatch.setenv("ZOO_CACHE_DIR", str(tmp_path / "cache"))
    code, _, err = zoo_cli("train", "--model", "dcgan", "--dataset", "imagefolder", "--data", str(tmp_path / "data"),
                           "--batch-size", "4", "--device", "cuda", "--decode-on-device", "--cache-decoded",
                           "--epochs", "2", "--workers", "2", "--run-dir", str(tmp_path / "run"))
    assert code == 0, err
    assert "no --decode-on-device" not in err
    assert len(list((tmp_path / "cache").glob("*.u8"))) == 2


@cuda
def test_an_epoch_through_the_side_stream_matches_the_worker_path(tmp_path):
    """DeviceFeed on CUDA: assembly on its side stream gives the worker path's batches, in order."""
    from zoo.engine.feed import LoaderStream
    write_jpeg_folder(tmp_path / "data", png_every=3)
    dataset = dataset_of(tmp_path / "data")
    plain, encoded, order = loaders(dataset, workers=2)
    order.set_epoch(1)
    gpu = torch.device("cuda")
    decoder = device_decode.DeviceDecoder(dataset, gpu)
    feed = DeviceFeed(LoaderStream(encoded), gpu, assemble=decoder)
    pairs = list(zip(plain, feed))
    feed.close()
    assert len(pairs) == len(dataset) // 4
    for (expected, _), (got, bad) in pairs:
        assert not bad and got[0].is_cuda
        assert torch.equal(got[1].cpu(), expected[1])
        assert ((got[0].cpu() - expected[0]).abs().mean(dim=(1, 2, 3)) < 0.03).all()


@cuda
def test_noise_drawn_from_a_cpu_generator_is_the_same_for_an_image_on_the_gpu():
    from plugins import ops
    image = torch.rand(3, 16, 16) * 2 - 1
    on_cpu = ops.degrade(image, "noise", generator=torch.Generator().manual_seed(4))
    on_gpu = ops.degrade(image.cuda(), "noise", generator=torch.Generator().manual_seed(4))
    assert torch.allclose(on_gpu.cpu(), on_cpu)

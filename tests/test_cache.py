"""The decoded-image cache: same items as decoding each time, rebuilt when files change."""

from __future__ import annotations

import json
import os

import pytest
import torch
from PIL import Image

from plugins.datasets.imagefolder import ImageFolderDataset
from zoo.data import seeded_item
from zoo.engine import checkpoint
from zoo.engine.cache import DecodedCache
from zoo.errors import RunError


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


def test_a_dataset_without_a_decoded_form_says_so(zoo_cli, tmp_path, monkeypatch):
    from plugins.datasets.shapes import ShapesDataset
    monkeypatch.delattr(ShapesDataset, "decode")
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


def folder_with_a_broken_file(tmp_path, count):
    """An image folder whose train/red/03.png is cut short, and its train split."""
    write_folder(tmp_path / "data", count=count)
    broken = tmp_path / "data" / "train" / "red" / "03.png"
    broken.write_bytes(broken.read_bytes()[:40])
    return ImageFolderDataset("train", task="classification", data=str(tmp_path / "data"), image_size=32), broken


def test_a_cache_built_by_worker_processes_equals_one_built_in_process(tmp_path):
    dataset, broken = folder_with_a_broken_file(tmp_path, 40)
    serial = DecodedCache(dataset, tmp_path / "serial")
    state = torch.get_rng_state()
    parallel = DecodedCache(dataset, tmp_path / "parallel", workers=2)
    assert torch.equal(torch.get_rng_state(), state)  # building leaves the global RNG (model init) alone
    assert serial.path.name == parallel.path.name
    assert serial.path.read_bytes() == parallel.path.read_bytes()
    index = [path for path, _ in dataset.files].index(str(broken))
    assert list(parallel.bad) == [index] and "03.png" in parallel.bad[index]
    assert parallel.bad == serial.bad
    with pytest.raises(RunError, match="03.png"):
        parallel[index]
    leftovers = [p.name for p in (tmp_path / "parallel").glob(".*") if not p.name.endswith(".lock")]
    assert not leftovers  # no temporary file left behind


def test_cached_shapes_match_the_drawn_ones_to_uint8_precision(tmp_path):
    from plugins.datasets.shapes import ShapesDataset
    step = 1 / 127.5 + 1e-6  # one uint8 level in [-1, 1]
    for task in ("classification", "image_to_image"):
        drawn = ShapesDataset("test", task=task, test_count=6)
        cached = DecodedCache(ShapesDataset("test", task=task, test_count=6), tmp_path)
        for index in range(6):
            (drawn_input, drawn_target), (cached_input, cached_target) = drawn[index], cached[index]
            assert (drawn_input - cached_input).abs().max() <= step
            if task == "classification":
                assert drawn_target == cached_target
            else:
                assert (drawn_target - cached_target).abs().max() <= step


def test_a_cache_filled_while_reading_equals_a_built_one_and_keeps_a_stopped_pass(tmp_path):
    dataset, broken = folder_with_a_broken_file(tmp_path, 20)
    built = DecodedCache(dataset, tmp_path / "built")
    bad_index = [path for path, _ in dataset.files].index(str(broken))

    filling = DecodedCache(dataset, tmp_path / "filled", fill_on_read=True)
    assert not filling.complete and not filling.path.exists()
    first_half = [i for i in range(len(dataset)) if i != bad_index][: len(dataset) // 2]
    for index in first_half:  # a pass stopped half-way: what it decoded stays for the next run
        with seeded_item(index):
            expected = dataset[index]
        with seeded_item(index):
            got = filling[index]
        assert torch.equal(expected[0], got[0]) and expected[1] == got[1]
    with pytest.raises(RunError, match="03.png"):
        filling[bad_index]

    again = DecodedCache(dataset, tmp_path / "filled", fill_on_read=True)  # the next run
    again._open()
    assert int(again._flags.sum()) == len(first_half)
    again._array = again._flags = None
    again.finalize()  # decodes the rest, records the bad file, publishes the file
    assert again.complete and again.path.read_bytes() == built.path.read_bytes()
    assert again.bad == built.bad and list(again.bad) == [bad_index]
    assert sorted(p.name for p in (tmp_path / "filled").glob(".*")) == [f".{again.path.name}.lock"]  # no partial
    with seeded_item(7):
        served = again[first_half[-1]][0]
    with seeded_item(7):
        assert torch.equal(served, built[first_half[-1]][0])


def test_the_first_epoch_fills_the_cache_and_training_matches_uncached(zoo_cli, tmp_path, monkeypatch):
    write_folder(tmp_path / "data")
    monkeypatch.setenv("ZOO_CACHE_DIR", str(tmp_path / "cache"))
    common = ["train", "--model", "mnist_net", "--dataset", "imagefolder", "--data", str(tmp_path / "data"),
              "--batch-size", "5", "--epochs", "2", "--device", "cpu"]  # evaluates at each epoch's end
    code, _, err = zoo_cli(*common, "--run-dir", str(tmp_path / "plain"))
    assert code == 0, err
    decodes = {"count": 0}
    original = ImageFolderDataset.decode

    def counted(self, index):
        decodes["count"] += 1
        return original(self, index)

    monkeypatch.setattr(ImageFolderDataset, "decode", counted)  # --workers 0: every decode is counted here
    code, _, err = zoo_cli(*common, "--cache-decoded", "--run-dir", str(tmp_path / "cached"))
    assert code == 0, err
    files = sorted(path.name for path in (tmp_path / "cache").iterdir() if not path.name.endswith(".lock"))
    images = [name for name in files if name.endswith(".u8")]  # train and test, both filled, each with its record
    assert len(images) == 2 and files == sorted(images + [name + ".bad.json" for name in images])
    assert all(json.loads((tmp_path / "cache" / (name + ".bad.json")).read_text()) == {} for name in images)
    assert decodes["count"] == 24 + 4  # each image decoded once: the second epoch read the cache
    a = checkpoint.load_weights(checkpoint.list_steps(tmp_path / "plain")[-1][1])
    b = checkpoint.load_weights(checkpoint.list_steps(tmp_path / "cached")[-1][1])
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_two_runs_sharing_a_filling_cache_both_finish(tmp_path):
    write_folder(tmp_path / "data", count=6)
    dataset = ImageFolderDataset("train", task="classification", data=str(tmp_path / "data"), image_size=32)
    first = DecodedCache(dataset, tmp_path / "cache", fill_on_read=True)
    second = DecodedCache(dataset, tmp_path / "cache", fill_on_read=True)
    for index in range(len(dataset)):
        first[index]
    first.finalize()
    second.finalize()  # the file is already published: nothing to redo, no error
    assert first.complete and second.complete and first.path == second.path
    assert first.path.read_bytes() == DecodedCache(dataset, tmp_path / "built").path.read_bytes()


def test_broken_links_and_hidden_files_are_not_listed_so_the_cache_key_can_stat_every_file(tmp_path):
    write_folder(tmp_path / "data", count=3)
    red = tmp_path / "data" / "train" / "red"
    (red / "zz.png").symlink_to(tmp_path / "missing.png")
    (red / ".hidden.png").write_bytes((red / "00.png").read_bytes())
    (red / "linked.png").symlink_to(red / "00.png")
    dataset = ImageFolderDataset("train", task="classification", data=str(tmp_path / "data"), image_size=32)
    names = sorted(os.path.basename(path) for path, _ in dataset.files)
    assert names == ["00.png", "00.png", "01.png", "01.png", "02.png", "02.png", "linked.png"]
    assert DecodedCache(dataset, tmp_path / "cache").complete


def small_split(tmp_path, count=3):
    """The train split of a small image folder (2 classes x ``count`` images at 16x16)."""
    write_folder(tmp_path / "data", count=count)
    return ImageFolderDataset("train", task="classification", data=str(tmp_path / "data"), image_size=16)


def assert_serves_the_decoded_images(cached, dataset):
    for index in range(len(dataset)):
        assert torch.equal(cached.stored(index), dataset.decode(index))


@pytest.mark.parametrize("fill_on_read", [False, True])
def test_a_cut_short_cache_file_is_named_and_rebuilt(tmp_path, capsys, fill_on_read):
    dataset = small_split(tmp_path)
    built = DecodedCache(dataset, tmp_path / "cache")
    whole = built.path.read_bytes()
    built.path.write_bytes(whole[:1000])
    capsys.readouterr()
    again = DecodedCache(dataset, tmp_path / "cache", fill_on_read=fill_on_read)
    err = capsys.readouterr().err
    assert f"zoo: decoded cache {built.path} is damaged (1000 bytes, expected {len(whole)}); rebuilding it." in err
    if fill_on_read:  # rebuilt as on a first run: the first pass fills it
        assert not again.complete and not again.path.exists()
        for index in range(len(dataset)):
            again[index]
        again.finalize()
    assert again.complete and again.path.read_bytes() == whole
    assert_serves_the_decoded_images(again, dataset)
    assert sorted(p.name for p in (tmp_path / "cache").glob(".*")) == [f".{again.path.name}.lock"]


def test_a_cache_file_cut_short_during_a_run_is_named(tmp_path):
    dataset = small_split(tmp_path, count=2)
    cached = DecodedCache(dataset, tmp_path / "cache")
    cached.path.write_bytes(cached.path.read_bytes()[:100])
    with pytest.raises(RunError, match=f"decoded cache {cached.path} changed during this run"):
        cached.stored(0)


@pytest.mark.parametrize("record", ['{"1": "sample 1: cut', '["sample 1"]', '{"99": "sample 99: unreadable"}',
                                    None])  # None: the record deleted
def test_a_damaged_record_of_unreadable_files_rebuilds_the_cache(tmp_path, capsys, record):
    dataset, broken = folder_with_a_broken_file(tmp_path, 4)
    built = DecodedCache(dataset, tmp_path / "cache")
    whole, bad = built.path.read_bytes(), built.bad
    assert built.bad_path.exists() and list(bad) == [[path for path, _ in dataset.files].index(str(broken))]
    if record is None:
        built.bad_path.unlink()
    else:
        built.bad_path.write_text(record)
    capsys.readouterr()
    again = DecodedCache(dataset, tmp_path / "cache")
    err = capsys.readouterr().err
    assert f"zoo: decoded cache {built.path} is damaged (its record of unreadable files " in err
    assert again.complete and again.bad == bad and again.path.read_bytes() == whole
    assert DecodedCache(dataset, tmp_path / "cache").bad == bad  # the record written again reads back
    with pytest.raises(RunError, match="03.png"):
        again[list(bad)[0]]


def test_a_cut_short_partial_file_is_started_again(tmp_path, capsys):
    dataset = small_split(tmp_path)
    filling = DecodedCache(dataset, tmp_path / "cache", fill_on_read=True)
    for index in range(3):
        filling[index]
    filling._array = filling._flags = None
    filling.partial_path.write_bytes(filling.partial_path.read_bytes()[:500])
    capsys.readouterr()
    again = DecodedCache(dataset, tmp_path / "cache", fill_on_read=True)
    assert f"zoo: partly filled decoded cache {again.partial_path} is damaged (500 bytes" in capsys.readouterr().err
    assert again.missing() == list(range(len(dataset)))  # its flags went with it
    again.finalize()
    assert again.path.read_bytes() == DecodedCache(dataset, tmp_path / "built").path.read_bytes()


def test_training_on_a_cut_short_cache_rebuilds_it_and_matches_uncached(zoo_cli, tmp_path, monkeypatch):
    write_folder(tmp_path / "data", count=4)
    monkeypatch.setenv("ZOO_CACHE_DIR", str(tmp_path / "cache"))
    common = ["train", "--model", "mnist_net", "--dataset", "imagefolder", "--data", str(tmp_path / "data"),
              "--batch-size", "4", "--epochs", "1", "--device", "cpu"]
    code, _, err = zoo_cli(*common, "--run-dir", str(tmp_path / "plain"))
    assert code == 0, err
    code, _, err = zoo_cli(*common, "--cache-decoded", "--run-dir", str(tmp_path / "first"))
    assert code == 0, err
    train_file = next((tmp_path / "cache").glob("*-8x*.u8"))
    size = train_file.stat().st_size
    train_file.write_bytes(train_file.read_bytes()[:size // 2])
    code, _, err = zoo_cli(*common, "--cache-decoded", "--skip-bad-files", "--run-dir", str(tmp_path / "again"))
    assert code == 0, err
    assert f"zoo: decoded cache {train_file} is damaged ({size // 2} bytes, expected {size}); rebuilding it." in err
    assert "skipped" not in err and train_file.stat().st_size == size
    a = checkpoint.load_weights(checkpoint.list_steps(tmp_path / "plain")[-1][1])
    b = checkpoint.load_weights(checkpoint.list_steps(tmp_path / "again")[-1][1])
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_decode_that_raises_os_error_is_a_bad_file_not_a_cache_write_failure(tmp_path, monkeypatch):
    write_folder(tmp_path / "data", count=6)
    dataset = ImageFolderDataset("train", task="classification", data=str(tmp_path / "data"), image_size=32)
    original = ImageFolderDataset.decode

    def decode(self, index):
        if index == 2:
            raise OSError(f"cannot identify image file {self.files[index][0]!r}")  # as PIL says it
        return original(self, index)

    monkeypatch.setattr(ImageFolderDataset, "decode", decode)
    built = DecodedCache(dataset, tmp_path / "cache")
    assert built.complete and list(built.bad) == [2]
    assert "OSError: cannot identify image file" in built.bad[2]
    with pytest.raises(RunError, match="cannot identify image file"):
        built[2]
    assert torch.equal(built.stored(1), original(dataset, 1))


def test_a_new_version_of_the_datasets_plugin_keys_new_caches(tmp_path):
    dataset = small_split(tmp_path)
    first = DecodedCache(dataset, tmp_path / "cache", origin="acme:photos@1.0")
    assert DecodedCache(dataset, tmp_path / "cache", origin="acme:photos@1.0").path == first.path
    assert DecodedCache(dataset, tmp_path / "cache", origin="acme:photos@1.1").path != first.path

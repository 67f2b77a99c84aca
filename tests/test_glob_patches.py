"""glob_patches: patches per image, the held-out split, degradation strengths, each file decoded once; and
the bound on epoch-end checkpoints and grids when epochs are tiny (CPU, all data in tmp_path)."""

from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_datasets import is_crop_of, to_signed_tensor, write_image

from plugins import ops
from plugins.datasets import glob_patches
from plugins.datasets.glob_patches import GlobPatchesDataset
from zoo.config import TrainConfig
from zoo.data import seeded_item
from zoo.engine import checkpoint, schedule
from zoo.engine.cache import DecodedCache
from zoo.engine.rundir import prepare_new
from zoo.engine.trainer import Trainer
from zoo.errors import UsageError
from zoo.registry import discover


@pytest.fixture
def photos(tmp_path):
    """12 random RGB PNGs of 40x36 in tmp_path/photos/."""
    for i in range(12):
        write_image(tmp_path / "photos" / f"p{i:02d}.png", 40, 36, seed=100 + i)
    return tmp_path / "photos"


def patches(split: str, folder: Path, **options) -> GlobPatchesDataset:
    return GlobPatchesDataset(split, task="image_to_image", data=str(folder / "*.png"), **options)


def names(dataset: GlobPatchesDataset) -> list[str]:
    return [Path(path).name for path, _ in dataset.pairs]


def item(dataset: GlobPatchesDataset, index: int, seed: int = 7) -> tuple[torch.Tensor, torch.Tensor]:
    with seeded_item(seed):  # as the engine loads it: the item's own generator
        return dataset[index]


# ----------------------------------------------------------------------------- patches per image


def test_an_epoch_is_every_file_times_its_patches_by_default_the_tiles_of_the_first_file(photos):
    train, test = patches("train", photos, patch_size=16), patches("test", photos, patch_size=16)
    assert train.patches_per_image == test.patches_per_image == (40 // 16) * (36 // 16)  # 4 tiles
    assert (len(train), len(test)) == (10 * 4, 2 * 4)
    assert len(patches("train", photos, patch_size=16, patches_per_image=3)) == 30
    assert glob_patches.default_patches_per_image(1000, 872, 64) == 15 * 13  # the photos: 195
    assert glob_patches.default_patches_per_image(4000, 3000, 64) == glob_patches.MAX_DEFAULT_PATCHES
    assert glob_patches.default_patches_per_image(64, 64, 64) == 1


def test_training_patches_come_from_their_file_and_repeat_exactly_from_the_item_seed(photos):
    train = patches("train", photos, patch_size=16, patches_per_image=5)
    for index in (0, 4, 5, 23):
        source = to_signed_tensor(np.asarray(Image.open(train.pairs[index // 5][0])))
        degraded, clean = item(train, index, seed=index)
        assert is_crop_of(clean, source) and not torch.equal(degraded, clean)
        again = item(patches("train", photos, patch_size=16, patches_per_image=5), index, seed=index)
        assert torch.equal(again[0], degraded) and torch.equal(again[1], clean)
    crops = {tuple(item(train, index, seed=index)[1].flatten().tolist()) for index in range(5)}  # one file's
    assert len(crops) == 5


def test_test_patches_are_fixed_on_a_grid_over_each_file(photos):
    test = patches("test", photos, patch_size=16, patches_per_image=4)
    source = to_signed_tensor(np.asarray(Image.open(test.pairs[1][0])))
    corners = [glob_patches.fixed_patch_corner(k, 4, 36, 40, 16) for k in range(4)]
    assert corners == [(5, 6), (5, 18), (15, 6), (15, 18)]  # cell centres of a 2 x 2 grid
    for k, (top, left) in enumerate(corners):
        first, clean = test[4 + k]
        assert torch.equal(clean, source[:, top:top + 16, left:left + 16])
        again = patches("test", photos, patch_size=16, patches_per_image=4)[4 + k]
        assert torch.equal(again[0], first) and torch.equal(again[1], clean)
    assert glob_patches.fixed_patch_corner(0, 1, 36, 40, 16) == (10, 12)  # one patch: the centre crop


# ----------------------------------------------------------------------------- holdout


def test_holdout_sets_which_files_test(photos):
    assert names(patches("test", photos, patch_size=8)) == ["p00.png", "p10.png"]  # default: every 10th
    test, train = patches("test", photos, patch_size=8, holdout=3), patches("train", photos, patch_size=8, holdout=3)
    assert names(test) == ["p00.png", "p03.png", "p06.png", "p09.png"]
    assert sorted(names(test) + names(train)) == [f"p{i:02d}.png" for i in range(12)]
    everything = [f"p{i:02d}.png" for i in range(12)]
    assert names(patches("train", photos, patch_size=8, holdout=0)) == everything
    assert names(patches("test", photos, patch_size=8, holdout=0)) == everything
    with pytest.raises(UsageError) as info:
        patches("train", photos, patch_size=8, holdout=1)
    assert "\n" not in str(info.value) and "holdout=0" in str(info.value)


# ----------------------------------------------------------------------------- degradation strengths


@pytest.fixture
def grey(tmp_path):
    """One mid-grey 64x64 PNG: noise on it is never clipped."""
    (tmp_path / "grey").mkdir()
    Image.new("RGB", (64, 64), (128, 128, 128)).save(tmp_path / "grey" / "g.png")
    return tmp_path / "grey"


@pytest.mark.parametrize("sigma", [0.05, 0.3])
def test_noise_sigma_is_the_noise_standard_deviation(grey, sigma):
    test = patches("test", grey, patch_size=64, patches_per_image=1, noise_sigma=sigma)
    degraded, clean = test[0]
    assert float((degraded - clean).std()) == pytest.approx(sigma, rel=0.05)


@pytest.mark.parametrize("kind, option, amount", [("blur", "blur_sigma", 2.5), ("downscale", "scale", 4.0)])
def test_blur_sigma_and_scale_set_their_degradation(photos, kind, option, amount):
    chosen = patches("test", photos, patch_size=16, patches_per_image=1, degrade=kind, **{option: amount})
    default = patches("test", photos, patch_size=16, patches_per_image=1, degrade=kind)
    degraded, clean = chosen[0]
    assert torch.equal(degraded, ops.degrade_by(clean, kind, amount))
    assert not torch.equal(degraded, default[0][0])

    def detail(image: torch.Tensor) -> float:  # what a stronger blur or downscale takes away
        return float((image[..., 1:] - image[..., :-1]).abs().mean())
    assert detail(degraded) < detail(default[0][0]) < detail(clean)


@pytest.mark.parametrize("kind", ops.DEGRADE_KINDS)
def test_the_default_strengths_degrade_as_before_they_were_options(photos, kind):
    clean = to_signed_tensor(np.asarray(Image.open(photos / "p00.png")))[:, 10:26, 12:28]
    degraded, target = patches("test", photos, patch_size=16, patches_per_image=1, degrade=kind)[0]
    assert torch.equal(target, clean)
    assert torch.equal(degraded, ops.degrade(clean, kind, generator=torch.Generator().manual_seed(0)))


@pytest.mark.parametrize("options, says", [
    (dict(noise_sigma=0.1, degrade="blur"), "noise_sigma=0.1 sets degrade=noise, but degrade is blur"),
    (dict(scale=40.0, degrade="downscale"), "scale=40.0 is larger than the 16px patch: use scale=16 or less"),
    (dict(blur_sigma=2.0, target="SELF"), "blur_sigma=2.0 has no effect: inputs paired with target= are not"),
])
def test_a_strength_that_would_do_nothing_is_refused_in_one_line(photos, options, says):
    if options.get("target") == "SELF":
        options["target"] = str(photos / "*.png")
    with pytest.raises(UsageError) as info:
        patches("train", photos, patch_size=16, **options)
    assert says in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("option, says", [
    ("noise_sigma=2", "noise_sigma"), ("blur_sigma=-1", "blur_sigma"), ("scale=0.5", "scale"),
    ("patches_per_image=0", "patches_per_image"), ("holdout=-2", "holdout")])
def test_values_out_of_range_are_usage_errors(zoo_cli, photos, tmp_path, option, says):
    code, _, err = zoo_cli("train", "--model", "resnet_i2i", "--dataset", "glob_patches", "--data",
                           str(photos / "*.png"), "--dataset-opt", option, "--device", "cpu", "--max-steps", "1",
                           "--run-dir", str(tmp_path / "run"))
    lines = [line for line in err.splitlines() if line.startswith("zoo: error:")]
    assert code == 2 and len(lines) == 1 and says in lines[0], err
    assert "Traceback" not in err and not (tmp_path / "run").exists()


# ----------------------------------------------------------------------------- decoded once


@pytest.fixture
def count_decodes(monkeypatch):
    """Counts ``ops.load_image`` calls by file name."""
    counts: dict[str, int] = {}
    load = ops.load_image

    def counting(path, *args, **kwargs):
        counts[Path(path).name] = counts.get(Path(path).name, 0) + 1
        return load(path, *args, **kwargs)
    monkeypatch.setattr(ops, "load_image", counting)
    return counts


@pytest.mark.parametrize("sizes", [[(40, 36)] * 3, [(40, 36), (52, 33), (33, 47)]], ids=["same", "different"])
def test_the_decoded_cache_decodes_each_file_once_and_gives_the_same_items(tmp_path, count_decodes, sizes):
    for i, (width, height) in enumerate(sizes):
        write_image(tmp_path / "mixed" / f"m{i}.png", width, height, seed=i)
    options = dict(patch_size=16, patches_per_image=6, holdout=0)
    plain = [item(patches("train", tmp_path / "mixed", **options), i, seed=i) for i in range(18)]
    count_decodes.clear()
    cache = DecodedCache(patches("train", tmp_path / "mixed", **options), tmp_path / "cache", fill_on_read=True)
    first = [item(cache, i, seed=i) for i in range(18)]  # the first epoch fills it
    cache.finalize()
    later = [item(cache, i, seed=i) for i in range(18)]
    again = DecodedCache(patches("train", tmp_path / "mixed", **options), tmp_path / "cache")  # the next run
    assert again.complete
    reused = [item(again, i, seed=i) for i in range(18)]
    assert count_decodes == {"m0.png": 1, "m1.png": 1, "m2.png": 1}
    for items in (first, later, reused):
        assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(items, plain))


def test_without_the_cache_each_process_decodes_a_file_once_for_its_patches(photos, count_decodes):
    train = patches("train", photos, patch_size=8, patches_per_image=20)
    for index in torch.randperm(len(train), generator=torch.Generator().manual_seed(0)).tolist():
        item(train, index, seed=index)
    assert sorted(count_decodes.values()) == [1] * 10


def test_a_run_trains_on_the_decoded_cache(zoo_cli, photos, tmp_path, monkeypatch):
    monkeypatch.setenv("ZOO_CACHE_DIR", str(tmp_path / "cache"))
    code, _, err = zoo_cli("train", "--model", "resnet_i2i", "--model-opt", "ngf=8", "--model-opt", "blocks=1",
                           "--dataset", "glob_patches", "--data", str(photos / "*.png"), "--dataset-opt",
                           "patch_size=16", "--cache-decoded", "--device", "cpu", "--batch-size", "8",
                           "--epochs", "1", "--run-dir", str(tmp_path / "run"))
    assert code == 0, err
    assert "done at step 5 (--epochs 1 reached)" in err  # 10 files x 4 patches, batch 8
    cached = sorted(p.name.split("-", 1)[1] for p in (tmp_path / "cache").glob("*.u8"))
    assert cached == ["10x3x36x40.u8", "2x3x36x40.u8"]  # the files of each split at full size, once each


# ----------------------------------------------------------------------------- periodic work on tiny epochs

STEPS = 30
SAVE_SECONDS = 0.1  # each checkpoint made to take at least this long, so the bound below holds on any machine


def tiny_epochs(run_dir: Path) -> TrainConfig:
    """4 training samples in batches of 4: every step ends an epoch; the default hooks (grids) are on."""
    return TrainConfig(model="resnet_i2i", loss="l1", model_opt={"ngf": 8, "blocks": 1}, dataset="shapes",
                       dataset_opt={"train_count": 4, "test_count": 8, "size": 16}, batch_size=4, device="cpu",
                       max_steps=STEPS, log_every=STEPS, eval_every=0, run_dir=str(run_dir))


@pytest.fixture
def one_thread():
    """A model this small trains fastest on one thread (and on a busy machine, by far)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_tiny_epochs_write_few_checkpoints_and_grids_and_resume_exactly(tmp_path, monkeypatch, one_thread):
    registry, saved = discover(), []
    write = checkpoint.save

    def slow_save(run_dir, step, *args, **kwargs):
        saved.append(step)
        time.sleep(SAVE_SECONDS)
        return write(run_dir, step, *args, **kwargs)
    monkeypatch.setattr(checkpoint, "save", slow_save)
    run = tmp_path / "run"
    prepare_new(run, overwrite=True)
    began = time.perf_counter()
    straight = Trainer(tiny_epochs(run), registry, run)
    straight.fit()
    seconds = time.perf_counter() - began
    assert saved[0] == 1 and saved[-1] == STEPS  # the first epoch's end and the run's end always
    # epoch-end checkpoints at least 49 checkpoints' time apart (2% of the run's time)
    assert len(saved) - 1 <= 1 + seconds / ((1 / schedule.SAVE_SHARE - 1) * SAVE_SECONDS)
    assert len(saved) < STEPS / 4, saved
    grids = sorted(p.name for p in (run / "samples").glob("step-*.png"))
    assert "step-1.png" in grids and f"step-{STEPS}.png" in grids and len(grids) <= 2 + STEPS // 10, grids
    assert len(checkpoint.list_steps(run)) <= tiny_epochs(run).keep  # pruned as ever

    resumed = tmp_path / "resumed"  # the same run stopped after its newest epoch-end checkpoint
    shutil.copytree(run, resumed)
    shutil.rmtree(checkpoint.list_steps(resumed)[-1][1])
    from_step = checkpoint.list_steps(resumed)[-1][0]
    assert 1 <= from_step < STEPS
    Trainer(tiny_epochs(resumed), registry, resumed, resume=True).fit()
    a, b = (checkpoint.load_weights(checkpoint.list_steps(folder)[-1][1]) for folder in (run, resumed))
    assert a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a), f"resumed from {from_step}"
    epochs = [json.loads(line)["epoch"] for line in (resumed / "metrics.jsonl").read_text().splitlines()]
    assert epochs and math.isclose(epochs[-1], STEPS)


def test_the_save_budget_spaces_epoch_end_checkpoints_by_49_times_the_last_ones_cost():
    now = [10.0]
    budget = schedule.SaveBudget(clock=lambda: now[0])
    assert budget.allows()  # nothing written yet: the first epoch's end has one
    with budget.charged():
        now[0] += 0.1  # the checkpoint took 0.1 s
    now[0] += 4.7
    assert not budget.allows()  # 0.1 s of 4.8 s is over 2%
    now[0] += 0.2
    assert budget.allows()  # 0.1 s of 5.0 s is under 2%
    with budget.charged():
        now[0] += 0.01  # a quicker one: the next may follow sooner
    now[0] += 0.5
    assert budget.allows()


# ----------------------------------------------------------------------------- --augment


@pytest.fixture
def pattern(tmp_path):
    """Two 40x36 RGB PNGs, each with an asymmetric pattern (an L in one corner on a two-way ramp), in
    tmp_path/pattern/, and the same files again in tmp_path/clean/ (paired targets equal to their inputs)."""
    ys, xs = np.mgrid[0:36, 0:40]
    for i in range(2):
        pixels = np.stack([xs * 6, ys * 7, np.full_like(xs, 60 + 100 * i)], axis=-1).astype(np.uint8)
        pixels[4:20, 4:8] = pixels[16:20, 4:16] = 255
        for folder in ("pattern", "clean"):
            (tmp_path / folder).mkdir(exist_ok=True)
            Image.fromarray(pixels).save(tmp_path / folder / f"a{i}.png")
    return tmp_path / "pattern"


@pytest.mark.parametrize("options", [dict(target="CLEAN"), dict(noise_sigma=0.0)], ids=["paired", "degraded"])
def test_strong_augments_input_and_target_alike(pattern, options):
    if options.get("target") == "CLEAN":
        options = dict(target=str(pattern.parent / "clean" / "*.png"))
    strong = patches("train", pattern, patch_size=16, patches_per_image=4, holdout=0, augment="strong", **options)
    plain = patches("train", pattern, patch_size=16, patches_per_image=4, holdout=0, **options)
    assert (strong.augment, plain.augment) == ("strong", "none")
    changed = 0
    for index in range(len(strong)):
        augmented, target = item(strong, index, seed=index)
        assert augmented.shape == target.shape == (3, 16, 16)
        assert torch.equal(augmented, target)  # the same crop, flip, colours and operation on both
        crop = item(plain, index, seed=index)[1]  # the same patch, un-augmented
        changed += not torch.equal(target, crop)
    assert changed >= len(strong) - 1  # strong changes (nearly) every patch


def test_augmented_patches_repeat_from_the_item_seed_and_the_test_split_is_never_augmented(photos):
    train = patches("train", photos, patch_size=16, patches_per_image=5, augment="strong", degrade="blur")
    for index in (0, 7, 23):
        first = item(train, index, seed=index)
        again = item(patches("train", photos, patch_size=16, patches_per_image=5, augment="strong",
                             degrade="blur"), index, seed=index)  # a resumed run rebuilds the dataset
        assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
        other = item(train, index, seed=index + 100)
        assert not torch.equal(first[1], other[1])
    test = patches("test", photos, patch_size=16, patches_per_image=4, augment="strong")
    plain = patches("test", photos, patch_size=16, patches_per_image=4)
    assert test.augment == "none"
    for index in range(len(test)):
        ours, theirs = item(test, index, seed=index), item(plain, index, seed=index + 1)
        assert torch.equal(ours[0], theirs[0]) and torch.equal(ours[1], theirs[1])
    with pytest.raises(ValueError, match="augment must be one of"):
        patches("train", photos, patch_size=16, augment="wild")


def test_zoo_info_and_a_run_take_the_augment_presets(zoo_cli, photos, tmp_path, monkeypatch):
    code, out, err = zoo_cli("info", "glob_patches")
    assert code == 0, err
    line, = [line for line in out.splitlines() if line.strip().startswith("--augment:")]
    assert all(preset in line for preset in ("none", "flip", "standard", "strong"))
    monkeypatch.chdir(tmp_path)
    code, printed, err = zoo_cli("train", "--model", "resnet_i2i", "--dataset", "glob_patches", "--data",
                                 str(photos / "*.png"), "--dataset-opt", "patch_size=16", "--batch-size", "8",
                                 "--augment", "strong", "--print-config")
    assert code == 0, err
    assert any(line.startswith('augment = "strong"') for line in printed.splitlines())

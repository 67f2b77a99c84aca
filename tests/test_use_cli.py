"""`zoo sample` and `zoo predict` through the real click app, in-process, on tiny runs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from zoo import api
from zoo.config import TrainConfig
from zoo.engine.rundir import prepare_new
from zoo.engine.trainer import Trainer
from zoo.registry import get_registry

SHAPE_CLASSES = {"circle", "square", "triangle", "cross"}


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("zoo: error")]


def make_run(run_dir: Path, **values) -> Path:
    """Train a tiny run on the CPU (4 steps, checkpoints at steps 2 and 4)."""
    settings = dict(dataset_opt={"train_count": 32, "test_count": 8}, batch_size=8, log_every=2, device="cpu",
                    max_steps=4, save_every=2, eval_every=0, no_hooks=["tensorboard", "samples"],
                    run_dir=str(run_dir))
    settings.update(values)
    prepare_new(run_dir, overwrite=True)
    Trainer(TrainConfig(**settings), get_registry(), run_dir, command_line=["zoo", "test-use"]).fit()
    return run_dir


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("use")
    return {
        "gan": make_run(root / "gan", model="dcgan", model_opt={"ngf": 8, "ndf": 8, "nz": 16}),
        "classifier": make_run(root / "classifier", model="mnist_net"),
        "i2i": make_run(root / "i2i", model="resnet_i2i", loss="l1", model_opt={"ngf": 8, "blocks": 1}),
    }


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"), dtype=np.int16)


# ------------------------------------------------------------------ zoo sample
def test_sample_writes_a_grid_under_the_run_and_prints_its_path(zoo_cli, runs):
    code, out, err = zoo_cli("sample", "--run", str(runs["gan"]), "-n", "4", "--device", "cpu")
    assert code == 0, err
    grid = runs["gan"] / "samples" / "sample-seed0.png"
    assert out.strip() == str(grid)
    with Image.open(grid) as image:
        assert image.size == (2 * 34 + 2, 2 * 34 + 2)  # 2 x 2 images of 32 px, 2 px padding


def test_sample_seed_gives_identical_bytes_and_another_seed_other_images(zoo_cli, runs, tmp_path):
    files = {}
    for name, seed in (("a", "3"), ("b", "3"), ("c", "4")):
        files[name] = tmp_path / f"{name}.png"
        code, out, err = zoo_cli("sample", "--run", str(runs["gan"]), "-n", "9", "--seed", seed,
                             "--out", str(files[name]), "--device", "cpu")
        assert code == 0, err
        assert out.strip() == str(files[name])
    assert files["a"].read_bytes() == files["b"].read_bytes()
    assert files["a"].read_bytes() != files["c"].read_bytes()


def test_sample_each_writes_single_images_and_step_picks_a_checkpoint(zoo_cli, runs, tmp_path):
    code, out, err = zoo_cli("sample", "--run", str(runs["gan"]), "-n", "3", "--each", str(tmp_path / "one"),
                         "--device", "cpu")
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "one").iterdir()) == ["0000.png", "0001.png", "0002.png"]
    with Image.open(tmp_path / "one" / "0000.png") as image:
        assert image.size == (32, 32) and image.mode == "RGB"
    assert out.splitlines() == [f"wrote 3 images to {tmp_path / 'one'}/ (0000.png ... 0002.png)"]  # no grid
    code, _, err = zoo_cli("sample", "--run", str(runs["gan"]), "-n", "3", "--each", str(tmp_path / "early"),
                       "--step", "2", "--device", "cpu")
    assert code == 0, err
    assert (tmp_path / "one" / "0000.png").read_bytes() != (tmp_path / "early" / "0000.png").read_bytes()
    code, _, err = zoo_cli("sample", "--run", str(runs["gan"]), "--step", "3")
    assert code == 2 and "no checkpoint of step 3" in err and len(error_lines(err)) == 1


def test_interpolate_walks_from_one_sample_to_another(zoo_cli, runs, tmp_path):
    from plugins.models.dcgan import DCGAN
    from zoo.recipe import Recipe
    if getattr(DCGAN, "generate", None) in (None, getattr(Recipe, "generate", None)):
        pytest.skip("DCGAN defines no generate(inputs) yet, so it cannot interpolate")
    code, out, err = zoo_cli("sample", "--run", str(runs["gan"]), "--interpolate", "-n", "5", "--seed", "7",
                         "--each", str(tmp_path / "walk"), "--out", str(tmp_path / "walk.png"), "--device", "cpu")
    assert code == 0, err
    assert (tmp_path / "walk.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    walk = sorted((tmp_path / "walk").iterdir())
    assert len(walk) == 5
    code, _, err = zoo_cli("sample", "--run", str(runs["gan"]), "-n", "2", "--seed", "7",
                       "--each", str(tmp_path / "ends"), "--device", "cpu")
    assert code == 0, err
    first, last = sorted((tmp_path / "ends").iterdir())
    assert np.abs(pixels(walk[0]) - pixels(first)).max() <= 1  # the walk starts and ends at two samples
    assert np.abs(pixels(walk[-1]) - pixels(last)).max() <= 1
    code, _, err = zoo_cli("sample", "--run", str(runs["gan"]), "--interpolate", "-n", "1")
    assert code == 2 and "-n 2 or more" in err


def test_slerp_walks_the_great_circle_between_its_ends():
    import torch

    from train_cli.sample import _slerp
    a, b = torch.randn(2, 16, 1, 1, generator=torch.Generator().manual_seed(0))
    b = b * (a.norm() / b.norm())  # equal norms: equal angles and norms along the walk
    walk = _slerp(a, b, 5)
    assert walk.shape == (5, 16, 1, 1)
    assert torch.allclose(walk[0], a, atol=1e-6) and torch.allclose(walk[-1], b, atol=1e-6)
    angle = lambda x, y: torch.arccos(torch.nn.functional.cosine_similarity(x.flatten(), y.flatten(), dim=0))
    steps = [angle(walk[i], walk[i + 1]).item() for i in range(4)]
    assert max(steps) - min(steps) < 1e-4  # equal angular steps
    assert torch.allclose(walk.flatten(1).norm(dim=1), a.norm().expand(5), atol=1e-5)
    assert torch.allclose(_slerp(a, 2 * a, 3)[1], 1.5 * a, atol=1e-6)  # parallel ends: a straight line


@pytest.mark.parametrize("generate", ["base", "absent"])
def test_interpolate_needs_a_recipe_that_can_generate(zoo_cli, runs, monkeypatch, generate):
    from plugins.models.dcgan import DCGAN
    from zoo.recipe import Recipe
    if generate == "base":  # the base class's default: generate(inputs) returns None
        monkeypatch.setattr(DCGAN, "generate", lambda self, inputs: Recipe.generate(self, inputs)
                            if hasattr(Recipe, "generate") else None)
    else:
        monkeypatch.setattr(DCGAN, "generate", None, raising=False)
    code, _, err = zoo_cli("sample", "--run", str(runs["gan"]), "--interpolate", "-n", "4", "--device", "cpu")
    assert code == 2 and "cannot interpolate" in err and len(error_lines(err)) == 1


# ------------------------------------------------------------------ zoo predict
def _test_images(run_dir: Path, folder: Path, count: int = 3, prefix: str = "") -> list[Path]:
    """Inputs of the run's own test split written as PNG files."""
    run = api.load_run(run_dir)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(count):
        path = folder / f"{prefix}{index}.png"
        api.to_image(run.test_set[index][0]).save(path)
        paths.append(path)
    return paths


def test_predict_classifier_json_names_the_top_classes(zoo_cli, runs, tmp_path):
    images = _test_images(runs["classifier"], tmp_path / "in")
    code, out, err = zoo_cli("predict", "--run", str(runs["classifier"]), *map(str, images),
                         "--top-k", "2", "--json", "--device", "cpu")
    assert code == 0, err
    result = json.loads(out)
    assert result["step"] == 4 and result["task"] == "classification"
    assert [p["image"] for p in result["predictions"]] == [str(p) for p in images]
    for record in result["predictions"]:
        top = record["top_k"]
        assert len(top) == 2 and {t["class"] for t in top} <= SHAPE_CLASSES
        assert top[0]["probability"] >= top[1]["probability"] and sum(t["probability"] for t in top) <= 1 + 1e-6
    code, out, err = zoo_cli("predict", "--run", str(runs["classifier"]), str(images[0]), "--json",
                         "--device", "cpu")
    top = json.loads(out)["predictions"][0]["top_k"]
    assert {t["class"] for t in top} == SHAPE_CLASSES  # top-5 of 4 classes: all of them
    assert sum(t["probability"] for t in top) == pytest.approx(1.0)
    run = api.load_run(runs["classifier"])
    logits = run.predict(run.preprocess(images[0])[None])
    assert top[0]["class"] == run.classes[int(logits.argmax())]


def test_predict_classifier_table(zoo_cli, runs, tmp_path):
    images = _test_images(runs["classifier"], tmp_path / "in", count=2)
    code, out, err = zoo_cli("predict", "--run", str(runs["classifier"]), *map(str, images), "--top-k", "3")
    assert code == 0, err
    lines = out.splitlines()
    assert len(lines) == 6 and lines[0].startswith(str(images[0])) and lines[3].startswith(str(images[1]))
    assert all(line.split()[-2] in SHAPE_CLASSES for line in lines)


def test_predict_image_to_image_writes_restored_images_with_the_input_names(zoo_cli, runs, tmp_path):
    images = _test_images(runs["i2i"], tmp_path / "noisy", prefix="noisy-")
    out_dir = tmp_path / "restored"
    code, out, err = zoo_cli("predict", "--run", str(runs["i2i"]), *map(str, images), "--out", str(out_dir),
                         "--device", "cpu")
    assert code == 0, err
    assert sorted(p.name for p in out_dir.iterdir()) == ["noisy-0.png", "noisy-1.png", "noisy-2.png"]
    assert f"{images[0]} -> {out_dir / 'noisy-0.png'}" in out
    with Image.open(out_dir / "noisy-0.png") as image:
        assert image.size == (32, 32) and image.mode == "RGB"
    code, out, err = zoo_cli("predict", "--run", str(runs["i2i"]), str(images[1]), "--json", "--device", "cpu")
    assert code == 0, err
    default = runs["i2i"] / "predictions" / "noisy-1.png"
    assert json.loads(out)["predictions"] == [{"image": str(images[1]), "output": str(default)}]
    assert default.read_bytes() == (out_dir / "noisy-1.png").read_bytes()
    code, _, err = zoo_cli("predict", "--run", str(runs["i2i"]), str(images[0]), "--out", str(tmp_path / "noisy"))
    assert code == 2 and "would overwrite the input" in err


def test_predict_restores_whole_images_at_their_size_unless_asked_to_crop(zoo_cli, runs, tmp_path):
    run = api.load_run(runs["i2i"])
    rng = np.random.default_rng(0)
    photo = tmp_path / "in" / "wide.png"
    photo.parent.mkdir()
    Image.fromarray(rng.integers(0, 255, (61, 71, 3), dtype=np.uint8)).save(photo)
    code, _, err = zoo_cli("predict", "--run", str(runs["i2i"]), str(photo), "--out", str(tmp_path / "whole"),
                           "--device", "cpu")  # compared bit for bit with the CPU's result below
    assert code == 0, err
    with Image.open(tmp_path / "whole" / "wide.png") as image:
        assert image.size == (71, 61)
        restored = np.array(image)
    expected = api.to_image(run.predict(run.preprocess(photo, whole=True)[None])[0])  # the model on all of it
    assert np.array_equal(restored, np.array(expected))
    code, _, err = zoo_cli("predict", "--run", str(runs["i2i"]), str(photo), "--crop", "--out", str(tmp_path / "crop"),
                           "--device", "cpu")
    assert code == 0, err
    with Image.open(tmp_path / "crop" / "wide.png") as image:
        assert image.size == (32, 32)


@pytest.mark.parametrize("command, run, extra, message", [
    ("sample", "classifier", [], "use 'zoo predict --run"),
    ("sample", "i2i", [], "use 'zoo predict --run"),
    ("predict", "gan", ["IMAGE"], "use 'zoo sample --run"),
    ("predict", "classifier", ["missing.png"], "missing.png does not exist"),
    ("predict", "classifier", ["text.png"], "cannot read image"),
    ("predict", "classifier", ["IMAGE", "--out", "somewhere"], "--out is for image-to-image runs"),
    ("predict", "classifier", ["IMAGE", "--crop"], "--crop is for image-to-image runs"),
    ("predict", "i2i", ["IMAGE", "--top-k", "2"], "--top-k is for classifiers"),
    ("sample", "gan", ["--out", "grid.txt"], "no image extension"),
    ("sample", "missing", [], "does not exist"),
    ("predict", "classifier", [""], "an IMAGE argument is an empty path"),
    ("predict", "i2i", ["IMAGE", "--out", ""], "--out was given an empty path"),
    ("sample", "gan", ["--out", ""], "--out was given an empty path"),
    ("test", "", [], "--run was given an empty path"),
])
def test_errors_are_one_line_usage_errors(zoo_cli, runs, tmp_path, command, run, extra, message):
    image = _test_images(runs["classifier"], tmp_path, count=1)[0]
    (tmp_path / "text.png").write_text("not an image")
    values = {"IMAGE": str(image), "missing.png": str(tmp_path / "missing.png"),
              "text.png": str(tmp_path / "text.png"), "grid.txt": str(tmp_path / "grid.txt"),
              "somewhere": str(tmp_path / "somewhere")}
    run_dir = runs.get(run, tmp_path / "missing-run") if run else ""
    code, out, err = zoo_cli(command, "--run", str(run_dir), *[values.get(a, a) for a in extra],
                         "--device", "cpu")
    assert code == 2, err
    assert message in err
    assert len(error_lines(err)) == 1 and "Traceback" not in err and not out


def test_non_finite_results_are_written_as_standard_json(zoo_cli, tmp_path):
    """NaN weights give NaN metrics and probabilities: null in every JSON zoo writes, with a warning."""
    import torch
    from safetensors.torch import load_file, save_file

    run = tmp_path / "run"
    code, _, err = zoo_cli("train", "--model", "mnist_net", "--device", "cpu", "--batch-size", "4", "--max-steps", "2",
                           "--dataset-opt", "train_count=8", "--dataset-opt", "test_count=4", "--run-dir", str(run))
    assert code == 0, err
    weights = run / "checkpoints" / "step-2" / "model.safetensors"
    save_file({key: torch.full_like(value, float("nan")) for key, value in load_file(weights).items()}, weights)
    code, out, err = zoo_cli("test", "--run", str(run), "--json")
    assert code == 0 and "gives non-finite metrics" in err
    assert json.loads(out)["metrics"]["loss"] is None
    saved = (run / "test-metrics.json").read_text()
    assert "NaN" not in saved and json.loads(saved)["metrics"]["loss"] is None
    image = tmp_path / "digit.png"
    Image.new("L", (28, 28), 128).save(image)
    code, out, err = zoo_cli("predict", "--run", str(run), "--json", str(image))
    assert code == 0, err
    assert "NaN" not in out and json.loads(out)["predictions"][0]["top_k"][0]["probability"] is None


def test_restored_images_are_png_files_announced_as_they_are_written(zoo_cli, runs, tmp_path):
    """Any input format gives a lossless PNG; an input the model cannot take stops the run naming it, after
    the outputs already written were listed."""
    rng = np.random.default_rng(1)
    folder = tmp_path / "in"
    folder.mkdir()
    pixels_in = rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)
    Image.fromarray(pixels_in).save(folder / "photo.jpg", quality=80)
    Image.fromarray(pixels_in).save(folder / "NOEXT", format="PNG")
    Image.fromarray(pixels_in[:2, :3]).save(folder / "tiny.png")
    out_dir = tmp_path / "out"
    code, out, err = zoo_cli("predict", "--run", str(runs["i2i"]), str(folder / "photo.jpg"), str(folder / "NOEXT"),
                             str(folder / "tiny.png"), "--out", str(out_dir), "--device", "cpu")
    assert code == 2
    assert out.splitlines() == [f"{folder / 'photo.jpg'} -> {out_dir / 'photo.png'}",
                                f"{folder / 'NOEXT'} -> {out_dir / 'NOEXT.png'}"]
    assert error_lines(err) == [f"zoo: error: {folder / 'tiny.png'}: the image is 3x2; model 'resnet_i2i' restores "
                                f"images of at least 4 pixels a side (or pass --crop to resize to the training size)."]
    for name in ("photo.png", "NOEXT.png"):
        with Image.open(out_dir / name) as image:
            assert image.format == "PNG" and image.size == (24, 20)
    code, _, err = zoo_cli("predict", "--run", str(runs["i2i"]), str(folder / "tiny.png"), "--crop",
                           "--out", str(out_dir), "--device", "cpu")
    assert code == 0, err
    Image.fromarray(pixels_in).save(tmp_path / "photo.png")
    code, _, err = zoo_cli("predict", "--run", str(runs["i2i"]), str(folder / "photo.jpg"),
                           str(tmp_path / "photo.png"), "--out", str(out_dir), "--device", "cpu")
    assert code == 2 and "would both be restored as photo.png" in err


def test_whole_images_are_only_for_models_that_take_any_size(runs, tmp_path):
    image = _test_images(runs["classifier"], tmp_path, count=1)[0]
    run = api.load_run(runs["classifier"])
    with pytest.raises(api.UsageError, match="whole=True is for models that take any image size; model 'mnist_net'"):
        run.preprocess(image, whole=True)


def test_records_zoo_reads_back_keep_infinities_and_reports_write_null(tmp_path):
    from zoo.engine.rundir import write_json
    write_json(tmp_path / "config.json", {"model_opt": {"weight": float("inf")}})
    assert json.loads((tmp_path / "config.json").read_text())["model_opt"]["weight"] == float("inf")
    write_json(tmp_path / "report.json", {"loss": float("nan"), "parts": [float("-inf"), 1.5]}, report=True)
    assert json.loads((tmp_path / "report.json").read_text(), parse_constant=lambda name: pytest.fail(name)) == {
        "loss": None, "parts": [None, 1.5]}


def test_zoo_test_of_a_classifier_writes_its_confusion_matrix_and_per_class_accuracy(zoo_cli, runs):
    """The matrix agrees with the evaluation: its diagonal share is the accuracy, its rows the test split's labels."""
    run = runs["classifier"]
    code, out, err = zoo_cli("test", "--run", str(run), "--json")
    assert code == 0, err
    result = json.loads(out)
    record = json.loads((run / "confusion.json").read_text())
    matrix = np.array(record["matrix"])
    assert set(record["classes"]) == SHAPE_CLASSES and matrix.shape == (4, 4)
    assert matrix.sum() == result["samples"] == 8
    assert np.trace(matrix) / matrix.sum() == pytest.approx(result["metrics"]["accuracy"])
    labels = [item[1] for item in api.load_run(run).test_set]
    assert matrix.sum(axis=1).tolist() == [labels.count(i) for i in range(4)]
    for index, name in enumerate(record["classes"]):
        figures = result["per_class"][name]
        assert figures["support"] == matrix[index].sum() and figures["predicted"] == matrix[:, index].sum()
        assert figures["accuracy"] == (matrix[index, index] / matrix[index].sum() if matrix[index].sum() else None)
    with Image.open(run / "confusion.png") as picture:
        assert picture.width > 4 * 28 and picture.height > 4 * 28
    code, out, err = zoo_cli("test", "--run", str(run))
    assert "per class:" in out and f"confusion matrix: {run / 'confusion.png'}" in out
    assert f"| test (step {result['step']}) |" in (run / "README.md").read_text()  # the card has the test too


def test_zoo_test_of_a_generative_run_has_no_confusion_matrix(zoo_cli, runs):
    code, out, err = zoo_cli("test", "--run", str(runs["gan"]), "--json")
    assert code == 0, err
    assert "per_class" not in json.loads(out) and not (runs["gan"] / "confusion.json").exists()

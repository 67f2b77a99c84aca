"""`zoo export` through the real click app, in-process, on tiny runs: each task in a format, its file run by its
own runtime on batch sizes other than the export's, preprocessing.json, the parity check, and the refusals."""

from __future__ import annotations

import dataclasses
import importlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from zoo import api, export_formats
from zoo.engine.rundir import prepare_new
from zoo.registry import clear_cache
from zoo.testing import tiny_run

SMALL_DATA = {"train_count": 8, "test_count": 8}


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """One-step runs of each task: a classifier with an EMA weight set, an image-to-image model, a GAN."""
    root = tmp_path_factory.mktemp("export")
    return {
        "classifier": tiny_run("mnist_net", root / "classifier", steps=1, hooks=["ema"],
                               dataset_opt=SMALL_DATA).run_dir,
        "i2i": tiny_run("resnet_i2i", root / "i2i", steps=1, model_opt={"ngf": 8, "blocks": 1, "image_size": 16},
                        dataset_opt=SMALL_DATA).run_dir,
        "gan": tiny_run("dcgan", root / "gan", steps=1, model_opt={"ngf": 8, "ndf": 8, "nz": 16},
                        dataset_opt=SMALL_DATA).run_dir,
    }


def test_export_is_a_command_of_zoo(zoo_cli):
    code, out, err = zoo_cli("--help")
    assert code == 0, err
    assert any(line.split()[:1] == ["export"] for line in out.splitlines())


# ------------------------------------------------------------------ each task, with its parity check
def test_a_classifier_exports_to_onnx_that_onnxruntime_runs_at_any_batch_size(zoo_cli, runs):
    onnxruntime = pytest.importorskip("onnxruntime")
    run = runs["classifier"]
    code, out, err = zoo_cli("export", "--run", str(run), "--format", "onnx", "--weights", "ema")
    assert code == 0, err
    folder = run / "exports" / "onnx-ema"
    lines = out.splitlines()
    assert lines[:3] == [f"wrote {folder / 'model.onnx'}", f"wrote {folder / 'preprocessing.json'}",
                         f"wrote {folder / 'README.md'}"]  # the model first, the run's card made afresh last
    assert lines[3].startswith("checked: onnxruntime against PyTorch on 3 test images: max abs difference ")
    assert "(tolerance 1e-4 abs + 1e-4 rel); step 1, ema weights" in lines[3]
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "model.onnx", "preprocessing.json"]

    record = json.loads((folder / "preprocessing.json").read_text())
    loaded = api.load_run(run, weights="ema")
    assert record["input"] == {"name": "input", "shape": ["batch", 1, 28, 28], "dtype": "float32"}
    assert record["output"]["shape"] == ["batch", len(loaded.classes)]
    assert record["classes"] == loaded.classes and set(loaded.classes) == {"circle", "square", "triangle", "cross"}
    assert record["preprocessing"]["value_range"] == [-1.0, 1.0]
    assert record["preprocessing"]["mean"] == [0.5] and record["preprocessing"]["std"] == [0.5]
    assert (record["task"], record["model"], record["weights"], record["step"]) == (
        "classification", "mnist_net", "ema", 1)
    assert record["versions"]["torch"] == torch.__version__ and "onnxruntime" in record["versions"]
    assert record["parity"]["batch"] == 3 and record["parity"]["tolerance"] == {"abs": 1e-4, "rel": 1e-4}

    images = torch.stack([loaded.test_set[i][0] for i in range(5)])
    session = onnxruntime.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape[0] == "batch"
    for batch in (images[:1], images):  # neither the export's batch of 2 nor the check's 3
        got = session.run(None, {record["input"]["name"]: batch.numpy()})[0]
        np.testing.assert_allclose(got, loaded.predict(batch).numpy(), atol=1e-4, rtol=1e-4)
    raw = api.load_run(run).predict(images)
    assert not torch.allclose(raw, torch.from_numpy(session.run(None, {"input": images.numpy()})[0]), atol=1e-6)


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
def test_an_image_to_image_model_exports_to_torchscript_with_the_run_card(zoo_cli, runs):
    run = runs["i2i"]
    (run / "samples").mkdir(exist_ok=True)
    (run / "samples" / "latest.png").write_bytes(b"a grid")  # the card shows it: the export carries it
    code, out, err = zoo_cli("export", "--run", str(run), "--format", "torchscript")
    assert code == 0, err
    folder = run / "exports" / "torchscript"
    assert "checked: torch.jit.load against PyTorch on 3 test images" in out
    card = (folder / "README.md").read_text()
    assert card.startswith("# i2i\n") and "builtin:resnet_i2i" in card and "](samples/latest.png)" in card
    assert (folder / "samples" / "latest.png").read_bytes() == b"a grid"
    record = json.loads((folder / "preprocessing.json").read_text())
    assert record["task"] == "image_to_image" and "classes" not in record
    assert record["input"]["shape"] == record["output"]["shape"] == ["batch", 3, 16, 16]
    assert record["output"]["image"]["value_range"] == [-1.0, 1.0]

    loaded = api.load_run(run)
    module = torch.jit.load(str(folder / "model.pt"))
    images = torch.stack([loaded.test_set[i][0] for i in range(5)])
    with torch.no_grad():
        torch.testing.assert_close(module(images), loaded.predict(images), atol=1e-4, rtol=1e-4)


def test_a_gan_exports_its_generator_alone_as_an_exported_program_file(zoo_cli, runs, tmp_path):
    run = runs["gan"]
    target = tmp_path / "gan" / "generator.pt2"
    code, out, err = zoo_cli("export", "--run", str(run), "--format", "exported-program", "--out", str(target))
    assert code == 0, err
    record_file = tmp_path / "gan" / "generator.preprocessing.json"
    assert out.splitlines()[:2] == [f"wrote {target}", f"wrote {record_file}"]
    assert "on 3 latent noise vectors" in out
    record = json.loads(record_file.read_text())
    assert record["latent"] == {"shape": [16, 1, 1], "distribution": "standard normal"}
    assert record["input"]["shape"] == ["batch", 16, 1, 1]
    assert record["output"]["shape"] == ["batch", 3, 32, 32]

    loaded = api.load_run(run)
    program = torch.export.load(str(target))
    generator_weights = loaded.recipe.generator.state_dict()
    assert program.state_dict and set(program.state_dict) | set(program.constants) <= set(generator_weights)  # no discriminator
    noise = torch.randn(5, *record["latent"]["shape"], generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        torch.testing.assert_close(program.module()(noise), loaded.recipe.generate(noise), atol=1e-4, rtol=1e-4)


# ------------------------------------------------------------------ failures leave nothing
def _off_by_a_hundredth(module):
    return lambda batch: module(batch) + 0.01


def _fixed_at_two(module):
    def run(batch):
        if len(batch) != 2:
            raise RuntimeError(f"Got invalid dimensions for input: index 0 got {len(batch)}, expected 2")
        return module(batch)
    return run


@pytest.mark.parametrize("broken, message", [
    (_off_by_a_hundredth, "the exported torchscript model differs from PyTorch by up to 0.01 on 3 test images, past "
                          "the tolerance (1e-4 abs + 1e-4 rel); nothing was written."),
    (_fixed_at_two, "the exported torchscript model does not run in torch.jit.load on a batch of 3: RuntimeError: Got "
                    "invalid dimensions for input: index 0 got 3, expected 2; try another --format."),
], ids=["difference", "fixed-batch"])
def test_an_export_that_fails_its_check_says_why_in_one_line_and_leaves_nothing(zoo_cli, runs, tmp_path, monkeypatch,
                                                                                broken, message):
    real = export_formats.FORMATS["torchscript"]
    monkeypatch.setitem(export_formats.FORMATS, "torchscript",
                        dataclasses.replace(real, load=lambda path: broken(real.load(path))))
    out_dir = tmp_path / "new" / "export"
    code, out, err = zoo_cli("export", "--run", str(runs["i2i"]), "--format", "torchscript", "--out", str(out_dir))
    assert code == 1 and out == ""
    assert error_lines(err) == [f"zoo: error: {message}"]
    assert not (tmp_path / "new").exists()  # the folders it made are gone too


def test_missing_onnx_packages_are_named_with_what_to_install(zoo_cli, runs, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # import onnxscript now raises ImportError
    code, out, err = zoo_cli("export", "--run", str(runs["gan"]), "--format", "onnx")
    assert code == 1 and out == ""
    assert error_lines(err) == ["zoo: error: --format onnx needs onnxscript, which is not installed: "
                                "pip install 'zoo[onnx]' (or pip install onnx onnxscript onnxruntime)."]
    assert not (runs["gan"] / "exports" / "onnx").exists()


BRANCHY = """
import torch
from torch import nn
from zoo import hookimpl
from zoo.recipe import Recipe


class Branchy(Recipe):
    task = "classification"
    losses = ("cross_entropy",)
    default_loss = "cross_entropy"

    def __init__(self, num_classes: int = 4, channels: int = 3, image_size: int = 8) -> None:
        super().__init__()
        self.head = nn.Linear(channels * image_size * image_size, num_classes)

    def forward(self, x):
        if x.mean() > 0:  # a branch on the data: no graph holds both paths
            return self.head(x.flatten(1))
        return -self.head(x.flatten(1))

    def training_step(self, batch, loss_fn):
        yield "model", loss_fn(self(batch[0]), batch[1])

    def evaluation_step(self, batch, loss_fn, generator):
        return {"loss": loss_fn(self(batch[0]), batch[1]) * len(batch[1]), "count": len(batch[1])}


@hookimpl
def zoo_register(registry):
    registry.model("branchy", "branchy_zoo_plugin:Branchy", "branches on its input")
"""


@pytest.fixture
def branchy_run(make_plugin, monkeypatch, tmp_path) -> Path:
    site = make_plugin("branchy", BRANCHY)
    monkeypatch.syspath_prepend(str(site))
    sys.modules.pop("branchy_zoo_plugin", None)
    importlib.invalidate_caches()
    clear_cache()
    yield tiny_run("branchy", tmp_path / "run", steps=1, model_opt={"image_size": 8}, dataset_opt=SMALL_DATA).run_dir
    clear_cache()


@pytest.mark.parametrize("format_name, reason", [
    ("exported-program", "GuardOnDataDependentSymNode: Could not guard on data-dependent expression"),
    ("torchscript", "TracerWarning: Converting a tensor to a Python boolean might cause the trace to be incorrect."),
])
def test_a_model_that_cannot_export_says_why_in_one_line(zoo_cli, branchy_run, format_name, reason):
    code, out, err = zoo_cli("export", "--run", str(branchy_run), "--format", format_name)
    assert code == 1 and out == ""
    lines = error_lines(err)
    assert len(lines) == 1, err
    assert lines[0].startswith(f"zoo: error: model 'branchy' cannot be exported as {format_name}: {reason}")
    others = [f"--format {name}" for name in ("onnx", "exported-program", "torchscript") if name != format_name]
    assert lines[0].endswith(f"; try {' or '.join(others)}.")
    assert not (branchy_run / "exports").exists()


# ------------------------------------------------------------------ refusals before any work
def test_bad_runs_weights_and_formats_are_refused_in_one_line(zoo_cli, runs, tmp_path):
    cases = [
        (["--run", str(tmp_path / "none"), "--format", "torchscript"],
         f"zoo: error: run dir {tmp_path / 'none'} does not exist; pass a folder made by 'zoo train'."),
        (["--run", str(runs["gan"]), "--format", "torchscript", "--weights", "emma"],
         "zoo: error: checkpoint "),
        (["--run", str(runs["gan"]), "--format", "tflite"],
         "zoo: error: Invalid value for '--format': 'tflite' is not one of 'onnx', 'exported-program', "
         "'torchscript'."),
    ]
    for args, start in cases:
        code, out, err = zoo_cli("export", *args)
        assert code == 2 and out == "", err
        assert len(error_lines(err)) == 1 and error_lines(err)[0].startswith(start), err
    assert "has no weight set 'emma'; it holds the raw weights only" in zoo_cli(
        "export", "--run", str(runs["gan"]), "--format", "torchscript", "--weights", "emma")[2]
    assert not (runs["gan"] / "exports" / "torchscript").exists()


def test_an_existing_export_is_replaced_only_with_overwrite_and_never_other_files(zoo_cli, runs, tmp_path):
    target = tmp_path / "gan.pt"
    args = ("export", "--run", str(runs["gan"]), "--format", "torchscript", "--out", str(target))
    assert zoo_cli(*args)[0] == 0
    first = target.read_bytes()
    code, out, err = zoo_cli(*args)
    assert code == 2 and out == ""
    assert error_lines(err) == [f"zoo: error: {target} exists; pass --overwrite to replace it, or another --out."]
    assert target.read_bytes() == first
    code, out, err = zoo_cli(*args, "--overwrite")
    assert code == 0, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gan.preprocessing.json", "gan.pt"]  # nothing staged left

    code, out, err = zoo_cli("export", "--run", str(runs["gan"]), "--format", "torchscript", "--out",
                             str(runs["gan"]), "--overwrite")
    assert code == 2
    assert error_lines(err) == [f"zoo: error: {runs['gan']} holds checkpoints, which no export writes, so "
                                f"--overwrite leaves it alone; pick another --out."]


def test_replacing_a_run_with_overwrite_takes_its_exports_with_it(tmp_path):
    run = tiny_run("mnist_net", tmp_path / "run", steps=1, dataset_opt=SMALL_DATA).run_dir
    (run / "exports" / "onnx").mkdir(parents=True)
    (run / "exports" / "onnx" / "model.onnx").write_bytes(b"of the old run")
    prepare_new(run, overwrite=True)
    assert not (run / "exports").exists()  # no export of a run left beside the next one

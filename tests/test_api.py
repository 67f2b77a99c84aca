"""The Python API (zoo.api): listing, building by name, and loading a trained run."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

import zoo
from zoo import api
from zoo.config import TrainConfig
from zoo.engine import checkpoint
from zoo.engine.rundir import prepare_new
from zoo.engine.trainer import Trainer
from zoo.errors import UsageError
from zoo.recipe import Recipe
from zoo.registry import Entry, PluginInfo, Registry, get_registry

REPO = Path(__file__).resolve().parents[1]
TINY_SHAPES = {"train_count": 32, "test_count": 8}


def make_run(run_dir: Path, **values) -> Path:
    """Train a tiny run on the CPU: 4 steps, checkpoints at steps 2 and 4, no evaluation or hooks."""
    settings = dict(dataset_opt=dict(TINY_SHAPES), batch_size=8, log_every=2, device="cpu", max_steps=4,
                    save_every=2, eval_every=0, no_hooks=["tensorboard", "samples"], run_dir=str(run_dir))
    settings.update(values)
    prepare_new(run_dir, overwrite=True)
    Trainer(TrainConfig(**settings), get_registry(), run_dir, command_line=["zoo", "test-api"]).fit()
    return run_dir


@pytest.fixture(scope="module")
def gan_run(tmp_path_factory) -> Path:
    return make_run(tmp_path_factory.mktemp("api") / "gan", model="dcgan",
                    model_opt={"ngf": 8, "ndf": 8, "nz": 16})


@pytest.fixture(scope="module")
def classifier_run(tmp_path_factory) -> Path:
    return make_run(tmp_path_factory.mktemp("api") / "classifier", model="mnist_net")


# ------------------------------------------------------------------ listing and building
def test_list_models_takes_wildcards_and_sorts_naturally():
    assert zoo.list_models("tv_resnet*") == ["tv_resnet18", "tv_resnet34", "tv_resnet50", "tv_resnet101",
                                             "tv_resnet152"]
    assert zoo.list_models("dcgan") == ["dcgan"]
    assert zoo.list_models("no_such_*") == []
    everything = zoo.list_models()
    assert {"dcgan", "mnist_net", "resnet_i2i", "tv_vit_b_16"} <= set(everything)
    assert zoo.list_models(["dcgan", "mnist*"]) == ["dcgan", "mnist_net"]
    assert zoo.list_losses() == ["bce", "cross_entropy", "l1", "mse", "perceptual"]
    assert "shapes" in zoo.list_datasets() and zoo.list_datasets("mn*") == ["mnist"]


def test_a_name_two_plugins_offer_is_listed_as_plugin_name():
    registry = Registry()
    registry.add_plugin(PluginInfo("builtin", "zoo", "0.1.0", "plugins.builtin"),
                        [Entry("model", "dcgan", "plugins.models.dcgan:DCGAN", "", "builtin"),
                         Entry("model", "mnist_net", "plugins.models.mnist_net:MnistNet", "", "builtin")])
    registry.add_plugin(PluginInfo("acme", "acme", "1.0", "acme_plugin"),
                        [Entry("model", "dcgan", "acme.models:DCGAN", "", "acme")])
    assert api.list_models(registry=registry) == ["acme:dcgan", "builtin:dcgan", "mnist_net"]
    assert api.list_models("dcg*", registry=registry) == ["acme:dcgan", "builtin:dcgan"]
    with pytest.raises(UsageError, match="several plugins"):
        api.create_model("dcgan", registry=registry)
    assert api.create_model("builtin:dcgan", registry=registry, ngf=8, ndf=8, nz=4).nz == 4


def test_create_model_checks_its_options_against_the_signature():
    model = zoo.create_model("dcgan", ngf=8, ndf=8, nz=16, image_size=32)
    assert isinstance(model, Recipe) and model.training  # built untrained, like nn.Module
    assert model.generator.main[0].weight.shape[:2] == (16, 8 * 4)
    assert zoo.create_model("dcgan", ngf="8", nz="4").nz == 4  # strings are parsed like --model-opt
    with pytest.raises(UsageError, match="has no option 'ngff'. Did you mean: ngf"):
        zoo.create_model("dcgan", ngff=8)
    with pytest.raises(UsageError, match="option nz expects an integer"):
        zoo.create_model("dcgan", nz="many")
    with pytest.raises(UsageError, match="unknown model 'dcgann'. Did you mean: dcgan"):
        zoo.create_model("dcgann")
    classifier = zoo.create_model("tv_resnet18", num_classes=4, image_size=64)
    assert classifier.net.fc.out_features == 4


def test_create_loss_and_dataset():
    loss = zoo.create_loss("mse")
    assert isinstance(loss, torch.nn.Module)
    assert loss(torch.zeros(2, 3), torch.ones(2, 3)).item() == pytest.approx(1.0)
    with pytest.raises(UsageError, match="has no option"):
        zoo.create_loss("l1", weight=2)
    data = zoo.create_dataset("shapes", "test", test_count=8, image_size=16)
    assert len(data) == 8 and data.task == "generation"  # the first of the dataset's tasks
    image, label = data[0]
    assert image.shape == (3, 16, 16) and label == 0 and data.classes[label] == "circle"
    pairs = zoo.create_dataset("shapes", task="image_to_image", train_count=4, channels=1)
    degraded, clean = pairs[1]
    assert degraded.shape == clean.shape == (1, 32, 32) and not torch.equal(degraded, clean)
    with pytest.raises(UsageError, match="cannot feed task 'segmentation'"):
        zoo.create_dataset("shapes", task="segmentation")
    with pytest.raises(UsageError, match="split must be 'train' or 'test'"):
        zoo.create_dataset("shapes", "valid")
    with pytest.raises(UsageError, match="needs --data"):
        zoo.create_dataset("imagefolder")


# ------------------------------------------------------------------ load_run
def test_load_run_gives_eval_mode_networks_with_the_checkpoint_weights(gan_run):
    run = zoo.load_run(gan_run)
    assert isinstance(run, zoo.LoadedRun)
    assert run.step == 4 and run.checkpoint == checkpoint.checkpoint_dir(gan_run, 4)
    assert set(run.networks) == {"generator", "discriminator"}
    assert run.networks["generator"] is run.recipe.generator
    assert not any(module.training for module in run.recipe.modules())
    assert run.config.model == "dcgan" and run.resolved["input_shape"] == [3, 32, 32]
    assert run.resolved["task"] == run.task == "generation"
    assert run.device == torch.device("cpu") and next(run.recipe.parameters()).device.type == "cpu"
    saved = load_file(str(run.checkpoint / "model.safetensors"))
    own = run.recipe.state_dict()
    assert saved.keys() == own.keys()  # keys prefixed by network name
    assert all(torch.equal(saved[k], own[k]) for k in saved)


def test_load_run_at_a_step_and_its_errors(gan_run, tmp_path):
    early = zoo.load_run(gan_run, step=2)
    assert early.step == 2
    saved = load_file(str(checkpoint.checkpoint_dir(gan_run, 2) / "model.safetensors"))
    assert all(torch.equal(saved[k], v) for k, v in early.recipe.state_dict().items())
    newest = zoo.load_run(gan_run).recipe.state_dict()
    assert any(not torch.equal(newest[k], v) for k, v in early.recipe.state_dict().items())
    with pytest.raises(UsageError, match="has no checkpoint of step 3; its checkpoints are of steps 2, 4"):
        zoo.load_run(gan_run, step=3)
    with pytest.raises(TypeError, match="step must be an int .* got str"):
        zoo.load_run(gan_run, step="2")
    with pytest.raises(UsageError, match="does not exist"):
        zoo.load_run(tmp_path / "missing")
    empty = tmp_path / "untrained"
    empty.mkdir()
    shutil.copy(gan_run / "config.json", empty / "config.json")
    with pytest.raises(UsageError, match="has no checkpoint yet"):
        zoo.load_run(empty)
    folder = zoo.load_run(gan_run, checkpoint=checkpoint.checkpoint_dir(gan_run, 2))
    assert folder.step == 2
    weights = checkpoint.checkpoint_dir(gan_run, 2) / "model.safetensors"
    with pytest.raises(UsageError, match=f"is a file of a checkpoint; pass its folder, {checkpoint.checkpoint_dir(gan_run, 2)}"):
        zoo.load_run(gan_run, checkpoint=weights)
    with pytest.raises(UsageError, match="is not a checkpoint folder .no model.safetensors in it."):
        zoo.load_run(gan_run, checkpoint=tmp_path)


def test_load_run_rebuilds_the_model_without_reading_data(gan_run, tmp_path):
    moved = tmp_path / "moved"
    shutil.copytree(gan_run, moved)
    document = json.loads((moved / "config.json").read_text())
    document["config"]["dataset"] = "imagefolder"  # data that is not there any more
    document["config"]["data"] = str(tmp_path / "gone")
    document["config"]["dataset_opt"] = {}
    (moved / "config.json").write_text(json.dumps(document))
    run = zoo.load_run(moved)
    assert run.recipe.sample(2, torch.Generator().manual_seed(0)).shape == (2, 3, 32, 32)
    with pytest.raises(UsageError, match="does not exist"):
        run.test_set  # noqa: B018 - built on first use, and only then needs the data


def test_three_lines_classify_an_image_like_the_test_split(classifier_run, tmp_path):
    run = zoo.load_run(classifier_run)
    assert run.classes == ["circle", "square", "triangle", "cross"]
    assert run.input_shape == (1, 28, 28) and len(run.test_set) == 8
    for index in range(4):
        item, label = run.test_set[index]
        path = tmp_path / f"{run.classes[label]}.png"
        api.to_image(item).save(path)
        prepared = run.preprocess(Image.open(path))
        assert prepared.shape == item.shape == (1, 28, 28)
        assert (prepared - item).abs().max().item() <= 1 / 255 + 1e-6  # only the PNG's 8-bit rounding
        assert torch.equal(run.preprocess(path), prepared)
        logits = run.recipe.net(run.preprocess(Image.open(path))[None])
        assert logits.shape == (1, 4)
        assert torch.equal(run.predict(prepared[None]), logits.detach())


def test_preprocess_image_is_exactly_the_imagefolder_test_transform(tmp_path):
    root = tmp_path / "folder"
    generator = torch.Generator().manual_seed(0)
    sizes = [(40, 52, "RGB"), (52, 40, "RGB"), (30, 30, "L"), (64, 48, "RGBA"), (20, 24, "I;16")]
    for split in ("train", "test"):
        for index, (height, width, mode) in enumerate(sizes):
            folder = root / split / "things"
            folder.mkdir(parents=True, exist_ok=True)
            bands = {"RGB": 3, "RGBA": 4}.get(mode, 1)
            pixels = torch.randint(0, 256, (height, width, bands), generator=generator, dtype=torch.uint8).numpy()
            image = Image.fromarray(pixels[:, :, 0] if bands == 1 else pixels)
            if mode == "I;16":
                image = image.convert("I;16")
            image.save(folder / f"{index}.png")
    for channels, size in ((3, 16), (1, 24), (3, 36)):
        data = zoo.create_dataset("imagefolder", "test", task="generation", data=str(root),
                                  image_size=size, channels=channels)
        for (path, _), (item, _) in zip(data.files, (data[i] for i in range(len(data)))):
            mine = api.preprocess_image(api.read_image(path), (channels, size, size))
            assert torch.equal(mine, item), (path, channels, size)


def test_read_image_errors_name_the_file(tmp_path):
    with pytest.raises(UsageError, match=r"image .*nope.png does not exist"):
        api.read_image(tmp_path / "nope.png")
    (tmp_path / "text.png").write_text("not an image")
    with pytest.raises(UsageError, match=r"cannot read image .*text.png"):
        api.read_image(tmp_path / "text.png")


def test_large_images_are_read_quietly_and_huge_ones_refused_in_one_line(tmp_path, monkeypatch):
    import warnings

    from PIL import Image
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # PIL's limit, scaled down for the test
    Image.new("L", (40, 40)).save(tmp_path / "large.png")  # over the limit: PIL would warn
    Image.new("L", (50, 50)).save(tmp_path / "huge.png")  # over twice the limit: PIL refuses
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert api.read_image(tmp_path / "large.png").size == (40, 40)
    with pytest.raises(UsageError, match=r"huge.png has more than 2,000 pixels, past PIL's safety limit .* "
                                         r"scale it down first\.$"):
        api.read_image(tmp_path / "huge.png")


def test_import_zoo_and_listing_do_not_import_torch():
    code = ("import sys, zoo\n"
            "assert 'torch' not in sys.modules, 'import zoo'\n"
            "assert 'load_run' in zoo.__all__ and 'load_run' in dir(zoo)\n"
            "assert 'torch' not in sys.modules, 'dir(zoo)'\n"
            "assert 'dcgan' in zoo.list_models()\n"
            "assert 'torch' not in sys.modules, 'zoo.list_models'\n"
            "zoo.load_run\n"
            "print('ok')\n")
    env = {"PATH": "/usr/bin:/bin", "ZOO_DISABLE_PLUGIN_AUTOLOAD": "1"}
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


def test_predict_on_a_generative_run_points_to_sample(gan_run):
    run = zoo.load_run(gan_run)
    with pytest.raises(UsageError, match=r"generates images rather than mapping inputs; use run\.recipe\.sample"):
        run.predict(torch.zeros(1, 3, 32, 32))

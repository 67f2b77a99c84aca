"""Bad inputs found by a user trial: each is refused in one line, before any training, with its fix."""

from __future__ import annotations

import errno
import os
import struct
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from plugins.datasets.imagefolder import ImageFolderDataset
from plugins.datasets.mnist import MnistDataset
from zoo.build import build_recipe
from zoo.config import TrainConfig
from zoo.engine import cache
from zoo.engine.rundir import prepare_new
from zoo.engine.trainer import Trainer
from zoo.errors import RunError, UsageError
from zoo.registry import Entry, PluginInfo, discover

TINY = ["--device", "cpu", "--max-steps", "2", "--batch-size", "4",
        "--dataset-opt", "train_count=16", "--dataset-opt", "test_count=8"]
TINY_DCGAN = ["--model", "dcgan", "--model-opt", "ngf=8", "--model-opt", "ndf=8", "--model-opt", "nz=16"]


@pytest.fixture(scope="module")
def registry():
    return discover()


def error_line(err: str) -> str:
    """The run's only error line; no traceback, no internal error."""
    lines = [line for line in err.splitlines() if line.startswith("zoo: error")]
    assert len(lines) == 1 and "Traceback" not in err and "internal error" not in err, err
    return lines[0]


def refused(zoo_cli, tmp_path: Path, *args: str) -> tuple[int, str]:
    """Run ``zoo train ARGS`` into ``tmp_path/run``; return its exit code and error line, checking no run was left."""
    run = tmp_path / "run"
    code, _, err = zoo_cli("train", *args, "--run-dir", str(run))
    assert not run.exists(), "a refused run leaves no folder"
    return code, error_line(err)


def write_class_folders(root: Path, classes: tuple[str, ...], count: int = 6) -> Path:
    """ROOT/train/<class>/NN.png for each class; returns ROOT."""
    for label, name in enumerate(classes):
        folder = root / "train" / name
        folder.mkdir(parents=True)
        for i in range(count):
            Image.new("RGB", (16, 16), (40 * label, 10 * i, 200)).save(folder / f"{i:02d}.png")
    return root


def write_mnist(root: Path, labels: list[int]) -> Path:
    """ROOT/MNIST/raw/ IDX files, train and test alike, with ``labels``; returns the train labels file."""
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    count = len(labels)
    for prefix in ("train", "t10k"):
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(struct.pack(">IIII", 2051, count, 28, 28)
                                                         + bytes(28 * 28 * count))
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">II", 2049, count) + bytes(labels))
    return raw / "train-labels-idx1-ubyte"


def registry_with(tmp_path: Path, monkeypatch, kind: str, name: str, source: str, attribute: str):
    """The installed plugins plus one entry from a module the test writes into ``tmp_path``."""
    module = f"input_checks_{name}"
    (tmp_path / f"{module}.py").write_text(textwrap.dedent(source))
    monkeypatch.syspath_prepend(str(tmp_path))
    local = discover()
    local.add_plugin(PluginInfo("testplugin", "testplugin", "1.0", module),
                     [Entry(kind, name, f"{module}:{attribute}", "a test entry", "testplugin")])
    return local


# ------------------------------------------------------------------ 1. fewer classes than the data


@pytest.mark.parametrize("model", ["mnist_net", "tv_resnet18"])
def test_a_classifier_with_fewer_classes_than_the_data_is_refused_before_training(zoo_cli, tmp_path, model):
    code, line = refused(zoo_cli, tmp_path, "--model", model, "--model-opt", "num_classes=2", *TINY)
    assert code == 2
    assert line == ("zoo: error: dataset 'shapes' has 4 classes; --model-opt num_classes=2 is too few "
                    "(leave it unset to take 4).")


def test_a_model_whose_own_class_count_is_too_small_is_refused_generically(tmp_path, monkeypatch):
    local = registry_with(tmp_path, monkeypatch, "model", "two_way", """
        from plugins.models.mnist_net import MnistNet

        class TwoWay(MnistNet):
            @classmethod
            def adapt_to_data(cls, shape, num_classes, options):  # leaves num_classes at its default
                return dict(options), (1, 28)

            def __init__(self, num_classes: int = 2, dropout: float = 0.5) -> None:
                super().__init__(num_classes, dropout)
        """, "TwoWay")
    with pytest.raises(UsageError) as caught:
        build_recipe(local.resolve("model", "two_way"), {}, (3, 32, 32), 4, dataset="dataset 'shapes'")
    assert str(caught.value) == ("dataset 'shapes' has 4 classes but model 'two_way' is built for 2 "
                                 "(num_classes=2); pass --model-opt num_classes=4.")
    recipe, _, _ = build_recipe(local.resolve("model", "two_way"), {"num_classes": "4"}, (3, 32, 32), 4)
    assert recipe.net.fc2.out_features == 4  # as many as the data: built


def test_more_classes_than_the_data_and_data_without_classes_are_accepted(registry):
    entry = registry.resolve("model", "mnist_net")
    recipe, options, _ = build_recipe(entry, {"num_classes": "6"}, (1, 28, 28), 4)
    assert options["num_classes"] == 6 and recipe.net.fc2.out_features == 6
    _, options, _ = build_recipe(entry, {"num_classes": "2"}, (1, 28, 28), None)
    assert options["num_classes"] == 2


def test_mnist_labels_above_nine_name_the_file(zoo_cli, tmp_path):
    labels_file = write_mnist(tmp_path / "mnist", [0, 1, 2, 12, 4, 5, 6, 7])
    with pytest.raises(RunError) as caught:
        MnistDataset("train", task="classification", data=str(tmp_path / "mnist"))
    assert str(labels_file) in str(caught.value) and "label 12 at index 3" in str(caught.value)
    code, line = refused(zoo_cli, tmp_path, "--model", "mnist_net", "--dataset", "mnist",
                         "--data", str(tmp_path / "mnist"), "--device", "cpu", "--max-steps", "2",
                         "--batch-size", "4")
    assert code == 1 and str(labels_file) in line and "MNIST labels are 0-9" in line


def test_mnist_labels_within_range_are_read(tmp_path):
    write_mnist(tmp_path / "mnist", [9, 0, 3, 9])
    data = MnistDataset("train", task="classification", data=str(tmp_path / "mnist"))
    assert [data[i][1] for i in range(4)] == [9, 0, 3, 9]


# ------------------------------------------------------------------ 2. one class folder


def test_one_class_folder_is_refused_for_a_classifier(zoo_cli, tmp_path):
    root = write_class_folders(tmp_path / "data", ("cat",))
    code, line = refused(zoo_cli, tmp_path, "--model", "mnist_net", "--dataset", "imagefolder",
                         "--data", str(root), "--device", "cpu", "--max-steps", "2", "--batch-size", "4")
    assert code == 2
    assert line.startswith(f"zoo: error: only one class folder (cat) under {root / 'train'}; "
                           f"a classifier needs at least 2")


@pytest.mark.parametrize("task", ["generation", "image_to_image"])
def test_one_class_folder_still_feeds_generation_and_image_to_image(tmp_path, task):
    root = write_class_folders(tmp_path / "data", ("cat",))
    data = ImageFolderDataset("train", task=task, data=str(root))
    assert data.classes == ["cat"] and len(data) > 0


def test_two_class_folders_feed_a_classifier(tmp_path):
    root = write_class_folders(tmp_path / "data", ("cat", "dog"))
    assert ImageFolderDataset("train", task="classification", data=str(root)).classes == ["cat", "dog"]


# ------------------------------------------------------------------ 3. early stopping that cannot act


def test_early_stopping_on_a_metric_the_model_does_not_report_is_refused_with_a_suggestion(zoo_cli, tmp_path):
    code, line = refused(zoo_cli, tmp_path, "--model", "mnist_net", "--hook", "early_stopping",
                         "--hook-opt", "early_stopping.metric=acuracy", *TINY)
    assert code == 2
    assert line == ("zoo: error: hook 'early_stopping': it watches 'acuracy', which this run's evaluation does not "
                    "report (it reports: accuracy, loss); pass --hook-opt early_stopping.metric=NAME "
                    "(did you mean accuracy?).")


def test_early_stopping_on_a_model_without_its_default_metric_is_refused(zoo_cli, tmp_path):
    code, line = refused(zoo_cli, tmp_path, *TINY_DCGAN, "--hook", "early_stopping", *TINY)
    assert code == 2 and "it watches 'loss'" in line and "(it reports: discriminator, generator)" in line


def test_early_stopping_with_evaluation_off_is_refused(zoo_cli, tmp_path):
    code, line = refused(zoo_cli, tmp_path, "--model", "mnist_net", "--hook", "early_stopping",
                         "--eval-every", "0", *TINY)
    assert code == 2
    assert line == ("zoo: error: hook 'early_stopping': it acts after evaluations, which --eval-every 0 turns "
                    "off; drop --eval-every 0, or drop --hook early_stopping.")


def test_early_stopping_on_a_reported_metric_runs(zoo_cli, tmp_path):
    code, _, err = zoo_cli("train", *TINY_DCGAN, "--hook", "early_stopping",
                           "--hook-opt", "early_stopping.metric=generator", *TINY, "--run-dir", str(tmp_path / "run"))
    assert code == 0 and "does not report" not in err, err


def test_a_hook_with_options_switched_off_on_resume_keeps_them_unused(zoo_cli, tmp_path):
    run = tmp_path / "run"
    code, _, err = zoo_cli("train", *TINY_DCGAN, "--hook", "early_stopping", "--hook-opt",
                           "early_stopping.metric=generator", *TINY, "--run-dir", str(run))
    assert code == 0, err
    code, _, err = zoo_cli("train", "--resume", str(run), "--max-steps", "3", "--no-hook", "early_stopping")
    assert code == 0, err  # its saved metric option is no error while it is off
    code, _, err = zoo_cli("train", "--resume", str(run), "--max-steps", "4", "--hook", "early_stopping")
    assert code == 0 and "does not report" not in err, err  # on again: it watches the saved metric


def test_early_stopping_warns_with_a_suggestion_for_a_model_that_declares_no_metrics(tmp_path, monkeypatch, capsys):
    local = registry_with(tmp_path, monkeypatch, "model", "undeclared", """
        from plugins.models.mnist_net import MnistNet

        class Undeclared(MnistNet):
            eval_metrics = None  # a third-party model: what it reports is known after an evaluation only
        """, "Undeclared")
    config = TrainConfig(model="undeclared", dataset_opt={"train_count": 16, "test_count": 8}, batch_size=4,
                         device="cpu", max_steps=2, eval_every=1, run_dir=str(tmp_path / "run"),
                         hooks=["early_stopping"], hook_opt={"early_stopping": {"metric": "acuracy"}})
    prepare_new(tmp_path / "run", overwrite=True)
    trainer = Trainer(config, local, tmp_path / "run")
    trainer.fit()
    assert trainer.step == 2  # warned, kept training
    err = capsys.readouterr().err
    assert err.count("early_stopping watches") == 1
    assert ("zoo: early_stopping watches 'acuracy', which this run's evaluation does not report (it reports: "
            "accuracy, loss); pass --hook-opt early_stopping.metric=NAME (did you mean accuracy?).") in err


@pytest.mark.parametrize("model, options, batch", [
    ("mnist_net", {}, (torch.zeros(2, 1, 28, 28), torch.tensor([0, 1]))),
    ("tv_resnet18", {"num_classes": 3, "image_size": 40}, (torch.zeros(2, 3, 40, 40), torch.tensor([0, 2]))),
    ("resnet_i2i", {}, (torch.zeros(2, 3, 16, 16), torch.zeros(2, 3, 16, 16))),
    ("dcgan", {"ngf": 8, "ndf": 8, "nz": 8, "image_size": 32}, (torch.zeros(2, 3, 32, 32), torch.tensor([0, 0]))),
])
def test_builtin_models_declare_what_their_evaluation_reports(registry, model, options, batch):
    recipe, _, _ = build_recipe(registry.resolve("model", model), options)
    recipe.eval()
    with torch.no_grad():
        reported = set(recipe.evaluation_step(batch, None, torch.Generator())) - {"count"}
    assert reported == set(recipe.eval_metrics)


# ------------------------------------------------------------------ 4. a cache folder that takes no files


def test_a_cache_folder_refusing_the_lock_file_is_one_line(zoo_cli, tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    folder.mkdir()
    monkeypatch.setenv("ZOO_CACHE_DIR", str(folder))

    def refusing_open(path, *args, **kwargs):  # root ignores chmod 555: refuse as such a folder does
        if str(path).endswith(".lock"):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return open(path, *args, **kwargs)

    monkeypatch.setattr(cache, "open", refusing_open, raising=False)
    code, _, err = zoo_cli("train", "--model", "mnist_net", *TINY, "--cache-decoded",
                           "--run-dir", str(tmp_path / "run"))
    assert code == 1
    assert error_line(err) == (f"zoo: error: cannot use {folder} as the decoded-image cache folder (Permission "
                               f"denied); set ZOO_CACHE_DIR to a writable folder, or drop --cache-decoded.")


@pytest.mark.parametrize("error, message", [
    (errno.EACCES, "cannot use {cache} as the decoded-image cache folder (Permission denied); set ZOO_CACHE_DIR to "
                   "a writable folder, or drop --cache-decoded."),
    (errno.ENOSPC, "could not write the decoded cache {cache}/"),  # a full disk: free some space
])
def test_a_cache_file_that_cannot_be_created_is_one_line_naming_the_fix(tmp_path, monkeypatch, error, message):
    from plugins.datasets.shapes import ShapesDataset

    def failing_memmap(path, *args, **kwargs):
        raise OSError(error, os.strerror(error), str(path))

    monkeypatch.setattr(cache.np, "memmap", failing_memmap)
    shapes = ShapesDataset("train", task="classification", train_count=8, test_count=4)
    with pytest.raises(RunError) as caught:
        cache.DecodedCache(shapes, tmp_path / "cache")  # a whole build (several processes), no lock taken
    assert str(caught.value).startswith(message.format(cache=tmp_path / "cache"))
    if error == errno.ENOSPC:
        assert "(No space left on device); free some space" in str(caught.value)


# ------------------------------------------------------------------ 5. a model too large to allocate


def test_a_model_too_large_to_allocate_is_one_line(zoo_cli, tmp_path, monkeypatch):
    real_empty = torch.empty

    def limited_empty(*size, **kwargs):  # the CPU allocator's own failure, without asking the OS for 1.5 TiB
        shape = size[0] if len(size) == 1 and isinstance(size[0], (tuple, list, torch.Size)) else size
        wanted = int(np.prod(shape)) * 4
        if wanted > 2**40:
            raise RuntimeError(f"[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate "
                               f"memory: you tried to allocate {wanted} bytes. Error code 12 (Cannot allocate memory)")
        return real_empty(*size, **kwargs)

    monkeypatch.setattr(torch, "empty", limited_empty)
    code, line = refused(zoo_cli, tmp_path, "--model", "dcgan", "--model-opt", "nz=100000000", *TINY)
    assert code == 1
    assert line == ("zoo: error: out of memory building model 'dcgan' (it asked for 1.5 TiB); "
                    "lower its options (zoo info dcgan).")


def test_device_out_of_memory_building_a_model_names_its_size(registry, monkeypatch):
    from plugins.models.mnist_net import MnistNet

    def out_of_memory(self, *args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity "
                                     "of 79.19 GiB of which 1.00 GiB is free.")

    monkeypatch.setattr(MnistNet, "__init__", out_of_memory)
    with pytest.raises(RunError) as caught:
        build_recipe(registry.resolve("model", "mnist_net"), {})
    assert str(caught.value) == ("out of memory building model 'mnist_net' (it asked for 2.00 GiB); "
                                 "lower its options (zoo info mnist_net).")


def test_a_device_too_small_for_the_model_is_one_line(zoo_cli, tmp_path, monkeypatch):
    from plugins.models.mnist_net import MnistNet

    def out_of_memory(self, *args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 3.50 GiB. GPU 0 has a total capacity "
                                     "of 7.79 GiB of which 1.00 GiB is free.")

    monkeypatch.setattr(MnistNet, "to", out_of_memory)
    code, line = refused(zoo_cli, tmp_path, "--model", "mnist_net", *TINY)
    assert code == 1
    assert line == ("zoo: error: out of memory putting model 'mnist_net' on cpu (it asked for 3.50 GiB); "
                    "lower its options (zoo info mnist_net) or pick another --device.")


def test_other_runtime_errors_building_a_model_are_not_called_out_of_memory(registry, monkeypatch):
    from plugins.models.mnist_net import MnistNet

    def broken(self, *args, **kwargs):
        raise RuntimeError("a plugin bug")

    monkeypatch.setattr(MnistNet, "__init__", broken)
    with pytest.raises(RuntimeError, match="a plugin bug"):
        build_recipe(registry.resolve("model", "mnist_net"), {})


# ------------------------------------------------------------------ 6. --data that the dataset ignores


def test_data_for_a_dataset_that_reads_none_is_refused(zoo_cli, tmp_path):
    code, line = refused(zoo_cli, tmp_path, *TINY_DCGAN, "--data", str(tmp_path), *TINY)
    assert code == 2
    assert line == (f"zoo: error: dataset 'shapes' does not read --data {tmp_path}; to train on those files pick a "
                    f"dataset that reads them, e.g. --dataset imagefolder ('zoo list datasets').")


def test_a_run_saved_with_ignored_data_still_resumes(registry, tmp_path, capsys):
    values = dict(model="dcgan", loss="mse", model_opt={"ngf": 8, "ndf": 8, "nz": 16},
                  dataset_opt={"train_count": 16, "test_count": 8}, batch_size=4, device="cpu",
                  run_dir=str(tmp_path / "run"), max_steps=2)
    prepare_new(tmp_path / "run", overwrite=True)
    Trainer(TrainConfig(**values), registry, tmp_path / "run").fit()
    values.update(data=str(tmp_path), max_steps=3)  # as a run started before such --data was refused
    trainer = Trainer(TrainConfig(**values), registry, tmp_path / "run", resume=True)
    trainer.fit()
    assert trainer.step == 3
    assert f"zoo: dataset 'shapes' does not read --data {tmp_path}" in capsys.readouterr().err


def test_a_subclass_reporting_other_metrics_is_not_held_to_its_parent_s_declaration():
    from plugins.models.mnist_net import MnistNet
    from zoo.recipe import declared_eval_metrics

    class TopFive(MnistNet):
        def evaluation_step(self, batch, loss_fn, generator):
            return {"top5": torch.tensor(1.0), "count": 1}

    class Declared(TopFive):
        eval_metrics = ("top5",)

    class Inherits(MnistNet):  # the parent's evaluation_step: the parent's declaration holds
        pass

    assert declared_eval_metrics(MnistNet()) == ("loss", "accuracy")
    assert declared_eval_metrics(TopFive()) is None
    assert declared_eval_metrics(Declared()) == ("top5",)
    assert declared_eval_metrics(Inherits()) == ("loss", "accuracy")


def test_no_strict_without_init_from_is_refused(zoo_cli, tmp_path):
    code, line = refused(zoo_cli, tmp_path, *TINY_DCGAN, *TINY, "--no-strict")
    assert code == 2 and "--no-strict" in line and "--init-from" in line


@pytest.mark.parametrize("model", ["mnist_net", "dcgan"])
def test_a_dataset_option_for_another_task_is_refused(zoo_cli, tmp_path, model):
    """shapes' degrade only means something to image-to-image models; elsewhere it would be ignored."""
    code, line = refused(zoo_cli, tmp_path, "--model", model, *TINY, "--dataset-opt", "degrade=blur")
    assert code == 2 and "degrade is for image-to-image models" in line and "drop --dataset-opt degrade" in line


def test_a_dataset_option_for_its_task_is_taken(registry):
    from zoo.build import build_dataset
    entry = registry.resolve("dataset", "shapes")
    blurred = build_dataset(entry, "train", task="image_to_image", data=None,
                            options={"degrade": "blur", "train_count": 2})
    assert blurred.degrade == "blur"


def test_info_says_which_tasks_an_option_is_for(zoo_cli):
    code, out, _ = zoo_cli("info", "shapes")
    assert code == 0
    degrade_line = next(line for line in out.splitlines() if line.strip().startswith("degrade"))
    assert "(image-to-image models only)" in degrade_line
    size_line = next(line for line in out.splitlines() if line.strip().startswith("size"))
    assert "only" not in size_line


def test_sync_bn_in_one_process_says_it_changes_nothing(zoo_cli, tmp_path):
    code, _, err = zoo_cli("train", *TINY_DCGAN, *TINY, "--sync-bn", "--run-dir", str(tmp_path / "run"))
    assert code == 0
    assert "--sync-bn acts across several processes" in err


def test_a_hook_switched_on_and_off_in_one_command_is_refused(zoo_cli, tmp_path):
    code, line = refused(zoo_cli, tmp_path, *TINY_DCGAN, *TINY, "--hook", "samples", "--no-hook", "samples")
    assert code == 2 and line == ("zoo: error: --hook samples and --no-hook samples contradict each other; keep "
                                  "the one you mean.")


@pytest.mark.parametrize("table, line, words", [
    ("[hook_opt.early_stopping]", "metric = 5", "hook 'early_stopping' option metric expects a string, got 5."),
    ("[model_opt]", "num_classes = 10.0", "model 'mnist_net' option num_classes expects an integer, got 10.0."),
])
def test_a_config_file_option_of_the_wrong_type_is_named(zoo_cli, tmp_path, table, line, words):
    config = tmp_path / "run.toml"
    config.write_text(f'model = "mnist_net"\nmax_steps = 1\nhooks = ["early_stopping"]\n{table}\n{line}\n')
    code, error = refused(zoo_cli, tmp_path, "--config", str(config), "--device", "cpu")
    assert code == 2 and error == f"zoo: error: {words}"


def test_an_unquoted_data_glob_says_to_quote_it(zoo_cli, tmp_path):
    code, line = refused(zoo_cli, tmp_path, "--model", "resnet_i2i", "--dataset", "glob_patches",
                         "--data", str(tmp_path / "a.png"), str(tmp_path / "b.png"))  # as the shell expands it
    assert code == 2 and "a glob given to --data must be quoted ('photos/*.jpg')" in line


def test_an_empty_training_split_says_so_rather_than_to_lower_the_batch(zoo_cli, tmp_path):
    write_mnist(tmp_path / "data", [])
    code, line = refused(zoo_cli, tmp_path, "--model", "mnist_net", "--dataset", "mnist", "--data",
                         str(tmp_path / "data"), "--device", "cpu", "--max-steps", "1")
    assert code == 2 and line == ("zoo: error: the training split of 'mnist' has no samples; check --data and the "
                                  "dataset's options (zoo info mnist).")


def test_a_saved_run_made_before_the_new_refusals_is_still_tested_and_resumed(zoo_cli, tmp_path):
    """--no-strict without --init-from and an option for another task are refused for new runs only."""
    import json
    run = tmp_path / "run"
    code, _, err = zoo_cli("train", "--model", "mnist_net", *TINY, "--run-dir", str(run))
    assert code == 0, err
    document = json.loads((run / "config.json").read_text())
    document["config"]["no_strict"] = True
    document["config"]["dataset_opt"]["degrade"] = "blur"
    (run / "config.json").write_text(json.dumps(document))
    code, _, err = zoo_cli("test", "--run", str(run), "--device", "cpu")
    assert code == 0, err
    code, _, err = zoo_cli("train", "--resume", str(run), "--max-steps", "3")
    assert code == 0, err

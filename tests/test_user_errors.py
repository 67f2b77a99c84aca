"""What a user meets beyond the happy path: moved data, frozen networks, refused resumes, --debug."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

import zoo
from train_cli.main import ABORTED, INTERRUPTED
from zoo.engine import checkpoint
from zoo.errors import UsageError

TINY = ["--model", "dcgan", "--loss", "mse", "--model-opt", "ngf=8", "--model-opt", "ndf=8",
        "--model-opt", "nz=16", "--batch-size", "4", "--device", "cpu", "--log-every", "1"]
SHAPES = ["--dataset-opt", "train_count=16", "--dataset-opt", "test_count=4"]


def write_folder(root: Path, count: int = 8) -> None:
    """ROOT/train/blue and ROOT/test/blue with ``count`` and 4 small PNGs."""
    for split, n in (("train", count), ("test", 4)):
        folder = root / split / "blue"
        folder.mkdir(parents=True)
        for i in range(n):
            Image.new("RGB", (32, 32), (i * 25, 90, 160)).save(folder / f"{i:02d}.png")


def saved_config(run: Path) -> dict:
    return json.loads((run / "config.json").read_text())


def test_relative_data_is_kept_absolute_and_moved_data_can_be_named_again(zoo_cli, tmp_path, monkeypatch):
    write_folder(tmp_path / "data")
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "run"
    common = [*TINY, "--dataset", "imagefolder", "--model-opt", "image_size=32"]
    code, _, err = zoo_cli("train", *common, "--data", "data", "--max-steps", "2", "--run-dir", str(run))
    assert code == 0, err
    assert saved_config(run)["config"]["data"] == str(tmp_path / "data")

    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert zoo_cli("test", "--run", str(run))[0] == 0  # read from any folder
    code, _, err = zoo_cli("train", "--resume", str(run), "--data", "../data", "--max-steps", "3")
    assert code == 0, err  # the same data by another path is no change
    (tmp_path / "linked").symlink_to(tmp_path / "data")
    code, _, err = zoo_cli("train", "--resume", str(run), "--data", str(tmp_path / "linked"), "--max-steps", "4")
    assert code == 0, err  # nor through a symlink
    assert saved_config(run)["config"]["data"] == str(tmp_path / "data")
    code, _, err = zoo_cli("train", "--resume", str(run), "--data", str(tmp_path / "elsewhere"), "--max-steps", "5")
    assert code == 2 and "--data cannot change when resuming" in err

    shutil.move(tmp_path / "data", tmp_path / "moved")
    code, _, err = zoo_cli("test", "--run", str(run))
    assert code == 2 and f"the run's data {tmp_path / 'data'} is gone" in err and "--data NEW" in err
    code, out, err = zoo_cli("test", "--run", str(run), "--data", str(tmp_path / "moved"))
    assert code == 0 and "on 4 test samples" in out, err
    code, _, err = zoo_cli("train", "--resume", str(run), "--data", "../moved", "--max-steps", "4")
    assert code == 0, err
    assert f"the run's data {tmp_path / 'data'} is gone; reading {tmp_path / 'moved'} instead." in err
    assert saved_config(run)["config"]["data"] == str(tmp_path / "moved")
    assert checkpoint.list_steps(run)[-1][0] == 4

    shutil.move(tmp_path / "moved", tmp_path / "again")  # a complete run keeps only the new place
    code, _, err = zoo_cli("train", "--resume", str(run), "--data", "../again", "--max-steps", "4")
    assert code == 0 and "already complete" in err, err
    assert saved_config(run)["config"]["data"] == str(tmp_path / "again")
    assert zoo_cli("test", "--run", str(run))[0] == 0

    import zoo
    old = tmp_path / "old"  # a run saved before config.json recorded its resolved parts
    shutil.copytree(run, old)
    document = saved_config(old)
    del document["resolved"]
    (old / "config.json").write_text(json.dumps(document))
    shutil.move(tmp_path / "again", tmp_path / "last")
    assert len(zoo.load_run(old, data=str(tmp_path / "last")).test_set) == 4


def test_a_resume_with_nothing_to_do_leaves_the_config_as_it_was(zoo_cli, tmp_path):
    run = tmp_path / "run"
    code, _, err = zoo_cli("train", *TINY, *SHAPES, "--epochs", "1", "--run-dir", str(run))
    assert code == 0 and "done at step 4 (--epochs 1 reached)" in err
    before = (run / "config.json").read_bytes()
    code, _, err = zoo_cli("train", "--resume", str(run), "--max-steps", "3")
    assert code == 0 and "already complete at step 4" in err
    assert (run / "config.json").read_bytes() == before
    code, _, err = zoo_cli("train", "--resume", str(run), "--epochs", "2")
    assert code == 0 and "done at step 8 (--epochs 2 reached)" in err
    code, _, err = zoo_cli("train", "--resume", str(run), "--epochs", "3", "--max-steps", "10")
    assert code == 0 and "done at step 10 (--max-steps 10 reached)" in err


def test_resume_and_overwrite_together_are_refused(zoo_cli, tmp_path):
    run = tmp_path / "run"
    assert zoo_cli("train", *TINY, *SHAPES, "--max-steps", "1", "--run-dir", str(run))[0] == 0
    code, _, err = zoo_cli("train", "--resume", str(run), "--overwrite")
    assert code == 2 and "drop one of them" in err


def test_freezing_everything_is_refused_and_a_frozen_network_is_not_stepped(zoo_cli, tmp_path):
    code, _, err = zoo_cli("train", *TINY, *SHAPES, "--freeze", "*", "--max-steps", "2",
                           "--run-dir", str(tmp_path / "all"))
    assert code == 2 and "--freeze * leaves no trainable parameter" in err, err
    assert not (tmp_path / "all").exists()
    weights = {}
    for steps in ("2", "4"):
        run = tmp_path / steps
        code, _, err = zoo_cli("train", *TINY, *SHAPES, "--freeze", "generator.*", "--max-steps", steps,
                               "--run-dir", str(run))
        assert code == 0, err
        assert "no trainable parameter left for optimizer generator; its loss is logged, not stepped." in err
        weights[steps] = checkpoint.load_weights(checkpoint.list_steps(run)[-1][1])
        records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        assert all("generator" in r for r in records if r["kind"] == "train")
    buffers = ("running_mean", "running_var", "num_batches_tracked")  # BatchNorm statistics still move
    trained = [k for k in weights["2"] if not torch.equal(weights["2"][k], weights["4"][k])
               and not k.endswith(buffers)]
    assert trained and all(k.startswith("discriminator.") for k in trained)


def test_zoo_test_skips_bad_files_on_request_and_names_older_checkpoints(zoo_cli, tmp_path):
    write_folder(tmp_path / "data")
    run = tmp_path / "run"
    code, _, err = zoo_cli("train", *TINY, "--dataset", "imagefolder", "--data", str(tmp_path / "data"),
                           "--model-opt", "image_size=32", "--max-steps", "4", "--save-every", "2",
                           "--run-dir", str(run))
    assert code == 0, err
    bad = tmp_path / "data" / "test" / "blue" / "01.png"
    bad.write_bytes(bad.read_bytes()[:40])
    code, _, err = zoo_cli("test", "--run", str(run))
    assert code == 1 and "01.png" in err and "--skip-bad-files" in err
    code, out, err = zoo_cli("test", "--run", str(run), "--skip-bad-files")
    assert code == 0 and "skipped 1 unreadable sample(s)" in err, err
    result = json.loads((run / "test-metrics.json").read_text())
    total = len(list((tmp_path / "data" / "test").rglob("*.png")))
    assert (result["samples"], result["skipped"]) == (total - 1, 1)  # the metrics are over the samples read
    assert f"on {total - 1} test samples (1 unreadable skipped):" in out

    newest = run / "checkpoints" / "step-4" / "model.safetensors"
    newest.write_bytes(newest.read_bytes()[:100])
    code, _, err = zoo_cli("test", "--run", str(run), "--skip-bad-files")
    assert code == 1 and "step-4 is damaged" in err and "pick another checkpoint with --step N (steps 2)" in err
    code, _, err = zoo_cli("test", "--run", str(run), "--skip-bad-files", "--step", "2")
    assert code == 0, err
    assert json.loads((run / "test-metrics.json").read_text())["step"] == 2


def test_data_for_a_dataset_that_reads_none_is_refused(zoo_cli, tmp_path):
    code, _, err = zoo_cli("train", *TINY, *SHAPES, "--data", str(tmp_path), "--max-steps", "1",
                           "--run-dir", str(tmp_path / "run"))
    assert code == 2 and not (tmp_path / "run").exists(), err
    assert f"dataset 'shapes' does not read --data {tmp_path}; to train on those files pick a dataset" in err


def test_debug_may_follow_the_command_and_shows_the_traceback(zoo_cli, monkeypatch):
    def broken_registry(*_args):
        raise RuntimeError("registry exploded")

    monkeypatch.setattr("train_cli.main.get_registry", broken_registry)
    code, _, err = zoo_cli("info", "dcgan")
    assert code == 1 and err.strip() == ("zoo: internal error: RuntimeError: registry exploded "
                                         "(run with --debug for the traceback)")
    code, _, err = zoo_cli("info", "--debug", "dcgan")
    assert code == 1 and "Traceback" in err
    assert err.strip().splitlines()[-1] == "zoo: internal error: RuntimeError: registry exploded"


def test_a_hook_switched_off_on_resume_can_be_switched_on_again(zoo_cli, tmp_path):
    run = tmp_path / "run"
    assert zoo_cli("train", *TINY, *SHAPES, "--max-steps", "1", "--hook", "early_stopping",
                   "--hook-opt", "early_stopping.metric=generator", "--run-dir", str(run))[0] == 0
    assert zoo_cli("train", "--resume", str(run), "--max-steps", "2", "--no-hook", "early_stopping")[0] == 0
    config = saved_config(run)
    assert "early_stopping" in config["config"]["no_hooks"]
    assert all(not hook["name"].endswith(":early_stopping") for hook in config["resolved"]["hooks"])
    code, _, err = zoo_cli("train", "--resume", str(run), "--max-steps", "3", "--hook", "builtin:early_stopping",
                           "--hook-opt", "early_stopping.patience=4")  # the bare and the plugin:name spelling
    assert code == 0, err
    config = saved_config(run)
    assert not config["config"]["no_hooks"] and any(
        hook["name"] == "builtin:early_stopping" for hook in config["resolved"]["hooks"])


def test_disable_plugin_may_follow_the_command(zoo_cli):
    code, out, err = zoo_cli("list", "plugins", "--disable-plugin", "torchvision", "--json")
    assert code == 0, err
    assert {r["name"]: r["status"] for r in json.loads(out)}["torchvision"] == "disabled"
    code, _, err = zoo_cli("list", "--disable-plugin")  # no name: click's own usage error
    assert code == 2 and "Option '--disable-plugin' requires an argument" in err


# ----------------------------------------------------------------- bad input: one line, exit 2, never a crash
ONE_STEP = [*TINY, *SHAPES, "--max-steps", "1"]  # where a check fails to refuse, the run stays short


@pytest.mark.parametrize("line, field", [
    ("hooks = [1]", "hooks"), ("no_hooks = [1]", "no_hooks"), ('freeze = ["net.*", 1]', "freeze"),
    ("[hook_opt]\nearly_stopping = 3", "hook_opt.early_stopping"),
], ids=["hooks", "no_hooks", "freeze", "hook_opt"])
def test_a_config_list_or_table_of_wrong_items_is_a_usage_error(zoo_cli, tmp_path, line, field):
    config = tmp_path / "c.toml"
    config.write_text(line + "\n")
    code, _, err = zoo_cli("train", *ONE_STEP, "--config", str(config), "--run-dir", str(tmp_path / "run"))
    assert code == 2 and err.startswith(f"zoo: error: {config}: {field} must be ") and len(err.splitlines()) == 1, err
    assert not (tmp_path / "run").exists()


def test_a_config_file_must_be_utf8_and_may_start_with_a_bom(zoo_cli, tmp_path):
    config = tmp_path / "c.toml"
    config.write_bytes(b"\xff\xfem\x00o\x00d\x00e\x00l\x00")
    code, _, err = zoo_cli("train", *ONE_STEP, "--config", str(config), "--run-dir", str(tmp_path / "run"))
    assert code == 2 and f"config file {config} is not a UTF-8 TOML file (byte 0xff at offset 0)" in err, err
    config.write_bytes(b"\xef\xbb\xbfmax_steps = 1\n")
    code, _, err = zoo_cli("train", *TINY, *SHAPES, "--config", str(config), "--run-dir", str(tmp_path / "run"))
    assert code == 0, err
    assert saved_config(tmp_path / "run")["config"]["max_steps"] == 1


@pytest.mark.parametrize("seed", ["99999999999999999999999", str(2**64), str(-2**63 - 1)])
def test_a_seed_out_of_range_names_the_range(zoo_cli, tmp_path, seed):
    refused = f"zoo: error: --seed must be from -2**63 to 2**64-1 (what torch's generators take), got {seed}."
    code, _, err = zoo_cli("train", *ONE_STEP, "--seed", seed, "--run-dir", str(tmp_path / "run"))
    assert code == 2 and err.strip() == refused
    code, _, err = zoo_cli("sample", "--run", str(tmp_path / "run"), "--seed", seed)
    assert code == 2 and err.strip() == refused


def test_a_negative_seed_is_its_own_seed(zoo_cli, tmp_path):
    """Negative seeds stay allowed (runs made with one resume and load); -1 draws other weights than 1
    (torch's generators tell them apart, which the weights show; Python's own RNG does not)."""
    weights = {}
    for seed in ("-1", "1"):
        run = tmp_path / f"run{seed}"
        code, _, err = zoo_cli("train", *ONE_STEP, "--seed", seed, "--run-dir", str(run))
        assert code == 0, err
        weights[seed] = checkpoint.load_weights(checkpoint.list_steps(run)[-1][1])
    assert any(not torch.equal(weights["-1"][key], weights["1"][key]) for key in weights["1"])


@pytest.mark.parametrize("flag, value, shown", [
    ("--lr", "inf", "inf"), ("--lr", "1e400", "inf"), ("--lr", "nan", "nan"), ("--clip-grad", "inf", "inf"),
    ("--clip-grad", "-inf", "-inf"),
])
def test_an_infinite_learning_rate_or_clip_is_refused(zoo_cli, tmp_path, flag, value, shown):
    code, _, err = zoo_cli("train", *ONE_STEP, flag, value, "--run-dir", str(tmp_path / "run"))
    assert code == 2 and err.strip() == f"zoo: error: {flag} must be a finite positive number, got {shown}."


def test_hook_opt_without_a_dot_or_equals_shows_the_hook_form(zoo_cli):
    for given in ("badformat", "patience=3"):
        code, _, err = zoo_cli("train", *ONE_STEP, "--hook-opt", given)
        assert code == 2 and "--hook-opt expects HOOK.KEY=VALUE (e.g. early_stopping.patience=5)" in err, err


def test_hook_opt_for_an_unknown_hook_suggests_the_registered_one():
    from zoo.registry import get_registry
    registry = get_registry()
    registry.check_known("hook", ["early_stopping", "builtin:early_stopping"], "--hook-opt")  # known: nothing said
    with pytest.raises(UsageError) as caught:
        registry.check_known("hook", ["early_stoping"], "--hook-opt")
    assert str(caught.value) == ("--hook-opt names unknown hook 'early_stoping'. Did you mean: early_stopping? "
                                 "Run 'zoo list hooks' to see all.")


@pytest.mark.parametrize("args, message", [
    (("train", "--model", "dcgan"), ABORTED),
    (("test", "--run", "r"), INTERRUPTED),
    (("predict", "--run", "r", "x.png"), INTERRUPTED),
    (("sample", "--run", "r"), INTERRUPTED),
    (("--disable-plugin", "torchvision", "info", "dcgan"), INTERRUPTED),
], ids=["train", "test", "predict", "sample", "info"])
def test_ctrl_c_says_resume_only_for_train(zoo_cli, monkeypatch, args, message):
    def interrupted(*_args):
        raise KeyboardInterrupt

    monkeypatch.setattr("train_cli.main.Context", interrupted)  # Ctrl-C as the command starts
    code, _, err = zoo_cli(*args)
    assert code == 130 and err.strip() == message


def test_hook_opt_for_an_unknown_hook_is_refused_before_the_run_starts(zoo_cli, tmp_path):
    run = tmp_path / "run"
    code, _, err = zoo_cli("train", *ONE_STEP, "--hook-opt", "early_stoping.patience=3", "--run-dir", str(run))
    assert code == 2 and err.strip() == ("zoo: error: --hook-opt names unknown hook 'early_stoping'. "
                                         "Did you mean: early_stopping? Run 'zoo list hooks' to see all.")
    assert not run.exists()


@pytest.mark.parametrize("call, message", [
    (lambda: zoo.create_model(None), "a model name must be a str such as 'dcgan', got NoneType None."),
    (lambda: zoo.create_loss(3), "a loss name must be a str such as 'mse', got int 3."),
    (lambda: zoo.create_dataset(None), "a dataset name must be a str such as 'shapes', got NoneType None."),
    (lambda: zoo.list_models(5), "pattern must be a str such as 'tv_resnet*', a sequence of str or None, got 5."),
    (lambda: zoo.list_losses(["l*", 1]), "pattern must be a str such as 'tv_resnet*', a sequence of str or None, "
                                         "got ['l*', 1]."),
    (lambda: zoo.list_datasets(registry="x"), "registry must be a zoo.registry.Registry or None, got str."),
    (lambda: zoo.preprocess_image(None, (3, 8, 8)), "image must be a PIL image (zoo.read_image(path) reads one), "
                                                    "got NoneType."),
    (lambda: zoo.to_image([0.0]), "expected a (C, H, W) torch.Tensor image, got list."),
], ids=["create_model", "create_loss", "create_dataset", "list_models", "list_losses", "registry",
        "preprocess_image", "to_image"])
def test_the_python_api_names_the_type_it_expects(call, message):
    with pytest.raises(TypeError) as caught:
        call()
    assert str(caught.value) == message

"""`zoo train` and `zoo test` through the real click app, in-process: options, config files, errors."""

from __future__ import annotations

import json

import pytest
import torch

from zoo.engine import checkpoint

TINY = ["--model", "dcgan", "--loss", "mse", "--model-opt", "ngf=8", "--model-opt", "ndf=8",
        "--model-opt", "nz=16", "--dataset-opt", "train_count=32", "--dataset-opt", "test_count=8",
        "--batch-size", "8", "--device", "cpu", "--log-every", "1"]


def error_lines(err: str) -> list[str]:
    """The lines of stderr that are not progress bars or notices."""
    return [line for line in err.splitlines() if line.startswith("zoo: error")]


def test_train_writes_a_run_and_test_reads_it(zoo_cli, tmp_path):
    run = tmp_path / "run"
    code, _, err = zoo_cli("train", *TINY, "--max-steps", "3", "--run-dir", str(run))
    assert code == 0, err
    assert "done at step 3" in err
    code, out, err = zoo_cli("test", "--run", str(run))
    assert code == 0, err
    assert "discriminator" in out and "generator" in out
    assert json.loads((run / "test-metrics.json").read_text())["step"] == 3


def test_config_file_values_and_command_line_overrides(zoo_cli, tmp_path):
    config = tmp_path / "train.toml"
    config.write_text('model = "dcgan"\nbatch_size = 4\nmax_steps = 5\ndevice = "cpu"\nlog_every = 2\n'
                      '[model_opt]\nngf = 8\nndf = 8\nnz = 8\n'
                      '[dataset_opt]\ntrain_count = 16\ntest_count = 4\n')
    run = tmp_path / "run"
    code, _, err = zoo_cli("train", "--config", str(config), "--max-steps", "2",
                       "--model-opt", "nz=4", "--run-dir", str(run))
    assert code == 0, err
    saved = json.loads((run / "config.json").read_text())["config"]
    assert saved["batch_size"] == 4 and saved["max_steps"] == 2 and saved["log_every"] == 2
    assert saved["model_opt"] == {"ngf": 8, "ndf": 8, "nz": "4"}  # as given; parsed in "resolved"
    resolved = json.loads((run / "config.json").read_text())["resolved"]["model_options"]
    assert resolved["nz"] == 4 and resolved["ngf"] == 8
    weights = checkpoint.load_weights(checkpoint.list_steps(run)[-1][1])
    assert weights["generator.main.0.weight"].shape[0] == 4  # nz from the command line won


@pytest.mark.parametrize("content, message", [
    ('model = "dcgan"\nbatchsize = 4\n', "unknown key 'batchsize'. Did you mean: batch_size"),
    ('model = "dcgan"\nbatch_size = "many"\n', "batch_size must be int"),
    ('model = "dcgan"\nbatch_size = \n', "not valid TOML"),
    ('model = "dcgan"\nmodel_opt = 3\n', "model_opt must be a table"),
])
def test_bad_config_files_are_one_line_usage_errors(zoo_cli, tmp_path, content, message):
    config = tmp_path / "bad.toml"
    config.write_text(content)
    code, _, err = zoo_cli("train", "--config", str(config), "--run-dir", str(tmp_path / "run"))
    assert code == 2
    assert message in err
    assert len(error_lines(err)) == 1 and "Traceback" not in err


@pytest.mark.parametrize("args, message", [
    (["--batch-size", "0"], "--batch-size must be at least 1"),
    (["--lr", "abc"], "'abc' is not a valid float"),
    (["--model-opt", "ngf=abc"], "ngf expects an integer"),
    (["--model-opt", "ngf"], "--model-opt expects KEY=VALUE"),
    (["--hook", "tensorbord"], "Did you mean: tensorboard"),
    (["--loss", "perceptuall"], "Did you mean: perceptual"),
    (["--precision", "8"], "'8' is not one of"),
])
def test_bad_options_are_one_line_usage_errors(zoo_cli, tmp_path, args, message):
    code, _, err = zoo_cli("train", *TINY, *args, "--run-dir", str(tmp_path / "run"))
    assert code == 2, err
    assert message in err
    assert len(error_lines(err)) == 1 and "Traceback" not in err


def test_a_run_dir_holding_a_run_needs_resume_or_overwrite(zoo_cli, tmp_path):
    run = tmp_path / "run"
    assert zoo_cli("train", *TINY, "--max-steps", "1", "--run-dir", str(run))[0] == 0
    code, _, err = zoo_cli("train", *TINY, "--max-steps", "1", "--run-dir", str(run))
    assert code == 2 and "--resume" in err and "--overwrite" in err
    code, _, err = zoo_cli("train", *TINY, "--max-steps", "2", "--run-dir", str(run), "--overwrite")
    assert code == 0, err
    assert [s for s, _ in checkpoint.list_steps(run)] == [2]


def test_resume_extends_but_refuses_changes_to_model_or_data(zoo_cli, tmp_path):
    run = tmp_path / "run"
    assert zoo_cli("train", *TINY, "--max-steps", "2", "--run-dir", str(run))[0] == 0
    code, _, err = zoo_cli("train", "--resume", str(run), "--lr", "0.1")
    assert code == 2 and "--lr cannot change when resuming" in err
    code, _, err = zoo_cli("train", "--resume", str(run), "--max-steps", "5", "--no-hook", "samples")
    assert code == 0, err
    assert "resuming" in err and checkpoint.list_steps(run)[-1][0] == 5
    assert json.loads((run / "config.json").read_text())["config"]["max_steps"] == 5


def test_resume_of_a_missing_folder_or_a_non_run(zoo_cli, tmp_path):
    code, _, err = zoo_cli("train", "--resume", str(tmp_path / "nope"))
    assert code == 2 and "does not exist" in err
    (tmp_path / "empty").mkdir()
    code, _, err = zoo_cli("train", "--resume", str(tmp_path / "empty"))
    assert code == 2 and "not a zoo run" in err


def test_no_hook_turns_the_sample_grids_off(zoo_cli, tmp_path):
    run = tmp_path / "run"
    code, _, err = zoo_cli("train", *TINY, "--max-steps", "2", "--run-dir", str(run), "--no-hook", "samples")
    assert code == 0, err
    assert not (run / "samples").exists()
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))


def test_bf16_precision_and_clipping_run_on_the_cpu(zoo_cli, tmp_path):
    run = tmp_path / "run"
    code, _, err = zoo_cli("train", *TINY, "--max-steps", "2", "--run-dir", str(run),
                       "--precision", "bf16", "--clip-grad", "0.5", "--accumulate", "2")
    assert code == 0, err
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["kind"] == "train"] == [1, 2]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown when no GPU exists")
def test_device_cuda_without_a_gpu(zoo_cli, tmp_path):
    code, _, err = zoo_cli("train", *TINY, "--device", "cuda", "--run-dir", str(tmp_path / "run"))
    assert code == 2 and "no CUDA GPU" in err and "--device cpu" in err


def test_zoo_test_without_a_checkpoint(zoo_cli, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"config": {"model": "dcgan"}}))
    code, _, err = zoo_cli("test", "--run", str(run))
    assert code == 2 and "no checkpoint" in err


def test_a_run_that_never_started_leaves_no_folder(zoo_cli, tmp_path):
    run = tmp_path / "run"
    code, _, err = zoo_cli("train", *TINY, "--loss", "perceptual", "--model", "mnist_net", "--run-dir", str(run))
    assert code == 2 and "losses that fit" in err
    assert not run.exists()


def test_a_failed_run_without_checkpoints_can_be_run_again(zoo_cli, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"config": {"model": "dcgan"}}))  # failed before its first save
    code, _, err = zoo_cli("train", *TINY, "--max-steps", "1", "--run-dir", str(run))
    assert code == 0, err
    assert "never saved a checkpoint" in err


def test_resume_refuses_another_run_dir_and_says_when_a_run_is_complete(zoo_cli, tmp_path):
    run = tmp_path / "run"
    assert zoo_cli("train", *TINY, "--max-steps", "2", "--run-dir", str(run))[0] == 0
    code, _, err = zoo_cli("train", "--resume", str(run), "--run-dir", str(tmp_path / "elsewhere"))
    assert code == 2 and "--run-dir cannot change when resuming" in err
    code, _, err = zoo_cli("train", "--resume", str(run))
    assert code == 0 and "already complete at step 2" in err


def test_the_default_run_folder_names_the_default_loss(zoo_cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = zoo_cli("train", "--model", "mnist_net", "--dataset-opt", "train_count=32",
                       "--dataset-opt", "test_count=8", "--batch-size", "8", "--max-steps", "1", "--device", "cpu")
    assert code == 0, err
    assert [p.name.rsplit("-", 2)[0] for p in (tmp_path / "runs").iterdir()] == ["mnist_net-cross_entropy"]

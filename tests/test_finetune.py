"""Fine-tuning: --init-from a run or a file, --no-strict, --freeze, and resuming such a run."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from zoo.engine import checkpoint

CLASSIFIER = ["--model", "mnist_net", "--dataset-opt", "train_count=64", "--dataset-opt", "test_count=16",
              "--batch-size", "16", "--device", "cpu", "--log-every", "2"]


def newest(run) -> tuple[dict, dict]:
    return checkpoint.load(checkpoint.list_steps(run)[-1][1])


@pytest.fixture
def base_run(zoo_cli, tmp_path):
    run = tmp_path / "base"
    code, _, err = zoo_cli("train", *CLASSIFIER, "--max-steps", "4", "--run-dir", str(run))
    assert code == 0, err
    return run


def test_init_from_a_run_with_frozen_layers_trains_and_resumes(zoo_cli, tmp_path, base_run):
    base_weights, _ = newest(base_run)
    run = tmp_path / "tuned"
    code, _, err = zoo_cli("train", *CLASSIFIER, "--max-steps", "3", "--init-from", str(base_run),
                       "--freeze", "net.conv*", "--run-dir", str(run))
    assert code == 0, err
    assert "froze 4 parameter tensor(s)" in err
    assert "zoo: --init-from loaded 8 of the model's 8 tensors." in err  # a strict load says so too
    weights, state = newest(run)
    for key in ("net.conv1.weight", "net.conv1.bias", "net.conv2.weight", "net.conv2.bias"):
        assert torch.equal(weights[key], base_weights[key]), key  # frozen: exactly the base run's
    assert not torch.equal(weights["net.fc2.weight"], base_weights["net.fc2.weight"])  # trained on
    # frozen parameters get no optimizer state: only fc1/fc2 weight and bias have Adadelta buffers
    assert len(state["optimizers"]["model"]["state"]) == 4
    saved = json.loads((run / "config.json").read_text())
    assert saved["init_from"]["source"].endswith("step-4")
    code, _, err = zoo_cli("train", "--resume", str(run), "--max-steps", "5")
    assert code == 0, err
    resumed, _ = newest(run)
    assert torch.equal(resumed["net.conv1.weight"], base_weights["net.conv1.weight"])
    assert checkpoint.list_steps(run)[-1][0] == 5


def test_init_from_is_strict_unless_told_otherwise(zoo_cli, tmp_path, base_run):
    code, _, err = zoo_cli("train", *CLASSIFIER, "--model-opt", "num_classes=7", "--max-steps", "1",
                       "--init-from", str(base_run), "--run-dir", str(tmp_path / "strict"))
    assert code == 2
    assert "does not fit the model" in err and "net.fc2" in err and "--no-strict" in err
    code, _, err = zoo_cli("train", *CLASSIFIER, "--model-opt", "num_classes=7", "--max-steps", "1",
                       "--init-from", str(base_run), "--no-strict", "--run-dir", str(tmp_path / "loose"))
    assert code == 0, err
    assert "other shapes (kept as initialised): net.fc2.bias, net.fc2.weight" in err


def test_init_from_a_safetensors_file_and_bad_sources(zoo_cli, tmp_path, base_run):
    weights, _ = newest(base_run)
    file = tmp_path / "weights.safetensors"
    save_file(weights, str(file))
    code, _, err = zoo_cli("train", *CLASSIFIER, "--max-steps", "1", "--init-from", str(file),
                       "--run-dir", str(tmp_path / "from-file"))
    assert code == 0, err
    pickled = tmp_path / "weights.pth"
    torch.save(weights, pickled)
    code, _, err = zoo_cli("train", *CLASSIFIER, "--init-from", str(pickled), "--run-dir", str(tmp_path / "x"))
    assert code == 2 and "no pickled .pth" in err
    code, _, err = zoo_cli("train", *CLASSIFIER, "--freeze", "net.nothing*", "--run-dir", str(tmp_path / "y"))
    assert code == 2 and "matches no parameter" in err


def test_init_from_a_run_of_another_model_is_refused_when_nothing_fits(zoo_cli, tmp_path):
    other = tmp_path / "gan"
    code, _, err = zoo_cli("train", "--model", "dcgan", "--model-opt", "ngf=8", "--model-opt", "ndf=8",
                       "--model-opt", "nz=16", "--dataset-opt", "train_count=16", "--dataset-opt", "test_count=8",
                       "--batch-size", "8", "--device", "cpu", "--max-steps", "1", "--run-dir", str(other))
    assert code == 0, err
    held = len(newest(other)[0])
    for strictness in ([], ["--no-strict"]):
        run = tmp_path / f"tuned{len(strictness)}"
        code, _, err = zoo_cli("train", *CLASSIFIER, "--max-steps", "1", "--init-from", str(other), *strictness,
                           "--run-dir", str(run))
        assert code == 2, err
        assert f"none of its {held} tensors fit model 'mnist_net' (it holds a 'dcgan'); give a run of the same " \
               f"model, or drop --init-from." in err
        assert "unexpected keys" not in err and not checkpoint.list_steps(run)


def test_init_from_no_strict_says_how_many_tensors_it_loaded(zoo_cli, tmp_path, base_run):
    code, _, err = zoo_cli("train", *CLASSIFIER, "--model-opt", "num_classes=7", "--max-steps", "1",
                       "--init-from", str(base_run), "--no-strict", "--run-dir", str(tmp_path / "loose"))
    assert code == 0, err
    assert "zoo: --init-from loaded 6 of the model's 8 tensors; the rest start as initialised." in err
    saved = json.loads((tmp_path / "loose" / "config.json").read_text())
    assert saved["init_from"]["loaded"] == 6 and saved["init_from"]["model_tensors"] == 8


def test_a_run_killed_before_its_first_checkpoint_resumes_from_its_init_from_weights(zoo_cli, tmp_path, base_run):
    """Resuming a run with no checkpoint starts it over: with its --init-from weights, as the first start did."""
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    for run in (whole, cut):
        code, _, err = zoo_cli("train", *CLASSIFIER, "--max-steps", "3", "--init-from", str(base_run),
                               "--run-dir", str(run))
        assert code == 0, err
    for folder in (cut / "checkpoints").iterdir():  # as if killed before its first save
        for file in folder.iterdir():
            file.unlink()
        folder.rmdir()
    code, _, err = zoo_cli("train", "--resume", str(cut))
    assert code == 0, err
    assert "has no checkpoint yet; starting over" in err
    started_over, _ = newest(cut)
    expected, _ = newest(whole)
    assert started_over.keys() == expected.keys()
    assert all(torch.equal(started_over[key], expected[key]) for key in expected)
    assert json.loads((cut / "config.json").read_text())["init_from"]["source"].endswith("step-4")


def test_init_from_a_run_whose_newest_checkpoint_is_damaged_names_another(zoo_cli, tmp_path):
    run = tmp_path / "base"
    code, _, err = zoo_cli("train", *CLASSIFIER, "--max-steps", "4", "--save-every", "2", "--run-dir", str(run))
    assert code == 0, err
    newest_weights = run / "checkpoints" / "step-4" / "model.safetensors"
    newest_weights.write_bytes(newest_weights.read_bytes()[:100])
    code, _, err = zoo_cli("train", *CLASSIFIER, "--max-steps", "1", "--init-from", str(run),
                           "--run-dir", str(tmp_path / "tuned"))
    assert code == 2
    assert f"--init-from: checkpoint {run / 'checkpoints' / 'step-4'} is damaged" in err
    assert err.rstrip().endswith(f"pass another of the run's checkpoints, e.g. --init-from "
                                 f"{run / 'checkpoints' / 'step-2'}.")
    code, _, err = zoo_cli("train", *CLASSIFIER, "--max-steps", "1", "--init-from", str(run / "checkpoints" / "step-2"),
                           "--run-dir", str(tmp_path / "tuned"))
    assert code == 0, err

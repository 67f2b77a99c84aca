"""Data-parallel training with torch.distributed (gloo, 2 CPU processes through torchrun)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from zoo.config import TrainConfig
from zoo.engine import checkpoint
from zoo.engine.rundir import prepare_new
from zoo.engine.trainer import Trainer
from zoo.registry import discover

# BatchNorm-free, dropout-free: instance-normalised ResNet blocks.
MODEL = ["--model", "resnet_i2i", "--loss", "l1", "--model-opt", "ngf=8", "--model-opt", "blocks=1",
         "--dataset-opt", "train_count=64", "--dataset-opt", "test_count=8", "--device", "cpu",
         "--log-every", "1", "--eval-every", "0"]


def zoo(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "train_cli", *args], capture_output=True, text=True,
                          timeout=300, **kwargs)


def newest(run: Path) -> dict[str, torch.Tensor]:
    return checkpoint.load_weights(checkpoint.list_steps(run)[-1][1])


def test_two_processes_match_one_process_with_the_same_global_batch(tmp_path):
    done = zoo("train", *MODEL, "--batch-size", "4", "--max-steps", "6", "--nproc-per-node", "2",
               "--run-dir", str(tmp_path / "ddp"))
    assert done.returncode == 0, done.stderr
    assert "global batch 4 x 2 x accumulate 1 = 8" in done.stderr
    assert sorted(p.name for p in (tmp_path / "ddp" / "checkpoints").iterdir()) == ["step-6"]  # one set
    assert len(list((tmp_path / "ddp" / "tensorboard").glob("events.*"))) == 1  # rank 0 alone writes
    records = [json.loads(x) for x in (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 6]  # one line per step, not one per process

    config = TrainConfig(model="resnet_i2i", loss="l1", model_opt={"ngf": "8", "blocks": "1"},
                         dataset_opt={"train_count": "64", "test_count": "8"}, device="cpu", batch_size=8,
                         max_steps=6, eval_every=0, run_dir=str(tmp_path / "single"))
    prepare_new(tmp_path / "single", overwrite=False)
    Trainer(config, discover(), tmp_path / "single").fit()
    one, two = newest(tmp_path / "single"), newest(tmp_path / "ddp")
    assert one.keys() == two.keys()
    for key in one:
        assert torch.allclose(one[key], two[key], atol=1e-5, rtol=1e-4), key


def test_sigterm_under_ddp_saves_once_and_resumes(tmp_path):
    common = ["--batch-size", "4", "--max-steps", "40", "--nproc-per-node", "2", "--save-every", "0"]
    straight = zoo("train", *MODEL, *common, "--run-dir", str(tmp_path / "straight"))
    assert straight.returncode == 0, straight.stderr

    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "train_cli", "train", *MODEL, *common, "--run-dir", str(run)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    metrics = run / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 3:
            break
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGTERM)  # every process of the job, as a scheduler would
    _, stderr = proc.communicate(timeout=120)
    steps = [s for s, _ in checkpoint.list_steps(run)]
    assert len(steps) == 1 and 3 <= steps[0] < 40, stderr
    assert "Resume with: zoo train --resume" in stderr

    refused = zoo("train", "--resume", str(run))  # one process cannot continue a two-process run
    assert refused.returncode == 2 and "--nproc-per-node 2" in refused.stderr

    resumed = zoo("train", "--resume", str(run), "--nproc-per-node", "2")
    assert resumed.returncode == 0, resumed.stderr
    a, b = newest(tmp_path / "straight"), newest(run)
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-6), key


def test_an_unreadable_file_met_by_the_second_process_is_named(tmp_path):
    from PIL import Image

    from plugins.datasets.imagefolder import ImageFolderDataset
    from zoo.engine.feed import EpochOrder
    folder = tmp_path / "data" / "train" / "blue"
    folder.mkdir(parents=True)
    for i in range(16):
        Image.new("RGB", (16, 16), (i * 15, 80, 160)).save(folder / f"img{i:02d}.png")
    dataset = ImageFolderDataset("train", task="generation", data=str(tmp_path / "data"))
    second = Path(dataset.files[EpochOrder(len(dataset), seed=0, shuffle=True, shard=(1, 2)).order()[0]][0])
    second.write_bytes(second.read_bytes()[:40])  # the first sample process 1 reads
    done = zoo("train", "--model", "dcgan", "--loss", "mse", "--model-opt", "ngf=8", "--model-opt", "ndf=8",
               "--model-opt", "nz=16", "--dataset", "imagefolder", "--data", str(tmp_path / "data"), "--device", "cpu",
               "--batch-size", "4", "--max-steps", "2", "--nproc-per-node", "2", "--run-dir", str(tmp_path / "run"))
    assert done.returncode != 0
    assert second.name in done.stderr and "--skip-bad-files" in done.stderr, done.stderr


@pytest.mark.parametrize("rank", [0, 1])
def test_each_error_of_a_job_is_said_once(rank):
    from train_cli.jobs import job_error, said_here
    from zoo.engine.feed import BadSampleError
    from zoo.errors import RunError, UsageError
    is_main = rank == 0
    said = job_error(UsageError("model 'dcgan' has no option 'nosuch'"), rank)
    assert said_here(said) is is_main  # every process meets it: rank 0 says it
    assert said_here(job_error(BadSampleError("cannot read data/img03.png"), rank))  # only it can name it
    assert said_here(job_error(RunError("out of memory putting model 'dcgan' on cuda:1"), rank))  # its own
    ended = job_error(RuntimeError("[gloo/transport/tcp/pair.cc:561] Connection closed by peer"), rank)
    assert not said_here(ended) and ended.exit_code == 1  # the peer, or the launcher, said why
    bug = RuntimeError("index out of range")
    assert job_error(bug, rank) is bug  # a bug of its own still shows


@pytest.mark.parametrize("rank", [0, 1])
def test_an_error_of_the_training_steps_is_said_by_rank_0_unless_only_its_process_met_it(rank):
    from train_cli.jobs import job_error, said_here
    from zoo.errors import RunError
    non_finite = job_error(RunError("the loss is not finite at step 3"), rank, in_steps=True)
    assert said_here(non_finite) is (rank == 0)  # every process takes the steps in step: rank 0 says it
    full = job_error(RunError("out of device memory at step 3", one_process=True), rank, in_steps=True)
    assert said_here(full)  # its own GPU: only it can say it
    from zoo.engine.report import whole_step_unreadable
    assert said_here(job_error(whole_step_unreadable(3, 1), rank, in_steps=True))  # its own samples
    assert job_error(non_finite, rank) is non_finite  # wrapped once, where the steps raised it


def test_errors_keep_one_process_across_processes():
    import pickle

    from train_cli.jobs import JobError
    from zoo.engine.feed import BadSampleError, WrongItemError
    from zoo.errors import AmbiguousNameError, RunError, ZooError
    assert not ZooError("plain").one_process and RunError("its GPU", one_process=True).one_process
    assert BadSampleError("cannot read a.png").one_process and WrongItemError("bad item").one_process
    for error in (RunError("its GPU", one_process=True), BadSampleError("cannot read a.png"),
                  BadSampleError("told otherwise", one_process=False),
                  AmbiguousNameError("model", "net", ["a:net", "b:net"]),
                  JobError(RunError("in step"), 1, in_steps=True)):
        copy = pickle.loads(pickle.dumps(error))
        assert (type(copy), str(copy), copy.one_process) == (type(error), str(error), error.one_process)
    job = pickle.loads(pickle.dumps(JobError(BadSampleError("x"), 1, in_steps=True)))
    assert (job.rank, job.in_steps, type(job.error), job.exit_code) == (1, True, BadSampleError, 1)


def test_a_run_folder_refused_by_rank_0_ends_the_other_process_quietly(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.json").write_text('{"app": "settings"}')
    done = zoo("train", *MODEL, "--max-steps", "1", "--nproc-per-node", "2", "--run-dir", str(tmp_path / "run"))
    assert done.returncode == 2
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "is not a zoo run" in lines[0], done.stderr


@pytest.mark.parametrize("device, gpus, refused", [("auto", 1, True), ("cuda", 2, False), ("cpu", 1, False)])
def test_more_processes_than_gpus_is_refused_in_one_line(monkeypatch, device, gpus, refused):
    """Each process trains on its own GPU: without enough, set_device would fail with a raw CUDA error."""
    from zoo.engine.distributed import check_gpu_count
    from zoo.errors import UsageError
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    if refused:
        with pytest.raises(UsageError, match="2 processes on this machine need 2 GPUs .* but 1 is visible; "
                                             "lower --nproc-per-node to 1, or train on --device cpu"):
            check_gpu_count(device, 2)
    else:
        check_gpu_count(device, 2)

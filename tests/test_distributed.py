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
from zoo.engine.feed import EpochOrder
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

    resumed = zoo("train", "--resume", str(run))  # one process goes on with the two-process run's global batch
    assert resumed.returncode == 0, resumed.stderr
    assert ("resumed with 1 process(es) instead of 2: per-process batch 4 -> 8 keeps the global batch 8"
            in resumed.stderr)
    recorded = json.loads((run / "config.json").read_text())
    assert (recorded["config"]["batch_size"], recorded["resolved"]["processes"]) == (8, 1)
    a, b = newest(tmp_path / "straight"), newest(run)
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-5, rtol=1e-4), key


def _single_process_run(run_dir: Path, batch_size: int, max_steps: int, resume: bool = False) -> None:
    """MODEL trained in this process (no launcher)."""
    config = TrainConfig(model="resnet_i2i", loss="l1", model_opt={"ngf": "8", "blocks": "1"},
                         dataset_opt={"train_count": "64", "test_count": "8"}, device="cpu", batch_size=batch_size,
                         max_steps=max_steps, eval_every=0, save_every=0, run_dir=str(run_dir))
    if not resume:
        prepare_new(run_dir, overwrite=False)
    Trainer(config, discover(), run_dir, resume=resume).fit()


def test_a_one_process_run_resumes_in_two_mid_epoch_as_if_straight(tmp_path):
    _single_process_run(tmp_path / "straight", batch_size=8, max_steps=11)
    _single_process_run(tmp_path / "run", batch_size=8, max_steps=3)  # 8 steps an epoch: stopped in the first
    resumed = zoo("train", "--resume", str(tmp_path / "run"), "--max-steps", "11", "--nproc-per-node", "2")
    assert resumed.returncode == 0, resumed.stderr
    assert ("resumed with 2 process(es) instead of 1: per-process batch 8 -> 4 keeps the global batch 8"
            in resumed.stderr)
    assert "global batch 4 x 2 x accumulate 1 = 8" in resumed.stderr
    recorded = json.loads((tmp_path / "run" / "config.json").read_text())
    assert (recorded["config"]["batch_size"], recorded["resolved"]["processes"]) == (4, 2)
    state = checkpoint.load(checkpoint.list_steps(tmp_path / "run")[-1][1])[1]
    assert (state["step"], state["epoch"], state["position"], state["samples"]) == (11, 1, 3, 24)
    assert (state["world_size"], state["global_batch"], len(state["rng_by_rank"])) == (2, 8, 2)
    a, b = newest(tmp_path / "straight"), newest(tmp_path / "run")
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-5, rtol=1e-4), key


def test_a_global_batch_that_does_not_split_is_refused_in_one_line_before_launching(tmp_path):
    _single_process_run(tmp_path / "run", batch_size=6, max_steps=1)
    refused = zoo("train", "--resume", str(tmp_path / "run"), "--nproc-per-node", "4")
    assert refused.returncode == 2
    lines = [line for line in refused.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, refused.stderr
    assert lines[0].endswith("the run's global batch 6 cannot be split over 4 processes; resume with "
                             "--nproc-per-node 1, 2, 3 or 6.")
    assert [s for s, _ in checkpoint.list_steps(tmp_path / "run")] == [1]  # nothing was started


def test_the_refusal_names_the_process_counts_that_split_the_global_batch():
    from zoo.engine.saving import per_process_batch, process_counts
    from zoo.errors import UsageError
    assert per_process_batch(4, 2, 1) == 8 and per_process_batch(8, 1, 2) == 4 and per_process_batch(4, 2, 2) == 4
    with pytest.raises(UsageError, match=r"global batch 12 cannot be split over 5 processes; resume with "
                                         r"--nproc-per-node 1, 2, 3, 4, 6 or 12\.$"):
        per_process_batch(6, 2, 5)
    with pytest.raises(UsageError, match=r"global batch 24 \(12 x accumulate 2\) cannot be split over 5"):
        per_process_batch(6, 2, 5, accumulate=2)
    assert process_counts(1024, 6) == [1, 2, 4, 8, 16, 32, 64, 128]  # capped, the nearest kept
    assert process_counts(1024, 100) == [8, 16, 32, 64, 128, 256, 512, 1024]


def _consumed(size: int, seed: int, shuffle: bool, epoch: int, start: int, world: int, batch: int,
              batches: int | None) -> list[int]:
    """What ``world`` processes take of an epoch from ``start`` samples on, ``batches`` batches of ``batch`` each
    (None: to the end)."""
    taken = []
    for rank in range(world):
        order = EpochOrder(size, seed, shuffle, shard=(rank, world))
        order.set_epoch(epoch, start)
        share = [index for index, _ in order]
        assert len(share) == len(order)
        taken += share if batches is None else share[:batches * batch]
    return taken


@pytest.mark.parametrize("shuffle", [True, False])
@pytest.mark.parametrize("before, after, batch, batches", [(2, 1, 4, 3), (1, 2, 8, 3), (2, 3, 6, 1), (4, 2, 2, 5),
                                                             (2, 1, 4, 0), (3, 3, 4, 2)])
def test_an_epoch_switched_to_another_process_count_sees_each_sample_once(shuffle, before, after, batch, batches):
    size, seed, epoch = 64, 5, 2
    done = _consumed(size, seed, shuffle, epoch, 0, before, batch, batches)
    start = batches * batch * before
    whole = EpochOrder(size, seed, shuffle)
    whole.set_epoch(epoch)
    full = whole.full_order()
    assert sorted(full) == list(range(size)) and (full != list(range(size))) is shuffle
    assert sorted(done) == sorted(full[:start])  # interleaved shards: what was done is a prefix of the order
    rest = _consumed(size, seed, shuffle, epoch, start, after, batch * before // after, None)
    assert sorted(done + rest) == list(range(size))  # no sample twice, none skipped
    for rank in range(after):  # each process of the resumed run: its share of the rest, in order
        order = EpochOrder(size, seed, shuffle, shard=(rank, after))
        order.set_epoch(epoch, start)
        assert order.remaining() == full[start:][rank::after]
        if after == before:  # the same count: exactly its own share from its batch on, as before
            assert order.remaining() == order.order()[batches * batch:]


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


def _checkpoints(world: int, rank: int = 0, batch_size: int = 4):
    """A run's Checkpoints as one process of ``world`` sees them (only what identity and generators need)."""
    from types import SimpleNamespace

    from zoo.engine.distributed import DistContext
    from zoo.engine.saving import Checkpoints
    run = SimpleNamespace(run_dir=Path("run"), dist=DistContext(rank, world), report=None, train_set=[0] * 64,
                          plan=SimpleNamespace(model=SimpleNamespace(qualified_name="builtin:resnet_i2i")),
                          config=TrainConfig(batch_size=batch_size, seed=3))
    return Checkpoints(run)


def test_older_checkpoints_and_another_global_batch_are_checked_and_generators_chosen_per_rank():
    from zoo.engine import rng
    from zoo.engine.bad_items import BadItems
    from zoo.engine.state import TrainState
    from zoo.errors import UsageError
    old = {"model": "builtin:resnet_i2i", "train_size": 64, "world_size": 2, "step": 5, "epoch": 0, "position": 3}
    _checkpoints(world=2)._check_identity(old, Path("step-5"))  # an older checkpoint, as many processes: read
    state = TrainState(BadItems(False), samples_per_batch=8)
    state.load_state_dict(old)
    assert (state.position, state.samples, state.state_dict()["samples"]) == (3, 24, 24)
    with pytest.raises(UsageError, match="made by 2 process.*predates resumes with another number; resume with "
                                         "--nproc-per-node 2"):
        _checkpoints(world=1, batch_size=8)._check_identity(old, Path("step-5"))
    new = {**old, "global_batch": 8, "samples": 24}
    _checkpoints(world=1, batch_size=8)._check_identity(new, Path("step-5"))  # the same global batch: read
    with pytest.raises(UsageError, match="global batch of 8 but this run's is 4"):
        _checkpoints(world=1, batch_size=4)._check_identity(new, Path("step-5"))

    torch.manual_seed(11)
    saved = [rng.capture()]  # a one-process run's generators
    expected = torch.rand(3)
    _checkpoints(world=2, rank=0)._restore_rng({"rng": saved[0], "step": 5})
    assert torch.equal(torch.rand(3), expected)  # rank 0 takes the saved ones
    draws = []
    for _ in range(2):  # rank 1 has none saved: seeded from (seed, rank, step), the same every time
        _checkpoints(world=2, rank=1)._restore_rng({"rng": saved[0], "step": 5})
        draws.append(torch.rand(3))
    assert torch.equal(draws[0], draws[1]) and not torch.equal(draws[0], expected)
    _checkpoints(world=1, rank=0)._restore_rng({"rng": saved[0], "rng_by_rank": [saved[0], None], "step": 5})
    assert torch.equal(torch.rand(3), expected)  # fewer processes: each takes its own rank's

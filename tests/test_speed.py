"""The speed switches: channels-last, --fast, torch.compile fallbacks, the side-stream device feed."""

from __future__ import annotations

import json

import pytest
import torch

from zoo.config import TrainConfig
from zoo.engine import checkpoint, speed
from zoo.engine.feed import DeviceFeed
from zoo.engine.precision import resolve_device

TINY = ["--model", "dcgan", "--loss", "mse", "--model-opt", "ngf=8", "--model-opt", "ndf=8",
        "--model-opt", "nz=16", "--dataset-opt", "train_count=32", "--dataset-opt", "test_count=8",
        "--batch-size", "8", "--log-every", "1", "--max-steps", "3"]
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def weights(run):
    return checkpoint.load_weights(checkpoint.list_steps(run)[-1][1])


@pytest.mark.parametrize("name, index", [("auto", 1), ("cuda", 1), ("cuda:0", 0)])
def test_a_cuda_device_always_has_its_index(monkeypatch, name, index):
    """torch.cuda.set_device and device comparisons need the index: a bare 'cuda' is the current GPU."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    assert resolve_device(name) == torch.device("cuda", index)


def test_channels_last_trains_to_the_same_weights_within_float_tolerance(zoo_cli, tmp_path):
    assert zoo_cli("train", *TINY, "--device", "cpu", "--run-dir", str(tmp_path / "a"))[0] == 0
    code, _, err = zoo_cli("train", *TINY, "--device", "cpu", "--channels-last", "--run-dir", str(tmp_path / "b"))
    assert code == 0, err
    a, b = weights(tmp_path / "a"), weights(tmp_path / "b")
    assert all(torch.allclose(a[k], b[k], atol=1e-4, rtol=1e-3) for k in a)
    speed = json.loads((tmp_path / "b" / "config.json").read_text())["resolved"]["speed"]
    assert speed == {"precision": "32", "channels_last": True, "compile": False, "cuda_graph": False}


@pytest.mark.parametrize("capability, precision", [((7, 0), "16-mixed"), ((8, 0), "bf16"), ((9, 0), "bf16")])
def test_fast_picks_bf16_only_where_the_gpu_computes_it_natively(monkeypatch, capability, precision):
    """A V100 or T4 emulates bf16 (slowly): --fast takes float16 with its scaler there."""
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    config = TrainConfig(model="dcgan", fast=True)
    settings = speed.resolve(config, torch.device("cuda", 0), say=lambda _line: None)
    assert (settings.precision, settings.channels_last, settings.cuda_graph) == (precision, True, True)


def test_fast_on_the_cpu_says_it_changes_nothing(zoo_cli, tmp_path):
    code, _, err = zoo_cli("train", *TINY, "--device", "cpu", "--fast", "--run-dir", str(tmp_path / "run"))
    assert code == 0, err
    assert "--fast speeds up CUDA runs; on cpu it changes nothing" in err
    speed = json.loads((tmp_path / "run" / "config.json").read_text())["resolved"]["speed"]
    assert speed == {"precision": "32", "channels_last": False, "compile": False, "cuda_graph": False}


def test_float16_on_the_cpu_runs_and_records_bf16(zoo_cli, tmp_path):
    code, _, err = zoo_cli("train", *TINY, "--device", "cpu", "--precision", "16-mixed",
                           "--run-dir", str(tmp_path / "run"))
    assert code == 0, err
    assert err.count("--precision 16-mixed needs a CUDA device; using bf16 on cpu.") == 1
    speed = json.loads((tmp_path / "run" / "config.json").read_text())["resolved"]["speed"]
    assert speed["precision"] == "bf16"


def test_a_model_that_cannot_be_compiled_falls_back_in_one_line(zoo_cli, tmp_path, monkeypatch):
    from plugins.models.dcgan import DCGAN
    monkeypatch.setattr(DCGAN, "compilable", False)
    code, _, err = zoo_cli("train", *TINY, "--device", "cpu", "--compile", "--run-dir", str(tmp_path / "run"))
    assert code == 0, err
    assert "DCGAN cannot be compiled; running it eagerly" in err


def test_device_feed_on_the_cpu_passes_batches_through():
    items = [((torch.ones(2, 3, 4, 4), torch.zeros(2)), []), (None, ["bad"])]

    class Source:
        def __init__(self):
            self.items, self.closed = iter(items), False

        def __next__(self):
            return next(self.items)

        def close(self):
            self.closed = True

    source = Source()
    feed = DeviceFeed(source, torch.device("cpu"), channels_last=True)
    batch, bad = next(feed)
    assert bad == [] and batch[0].is_contiguous(memory_format=torch.channels_last)
    assert next(feed) == (None, ["bad"])
    with pytest.raises(StopIteration):
        next(feed)
    feed.close()
    assert source.closed


@needs_cuda
def test_device_feed_copies_on_a_side_stream_and_keeps_order():
    host = [((torch.full((2, 3, 4, 4), float(i)).pin_memory(), torch.tensor([i, i])), []) for i in range(4)]

    class Source:
        def __init__(self):
            self.items = iter(host)

        def __next__(self):
            return next(self.items)

        def close(self):
            pass

    feed = DeviceFeed(Source(), torch.device("cuda"))
    seen = [int(batch[1][0]) for batch, _ in feed]
    assert seen == [0, 1, 2, 3]


@needs_cuda
def test_fast_on_cuda_trains_and_records_peak_memory(zoo_cli, tmp_path):
    code, _, err = zoo_cli("train", *TINY, "--device", "cuda", "--fast", "--run-dir", str(tmp_path / "run"))
    assert code == 0, err
    records = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all(r["peak_memory_gib"] > 0 for r in records if r["kind"] == "train")


@needs_cuda
@pytest.mark.parametrize("flags", [[], ["--fast"], ["--decode-on-device", "--cache-decoded"]])
def test_gpu_memory_stays_flat_over_steps(zoo_cli, tmp_path, monkeypatch, flags):
    monkeypatch.setenv("ZOO_CACHE_DIR", str(tmp_path / "cache"))
    data = []
    if "--decode-on-device" in flags:
        from test_device_decode import write_jpeg_folder
        write_jpeg_folder(tmp_path / "data", count=40)
        data = ["--dataset", "imagefolder", "--data", str(tmp_path / "data"), "--workers", "2"]
    tiny = [arg for arg in TINY if arg not in ("--dataset-opt", "train_count=32", "test_count=8")] if data else TINY
    code, _, err = zoo_cli("train", *tiny, *data, "--max-steps", "60", "--log-every", "6", "--device", "cuda",
                           *flags, "--run-dir", str(tmp_path / "run"))
    assert code == 0, err
    records = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    allocated = [r["memory_gib"] for r in records if r["kind"] == "train"]
    assert len(allocated) >= 10
    assert max(allocated[5:]) <= max(allocated[1:5]) * 1.01, allocated


def test_a_compiler_failure_on_the_first_step_falls_back_without_a_double_update(tmp_path, capsys):
    """Failing after the updates were made, the first step is undone before it runs eagerly."""
    from zoo.config import TrainConfig
    from zoo.engine.rundir import prepare_new
    from zoo.engine.trainer import Trainer
    from zoo.registry import get_registry

    config = TrainConfig(model="dcgan", batch_size=8, max_steps=1, device="cpu", eval_every=0, save_every=0,
                         model_opt={"ngf": 8, "ndf": 8, "nz": 16}, dataset_opt={"train_count": 32, "test_count": 8},
                         run_dir=str(tmp_path / "run"))
    prepare_new(tmp_path / "run", overwrite=False)
    trainer = Trainer(config, get_registry(), tmp_path / "run")
    trainer.run.speed.compile = True  # as if compiled: the first step goes through the fallback
    real_step, calls = trainer.run.stepper.compute, []

    def fails_once_after_updating(batches):
        values = real_step(batches)
        calls.append(1)
        if len(calls) == 1:
            raise AssertionError("expected size 512==512, stride 16==1 at dim=1")
        return values

    trainer.run.stepper.compute = fails_once_after_updating
    trainer.fit()
    assert len(calls) == 2 and not trainer.run.speed.compile
    assert "torch.compile failed on this model's first step (AssertionError" in capsys.readouterr().err
    steps = {float(state["step"]) for opt in trainer.run.stepper.optimizers.values() for state in opt.state.values()}
    assert steps == {1.0}  # one update per optimizer, not two


def test_more_workers_than_cpus_is_said_once_in_one_line(capsys):
    import os
    import warnings

    from zoo.engine import feed
    from zoo.engine.feed import make_loader
    feed._check_workers.cache_clear()  # said once per process: start this test afresh
    cpus = len(os.sched_getaffinity(0))
    items = [(torch.zeros(1), 0)] * 4
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(2):  # a training and a test loader
            loader, _ = make_loader(items, 2, seed=0, workers=cpus + 1, shuffle=False, drop_last=False,
                                    pin_memory=False)
            assert sum(len(batch[0]) for batch, _ in loader) == 4
    said = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert said == [f"zoo: --workers {cpus + 1} is more than the {cpus} CPUs this process may use; loading gets no "
                    f"faster past that and each worker costs memory (try --workers {cpus})."]
    assert not [w for w in caught if "worker processes" in str(w.message)]  # torch's own, several lines

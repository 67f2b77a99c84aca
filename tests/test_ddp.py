"""DistributedDataParallel in zoo: each network wrapped on its own, reductions counted, comm hooks, the options
users know; 2 gloo processes on the CPU through torchrun (or 1 process, in this one, for the unit checks)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import torch.distributed as dist
import torch.nn.functional as F

from zoo.engine import checkpoint, contracts
from zoo.engine.data_parallel import DataParallel, DDPOptions, WrappedNetwork
from zoo.errors import PluginError

HERE = Path(__file__).resolve().parent
TINY_GAN = {"model": "dcgan", "loss": "mse", "model_opt": {"ngf": 8, "ndf": 8, "nz": 16}}
TINY_I2I = {"model": "resnet_i2i", "loss": "l1", "model_opt": {"ngf": 8, "blocks": 1}}  # no BatchNorm, no dropout
COMMON = {"dataset_opt": {"train_count": 64, "test_count": 8}, "device": "cpu", "batch_size": 4, "eval_every": 0,
          "no_hooks": ["samples", "tensorboard"]}


def job(tmp_path: Path, entries: list[dict]) -> list[dict]:
    """Run ``entries`` (tests/ddp_job.py) in one 2-process job; each run's reduction counts and static graphs."""
    (tmp_path / "runs.json").write_text(json.dumps(entries))
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           str(HERE / "ddp_job.py"), str(tmp_path / "out.json"), str(tmp_path / "runs.json")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((tmp_path / "out.json").read_text())


def run(tmp_path: Path, name: str, model: dict, **config) -> dict:
    return {"config": {**COMMON, **model, **config, "run_dir": str(tmp_path / name)}}


def newest(run_dir: Path) -> dict[str, torch.Tensor]:
    return checkpoint.load_weights(checkpoint.list_steps(run_dir)[-1][1])


def test_reductions_per_step_and_exact_resumes_of_a_gan_and_of_accumulation(tmp_path):
    counted = [dict(run(tmp_path, "i2i-acc", TINY_I2I, max_steps=3, accumulate=2), count=True),
               dict(run(tmp_path, "gan", TINY_GAN, max_steps=3), count=True),
               dict(run(tmp_path, "gan-acc", TINY_GAN, max_steps=3, accumulate=2), count=True)]
    resumed = []
    for name, model, extra in (("gan", TINY_GAN, {}), ("i2i-acc", TINY_I2I, {"accumulate": 2})):
        resumed += [run(tmp_path, f"{name}-straight", model, max_steps=6, **extra),
                    run(tmp_path, f"{name}-half", model, max_steps=3, **extra),
                    dict(run(tmp_path, f"{name}-half", model, max_steps=6, **extra), resume=True)]
    results = job(tmp_path, counted + resumed)
    counts = [result["counts"] for result in results[:3]]
    # one reduction a step for each optimizer's network; none on the micro-batches that only accumulate
    assert counts[0] == {"net": 3}
    assert counts[1] == {"generator": 3, "discriminator": 3}
    # accumulating, a GAN's discriminator is also reduced on each later step's first micro-batch: the
    # generator's loss called it after it stepped, which armed its reducer (docs/distributed.md says so)
    assert counts[2] == {"generator": 3, "discriminator": 5}
    # no static graph for a GAN (two optimizers), nor with --accumulate (a static graph cannot skip syncs)
    gan = {"generator": False, "discriminator": False}
    assert [result["static_graph"] for result in results[:3]] == [{"net": False}, gan, gan]
    for name in ("gan", "i2i-acc"):
        straight, half = newest(tmp_path / f"{name}-straight"), newest(tmp_path / f"{name}-half")
        assert straight.keys() == half.keys()
        for key in straight:
            assert torch.equal(straight[key], half[key]), (name, key)


def test_a_comm_hook_sends_the_gradients_compressed_and_frozen_parameters_stay_out(tmp_path):
    results = job(tmp_path, [run(tmp_path, "plain", TINY_I2I, max_steps=4),
                   run(tmp_path, "fp16", TINY_I2I, max_steps=4, ddp_comm_hook="fp16"),
                   run(tmp_path, "powersgd", TINY_I2I, max_steps=4, ddp_comm_hook="powersgd"),
                   run(tmp_path, "frozen", TINY_GAN, max_steps=2, save_every=1, keep=2,
                       freeze=["generator.main.0.*", "discriminator.*"])])
    # resnet_i2i declares itself static (one network, every parameter every step): DDP's static graph
    assert [result["static_graph"] for result in results[:3]] == [{"net": True}] * 3
    assert [result["comm_hook"] for result in results] == [{"net": None}, {"net": "fp16"}, {"net": "powersgd"},
                                                           {"generator": None}]
    # a frozen network is not in DDP at all (its optimizer idle); a frozen layer is left out of its network's
    assert list(results[3]["static_graph"]) == ["generator"]
    first, second = (checkpoint.load_weights(folder) for _, folder in checkpoint.list_steps(tmp_path / "frozen"))
    frozen = [key for key in first if key.startswith(("generator.main.0.", "discriminator."))
              and not key.rsplit(".", 1)[1].startswith(("running_", "num_batches"))]  # BatchNorm's buffers move
    assert len(frozen) > 3 and all(torch.equal(first[key], second[key]) for key in frozen)
    assert not torch.equal(first["generator.main.3.weight"], second["generator.main.3.weight"])
    plain, fp16, powersgd = (newest(tmp_path / name) for name in ("plain", "fp16", "powersgd"))
    assert any(not torch.equal(plain[key], fp16[key]) for key in plain)  # fp16 rounding reached the weights
    for key in plain:
        assert torch.allclose(plain[key], fp16[key], atol=1e-2), key
        # PowerSGD sends plain all-reduces for its first 1,000 steps (its own warm-up)
        assert torch.allclose(plain[key], powersgd[key], atol=1e-6), key


def test_sync_bn_on_the_cpu_is_refused_in_one_line(run_zoo, tmp_path):
    done = run_zoo("train", "--model", "dcgan", "--device", "cpu", "--nproc-per-node", "2", "--sync-bn",
                   "--max-steps", "1", "--run-dir", str(tmp_path / "run"))
    assert done.returncode == 2
    assert done.stderr.strip() == ("zoo: error: --sync-bn needs CUDA devices (torch's SyncBatchNorm runs on GPUs "
                                   "only), not cpu; drop --sync-bn to keep BatchNorm statistics per process.")
    assert not (tmp_path / "run").exists()


UNUSED_PLUGIN = """
    import torch.nn as nn
    import torch.nn.functional as F
    from zoo import hookimpl
    from plugins.models.mnist_net import MnistNet

    class Unused(MnistNet):
        ddp_static_graph = False  # not every parameter every step (a static graph would cope on its own)

        def __init__(self, num_classes: int = 10):
            super().__init__(num_classes=num_classes, arch="small")
            self.net.spare = nn.Linear(4, 4)  # in the network, never used by its forward

    @hookimpl
    def zoo_register(registry):
        registry.model("unused", "unused_zoo_plugin:Unused", "a classifier with a parameter no step uses")
"""


def test_a_network_with_unused_parameters_is_told_of_the_flag_and_trains_with_it(run_zoo, make_plugin, tmp_path):
    site = make_plugin("unused", UNUSED_PLUGIN)
    common = ["train", "--model", "unused", "--device", "cpu", "--batch-size", "4",
              "--max-steps", "3", "--nproc-per-node", "2", "--dataset-opt", "train_count=32",
              "--dataset-opt", "test_count=8", "--eval-every", "0"]
    refused = run_zoo(*common, "--run-dir", str(tmp_path / "refused"), env={"PYTHONPATH": str(site)})
    assert refused.returncode == 2, refused.stderr
    assert "add --find-unused-parameters" in refused.stderr and "Traceback" not in refused.stderr
    done = run_zoo(*common, "--find-unused-parameters", "--run-dir", str(tmp_path / "done"),
                   env={"PYTHONPATH": str(site)})
    assert done.returncode == 0, done.stderr


class TwoNetworks(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.generator, self.discriminator = nn.Linear(2, 2), nn.Linear(2, 1)


class Nested(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.nets = nn.ModuleDict({"a": nn.Linear(2, 2), "b": nn.Linear(2, 2)})
        self.frozen = nn.Linear(2, 2)


def owners(module: nn.Module, **paths: str) -> dict[str, list[torch.Tensor]]:
    """Optimizer name -> the trainable parameters under the given submodule paths."""
    grouped: dict[str, list[torch.Tensor]] = {}
    for path, name in paths.items():
        grouped.setdefault(name, []).extend(module.get_submodule(path.replace("__", ".")).parameters())
    return grouped


def test_the_networks_are_the_highest_submodules_each_optimizer_trains_alone():
    gan = TwoNetworks()
    assert contracts.data_parallel_networks(gan, owners(gan, generator="g", discriminator="d"), "m") == \
        {"generator": "g", "discriminator": "d"}
    nested = Nested()
    assert contracts.data_parallel_networks(nested, owners(nested, nets__a="a", nets__b="b"), "m") == \
        {"nets.a": "a", "nets.b": "b"}  # the frozen layer trains with nothing: not wrapped


def test_parameters_no_one_wrapper_can_hold_are_refused_in_one_line():
    class Direct(TwoNetworks):
        def __init__(self) -> None:
            super().__init__()
            self.scale = nn.Parameter(torch.ones(1))

    direct = Direct()
    params = owners(direct, generator="g", discriminator="d")
    params["g"].append(direct.scale)
    with pytest.raises(PluginError, match="model 'm' trains parameters it holds itself, outside any submodule"):
        contracts.data_parallel_networks(direct, params, "m")


def test_a_network_computed_without_its_own_forward_is_named_not_trained_on(tmp_path):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'group'}", rank=0, world_size=1)
    try:
        gan = TwoNetworks()
        parallel = DataParallel(gan, owners(gan, generator="g", discriminator="d"), torch.device("cpu"),
                                DDPOptions(), "m")
        with parallel.in_step():
            assert isinstance(gan.generator, WrappedNetwork) and gan.generator.out_features == 2  # the module answers
            gan.generator(torch.ones(1, 2)).sum().backward()
            parallel.check_reduced("g")  # called through its wrapper: DDP averaged it
            x = torch.ones(1, 2)
            F.linear(x, gan.discriminator.weight, gan.discriminator.bias).sum().backward()  # around its forward
            with pytest.raises(PluginError, match="network 'discriminator' got gradients in a step without being "
                                                  "called itself"):
                parallel.check_reduced("d")
        assert type(gan.generator) is nn.Linear and type(gan.discriminator) is nn.Linear  # plain after the step
        half = TwoNetworks()  # the generator's bias trainable but in no optimizer: it gets no gradients
        params = owners(half, generator="g", discriminator="d")
        params["g"] = [half.generator.weight]
        wrapped = DataParallel(half, params, torch.device("cpu"), DDPOptions(), "m").networks["generator"]
        assert wrapped.parameters_to_ignore == {"bias"}  # left out of DDP, which would wait for it
        assert set(gan.state_dict()) == {"generator.weight", "generator.bias", "discriminator.weight",
                                         "discriminator.bias"}
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    import socket
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_launchers_on_one_host_train_as_two_nodes_like_one_process_with_their_global_batch(tmp_path):
    from zoo.config import TrainConfig
    from zoo.engine.rundir import prepare_new
    from zoo.engine.trainer import Trainer
    from zoo.registry import discover

    endpoint = f"127.0.0.1:{free_port()}"
    zoo_script = Path(sys.executable).with_name("zoo")
    program = [str(zoo_script)] if zoo_script.exists() else ["-m", "train_cli"]
    args = ["train", "--model", "resnet_i2i", "--loss", "l1", "--model-opt", "ngf=8", "--model-opt", "blocks=1",
            "--dataset-opt", "train_count=64", "--dataset-opt", "test_count=8", "--device", "cpu",
            "--batch-size", "4", "--max-steps", "4", "--eval-every", "0", "--run-dir", str(tmp_path / "nodes")]
    nodes = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
                               "--rdzv-backend", "c10d", "--rdzv-endpoint", endpoint, "--rdzv-id", "zoo-test",
                               "--rdzv-conf", f"is_host={int(node == 0)}",
                               *(program if node == 0 else ["-m", "train_cli"]), *args],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for node in (0, 1)]
    outputs = [node.communicate(timeout=300) for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], outputs[0][1][-2000:] + outputs[1][1][-2000:]
    assert "2 processes; global batch 4 x 2 x accumulate 1 = 8" in outputs[0][1] + outputs[1][1]

    single = tmp_path / "single"
    prepare_new(single, overwrite=False)
    config = TrainConfig(model="resnet_i2i", loss="l1", model_opt={"ngf": "8", "blocks": "1"},
                         dataset_opt={"train_count": "64", "test_count": "8"}, device="cpu", batch_size=8,
                         max_steps=4, eval_every=0, run_dir=str(single))
    Trainer(config, discover(), single).fit()
    one, two = newest(single), newest(tmp_path / "nodes")
    for key in one:
        assert torch.allclose(one[key], two[key], atol=1e-5, rtol=1e-4), key

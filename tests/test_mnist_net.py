"""mnist_net's two networks: the official example's (the default) and the Grokking guide's small one (arch=small)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from plugins.models.mnist_net import MnistNet
from zoo.engine.record import read_config
from zoo.errors import UsageError
from zoo.testing import tiny_run

ARCH_PARAMETERS = {"official": 1_199_882, "small": 21_840}  # pytorch/examples mnist's Net today; before 2019
EXAMPLE_KEYS = {f"net.{layer}.{kind}" for layer in ("conv1", "conv2", "fc1", "fc2") for kind in ("weight", "bias")}


def digits(batch: int = 4) -> torch.Tensor:
    """Deterministic 1x28x28 images in [-1, 1], as zoo's datasets give them."""
    return torch.rand(batch, 1, 28, 28, generator=torch.Generator().manual_seed(0)) * 2 - 1


@pytest.mark.parametrize("arch, parameters", ARCH_PARAMETERS.items())
def test_each_arch_builds_its_network_under_its_sources_layer_names(arch, parameters):
    model = MnistNet(arch=arch)
    assert sum(p.numel() for p in model.parameters()) == parameters
    assert set(model.state_dict()) == EXAMPLE_KEYS
    assert model.net(digits()).shape == (4, 10)


def test_the_default_is_the_official_network_with_the_examples_dropouts():
    official = MnistNet().net
    assert official.conv1.weight.shape == (32, 1, 3, 3) and official.fc1.in_features == 9216
    assert (official.dropout1.p, official.dropout2.p) == (0.25, 0.5)
    small = MnistNet(arch="small", dropout=0.3).net
    assert small.conv1.weight.shape == (10, 1, 5, 5)
    assert (small.conv2_drop.p, small.fc1_drop.p) == (0.3, 0.3)  # one dropout for both, as it always had
    assert MnistNet(dropout=0.2, conv_dropout=0.1).net.dropout1.p == 0.1
    assert MnistNet(arch="small", conv_dropout=0.1).net.conv2_drop.p == 0.1
    assert MnistNet(3, 0.4).net.fc2.out_features == 3  # num_classes and dropout stay the first two, positionally


def test_the_official_network_sees_the_examples_normalised_input():
    # zoo's datasets give [-1, 1]; the example feeds (pixel - 0.1307) / 0.3081: the network maps one to the other
    net = MnistNet().net.eval()
    x = digits()
    normalised = ((x + 1) / 2 - 0.1307) / 0.3081
    with torch.no_grad():
        features = F.max_pool2d(F.relu(net.conv2(F.relu(net.conv1(normalised)))), 2)
        expected = net.fc2(F.relu(net.fc1(features.flatten(1))))
        assert torch.allclose(net(x), expected, atol=1e-5)
        assert not torch.allclose(net(normalised), expected, atol=1e-3)  # the mapping is not a no-op


@pytest.mark.parametrize("arch", ["official", "small"])
def test_each_arch_trains_and_resumes_with_its_recorded_network(tmp_path, arch):
    run = tiny_run("mnist_net", tmp_path / "run", steps=1, model_opt={"arch": arch, "num_classes": 10})
    assert run.step == 1 and set(run.weights) == EXAMPLE_KEYS
    assert sum(t.numel() for t in run.weights.values()) == ARCH_PARAMETERS[arch]
    assert read_config(run.run_dir)["resolved"]["model_options"]["arch"] == arch
    assert run.state["optimizers"]["model"]["state"]  # Adadelta took a step
    resumed = tiny_run("mnist_net", tmp_path / "run", steps=2, resume=True)  # no model_opt: the recorded arch
    assert resumed.step == 2
    assert {k: t.shape for k, t in resumed.weights.items()} == {k: t.shape for k, t in run.weights.items()}
    assert any(not torch.equal(resumed.weights[k], run.weights[k]) for k in EXAMPLE_KEYS)


def test_a_bad_arch_is_a_one_line_usage_error_and_info_names_both_sources(zoo_cli, tmp_path):
    code, _, err = zoo_cli("train", "--model", "mnist_net", "--model-opt", "arch=large", "--device", "cpu",
                           "--max-steps", "2", "--run-dir", str(tmp_path / "run"))
    assert code == 2
    assert err.strip() == "zoo: error: model 'mnist_net' option arch expects one of official, small, got 'large'."
    assert not (tmp_path / "run").exists()
    with pytest.raises(UsageError, match="mnist_net has no arch 'large': pass official or small"):
        MnistNet(arch="large")  # a Python caller, past the option checks
    code, out, _ = zoo_cli("info", "mnist_net")
    assert code == 0
    assert ("arch=official (the example's today, default) or small (its pre-2019 one, the Grokking PyTorch "
            "guide's)") in out
    assert "parameters: 1,199,882 at default options" in out
    assert any(line.split()[:2] == ["arch", "Literal['official',"] and line.split()[-2:] == ["default", "'official'"]
               for line in out.splitlines()), out


def test_a_run_saved_before_arch_existed_resumes_and_loads_as_the_small_network_it_trained(tmp_path):
    import json

    from zoo.api import load_run

    run = tiny_run("mnist_net", tmp_path / "run", steps=1, model_opt={"arch": "small", "num_classes": 10})
    path = run.run_dir / "config.json"
    record = json.loads(path.read_text())
    for section in (record["config"]["model_opt"], record["resolved"]["model_options"]):
        section.pop("arch", None), section.pop("conv_dropout", None)  # as mnist_net's runs recorded them before
    path.write_text(json.dumps(record))
    resumed = tiny_run("mnist_net", tmp_path / "run", steps=2, resume=True)
    assert resumed.step == 2 and sum(t.numel() for t in resumed.weights.values()) == ARCH_PARAMETERS["small"]
    assert read_config(run.run_dir)["resolved"]["model_options"]["arch"] == "small"  # recorded from now on
    loaded = load_run(run.run_dir, device="cpu")
    assert sum(p.numel() for p in loaded.recipe.parameters()) == ARCH_PARAMETERS["small"]


def test_earlier_defaults_fill_only_options_the_class_has():
    from zoo.engine.record import with_earlier_defaults

    class Fixed(MnistNet):  # a plugin's subclass without arch: it inherits earlier_defaults, not the option
        def __init__(self, num_classes: int = 10):
            super().__init__(num_classes=num_classes)

    class Forwarding(MnistNet):  # one that passes its options on keeps them
        def __init__(self, **options):
            super().__init__(**options)

    assert with_earlier_defaults({"num_classes": 10}, Fixed) == {"num_classes": 10}
    assert with_earlier_defaults({"num_classes": 10}, Forwarding) == {"arch": "small", "num_classes": 10}
    assert with_earlier_defaults({"arch": "official"}, MnistNet) == {"arch": "official"}  # recorded values win
    assert with_earlier_defaults(None, MnistNet) is None

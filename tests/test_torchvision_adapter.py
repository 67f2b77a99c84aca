"""The torchvision adapter: static architecture list, cheap listing, building and stepping."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

import plugins.torchvision_zoo as tv_zoo
from plugins.models.torchvision_classifier import TorchvisionClassifier, input_size_rule
from zoo.errors import UsageError
from zoo.registry import Registrar

REPO_ROOT = Path(__file__).resolve().parents[1]
MNIST_SHAPE = (1, 28, 28)


def _build(arch: str, num_classes: int = 5) -> tuple[TorchvisionClassifier, int]:
    """Build ``arch`` as the engine would for a 1x28x28 dataset; return it and its input size."""
    options, (channels, size) = TorchvisionClassifier.adapt_to_data(MNIST_SHAPE, num_classes, {"arch": arch})
    assert channels == 3
    torch.manual_seed(0)
    return TorchvisionClassifier(**options), size


def test_static_list_equals_torchvision_classifiers():
    listed = sorted(torchvision.models.list_models(module=torchvision.models))
    assert sorted(tv_zoo.TORCHVISION_CLASSIFIERS) == listed
    assert len(set(tv_zoo.TORCHVISION_CLASSIFIERS)) == len(tv_zoo.TORCHVISION_CLASSIFIERS)


def test_registration_binds_each_arch_to_the_adapter():
    registrar = Registrar("torchvision")
    tv_zoo.zoo_register(registry=registrar)
    assert [e.name for e in registrar.entries] == [f"tv_{a}" for a in tv_zoo.TORCHVISION_CLASSIFIERS]
    for entry in registrar.entries:
        assert entry.kind == "model"
        assert entry.bound_options == {"arch": entry.name[3:]}
        assert entry.name[3:] in entry.summary
    assert registrar.entries[0].load() is TorchvisionClassifier


def test_listing_imports_neither_torch_nor_torchvision():
    code = (
        "import sys, plugins.torchvision_zoo as z\n"
        "from zoo.registry import Registrar\n"
        "r = Registrar('torchvision'); z.zoo_register(registry=r)\n"
        "assert len(r.entries) == len(z.TORCHVISION_CLASSIFIERS) > 0\n"
        "leaked = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision'))\n"
        "assert not leaked, leaked\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(("arch", "expected_size"), [
    ("resnet18", 40),
    ("mobilenet_v3_small", 40),
    ("squeezenet1_1", 28),
])
def test_small_models_build_and_run_at_the_adapted_size(arch, expected_size):
    options, (channels, size) = TorchvisionClassifier.adapt_to_data(MNIST_SHAPE, 5, {"arch": arch})
    assert options == {"arch": arch, "num_classes": 5, "channels": 3, "image_size": expected_size}
    assert (channels, size) == (3, expected_size)
    model, size = _build(arch)
    model.eval()
    with torch.no_grad():
        assert model.net(torch.randn(2, 3, size, size)).shape == (2, 5)
    model.train()  # a lone last batch must also pass through train-mode BatchNorm
    assert model.logits(torch.randn(1, 3, size, size)).shape == (1, 5)


def test_adapt_respects_user_options_and_fixed_sizes():
    options, wanted = TorchvisionClassifier.adapt_to_data((3, 96, 96), 10, {"arch": "resnet18", "num_classes": 7})
    assert options["num_classes"] == 7 and wanted == (3, 96)
    assert TorchvisionClassifier.adapt_to_data((1, 28, 28), None, {"arch": "vit_b_16"})[1] == (3, 224)
    assert TorchvisionClassifier.adapt_to_data((3, 256, 256), 2, {"arch": "maxvit_t"})[1] == (3, 224)
    assert TorchvisionClassifier.adapt_to_data((3, 64, 64), 2, {"arch": "inception_v3"})[1] == (3, 112)
    assert input_size_rule("swin_t") == (32, None)


def test_one_training_step_then_optimizer_step_changes_parameters():
    model, size = _build("mobilenet_v3_small")
    model.train()
    images, labels = torch.randn(4, 3, size, size), torch.tensor([0, 1, 2, 4])
    steps = model.training_step((images, labels), nn.CrossEntropyLoss())
    name, loss = next(steps)
    assert name == "model"
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert next(steps, None) is None
    optimizer = model.configure_optimizers(None)["model"]
    assert optimizer.param_groups[0]["lr"] == TorchvisionClassifier.default_lr
    before = [p.detach().clone() for p in model.parameters()]
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    changed = sum(not torch.equal(b, p) for b, p in zip(before, model.parameters()))
    assert changed > len(before) // 2


def test_aux_head_models_train_on_main_logits():
    model, size = _build("googlenet", num_classes=3)
    assert size == 48
    model.train()
    name, loss = next(model.training_step((torch.randn(2, 3, size, size), torch.tensor([0, 2])),
                                          nn.CrossEntropyLoss()))
    assert name == "model" and torch.isfinite(loss)


def test_evaluation_step_returns_sums():
    model, size = _build("squeezenet1_1", num_classes=3)
    model.eval()
    images, labels = torch.randn(6, 3, size, size), torch.tensor([0, 1, 2, 0, 1, 2])
    with torch.no_grad():
        result = model.evaluation_step((images, labels), nn.CrossEntropyLoss(), torch.Generator())
        logits = model.net(images)
    assert int(result["count"]) == 6
    assert torch.allclose(result["loss"], nn.functional.cross_entropy(logits, labels, reduction="sum"))
    assert int(result["accuracy"]) == int((logits.argmax(1) == labels).sum())


def test_unknown_arch_suggests_a_close_name():
    with pytest.raises(UsageError, match=r"unknown torchvision classifier 'resnet19'.*Did you mean: .*resnet18"):
        TorchvisionClassifier("resnet19", num_classes=5)


@pytest.mark.parametrize("options", [
    {"image_size": 16},
    {"channels": 1},
])
def test_unusable_shapes_are_usage_errors(options):
    with pytest.raises(UsageError, match="resnet18"):
        TorchvisionClassifier("resnet18", num_classes=5, **options)


def test_imagenet_weights_come_from_the_hub_cache_and_a_new_head_is_kept(tmp_path, monkeypatch, capsys):
    """weights=imagenet reads torch's hub cache (weights_only) and keeps a fresh head for other class counts."""
    import torchvision
    from plugins.models.torchvision_classifier import TorchvisionClassifier

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    url = torchvision.models.get_model_weights("resnet18").DEFAULT.url
    reference = torchvision.models.resnet18(weights=None)
    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(reference.state_dict(), cache / url.rsplit("/", 1)[-1])
    model = TorchvisionClassifier("resnet18", num_classes=5, weights="imagenet")
    assert torch.equal(model.net.conv1.weight, reference.conv1.weight)
    assert model.net.fc.weight.shape == (5, 512)
    assert "fc.weight" in capsys.readouterr().err
    assert model.weights_source.startswith("imagenet:")


def test_imagenet_weights_offline_fail_naming_the_file_and_folder(tmp_path, monkeypatch):
    from plugins import hub
    from plugins.models.torchvision_classifier import TorchvisionClassifier
    from zoo.errors import RunError

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def offline(url):
        raise OSError("network is unreachable")

    monkeypatch.setattr(hub, "download", offline)
    with pytest.raises(RunError) as failed:
        TorchvisionClassifier("resnet18", num_classes=5, weights="imagenet")
    message = str(failed.value)
    assert "resnet18-" in message and str(tmp_path / "hub" / "checkpoints") in message


def _write_safetensors(path: Path) -> None:
    from safetensors.torch import save_file
    save_file({"fc.bias": torch.zeros(5)}, str(path))


@pytest.mark.parametrize("name, content, reason", [
    ("junk.pth", b"\x80\x02j\x35\x76\x6b\x0a", r"\(KeyError: 174814773\)"),  # pickle-like bytes
    ("junk.pth", bytes(range(256)) * 4, r"\(UnpicklingError: [^\n]*\)"),
    ("empty.pth", b"", r"\(the file is empty\)"),
    ("tensor.pth", torch.zeros(2), r"\(TypeError: it holds Tensor, not a dict of tensors\)"),
    ("checkpoint.pth", {"epoch": 1}, r"\(TypeError: entry 'epoch' holds int, not a tensor\)"),
    ("wrapped.pth", {"model": {"fc.weight": torch.zeros(2)}, "epoch": 3},
     r"\(TypeError: it is a training checkpoint: save its 'model' entry, a dict of tensors, on its own\)"),
], ids=["pickle-like", "random-bytes", "empty", "tensor", "checkpoint", "wrapped"])
def test_unreadable_pth_weights_are_one_line_run_errors(tmp_path, name, content, reason):
    from plugins import hub
    from zoo.errors import RunError

    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        torch.save(content, path)
    expected = rf"^{re.escape(str(path))} is not a PyTorch weights file {reason}; " \
        r"give torchvision resnet18 a state dict saved with torch\.save"
    with pytest.raises(RunError, match=expected) as failed:
        hub.state_from_path(str(path), "torchvision resnet18")
    assert "\n" not in str(failed.value) and "weights_only" not in str(failed.value)


def test_weights_in_the_other_format_say_to_rename(tmp_path):
    from plugins import hub
    from zoo.errors import RunError

    _write_safetensors(tmp_path / "st.pth")
    with pytest.raises(RunError, match=r"st\.pth is not a PyTorch weights file .*rename it to \.safetensors$"):
        hub.state_from_path(str(tmp_path / "st.pth"), "VGG19")
    torch.save({"fc.bias": torch.zeros(5)}, tmp_path / "torch.safetensors")
    with pytest.raises(RunError, match=r"torch\.safetensors is not a safetensors weights file .*rename it to \.pth$"):
        hub.state_from_path(str(tmp_path / "torch.safetensors"), "VGG19")
    (tmp_path / "junk.safetensors").write_bytes(b"\x01" * 64)
    with pytest.raises(RunError, match=r"junk\.safetensors is not a safetensors weights file \(SafetensorError"):
        hub.state_from_path(str(tmp_path / "junk.safetensors"), "VGG19")
    _write_safetensors(tmp_path / "good.safetensors")
    assert set(hub.state_from_path(str(tmp_path / "good.safetensors"), "VGG19")) == {"fc.bias"}


def test_cli_bad_weights_file_exits_1_and_a_missing_one_2(zoo_cli, tmp_path):
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"\x80\x02j\x35\x76\x6b\x0a")
    common = ("train", "--model", "tv_squeezenet1_1", "--device", "cpu", "--max-steps", "2",
              "--run-dir", str(tmp_path / "run"), "--model-opt")
    code, _, err = zoo_cli(*common, f"weights={junk}")
    assert code == 1, err
    assert err.strip() == (f"zoo: error: {junk} is not a PyTorch weights file (KeyError: 174814773); give "
                           "torchvision squeezenet1_1 a state dict saved with torch.save(model.state_dict(), PATH)")
    code, _, err = zoo_cli(*common, f"weights={tmp_path / 'missing.pth'}")
    assert code == 2, err
    assert err.strip().startswith("zoo: error: ") and "missing.pth" in err and "no such file" in err
    assert len(err.strip().splitlines()) == 1

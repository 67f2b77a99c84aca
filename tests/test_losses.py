"""Tests of the builtin losses, above all the perceptual loss's weight sources and safety."""

from __future__ import annotations

import functools
import os
import pickle

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

import plugins.losses as losses
from plugins.losses import (BCELoss, CrossEntropyLoss, L1Loss, MSELoss, PerceptualLoss,
                            match_batch_statistics)
from zoo.errors import RunError, UsageError

VGG_FILE = "vgg19-dcbb9e9d.pth"


def images(channels: int = 3, size: int = 16, batch: int = 2, seed: int = 0) -> torch.Tensor:
    """Deterministic images in [-1, 1]."""
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, channels, size, size, generator=g) * 2 - 1


def vgg_params(loss: PerceptualLoss) -> dict[str, torch.Tensor]:
    """The perceptual loss's VGG parameters under torchvision's ``features.N`` names."""
    return {"features." + name.split(".", 1)[1]: p.detach().clone()
            for name, p in loss.vgg.named_parameters()}


@functools.cache
def random_vgg_params() -> dict[str, torch.Tensor]:
    """The seeded random VGG parameters (built once; callers must not modify them)."""
    return vgg_params(PerceptualLoss(weights="random"))


def distinct_vgg19_state(seed: int = 7) -> dict[str, torch.Tensor]:
    """A full-layout vgg19 state dict (with a classifier key) unlike the seeded random one."""
    g = torch.Generator().manual_seed(seed)
    state = {key: torch.randn(value.shape, generator=g) * 0.01
             for key, value in random_vgg_params().items()}
    state["classifier.6.weight"] = torch.zeros(2, 3)  # ignored: not a features key
    return state


def assert_same_weights(loss: PerceptualLoss, state: dict[str, torch.Tensor]) -> None:
    params = vgg_params(loss)
    assert params, "no VGG parameters"
    for key, value in params.items():
        assert torch.equal(value, state[key]), key


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """An empty torch hub cache under tmp_path; downloads fail unless a test says otherwise."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert torch.hub.get_dir() == str(tmp_path / "hub")

    def offline():
        raise OSError("no network")

    monkeypatch.setattr(losses, "download_vgg19_weights", offline)
    return tmp_path / "hub" / "checkpoints"


# --- Simple losses ----------------------------------------------------------------------


def test_mse_loss_is_the_hand_formula():
    x, y = images(seed=1), images(seed=2)
    expected = ((x - y) ** 2).sum() / x.numel()
    assert torch.allclose(MSELoss()(x, y), expected)
    assert torch.allclose(MSELoss()(x, y), F.mse_loss(x, y))
    assert MSELoss()(x, x) == 0


def test_l1_bce_cross_entropy_match_torch():
    x, y = images(seed=1), images(seed=2)
    assert torch.allclose(L1Loss()(x, y), (x - y).abs().mean())
    targets = (y > 0).float()
    assert torch.allclose(BCELoss()(x, targets), F.binary_cross_entropy_with_logits(x, targets))
    logits, labels = torch.randn(5, 4), torch.tensor([0, 3, 1, 2, 3])
    assert torch.allclose(CrossEntropyLoss()(logits, labels), F.cross_entropy(logits, labels))


def test_match_statistics_compares_batch_mean_and_std():
    fake, real = images(batch=4, seed=1), images(batch=4, seed=2) * 0.5 + 0.2
    expected = (F.mse_loss(fake.mean(0), real.mean(0))
                + F.mse_loss(fake.std(0, correction=0), real.std(0, correction=0)))
    assert torch.allclose(MSELoss().match_statistics(fake, real), expected, atol=1e-6)
    assert torch.allclose(L1Loss().match_statistics(fake, real),
                          match_batch_statistics(L1Loss(), fake, real))
    # Unpaired: shuffling a batch does not change its statistics.
    shuffled = real[torch.tensor([2, 0, 3, 1])]
    assert torch.allclose(MSELoss().match_statistics(fake, real),
                          MSELoss().match_statistics(fake, shuffled))
    assert MSELoss().match_statistics(real, shuffled) < 1e-6


def test_match_statistics_gradient_is_finite_for_one_sample():
    fake = images(batch=1).requires_grad_()
    L1Loss().match_statistics(fake, images(batch=1, seed=3)).backward()
    assert torch.isfinite(fake.grad).all()


# --- Perceptual loss: random weights ----------------------------------------------------


def test_perceptual_random_is_deterministic_and_leaves_rng_alone(monkeypatch):
    torch.manual_seed(123)
    state = torch.get_rng_state()
    gpu_seeds = []  # the GPUs' generators are seeded by the run's --seed; the loss must not reseed them
    monkeypatch.setattr(torch.cuda, "manual_seed_all", gpu_seeds.append)
    monkeypatch.setattr(torch.cuda, "manual_seed", gpu_seeds.append)
    first = PerceptualLoss(weights="random")
    assert torch.equal(torch.get_rng_state(), state)
    assert gpu_seeds == []
    second = PerceptualLoss(weights="random")
    assert first.weights_source == "random(seed=0)"
    assert_same_weights(second, vgg_params(first))
    x, y = images(seed=1), images(seed=2)
    assert first(x, x) == 0
    assert first(x, y) > 0
    assert torch.equal(first(x, y), second(x, y))


def test_perceptual_uses_torchvision_vgg19_layout():
    loss = PerceptualLoss(weights="random")
    convs = [m for m in loss.vgg.modules() if isinstance(m, torch.nn.Conv2d)]
    # vgg19 conv layers up to relu5_1: features indices 0..28.
    assert set(vgg_params(loss)) == {f"features.{i}.{kind}"
                                     for i in (0, 2, 5, 7, 10, 12, 14, 16, 19, 21, 23, 25, 28)
                                     for kind in ("weight", "bias")}
    assert [c.out_channels for c in convs] == [64, 64, 128, 128, 256, 256, 256, 256,
                                              512, 512, 512, 512, 512]
    features = loss.features(images(size=32))
    assert [tuple(f.shape[1:]) for f in features] == [(128, 16, 16), (512, 4, 4), (512, 2, 2)]
    assert torch.equal(vgg_params(loss)["features.28.bias"], torch.zeros(512))
    assert len(PerceptualLoss(weights="random", layers=1).features(images())) == 1


def test_perceptual_is_frozen_and_passes_gradients():
    loss = PerceptualLoss(weights="random", layers=2)
    assert all(not p.requires_grad for p in loss.parameters())
    x = images(seed=1).requires_grad_()
    loss(x, images(seed=2)).backward()
    assert all(p.grad is None for p in loss.parameters())
    assert x.grad is not None and x.grad.abs().sum() > 0
    fake = images(batch=3, seed=4).requires_grad_()
    loss.match_statistics(fake, images(batch=3, seed=5)).backward()
    assert fake.grad is not None and fake.grad.abs().sum() > 0
    assert all(p.grad is None for p in loss.parameters())


def test_perceptual_stays_in_eval_mode():
    loss = PerceptualLoss(weights="random", layers=1)
    parent = torch.nn.Sequential(loss)
    parent.train()
    assert loss.training
    assert not any(m.training for m in loss.vgg.modules())


def test_perceptual_normalises_and_repeats_gray():
    loss = PerceptualLoss(weights="random", layers=1)
    gray_x, gray_y = images(1, seed=1), images(1, seed=2)
    assert torch.allclose(loss(gray_x, gray_y), loss(gray_x.repeat(1, 3, 1, 1),
                                                     gray_y.repeat(1, 3, 1, 1)))
    # Inputs in [-1, 1] become (x01 - mean) / std before the first conv.
    x = images(seed=3)
    expected = ((x + 1) / 2 - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) \
        / torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    assert torch.allclose(loss.features(x)[0], loss.vgg.slice1(expected))
    with pytest.raises(ValueError, match="1- or 3-channel"):
        loss(images(2), images(2))


@pytest.mark.parametrize("layers", [0, 4, "3"])
def test_perceptual_bad_layers(layers):
    with pytest.raises(UsageError, match="layers"):
        PerceptualLoss(weights="random", layers=layers)


# --- Perceptual loss: ImageNet weights from the hub cache --------------------------------


def test_perceptual_auto_loads_the_cached_file(hub, capsys):
    state = distinct_vgg19_state()
    hub.mkdir(parents=True)
    torch.save(state, hub / VGG_FILE)
    loss = PerceptualLoss(weights="auto")
    assert loss.weights_source == f"imagenet:{hub / VGG_FILE}"
    assert_same_weights(loss, state)
    assert capsys.readouterr().err == ""


def test_perceptual_auto_downloads_when_not_cached(hub, monkeypatch):
    state = distinct_vgg19_state()
    calls = []

    def download():
        calls.append(True)
        return state

    monkeypatch.setattr(losses, "download_vgg19_weights", download)
    loss = PerceptualLoss(weights="auto")
    assert calls == [True]
    assert loss.weights_source.startswith("imagenet:")
    assert_same_weights(loss, state)


def test_perceptual_auto_falls_back_offline(hub, capsys):
    torch.manual_seed(5)
    rng = torch.get_rng_state()
    loss = PerceptualLoss(weights="auto")
    assert torch.equal(torch.get_rng_state(), rng)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("zoo: ")
    assert str(hub / VGG_FILE) in err and "random weights" in err and "no network" in err
    assert loss.weights_source == "random(seed=0, offline fallback)"
    assert_same_weights(loss, random_vgg_params())


def test_perceptual_imagenet_is_strict(hub):
    with pytest.raises(RunError) as info:
        PerceptualLoss(weights="imagenet")
    message = str(info.value)
    assert "\n" not in message
    assert VGG_FILE in message and str(hub) in message and "weights=PATH" in message


def test_perceptual_imagenet_loads_the_cached_file(hub):
    state = distinct_vgg19_state(seed=11)
    hub.mkdir(parents=True)
    torch.save(state, hub / VGG_FILE)
    assert_same_weights(PerceptualLoss(weights="imagenet"), state)


def test_perceptual_unreadable_cache_file_is_a_run_error(hub):
    hub.mkdir(parents=True)
    (hub / VGG_FILE).write_bytes(b"not a checkpoint")
    with pytest.raises(RunError, match=VGG_FILE):
        PerceptualLoss(weights="auto")


def test_perceptual_url_file_name():
    assert os.path.basename(losses.vgg19_weights_url()) == VGG_FILE


# --- Perceptual loss: weights from a path -----------------------------------------------


def test_perceptual_path_safetensors(tmp_path):
    state = distinct_vgg19_state()
    path = tmp_path / "vgg.safetensors"
    save_file(state, str(path))
    loss = PerceptualLoss(weights=str(path))
    assert loss.weights_source == f"file:{path}"
    assert_same_weights(loss, state)


def test_perceptual_path_pth_full_and_features_only(tmp_path):
    from torchvision.models import vgg
    features = vgg.make_layers(vgg.cfgs["E"])  # torchvision's own vgg19 features layout
    path = tmp_path / "features.pth"
    torch.save(features.state_dict(), path)
    loss = PerceptualLoss(weights=str(path))
    assert loss.weights_source == f"file:{path}"
    assert_same_weights(loss, {"features." + k: v for k, v in features.state_dict().items()})

    state = distinct_vgg19_state()
    full = tmp_path / "full.pt"
    torch.save(state, full)
    assert_same_weights(PerceptualLoss(weights=str(full)), state)


class _RunsCode:
    """Unpickling this object runs code that creates a marker file."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').close()",)


def test_perceptual_refuses_pickled_code(tmp_path):
    control = tmp_path / "control"
    pickle.loads(pickle.dumps(_RunsCode(str(control))))
    assert control.exists()  # the payload works when unpickled unsafely

    marker = tmp_path / "marker"
    path = tmp_path / "evil.pth"
    state = distinct_vgg19_state()
    state["features.0.weight"] = _RunsCode(str(marker))
    torch.save(state, path)
    with pytest.raises(RunError, match="evil.pth is not a PyTorch weights file") as info:
        PerceptualLoss(weights=str(path))
    assert "\n" not in str(info.value)
    assert not marker.exists()


def test_perceptual_never_unpickles_unsafely(tmp_path, monkeypatch):
    seen = []
    real_load = torch.load

    def spy(*args, **kwargs):
        seen.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    path = tmp_path / "w.pth"
    torch.save(distinct_vgg19_state(), path)
    PerceptualLoss(weights=str(path))
    assert seen == [True]


@pytest.mark.parametrize("value", ["nonsense", "missing/vgg.pth", ""])
def test_perceptual_bad_weights_value(value):
    with pytest.raises(UsageError) as info:
        PerceptualLoss(weights=value)
    message = str(info.value)
    assert "\n" not in message
    assert all(word in message for word in ("auto", "imagenet", "random", ".safetensors"))


def test_perceptual_bad_files(tmp_path):
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"\x00garbage")
    with pytest.raises(RunError, match="corrupt.pth is not a PyTorch weights file"):
        PerceptualLoss(weights=str(corrupt))

    other = tmp_path / "other.pth"
    torch.save({"encoder.weight": torch.zeros(3)}, other)
    with pytest.raises(UsageError, match="other.pth.*features.0.weight"):
        PerceptualLoss(weights=str(other))

    wrong_shape = distinct_vgg19_state()
    wrong_shape["features.2.weight"] = torch.zeros(1)
    path = tmp_path / "shape.safetensors"
    save_file(wrong_shape, str(path))
    with pytest.raises(UsageError, match="features.2.weight"):
        PerceptualLoss(weights=str(path))

    text = tmp_path / "weights.txt"
    text.write_text("hello")
    with pytest.raises(UsageError, match="weights.txt"):
        PerceptualLoss(weights=str(text))


# --- A run's recorded weights are the ones it resumes and is tested with ------------------


def perceptual_entry():
    from zoo.registry import discover
    return discover().resolve("loss", "perceptual")


def test_recorded_random_weights_stay_random_once_the_imagenet_file_appears(hub):
    from zoo.build import build_loss
    hub.mkdir(parents=True)
    torch.save(distinct_vgg19_state(), hub / VGG_FILE)
    loss = build_loss(perceptual_entry(), {}, "random(seed=0, offline fallback)")
    assert loss.weights_source == "random(seed=0)"
    assert_same_weights(loss, random_vgg_params())


def test_recorded_imagenet_weights_that_are_gone_are_refused_not_replaced(hub):
    from zoo.build import build_loss
    with pytest.raises(RunError, match=VGG_FILE):
        build_loss(perceptual_entry(), {"weights": "auto"}, f"imagenet:{hub / VGG_FILE}")


def test_recorded_file_weights_are_read_from_that_file(hub, tmp_path):
    from zoo.build import build_loss
    state = distinct_vgg19_state(seed=3)
    path = tmp_path / "vgg.pth"
    torch.save(state, path)
    loss = build_loss(perceptual_entry(), {}, f"file:{path}")
    assert_same_weights(loss, state)


def test_a_resumed_and_a_tested_run_keep_the_weights_they_trained_with(hub, zoo_cli, tmp_path):
    import json
    run = tmp_path / "run"
    tiny = ["--device", "cpu", "--batch-size", "4", "--dataset-opt", "train_count=16",
            "--dataset-opt", "test_count=4", "--model-opt", "ngf=8", "--model-opt", "ndf=8", "--model-opt", "nz=8"]
    code, _, err = zoo_cli("train", "--model", "dcgan", "--loss", "perceptual", *tiny, "--max-steps", "2",
                           "--run-dir", str(run))
    assert code == 0, err
    code, before, _ = zoo_cli("test", "--run", str(run), "--json")
    hub.mkdir(parents=True, exist_ok=True)
    torch.save(distinct_vgg19_state(), hub / VGG_FILE)  # the ImageNet file turns up after training
    code, after, _ = zoo_cli("test", "--run", str(run), "--json")
    assert code == 0
    assert json.loads(after)["metrics"] == json.loads(before)["metrics"]
    code, _, err = zoo_cli("train", "--resume", str(run), "--max-steps", "3")
    assert code == 0, err
    assert json.loads((run / "config.json").read_text())["resolved"]["loss_weights"].startswith("random(seed=0")


def test_a_loss_with_bound_weights_keeps_them_whatever_a_run_recorded(hub):
    from zoo.build import build_loss
    from zoo.registry import Entry
    bound = Entry("loss", "vgg_random", "plugins.losses:PerceptualLoss", "", "acme", bound=(("weights", "random"),))
    loss = build_loss(bound, {}, "imagenet:/nowhere/vgg19.pth")
    assert loss.weights_source == "random(seed=0)"


@pytest.mark.parametrize("answer", [None, {"weight": "random"}])
def test_an_options_for_weights_that_breaks_its_contract_is_the_plugin_s_fault(answer, tmp_path, monkeypatch):
    from zoo.build import build_loss
    from zoo.errors import PluginError
    from zoo.registry import Entry

    (tmp_path / "odd_weights_loss.py").write_text(
        "from plugins.losses import MSELoss\n\n"
        "class OddWeights(MSELoss):\n"
        "    def __init__(self, weights: str = 'auto'):\n"
        "        super().__init__()\n\n"
        f"    options_for_weights = staticmethod(lambda source: {answer!r})\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    entry = Entry("loss", "odd", "odd_weights_loss:OddWeights", "", "acme")
    assert build_loss(entry, {}) is not None  # a new run: nothing recorded
    with pytest.raises(PluginError, match=r"^loss 'acme:odd': options_for_weights\('mystery'\) must return a dict "
                                          r"of its options \(weights; \{\} for a source it does not know\)"):
        build_loss(entry, {}, "mystery")


def test_recorded_weights_that_are_gone_say_they_were_recorded(hub, tmp_path):
    from zoo.build import build_loss
    with pytest.raises(UsageError, match=r"\(the weights the run recorded: file:/nowhere/vgg.pth, in its "
                                         r"config.json\)\.$"):
        build_loss(perceptual_entry(), {}, "file:/nowhere/vgg.pth")

"""Tests of the builtin model recipes: shapes, data adaptation, steps and evaluation."""

from __future__ import annotations

import math
from typing import Annotated

import pytest
import torch

from plugins.losses import CrossEntropyLoss, L1Loss, MSELoss, PerceptualLoss
from plugins.models.dcgan import DCGAN
from plugins.models.mnist_net import MnistNet
from plugins.models.resnet_i2i import ResnetI2I, batch_psnr
from zoo.options import Range

BATCH = 4


def tiny_dcgan(image_size: int = 32, nc: int = 3) -> DCGAN:
    """A DCGAN small enough for CPU tests."""
    return DCGAN(image_size=image_size, nz=16, ngf=8, ndf=8, nc=nc)


def images(channels: int, size: int, batch: int = BATCH, seed: int = 0) -> torch.Tensor:
    """Deterministic images in [-1, 1]."""
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, channels, size, size, generator=g) * 2 - 1


def dcgan_batch(nc: int = 3, size: int = 32):
    return images(nc, size), torch.zeros(BATCH, dtype=torch.long)


def mnist_batch():
    return images(1, 28), torch.tensor([0, 1, 2, 3])


def i2i_batch(channels: int = 3):
    clean = images(channels, 32, seed=1)
    return (clean + 0.1 * images(channels, 32, seed=2)).clamp(-1, 1), clean


def run_training_step(recipe, batch, loss_fn):
    """Drive ``training_step`` as the engine does; return the names, losses and changes.

    Each yielded loss is backpropagated and only its optimizer is stepped before the
    generator resumes. ``changed[name]`` says whether that optimizer's parameters moved.
    """
    optimizers = recipe.configure_optimizers(None)
    names, losses, changed = [], [], {}
    recipe.train()
    for name, loss in recipe.training_step(batch, loss_fn):
        optimizer = optimizers[name]
        params = [p for group in optimizer.param_groups for p in group["params"]]
        before = [p.detach().clone() for p in params]
        for opt in optimizers.values():
            opt.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        changed[name] = any(not torch.equal(b, p) for b, p in zip(before, params))
        names.append(name)
        losses.append(loss.detach())
    return names, losses, changed, optimizers


# --- DCGAN ------------------------------------------------------------------------------


@pytest.mark.parametrize("image_size", [32, 64])
@pytest.mark.parametrize("nc", [1, 3])
def test_dcgan_networks_shapes(image_size, nc):
    model = tiny_dcgan(image_size, nc)
    noise = torch.randn(BATCH, 16, 1, 1)
    fake = model.generator(noise)
    assert fake.shape == (BATCH, nc, image_size, image_size)
    assert fake.min() >= -1 and fake.max() <= 1
    assert model.discriminator(fake).shape == (BATCH,)


def test_dcgan_state_dict_prefixes_and_reference_layout():
    keys = list(DCGAN(image_size=64, ngf=8, ndf=8).state_dict())
    assert all(k.startswith(("generator.", "discriminator.")) for k in keys)
    # The 64x64 layout of PyTorch's dcgan example: convs at main.0/3/6/9/12 (G), 0/2/5/8/11 (D).
    assert {f"generator.main.{i}.weight" for i in (0, 3, 6, 9, 12)} <= set(keys)
    assert {f"discriminator.main.{i}.weight" for i in (0, 2, 5, 8, 11)} <= set(keys)
    assert "discriminator.main.12.weight" not in keys


@pytest.mark.parametrize("image_size", [16, 48, 128, 0])
def test_dcgan_bad_image_size_raises(image_size):
    with pytest.raises(ValueError, match="64 or 32"):
        DCGAN(image_size=image_size)


def test_dcgan_weight_init():
    torch.manual_seed(0)
    model = DCGAN(image_size=64)
    conv = model.generator.main[6].weight
    norm = model.generator.main[7]
    assert abs(conv.mean().item()) < 0.002 and abs(conv.std().item() - 0.02) < 0.002
    assert abs(norm.weight.mean().item() - 1) < 0.01 and torch.all(norm.bias == 0)


@pytest.mark.parametrize("shape, options, expected_options, expected_shape", [
    ((1, 28, 28), {}, {"nc": 1, "image_size": 32}, (1, 32)),
    ((3, 64, 64), {}, {"nc": 3, "image_size": 64}, (3, 64)),
    ((3, 48, 48), {}, {"nc": 3, "image_size": 32}, (3, 32)),
    ((3, 49, 49), {}, {"nc": 3, "image_size": 64}, (3, 64)),
    ((1, 28, 28), {"image_size": 64, "nc": 3}, {"nc": 3, "image_size": 64}, (3, 64)),
    ((3, 96, 96), {"ngf": 8}, {"ngf": 8, "nc": 3, "image_size": 64}, (3, 64)),
])
def test_dcgan_adapt_to_data(shape, options, expected_options, expected_shape):
    original = dict(options)
    filled, wanted = DCGAN.adapt_to_data(shape, 10, options)
    assert filled == expected_options
    assert wanted == expected_shape
    assert options == original  # the caller's dict is not modified


def test_dcgan_configure_optimizers():
    model = tiny_dcgan()
    optimizers = model.configure_optimizers(None)
    assert list(optimizers) == ["discriminator", "generator"]
    for name, network in (("discriminator", model.discriminator),
                          ("generator", model.generator)):
        optimizer = optimizers[name]
        assert isinstance(optimizer, torch.optim.Adam)
        assert optimizer.param_groups[0]["betas"] == (0.5, 0.999)
        assert optimizer.param_groups[0]["lr"] == 2e-4
        assert {id(p) for p in optimizer.param_groups[0]["params"]} == \
            {id(p) for p in network.parameters()}
    assert model.configure_optimizers(1e-3)["generator"].param_groups[0]["lr"] == 1e-3


@pytest.mark.parametrize("loss_name", [None, "mse", "l1", "perceptual"])
def test_dcgan_training_step(loss_name):
    loss_fn = {None: None, "mse": MSELoss(), "l1": L1Loss()}.get(loss_name)
    if loss_name == "perceptual":
        loss_fn = PerceptualLoss(weights="random", layers=1)
    model = tiny_dcgan()
    torch.manual_seed(0)
    names, losses, changed, _ = run_training_step(model, dcgan_batch(), loss_fn)
    assert names == ["discriminator", "generator"]
    assert all(torch.isfinite(loss) for loss in losses)
    assert changed == {"discriminator": True, "generator": True}
    logs = model.pop_logs()
    expected = {"g_adv"} | ({"g_extra"} if loss_fn is not None else set())
    assert set(logs) == expected  # the discriminator's loss is the yielded one, not logged twice
    if loss_fn is None:
        assert torch.equal(logs["g_adv"], losses[1])
    else:
        assert logs["g_extra"] > 0
        assert torch.allclose(logs["g_adv"] + logs["g_extra"], losses[1])


def test_dcgan_generator_loss_sees_updated_discriminator():
    model = tiny_dcgan()
    optimizers = model.configure_optimizers(1e-2)
    steps = model.training_step(dcgan_batch(), None)
    name, d_loss = next(steps)
    assert name == "discriminator"
    d_loss.backward()
    optimizers["discriminator"].step()
    snapshot = [p.detach().clone() for p in model.discriminator.parameters()]
    name, g_loss = next(steps)
    assert name == "generator"
    g_loss.backward()
    # The generator's loss was computed with the updated discriminator (same parameters).
    assert all(torch.equal(s, p) for s, p in zip(snapshot, model.discriminator.parameters()))
    assert all(p.grad is not None for p in model.generator.parameters())


def test_dcgan_training_noise_uses_global_rng():
    model = tiny_dcgan()
    for module in model.discriminator.modules():  # large weights: logits depend on the noise
        if isinstance(module, torch.nn.Conv2d):
            torch.nn.init.normal_(module.weight, 0.0, 0.5)
    batch = dcgan_batch()
    first = []
    for _ in range(2):
        torch.manual_seed(3)
        model.eval()  # frozen batch-norm statistics: only the noise could differ
        first.append([loss.detach() for _, loss in model.training_step(batch, None)])
    assert torch.equal(first[0][0], first[1][0]) and torch.equal(first[0][1], first[1][1])
    torch.manual_seed(4)
    other = [loss.detach() for _, loss in model.training_step(batch, None)]
    assert not torch.equal(other[0], first[0][0])


def test_dcgan_evaluation_step():
    model = tiny_dcgan().eval()
    batch = dcgan_batch()
    state = torch.get_rng_state()
    with torch.no_grad():
        out = model.evaluation_step(batch, None, torch.Generator().manual_seed(0))
        again = model.evaluation_step(batch, None, torch.Generator().manual_seed(0))
        extra = model.evaluation_step(batch, MSELoss(), torch.Generator().manual_seed(0))
    assert torch.equal(torch.get_rng_state(), state)  # evaluation never touches training RNG
    assert set(out) == {"discriminator", "generator", "count"}
    assert out["count"] == BATCH
    assert torch.equal(out["discriminator"], again["discriminator"]) and torch.equal(out["generator"],
                                                                       again["generator"])
    assert out["discriminator"] > 0 and out["generator"] > 0
    assert torch.allclose(extra["discriminator"], out["discriminator"])
    assert extra["generator"] > out["generator"]  # the extra term adds to the generator loss
    # Sums, not means: the mean D loss of a near-chance discriminator is about 2 ln 2.
    assert 0.5 * BATCH < out["discriminator"] / 2 < 2 * BATCH


def test_dcgan_sample_and_sample_inputs():
    model = tiny_dcgan().eval()
    noise = model.sample_inputs(5, torch.Generator().manual_seed(1))
    assert noise.shape == (5, 16, 1, 1)
    assert torch.equal(noise, model.sample_inputs(5, torch.Generator().manual_seed(1)))
    samples = model.sample(5, torch.Generator().manual_seed(1))
    assert samples.shape == (5, 3, 32, 32)
    assert samples.min() >= -1 and samples.max() <= 1
    assert torch.equal(samples, model.generator(noise).detach())


def test_dcgan_class_attributes():
    assert DCGAN.task == "generation"
    assert DCGAN.losses == ("perceptual", "mse", "l1")
    assert DCGAN.default_loss is None and DCGAN.metric is None
    assert DCGAN.default_lr == 2e-4


# --- MnistNet ---------------------------------------------------------------------------


@pytest.mark.parametrize("num_classes", [10, 3])
def test_mnist_net_forward(num_classes):
    model = MnistNet(num_classes=num_classes).eval()
    logits = model.net(images(1, 28))
    assert logits.shape == (BATCH, num_classes)


@pytest.mark.parametrize("shape, num_classes, options, expected", [
    ((3, 64, 64), 10, {}, {"num_classes": 10}),
    ((1, 28, 28), 5, {"num_classes": 7}, {"num_classes": 7}),
    ((1, 32, 32), None, {}, {}),
])
def test_mnist_net_adapt_to_data(shape, num_classes, options, expected):
    filled, wanted = MnistNet.adapt_to_data(shape, num_classes, options)
    assert filled == expected
    assert wanted == (1, 28)


def test_mnist_net_optimizer_and_scheduler():
    model = MnistNet()
    optimizers = model.configure_optimizers(None)
    assert list(optimizers) == ["model"]
    assert isinstance(optimizers["model"], torch.optim.Adadelta)
    assert optimizers["model"].param_groups[0]["lr"] == 1.0
    schedulers = model.configure_schedulers(optimizers)
    assert list(schedulers) == ["model"]
    optimizers["model"].step()
    schedulers["model"].step()
    assert optimizers["model"].param_groups[0]["lr"] == pytest.approx(0.7)
    assert model.configure_optimizers(0.5)["model"].param_groups[0]["lr"] == 0.5


def test_mnist_net_training_step():
    model = MnistNet()
    torch.manual_seed(0)
    names, losses, changed, _ = run_training_step(model, mnist_batch(), CrossEntropyLoss())
    assert names == ["model"]
    assert torch.isfinite(losses[0]) and losses[0] > 0
    assert changed == {"model": True}


def test_mnist_net_evaluation_step():
    model = MnistNet().eval()
    x, labels = mnist_batch()
    with torch.no_grad():
        out = model.evaluation_step((x, labels), CrossEntropyLoss(), torch.Generator())
        logits = model.net(x)
    assert set(out) == {"loss", "accuracy", "count"}
    assert out["count"] == BATCH
    expected_loss = torch.nn.functional.cross_entropy(logits, labels, reduction="sum")
    assert torch.allclose(out["loss"], expected_loss)
    assert out["accuracy"] == (logits.argmax(1) == labels).sum()
    # Labels equal to the predictions: every sample counts as correct.
    with torch.no_grad():
        out = model.evaluation_step((x, logits.argmax(1)), CrossEntropyLoss(), torch.Generator())
    assert out["accuracy"] == BATCH


# --- ResnetI2I --------------------------------------------------------------------------


@pytest.mark.parametrize("channels", [1, 3])
def test_resnet_i2i_forward(channels):
    model = ResnetI2I(channels=channels, ngf=8, blocks=2)
    out = model.net(images(channels, 32))
    assert out.shape == (BATCH, channels, 32, 32)
    assert out.min() >= -1 and out.max() <= 1
    assert model.net(images(channels, 20)).shape == (BATCH, channels, 20, 20)


def test_resnet_i2i_is_identity_with_zero_correction():
    model = ResnetI2I(ngf=8, blocks=1)
    last_conv = model.net.body[-1].block[0]
    torch.nn.init.zeros_(last_conv.weight)
    torch.nn.init.zeros_(last_conv.bias)
    x = images(3, 16) * 0.99
    assert torch.allclose(model.net(x), x, atol=1e-5)


def test_resnet_i2i_adapt_to_data():
    filled, wanted = ResnetI2I.adapt_to_data((1, 48, 48), None, {})
    assert filled == {"channels": 1, "image_size": 48}
    assert wanted == (1, 48)


@pytest.mark.parametrize("loss_fn", [L1Loss(), MSELoss()])
def test_resnet_i2i_training_step(loss_fn):
    model = ResnetI2I(ngf=8, blocks=1)
    names, losses, changed, _ = run_training_step(model, i2i_batch(), loss_fn)
    assert names == ["model"]
    assert torch.isfinite(losses[0]) and losses[0] > 0
    assert changed == {"model": True}


def test_resnet_i2i_training_step_perceptual():
    model = ResnetI2I(ngf=8, blocks=1)
    loss_fn = PerceptualLoss(weights="random", layers=2)
    names, losses, changed, _ = run_training_step(model, i2i_batch(), loss_fn)
    assert names == ["model"] and torch.isfinite(losses[0])
    assert changed == {"model": True}


def test_resnet_i2i_evaluation_step():
    model = ResnetI2I(ngf=8, blocks=1).eval()
    x, target = i2i_batch()
    with torch.no_grad():
        out = model.evaluation_step((x, target), L1Loss(), torch.Generator())
        prediction = model.net(x)
    assert set(out) == {"loss", "psnr", "count"}
    assert out["count"] == BATCH
    assert torch.allclose(out["loss"], (prediction - target).abs().mean() * BATCH)
    assert torch.allclose(out["psnr"], batch_psnr(prediction, target).sum())


def test_batch_psnr_values():
    black = -torch.ones(2, 3, 4, 4)
    grey = torch.zeros(2, 3, 4, 4)
    # [0, 1] images 0 and 0.5: MSE 0.25, PSNR 10 log10(4).
    assert torch.allclose(batch_psnr(black, grey), torch.full((2,), 10 * math.log10(4)))
    assert torch.allclose(batch_psnr(grey, grey), torch.full((2,), 100.0))
    half = torch.cat([black[:1], grey[:1]])
    assert torch.allclose(batch_psnr(half, grey), torch.tensor([10 * math.log10(4), 100.0]))


# --- option ranges ----------------------------------------------------------------------


RANGE_CASES = [
    ("dcgan", "ngf=0", "model 'dcgan' option ngf must be at least 1, got 0."),
    ("dcgan", "ngf=-4", "model 'dcgan' option ngf must be at least 1, got -4."),
    ("dcgan", "nz=0", "model 'dcgan' option nz must be at least 1, got 0."),
    ("dcgan", "ndf=0", "model 'dcgan' option ndf must be at least 1, got 0."),
    ("dcgan", "extra_weight=-1", "model 'dcgan' option extra_weight must be at least 0, got -1.0."),
    ("resnet_i2i", "blocks=-1", "model 'resnet_i2i' option blocks must be at least 0, got -1."),
    ("resnet_i2i", "ngf=0", "model 'resnet_i2i' option ngf must be at least 1, got 0."),
    ("resnet_i2i", "image_size=3", "model 'resnet_i2i' option image_size must be at least 4, got 3."),
    ("mnist_net", "num_classes=0", "model 'mnist_net' option num_classes must be at least 1, got 0."),
    ("mnist_net", "dropout=1.5", "model 'mnist_net' option dropout must be between 0 and 1, got 1.5."),
    ("mnist_net", "conv_dropout=-0.5", "model 'mnist_net' option conv_dropout must be between 0 and 1, got -0.5."),
    ("tv_resnet18", "num_classes=0", "model 'tv_resnet18' option num_classes must be at least 1, got 0."),
]


@pytest.mark.parametrize("model, option, message", RANGE_CASES, ids=[f"{m}-{o}" for m, o, _ in RANGE_CASES])
def test_out_of_range_model_options_are_one_line_usage_errors(zoo_cli, tmp_path, model, option, message):
    code, _, err = zoo_cli("train", "--model", model, "--model-opt", option, "--device", "cpu",
                           "--max-steps", "2", "--run-dir", str(tmp_path / "run"))
    assert code == 2, err
    assert err.strip() == f"zoo: error: {message}"


def test_option_ranges_apply_to_typed_values_and_show_in_info(zoo_cli):
    from zoo.errors import UsageError
    from zoo.options import option_specs, parse_options

    assert parse_options("model 'dcgan'", DCGAN, {"ngf": 1, "nz": "1", "extra_weight": 0}) == {
        "ngf": 1, "nz": 1, "extra_weight": 0.0}
    with pytest.raises(UsageError, match=r"option ngf must be at least 1, got 0\."):  # a config file's int
        parse_options("model 'dcgan'", DCGAN, {"ngf": 0})
    with pytest.raises(UsageError, match=r"option extra_weight must be at least 0, got nan\."):  # NaN fits no range
        parse_options("model 'dcgan'", DCGAN, {"extra_weight": float("nan")})
    types = {spec.name: spec.type_name for spec in option_specs(ResnetI2I)}
    assert types == {"channels": "int >= 1", "ngf": "int >= 1", "blocks": "int >= 0", "image_size": "int >= 4"}
    code, out, _ = zoo_cli("info", "mnist_net")
    assert code == 0
    assert any(line.split() == ["dropout", "float", "in", "[0,", "1]", "default", "0.5"]
               for line in out.splitlines()), out


class _MarkedOptions:
    """A third-party factory whose hints nest Annotated: marks other than Range, and Range under ``| None``."""

    def __init__(self, plain: Annotated[int, "a note"] = 1, maybe: Annotated[int, Range(1)] | None = None,
                 sizes: list[Annotated[int, "a note"]] | None = None) -> None:
        pass


def test_nested_annotated_hints_convert_and_keep_their_range():
    from zoo.errors import UsageError
    from zoo.options import option_specs, parse_options

    assert parse_options("model 'x'", _MarkedOptions, {"plain": "3", "maybe": "2", "sizes": "1,2"}) == {
        "plain": 3, "maybe": 2, "sizes": [1, 2]}
    assert parse_options("model 'x'", _MarkedOptions, {"maybe": "none"}) == {"maybe": None}
    with pytest.raises(UsageError, match=r"option maybe must be at least 1, got 0\."):
        parse_options("model 'x'", _MarkedOptions, {"maybe": "0"})
    types = {spec.name: spec.type_name for spec in option_specs(_MarkedOptions)}
    assert types["plain"] == "int" and types["maybe"].endswith(">= 1") and "Annotated" not in types["sizes"]
    with pytest.raises(ValueError, match="low or a high bound"):
        Range()


def test_resnet_i2i_runs_at_the_smallest_sizes_its_ranges_allow():
    recipe = ResnetI2I(channels=1, ngf=1, blocks=0, image_size=4)
    x = images(1, 4)
    assert recipe.net(x).shape == x.shape

"""Whole-step CUDA graphs: eligibility, fallbacks, and (on a GPU) replays that match eager steps."""

from __future__ import annotations

import json
import types

import pytest
import torch

from zoo.engine import checkpoint, graphed, speed

TINY = ["--model", "dcgan", "--model-opt", "ngf=8", "--model-opt", "ndf=8", "--model-opt", "nz=16",
        "--dataset-opt", "train_count=64", "--dataset-opt", "test_count=8", "--batch-size", "8",
        "--log-every", "2", "--max-steps", "8", "--eval-every", "0"]
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _config(**changes):
    values = {"skip_nonfinite": False}
    values.update(changes)
    return types.SimpleNamespace(**values)


def _recipe(capturable=True):
    return types.SimpleNamespace(capturable=capturable)


def _adam():
    return {"model": torch.optim.Adam([torch.nn.Parameter(torch.zeros(3))])}


def test_cuda_graph_on_the_cpu_falls_back_in_one_line(zoo_cli, tmp_path):
    code, _, err = zoo_cli("train", *TINY, "--device", "cpu", "--cuda-graph", "--run-dir", str(tmp_path / "run"))
    assert code == 0, err
    assert "--cuda-graph needs a CUDA device; on cpu steps run eagerly" in err
    resolved = json.loads((tmp_path / "run" / "config.json").read_text())["resolved"]["speed"]
    assert resolved["cuda_graph"] is False


@pytest.mark.parametrize("case, expected", [
    ({"recipe": _recipe(capturable=False)}, "does not declare capturable = True"),
    ({"precision": "16-mixed"}, "gradient scaler"),
    ({"config": _config(skip_nonfinite=True)}, "--skip-nonfinite"),
    ({"distributed": True}, "several processes"),
    ({"optimizers": {"model": torch.optim.Adagrad([torch.nn.Parameter(torch.zeros(3))])}},
     "optimizer 'model' (Adagrad) has no capturable mode"),
    ({"optimizers": {"model": torch.optim.LBFGS([torch.nn.Parameter(torch.zeros(3))])}}, "(LBFGS)"),
])
def test_each_reason_a_step_cannot_be_captured_is_named(case, expected):
    settings = speed.SpeedSettings(case.get("precision", "bf16"), True, False, True)
    reason = speed.graph_blocker(case.get("config", _config()), settings, case.get("recipe", _recipe()),
                                 case.get("optimizers", _adam()), case.get("distributed", False))
    assert reason is not None and expected in reason


def test_capturable_optimizers_pass_the_check():
    params = [torch.nn.Parameter(torch.zeros(3))]
    optimizers = {"a": torch.optim.Adam(params), "b": torch.optim.SGD(params, lr=0.1, momentum=0.9),
                  "c": torch.optim.AdamW(params), "d": torch.optim.Adadelta(params)}
    assert speed.graph_blocker(_config(), speed.SpeedSettings("bf16", True, False, True), _recipe(),
                               optimizers, False) is None


def test_set_capturable_sets_the_flag_and_moves_restored_step_counters():
    param = torch.nn.Parameter(torch.zeros(3))
    optimizer = torch.optim.Adam([param])
    param.grad = torch.ones(3)
    optimizer.step()  # a step counter on the CPU, as a checkpoint restores it
    assert optimizer.state[param]["step"].device.type == "cpu"
    graphed.set_capturable({"model": optimizer}, torch.device("meta"), True)
    assert optimizer.param_groups[0]["capturable"] and optimizer.defaults["capturable"]
    step = optimizer.state[param]["step"]
    assert step.device.type == "meta" and step.dtype == torch.float32


@pytest.mark.parametrize("enabled", [True, False])
def test_set_capturable_leaves_a_fused_optimizer_s_counters_beside_its_parameters(enabled):
    param = torch.nn.Parameter(torch.zeros(3))
    optimizer = torch.optim.Adam([param], fused=True)
    param.grad = torch.ones(3)
    optimizer.step()
    graphed.set_capturable({"model": optimizer}, torch.device("meta"), enabled)
    assert optimizer.state[param]["step"].device == param.device
    assert optimizer.param_groups[0]["capturable"] is enabled


def test_a_capturable_checkpoint_resumes_without_graphs_on_the_cpu():
    """A checkpoint saved by a graph run keeps capturable=True; a run without graphs turns it off."""
    param = torch.nn.Parameter(torch.ones(3))
    saved = torch.optim.Adam([param], capturable=True).state_dict()
    optimizer = torch.optim.Adam([param])
    optimizer.load_state_dict(saved)
    param.grad = torch.ones(3)
    with pytest.raises(Exception, match="capturable"):
        optimizer.step()  # what a resume on the CPU met before
    graphed.set_capturable({"model": optimizer}, torch.device("cpu"), False)
    optimizer.step()
    assert not optimizer.param_groups[0]["capturable"] and param.detach().lt(1).all()


def test_fast_and_cuda_graph_together_on_the_cpu_run_eagerly(zoo_cli, tmp_path):
    code, _, err = zoo_cli("train", *TINY, "--device", "cpu", "--fast", "--cuda-graph",
                           "--run-dir", str(tmp_path / "run"))
    assert code == 0, err
    assert "--cuda-graph needs a CUDA device; on cpu steps run eagerly" in err


def test_a_new_learning_rate_or_batch_shape_changes_what_the_graph_depends_on():
    optimizers = _adam()
    batch = [(torch.zeros(4, 3, 8, 8), torch.zeros(4))]
    before = graphed._signature(batch, optimizers)
    assert graphed._signature([(torch.ones(4, 3, 8, 8), torch.ones(4))], optimizers) == before
    assert graphed._signature([(torch.zeros(2, 3, 8, 8), torch.zeros(2))], optimizers) != before
    assert graphed._signature([(torch.zeros(4, 3, 8, 8), ["a", "b", "c", "d"])], optimizers) != \
        graphed._signature([(torch.zeros(4, 3, 8, 8), ["a", "b", "c", "e"])], optimizers)  # names a graph would freeze
    optimizers["model"].param_groups[0]["lr"] *= 0.5
    assert graphed._signature(batch, optimizers) != before


# ----------------------------------------------------------------- on a GPU
def _linear_step(model, optimizer):
    def compute(batches):
        optimizer.zero_grad(set_to_none=True)
        inputs, targets = batches[0]
        loss = torch.nn.functional.mse_loss(model(inputs), targets)
        loss.backward()
        optimizer.step()
        return {"loss": loss.detach()}
    return compute


def _pair(optimizer_class, **options):
    torch.manual_seed(0)
    eager = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4)).cuda()
    graph = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4)).cuda()
    graph.load_state_dict(eager.state_dict())
    eager_opt, graph_opt = optimizer_class(eager.parameters(), **options), optimizer_class(graph.parameters(), **options)
    graphed.set_capturable({"m": eager_opt}, torch.device("cuda"), True)
    graphed.set_capturable({"m": graph_opt}, torch.device("cuda"), True)
    return eager, graph, eager_opt, graph_opt


@needs_cuda
@pytest.mark.parametrize("optimizer_class, options", [(torch.optim.Adam, {"lr": 1e-2}),
                                                      (torch.optim.SGD, {"lr": 0.05, "momentum": 0.9})])
def test_replayed_steps_match_eager_steps_and_follow_a_new_learning_rate(optimizer_class, options):
    eager, graph, eager_opt, graph_opt = _pair(optimizer_class, **options)
    said = []
    runner = graphed.StepGraph(_linear_step(graph, graph_opt), {"m": graph_opt}, said.append)
    eager_step = _linear_step(eager, eager_opt)
    generator = torch.Generator(device="cuda").manual_seed(1)
    for step in range(12):
        if step == 8:  # a scheduler's change: the graph must be captured again
            for optimizer in (eager_opt, graph_opt):
                optimizer.param_groups[0]["lr"] *= 0.1
        batch = [(torch.randn(8, 16, device="cuda", generator=generator),
                  torch.randn(8, 4, device="cuda", generator=generator))]
        replayed, expected = runner(batch)["loss"], eager_step(batch)["loss"]
        torch.testing.assert_close(replayed, expected, rtol=1e-5, atol=1e-6)
    assert runner.enabled and runner.captures == 2
    assert said == ["zoo: training steps now replay one captured CUDA graph."]
    for a, b in zip(eager.parameters(), graph.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@needs_cuda
def test_a_step_that_syncs_with_the_host_falls_back_to_eager_in_one_line():
    _, graph, _, graph_opt = _pair(torch.optim.Adam, lr=1e-2)
    inner = _linear_step(graph, graph_opt)

    def syncing(batches):
        values = inner(batches)
        values["loss_host"] = torch.tensor(values["loss"].item())  # a host sync: not capturable
        return values

    said = []
    runner = graphed.StepGraph(syncing, {"m": graph_opt}, said.append)
    batch = [(torch.randn(8, 16, device="cuda"), torch.randn(8, 4, device="cuda"))]
    stream = torch.cuda.current_stream()
    for _ in range(graphed.WARMUP_STEPS + 2):
        values = runner(batch)
    assert torch.cuda.current_stream() == stream  # not left on the failed capture's stream
    assert not runner.enabled and runner.captures == 0
    assert len(said) == 1 and "cannot be captured in a CUDA graph" in said[0] and "running eagerly" in said[0]
    assert torch.isfinite(values["loss"]).all()
    assert torch.randn(3, device="cuda").isfinite().all()  # the random generator left capture mode

def _mean_distance(a, b):
    keys = [k for k in a if a[k].is_floating_point()]
    return float(sum((a[k].float() - b[k].float()).abs().sum() for k in keys) / sum(a[k].numel() for k in keys))


@needs_cuda
def test_cuda_graph_training_matches_eager_training(zoo_cli, tmp_path):
    """After 8 steps a graph run is nearer the eager run than the eager run's own step 4: replays trained."""
    runs = {"eager": [], "half": ["--max-steps", "4"], "graph": ["--cuda-graph"]}
    for name, extra in runs.items():
        code, _, err = zoo_cli("train", *TINY, "--lr", "0.002", "--device", "cuda", *extra,
                               "--run-dir", str(tmp_path / name))
        assert code == 0, err
        if name == "graph":
            assert "training steps now replay one captured CUDA graph" in err
    eager, half, graph = (checkpoint.load_weights(checkpoint.list_steps(tmp_path / name)[-1][1]) for name in runs)
    assert _mean_distance(graph, eager) < 0.5 * _mean_distance(graph, half)


@needs_cuda
def test_a_fast_run_resumes_and_keeps_replaying(zoo_cli, tmp_path):
    run = tmp_path / "run"
    code, _, err = zoo_cli("train", *TINY, "--device", "cuda", "--fast", "--run-dir", str(run))
    assert code == 0, err
    resolved = json.loads((run / "config.json").read_text())["resolved"]["speed"]
    assert resolved == {"precision": "bf16", "channels_last": True, "compile": False, "cuda_graph": True}
    code, _, err = zoo_cli("train", "--resume", str(run), "--max-steps", "16")
    assert code == 0, err
    assert "training steps now replay one captured CUDA graph" in err
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["kind"] == "train"]
    assert train[-1]["step"] == 16 and all(r["peak_memory_gib"] > 0 for r in train)

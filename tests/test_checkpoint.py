"""Checkpoint format and atomicity: no pickle, exact round trips, no partial step folders."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from zoo.engine import checkpoint


def sample_state() -> dict:
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    scheduler = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    return {
        "optimizers": {"model": opt.state_dict()},
        "schedulers": {"model": scheduler.state_dict()},
        "rng": {"torch": torch.get_rng_state(), "python": (3, tuple(range(5)), None)},
        "step": 7, "best": None, "nested": [1, 2.5, "x", {"a": (1, 2)}],
    }


def assert_same(a, b):
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    elif isinstance(a, dict):
        assert list(a.keys()) == list(b.keys())  # int keys of optimizer state stay ints
        for key in a:
            assert_same(a[key], b[key])
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b)
        for x, y in zip(a, b):
            assert_same(x, y)
    else:
        assert a == b


def test_state_round_trips_exactly_through_safetensors_and_json(tmp_path):
    state = sample_state()
    weights = {"net.weight": torch.randn(2, 3), "net.bias": torch.randn(2)}
    folder = checkpoint.save(tmp_path, 7, weights, state)
    assert folder == tmp_path / "checkpoints" / "step-7"
    assert sorted(p.name for p in folder.iterdir()) == ["model.safetensors", "state.json", "state.safetensors"]
    loaded_weights, loaded_state = checkpoint.load(folder)
    assert_same(dict(sorted(weights.items())), dict(sorted(loaded_weights.items())))
    assert_same(state, loaded_state)
    doc = json.loads((folder / "state.json").read_text())
    assert doc["format_version"] == checkpoint.FORMAT_VERSION and doc["step"] == 7


def test_the_same_checkpoint_saved_again_has_the_same_bytes_and_its_metadata(tmp_path):
    # safetensors orders a file's metadata differently from one call to the next; zoo sorts it
    from safetensors import safe_open
    weights, ema = {"net.weight": torch.randn(2, 3)}, {"net.weight": torch.randn(2, 3)}
    state = sample_state()
    folders = [checkpoint.save(tmp_path / f"run{i}", 7, weights, state, {"ema": ema}) for i in range(6)]
    for name in ("model.safetensors", "weights-ema.safetensors", "state.safetensors", "state.json"):
        assert len({(folder / name).read_bytes() for folder in folders}) == 1, name
    with safe_open(str(folders[0] / "weights-ema.safetensors"), "pt") as opened:
        assert opened.metadata() == {"format": "zoo", "set": "ema", "step": "7"}
    assert_same(checkpoint.load(folders[0])[0], weights)


def test_a_failed_write_leaves_no_step_folder_and_the_previous_one_whole(tmp_path, monkeypatch):
    weights = {"w": torch.ones(3)}
    checkpoint.save(tmp_path, 1, weights, sample_state())

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoint, "save_file", disk_full)
    with pytest.raises(OSError):
        checkpoint.save(tmp_path, 2, weights, sample_state())
    assert [s for s, _ in checkpoint.list_steps(tmp_path)] == [1]
    assert not list((tmp_path / "checkpoints").glob(".tmp-*"))
    checkpoint.load(tmp_path / "checkpoints" / "step-1")


def test_kill_9_during_saves_never_leaves_a_partial_step_folder(tmp_path):
    script = textwrap.dedent("""
        import sys
        import torch
        from zoo.engine import checkpoint
        weights = {"w": torch.randn(1024, 1024)}  # 4 MB: the write takes a while
        step = 0
        while True:
            step += 1
            checkpoint.save(sys.argv[1], step, weights, {"step": step, "t": torch.arange(step)})
            checkpoint.prune(sys.argv[1], keep=2)
            print(step, flush=True)
    """)
    for index, delay in enumerate((0.05, 0.13, 0.29)):
        run_dir = tmp_path / str(index)
        proc = subprocess.Popen([sys.executable, "-c", script, str(run_dir)], stdout=subprocess.PIPE, text=True)
        proc.stdout.readline()  # at least one checkpoint is complete
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        steps = checkpoint.list_steps(run_dir)
        assert steps, "the first checkpoint must survive"
        for step, folder in steps:
            _, state = checkpoint.load(folder)  # every visible step folder is whole
            assert state["step"] == step
            assert torch.equal(state["t"], torch.arange(step))


def test_damaged_checkpoint_raises_a_checkpoint_error(tmp_path):
    folder = checkpoint.save(tmp_path, 3, {"w": torch.ones(2)}, {"step": 3})
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(checkpoint.CheckpointError, match="step-3"):
        checkpoint.load(folder)
    (folder / "model.safetensors").write_bytes(data)
    checkpoint.load(folder)
    (folder / "state.json").unlink()
    with pytest.raises(checkpoint.CheckpointError, match="missing state.json"):
        checkpoint.load(folder)


def test_prune_keeps_the_newest_and_protected_steps(tmp_path):
    for step in (2, 4, 6, 8, 10):
        checkpoint.save(tmp_path, step, {"w": torch.ones(1)}, {"step": step})
    removed = checkpoint.prune(tmp_path, keep=2, protect=(4,))
    assert sorted(removed) == [2, 6]
    assert [s for s, _ in checkpoint.list_steps(tmp_path)] == [4, 8, 10]
    checkpoint.prune(tmp_path, keep=0)
    assert [s for s, _ in checkpoint.list_steps(tmp_path)] == [10]  # never the newest


def test_no_pickle_in_a_checkpoint(tmp_path):
    folder = checkpoint.save(tmp_path, 1, {"w": torch.ones(2)}, sample_state())
    for path in folder.iterdir():
        head = path.read_bytes()[:2]
        assert head != b"\x80\x02" and not head.startswith(b"PK"), f"{path.name} looks like a pickle/zip"

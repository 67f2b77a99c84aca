"""The example third-party plugin (examples/zoo-plugin-example), installed with pip, through the real CLI.

The package is pip-installed once into a folder put on PYTHONPATH, as a user's
``pip install`` would, then listed, described, trained and resumed with
``python -m train_cli``; its own tests run against that installed copy.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "zoo-plugin-example"
ITEMS = {("model", "tiny_autoencoder"), ("loss", "ssim_lite"), ("dataset", "stripes"),
         ("hook", "loss_spike_alarm")}
TINY = ["--model-opt", "width=4", "--dataset-opt", "size=16", "--dataset-opt", "train_count=32",
        "--dataset-opt", "test_count=8", "--batch-size", "8", "--log-every", "1", "--device", "cpu",
        "--workers", "0"]


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The example installed with pip into a fresh folder (``pip install --target``, no network)."""
    root = tmp_path_factory.mktemp("example-plugin")
    # Build from a copy: setuptools writes build/ and *.egg-info next to the sources it builds.
    source = root / "src"
    shutil.copytree(EXAMPLE, source, ignore=shutil.ignore_patterns(
        "build", "*.egg-info", "__pycache__", ".pytest_cache"))
    target = root / "site"
    result = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
         "--disable-pip-version-check", "--quiet", "--target", str(target), str(source)],
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    return target


@pytest.fixture(scope="module")
def env(site) -> dict[str, str]:
    return {"PYTHONPATH": str(site)}


def test_installed_metadata_states_entry_point_and_zoo_requirement(site):
    info = next(site.glob("zoo_plugin_example-0.1.0.dist-info"))
    assert "[zoo]\nexample = zoo_plugin_example.plugin" in (info / "entry_points.txt").read_text()
    metadata = (info / "METADATA").read_text()
    assert "Name: zoo-plugin-example" in metadata
    assert any(line.startswith("Requires-Dist: zoo") and "<1" in line and ">=0.1" in line
               for line in metadata.splitlines())


def test_list_shows_each_item_with_plugin_and_version(run_zoo, env):
    result = run_zoo("list", "--json", env=env)
    assert result.returncode == 0, result.stderr
    records = json.loads(result.stdout)
    mine = {(r["kind"], r["name"]): r for r in records if r["plugin"] == "example" and r["kind"] != "plugin"}
    assert set(mine) == ITEMS
    assert all(r["version"] == "0.1.0" and r["summary"] for r in mine.values())
    plugin = next(r for r in records if r["kind"] == "plugin" and r["name"] == "example")
    assert plugin["status"] == "ok" and plugin["distribution"] == "zoo-plugin-example"
    assert plugin["registered"] == {"model": 1, "loss": 1, "dataset": 1, "hook": 1}

    result = run_zoo("list", "plugins", env=env)
    assert result.returncode == 0, result.stderr
    row = next(line.split() for line in result.stdout.splitlines() if line.split()[:1] == ["example"])
    assert row[:4] == ["example", "zoo-plugin-example", "0.1.0", "ok"], row


def test_info_shows_the_model_options_and_what_fits(run_zoo, env):
    result = run_zoo("info", "tiny_autoencoder", env=env)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "model from plugin example 0.1.0; example:tiny_autoencoder" in out
    assert "task: image-to-image" in out
    assert "losses that fit: ssim_lite, l1, mse (default: ssim_lite)" in out
    assert "stripes" in out and "shapes (default)" in out
    for option, type_name, default in (("width", "int", "16"), ("depth", "int", "2"), ("skip", "bool", "True")):
        assert any(line.split() == [option, type_name, "default", default] for line in out.splitlines()), out


def test_train_stops_on_the_alarm_then_resume_extends_the_run(run_zoo, env, tmp_path):
    run_dir = tmp_path / "run"
    # threshold 0: the hook stops the run at its first log step (exit 0, checkpoint saved).
    result = run_zoo("train", "--model", "tiny_autoencoder", "--loss", "ssim_lite", "--dataset", "stripes",
                     "--hook", "loss_spike_alarm", "--hook-opt", "loss_spike_alarm.threshold=0",
                     "--max-steps", "3", "--run-dir", str(run_dir), *TINY, env=env)
    assert result.returncode == 0, result.stderr
    assert "stopped early at step 1: loss_spike_alarm:" in result.stderr
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["step-1"]
    saved = json.loads((run_dir / "config.json").read_text())["resolved"]
    assert saved["model"] == {"name": "example:tiny_autoencoder", "version": "0.1.0",
                              "distribution": "zoo-plugin-example"}
    assert saved["loss"]["name"] == "example:ssim_lite" and saved["dataset"]["name"] == "example:stripes"
    assert {"name": "example:loss_spike_alarm", "version": "0.1.0",
            "distribution": "zoo-plugin-example"} in saved["hooks"]

    result = run_zoo("train", "--resume", str(run_dir), "--max-steps", "5",
                     "--hook-opt", "loss_spike_alarm.threshold=100", env=env)
    assert result.returncode == 0, result.stderr
    assert "stopped early" not in result.stderr
    steps = sorted(int(p.name.split("-")[1]) for p in (run_dir / "checkpoints").iterdir())
    assert steps[-1] == 5
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    logged = [r["step"] for r in records if r["kind"] == "log" and "loss_spike_alarm/max_loss" in r]
    assert logged == [1, 2, 3, 4, 5]  # run.log from the hook, at every log step
    assert [r for r in records if r["kind"] == "train" and r["step"] == 5][0]["l1"] >= 0  # the recipe's log

    # two networks and no predict(): zoo predict runs the recipe's own forward
    image = tmp_path / "in.png"
    Image.new("RGB", (16, 16), (200, 40, 90)).save(image)
    result = run_zoo("predict", "--run", str(run_dir), str(image), "--out", str(tmp_path / "out"), env=env)
    assert result.returncode == 0, result.stderr
    with Image.open(tmp_path / "out" / "in.png") as restored:
        assert restored.size == (16, 16)


def test_the_example_package_own_tests_pass(env):
    full = {k: v for k, v in os.environ.items() if not k.startswith("ZOO_")}
    full.update(env, PYTHONDONTWRITEBYTECODE="1")
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(EXAMPLE / "tests")],
        cwd=EXAMPLE, env=full, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert " passed" in result.stdout and "failed" not in result.stdout

"""``zoo list``, ``zoo info``, ``--help`` and ``--version`` through the real CLI in a subprocess."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

import zoo

BUILTINS = {
    "model": ["dcgan", "mnist_net", "resnet_i2i"],
    "loss": ["perceptual", "mse", "l1", "bce", "cross_entropy"],
    "dataset": ["shapes", "imagefolder", "mnist", "glob_patches"],
    "hook": ["tensorboard", "samples"],
}
TITLES = {"Models": "model", "Losses": "loss", "Datasets": "dataset", "Hooks": "hook", "Plugins": "plugin"}


def _sections(stdout: str) -> dict[str, list[list[str]]]:
    """``zoo list`` tables as {kind: [row cells...]} (header rows dropped)."""
    sections: dict[str, list[list[str]]] = {}
    current = None
    for line in stdout.splitlines():
        title = re.match(r"^(\w+) \((\d+)\)$", line)
        if title:
            current = TITLES[title.group(1)]
            sections[current] = []
        elif line.startswith("  ") and current and not line.split()[0] == "NAME":
            sections[current].append(line.split())
    return sections


def _option(stdout: str, name: str) -> tuple[str, str]:
    """(type, default) of one option line of ``zoo info``; the type with its range, if any (``int >= 1``)."""
    match = re.search(rf"^\s+{name}\s+(\S+(?: (?:>=|in) \S+(?: \S+)?)?)\s+default (.+)$", stdout, re.MULTILINE)
    assert match, f"no option {name} in:\n{stdout}"
    return match.group(1), match.group(2)


def _field(stdout: str, label: str) -> str:
    match = re.search(rf"^  {re.escape(label)}: (.*)$", stdout, re.MULTILINE)
    assert match, f"no '{label}:' in:\n{stdout}"
    return match.group(1)


def test_list_shows_every_builtin_with_its_plugin(run_zoo):
    result = run_zoo("list")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    sections = _sections(result.stdout)
    for kind, names in BUILTINS.items():
        plugin_of = {row[0]: row[1] for row in sections[kind]}
        for name in names:
            assert plugin_of.get(name) == "builtin", (kind, name)
    models = {row[0]: row[1] for row in sections["model"]}
    assert models["tv_resnet18"] == "torchvision"
    assert re.search(rf"^Models \({len(models)}\)$", result.stdout, re.MULTILINE)
    names = list(models)
    assert names.index("tv_resnet18") < names.index("tv_resnet34") < names.index("tv_resnet101")
    shapes = next(line for line in result.stdout.splitlines() if line.startswith("  shapes "))
    assert "Embedded procedural coloured shapes" in shapes and shapes.endswith("[default]")
    assert {row[0] for row in sections["plugin"]} >= {"builtin", "torchvision"}


def test_list_models_with_a_pattern(run_zoo):
    result = run_zoo("list", "models", "tv_res*")
    assert result.returncode == 0, result.stderr
    sections = _sections(result.stdout)
    assert set(sections) == {"model"}
    assert [row[0] for row in sections["model"]] == [
        "tv_resnet18", "tv_resnet34", "tv_resnet50", "tv_resnet101", "tv_resnet152",
        "tv_resnext50_32x4d", "tv_resnext101_32x8d", "tv_resnext101_64x4d"]
    assert result.stdout.startswith("Models (8)\n")
    assert all(row[1] == "torchvision" for row in sections["model"])
    assert "torchvision resnet18 classifier (untrained)" in result.stdout


def test_list_without_matches_says_so(run_zoo):
    result = run_zoo("list", "losses", "nomatch*")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "no losses match nomatch*"


def test_list_plugins(run_zoo):
    result = run_zoo("list", "plugins")
    assert result.returncode == 0, result.stderr
    sections = _sections(result.stdout)
    assert set(sections) == {"plugin"}
    rows = {row[0]: row for row in sections["plugin"]}
    assert set(rows) == {"builtin", "torchvision"}
    for name in rows:
        assert rows[name][1:4] == ["zoo", zoo.__version__, "ok"]
    builtin_detail = " ".join(rows["builtin"][4:])
    assert re.fullmatch(r"\d+ models, \d+ losses, \d+ datasets, \d+ hooks", builtin_detail)
    assert re.fullmatch(r"\d+ models", " ".join(rows["torchvision"][4:]))
    assert "Models" not in result.stdout


def test_list_json(run_zoo):
    result = run_zoo("list", "--json")
    assert result.returncode == 0, result.stderr
    records = json.loads(result.stdout)
    assert isinstance(records, list) and records
    for record in records:
        assert record["kind"] in {"model", "loss", "dataset", "hook", "plugin"}
        assert isinstance(record["name"], str) and record["name"]
        assert isinstance(record["plugin"], str) and record["plugin"]
        assert isinstance(record["summary"], str)
    by_key = {(r["kind"], r["name"]): r for r in records}
    for kind, names in BUILTINS.items():
        for name in names:
            assert by_key[kind, name]["plugin"] == "builtin"
            assert by_key[kind, name]["summary"]
    assert by_key["dataset", "shapes"]["default"] is True
    assert by_key["model", "tv_resnet18"]["plugin"] == "torchvision"
    plugins = [r for r in records if r["kind"] == "plugin"]
    assert {p["name"] for p in plugins} == {"builtin", "torchvision"}
    for plugin in plugins:
        assert plugin["version"] == zoo.__version__
        assert plugin["status"] == "ok"
    assert by_key["plugin", "builtin"]["registered"]["loss"] == sum(
        1 for r in records if r["kind"] == "loss" and r["plugin"] == "builtin")


_IMPORT_PROBE = """
import json, sys
from train_cli.main import main
seen = {}
for argv in (["--help"], ["list"]):
    try:
        main(argv)
    except SystemExit as exc:
        seen[argv[0] + "_exit"] = exc.code
    seen[argv[0]] = sorted(m for m in ("torch", "torchvision", "tensorboardX", "numpy") if m in sys.modules)
print("PROBE " + json.dumps(seen))
"""


def test_help_and_list_do_not_import_torch():
    env = {k: v for k, v in os.environ.items() if not k.startswith("ZOO_")}
    result = subprocess.run([sys.executable, "-c", _IMPORT_PROBE], capture_output=True, text=True,
                            timeout=120, env=env)
    assert result.returncode == 0, result.stderr
    probe = json.loads(result.stdout.splitlines()[-1].removeprefix("PROBE "))
    assert probe["--help_exit"] == 0 and probe["list_exit"] == 0
    assert probe["--help"] == [] and probe["list"] == []
    assert "Usage: zoo" in result.stdout and "dcgan" in result.stdout


def test_help(run_zoo):
    result = run_zoo("--help")
    assert result.returncode == 0
    assert result.stdout.startswith("Usage: zoo [OPTIONS] COMMAND [ARGS]...")
    for command in ("info", "list", "test", "train"):
        assert re.search(rf"^  {command}\s", result.stdout, re.MULTILINE)
    assert "--disable-plugin NAME" in result.stdout and "--version" in result.stdout


def test_version(run_zoo):
    result = run_zoo("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"zoo, version {zoo.__version__}"


@pytest.mark.parametrize("args, message", [
    (("list", "--bogus"), "zoo: error: No such option '--bogus'"),
    (("lsit",), "zoo: error: No such command 'lsit'"),
], ids=["option", "command"])
def test_bad_click_usage_is_one_line(run_zoo, args, message):
    result = run_zoo(*args)
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(message)
    assert "--help" in lines[0]


@pytest.fixture(scope="module")
def info(run_zoo):
    """``zoo info NAME`` for one entry of each kind, run once for the module (most import torch)."""
    return {name: run_zoo("info", name) for name in ("dcgan", "perceptual", "shapes", "tensorboard")}


def test_info_model(info):
    result = info["dcgan"]
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert out.startswith(f"dcgan  (model from plugin builtin {zoo.__version__}; builtin:dcgan)\n")
    assert "  target: plugins.models.dcgan:DCGAN" in out
    assert _field(out, "task") == "generation"
    for option, default in [("nz", "100"), ("ngf", "64"), ("ndf", "64"), ("nc", "3")]:
        assert _option(out, option) == ("int >= 1", default)
    assert _option(out, "image_size") == ("int", "64")
    assert {"perceptual", "mse", "l1"} <= set(re.findall(r"\w+", _field(out, "losses that fit")))
    datasets = _field(out, "datasets that fit")
    assert "shapes (default)" in datasets and "imagefolder" in datasets
    assert "glob_patches" not in datasets  # image-to-image data does not feed a GAN
    count = re.fullmatch(r"([\d,]+) at default options \(a run fills image size, channels and classes from its "
                         r"data, and says its own count\)", _field(out, "parameters"))
    assert count and int(count.group(1).replace(",", "")) > 1_000_000


def test_info_loss(info):
    result = info["perceptual"]
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert out.startswith("perceptual  (loss from plugin builtin")
    assert "VGG19 feature loss" in out
    assert _option(out, "weights") == ("str", "'auto'")
    users = _field(out, "models that use it").split(", ")
    assert "dcgan" in users and "resnet_i2i" in users
    assert "mnist_net" not in users


def test_info_dataset(info):
    result = info["shapes"]
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert out.startswith("shapes  (dataset from plugin builtin")
    assert "generation" in _field(out, "feeds")
    assert _field(out, "--data") == "not read"
    assert _option(out, "size")[0] == "int"
    assert not re.search(r"^\s+split\s", out, re.MULTILINE)  # reserved options are not shown


def test_info_hook(info):
    result = info["tensorboard"]
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert out.startswith("tensorboard  (hook from plugin builtin")
    assert _field(out, "on by default") == "yes (turn off with --no-hook tensorboard)"
    implements = _field(out, "implements").split(", ")
    assert "on_step_end" in implements and "on_train_end" in implements


def test_a_dataset_with_optional_data_shows_its_data_help():
    from train_cli.describe import _data_line

    class PhotosOrDrawn:
        needs_data, reads_data, data_help = False, True, "a folder of photos (drawn shapes without it)"

    assert _data_line(PhotosOrDrawn) == "optional: a folder of photos (drawn shapes without it)"


def test_list_of_a_misspelt_kind_suggests_the_kind(run_zoo):
    result = run_zoo("list", "modles")
    assert result.returncode == 2 and result.stdout == ""  # a typo, not a search: a usage error
    assert result.stderr.strip() == "zoo: error: no kind or name matches 'modles'; did you mean 'zoo list models'?"
    result = run_zoo("list", "hoks", "tens*")  # another pattern matched: the hint comes as a note
    assert "tensorboard" in result.stdout
    assert result.stdout.strip().splitlines()[-1] == (
        "note: no kind or name matches 'hoks'; did you mean 'zoo list hooks tens*'?")
    result = run_zoo("list", "plugns", "--json")
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.strip() == "zoo: error: no kind or name matches 'plugns'; did you mean 'zoo list plugins'?"
    result = run_zoo("list", "hoks", "tens*", "--json")  # stdout stays JSON, the hint a note on stderr
    assert [record["name"] for record in json.loads(result.stdout)] == ["tensorboard"]
    assert result.stderr.strip() == "zoo: note: no kind or name matches 'hoks'; did you mean 'zoo list hooks tens*'?"
    assert run_zoo("list", "nomatch*").stdout.strip() == "no entries match nomatch*"  # nothing like a kind

"""``zoo train --print-config``: the resolved TOML, its origins, and a run it reproduces when given back."""

from __future__ import annotations

import dataclasses
import json
import math
import re
import tomllib
from pathlib import Path

from zoo.config import OPTION_TABLES, TrainConfig
from zoo.config_toml import Line, Table, render, toml_value

# tiny and quick: a 32x32 DCGAN of narrow layers, one step, one evaluation batch, no picture hooks
BASE_TOML = 'batch_size = 4\n\n[dataset_opt]\ntrain_count = 16\ntest_count = 8\n'
FLAGS = ("--model", "dcgan", "--max-steps", "1", "--model-opt", "ngf=8", "--model-opt", "ndf=8", "--eval-batches", "1",
         "--no-hook", "samples", "--no-hook", "tensorboard", "--hook", "ema", "--hook-opt", "ema.decay=0.5",
         "--device", "cpu", "--run-dir", "run")


def _lines_by_key(text: str, table: str | None = None) -> dict[str, str]:
    """Each line of one table (None: the top level) by its key, commented-out ones included."""
    found, current = {}, None
    for line in text.splitlines():
        header = re.fullmatch(r"\[(.+)\]", line)
        if header:
            current = header.group(1)
            continue
        key = re.match(r"^(?:# )?([\w.\"-]+)(?: =|:)", line)
        if key and current == table:
            found[key.group(1)] = line
    return found


def _uncommented(text: str) -> dict:
    """The file with every commented-out ``# key = value`` line taken in: all the values the run resolves."""
    lines = [re.sub(r"^# (?=[\w.\"-]+ = )", "", line) for line in text.splitlines()]
    return tomllib.loads("\n".join(lines))


def test_print_config_given_back_reproduces_the_run(zoo_cli, tmp_path, monkeypatch):
    first, second = tmp_path / "first", tmp_path / "second"
    for folder in (first, second):
        folder.mkdir()
        (folder / "base.toml").write_text(BASE_TOML)
    monkeypatch.chdir(first)
    code, printed, err = zoo_cli("train", "--config", "base.toml", *FLAGS, "--print-config")
    assert code == 0, err
    assert not (first / "run").exists()  # nothing trained, no run folder
    code, _, err = zoo_cli("train", "--config", "base.toml", *FLAGS)
    assert code == 0, err

    monkeypatch.chdir(second)
    Path("printed.toml").write_text(printed)
    code, _, err = zoo_cli("train", "--config", "printed.toml")
    assert code == 0, err

    runs = [json.loads((folder / "run" / "config.json").read_text()) for folder in (first, second)]
    assert runs[0]["config"] == runs[1]["config"]
    assert runs[0]["resolved"] == runs[1]["resolved"]

    # every option the run resolved is in the file: given ones as keys, the rest commented out with their value
    resolved, everything = runs[0]["resolved"], _uncommented(printed)
    assert everything["model_opt"] == {**resolved["model_options"], "ngf": "8", "ndf": "8"}
    assert everything["dataset_opt"] == {**resolved["dataset_options"], "train_count": 16, "test_count": 8}
    assert everything["hook_opt"]["ema"] == {**resolved["hook_options"]["builtin:ema"], "decay": "0.5"}
    assert everything["dataset"] == resolved["dataset"]["name"].rpartition(":")[2]


def test_each_value_says_where_it_comes_from(zoo_cli, tmp_path, monkeypatch):
    from plugins.models.dcgan import DCGAN

    monkeypatch.chdir(tmp_path)
    Path("base.toml").write_text(BASE_TOML)
    code, printed, err = zoo_cli("train", "--config", "base.toml", *FLAGS, "--print-config")
    assert code == 0, err
    top, model_opt = _lines_by_key(printed), _lines_by_key(printed, "model_opt")
    assert top["batch_size"].endswith("# file") and top["max_steps"].endswith("# command line")
    assert top["keep"].endswith("# default") and top["keep"].startswith("keep = 3")
    assert re.fullmatch(rf"# lr = {DCGAN.default_lr!r} +# model", top["lr"])  # the model's, left to the run
    assert top["run_dir"].startswith('run_dir = "run"')
    assert model_opt["ngf"].startswith('ngf = "8"') and model_opt["ngf"].endswith("# command line")
    assert model_opt["image_size"].startswith("# image_size = ") and model_opt["image_size"].endswith("# data")
    assert model_opt["nz"].startswith("# nz = 100 ") and model_opt["nz"].endswith("# model")
    assert _lines_by_key(printed, "dataset_opt")["train_count"].endswith("# file")
    assert set(top) == {field.name for field in dataclasses.fields(TrainConfig)} - set(OPTION_TABLES)
    assert all(f"\n[{table}]\n" in printed for table in OPTION_TABLES)  # every key --config takes


def test_bad_combinations_fail_as_a_run_does(zoo_cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = zoo_cli("train", "--model", "dcgan", "--loss", "cross_entropy", "--print-config")
    assert code == 2 and out == ""
    assert "cannot train with loss 'cross_entropy'" in err and len(err.strip().splitlines()) == 1
    code, out, err = zoo_cli("train", "--model", "dcgan", "--model-opt", "ngf=0", "--print-config")
    assert code == 2 and out == "" and "ngf must be at least 1" in err
    code, out, err = zoo_cli("train", "--resume", "somewhere", "--print-config")
    assert code == 2 and "--print-config shows a new run's config" in err
    assert list(tmp_path.iterdir()) == []


def test_toml_values_read_back_as_written():
    values = {"text": 'quote " back\\slash \t tab \x01 bell \x7f é ✓', "big": 2**64 - 1, "low": -2**63,
              "small": 1e-7, "third": 1 / 3, "inf": math.inf, "flag": False, "list": [1, "a", 2.5],
              "nested": {"a b": 1, "c": [True]}}
    text = render([Table(None, [Line(key, value, "test") for key, value in values.items()]),
                   Table("hook_opt", [Line(("builtin:samples", "every"), 3, "test"),
                                      Line(("ema", "decay"), 0.5, "test", active=False)])], ["header"])
    read = tomllib.loads(text)
    assert {key: read[key] for key in values} == values
    assert read["hook_opt"] == {"builtin:samples": {"every": 3}}  # the commented-out line is a comment
    assert math.isnan(tomllib.loads(f"x = {toml_value(math.nan)}")["x"])

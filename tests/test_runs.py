"""Run status (status.json), ``zoo runs``, ``zoo diff``, the HParams TensorBoard reads, and the model card.

Four tiny runs of ``mnist_net`` made once for the module: ``done`` (through the zoo command, with the
ema hook, tested with ``zoo test``), ``other`` (another learning rate, resumed to a longer run),
``stopped`` (early stopping stops it: interrupted) and ``diverged`` (a huge learning rate: failed).
Sorting and crashes are checked on run folders written by hand.
"""

from __future__ import annotations

import datetime
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from train_cli.main import main
from zoo.card import write_card
from zoo.engine.lock import RunLock
from zoo.errors import RunError
from zoo.runs import SORT_KEYS, format_number
from zoo.testing import tiny_run

SMALL = {"train_count": 16, "test_count": 4}
TRAIN = ["train", "--model", "mnist_net", "--max-steps", "4", "--batch-size", "4", "--device", "cpu", "--workers",
         "0", "--eval-every", "2", "--eval-batches", "1", "--dataset-opt", "train_count=16", "--dataset-opt",
         "test_count=4", "--hook", "ema"]


def _zoo(*argv: str) -> None:
    """The zoo command in this process, with ``sys.argv`` as a shell would give it (config.json records it)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sys, "argv", ["zoo", *argv])
        with pytest.raises(SystemExit) as exited:
            main(list(argv))
    assert exited.value.code == 0


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("runs")
    _zoo(*TRAIN, "--run-dir", str(root / "done"))
    _zoo("test", "--run", str(root / "done"), "--device", "cpu")
    common = dict(dataset_opt=SMALL, no_hooks=("samples",))
    tiny_run("mnist_net", root / "group" / "other", steps=2, lr=0.01, **common)
    tiny_run("mnist_net", root / "group" / "other", steps=3, resume=True, lr=0.01, **common)
    tiny_run("mnist_net", root / "stopped", steps=4, hooks=["early_stopping"],
             hook_opt={"early_stopping": {"patience": 1, "min_delta": 100.0}}, **common)
    with pytest.raises(RunError, match="is nan"):
        tiny_run("mnist_net", root / "diverged", steps=3, lr=1e30, log_every=1, **common)
    (root / "notes").mkdir()  # not a run: skipped
    (root / "notes" / "todo.txt").write_text("tune lr\n")
    (root / "broken").mkdir()
    (root / "broken" / "config.json").write_text("{not json")
    return root


def status_of(run: Path) -> dict:
    return json.loads((run / "status.json").read_text())


def evaluations(run: Path) -> list[dict]:
    return [record for record in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
            if record["kind"] == "eval"]


def listed(zoo_cli, *args: str) -> list[dict]:
    code, out, err = zoo_cli("runs", *args, "--json")
    assert code == 0, err
    return json.loads(out)


# ------------------------------------------------------------------ status
def test_a_finished_run_is_done_with_its_steps_best_and_times(runs):
    status = status_of(runs / "done")
    assert (status["status"], status["step"], status["planned_steps"]) == ("done", 4, 4)
    accuracies = [(record["accuracy"], record["step"]) for record in evaluations(runs / "done")]
    best_value = max(value for value, _ in accuracies)
    first_best = next(step for value, step in accuracies if value == best_value)
    assert status["best"] == {"metric": "accuracy", "mode": "max", "value": best_value, "step": first_best}
    assert status["started"] <= status["updated"] == status["ended"]
    assert not (runs / "done" / "train.lock").exists()


def test_a_run_a_hook_stops_is_interrupted_and_says_why(runs):
    status = status_of(runs / "stopped")
    assert status["status"] == "interrupted" and status["step"] < status["planned_steps"] == 4
    assert "has not improved" in status["stop_reason"]


def test_a_run_that_fails_is_failed_at_the_step_it_reached(runs):
    status = status_of(runs / "diverged")
    assert status["status"] == "failed" and status["ended"] is not None
    assert status["step"] == 2 and status["planned_steps"] == 3


def _copy_run(source: Path, target: Path, status: str) -> Path:
    target.mkdir(parents=True)
    (target / "config.json").write_text((source / "config.json").read_text())
    (target / "status.json").write_text(json.dumps({**status_of(source), "status": status, "ended": None}))
    return target


def test_a_running_record_whose_lock_holder_is_gone_is_a_crash(runs, tmp_path, zoo_cli):
    crashed = _copy_run(runs / "done", tmp_path / "crashed", "running")
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (crashed / "train.lock").write_text(json.dumps({**RunLock(crashed).owner, "pid": int(gone.stdout)}))
    live = _copy_run(runs / "done", tmp_path / "live", "running")
    with RunLock(live):  # this process holds it, as zoo train would
        rows = {row["name"]: row for row in listed(zoo_cli, str(tmp_path))}
        code, out, _ = zoo_cli("runs", str(tmp_path))
    assert (rows["crashed"]["status"], rows["crashed"]["crashed"]) == ("failed", True)
    assert (rows["live"]["status"], rows["live"]["crashed"]) == ("running", False)
    lines = {line.split()[0]: line for line in out.splitlines()[1:]}
    assert "failed (crash)" in lines["crashed"] and " running " in lines["live"]


# ---------------------------------------------------------------- zoo runs
def test_zoo_runs_lists_every_run_nested_ones_too_and_skips_other_folders(runs, zoo_cli):
    rows = {row["name"]: row for row in listed(zoo_cli, str(runs))}
    assert set(rows) == {"done", "group/other", "stopped", "diverged", "broken"}
    assert [rows[name]["status"] for name in ("done", "group/other", "stopped", "diverged")] == \
        ["done", "done", "interrupted", "failed"]
    done = rows["done"]
    assert (done["model"], done["loss"], done["dataset"]) == ("builtin:mnist_net", "builtin:cross_entropy",
                                                              "builtin:shapes")
    assert (done["step"], done["planned_steps"], done["best"]) == (4, 4, status_of(runs / "done")["best"])
    assert rows["group/other"]["step"] == 3 and rows["group/other"]["path"] == str(runs / "group" / "other")
    assert rows["broken"]["status"] == "unreadable" and "config.json is unreadable" in rows["broken"]["detail"]
    assert all(row["age_seconds"] >= 0 for name, row in rows.items() if name != "broken")


def test_zoo_runs_table_has_a_row_per_run_with_steps_status_and_best(runs, zoo_cli):
    code, out, err = zoo_cli("runs", str(runs))
    assert code == 0
    header, *lines = out.splitlines()
    assert header.split() == ["NAME", "MODEL", "LOSS", "DATASET", "STEPS", "STATUS", "BEST", "AGE"]
    rows = {line.split()[0]: line.split() for line in lines}
    best = status_of(runs / "done")["best"]
    assert rows["done"][1:7] == ["mnist_net", "cross_entropy", "shapes", "4/4", "done", "accuracy"]
    assert rows["done"][7] == format_number(best["value"])
    assert rows["stopped"][5] == "interrupted" and rows["diverged"][4:6] == ["2/3", "failed"]
    assert rows["broken"][1:] == ["-", "-", "-", "unreadable"]
    assert len(err.strip().splitlines()) == 1
    assert err.startswith(f"zoo: {runs / 'broken' / 'config.json'} is unreadable (")


def _hand_made(root: Path, name: str, step: int, hours_ago: float, best: dict | None, model: str = "m") -> None:
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"config": {"model": model}}))
    updated = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(hours=hours_ago)
    (folder / "status.json").write_text(json.dumps({"status": "done", "step": step, "planned_steps": 10,
                                                    "best": best, "updated": updated.isoformat()}))


def test_zoo_runs_sorts_by_the_key_asked(tmp_path, zoo_cli):
    _hand_made(tmp_path, "a", 5, 3.0, {"metric": "accuracy", "mode": "max", "value": 0.5, "step": 5}, model="z")
    _hand_made(tmp_path, "b", 9, 1.0, {"metric": "accuracy", "mode": "max", "value": 0.9, "step": 9})
    _hand_made(tmp_path, "c", 7, 2.0, {"metric": "loss", "mode": "min", "value": 0.1, "step": 7})
    _hand_made(tmp_path, "d", 1, 5.0, {"metric": "loss", "mode": "min", "value": 0.3, "step": 1})
    _hand_made(tmp_path, "e", 3, 4.0, None)
    expected = {"name": "abcde", "age": "bcaed", "steps": "bcaed", "metric": "bacde", "model": "bcdea"}
    for key, order in expected.items():
        assert "".join(row["name"] for row in listed(zoo_cli, str(tmp_path), "--sort", key)) == order, key
    code, out, _ = zoo_cli("runs", str(tmp_path), "--sort", "metric")
    assert [line.split()[0] for line in out.splitlines()[1:]] == list("bacde")
    assert out.splitlines()[1].split()[-1] == "1h"


def test_zoo_runs_refuses_a_bad_sort_key_or_folder_in_one_line(tmp_path, zoo_cli):
    code, out, err = zoo_cli("runs", str(tmp_path), "--sort", "speed")
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1
    assert all(f"'{key}'" in err for key in SORT_KEYS)
    for missing, says in ((tmp_path / "nowhere", "does not exist"), (tmp_path / "file.txt", "is a file")):
        missing.parent.mkdir(exist_ok=True)
        if missing.suffix:
            missing.write_text("x")
        code, out, err = zoo_cli("runs", str(missing))
        assert code == 2 and len(err.strip().splitlines()) == 1
        assert f"{missing} {says}" in err and "zoo runs DIR" in err
    code, out, err = zoo_cli("runs", str(tmp_path))  # holds no run
    assert code == 0 and out == "" and "no runs under" in err
    assert listed(zoo_cli, str(tmp_path)) == []


def test_zoo_runs_imports_no_torch(runs):
    probe = ("import sys\nfrom train_cli.main import main\ntry:\n    main(['runs', sys.argv[1]])\n"
             "except SystemExit as exc:\n    assert exc.code == 0, exc.code\n"
             "print('TORCH' if 'torch' in sys.modules else 'NO TORCH')\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("ZOO_")}
    result = subprocess.run([sys.executable, "-c", probe, str(runs)], capture_output=True, text=True, env=env,
                            cwd=Path(__file__).resolve().parents[1], timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "NO TORCH" and "group/other" in result.stdout


# ---------------------------------------------------------------- zoo diff
def _rows(out: str) -> dict[str, list[str]]:
    return {line.split()[0]: line.split()[1:] for line in out.splitlines() if line.startswith("  ")}


def test_zoo_diff_shows_only_what_differs_then_the_metrics_side_by_side(runs, zoo_cli):
    done, other = runs / "done", runs / "group" / "other"
    code, out, err = zoo_cli("diff", str(done), str(other))
    assert code == 0, err
    assert out.splitlines()[0].split()[-2:] == [str(done), str(other)]
    rows = _rows(out)
    assert rows["config.lr"] == ["null", "0.01"] and rows["config.max_steps"] == ["4", "3"]
    assert rows["config.hooks"] == ['["builtin:ema"]', "[]"]  # as config.json's resolved section names it
    assert "config.model" not in rows and "config.dataset" not in rows
    assert rows["resolved.hook_options.builtin:ema.decay"][1] == "-"
    assert "config.seed" not in rows and "config.run_dir" not in rows and "resolved.model.version" not in rows
    last_done, last_other = evaluations(done)[-1], evaluations(other)[-1]
    assert rows["eval.step"] == [str(last_done["step"]), str(last_other["step"])]
    assert rows["eval.accuracy"] == [format_number(last_done["accuracy"]), format_number(last_other["accuracy"])]
    assert rows["eval.ema/loss"] == [format_number(last_done["ema/loss"]), "-"]
    tested = json.loads((done / "test-metrics.json").read_text())
    assert rows["test.loss"] == [format_number(tested["metrics"]["loss"]), "-"]


def test_zoo_diff_finds_a_resumed_run_the_same_as_one_never_resumed(runs, tmp_path, zoo_cli):
    # a resume names the run's parts as config.json recorded them (builtin:mnist_net; the default dataset,
    # which the command did not name, builtin:shapes): the same parts as the straight run's mnist_net and null
    resumed = tmp_path / "resumed"
    shorter = TRAIN[:TRAIN.index("--max-steps") + 1] + ["2"] + TRAIN[TRAIN.index("--max-steps") + 2:]
    _zoo(*shorter, "--run-dir", str(resumed))
    _zoo("train", "--resume", str(resumed), "--max-steps", "4")
    pinned, given = (json.loads((run / "config.json").read_text())["config"] for run in (resumed, runs / "done"))
    assert (pinned["model"], pinned["dataset"], given["model"], given["dataset"]) == (
        "builtin:mnist_net", "builtin:shapes", "mnist_net", None)
    code, out, err = zoo_cli("diff", str(runs / "done"), str(resumed))
    assert code == 0, err
    assert out.splitlines()[0].startswith("config: the same"), out


def test_zoo_diff_of_a_folder_that_is_not_a_run_names_it(runs, tmp_path, zoo_cli):
    code, out, err = zoo_cli("diff", str(runs / "done"), str(tmp_path))
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1
    assert str(tmp_path) in err and "not a zoo run" in err


# ----------------------------------------------------------------- HParams
def _hparams(run: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import api_pb2, plugin_data_pb2

    events = EventAccumulator(str(run / "tensorboard" / "hparams"))
    events.Reload()
    content = events.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    end = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_end_info"])
    return events, start.session_start_info.hparams, api_pb2.Status.Name(end.session_end_info.status)


def test_tensorboard_reads_each_runs_config_and_final_metrics_as_hparams(runs):
    pytest.importorskip("tensorboard")
    events, hparams, status = _hparams(runs / "done")
    assert hparams["config.max_steps"].number_value == 4 and hparams["config.batch_size"].number_value == 4
    assert hparams["resolved.model.name"].string_value == "builtin:mnist_net"
    config = json.loads((runs / "done" / "config.json").read_text())
    assert hparams["resolved.model.version"].string_value == config["resolved"]["model"]["version"]
    assert "config.hooks" not in hparams  # a list: not a scalar
    assert status == "STATUS_SUCCESS"
    last = evaluations(runs / "done")[-1]
    for name in ("accuracy", "loss", "ema/accuracy"):
        (scalar,) = events.Scalars(f"eval/{name}")
        assert scalar.step == last["step"] and scalar.value == pytest.approx(last[name], rel=1e-6)


def test_hparams_of_a_resumed_failed_or_stopped_run_say_how_it_ended_last(runs):
    pytest.importorskip("tensorboard")
    _, hparams, status = _hparams(runs / "group" / "other")  # resumed from 2 steps to 3
    assert hparams["config.max_steps"].number_value == 3 and status == "STATUS_SUCCESS"
    assert len(list((runs / "group" / "other" / "tensorboard" / "hparams").iterdir())) == 1
    _, hparams, status = _hparams(runs / "diverged")
    assert hparams["config.lr"].number_value == 1e30 and status == "STATUS_FAILURE"
    assert _hparams(runs / "stopped")[2] == "STATUS_UNKNOWN"  # interrupted: TensorBoard has no word for it


# -------------------------------------------------------------------- card
def test_the_card_says_versions_data_command_metrics_samples_and_weights(runs):
    run = runs / "done"
    card = (run / "README.md").read_text()
    config = json.loads((run / "config.json").read_text())
    resolved = config["resolved"]
    assert f"| model | `builtin:mnist_net` | {resolved['model']['version']} |" in card
    assert f"| hook | `builtin:ema` | {resolved['hooks'][-1]['version']} |" in card
    assert "Dataset `builtin:shapes`" in card and "`train_count=16`" in card
    assert f"```\n{shlex.join(config['command_line'])}\n```" in card
    assert shlex.join(config["command_line"]).startswith("zoo train --model mnist_net --max-steps 4")
    last = evaluations(run)[-1]
    assert f"| metric | last evaluation (step {last['step']}) |" in card
    for name in ("loss", "accuracy", "ema/accuracy"):
        assert f"| {name} | {format_number(last[name])} |" in card
    best = status_of(run)["best"]
    assert f"Best: accuracy {format_number(best['value'])} at step {best['step']} (higher is better)." in card
    assert "![The latest sample grid](samples/latest.png)" in card and (run / "samples" / "latest.png").is_file()
    assert "`checkpoints/step-4/weights-ema.safetensors`" in card
    assert (run / "checkpoints" / "step-4" / "weights-ema.safetensors").is_file()
    assert "**done** at step 4 of 4" in card


def test_status_and_card_are_written_at_the_start_each_evaluation_and_the_end(tmp_path, monkeypatch):
    import zoo.card

    written, write_card_itself = [], zoo.card.write_card

    def noting(run_dir):  # what status.json says each time the card follows it
        written.append((status_of(run_dir)["status"], status_of(run_dir)["step"]))
        return write_card_itself(run_dir)

    monkeypatch.setattr(zoo.card, "write_card", noting)
    tiny_run("mnist_net", tmp_path / "run", steps=2, dataset_opt=SMALL)  # evaluates after each step
    assert written == [("running", 0), ("running", 1), ("running", 2), ("done", 2)]
    assert "**done** at step 2 of 2" in (tmp_path / "run" / "README.md").read_text()


def test_the_card_rebuilt_after_zoo_test_has_the_test_metrics(runs, tmp_path):
    run = tmp_path / "copy"
    run.mkdir()
    for name in ("config.json", "status.json", "metrics.jsonl", "test-metrics.json"):
        (run / name).write_text((runs / "done" / name).read_text())
    card = write_card(run).read_text()
    tested = json.loads((run / "test-metrics.json").read_text())
    last = evaluations(run)[-1]
    assert f"| last evaluation (step {last['step']}) | test (step {tested['step']}) |" in card
    assert f"| loss | {format_number(last['loss'])} | {format_number(tested['metrics']['loss'])} |" in card
    assert "No sample grid yet" in card and "No checkpoint yet." in card


def test_the_card_of_a_failed_run_keeps_its_last_evaluation(runs):
    card = (runs / "diverged" / "README.md").read_text()
    last = evaluations(runs / "diverged")[-1]
    assert "**failed** at step 2 of 3" in card
    assert f"| metric | last evaluation (step {last['step']}) |" in card
    assert "Made from Python rather than the zoo command" in card

"""A run folder never loses what it holds to a mistake: --overwrite keeps the old run until the new one starts,
folders that are not zoo runs are left alone, and failures to write say so in one line."""

from __future__ import annotations

import json
import shutil

import pytest

from zoo.engine import checkpoint

TINY = ["--model", "dcgan", "--loss", "mse", "--model-opt", "ngf=8", "--model-opt", "ndf=8",
        "--model-opt", "nz=16", "--dataset-opt", "train_count=32", "--dataset-opt", "test_count=8",
        "--batch-size", "8", "--device", "cpu", "--log-every", "1"]


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("zoo: error")]


def snapshot(folder) -> dict[str, bytes]:
    """Every file under ``folder`` (hidden ones too) by relative path, with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def trained(tmp_path_factory, zoo_cli_module):
    """A finished tiny run (checkpoints at steps 2 and 4) to copy into each test."""
    run = tmp_path_factory.mktemp("trained") / "run"
    code, _, err = zoo_cli_module("train", *TINY, "--max-steps", "4", "--save-every", "2", "--run-dir", str(run))
    assert code == 0, err
    return run


@pytest.fixture(scope="module")
def zoo_cli_module():
    """The CLI in-process for module fixtures (output not captured)."""
    from train_cli.main import main

    def run(*args: str) -> tuple[int, str, str]:
        with pytest.raises(SystemExit) as exited:
            main(list(args))
        return exited.value.code, "", ""

    return run


@pytest.fixture
def old_run(trained, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    (run / "train.lock").unlink(missing_ok=True)
    return run


@pytest.mark.parametrize("mistake, message", [
    (["--loss", "nosuch"], "unknown loss 'nosuch'"),
    (["--model-opt", "ngf=abc"], "ngf expects an integer"),
    (["--hook", "nosuch"], "unknown hook 'nosuch'"),
])
def test_overwrite_with_a_mistake_keeps_the_old_run_as_it_was(zoo_cli, old_run, mistake, message):
    before = snapshot(old_run)
    code, _, err = zoo_cli("train", *TINY, "--max-steps", "2", "--run-dir", str(old_run), "--overwrite", *mistake)
    assert code == 2 and message in err, err
    assert snapshot(old_run) == before
    code, _, err = zoo_cli("train", "--resume", str(old_run), "--max-steps", "5")
    assert code == 0, err


def test_overwrite_that_starts_replaces_the_old_run_and_leaves_nothing_aside(zoo_cli, old_run):
    code, _, err = zoo_cli("train", *TINY, "--max-steps", "1", "--run-dir", str(old_run), "--overwrite")
    assert code == 0, err
    assert [step for step, _ in checkpoint.list_steps(old_run)] == [1]
    assert not list(old_run.glob(".replaced-*"))


def test_overwrite_refuses_to_start_from_the_run_it_replaces(zoo_cli, old_run):
    before = snapshot(old_run)
    code, _, err = zoo_cli("train", *TINY, "--max-steps", "2", "--run-dir", str(old_run), "--overwrite",
                           "--init-from", str(old_run))
    assert code == 2 and "is in the run --overwrite replaces" in err, err
    assert snapshot(old_run) == before


def test_a_folder_with_a_config_json_zoo_did_not_write_is_left_alone(zoo_cli, tmp_path):
    folder = tmp_path / "project"
    (folder / "samples").mkdir(parents=True)
    (folder / "config.json").write_text('{"app": "settings"}')
    (folder / "samples" / "photo.txt").write_text("precious")
    before = snapshot(folder)
    for extra in ([], ["--overwrite"]):
        code, _, err = zoo_cli("train", *TINY, "--max-steps", "1", "--run-dir", str(folder), *extra)
        assert code == 2 and "is not a zoo run" in err and "pick another --run-dir" in err, err
        assert len(error_lines(err)) == 1
        assert snapshot(folder) == before


def test_checkpoints_without_a_config_json_are_not_an_empty_folder(zoo_cli, old_run):
    (old_run / "config.json").unlink()
    before = snapshot(old_run)
    code, _, err = zoo_cli("train", *TINY, "--max-steps", "1", "--run-dir", str(old_run))
    assert code == 2 and "holds checkpoints" in err and "is not a zoo run" in err, err
    assert snapshot(old_run) == before


def test_a_never_saved_run_is_still_replaced_with_a_notice(zoo_cli, old_run):
    shutil.rmtree(old_run / "checkpoints")
    code, _, err = zoo_cli("train", *TINY, "--max-steps", "1", "--run-dir", str(old_run))
    assert code == 0 and "which never saved a checkpoint" in err, err
    assert [step for step, _ in checkpoint.list_steps(old_run)] == [1]


def test_a_run_folder_that_cannot_be_written_is_one_line(zoo_cli, tmp_path):
    (tmp_path / "a-file").write_text("not a folder")
    code, _, err = zoo_cli("train", *TINY, "--max-steps", "1", "--run-dir", str(tmp_path / "a-file" / "run"))
    assert code == 2 and "cannot write the run folder" in err and "pick a writable --run-dir" in err, err
    assert "internal error" not in err and len(error_lines(err)) == 1


def test_zoo_test_prints_its_figures_when_it_cannot_save_them(zoo_cli, old_run):
    (old_run / "test-metrics.json").mkdir()  # where the file would go: cannot be replaced by a file
    code, out, err = zoo_cli("test", "--run", str(old_run), "--device", "cpu")
    assert code == 1, err
    assert "generator" in out and "discriminator" in out and "saved" not in out
    assert "could not save the results" in err and len(error_lines(err)) == 1
    shutil.rmtree(old_run / "samples")
    (old_run / "samples").write_text("a file where the grids go")
    code, out, err = zoo_cli("test", "--run", str(old_run), "--device", "cpu")
    assert code == 1 and "generator" in out
    assert f"could not save the results in {old_run} ({old_run / 'samples'}: File exists)" in err


def test_an_output_path_through_a_file_is_a_usage_error_naming_it(zoo_cli, old_run, tmp_path):
    (tmp_path / "afile").write_text("not a folder")
    code, _, err = zoo_cli("sample", "--run", str(old_run), "-n", "2", "--device", "cpu",
                           "--out", str(tmp_path / "afile" / "grid.png"))
    assert code == 2
    assert error_lines(err) == [f"zoo: error: cannot write {tmp_path / 'afile' / 'grid.png'}: "
                                f"{tmp_path / 'afile'} is a file, not a folder; pick another path."]


def test_a_checkpoint_damaged_twice_at_one_step_is_set_aside_under_a_new_name(zoo_cli, old_run):
    for round_number in (1, 2):
        newest = old_run / "checkpoints" / "step-4"
        (newest / "model.safetensors").write_bytes(b"damaged")
        code, _, err = zoo_cli("train", "--resume", str(old_run), "--max-steps", "4")
        assert code == 0, err
        name = "damaged-step-4" if round_number == 1 else "damaged-step-4.2"
        assert f"moved to {name}." in err
        assert (old_run / "checkpoints" / name).is_dir()
    assert [step for step, _ in checkpoint.list_steps(old_run)] == [2, 4]


@pytest.mark.parametrize("document", ['[]', '{"resolved": {"model": {"name": "builtin:dcgan"}}}', '{"config": {}}'])
def test_a_config_json_without_a_config_section_is_refused_everywhere(zoo_cli, old_run, document):
    (old_run / "config.json").write_text(document)
    for command in (["train", "--resume", str(old_run), "--max-steps", "5"], ["test", "--run", str(old_run)]):
        code, _, err = zoo_cli(*command)
        assert code == 2 and "is not the config.json 'zoo train' writes" in err, err
    import zoo
    with pytest.raises(zoo.UsageError, match="no config section naming a model"):
        zoo.load_run(old_run)


def test_a_file_named_as_a_run_is_said_to_be_a_file(zoo_cli, tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    for command in (["train", "--resume", str(tmp_path / "notes.txt")], ["test", "--run", str(tmp_path / "notes.txt")]):
        code, _, err = zoo_cli(*command)
        assert code == 2 and "is a file, not a run folder" in err, err


@pytest.mark.parametrize("flag", ["--resume", "--config", "--run-dir"])
def test_an_empty_path_is_refused_rather_than_ignored(zoo_cli, flag):
    args = [flag, ""] if flag == "--resume" else [*TINY, "--max-steps", "1", flag, ""]
    code, _, err = zoo_cli("train", *args)
    assert code == 2 and f"{flag} was given an empty path" in err, err


def test_data_that_moved_is_named_with_the_command_that_finds_it(zoo_cli, tmp_path):
    from test_device_decode import write_jpeg_folder
    write_jpeg_folder(tmp_path / "data", count=12)
    run = tmp_path / "run"
    code, _, err = zoo_cli("train", "--model", "mnist_net", "--dataset", "imagefolder", "--data",
                           str(tmp_path / "data"), "--batch-size", "4", "--device", "cpu", "--max-steps", "1",
                           "--run-dir", str(run))
    assert code == 0, err
    shutil.move(tmp_path / "data", tmp_path / "moved")
    code, _, err = zoo_cli("train", "--resume", str(run), "--max-steps", "2")
    assert code == 2 and f"the run's data {tmp_path / 'data'} is gone" in err
    assert f"zoo train --resume {run} --data NEW" in err
    code, _, err = zoo_cli("test", "--run", str(run), "--device", "cpu")
    assert code == 2 and f"zoo test --run {run} --data NEW" in err
    code, _, err = zoo_cli("test", "--run", str(run), "--device", "cpu", "--data", str(tmp_path / "moved"))
    assert code == 0, err


@pytest.mark.parametrize("stop, code", [(KeyboardInterrupt, 130), (RuntimeError("a bug in a plugin"), 1)])
def test_a_new_run_that_ends_before_its_first_checkpoint_gives_the_old_run_back(zoo_cli, old_run, monkeypatch,
                                                                               stop, code):
    from zoo.engine.trainer import Trainer

    def stopped(self):
        (self.run.run_dir / "metrics.jsonl").write_text('{"kind": "train", "step": 1}\n')  # what it wrote so far
        raise stop

    monkeypatch.setattr(Trainer, "fit", stopped)
    before = snapshot(old_run)
    exit_code, _, err = zoo_cli("train", *TINY, "--max-steps", "2", "--run-dir", str(old_run), "--overwrite")
    assert exit_code == code
    assert snapshot(old_run) == before
    assert f"zoo: the run in {old_run} that --overwrite was replacing is back as it was." in err


@pytest.mark.parametrize("presses", [1, 2])
def test_ctrl_c_in_an_overwrite_run_says_what_becomes_of_the_old_run(zoo_cli, old_run, monkeypatch, presses):
    import os
    import signal

    from zoo.engine.step import StepRunner
    step = StepRunner.step

    def pressing(self, batches):
        values = step(self, batches)
        if self.state.step == 1:  # the second step is done (the state counts it once the step returns)
            for _ in range(presses):
                os.kill(os.getpid(), signal.SIGINT)
        return values

    monkeypatch.setattr(StepRunner, "step", pressing)
    before = snapshot(old_run)
    code, _, err = zoo_cli("train", *TINY, "--max-steps", "50", "--run-dir", str(old_run), "--overwrite")
    assert code == 130
    assert "SIGINT received; saving after this step, and the run --overwrite set aside goes then (press " \
           "Ctrl-C again to abort without saving and get that run back)." in err
    if presses == 1:  # saved: the new run goes on from here, the old one is gone
        steps = [s for s, _ in checkpoint.list_steps(old_run)]
        assert len(steps) == 1 and steps[0] < 4 and not list(old_run.glob(".replaced-*"))  # the old had step 4
    else:
        assert snapshot(old_run) == before and "is back as it was" in err


def set_aside_as_a_killed_start_leaves_it(run):
    """Move a run's entries into a hidden folder, as --overwrite does before the new run starts."""
    aside = run / ".replaced-killed"
    aside.mkdir()
    for entry in list(run.iterdir()):
        if entry.name in ("checkpoints", "config.json", "metrics.jsonl", "tensorboard", "samples"):
            entry.rename(aside / entry.name)
    return aside


def test_a_run_set_aside_by_a_killed_start_is_put_back(zoo_cli, old_run):
    before = snapshot(old_run)
    aside = set_aside_as_a_killed_start_leaves_it(old_run)
    code, _, err = zoo_cli("test", "--run", str(old_run))
    assert code == 2 and f"'zoo train --resume {old_run}' puts it back" in err, err
    code, _, err = zoo_cli("train", "--resume", str(old_run), "--max-steps", "5")  # killed before writing anything
    assert code == 0 and "put back the run" in err, err
    assert not aside.exists() and [s for s, _ in checkpoint.list_steps(old_run)][-1] == 5


def test_a_run_set_aside_by_a_start_killed_after_writing_its_config_is_put_back(zoo_cli, old_run):
    before = snapshot(old_run)
    aside = set_aside_as_a_killed_start_leaves_it(old_run)
    (old_run / "config.json").write_bytes(before["config.json"])  # the killed start's config, no checkpoint
    code, _, err = zoo_cli("train", "--resume", str(old_run), "--max-steps", "5")
    assert code == 0 and "put back the run" in err, err
    assert not aside.exists() and [s for s, _ in checkpoint.list_steps(old_run)][-1] == 5


def test_a_run_set_aside_beside_a_newer_saved_run_is_named_and_kept(zoo_cli, old_run):
    aside = old_run / ".replaced-older"
    aside.mkdir()
    (aside / "config.json").write_text("{}")
    code, _, err = zoo_cli("train", "--resume", str(old_run), "--max-steps", "5")
    assert code == 0 and f"{aside} holds a run an earlier --overwrite set aside" in err, err
    assert (aside / "config.json").read_text() == "{}"


def test_a_move_aside_that_fails_half_way_leaves_the_run_whole(zoo_cli, old_run, monkeypatch):
    import os

    from zoo.engine import rundir
    real_replace = os.replace

    def failing(source, target):
        if str(source).endswith("tensorboard"):
            raise PermissionError(13, "Permission denied", str(source))
        real_replace(source, target)

    monkeypatch.setattr(rundir.os, "replace", failing)
    before = snapshot(old_run)
    code, _, err = zoo_cli("train", *TINY, "--max-steps", "2", "--run-dir", str(old_run), "--overwrite")
    assert code == 2 and "Permission denied" in err, err
    assert snapshot(old_run) == before and not list(old_run.glob(".replaced-*"))

"""What zoo guarantees when things go wrong: a catalog, one test per case.

Crashes and resume
  - kill -9 at random moments of a real `zoo train` with loader workers: --resume finishes the run
  - the newest checkpoint is damaged: resume from the older whole one, naming the one skipped
  - step-* folders exist but none is whole: refuse in one line saying what is missing
  - killed before the first checkpoint: --resume starts over with the saved config and says so
  - the disk fills while saving (a file-size limit): one line, exit 1, previous checkpoint intact
One run per run dir
  - a second `zoo train` on a run dir in use is refused in one line
  - a lock left by a killed run is taken over with a notice
Bad inputs (exit 2 usage / exit 1 runtime, one line, nothing on disk damaged)
  - missing or empty data folder; a glob that matches nothing; a patch larger than the images
  - a corrupt image names the file; --skip-bad-files skips it and counts it at the end
  - truncated MNIST files name the file
  - out of device memory suggests a smaller batch, accumulation or bf16
Security: no code from data
  - pickles planted in a run dir and as a weights file never run
  - no source file calls torch.load without weights_only=True or unpickles
Non-finite losses
  - --skip-nonfinite skips such steps, counts them, and the run finishes
"""

from __future__ import annotations

import io
import json
import os
import pickle
import random
import re
import resource
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from PIL import Image

from zoo.engine import checkpoint

REPO = Path(__file__).resolve().parent.parent
TINY = ["--model", "dcgan", "--loss", "mse", "--model-opt", "ngf=8", "--model-opt", "ndf=8",
        "--model-opt", "nz=16", "--batch-size", "8", "--device", "cpu", "--log-every", "1"]
TINY_SHAPES = ["--dataset-opt", "train_count=32", "--dataset-opt", "test_count=8"]


def zoo_process(*args: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "train_cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kwargs)


def one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("zoo: error")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


class Evil:
    """Unpickling this writes a marker file: proof that code from data ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "code ran"))


# ---------------------------------------------------------------- crashes and resume
def test_kill_9_at_random_moments_then_resume_finishes(tmp_path):
    run = tmp_path / "run"
    args = ["train", *TINY, *TINY_SHAPES, "--max-steps", "60", "--save-every", "2", "--workers", "2",
            "--no-hook", "tensorboard", "--run-dir", str(run)]
    rng = random.Random()
    for attempt in range(3):
        proc = zoo_process(*args) if attempt == 0 else zoo_process("train", "--resume", str(run))
        deadline = time.time() + 120
        while not (run / "config.json").exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        time.sleep(rng.uniform(0.2, 3.0))  # lands while building, loading, stepping or saving
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
        for step, folder in checkpoint.list_steps(run):
            checkpoint.load(folder)  # every visible checkpoint is whole
    done = subprocess.run([sys.executable, "-m", "train_cli", "train", "--resume", str(run)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert checkpoint.list_steps(run)[-1][0] == 60


WORKER_SCRIPT = """
import os, sys, time
from zoo.engine.feed import end_with_main
main = os.getpid()
child = os.fork()
if child == 0:  # a loader worker, starting
    time.sleep(float(sys.argv[1]))
    end_with_main(main)
    time.sleep(120)
    os._exit(3)
print(child, flush=True)
time.sleep(120)
"""


def _running(pid: int) -> bool:
    """Whether process ``pid`` exists and has not ended (a zombie left for its new parent to reap has)."""
    try:
        return "\nState:\tZ" not in Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the kernel's parent-death signal is Linux's")
@pytest.mark.parametrize("start_delay", [0.0, 1.0], ids=["started", "still-starting"])
def test_a_loader_worker_ends_with_its_main_process_killed(tmp_path, start_delay):
    """kill -9 of the main process ends its workers, even one that had not yet started: torch's own check
    compares the worker's parent with the one it saw at its start, and would wait forever."""
    script = tmp_path / "main.py"
    script.write_text(WORKER_SCRIPT)
    main = subprocess.Popen([sys.executable, str(script), str(start_delay)], stdout=subprocess.PIPE, text=True,
                            cwd=Path(__file__).resolve().parents[1])
    worker = int(main.stdout.readline())
    time.sleep(0.2)
    main.kill()
    main.wait()
    deadline = time.time() + start_delay + 10
    while _running(worker) and time.time() < deadline:
        time.sleep(0.05)
    ended = not _running(worker)
    if not ended:
        os.kill(worker, signal.SIGKILL)
    assert ended


def test_workers_started_by_a_forkserver_are_not_held_to_the_main_process_as_their_parent(monkeypatch):
    """A forkserver, not the main process, is their parent: comparing it with the main process would end
    every worker as it starts."""
    import multiprocessing

    from zoo.engine import feed
    assert feed.worker_parent() in (os.getpid(), None)
    monkeypatch.setattr(multiprocessing, "get_start_method", lambda allow_none=False: "forkserver")
    assert feed.worker_parent() is None
    monkeypatch.setattr(feed, "_PR_SET_PDEATHSIG", 0)  # prctl option 0 is no option: nothing set here
    feed.end_with_main(None)  # returns: no parent to compare with


def test_resume_skips_a_damaged_newest_checkpoint_and_names_it(zoo_cli, tmp_path):
    run = tmp_path / "run"
    assert zoo_cli("train", *TINY, *TINY_SHAPES, "--max-steps", "4", "--save-every", "2",
               "--run-dir", str(run))[0] == 0
    newest = run / "checkpoints" / "step-4" / "model.safetensors"
    newest.write_bytes(newest.read_bytes()[:100])  # truncated
    code, _, err = zoo_cli("train", "--resume", str(run), "--max-steps", "6")
    assert code == 0, err
    assert "skipping damaged checkpoint step-4" in err and "resuming" in err and "from step 2" in err
    assert (run / "checkpoints" / "damaged-step-4").is_dir()
    assert checkpoint.list_steps(run)[-1][0] == 6


def test_resume_refuses_when_no_checkpoint_is_whole(zoo_cli, tmp_path):
    run = tmp_path / "run"
    assert zoo_cli("train", *TINY, *TINY_SHAPES, "--max-steps", "2", "--run-dir", str(run))[0] == 0
    (run / "checkpoints" / "step-2" / "state.json").unlink()
    code, _, err = zoo_cli("train", "--resume", str(run))
    assert code == 1
    line = one_error_line(err)
    assert "no whole checkpoint" in line and "step-2" in line and "state.json" in line
    assert (run / "checkpoints" / "step-2").is_dir()  # nothing renamed or deleted


def test_resume_before_any_checkpoint_starts_over(zoo_cli, tmp_path):
    run = tmp_path / "run"
    assert zoo_cli("train", *TINY, *TINY_SHAPES, "--max-steps", "2", "--run-dir", str(run))[0] == 0
    for _, folder in checkpoint.list_steps(run):
        os.rename(folder, run / f"gone-{folder.name}")  # as if killed before its first save
    code, _, err = zoo_cli("train", "--resume", str(run))
    assert code == 0, err
    assert "no checkpoint yet; starting over" in err
    assert checkpoint.list_steps(run)[-1][0] == 2


def test_full_disk_while_saving_fails_in_one_line_and_keeps_the_previous_checkpoint(tmp_path):
    run = tmp_path / "run"
    first = subprocess.run([sys.executable, "-m", "train_cli", "train", *TINY, *TINY_SHAPES, "--max-steps", "2",
                            "--no-hook", "tensorboard", "--no-hook", "samples", "--run-dir", str(run)],
                           capture_output=True, text=True)  # no grid PNG to meet the limit before the checkpoint
    assert first.returncode == 0, first.stderr
    size = (run / "checkpoints" / "step-2" / "model.safetensors").stat().st_size
    limit = size // 2  # the weights file no longer fits; config and metrics lines still do

    def limit_file_size():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    proc = zoo_process("train", "--resume", str(run), "--max-steps", "4", preexec_fn=limit_file_size)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, err
    line = one_error_line(err)
    assert "could not write checkpoint step-4" in line and "step-2 is intact" in line
    assert [s for s, _ in checkpoint.list_steps(run)] == [2]
    checkpoint.load(run / "checkpoints" / "step-2")
    assert not list((run / "checkpoints").glob(".tmp-*"))


# ---------------------------------------------------------------- one run per run dir
def test_a_run_dir_in_use_is_refused(zoo_cli, tmp_path):
    run = tmp_path / "run"
    assert zoo_cli("train", *TINY, *TINY_SHAPES, "--max-steps", "1", "--run-dir", str(run))[0] == 0
    from zoo.engine.lock import RunLock
    holder = RunLock(run)
    holder.acquire()  # this very process holds it, alive
    try:
        code, _, err = zoo_cli("train", "--resume", str(run), "--max-steps", "2")
    finally:
        holder.release()
    assert code == 2
    assert "in use by another zoo train" in one_error_line(err)
    assert checkpoint.list_steps(run)[-1][0] == 1


def test_a_stale_lock_of_a_killed_run_is_taken_over(zoo_cli, tmp_path):
    run = tmp_path / "run"
    assert zoo_cli("train", *TINY, *TINY_SHAPES, "--max-steps", "1", "--run-dir", str(run))[0] == 0
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    import socket
    (run / "train.lock").write_text(json.dumps({"pid": int(gone.stdout), "host": socket.gethostname()}))
    code, _, err = zoo_cli("train", "--resume", str(run), "--max-steps", "2")
    assert code == 0, err
    assert "taking over a stale lock" in err
    assert not (run / "train.lock").exists()


# ---------------------------------------------------------------- bad inputs
def write_images(root: Path, count: int, size: int = 32) -> list[Path]:
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = root / f"img{i:02d}.png"
        Image.new("RGB", (size, size), (i * 20 % 255, 80, 160)).save(path)
        paths.append(path)
    return paths


@pytest.mark.parametrize("setup, extra, message", [
    (lambda d: None, ["--dataset", "imagefolder", "--data", "{d}/missing"], "missing"),
    (lambda d: (d / "empty" / "train").mkdir(parents=True), ["--dataset", "imagefolder", "--data", "{d}/empty"],
     "empty"),
    (lambda d: write_images(d / "up" / "train" / "cats", 3), ["--dataset", "imagefolder", "--data", "{d}/up/train"],
     "give the folder above it, --data {d}/up"),
    (lambda d: (write_images(d / "one" / "train" / "cats", 3), (d / "one" / "train" / "dogs").mkdir()),
     ["--dataset", "imagefolder", "--data", "{d}/one"], "train/dogs has no images"),
    (lambda d: None, ["--model", "resnet_i2i", "--loss", "l1", "--model-opt", "ngf=8",
                      "--dataset", "glob_patches", "--data", "{d}/*.nothing"], "*.nothing"),
    (lambda d: write_images(d / "small", 3, size=16), ["--model", "resnet_i2i", "--loss", "l1",
                                                       "--model-opt", "ngf=8", "--dataset", "glob_patches",
                                                       "--data", "{d}/small/*.png"], "patch_size"),
])
def test_bad_data_paths_are_one_line_usage_errors(zoo_cli, tmp_path, setup, extra, message):
    setup(tmp_path)
    extra = [arg.replace("{d}", str(tmp_path)) for arg in extra]
    message = message.replace("{d}", str(tmp_path))
    args = TINY + extra if extra[0] != "--model" else ["--batch-size", "2", "--device", "cpu", *extra]
    code, _, err = zoo_cli("train", *args, "--run-dir", str(tmp_path / "run"))
    assert code == 2, err
    assert message in one_error_line(err)


def test_a_test_split_may_lack_a_class_the_training_split_has(zoo_cli, tmp_path):
    for label in ("cats", "dogs"):
        write_images(tmp_path / "data" / "train" / label, 4)
    write_images(tmp_path / "data" / "test" / "cats", 2)
    (tmp_path / "data" / "test" / "dogs").mkdir()
    code, _, err = zoo_cli("train", "--model", "mnist_net", "--dataset", "imagefolder", "--data",
                           str(tmp_path / "data"), "--batch-size", "4", "--device", "cpu", "--max-steps", "1",
                           "--run-dir", str(tmp_path / "run"))
    assert code == 0, err


def test_a_corrupt_image_is_named_and_can_be_skipped(zoo_cli, tmp_path):
    images = write_images(tmp_path / "data" / "train" / "blue", 20)
    images[3].write_bytes(images[3].read_bytes()[:40])  # truncated PNG
    common = ["train", *TINY, "--dataset", "imagefolder", "--data", str(tmp_path / "data"), "--max-steps", "4"]
    code, _, err = zoo_cli(*common, "--run-dir", str(tmp_path / "a"))
    assert code == 1
    line = one_error_line(err)
    assert "img03.png" in line and "--skip-bad-files" in line
    code, _, err = zoo_cli(*common, "--skip-bad-files", "--run-dir", str(tmp_path / "b"))
    assert code == 0, err
    assert re.search(r"skipped 1 unreadable sample\(s\)(, \d+ times in all)? \(first: .*img03\.png", err)


def test_a_corrupt_image_mid_run_keeps_the_steps_done_and_resume_can_skip_it(zoo_cli, tmp_path):
    from plugins.datasets.imagefolder import ImageFolderDataset
    from zoo.engine.feed import EpochOrder
    images = write_images(tmp_path / "data" / "train" / "blue", 40)
    dataset = ImageFolderDataset("train", task="generation", data=str(tmp_path / "data"))
    late = dataset.files[EpochOrder(len(dataset), seed=0, shuffle=True).order()[20]][0]  # read in step 3
    Path(late).write_bytes(Path(late).read_bytes()[:40])
    run = tmp_path / "run"
    code, _, err = zoo_cli("train", *TINY, "--dataset", "imagefolder", "--data", str(tmp_path / "data"),
                           "--epochs", "1", "--run-dir", str(run))
    assert code == 1
    assert Path(late).name in one_error_line(err)
    assert f"step 2 is saved; replace the file (same name) and resume, or go on with: zoo train --resume {run} " \
           f"--skip-bad-files" in err
    assert checkpoint.list_steps(run)[-1][0] == 2
    code, _, err = zoo_cli("train", "--resume", str(run), "--skip-bad-files")
    assert code == 0, err
    assert "skipped 1 unreadable sample(s)" in err and checkpoint.list_steps(run)[-1][0] == 4
    code, _, err = zoo_cli("train", *TINY, "--dataset", "imagefolder", "--data", str(tmp_path / "data"),
                           "--epochs", "1", "--skip-bad-files", "--run-dir", str(tmp_path / "straight"))
    assert code == 0, err
    a = checkpoint.load_weights(checkpoint.list_steps(run)[-1][1])
    b = checkpoint.load_weights(checkpoint.list_steps(tmp_path / "straight")[-1][1])
    assert all(torch.equal(a[k], b[k]) for k in a)  # the stop changed nothing


def test_an_unreadable_test_file_saves_the_epoch_and_the_resumed_run_evaluates_first(zoo_cli, tmp_path):
    write_images(tmp_path / "data" / "train" / "blue", 16)
    tests = write_images(tmp_path / "data" / "test" / "blue", 4)
    tests[1].write_bytes(tests[1].read_bytes()[:40])
    run = tmp_path / "run"
    common = [*TINY, "--dataset", "imagefolder", "--data", str(tmp_path / "data")]
    code, _, err = zoo_cli("train", *common, "--epochs", "2", "--run-dir", str(run))
    assert code == 1 and "img01.png" in one_error_line(err)
    assert checkpoint.list_steps(run)[-1][0] == 2  # the first epoch, trained but not evaluated
    tests[1].write_bytes(tests[0].read_bytes())  # replaced, same name
    code, _, err = zoo_cli("train", "--resume", str(run))
    assert code == 0, err
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["kind"] == "eval"] == [2, 4]


def test_resume_logs_each_step_once_even_past_a_lost_checkpoint(zoo_cli, tmp_path):
    run = tmp_path / "run"
    assert zoo_cli("train", *TINY, *TINY_SHAPES, "--max-steps", "4", "--save-every", "2", "--eval-every", "2",
                   "--keep", "5", "--run-dir", str(run))[0] == 0
    os.rename(run / "checkpoints" / "step-4", tmp_path / "lost")  # steps 3 and 4 were logged, not kept
    code, _, err = zoo_cli("train", "--resume", str(run), "--max-steps", "4")
    assert code == 0, err
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["kind"] == "train"] == [1, 2, 3, 4]
    assert [r["step"] for r in records if r["kind"] == "eval"] == [2, 4]


def test_a_torn_last_metrics_line_is_dropped_on_resume(zoo_cli, tmp_path):
    run = tmp_path / "run"
    assert zoo_cli("train", *TINY, *TINY_SHAPES, "--max-steps", "2", "--run-dir", str(run))[0] == 0
    with (run / "metrics.jsonl").open("a") as handle:
        handle.write('{"kind": "train", "step": 3, "lo')  # killed while writing
    code, _, err = zoo_cli("train", "--resume", str(run), "--max-steps", "4")
    assert code == 0, err
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["kind"] == "train"] == [1, 2, 3, 4]


def test_a_finished_run_says_which_limit_to_raise(zoo_cli, tmp_path):
    run = tmp_path / "run"
    assert zoo_cli("train", *TINY, *TINY_SHAPES, "--epochs", "1", "--run-dir", str(run))[0] == 0
    code, _, err = zoo_cli("train", "--resume", str(run), "--max-steps", "9")
    assert code == 0, err
    assert "already complete at step 4; its --epochs 1 ends it at step 4; extend it with --epochs 2 or more." in err
    code, _, err = zoo_cli("train", "--resume", str(run), "--epochs", "3", "--max-steps", "4")
    assert code == 0 and "already complete at step 4; extend it with --max-steps beyond 4." in err
    longer = tmp_path / "longer"
    assert zoo_cli("train", *TINY, *TINY_SHAPES, "--epochs", "2", "--run-dir", str(longer))[0] == 0
    code, _, err = zoo_cli("train", "--resume", str(longer), "--epochs", "1")  # fewer than it has done
    assert code == 0 and "its --epochs 1 ends it at step 4; extend it with --epochs 3 or more." in err


def test_a_cache_folder_that_cannot_be_made_is_one_line(zoo_cli, tmp_path, monkeypatch):
    (tmp_path / "afile").write_text("not a folder")
    monkeypatch.setenv("ZOO_CACHE_DIR", str(tmp_path / "afile"))
    code, _, err = zoo_cli("train", *TINY, *TINY_SHAPES, "--max-steps", "1", "--cache-decoded",
                           "--run-dir", str(tmp_path / "run"))
    assert code == 1
    line = one_error_line(err)
    assert str(tmp_path / "afile") in line and "set ZOO_CACHE_DIR to a writable folder" in line


def test_truncated_mnist_files_are_named(zoo_cli, tmp_path):
    raw = tmp_path / "mnist" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for prefix, count in (("train", 60), ("t10k", 10)):
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(struct.pack(">IIII", 2051, count, 28, 28) + bytes(28 * 28 * count))
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">II", 2049, count) + bytes(count))
    images = raw / "train-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:1000])
    code, _, err = zoo_cli("train", *TINY, "--dataset", "mnist", "--data", str(tmp_path / "mnist"),
                       "--run-dir", str(tmp_path / "run"))
    assert code == 1
    assert "train-images-idx3-ubyte" in one_error_line(err)


def test_out_of_device_memory_suggests_what_to_change(zoo_cli, tmp_path, monkeypatch):
    from zoo.engine.step import StepRunner

    def exhausted(self, batches):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(StepRunner, "step", exhausted)
    code, _, err = zoo_cli("train", *TINY, *TINY_SHAPES, "--run-dir", str(tmp_path / "run"))
    assert code == 1
    line = one_error_line(err)
    assert "--batch-size" in line and "--accumulate" in line and "bf16" in line


# ---------------------------------------------------------------- security
def test_planted_pickles_never_run(zoo_cli, tmp_path):
    marker = tmp_path / "marker"
    run = tmp_path / "run"
    assert zoo_cli("train", *TINY, *TINY_SHAPES, "--max-steps", "2", "--run-dir", str(run))[0] == 0
    evil = pickle.dumps(Evil(marker))
    planted = run / "checkpoints" / "step-9"
    planted.mkdir()
    for name in ("model.safetensors", "state.safetensors"):
        (planted / name).write_bytes(evil)
    (planted / "state.json").write_text(json.dumps({"format_version": 1, "step": 9, "state": {}}))
    (planted / "model.pt").write_bytes(evil)
    buffer = io.BytesIO()
    torch.save({"features.0.weight": Evil(marker)}, buffer)
    weights = tmp_path / "vgg19.pth"
    weights.write_bytes(buffer.getvalue())

    code, _, err = zoo_cli("train", "--resume", str(run), "--max-steps", "3")
    assert code == 0, err
    assert "skipping damaged checkpoint step-9" in err
    code, _, err = zoo_cli("train", *TINY, *TINY_SHAPES, "--loss", "perceptual", "--loss-opt",
                       f"weights={weights}", "--run-dir", str(tmp_path / "other"))
    assert code == 1 and str(weights) in one_error_line(err)  # not a weights file: a runtime error
    assert not marker.exists(), "a pickle planted as data ran code"


def test_no_source_file_unpickles():
    offenders = []
    for folder in ("zoo", "plugins", "train_cli"):
        for path in (REPO / folder).rglob("*.py"):
            text = path.read_text()
            for match in re.finditer(r"torch\.load\(([^)]*)\)", text):
                if "weights_only=True" not in match.group(1):
                    offenders.append(f"{path.name}: {match.group(0)}")
            if re.search(r"\bpickle\.loads?\(|\bdill\b|\bjoblib\.load\(", text):
                offenders.append(f"{path.name}: unpickling call")
    assert not offenders, offenders


# ---------------------------------------------------------------- non-finite losses
def test_skip_nonfinite_skips_and_counts_such_steps(zoo_cli, tmp_path, monkeypatch):
    from plugins.models.dcgan import DCGAN
    original = DCGAN.training_step
    calls = {"n": 0}

    def sometimes_nan(self, batch, loss_fn):
        calls["n"] += 1
        for name, loss in original(self, batch, loss_fn):
            yield name, (loss * float("nan") if calls["n"] in (2, 3) else loss)

    monkeypatch.setattr(DCGAN, "training_step", sometimes_nan)
    run = tmp_path / "run"
    code, _, err = zoo_cli("train", *TINY, *TINY_SHAPES, "--max-steps", "5", "--skip-nonfinite",
                       "--run-dir", str(run))
    assert code == 0, err
    assert "skipped 2 step(s) with a non-finite loss" in err
    weights = checkpoint.load_weights(checkpoint.list_steps(run)[-1][1])
    assert all(torch.isfinite(t).all() for t in weights.values())

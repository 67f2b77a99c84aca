"""The run folder: config.json, metrics.jsonl, and where checkpoints, events and samples go."""

from __future__ import annotations

import datetime
import json
import math
import os
import platform
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from zoo.errors import UsageError

# what a run folder holds besides its lock: what --overwrite replaces, and what marks a folder as used
RUN_ENTRIES = ("config.json", "checkpoints", "tensorboard", "samples", "metrics.jsonl", "test-metrics.json",
               "predictions", "exports", "status.json", "README.md")
ASIDE_PREFIX = ".replaced-"  # the folder --overwrite keeps the old run in until the new one has saved


def versions() -> dict[str, str]:
    """Versions of the packages a run depends on."""
    import importlib.metadata as md
    found = {"python": platform.python_version()}
    for name in ("zoo", "torch", "torchvision", "pluggy", "safetensors", "tensorboardX", "numpy"):
        try:
            found[name] = md.version(name)
        except md.PackageNotFoundError:
            continue
    return found


def default_run_dir(model: str, loss: str | None) -> Path:
    """``runs/<model>-<loss>-<timestamp>``, made unique if needed."""
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    base = Path("runs") / f"{model.replace(':', '-')}-{(loss or 'none').replace(':', '-')}-{stamp}"
    candidate, n = base, 1
    while candidate.exists():
        n += 1
        candidate = base.with_name(f"{base.name}-{n}")
    return candidate


def _is_run_config(document: Any) -> bool:
    """Whether a parsed config.json is one ``zoo train`` wrote: a config section naming a model."""
    return isinstance(document, dict) and isinstance(document.get("config"), dict) \
        and isinstance(document["config"].get("model"), str) and bool(document["config"]["model"])


def read_config(run_dir: Path) -> dict[str, Any]:
    """The saved config.json of a run; a missing, unreadable or foreign one is a usage error."""
    path = Path(run_dir) / "config.json"
    if Path(run_dir).is_file():
        raise UsageError(f"{run_dir} is a file, not a run folder; pass a folder made by 'zoo train'.")
    if not Path(run_dir).is_dir():
        raise UsageError(f"run dir {run_dir} does not exist; pass a folder made by 'zoo train'.")
    if not path.is_file():
        if any(Path(run_dir).glob(f"{ASIDE_PREFIX}*")):
            raise UsageError(f"{run_dir} holds a run a stopped --overwrite set aside; 'zoo train --resume {run_dir}' "
                             f"puts it back and goes on with it.")
        raise UsageError(f"{run_dir} holds no config.json, so it is not a zoo run; pass a folder made by 'zoo train'.")
    try:
        document = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UsageError(f"{path} is unreadable ({exc}); the run cannot be used.") from None
    if not _is_run_config(document):
        raise UsageError(f"{path} is not the config.json 'zoo train' writes (it has no config section naming a "
                         f"model); the run cannot be used.")
    return document


def _is_run(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds a config.json that ``zoo train`` wrote."""
    try:
        return _is_run_config(json.loads((run_dir / "config.json").read_text()))
    except (OSError, ValueError):
        return False


def _remove(path: Path) -> None:
    """Delete a file or a folder tree, if there."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _has_checkpoints(run_dir: Path) -> bool:
    return any((run_dir / "checkpoints").glob("step-*"))


def recover_set_aside(run_dir: Path) -> None:
    """Put back a run that ``prepare_new`` set aside for a start that was then killed.

    It comes back when the folder holds no run with a checkpoint of its own (the killed
    start saved none); otherwise it is named, and left where it is.
    """
    for left in sorted(Path(run_dir).glob(f"{ASIDE_PREFIX}*")):
        if _has_checkpoints(run_dir):
            print(f"zoo: {left} holds a run an earlier --overwrite set aside; this folder's newer run is kept, "
                  f"and that one is left there for you to move or delete.", file=sys.stderr)
            continue
        restore_replaced(left)
        print(f"zoo: put back the run in {run_dir} that a stopped --overwrite had set aside.", file=sys.stderr)


def prepare_new(run_dir: Path, overwrite: bool, keep_replaced: bool = False) -> Path | None:
    """Make ``run_dir`` ready for a new run, refusing to mix two runs in one or to touch what is not a run.

    A run it replaces (``overwrite``, or one that never saved a checkpoint) is deleted; with
    ``keep_replaced`` it is moved aside instead, into the returned folder, until the new run has
    saved its first checkpoint (``discard_replaced``) or failed to (``restore_replaced``).
    ``None`` when there was nothing to replace.
    """
    run_dir = Path(run_dir)
    present = [name for name in RUN_ENTRIES if (run_dir / name).exists()]
    if not present:
        run_dir.mkdir(parents=True, exist_ok=True)
        return None
    if not _is_run(run_dir):
        raise UsageError(f"{run_dir} holds {', '.join(present)} but is not a zoo run (no config.json that "
                         f"'zoo train' wrote), so zoo leaves it alone; pick another --run-dir.")
    if not overwrite:
        if _has_checkpoints(run_dir):
            raise UsageError(f"{run_dir} already holds a run; continue it with --resume {run_dir} "
                             f"or replace it with --overwrite.")
        print(f"zoo: replacing the run in {run_dir}, which never saved a checkpoint.", file=sys.stderr)
    aside = Path(tempfile.mkdtemp(prefix=ASIDE_PREFIX, dir=run_dir))
    moved: list[str] = []
    try:
        for name in sorted(present, key=lambda name: name == "config.json"):  # config.json last: it marks a run
            os.replace(run_dir / name, aside / name)
            moved.append(name)
    except BaseException:  # a move that failed half-way: what moved goes back, the run stays whole
        for name in moved:
            os.replace(aside / name, run_dir / name)
        aside.rmdir()
        raise
    if keep_replaced:
        return aside
    discard_replaced(aside)
    return None


def discard_replaced(aside: Path | None) -> None:
    """Delete the run ``prepare_new`` set aside in ``aside``: the new run has saved a checkpoint."""
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)


def restore_replaced(aside: Path | None) -> None:
    """Put the run ``prepare_new`` set aside back, in place of all the new run wrote before failing."""
    if aside is None or not aside.is_dir():
        return
    for name in RUN_ENTRIES:
        _remove(aside.parent / name)
        if (aside / name).exists():
            os.replace(aside / name, aside.parent / name)
    shutil.rmtree(aside, ignore_errors=True)


def write_text_atomic(path: Path, text: str) -> None:
    """Write a text file atomically (temporary file, fsync, rename): readers see the old or the new."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with tmp.open("w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)  # a failed write leaves no temporary file


def json_text(document: Any, indent: int | None = 2) -> str:
    """Standard JSON: a non-finite number (a diverged loss, NaN weights) is written as null, never as NaN,
    which strict JSON readers refuse."""
    return json.dumps(_finite_or_null(document), indent=indent, default=str, allow_nan=False)


def _finite_or_null(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite_or_null(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_null(item) for item in value]
    return value


def write_json(path: Path, document: dict[str, Any], report: bool = False) -> None:
    """Write JSON atomically; a ``report`` (figures for people and tools) has null for non-finite numbers, where
    a record zoo reads back (config.json) keeps every value as it was, infinities included."""
    text = json_text(document) if report else json.dumps(document, indent=2, default=str)
    write_text_atomic(path, text + "\n")


def _step_of(line: str) -> int | None:
    """The step of a metrics record (0 without one); None for a line that is not a whole record."""
    if not line.endswith("\n"):
        return None  # the last line of a run killed while writing it
    try:
        return int(json.loads(line).get("step", 0))
    except (ValueError, AttributeError, TypeError):
        return None


class MetricsLog:
    """Appends one JSON object per line to ``metrics.jsonl``, kept open from the first record to ``close``
    (opening the file for each record cost a small model's log step about 0.15 ms)."""

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / "metrics.jsonl"
        self._file: Any = None

    def drop_after(self, step: int) -> None:
        """Forget records of steps after ``step`` (a resumed run logs them again) and torn lines."""
        self.close()  # the file is replaced: the next record opens the new one
        if not self.path.exists():
            return
        lines = self.path.read_text().splitlines(keepends=True)
        kept = [line for line in lines if (found := _step_of(line)) is not None and found <= step]
        if len(kept) != len(lines):
            write_text_atomic(self.path, "".join(kept))

    def clear(self) -> None:
        """Forget every record: the run starts over."""
        self.close()
        self.path.unlink(missing_ok=True)

    def write(self, record: dict[str, Any]) -> None:
        """Append a record and flush it to the OS (a crash of the process loses none)."""
        if self._file is None:
            self._file = self.path.open("a")
        self._file.write(json_text(record, indent=None) + "\n")
        self._file.flush()

    def close(self) -> None:
        """Close the file (the next record opens it again)."""
        if self._file is not None:
            self._file.close()
            self._file = None

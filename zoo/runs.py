"""Run folders read for people and tools: a row per run (``zoo runs``), two runs' configs and metrics
compared (``zoo diff``), the flattened config (TensorBoard's HParams), the last evaluation and test results.

Reads ``config.json``, ``status.json``, ``metrics.jsonl`` and ``test-metrics*.json`` only, and imports
no torch, so listing a folder of runs is quick.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import math
import os
from pathlib import Path
from typing import Any, Callable

from zoo.config import recorded_part_names
from zoo.engine.lock import held
from zoo.engine.rundir import read_config
from zoo.engine.status import read_status
from zoo.errors import UsageError

SORT_KEYS = ("name", "age", "model", "loss", "dataset", "status", "steps", "metric")
SEARCH_DEPTH = 3  # run folders are looked for this many levels under the folder given
NOT_COMPARED = frozenset({"config.run_dir"})  # differs between any two runs: no news in zoo diff
ABSENT = object()  # a key one of two configs does not have
_TAIL_CHUNK = 1 << 16  # metrics.jsonl is read from its end in pieces of this many bytes


@dataclasses.dataclass
class RunSummary:
    """One run as ``zoo runs`` lists it; ``status`` is running, done, interrupted, failed, unknown (a run
    made before zoo recorded its status) or unreadable (its config.json), ``detail`` says more."""

    name: str
    path: str
    model: str | None = None
    loss: str | None = None
    dataset: str | None = None
    step: int | None = None
    planned_steps: int | None = None
    status: str = "unknown"
    crashed: bool = False  # status "failed" because the process died while running (killed, out of memory)
    detail: str | None = None
    best: dict[str, Any] | None = None  # {"metric", "mode", "value", "step"}
    updated: str | None = None
    age_seconds: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """The run as ``zoo runs --json`` gives it."""
        return dataclasses.asdict(self)


def list_runs(folder: Path, sort: str = "name") -> list[RunSummary]:
    """The runs under ``folder`` (see :func:`find_runs`), sorted by one of ``SORT_KEYS``."""
    if sort not in SORT_KEYS:
        raise UsageError(f"--sort {sort}: sort by one of {', '.join(SORT_KEYS)}.")
    folder = Path(folder)
    now = datetime.datetime.now(datetime.timezone.utc)
    found = [summarize(path, path.relative_to(folder).as_posix() if path != folder else path.resolve().name, now)
             for path in find_runs(folder)]
    return sorted(found, key=_SORTS[sort])


def find_runs(folder: Path) -> list[Path]:
    """The run folders under ``folder`` (or ``folder`` itself, if it is one): folders holding a config.json,
    up to ``SEARCH_DEPTH`` levels down. Hidden folders and a run's own folders are not searched."""
    folder = Path(folder)
    if not folder.is_dir():
        what = "is a file" if folder.is_file() else "does not exist"
        raise UsageError(f"{folder} {what}; pass the folder that holds your runs: zoo runs DIR.")
    found: list[Path] = []

    def search(path: Path, depth: int) -> None:
        if (path / "config.json").is_file():
            found.append(path)
            return
        if depth == SEARCH_DEPTH:
            return
        try:
            children = sorted(child for child in path.iterdir() if child.is_dir() and not child.name.startswith("."))
        except OSError:  # a folder we may not read holds no run we can show
            return
        for child in children:
            search(child, depth + 1)

    search(folder, 0)
    return found


def summarize(run_dir: Path, name: str, now: datetime.datetime) -> RunSummary:
    """One run's row: its parts (config.json), how far it got and how it ended (status.json), its age."""
    row = RunSummary(name=name, path=str(run_dir))
    try:
        document = read_config(run_dir)
    except UsageError as exc:
        row.status, row.detail = "unreadable", str(exc)
        return row
    row.model, row.loss, row.dataset = (part_name(document, kind) for kind in ("model", "loss", "dataset"))
    recorded = read_status(run_dir)
    if recorded is None:
        if held(run_dir):  # a start still setting up (status.json comes with its first step), or an older zoo
            row.status, row.detail = "running", "starting: no status.json yet"
        else:
            row.detail = "no status.json: made before zoo recorded a run's status"
        updated = datetime.datetime.fromtimestamp((run_dir / "config.json").stat().st_mtime, datetime.timezone.utc)
    else:
        row.status, row.step = recorded["status"], recorded.get("step")
        row.planned_steps = recorded.get("planned_steps")
        row.best, row.updated = recorded.get("best"), recorded.get("updated")
        row.crashed = bool(recorded.get("crashed"))
        if row.crashed:
            row.detail = "crashed: its process is gone without saying how it ended"
        elif recorded.get("stop_reason"):
            row.detail = f"stopped early: {recorded['stop_reason']}"
        updated = _parsed_time(row.updated)
    if updated is not None:
        row.age_seconds = round(max(0.0, (now - updated).total_seconds()), 1)
    return row


def part_name(document: dict[str, Any], kind: str) -> str | None:
    """The ``plugin:name`` of a run's model, loss or dataset as config.json resolved it (else as given)."""
    part = (document.get("resolved") or {}).get(kind)
    if isinstance(part, dict) and isinstance(part.get("name"), str):
        return part["name"]
    given = document["config"].get(kind)
    return given if isinstance(given, str) else None


def _parsed_time(text: Any) -> datetime.datetime | None:
    try:
        return datetime.datetime.fromisoformat(text)
    except (TypeError, ValueError):
        return None


def _metric_order(row: RunSummary) -> tuple:
    """Runs grouped by the metric of their best, the best first in each group; runs without one last."""
    if not row.best or not isinstance(row.best.get("metric"), str):
        return (1, "", 0.0, row.name)
    value = row.best.get("value")
    value = float(value) if isinstance(value, (int, float)) else math.nan
    better_first = value if row.best.get("mode") == "min" else -value
    return (0, row.best["metric"], math.inf if math.isnan(better_first) else better_first, row.name)


_SORTS: dict[str, Callable[[RunSummary], Any]] = {
    "name": lambda row: row.name,
    "age": lambda row: (row.age_seconds is None, row.age_seconds or 0.0, row.name),  # the newest first
    "model": lambda row: (row.model is None, row.model or "", row.name),
    "loss": lambda row: (row.loss is None, row.loss or "", row.name),
    "dataset": lambda row: (row.dataset is None, row.dataset or "", row.name),
    "status": lambda row: (row.status, row.name),
    "steps": lambda row: (row.step is None, -(row.step or 0), row.name),  # the most first
    "metric": _metric_order,
}


# ------------------------------------------------------------------ configs
def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts as dotted keys (``resolved.model.version``), a list of dicts by index
    (``resolved.hooks[0].name``); any other value (a number, a string, a list of them) as it is."""
    if isinstance(value, dict):
        flat: dict[str, Any] = {}
        for key, item in value.items():
            flat.update(flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return flat
    if isinstance(value, list) and value and all(isinstance(item, dict) for item in value):
        flat = {}
        for index, item in enumerate(value):
            flat.update(flatten(item, f"{prefix}[{index}]"))
        return flat
    return {prefix: value}


def comparable_config(document: dict[str, Any]) -> dict[str, Any]:
    """A config.json's ``config``, ``resolved`` (parts with their plugin versions, every option) and ``versions``
    (packages) sections, flattened; what differs between any two runs (their folder) left out."""
    sections = {name: document.get(name) or {} for name in ("config", "resolved", "versions")}
    # parts as config.json's resolved section names them: a resumed run's config has them so (builtin:dcgan, not
    # dcgan; the default dataset by name, not null), a run never resumed as given: the same parts either way
    sections["config"] = recorded_part_names(sections["config"], sections["resolved"])
    return {key: value for key, value in flatten(sections).items() if key not in NOT_COMPARED}


def config_differences(first: dict[str, Any], second: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """``(key, first's value, second's value)`` for each flattened key whose values differ between two
    config.json documents, in the first's order then the second's; ``ABSENT`` where one has no such key."""
    ours, theirs = comparable_config(first), comparable_config(second)
    keys = list(ours) + [key for key in theirs if key not in ours]
    return [(key, ours.get(key, ABSENT), theirs.get(key, ABSENT)) for key in keys
            if ours.get(key, ABSENT) != theirs.get(key, ABSENT)]


# ------------------------------------------------------------------ metrics
def last_evaluation(run_dir: Path) -> dict[str, Any] | None:
    """The last evaluation in metrics.jsonl as ``{"step", "metrics"}``, or None. Read from the file's end, as
    it grows by a line each log step."""
    try:
        with (Path(run_dir) / "metrics.jsonl").open("rb") as handle:
            end = handle.seek(0, os.SEEK_END)
            rest = b""  # the start of the last piece read: a line maybe cut, finished by the piece before it
            while end > 0:
                start = max(0, end - _TAIL_CHUNK)
                handle.seek(start)
                lines = (handle.read(end - start) + rest).split(b"\n")
                rest, whole = (lines[0], lines[1:]) if start else (b"", lines)
                for line in reversed(whole):
                    found = _evaluation(line)
                    if found is not None:
                        return found
                end = start
    except OSError:
        return None
    return None


def _evaluation(line: bytes) -> dict[str, Any] | None:
    """A metrics.jsonl line's evaluation, or None (another kind of record, or a line cut by a kill)."""
    if b'"eval"' not in line:
        return None
    try:
        record = json.loads(line)
    except ValueError:
        return None
    if not isinstance(record, dict) or record.get("kind") != "eval":
        return None
    return {"step": record.get("step"),
            "metrics": {key: value for key, value in record.items() if key not in ("kind", "step", "epoch")}}


def saved_tests(run_dir: Path) -> dict[str, dict[str, Any]]:
    """What ``zoo test`` saved, by file: ``"test"`` (test-metrics.json) and ``"test-NAME"`` (a weight set's
    test-metrics-NAME.json), each ``{"step", "metrics"}``; unreadable files are left out."""
    results = {}
    for path in sorted(Path(run_dir).glob("test-metrics*.json")):
        try:
            document = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(document, dict) and isinstance(document.get("metrics"), dict):
            label = "test" + path.stem[len("test-metrics"):]
            results[label] = {"step": document.get("step"), "metrics": document["metrics"]}
    return results


def run_metrics(run_dir: Path) -> dict[str, Any]:
    """A run's figures side by side with another's: ``eval.step`` and ``eval.<metric>`` of its last
    evaluation, ``test.step`` and ``test.<metric>`` of each test result (``test-ema.<metric>``...)."""
    flat: dict[str, Any] = {}
    sources = {"eval": last_evaluation(run_dir), **saved_tests(run_dir)}
    for label, result in sources.items():
        if result is not None:
            flat[f"{label}.step"] = result["step"]
            flat.update({f"{label}.{key}": value for key, value in result["metrics"].items()})
    return flat


def format_number(value: Any) -> str:
    """A metric for people: four significant digits; null (a non-finite figure saved) as ``nan``."""
    if value is None:
        return "nan"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)

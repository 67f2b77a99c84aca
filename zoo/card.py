"""The model card: ``README.md`` in a run folder, what someone needs to know of the run and to use it.

Built from the run folder's own files alone (config.json, status.json, metrics.jsonl,
test-metrics*.json, samples/latest.png, the newest checkpoint's weight files), so it can be rebuilt
at any time, and every link in it is relative to the run folder: a copy of the folder (an export)
that keeps ``samples/latest.png`` beside it keeps a whole card. ``zoo train`` refreshes it with the
run's status (``zoo.engine.status``): when training starts, after each evaluation, when it ends.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

from zoo.engine import checkpoint
from zoo.engine.rundir import read_config, write_text_atomic
from zoo.engine.status import read_recorded
from zoo.runs import format_number, last_evaluation, saved_tests

CARD_NAME = "README.md"
SAMPLE_GRID = "samples/latest.png"
_CLASSES_NAMED = 10  # the card names this many of a classifier's classes
_GRID_SAYS = {
    "generation": "Samples the model draws from fixed noise.",
    "image-to-image": "Fixed test inputs, the model's outputs and the targets, in three rows.",
    "classification": "Fixed test images, framed green where the model is right and red where it is wrong.",
}


def write_card(run_dir: Path) -> Path:
    """Write the run's card, ``README.md``, from the folder's files (atomically); return its path."""
    path = Path(run_dir) / CARD_NAME
    write_text_atomic(path, card_text(Path(run_dir)))
    return path


def card_text(run_dir: Path) -> str:
    """The card's markdown: what the run is, its parts and versions, its data, how to make it again, its
    metrics, its latest sample grid and the weights its newest checkpoint holds."""
    document, recorded = read_config(run_dir), read_recorded(run_dir)
    sections = [_summary(run_dir, document, recorded), _parts(document), _data(document), _reproduce(document),
                _metrics(run_dir, recorded), _samples(run_dir, document), _weights(run_dir, recorded)]
    return "\n\n".join(sections) + "\n"


def _summary(run_dir: Path, document: dict[str, Any], recorded: dict[str, Any] | None) -> str:
    resolved = document.get("resolved") or {}
    loss = _name(resolved.get("loss")) or document["config"].get("loss")
    trained = f"with loss `{loss}`" if loss else "without a loss"
    line = (f"A zoo run: model `{_name(resolved.get('model')) or document['config']['model']}` trained {trained} "
            f"on `{_name(resolved.get('dataset')) or document['config'].get('dataset')}`")
    if recorded is None:
        return f"# {run_dir.resolve().name}\n\n{line}."
    stopped = f" (stopped early: {recorded['stop_reason']})" if recorded.get("stop_reason") else ""
    return (f"# {run_dir.resolve().name}\n\n{line}; **{recorded['status']}** at step {recorded.get('step')} of "
            f"{recorded.get('planned_steps')}{stopped}. Updated {recorded.get('updated')}.")


def _name(part: Any) -> str | None:
    return part.get("name") if isinstance(part, dict) else None


def _parts(document: dict[str, Any]) -> str:
    resolved = document.get("resolved") or {}
    rows = ["| part | name | plugin version | distribution |", "|---|---|---|---|"]
    parts = [("model", resolved.get("model")), ("loss", resolved.get("loss")), ("dataset", resolved.get("dataset")),
             *(("hook", hook) for hook in resolved.get("hooks") or [])]
    for kind, part in parts:
        if isinstance(part, dict):
            rows.append(f"| {kind} | `{part.get('name')}` | {part.get('version') or '?'} | "
                        f"{part.get('distribution') or '?'} |")
    lines = ["## Model and plugins", "", *rows, ""]
    if resolved.get("model_options"):
        lines.append(f"Model options: {_options(resolved['model_options'])}.")
    if "parameters" in resolved:
        shape = "×".join(str(size) for size in resolved.get("input_shape") or []) or "?"
        lines.append(f"{resolved['parameters']:,} parameters ({resolved.get('trainable_parameters', 0):,} "
                     f"trainable); input {shape}; task {resolved.get('task')}.")
    packages = ", ".join(f"{name} {version}" for name, version in (document.get("versions") or {}).items())
    if packages:
        lines.append(f"Packages: {packages}.")
    return "\n".join(lines).rstrip()


def _options(options: dict[str, Any]) -> str:
    return ", ".join(f"`{key}={value}`" for key, value in options.items()) or "none"


def _data(document: dict[str, Any]) -> str:
    config, resolved = document["config"], document.get("resolved") or {}
    where = f"read from `{config['data']}`" if config.get("data") else "without --data"
    lines = ["## Data", "",
             f"Dataset `{_name(resolved.get('dataset')) or config.get('dataset')}`, {where}; its options: "
             f"{_options(resolved.get('dataset_options') or {})}."]
    classes = resolved.get("classes")
    if isinstance(classes, list) and classes:
        named = ", ".join(str(name) for name in classes[:_CLASSES_NAMED])
        lines.append(f"{len(classes)} classes: {named}{', ...' if len(classes) > _CLASSES_NAMED else ''}.")
    return "\n".join(lines)


def _reproduce(document: dict[str, Any]) -> str:
    commands = [line for line in [document.get("command_line"), *document.get("resumed_with", [])] if line]
    seed = document["config"].get("seed")
    if not commands:
        return (f"## Reproduce\n\nMade from Python rather than the zoo command; `config.json` holds every option, "
                f"defaults included (seed {seed}).")
    shown = "\n".join(shlex.join(str(word) for word in line) for line in commands)
    return (f"## Reproduce\n\n```\n{shown}\n```\n\nThe commands that made this run, in order, run where it was made "
            f"(seed {seed}); `config.json` holds every option, defaults included.")


def _metrics(run_dir: Path, recorded: dict[str, Any] | None) -> str:
    evaluation, tests = last_evaluation(run_dir), saved_tests(run_dir)
    columns: list[tuple[str, dict[str, Any]]] = []
    if evaluation is not None:
        columns.append((f"last evaluation (step {evaluation['step']})", evaluation["metrics"]))
    if tests:  # a weight set's test figures as <set>/<metric>, as evaluations name them
        merged = {(f"{label[len('test-'):]}/{key}" if label != "test" else key): value
                  for label, result in tests.items() for key, value in result["metrics"].items()}
        steps = sorted({str(result["step"]) for result in tests.values()})
        columns.append((f"test (step {', '.join(steps)})", merged))
    if not columns:
        return "## Metrics\n\nNo evaluation yet."
    keys = list(dict.fromkeys(key for _, values in columns for key in values))
    rows = [f"| metric | {' | '.join(title for title, _ in columns)} |", "|---" * (len(columns) + 1) + "|"]
    rows += [f"| {key} | " + " | ".join(format_number(values[key]) if key in values else "" for _, values in columns)
             + " |" for key in keys]
    best = (recorded or {}).get("best")
    if best:
        better = {"max": " (higher is better)", "min": " (lower is better)"}.get(best.get("mode"), "")
        rows += ["", f"Best: {best['metric']} {format_number(best['value'])} at step {best['step']}{better}."]
    return "## Metrics\n\n" + "\n".join(rows)


def _samples(run_dir: Path, document: dict[str, Any]) -> str:
    if not (run_dir / SAMPLE_GRID).is_file():
        return (f"## Samples\n\nNo sample grid yet: the `samples` hook writes `{SAMPLE_GRID}` at epochs' ends and "
                f"at the run's end.")
    says = _GRID_SAYS.get((document.get("resolved") or {}).get("task"), "")
    return f"## Samples\n\n![The latest sample grid]({SAMPLE_GRID})\n\n{says}".rstrip()


def _weights(run_dir: Path, recorded: dict[str, Any] | None) -> str:
    steps = checkpoint.list_steps(run_dir)
    if not steps:
        return "## Weights\n\nNo checkpoint yet."
    step, folder = steps[-1]
    where = folder.relative_to(run_dir).as_posix()
    lines = ["## Weights", "", f"The newest checkpoint, `{where}/`, holds:", "",
             f"- the raw weights: `{where}/model.safetensors`"]
    for name in checkpoint.weight_set_names(folder):
        file = checkpoint.weight_set_file(folder, name).relative_to(run_dir).as_posix()
        lines.append(f"- weight set `{name}`: `{file}` (`--weights {name}` in zoo test, zoo sample and zoo predict)")
    best = (recorded or {}).get("best")
    kept = dict(steps)
    if best and best.get("step") != step and best.get("step") in kept:
        lines += ["", f"The best evaluation's checkpoint, `{kept[best['step']].relative_to(run_dir).as_posix()}/`, "
                      f"is kept too."]
    return "\n".join(lines)

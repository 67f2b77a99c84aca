"""Atomic checkpoints without pickle: tensors in safetensors, everything else in JSON.

A checkpoint is ``checkpoints/step-<N>/`` holding ``model.safetensors`` (every
network, keys prefixed by network name), ``state.safetensors`` (optimizer,
scheduler, scaler and RNG tensors) and ``state.json`` (the rest, with
placeholders where tensors were). It is built under a temporary name that
never matches ``step-*``, fsynced, renamed into place and the folder fsynced,
so a reader never sees a partial ``step-<N>``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from zoo.errors import RunError, UsageError

FORMAT_VERSION = 1
_STEP_RE = re.compile(r"^step-(\d+)$")
_TENSOR = "__tensor__"
_TUPLE = "__tuple__"
_PAIRS = "__pairs__"
WEIGHT_SET_PREFIX = "weights-"


class CheckpointError(RunError):
    """A checkpoint folder is missing a file or holds a damaged one; ``reason`` says what, without the folder."""

    def __init__(self, folder: Path | str, reason: str, damaged: bool = False, hint: str = "") -> None:
        body = f"is damaged ({reason})" if damaged else reason
        super().__init__(f"checkpoint {folder} {body}{'; ' + hint if hint else ''}.")
        self.folder, self.reason, self.damaged, self.hint = Path(folder), reason, damaged, hint

    def __reduce__(self) -> tuple:  # crosses process boundaries (loader workers, multiprocessing)
        return type(self), (self.folder, self.reason, self.damaged, self.hint)


def flatten(value: Any, tensors: dict[str, torch.Tensor], copy: bool = True) -> Any:
    """Replace tensors in a nested state by placeholders, collecting them in ``tensors``.

    Dicts with non-string keys (optimizer state uses ints) and tuples are
    tagged so :func:`unflatten` restores them exactly. ``copy=False`` only checks that the state can be
    stored (the tensors are collected as they are, not copied to the CPU).
    """
    if isinstance(value, torch.Tensor):
        key = f"t{len(tensors)}"
        tensors[key] = value.detach().cpu().contiguous().clone() if copy else value
        return {_TENSOR: key}
    if isinstance(value, dict):
        if all(isinstance(k, str) for k in value) and not any(k.startswith("__") for k in value):
            return {k: flatten(v, tensors, copy) for k, v in value.items()}
        return {_PAIRS: [[k, flatten(v, tensors, copy)] for k, v in value.items()]}
    if isinstance(value, tuple):
        return {_TUPLE: [flatten(v, tensors, copy) for v in value]}
    if isinstance(value, list):
        return [flatten(v, tensors, copy) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if hasattr(value, "tolist"):  # numpy arrays and scalars
        return flatten(torch.as_tensor(value), tensors, copy)
    raise TypeError(f"cannot store a {type(value).__name__} in a checkpoint")


def unflatten(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Inverse of :func:`flatten`."""
    if isinstance(value, dict):
        if _TENSOR in value:
            return tensors[value[_TENSOR]]
        if _TUPLE in value:
            return tuple(unflatten(v, tensors) for v in value[_TUPLE])
        if _PAIRS in value:
            return {_key(k): unflatten(v, tensors) for k, v in value[_PAIRS]}
        return {k: unflatten(v, tensors) for k, v in value.items()}
    if isinstance(value, list):
        return [unflatten(v, tensors) for v in value]
    return value


def _key(key: Any) -> Any:
    return tuple(key) if isinstance(key, list) else key


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def checkpoint_dir(run_dir: Path, step: int) -> Path:
    """Where the checkpoint of ``step`` lives."""
    return Path(run_dir) / "checkpoints" / f"step-{step}"


def weight_set_file(folder: Path, name: str) -> Path:
    """Where a checkpoint keeps the weight set ``name`` a hook offered (``weights-<name>.safetensors``)."""
    return Path(folder) / f"{WEIGHT_SET_PREFIX}{name}.safetensors"


def weight_set_names(folder: Path) -> list[str]:
    """The weight sets a checkpoint holds besides the raw weights (``ema``...), sorted."""
    return sorted(path.name[len(WEIGHT_SET_PREFIX):-len(".safetensors")]
                  for path in Path(folder).glob(f"{WEIGHT_SET_PREFIX}*.safetensors"))


def save(run_dir: Path, step: int, model_state: dict[str, torch.Tensor], state: dict[str, Any],
         weight_sets: dict[str, dict[str, torch.Tensor]] | None = None) -> Path:
    """Write a checkpoint atomically and return its folder (``weight_sets``: beside the weights, a file each)."""
    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = checkpoint_dir(run_dir, step)
    tmp = root / f".tmp-step-{step}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        weights = {k: v.detach().cpu().contiguous().clone() for k, v in model_state.items()}
        _save_weights(weights, tmp / "model.safetensors", {"format": "zoo", "step": str(step)})
        for name, tensors in (weight_sets or {}).items():
            _save_weights({k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()},
                          weight_set_file(tmp, name), {"format": "zoo", "step": str(step), "set": name})
        tensors: dict[str, torch.Tensor] = {}
        skeleton = flatten(state, tensors)
        save_file(tensors, str(tmp / "state.safetensors"))
        doc = {"format_version": FORMAT_VERSION, "step": step, "state": skeleton}
        (tmp / "state.json").write_text(json.dumps(doc, indent=1))
        for path in tmp.iterdir():
            _fsync_file(path)
        _fsync_dir(tmp)
        trash = None
        if final.exists():  # the same step saved again: move the old one out of step-* first
            trash = root / f".del-step-{step}-{os.getpid()}"
            os.rename(final, trash)
        os.rename(tmp, final)
        _fsync_dir(root)
        if trash is not None:
            shutil.rmtree(trash, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def _save_weights(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    """A safetensors file whose bytes depend on its contents only: safetensors writes the metadata in an order
    that changes from one call to the next, so the header is rewritten in place with the metadata sorted."""
    save_file(tensors, str(path), metadata=metadata)
    with open(path, "r+b") as handle:
        size = int.from_bytes(handle.read(8), "little")
        written = handle.read(size)
        header = json.loads(written)
        header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
        stable = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
        if len(stable) == len(written.rstrip(b" ")):  # the same JSON reordered: the header keeps its size
            handle.seek(8)
            handle.write(stable.ljust(size))


def list_steps(run_dir: Path) -> list[tuple[int, Path]]:
    """Checkpoints of a run as ``(step, folder)``, oldest first."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        match = _STEP_RE.match(child.name)
        if match and child.is_dir():
            found.append((int(match.group(1)), child))
    return sorted(found)


def set_aside(folder: Path) -> Path:
    """Rename a damaged checkpoint folder to ``damaged-<name>`` (``damaged-<name>.2``, ... when taken); the new path."""
    aside = folder.with_name(f"damaged-{folder.name}")
    number = 1
    while aside.exists():
        number += 1
        aside = folder.with_name(f"damaged-{folder.name}.{number}")
    folder.rename(aside)
    return aside


def load(folder: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a checkpoint folder; raise :class:`CheckpointError` if any part is damaged."""
    folder = Path(folder)
    try:
        model_state = load_file(str(folder / "model.safetensors"))
        tensors = load_file(str(folder / "state.safetensors"))
        doc = json.loads((folder / "state.json").read_text())
    except FileNotFoundError as exc:
        missing = Path(exc.filename).name if exc.filename else "a file"
        raise CheckpointError(folder, f"is missing {missing}") from None
    except Exception as exc:  # safetensors and json raise several kinds on damaged files
        raise CheckpointError(folder, f"{type(exc).__name__}: {exc}", damaged=True) from None
    if doc.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(folder, f"has format {doc.get('format_version')}, this zoo reads {FORMAT_VERSION}")
    try:
        state = unflatten(doc["state"], tensors)
    except KeyError as exc:
        raise CheckpointError(folder, f"missing tensor {exc}", damaged=True) from None
    return model_state, state


def load_weights(folder: Path, weight_set: str | None = None) -> dict[str, torch.Tensor]:
    """Only the networks' weights of a checkpoint: the raw ones, or the weight set a hook offered."""
    path = weight_set_file(folder, weight_set) if weight_set else Path(folder) / "model.safetensors"
    try:
        return load_file(str(path))
    except FileNotFoundError:
        raise CheckpointError(folder, f"has no {path.name}") from None
    except Exception as exc:
        raise CheckpointError(folder, f"{type(exc).__name__}: {exc}", damaged=True) from None


def load_into(model: torch.nn.Module, weights: dict[str, torch.Tensor], folder: Path, model_name: str,
              hint: str) -> None:
    """Load weights that must fit exactly; a usage error names the first key or shape that differs."""
    own = model.state_dict()
    missing = sorted(set(own) - set(weights))
    unexpected = sorted(set(weights) - set(own))
    if missing or unexpected:
        raise UsageError(f"checkpoint {folder} does not fit model '{model_name}': missing {missing[:3]}, "
                         f"unexpected {unexpected[:3]}; {hint}.")
    for key, value in own.items():
        if tuple(value.shape) != tuple(weights[key].shape):
            raise UsageError(f"checkpoint {folder} does not fit model '{model_name}': {key} has shape "
                             f"{tuple(weights[key].shape)}, the model {tuple(value.shape)}; {hint}.")
    model.load_state_dict(weights)


def prune(run_dir: Path, keep: int, protect: tuple[int, ...] = ()) -> list[int]:
    """Delete all but the newest ``keep`` checkpoints (never the newest, never ``protect``).

    A doomed folder is first renamed out of the ``step-*`` namespace, so a kill
    during deletion never leaves a partial ``step-<N>`` behind.
    """
    root = Path(run_dir) / "checkpoints"
    steps = list_steps(run_dir)
    doomed = [(s, p) for s, p in steps[:-max(keep, 1)] if s not in protect]
    for step, path in doomed:
        trash = root / f".del-step-{step}-{os.getpid()}"
        os.rename(path, trash)
        shutil.rmtree(trash, ignore_errors=True)
    if doomed:
        _fsync_dir(root)
    for stale in list(root.glob(".tmp-step-*")) + list(root.glob(".del-step-*")):
        if not stale.name.endswith(f"-{os.getpid()}"):
            shutil.rmtree(stale, ignore_errors=True)
    return [s for s, _ in doomed]

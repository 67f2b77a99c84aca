"""Fine-tuning: start a run from existing weights and freeze parameters by name."""

from __future__ import annotations

import fnmatch
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from zoo.engine import checkpoint
from zoo.errors import UsageError


def initial_weights(source: str) -> tuple[dict[str, torch.Tensor], str]:
    """Weights from a run folder (its newest checkpoint), a checkpoint folder or a ``.safetensors`` file."""
    path = Path(source)
    if path.is_dir():
        if (path / "model.safetensors").is_file():
            folder = path
        else:
            steps = checkpoint.list_steps(path)
            if not steps:
                raise UsageError(f"--init-from {source}: no checkpoint there; pass a run folder with "
                                 f"checkpoints, a checkpoint folder or a .safetensors file.")
            folder = steps[-1][1]
        try:
            return checkpoint.load_weights(folder), str(folder)
        except checkpoint.CheckpointError as exc:
            siblings = checkpoint.list_steps(folder.parent.parent) if folder.parent.name == "checkpoints" else []
            others = [other for _, other in siblings if other.name != folder.name]
            other = (f"pass another of the run's checkpoints, e.g. --init-from {others[-1]}" if others
                     else "pass another checkpoint or a .safetensors file")
            raise UsageError(f"--init-from: {str(exc).rstrip('.')}; {other}.") from None
    if path.is_file() and path.suffix == ".safetensors":
        from safetensors.torch import load_file
        try:
            return load_file(str(path)), str(path)
        except Exception as exc:
            raise UsageError(f"--init-from {source} is not a readable safetensors file ({exc}).") from None
    if path.is_file():
        raise UsageError(f"--init-from {source}: only .safetensors files, run folders and checkpoint "
                         f"folders are read (no pickled .pth files).")
    raise UsageError(f"--init-from {source} does not exist; pass a run folder or a .safetensors file.")


def source_model(source: str) -> str | None:
    """The model named in the config.json of the run that ``source`` (a checkpoint folder) belongs to."""
    path = Path(source)
    for folder in ([path] if path.is_dir() else []) + list(path.parents)[:3]:
        if (folder / "config.json").is_file() and (folder / "checkpoints").is_dir():  # a run folder
            try:
                model = json.loads((folder / "config.json").read_text())["config"]["model"]
            except (OSError, ValueError, KeyError, TypeError):
                return None
            return model if isinstance(model, str) else None
    return None


def apply_initial_weights(recipe: nn.Module, weights: dict[str, torch.Tensor], strict: bool,
                          source: str, model_name: str) -> dict[str, Any]:
    """Load ``weights`` into ``recipe``; strict unless asked otherwise, listing what did not fit."""
    own = recipe.state_dict()
    missing = sorted(set(own) - set(weights))
    unexpected = sorted(set(weights) - set(own))
    mismatched = sorted(k for k in set(own) & set(weights) if own[k].shape != weights[k].shape)
    loaded = len(set(own) & set(weights)) - len(mismatched)
    if own and not loaded:
        other = source_model(source)
        holds = f" (it holds a '{other}')" if other and other != model_name else ""
        raise UsageError(f"--init-from {source}: none of its {len(weights)} tensors fit model '{model_name}'{holds}; "
                         f"give a run of the same model, or drop --init-from.")
    if strict and (missing or unexpected or mismatched):
        parts = [f"{label} {keys[:3]}{' ...' if len(keys) > 3 else ''}" for label, keys in
                 (("missing", missing), ("unexpected", unexpected), ("other shapes", mismatched)) if keys]
        raise UsageError(f"--init-from {source} does not fit the model: {'; '.join(parts)}. "
                         f"Pass --no-strict to load what fits.")
    usable = {k: v for k, v in weights.items() if k in own and k not in mismatched}
    recipe.load_state_dict(usable, strict=False)
    return {"missing": missing, "unexpected": unexpected, "mismatched": mismatched, "loaded": loaded,
            "model_tensors": len(own)}


def freeze(recipe: nn.Module, patterns: list[str]) -> list[str]:
    """Stop gradients for parameters whose names match any fnmatch pattern; return their names."""
    frozen = []
    for pattern in patterns:
        matched = [name for name, _ in recipe.named_parameters() if fnmatch.fnmatchcase(name, pattern)]
        if not matched:
            names = [name for name, _ in recipe.named_parameters()]
            raise UsageError(f"--freeze {pattern!r} matches no parameter; names look like "
                             f"{', '.join(names[:3])} ...")
        frozen += matched
    for name, param in recipe.named_parameters():
        if name in frozen:
            param.requires_grad = False
    return sorted(set(frozen))


def describe_fit(report: dict[str, Any]) -> list[str]:
    """Lines that list the keys --no-strict left out, then one that says how many of the model's tensors were
    loaded (strict loads say so too: the log shows the run started from given weights)."""
    lines = [f"zoo: --init-from {label}: {', '.join(keys)}" for label, keys in
             (("missing keys (kept as initialised)", report["missing"]), ("unexpected keys (ignored)",
              report["unexpected"]), ("other shapes (kept as initialised)", report["mismatched"])) if keys]
    rest = "; the rest start as initialised" if report["loaded"] < report["model_tensors"] else ""
    lines.append(f"zoo: --init-from loaded {report['loaded']} of the model's {report['model_tensors']} "
                 f"tensors{rest}.")
    return lines

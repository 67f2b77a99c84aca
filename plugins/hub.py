"""Pretrained weights through torch's hub cache: the cache first, a download when online.

Nothing is ever unpickled: ``.pth`` files are read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import contextlib
import io
import os
import pickle
import sys
import urllib.parse
from typing import Any, Callable

import torch

from zoo.errors import RunError, UsageError, first_line


def cache_path(url: str) -> str:
    """Where torch's hub cache keeps the file of ``url``."""
    filename = os.path.basename(urllib.parse.urlparse(url).path)
    return os.path.join(torch.hub.get_dir(), "checkpoints", filename)


def read_state_dict(path: str) -> dict[str, Any]:
    """A state dict from ``.safetensors`` or ``.pth``/``.pt`` without running code."""
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file
        return load_file(path, device="cpu")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise TypeError(f"it holds {type(state).__name__}, not a dict of tensors")
    wrong = next((k for k, v in state.items() if not isinstance(k, str) or not torch.is_tensor(v)), None)
    if wrong is not None:
        held = state[wrong]
        if isinstance(held, dict) and held and all(torch.is_tensor(v) for v in held.values()):
            raise TypeError(f"it is a training checkpoint: save its {wrong!r} entry, a dict of tensors, on its own")
        raise TypeError(f"entry {wrong!r} holds {type(held).__name__}, not a tensor")
    return state


def _format_of(path: str) -> str | None:
    """``"safetensors"`` or ``"torch"`` when the file's first bytes show that format, else ``None``."""
    try:
        with open(path, "rb") as file:
            head = file.read(9)
    except OSError:
        return None
    if head.startswith(b"PK\x03\x04"):  # torch.save writes a zip archive
        return "torch"
    if len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < 100_000_000:
        return "safetensors"  # an 8-byte header length, then the JSON header
    return None


def _unreadable_reason(path: str, exc: BaseException) -> str:
    """Why ``path`` could not be read, in a few words (the loaders' own first line when it is short)."""
    if os.path.getsize(path) == 0:
        return "the file is empty"
    if isinstance(exc, pickle.UnpicklingError) and exc.__context__ is not None:
        exc = exc.__context__  # torch's weights-only wrapper: the cause is the useful part
    reason = first_line(exc)
    if len(reason) > 120:
        reason = reason.split(". ")[0]  # the first sentence
    return reason if len(reason) <= 120 else reason[:117] + "..."


def download(url: str) -> dict[str, Any]:
    """Download ``url`` into the hub cache and read it (torch's own path, ``weights_only=True``)."""
    with contextlib.redirect_stdout(io.StringIO()):  # torch prints "Downloading: ..." even when offline
        return torch.hub.load_state_dict_from_url(url, weights_only=True, progress=sys.stderr.isatty())


def pretrained_state(url: str, what: str, strict: bool,
                     downloader: Callable[[], dict[str, Any]]) -> tuple[dict[str, Any] | None, str]:
    """The state dict of ``url`` from the cache or a download, and where it came from.

    Offline with nothing cached, ``strict`` raises a one-line error naming the
    file to place and the folder; otherwise ``(None, "offline")`` lets the
    caller fall back (and say so).
    """
    path = cache_path(url)
    if os.path.isfile(path):
        try:
            return read_state_dict(path), f"imagenet:{path}"
        except Exception as exc:  # any unreadable file: name it and the fix
            raise RunError(f"cached {what} weights {path} could not be read ({first_line(exc)}); "
                           f"delete the file or pass weights=PATH") from None
    try:
        state = downloader()
    except Exception:  # offline, proxy, HTTP or hash errors all mean "not available"
        state = None
    if state is not None:
        return state, f"imagenet:{path}"
    if strict:
        raise RunError(f"{what} weights unavailable offline: place {os.path.basename(path)} (from {url}) "
                       f"in {os.path.dirname(path)}, or pass weights=PATH to a state dict")
    return None, "offline"


def state_from_path(path: str, what: str) -> dict[str, Any]:
    """A state dict from a user-given file.

    A missing file or a wrong suffix is a usage error; a file that cannot be read
    as a state dict is a one-line run error naming the file and the fix.
    """
    if not os.path.isfile(path):
        raise UsageError(f"{what} weights {path!r}: no such file; pass the path of a .safetensors, .pth or .pt "
                         f"state dict")
    if not path.endswith((".safetensors", ".pth", ".pt")):
        raise UsageError(f"{what} weights {path!r}: use a .safetensors, .pth or .pt state dict")
    try:
        return read_state_dict(path)
    except OSError as exc:
        raise RunError(f"could not read {what} weights {path} ({first_line(exc)})") from None
    except Exception as exc:  # torch/safetensors raise many types for a bad file
        reason = _unreadable_reason(path, exc)
        found = _format_of(path)
        if path.endswith(".safetensors"):
            fix = ("it is a torch.save file: rename it to .pth" if found == "torch"
                   else "give a state dict saved with safetensors.torch.save_file")
            raise RunError(f"{path} is not a safetensors weights file ({reason}); {fix}") from None
        fix = ("it is a safetensors file: rename it to .safetensors" if found == "safetensors"
               else f"give {what} a state dict saved with torch.save(model.state_dict(), PATH)")
        raise RunError(f"{path} is not a PyTorch weights file ({reason}); {fix}") from None

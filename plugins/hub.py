"""Pretrained weights through torch's hub cache: the cache first, a download when online.

Nothing is ever unpickled: ``.pth`` files are read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import contextlib
import io
import os
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
        raise TypeError(f"expected a state dict, found {type(state).__name__}")
    return state


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
    """A state dict from a user-given file; a missing or unreadable file is a usage error."""
    if not os.path.isfile(path):
        raise UsageError(f"{what} weights {path!r}: no such file")
    if not path.endswith((".safetensors", ".pth", ".pt")):
        raise UsageError(f"{what} weights {path!r}: use a .safetensors, .pth or .pt state dict")
    try:
        return read_state_dict(path)
    except Exception as exc:  # torch/safetensors raise many types for a bad file
        raise UsageError(f"could not load {what} weights from {path}: {first_line(exc)}") from None

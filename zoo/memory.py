"""Out-of-memory while building or moving a model: one line naming what was being done, its size, and the fix."""

from __future__ import annotations

import contextlib
import re
from typing import Iterator

from zoo.errors import RunError


@contextlib.contextmanager
def out_of_memory_said(doing: str, fix: str) -> Iterator[None]:
    """Turn an allocation failure inside into one line: ``out of memory <doing> (it asked for N); <fix>.``"""
    try:
        yield
    except RuntimeError as exc:  # torch.OutOfMemoryError is one
        asked = allocation_size(exc)
        if asked is None:
            raise
        raise RunError(f"out of memory {doing} (it asked for {asked}); {fix}.") from exc


def allocation_size(exc: RuntimeError) -> str | None:
    """What an allocator failure asked for (``"1.5 TiB"``); ``None`` when ``exc`` is no allocation failure."""
    import torch
    text = str(exc)
    if not (isinstance(exc, torch.OutOfMemoryError) or "can't allocate memory" in text
            or "tried to allocate" in text.lower()):
        return None
    found = re.search(r"tried to allocate (\d+) bytes", text, re.IGNORECASE)
    if found:
        return _bytes_text(int(found.group(1)))
    found = re.search(r"tried to allocate ([\d.]+ [KMGTP]?i?B)", text, re.IGNORECASE)
    return found.group(1) if found else "more than is free"


def _bytes_text(count: int) -> str:
    """A byte count as people read it: ``1.5 TiB``, ``512 MiB``."""
    value, unit = float(count), "bytes"
    for bigger in ("KiB", "MiB", "GiB", "TiB", "PiB"):
        if value < 1024:
            break
        value, unit = value / 1024, bigger
    return f"{value:.1f}".removesuffix(".0") + f" {unit}"

"""Image files ``zoo sample`` and ``zoo predict`` write: a name PIL can write, and one-line errors on failure."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from zoo.errors import RunError, UsageError


def check_image_path(path: Path, what: str) -> None:
    """Refuse an output path PIL cannot write (by its extension)."""
    from PIL import Image
    if path.suffix.lower() not in Image.registered_extensions():
        raise UsageError(f"{what} {path} has no image extension PIL can write; use a name ending in .png.")


def save_image(image: Any, path: Path) -> None:
    """Write a PIL image, turning an OS failure into a one-line error naming the file."""
    blocking = next((part for part in reversed(path.parents) if part.is_file()), None)
    if blocking is not None:
        raise UsageError(f"cannot write {path}: {blocking} is a file, not a folder; pick another path.")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        image.save(path)
    except (OSError, ValueError, KeyError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        raise RunError(f"cannot write {path} ({reason}); check the folder and the file name.") from None

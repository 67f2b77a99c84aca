"""Path options checked before any work: an empty path, and a run's data that is no longer where it was."""

from __future__ import annotations

import os

from zoo.config import data_present
from zoo.errors import UsageError


def no_empty_paths(**paths: str | None) -> None:
    """An empty path option (``--resume ""``, ``--out ""``...) is a mistake, not the option left out."""
    for name, value in paths.items():
        if value is not None and not value.strip():
            flag = "--" + name.replace("_", "-")
            optional = "" if name == "run" else f", or leave {flag} out"  # --run is required where it is taken
            raise UsageError(f"{flag} was given an empty path; name a folder or file{optional}.")


def check_data_there(saved_data: str | None, fix: str) -> None:
    """A run's saved --data that was a path and is gone: say so, and how to name its new place."""
    if saved_data and os.path.isabs(saved_data) and not data_present(saved_data):
        raise UsageError(f"the run's data {saved_data} is gone; if it moved, name its new place: {fix}")

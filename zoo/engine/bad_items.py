"""Unreadable samples: a failure to load one carried as a value, and what the run does with them.

A worker that cannot load a sample sends a :class:`BadItem` instead of raising, so the main
process says it in one line (or skips and counts it with ``--skip-bad-files``) whichever worker
met it. ``zoo.engine.feed`` re-exports these names, their documented home.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from zoo.errors import PluginError, RunError, ZooError


@dataclasses.dataclass(frozen=True)
class BadItem:
    """A sample that could not be loaded, carried to the main process instead of an exception."""

    index: int
    message: str
    dataset_bug: bool = False  # the item breaks the dataset contract: no --skip-bad-files can help


def as_bad_item(index: int, exc: Exception, dataset: str | None = None) -> BadItem:
    """A failure to load sample ``index`` as a value: a zoo error's first line, else the exception named
    (with the dataset's name when given: a plugin's own exception may not name its file)."""
    if isinstance(exc, ZooError):
        return BadItem(index, str(exc).splitlines()[0])
    where = f"dataset '{dataset}' sample {index}" if dataset else f"sample {index}"
    return BadItem(index, f"{where}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")


class BadSampleError(RunError):
    """A sample could not be read and --skip-bad-files is off."""

    def __init__(self, message: str = "", *, one_process: bool = True) -> None:
        # each process of a job reads its own samples: the one that met it says so
        super().__init__(message, one_process=one_process)


class WrongItemError(PluginError):
    """A dataset gave an item that breaks the item contract (a bug in the dataset plugin)."""

    def __init__(self, message: str = "", *, one_process: bool = True) -> None:
        # each process of a job reads its own items: the one that met it says so
        super().__init__(message, one_process=one_process)


class BadItems:
    """Stops the run naming an unreadable sample, or counts it with ``--skip-bad-files``."""

    def __init__(self, skip: bool) -> None:
        self.skip = skip
        self.count = 0
        self.distinct: set[int] = set()
        self.first: str | None = None

    def check(self, bad: list[BadItem]) -> None:
        """Raise a one-line error for the first bad sample unless skipping; count them."""
        if not bad:
            return
        wrong = next((item for item in bad if item.dataset_bug), None)
        if wrong is not None:
            raise WrongItemError(wrong.message)
        if not self.skip:
            raise BadSampleError(f"{bad[0].message.rstrip('.')}; or pass --skip-bad-files to skip unreadable "
                                 f"samples and count them.")
        self.count += len(bad)
        self.distinct.update(item.index for item in bad)
        self.first = self.first or bad[0].message

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint keeps of the skipped samples."""
        return {"count": self.count, "distinct": sorted(self.distinct), "first": self.first}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Take back a checkpoint's count of skipped samples."""
        self.count = state.get("count", 0)
        self.distinct = set(state.get("distinct", []))
        self.first = state.get("first")

    def summary(self) -> str | None:
        """One line on what was skipped, or ``None``."""
        if not self.count:
            return None
        times = f", {self.count} times in all" if self.count != len(self.distinct) else ""
        return f"zoo: skipped {len(self.distinct)} unreadable sample(s){times} (first: {self.first})"

"""Errors a user can act on: one or two lines naming the problem and the fix."""

from __future__ import annotations

import sys


class ZooError(Exception):
    """Base of every error zoo reports to a user without a traceback.

    ``one_process=True``: only the process that met it can say it (its own GPU, its own samples), so a
    job of several processes never leaves it to rank 0 alone.
    """

    exit_code = 1
    one_process = False  # an instance's, from __init__ (kept here for a subclass whose __init__ skips ours)

    def __init__(self, message: str = "", *, one_process: bool = False) -> None:
        super().__init__(message)
        self.one_process = one_process  # in __dict__: kept when the error is pickled to another process


class UsageError(ZooError):
    """A bad name, option, value or path given by the user (exit code 2)."""

    exit_code = 2


class AmbiguousNameError(UsageError):
    """A bare name that several plugins offer; ``spellings`` are the ``plugin:name`` choices."""

    def __init__(self, kind: str, name: str, spellings: list[str]) -> None:
        super().__init__(f"{kind} name '{name}' is offered by several plugins; pick one of: {', '.join(spellings)}.")
        self.kind, self.name, self.spellings = kind, name, spellings

    def __reduce__(self) -> tuple:  # crosses process boundaries like any exception, its attributes too
        return type(self), (self.kind, self.name, self.spellings), self.__dict__


class RunError(ZooError):
    """A failure while running: bad data, a non-finite loss, a full disk (exit code 1)."""

    exit_code = 1


class PluginError(ZooError):
    """A plugin failed to import, register or build (exit code 1)."""

    exit_code = 1


def first_line(exc: BaseException) -> str:
    """``Type: first line of the message`` (or the type alone), for one-line reports of an exception."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def part_name(part: object) -> str:
    """The name a built dataset or model was registered under (``zoo list``), for errors about what it gives;
    its class name where it was built otherwise."""
    return getattr(part, "zoo_name", None) or type(part).__name__


def name_part(part: object, name: str) -> None:
    """Record on a built part the name :func:`part_name` reports (a class with ``__slots__`` keeps none)."""
    try:
        part.zoo_name = name  # type: ignore[attr-defined]
    except AttributeError:
        pass


def kind_of(value: object) -> str:
    """A value's kind for an error about what a plugin returned: a tensor's dtype and shape, else its type."""
    torch = sys.modules.get("torch")  # no tensor exists unless torch is imported; this module never imports it
    if torch is not None and isinstance(value, torch.Tensor):
        return f"{str(value.dtype).replace('torch.', '')} tensor of shape {tuple(value.shape)}"
    if isinstance(value, (tuple, list)):
        return f"{type(value).__name__} of {len(value)}"
    return type(value).__name__

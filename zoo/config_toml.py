"""Writing a training config as TOML that ``zoo train --config`` reads back, each value with its origin.

A :class:`Line` is one key: written as ``key = value  # origin`` when the config holds it, or commented
out (``# key = value  # origin``) when the run works the value out itself, so that reading the file
back gives the very config it was printed from. TOML has no null: a value that is unset shows as
``# key: unset``.
"""

from __future__ import annotations

import dataclasses
import datetime
import math
import re
from typing import Any

UNSET = object()  # a Line's value when there is none to show
_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")
_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}
_COMMENT_COLUMN = 36  # where origins start, for lines shorter than that


@dataclasses.dataclass
class Line:
    """One key of a table: its value, where it comes from, and whether the config holds it (``active``)."""

    key: str | tuple[str, ...]  # a dotted key as a tuple (``("early_stopping", "patience")``)
    value: Any
    origin: str
    active: bool = True
    note: str = ""


@dataclasses.dataclass
class Table:
    """A ``[name]`` table (``None``: the top level), its lines, and a comment said under its header."""

    name: str | None
    lines: list[Line]
    comment: str = ""


def toml_key(key: str | tuple[str, ...]) -> str:
    """A key as TOML writes it: bare where it can be, else a quoted string; parts of a tuple joined by dots."""
    parts = (key,) if isinstance(key, str) else key
    return ".".join(part if _BARE_KEY.match(part) else toml_string(part) for part in parts)


def toml_string(text: str) -> str:
    """A TOML basic string: quotes, backslashes and control characters escaped, the rest as it is."""
    out = []
    for char in text:
        if char in _ESCAPES:
            out.append(_ESCAPES[char])
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f"\\u{ord(char):04x}")
        elif 0xD800 <= ord(char) <= 0xDFFF:  # an undecodable byte of a command-line argument
            raise ValueError(f"{text!r} holds a character that is not Unicode text")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


def toml_value(value: Any) -> str:
    """A value as TOML writes it; ValueError for what TOML cannot hold (None, objects)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)  # the shortest text that reads back as the same float
    if isinstance(value, str):
        return toml_string(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{toml_key(str(k))} = {toml_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (datetime.datetime, datetime.date, datetime.time)):
        return value.isoformat()
    raise ValueError(f"TOML cannot hold {type(value).__name__} {value!r}")


def _body(line: Line) -> str:
    """The line without its origin: ``key = value``, ``# key = value`` or ``# key: unset``."""
    key = toml_key(line.key)
    if line.value is UNSET or line.value is None:
        if line.active:
            raise ValueError(f"{key} has no value to write")
        return f"# {key}: {'None' if line.value is None else 'unset'}"
    text = f"{key} = {toml_value(line.value)}"
    return text if line.active else f"# {text}"


def render_line(line: Line) -> str:
    """One line of the file, its origin (and note) as a trailing comment."""
    body = _body(line)
    origin = f"{line.origin} ({line.note})" if line.note else line.origin
    return f"{body.ljust(_COMMENT_COLUMN)}  # {origin}"


def render(tables: list[Table], header: list[str]) -> str:
    """The whole file: ``header`` comment lines, the top level, then each table."""
    out = [f"# {text}" if text else "#" for text in header]
    for table in tables:
        if table.name is not None:
            out += ["", f"[{table.name}]"]
        elif out:
            out.append("")
        if table.comment:
            out.append(f"# {table.comment}")
        out += [render_line(line) for line in table.lines]
    return "\n".join(out) + "\n"

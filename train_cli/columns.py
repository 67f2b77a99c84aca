"""Aligned text columns, for the commands that print tables of runs (``zoo runs``, ``zoo diff``)."""

from __future__ import annotations


def aligned(rows: list[list[str]], indent: str = "") -> list[str]:
    """Each row's cells left-aligned in columns two spaces apart (every row as long as the first)."""
    if not rows:
        return []
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    return [(indent + "  ".join(cell.ljust(width) for cell, width in zip(row, widths))).rstrip() for row in rows]

"""Plain-text tables for the console: aligned columns, no borders, readable in a log file."""

from __future__ import annotations

from collections.abc import Sequence

GAP = "  "


def text_table(headers: Sequence[str], rows: Sequence[Sequence[str]], indent: str = "  ") -> list[str]:
    """Lines of a table whose columns are as wide as their widest cell; empty trailing cells are trimmed."""
    widths = [max(len(str(row[i])) for row in [headers, *rows]) for i in range(len(headers))]
    return [
        (indent + GAP.join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True))).rstrip()
        for row in [headers, *rows]
    ]

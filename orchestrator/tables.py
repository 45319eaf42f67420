"""History as tables for people: rich tables on a terminal, plain aligned columns everywhere else.

Plain output (a pipe, a CI log) has no header and no box characters, so ``awk '{print $1}'`` and grep
keep working; a terminal gets rich's table with headers, widths fitted to the screen and colour.
Every cell goes through ``clean`` first: actors, reasons and gate evidence come from users and apps
and may carry escape sequences that would rewrite the operator's terminal.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

# C0 and C1 control characters other than newline and tab (the same set cli.printable escapes).
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")

OUTCOME_STYLE = {
    "succeeded": "green",
    "failed": "bold red",
    "aborted": "yellow",
    "interrupted": "bold magenta",
    "superseded": "dim",
    "in_progress": "cyan",
    "pass": "green",
    "fail": "bold red",
}


def clean(text: object) -> str:
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", "" if text is None else str(text))


def when(value: datetime | None) -> str:
    return f"{value:%Y-%m-%d %H:%M:%S}" if value else "-"


def took(start: datetime | None, end: datetime | None) -> str:
    if start is None or end is None:
        return "-"
    seconds = (end - start).total_seconds()
    return f"{seconds:.1f}s" if seconds < 120 else f"{seconds / 60:.1f}m"


@dataclass(frozen=True)
class Column:
    """One column of a history table: its header on a terminal, its width and alignment in plain output,
    and whether its cells are coloured by outcome (``OUTCOME_STYLE``)."""

    header: str
    width: int = 0  # plain output pads to this; 0: no padding (last column, free text)
    align: str = "left"
    styled: bool = False  # colour the cell by OUTCOME_STYLE on a terminal


def render(columns: Sequence[Column], rows: Sequence[Sequence[object]], *, tty: bool, title: str = "") -> str:
    """The rows as a table: rich on a terminal (``tty``), aligned plain text otherwise."""
    cells = [[clean(cell) for cell in row] for row in rows]
    if not tty:
        lines = []
        for row in cells:
            parts = []
            for col, cell in zip(columns, row, strict=True):
                if col.width and col.align == "right":
                    parts.append(cell.rjust(col.width))
                elif col.width:
                    parts.append(cell.ljust(col.width))
                else:
                    parts.append(cell)
            lines.append("  ".join(parts).rstrip())
        return "\n".join(lines)
    from rich import box
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    table = Table(title=clean(title) or None, box=box.SIMPLE_HEAD, title_justify="left", show_edge=False)
    for col in columns:
        table.add_column(col.header, justify="right" if col.align == "right" else "left", overflow="fold")
    for row in cells:
        table.add_row(
            *(
                Text(cell, style=OUTCOME_STYLE.get(cell, "")) if col.styled else Text(cell)
                for col, cell in zip(columns, row, strict=True)
            )
        )
    console = Console(force_terminal=True, highlight=False, soft_wrap=False)
    with console.capture() as capture:
        console.print(table)
    return capture.get().rstrip("\n")

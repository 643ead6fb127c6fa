"""Tables a person reads in a terminal, and rows a script reads from a pipe. Pure: rows in,
lines out; the CLI decides which form and how wide.

On a terminal a table never cuts a cell. Columns say how much they matter: when the rows do
not fit the width, wrappable columns (reasons, messages) wrap first, down to a floor; then the
least important column goes, and so on. Columns of importance 0 (names) are never dropped or
cut: a name longer than the terminal wraps the line, as the terminal does, but stays whole.

Piped, every column is printed as tab-separated plain text, header first, one line per row,
so ``cut -f``, ``awk -F'\\t'`` and ``sort`` work; ``--json`` is for programs that want types.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from dataclasses import dataclass

from rich.text import Text

GAP = 2  # spaces between columns
WRAP_FLOOR = 24  # a wrapped column narrower than this is harder to read than a dropped one


@dataclass(frozen=True)
class Column:
    header: str
    importance: int = 1  # 0: never dropped; higher numbers are dropped first
    wrap: bool = False
    right: bool = False  # numbers line up on the right


@dataclass(frozen=True)
class Cell:
    text: str
    style: str = ""  # a rich style, shown on terminals only


CellLike = Cell | str | int | float | None
Row = Sequence[CellLike]


@dataclass(frozen=True)
class Table:
    columns: Sequence[Column]
    rows: Sequence[Row]
    title: str = ""  # above the table, on terminals only
    note: str = ""  # below it, on terminals only
    header: bool = True  # False for a list of facts, whose first column names each row


def show(tables: Sequence[Table], width: int | None) -> list[Text]:
    """Every table of a view: laid out for a terminal ``width`` columns wide, or as
    tab-separated rows (``width`` None, for a pipe) with a blank line between tables."""
    lines: list[Text] = []
    for n, table in enumerate(tables):
        if n:
            lines.append(Text())
        if width is None:
            rows = tsv(table.columns, table.rows)
            lines += [Text(line) for line in (rows if table.header else rows[1:])]
            continue
        if table.title:
            lines.append(Text(table.title, "bold"))
        if table.rows:
            rendered = render(table.columns, table.rows, width)
            lines += rendered if table.header else rendered[1:]
        if table.note:
            lines += [Text(part, "dim") for part in textwrap.wrap(table.note, width)]
    return lines


def cell(value: CellLike) -> Cell:
    if isinstance(value, Cell):
        return value
    if value is None or value == "":
        return Cell("-")
    return Cell(str(value))


def _flat(text: str) -> str:
    # agents supply some of these strings: one cell must stay one cell, on one row
    return " ".join(text.split())


def tsv(columns: Sequence[Column], rows: Sequence[Row]) -> list[str]:
    """Piped form: header then rows, every column, tab-separated, no styling."""
    lines = ["\t".join(c.header for c in columns)]
    lines += ["\t".join(_flat(cell(v).text) for v in row) for row in rows]
    return lines


def layout(columns: Sequence[Column], rows: Sequence[Row], width: int) -> list[int | None]:
    """Each column's width, or None where it was dropped to fit ``width``."""
    natural = [
        max([len(c.header), *(len(_flat(cell(row[i]).text)) for row in rows)])
        for i, c in enumerate(columns)
    ]
    shown = list(range(len(columns)))
    while True:
        widths = _fit(columns, natural, shown, width)
        if widths is not None:
            return [widths.get(i) for i in range(len(columns))]
        droppable = [i for i in shown if columns[i].importance > 0]
        if not droppable:  # only names left: never cut them
            return [natural[i] if i in shown else None for i in range(len(columns))]
        # the least important goes first; among equals, the rightmost
        shown.remove(max(droppable, key=lambda i: (columns[i].importance, i)))


def _fit(
    columns: Sequence[Column], natural: Sequence[int], shown: Sequence[int], width: int
) -> dict[int, int] | None:
    widths = {i: natural[i] for i in shown}
    over = sum(widths.values()) + GAP * (len(shown) - 1) - width
    if over <= 0:
        return widths
    wrappable = [i for i in shown if columns[i].wrap]
    for i in sorted(wrappable, key=lambda i: -natural[i]):  # the widest gives first
        floor = min(natural[i], max(WRAP_FLOOR, len(columns[i].header)))
        give = min(over, natural[i] - floor)
        widths[i] -= give
        over -= give
    return widths if over <= 0 else None


def render(
    columns: Sequence[Column], rows: Sequence[Row], width: int, *, header_style: str = "bold"
) -> list[Text]:
    """Terminal form: aligned columns that fit ``width`` (see the module docstring)."""
    widths = layout(columns, rows, width)
    shown = [(i, w) for i, w in enumerate(widths) if w is not None]
    header = [[Cell(columns[i].header, header_style)] for i, _ in shown]
    lines = [_line([columns[i] for i, _ in shown], [w for _, w in shown], header, 0)]
    for row in rows:
        stacks = []
        for i, w in shown:
            c = cell(row[i])
            parts = _wrap(_flat(c.text), w) if columns[i].wrap else [_flat(c.text)]
            stacks.append([Cell(part, c.style) for part in parts])
        for n in range(max(len(stack) for stack in stacks)):
            lines.append(_line([columns[i] for i, _ in shown], [w for _, w in shown], stacks, n))
    return lines


def _wrap(text: str, width: int) -> list[str]:
    # break_long_words: a path or id longer than the column is folded, never cut off
    return textwrap.wrap(text, width, break_long_words=True, break_on_hyphens=False) or [""]


def _line(
    columns: Sequence[Column], widths: Sequence[int], stacks: Sequence[Sequence[Cell]], n: int
) -> Text:
    """Line ``n`` of a row whose cells are ``stacks`` of wrapped parts."""
    line = Text(no_wrap=True, overflow="ignore")
    for k, (column, w, stack) in enumerate(zip(columns, widths, stacks, strict=True)):
        part = stack[n] if n < len(stack) else Cell("")
        pad = " " * max(0, w - len(part.text))
        if column.right:
            line.append(pad)
        line.append(part.text, part.style)
        if not column.right:
            line.append(pad)
        if k < len(columns) - 1:
            line.append(" " * GAP)
    line.rstrip()
    return line


def duration(seconds: float | None) -> str:
    """``1h 13m``: the two largest units, a zero second unit left out (``25m``, not
    ``25m 0s``); the same rule as the dashboard's."""
    if seconds is None:
        return "-"
    left = max(0, round(seconds))
    parts: list[str] = []
    for suffix, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if left >= size or (suffix == "s" and not parts):
            parts.append(f"{left // size}{suffix}")
            left %= size
        if len(parts) == 2:
            break
    return " ".join(p for n, p in enumerate(parts) if n == 0 or not p.startswith("0"))

"""Tables and label/value listings for every command: they fit the width, never cut.

One renderer for every table convcli prints (``summary``, ``kernels``, ``run``):

- The width is the terminal's when stdout is a terminal; otherwise ``COLUMNS`` when set,
  else 80 (what rich assumes for a pipe).
- A name or a number is never cut, folded or ellipsised. To fit, wrappable text
  (descriptions, "name (type)") wraps between words first; then secondary columns are
  left out, the least important first (their ``drop`` rank). If the essential columns
  alone are wider than the width, the table is printed wider than the width, whole.
- When stdout is not a terminal the table is plain text: no box-drawing characters and no
  colour codes, columns separated by two spaces and the header underlined with ``-``, so
  ``grep``, ``awk`` and ``column`` can read it.
"""

from __future__ import annotations

import os
import textwrap
from dataclasses import dataclass, field
from typing import Literal, Sequence

from rich.console import Console
from rich.text import Text

GAP = 2
"""Spaces between two columns."""


@dataclass(frozen=True)
class Column:
    """One column: its header, alignment, and how it gives way to a narrow width.

    ``drop``: 0 for a column that is always shown; a secondary column has a rank >= 1 and
    the column with the highest rank is left out first. ``wrap``: the cells may wrap
    between words (never inside one) down to ``min_width`` or the longest word.
    """

    header: str
    justify: Literal["left", "right"] = "left"
    drop: int = 0
    wrap: bool = False
    min_width: int = 0
    style: str = ""


@dataclass
class TableSpec:
    """A table as plain strings: every cell is shown exactly as given (no markup)."""

    columns: list[Column]
    rows: list[list[str]] = field(default_factory=list)
    title: str | None = None
    footer: list[list[str]] = field(default_factory=list)
    """Rows printed after a rule (totals)."""
    show_header: bool = True
    narrow_first: bool = True
    """Wrap the wrappable columns before leaving out secondary ones (False: the reverse)."""

    def add_row(self, *cells: str) -> None:
        """Append one row (as many cells as columns)."""
        self.rows.append(list(cells))


def is_plain(console: Console) -> bool:
    """True when the console's output is not a terminal (a pipe or a file)."""
    return not console.is_terminal


def table_width(console: Console) -> int:
    """The width to fit: the terminal's, or ``COLUMNS`` (else 80) when not a terminal."""
    if console.is_terminal:
        return console.width
    columns = os.environ.get("COLUMNS", "")
    return int(columns) if columns.isdigit() and int(columns) > 0 else 80


NBSP = "\u00a0"
"""Joins words that should stay on one line, e.g. "(Conv2D + relu)"; printed as a space."""


def _longest_word(text: str) -> int:
    return max((len(word) for word in text.replace("\n", " ").split(" ")), default=0)


def _natural(spec: TableSpec, index: int) -> int:
    cells = [row[index] for row in spec.rows + spec.footer]
    header = len(spec.columns[index].header) if spec.show_header else 0
    return max([header] + [max((len(line) for line in c.splitlines()), default=0) for c in cells])


def _minimum(spec: TableSpec, index: int) -> int:
    column = spec.columns[index]
    natural = _natural(spec, index)
    cells = [row[index] for row in spec.rows + spec.footer]
    header = _longest_word(column.header) if spec.show_header else 0  # headers wrap between words
    if not column.wrap:
        return max([header] + [len(line) for c in cells for line in c.splitlines()])
    words = max([header] + [_longest_word(c) for c in cells])
    return min(natural, max(words, column.min_width))


def fit(spec: TableSpec, width: int) -> tuple[list[int], list[int]]:
    """Choose the columns to show and their widths so the table fits ``width``.

    Returns (kept column indices, their widths). Wrappable columns narrow first (to their
    minimum), then the secondary column with the highest ``drop`` rank goes, and so on.
    """
    kept = list(range(len(spec.columns)))
    while True:
        natural = {i: _natural(spec, i) for i in kept}
        minimum = {i: _minimum(spec, i) for i in kept}
        gaps = GAP * (len(kept) - 1)
        if sum(natural.values()) + gaps <= width:
            return kept, [natural[i] for i in kept]
        droppable = [i for i in kept if spec.columns[i].drop > 0]
        if sum(minimum.values()) + gaps <= width and (spec.narrow_first or not droppable):
            # share the room left over: first whole headers, then the wrappable columns
            widths = dict(minimum)
            room = width - gaps - sum(minimum.values())
            order = sorted(kept, key=lambda i: (spec.columns[i].wrap, -natural[i]))
            for i in order:
                extra = min(room, natural[i] - widths[i])
                widths[i] += extra
                room -= extra
            return kept, [widths[i] for i in kept]
        if not droppable:  # the essential columns alone are too wide: print them whole
            return kept, [minimum[i] for i in kept]
        kept.remove(max(droppable, key=lambda i: (spec.columns[i].drop, i)))


def _cell_lines(text: str, width: int, wrap: bool) -> list[str]:
    if not wrap or len(text) <= width:
        return [line.replace(NBSP, " ") for line in text.splitlines()] or [""]
    lines: list[str] = []
    for paragraph in text.splitlines() or [""]:
        lines.extend(
            textwrap.wrap(paragraph, width, break_long_words=False, break_on_hyphens=False) or [""]
        )
    return [line.replace(NBSP, " ") for line in lines]


def render(spec: TableSpec, width: int, *, plain: bool) -> tuple[list[Text], list[str]]:
    """The table as lines of text, and the headers of the columns left out."""
    kept, widths = fit(spec, width)
    rule_char = "-" if plain else "─"
    lines: list[Text] = []
    if spec.title:
        for line in textwrap.wrap(spec.title, max(width, 20), break_long_words=False, break_on_hyphens=False):
            lines.append(Text(line, style="" if plain else "bold"))

    def row_lines(cells: Sequence[str], style_header: bool = False) -> list[Text]:
        wrapped = [
            _cell_lines(cells[i], w, spec.columns[i].wrap or style_header) for i, w in zip(kept, widths)
        ]
        out = []
        for n in range(max(len(c) for c in wrapped)):
            text = Text()
            for k, (i, w) in enumerate(zip(kept, widths)):
                column = spec.columns[i]
                cell = wrapped[k][n] if n < len(wrapped[k]) else ""
                padded = cell.rjust(w) if column.justify == "right" else cell.ljust(w)
                if k:
                    text.append(" " * GAP)
                style = "bold" if style_header else column.style
                text.append(padded, style="" if plain else style)
            text.rstrip()
            out.append(text)
        return out

    if spec.show_header:
        lines.extend(row_lines([c.header for c in spec.columns], style_header=True))
        lines.append(Text((" " * GAP).join(rule_char * w for w in widths)))
    for row in spec.rows:
        lines.extend(row_lines(row))
    if spec.footer:
        lines.append(Text((" " * GAP).join(rule_char * w for w in widths)))
        for row in spec.footer:
            lines.extend(row_lines(row))
    left_out = [spec.columns[i].header for i in range(len(spec.columns)) if i not in kept]
    return lines, left_out


def print_table(spec: TableSpec, console: Console, *, hint: str = "--json") -> None:
    """Print ``spec`` on ``console``, fitted to its width (see the module docstring).

    When columns had to be left out, a note on stderr names them (silenced by ``-q``).
    """
    width = table_width(console)
    lines, left_out = render(spec, width, plain=is_plain(console))
    for line in lines:
        console.print(line, soft_wrap=True, overflow="ignore", crop=False)
    if left_out:
        from convcli.cli._app import note

        note(f"left out {', '.join(left_out)} to fit {width} columns (a wider terminal or {hint} shows them)")


def print_pairs(
    pairs: Sequence[tuple[str, str]], console: Console, *, label_style: str = "cyan", align: bool = True
) -> None:
    """Label/value lines, the values aligned (or one space after each label); a long value
    wraps between words, indented (below its label when less than 24 columns are left)."""
    total = table_width(console)
    plain = is_plain(console)
    for label, value in pairs:
        label_width = (max(len(lb) for lb, _ in pairs) + GAP) if align else len(label) + 1
        indent = label_width if total - label_width >= 24 else GAP
        wrapped = textwrap.wrap(value, max(total - indent, 20), break_long_words=False, break_on_hyphens=False) or [""]
        if indent < label_width:  # narrow: the label alone, the value under it
            console.print(Text(label, style="" if plain else label_style), soft_wrap=True, crop=False)
            head = [" " * indent] * len(wrapped)
        else:
            head = [label.ljust(label_width)] + [" " * label_width] * (len(wrapped) - 1)
        for n, piece in enumerate(wrapped):
            text = Text(head[n], style="" if plain or indent < label_width or n else label_style)
            text.append(piece)
            console.print(text, soft_wrap=True, crop=False)

"""Tables and label/value listings on the console: the width, the style, the notes.

The layout lives in :mod:`convcli.tables` (pure Python). Here:

- The width is the terminal's when stdout is a terminal; otherwise ``COLUMNS`` when set,
  else 80 (what rich assumes for a pipe).
- On a terminal the header is bold and ruled with a line; when stdout is not a terminal
  the table is plain text: no box-drawing characters, no colour codes.
- When columns had to be left out on a terminal, a note on stderr names them (``-q``
  silences it); into a pipe the table alone is printed.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from rich.console import Console
from rich.text import Text

from convcli.tables import NBSP, Column, Segment, TableSpec, fit, pair_lines
from convcli.tables import render as render_segments

__all__ = ["NBSP", "Column", "TableSpec", "fit", "is_plain", "print_pairs", "print_table", "render", "table_width"]

_STYLES = {"title": "bold", "header": "bold", "label": "bold", "": ""}


def is_plain(console: Console) -> bool:
    """True when the console's output is not a terminal (a pipe or a file)."""
    return not console.is_terminal


def table_width(console: Console) -> int:
    """The width to fit: the terminal's, or ``COLUMNS`` (else 80) when not a terminal."""
    if console.is_terminal:
        return console.width
    columns = os.environ.get("COLUMNS", "")
    return int(columns) if columns.isdigit() and int(columns) > 0 else 80


def _text(line: list[Segment], plain: bool, label_style: str = "bold") -> Text:
    text = Text()
    for piece, style in line:
        if plain:
            text.append(piece)
        else:
            text.append(piece, style=label_style if style == "label" else _STYLES.get(style, style))
    return text


def render(spec: TableSpec, width: int, *, plain: bool) -> tuple[list[Text], list[str]]:
    """The table as rich Text lines (ruled with ``─`` on a terminal, ``-`` when plain)."""
    lines, left_out = render_segments(spec, width, rule="-" if plain else "─")
    return [_text(line, plain) for line in lines], left_out


def print_table(spec: TableSpec, console: Console, *, hint: str = "--json") -> None:
    """Print ``spec`` on ``console``, fitted to its width; a note names the columns left out."""
    width = table_width(console)
    lines, left_out = render(spec, width, plain=is_plain(console))
    # one print for the whole table (rich's per-call work dominated 800-row summaries)
    console.print(Text("\n").join(lines), soft_wrap=True, overflow="ignore", crop=False)
    if left_out and not is_plain(console):  # a terminal can be widened; a pipe is for scripts
        from convcli.cli._app import note

        note(f"left out {', '.join(left_out)} to fit {width} columns (a wider terminal or {hint} shows them)")


def print_pairs(
    pairs: Sequence[tuple[str, str]], console: Console, *, label_style: str = "cyan", align: bool = True
) -> None:
    """Label/value lines, fitted to the console's width (see :func:`convcli.tables.pair_lines`)."""
    plain = is_plain(console)
    for line in pair_lines(pairs, table_width(console), align=align):
        console.print(_text(line, plain, label_style), soft_wrap=True, crop=False)

"""Plain-text tables that fit a width and never cut a name or a number (pure Python).

Every table convcli prints goes through here (the CLI adds colour and rules on a
terminal; :meth:`convcli.summary.Summary.__str__` uses it as it is):

- A name or a number is never cut, folded or ellipsised. To fit, wrappable text
  (descriptions, "name (type)") wraps between words; secondary columns are left out, the
  least important first (their ``drop`` rank). If the essential columns alone are wider
  than the width, the table is wider than the width, whole.
- Columns are separated by two spaces and the header is underlined, so ``grep``, ``awk``
  and ``column`` can read a table from a pipe.

>>> spec = TableSpec([Column("name"), Column("params", justify="right")])
>>> spec.add_row("conv1", "34,944")
>>> print(table_text(spec))
name   params
-----  ------
conv1  34,944
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:  # pragma: no cover
    from convcli.summary import Row, Summary

GAP = 2
"""Spaces between two columns."""

NBSP = "\u00a0"
"""Joins words that should stay on one line, e.g. "(Conv2D + relu)"; printed as a space."""


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
    # each column's widths are measured once (a summary of 800 layers has 800 rows)
    all_natural = {i: _natural(spec, i) for i in kept}
    all_minimum = {i: _minimum(spec, i) for i in kept}
    while True:
        natural = {i: all_natural[i] for i in kept}
        minimum = {i: all_minimum[i] for i in kept}
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


Segment = tuple[str, str]
"""A piece of a line and its style name ("" plain, "header", or a column's style)."""


def render(spec: TableSpec, width: int, *, rule: str = "-") -> tuple[list[list[Segment]], list[str]]:
    """The table as lines of styled segments, and the headers of the columns left out."""
    kept, widths = fit(spec, width)
    lines: list[list[Segment]] = []
    if spec.title:
        for line in textwrap.wrap(spec.title, max(width, 20), break_long_words=False, break_on_hyphens=False):
            lines.append([(line, "title")])

    def row_lines(cells: Sequence[str], header: bool = False) -> list[list[Segment]]:
        wrapped = [_cell_lines(cells[i], w, spec.columns[i].wrap or header) for i, w in zip(kept, widths)]
        out = []
        for n in range(max(len(c) for c in wrapped)):
            segments: list[Segment] = []
            for k, (i, w) in enumerate(zip(kept, widths)):
                column = spec.columns[i]
                cell = wrapped[k][n] if n < len(wrapped[k]) else ""
                if k:
                    segments.append((" " * GAP, ""))
                padded = cell.rjust(w) if column.justify == "right" else cell.ljust(w)
                segments.append((padded, "header" if header else column.style))
            # no trailing spaces
            while segments and not segments[-1][0].strip():
                segments.pop()
            if segments:
                segments[-1] = (segments[-1][0].rstrip(), segments[-1][1])
            out.append(segments)
        return out

    ruler = [((" " * GAP).join(rule * w for w in widths), "")]
    if spec.show_header:
        lines.extend(row_lines([c.header for c in spec.columns], header=True))
        lines.append(ruler)
    for row in spec.rows:
        lines.extend(row_lines(row))
    if spec.footer:
        lines.append(ruler)
        for row in spec.footer:
            lines.extend(row_lines(row))
    left_out = [spec.columns[i].header for i in range(len(spec.columns)) if i not in kept]
    return lines, left_out


def table_text(spec: TableSpec, width: int = 80) -> str:
    """The table as plain text fitted to ``width`` (no trailing newline)."""
    lines, _ = render(spec, width)
    return "\n".join("".join(text for text, _ in line) for line in lines)


def pair_lines(pairs: Sequence[tuple[str, str]], width: int, *, align: bool = True) -> list[list[Segment]]:
    """Label/value lines, the values aligned (or one space after each label); a long value
    wraps between words, indented (below its label when less than 24 columns are left)."""
    lines: list[list[Segment]] = []
    for label, value in pairs:
        label_width = (max(len(lb) for lb, _ in pairs) + GAP) if align else len(label) + 1
        indent = label_width if width - label_width >= 24 else GAP
        wrapped = textwrap.wrap(value, max(width - indent, 20), break_long_words=False, break_on_hyphens=False) or [""]
        if indent < label_width:  # narrow: the label alone, the value under it
            lines.append([(label, "label")])
            lines.extend([(" " * indent, ""), (piece, "")] for piece in wrapped)
            continue
        lines.append([(label.ljust(label_width), "label"), (wrapped[0], "")])
        lines.extend([(" " * label_width, ""), (piece, "")] for piece in wrapped[1:])
    return lines


# --------------------------------------------------------------------------------------
# The summary table (convcli summary, Summary.__str__)
# --------------------------------------------------------------------------------------


def readable_size(n_bytes: int) -> str:
    """Bytes as Keras' summary prints them (1024-based, two decimals).

    >>> readable_size(553430176), readable_size(0)
    ('527.79 MB', '0.00 B')
    """
    size = float(n_bytes)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if size < 1024:
            return f"{size:.2f} {unit}"
        size /= 1024
    return f"{size:.2f} PB"


def readable_count(n: int) -> str:
    """A large count with an SI suffix.

    >>> readable_count(15_470_264_320), readable_count(999)
    ('15.47 G', '999')
    """
    for value, suffix in ((10**12, "T"), (10**9, "G"), (10**6, "M"), (10**3, "K")):
        if n >= value:
            return f"{n / value:.2f} {suffix}"
    return str(n)


def shape_text(shape: Sequence[int | None]) -> str:
    """A shape as H x W x D, as every convcli command prints it.

    >>> shape_text((224, 224, 64))
    '224x224x64'
    """
    return "x".join(str(n) for n in shape)


def _layer_label(row: Row) -> str:
    """``name (type)``; the type keeps to one line (NBSP) when the cell wraps."""
    if row.type == "Activation":
        kind = f"({row.type}: {row.activation})"
    elif row.activation:
        kind = f"({row.type} + {row.activation})"
    else:
        kind = f"({row.type})"
    return f"{row.name} {kind.replace(' ', NBSP)}"


def _receptive_field(row: Row) -> str:
    if row.receptive_field is None:
        return "all"
    rh, rw, jh, jw = row.receptive_field
    return f"{rh} ({jh})" if (rh, jh) == (rw, jw) else f"{rh}x{rw} ({jh}x{jw})"


def summary_table(summary: Summary) -> TableSpec:
    """The per-layer table: name (type), output shape and parameters always; the unshared
    count, memory, receptive field, the inputs of each layer (graphs only, as Keras'
    "Connected to") and MACs give way, in that order, to a narrow width."""
    graph = not summary.is_chain
    columns = [
        Column("Layer (type)", wrap=True),
        Column("Output Shape"),
        Column("Param #", justify="right"),
        Column("Unshared #", justify="right", drop=5),
        Column("MACs", justify="right", drop=1),
        Column("RF (jump)", justify="right", drop=3),
        Column("Memory", justify="right", drop=4),
    ]
    if graph:
        columns.append(Column("Connected to", wrap=True, drop=2))
    spec = TableSpec(title=f'Model: "{summary.name}"', narrow_first=False, columns=columns)
    for row in summary.rows:
        cells = [
            _layer_label(row),
            shape_text(row.output_shape),
            f"{row.params:,}",
            "" if row.params_unshared is None else f"{row.params_unshared:,}",
            f"{row.macs:,}",
            _receptive_field(row),
            readable_size(row.activation_bytes),
        ]
        if graph:
            cells.append(", ".join(row.inputs))
        spec.add_row(*cells)
    return spec


def summary_totals(summary: Summary) -> list[tuple[str, str]]:
    """The totals under the table, as label/value pairs."""
    float32 = 4
    return [
        ("Total params:", f"{summary.total_params:,} ({readable_size(summary.params_bytes)})"),
        ("Trainable params:", f"{summary.trainable_params:,} "
         f"({readable_size(summary.trainable_params * float32)})"),
        ("Non-trainable params:", f"{summary.non_trainable_params:,} "
         f"({readable_size(summary.non_trainable_params * float32)})"),
        ("MACs:", f"{summary.total_macs:,} ({readable_count(summary.total_macs)}); "
         f"FLOPs = 2 x MACs: {summary.total_flops:,} ({readable_count(summary.total_flops)})"),
        ("Peak activation memory:", f"{readable_size(summary.peak_activation_bytes)} "
         "(outputs alive while one layer runs, float32, batch of 1)"),
    ]


def summary_text(summary: Summary, width: int = 80) -> str:
    """The summary as ``convcli summary`` prints it into a pipe: table, totals, notes."""
    lines, _ = render(summary_table(summary), width)
    lines += pair_lines(summary_totals(summary), width, align=False)
    floored = [row for row in summary.rows if getattr(row, "note", None)]
    if floored:
        lines.append([("Sizes floored as Keras does (the windows do not fit exactly):", "")])
        lines += pair_lines([(f"  {row.name}:", str(row.note)) for row in floored], width, align=False)
    return "\n".join("".join(text for text, _ in line) for line in lines)

"""`convcli kernels`: list the kernel library, or show one kernel (the command-line layer).

The library itself lives in :mod:`convcli.kernels` (numpy only, no scipy or Pillow, so this
command starts fast); it is imported inside the command.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from convcli.cli._app import app, examples, note, out_console, print_json, quiet_option
from convcli.errors import ConvcliError, InputError

if TYPE_CHECKING:  # pragma: no cover
    from convcli.cli._tables import TableSpec
    from convcli.kernels import GradientPair, Kernel, LibraryEntry


def _origin(item: Kernel | GradientPair, overrides: bool) -> str:
    if item.builtin:
        return "built-in"
    return "user (overrides built-in)" if overrides else "user"


def kernel_json(item: Kernel | GradientPair, overrides: bool = False) -> dict[str, Any]:
    """The JSON object for one kernel or pair (``matrix`` holds the effective values)."""
    from convcli.kernels import GradientPair

    common: dict[str, Any] = {
        "name": item.name,
        "description": item.description,
        "source": item.source,
        "path": str(item.path) if item.path else None,
        "builtin": item.builtin,
        "overrides_builtin": overrides,
    }
    if isinstance(item, GradientPair):
        return {
            **common,
            "kind": "pair",
            "x": item.x.name,
            "y": item.y.name,
            "combine": "sqrt(gx^2 + gy^2)",
            "size": list(item.x.shape),
        }
    return {
        **common,
        "kind": "kernel",
        "size": list(item.shape),
        "scale": str(item.scale) if item.scale is not None else None,
        "matrix": item.weights.tolist(),
        "written": item.written.tolist(),
        "sum": item.total,
        "rank": item.rank,
        "separable": item.separable,
        "factors": (
            None
            if (factors := item.separable_factors()) is None
            else {"column": factors[0], "row": factors[1]}
        ),
    }


def _list_table(entries: list[LibraryEntry]) -> TableSpec:
    """The library as a table: name always; the description wraps; size, scale and origin
    give way, in that order, to a narrow width."""
    from convcli.cli._tables import NBSP, Column, TableSpec
    from convcli.kernels import GradientPair

    columns = [
        Column("name", style="bold"),
        Column("size", drop=3),
        Column("scale", drop=2),
        Column("description", wrap=True, min_width=16),
    ]
    show_origin = any(not e.item.builtin for e in entries)
    if show_origin:
        columns.append(Column("from", drop=1, wrap=True))
    table = TableSpec(columns=columns, title="convcli kernel library")
    for entry in entries:
        item = entry.item
        if isinstance(item, GradientPair):
            row = [item.name, f"{item.x.size_label} pair", "", item.description or f"sqrt({item.x.name}² + {item.y.name}²)"]
        else:
            scale = str(item.scale) if item.scale is not None else ""
            row = [item.name, item.size_label, scale, item.description]
        if show_origin:
            row.append(_origin(item, entry.overrides).replace("overrides built-in", f"overrides{NBSP}built-in"))
        table.add_row(*row)
    return table


def _matrix_table(kernel: Kernel) -> TableSpec:
    from convcli.cli._tables import Column, TableSpec
    from convcli.kernels import format_number

    written = kernel.written
    table = TableSpec(columns=[Column("", justify="right") for _ in range(written.shape[1])], show_header=False)
    for row in written:
        table.add_row(*(format_number(v) for v in row))
    return table


def _draw(item: Kernel | GradientPair, path: Path) -> None:
    """``--png``: the kernel (each kernel of a pair, side by side) as a heatmap."""
    from convcli import fileio, pictures
    from convcli.kernels import GradientPair, format_number

    fileio.check_writable(path, "--png")
    parts = [item.x, item.y] if isinstance(item, GradientPair) else [item]
    drawn = []
    for kernel in parts:
        labels = [[format_number(v) for v in row] for row in kernel.written]
        title = kernel.name + (f" (x {kernel.scale})" if kernel.scale is not None else "")
        drawn.append(pictures.kernel_heatmap(kernel.weights, labels, title))
    picture = drawn[0] if len(drawn) == 1 else pictures.side_by_side(drawn)
    pictures.save_png(picture, str(path), "--png")
    note(f"wrote {path} ({picture.width}x{picture.height})")


def _show_kernel(kernel: Kernel, overrides: bool) -> None:
    from rich.markup import escape

    from convcli.cli._tables import print_table
    from convcli.kernels import format_number

    out_console.print(f"[bold]{escape(kernel.name)}[/]: {escape(kernel.description)}")
    if kernel.scale is not None:
        out_console.print(f"scale: {kernel.scale}  (effective weights = {kernel.scale} × matrix)")
    print_table(_matrix_table(kernel), out_console)
    exact = kernel.exact_total()
    total = f"{exact}" if exact is not None else format_number(kernel.total)
    factors = kernel.separable_factors()
    if factors is not None:
        column, row = (" ".join(str(v) for v in f) for f in factors)
        separable = f"yes (rank 1): column [{column}] × row [{row}]"
    elif kernel.separable:
        separable = "yes (rank 1: a column times a row, two 1-D passes)"
    else:
        separable = f"no (rank {kernel.rank})"
    out_console.print(f"size: {kernel.size_label}   sum: {total}   separable: {separable}")
    if kernel.source:
        out_console.print(f"source: {escape(kernel.source)}")
    if kernel.path is not None:
        out_console.print(f"file: {escape(str(kernel.path))} ({_origin(kernel, overrides)})")


@app.command(
    "kernels",
    epilog=examples(
        "convcli kernels",
        "convcli kernels sobel-x",
        "convcli kernels gaussian5 --png gaussian5.png",
        "convcli kernels --json",
    ),
)
def kernels_command(
    name: str | None = typer.Argument(
        None, metavar="NAME", help="A library name, a kernel file or an inline matrix to show."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON (effective values, scale applied)."),
    kernel_path: list[Path] = typer.Option(
        [], "--kernel-path", metavar="DIR", help="Extra folder of kernel files (repeatable; wins over built-ins)."
    ),
    png: Path | None = typer.Option(
        None, "--png", metavar="FILE.png",
        help="Draw the kernel as a heatmap (values in the cells, blue < 0 < red).", show_default=False,
    ),
    quiet: bool = quiet_option(),
) -> None:
    """List the kernel library, or show one kernel's matrix, scale and properties."""
    from rich.markup import escape

    from convcli.kernels import GradientPair, KernelLibrary, resolve_kernel

    if png is not None and name is None:
        raise InputError("--png draws one kernel: give its NAME (convcli kernels NAME --png FILE.png)")
    if png is not None and png.suffix.lower() != ".png":
        raise InputError(f"--png writes a .png file; give a name ending in .png. Received: {png}")
    library = KernelLibrary.from_environment(kernel_path)
    if name is None:
        entries = library.entries()
        if as_json:
            print_json([kernel_json(e.item, e.overrides) for e in entries])
        else:
            from convcli.cli._tables import print_table

            print_table(_list_table(entries), out_console)
            overridden = [e.item.name for e in entries if e.overrides]
            if overridden:
                note(f"user kernels override built-ins: {', '.join(overridden)}")
        return

    item = resolve_kernel(name, kernel_path)
    if png is not None:
        _draw(item, png)
        return
    overrides = False
    if not item.builtin and item.path is not None and item.path.parent in library.user_folders:
        try:
            KernelLibrary([]).get(item.name)
            overrides = True
        except ConvcliError:
            overrides = False
    if as_json:
        print_json(kernel_json(item, overrides))
        return
    if isinstance(item, GradientPair):
        out_console.print(f"[bold]{escape(item.name)}[/]: {escape(item.description)}")
        out_console.print(f"gradient pair: sqrt(gx² + gy²) with gx = {escape(item.x.name)}, gy = {escape(item.y.name)}\n")
        for part in (item.x, item.y):
            _show_kernel(part, overrides)
            out_console.print()
    else:
        _show_kernel(item, overrides)

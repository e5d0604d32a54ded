"""`convcli kernels`: list the kernel library, or show one kernel (the command-line layer).

The library itself lives in :mod:`convcli.kernels` (numpy only, no scipy or Pillow, so this
command starts fast); it is imported inside the command.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from convcli.cli._app import app, out_console, print_json
from convcli.errors import ConvcliError

if TYPE_CHECKING:  # pragma: no cover
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


def _list_table(entries: list[LibraryEntry]) -> Any:
    from rich.markup import escape
    from rich.table import Table

    from convcli.kernels import GradientPair

    table = Table(title="convcli kernel library", title_justify="left")
    table.add_column("name", style="bold", no_wrap=True)
    table.add_column("size", no_wrap=True)
    table.add_column("scale", no_wrap=True)
    table.add_column("description", ratio=1)
    show_origin = any(not e.item.builtin for e in entries)
    if show_origin:
        table.add_column("from", no_wrap=True)
    for entry in entries:
        item = entry.item
        if isinstance(item, GradientPair):
            row = [escape(item.name), f"{item.x.size_label} pair", "", escape(item.description or f"sqrt({item.x.name}² + {item.y.name}²)")]
        else:
            scale = str(item.scale) if item.scale is not None else ""
            row = [escape(item.name), item.size_label, scale, escape(item.description)]
        if show_origin:
            origin = _origin(item, entry.overrides)
            row.append(f"[yellow]{origin}[/]" if entry.overrides else origin)
        table.add_row(*row)
    return table


def _matrix_table(kernel: Kernel) -> Any:
    from rich.table import Table

    from convcli.kernels import format_number

    written = kernel.written
    table = Table(show_header=False, box=None, padding=(0, 1))
    for _ in range(written.shape[1]):
        table.add_column(justify="right")
    for row in written:
        table.add_row(*(format_number(v) for v in row))
    return table


def _show_kernel(kernel: Kernel, overrides: bool) -> None:
    from rich.markup import escape

    from convcli.kernels import format_number

    out_console.print(f"[bold]{escape(kernel.name)}[/]: {escape(kernel.description)}")
    if kernel.scale is not None:
        out_console.print(f"scale: {kernel.scale}  (effective weights = {kernel.scale} × matrix)")
    out_console.print(_matrix_table(kernel))
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


@app.command("kernels")
def kernels_command(
    name: str | None = typer.Argument(
        None, metavar="NAME", help="A library name, a kernel file or an inline matrix to show."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON (effective values, scale applied)."),
    kernel_path: list[Path] = typer.Option(
        [], "--kernel-path", metavar="DIR", help="Extra folder of kernel files (repeatable; wins over built-ins)."
    ),
) -> None:
    """List the kernel library, or show one kernel's matrix, scale and properties."""
    from rich.markup import escape

    from convcli.kernels import GradientPair, KernelLibrary, resolve_kernel

    library = KernelLibrary.from_environment(kernel_path)
    if name is None:
        entries = library.entries()
        if as_json:
            print_json([kernel_json(e.item, e.overrides) for e in entries])
        else:
            out_console.print(_list_table(entries))
            overridden = [e.item.name for e in entries if e.overrides]
            if overridden:
                out_console.print(f"user kernels override built-ins: {', '.join(overridden)}")
        return

    item = resolve_kernel(name, kernel_path)
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

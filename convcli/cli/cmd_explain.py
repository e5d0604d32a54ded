"""`convcli explain`: the lecture's hand computation for one output value (command-line layer).

The arithmetic lives in :mod:`convcli.explain`; kernels come from :mod:`convcli.kernels`
and images from :mod:`convcli.images` (Pillow), all imported inside the command.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from convcli.cli._app import app, examples, fail, out_console, print_json
from convcli.errors import InputError

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

    from convcli.explain import Explanation

_DEFAULT_MAX_PIXELS = 178_956_970  # = convcli.images.DEFAULT_MAX_PIXELS (Pillow's limit)


def parse_at(text: str) -> tuple[int, int]:
    """``"120,45"`` -> (x=120, y=45): X is the column, Y the row.

    >>> parse_at("3, 2")
    (3, 2)
    """
    parts = [p.strip() for p in text.split(",")]
    if len(parts) != 2 or not all(p.lstrip("-").isascii() and p.lstrip("-").isdigit() for p in parts):
        raise InputError(f"Invalid value for `--at`: expected X,Y (column, row), e.g. --at 120,45. Received: {text}")
    return int(parts[0]), int(parts[1])


def _region_matrix(spec: str) -> np.ndarray:
    """``--region``: an inline matrix, or a .npy / plain-text matrix file."""
    from convcli.errors import KernelError
    from convcli.kernels import load_matrix_file, parse_matrix

    path = Path(spec).expanduser()
    try:
        exists = path.is_file()
    except OSError:
        exists = False
    try:
        kernel = load_matrix_file(path) if exists else parse_matrix(spec, where=f"--region {spec!r}")
    except KernelError as exc:  # same parser as kernels, but the message should say region
        raise InputError(str(exc).replace("a kernel", "a region").replace("the kernel", "the region")) from None
    return kernel.weights


def _grid(title: str, matrix: Any, *, caption: str | None = None) -> Any:
    from rich import box
    from rich.table import Table

    from convcli.cli._tables import is_plain
    from convcli.kernels import format_number

    # a grid drawn with box characters on a terminal; plain columns in a pipe or a file
    table = Table(title=title, caption=caption, show_header=False,
                  box=None if is_plain(out_console) else box.SQUARE, padding=(0, 1))
    for _ in range(matrix.shape[1]):
        table.add_column(justify="right")
    for row in matrix:
        table.add_row(*(format_number(float(v)) for v in row))
    return table


def _sum_line(result: Explanation) -> str:
    from convcli.kernels import format_number

    exact = result.exact_sum
    if exact is not None and exact.denominator != 1:
        text = f"sum = {exact} = {result.sum:.4f}"
    elif exact is not None:
        text = f"sum = {exact}"
    else:
        text = f"sum = {format_number(result.sum)}"
    if result.sum != result.rounded:
        text += f" ≈ {result.rounded}"
    return text


@app.command(
    "explain",
    epilog=examples(
        'convcli explain --region "93 139 101; 26 252 196; 135 230 18" --kernel box3',
        "convcli explain samples/camera.png --at 120,45 --kernel sobel-x",
        "convcli explain samples/astronaut.png --at 200,150 --kernel curve --gray --json",
    ),
)
def explain_command(
    image: str | None = typer.Argument(
        None, metavar="IMAGE", help="Image (or .npy) to take the region from, with --at X,Y."
    ),
    kernel: str = typer.Option(
        ..., "--kernel", "-k", metavar="K", help="Library name, kernel file or inline matrix."
    ),
    at: str | None = typer.Option(
        None, "--at", metavar="X,Y", help="Centre of the region in IMAGE: X column, Y row (0-based)."
    ),
    region: str | None = typer.Option(
        None, "--region", metavar="MATRIX", help='The region itself: "93 139 101; 26 252 196; 135 230 18" or a file.'
    ),
    mode: str = typer.Option(
        "reflect", "--mode", "-m", metavar="[reflect|constant|nearest|mirror|wrap]",
        help="Border handling near the image edge, as in filter.",
    ),
    cval: float = typer.Option(0.0, "--cval", help="Value outside the image for --mode constant."),
    channel: int = typer.Option(0, "--channel", "-c", help="Colour channel of IMAGE to use (0 = red or gray)."),
    gray: bool = typer.Option(False, "--gray", help="Use the luma of IMAGE (0.299 R + 0.587 G + 0.114 B), as filter --gray."),
    max_pixels: int = typer.Option(
        _DEFAULT_MAX_PIXELS, "--max-pixels", metavar="N", help="Refuse images with more pixels (0: no limit)."
    ),
    kernel_path: list[Path] = typer.Option(
        [], "--kernel-path", metavar="DIR", help="Extra folder of kernel files (repeatable)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON: region, kernel, products, sum."),
) -> None:
    """Show one convolution by hand: region, kernel, products and their sum."""
    from convcli.cli.cmd_filter import check_mode
    from convcli.explain import explain, region_at
    from convcli.kernels import GradientPair, resolve_kernel

    if (at is None) == (region is None):
        fail("give either IMAGE --at X,Y or --region MATRIX (exactly one of --at and --region)")
    if region is not None and image is not None:
        fail(f"--region takes the values themselves; IMAGE ({image}) is only used with --at X,Y")
    if at is not None and image is None:
        fail("--at X,Y needs an IMAGE to take the region from")
    check_mode(mode)

    item = resolve_kernel(kernel, kernel_path)
    if isinstance(item, GradientPair):
        raise InputError(
            f"explain shows one kernel; {item.name!r} is a gradient pair (sqrt(gx² + gy²)): "
            f"explain {item.x.name} and {item.y.name} one at a time"
        )

    where: dict[str, Any] = {}
    if at is not None:
        from convcli.images import read_image

        x, y = parse_at(at)
        loaded = read_image(image, max_pixels=max_pixels or None, gray=gray)  # type: ignore[arg-type]
        channels = loaded.data.shape[2]
        if not 0 <= channel < channels:
            raise InputError(f"--channel {channel} is out of range: {image} has {channels} channel(s), 0..{channels - 1}")
        values = region_at(loaded.data[:, :, channel], x, y, item.shape, mode=mode, cval=cval)
        where = {"image": str(image), "at": {"x": x, "y": y}, "channel": channel, "gray": gray, "mode": mode}
    else:
        values = _region_matrix(region)  # type: ignore[arg-type]

    result = explain(values, item.weights, scale=item.scale, matrix=item.written)

    if as_json:
        print_json(
            {
                **where,
                "kernel_name": item.name,
                "scale": str(item.scale) if item.scale is not None else None,
                "region": result.region.tolist(),
                "kernel": result.weights.tolist(),
                "kernel_written": result.matrix.tolist(),
                "products": result.products.tolist(),
                "sum": result.sum,
                "sum_exact": str(result.exact_sum) if result.exact_sum is not None else None,
                "rounded": result.rounded,
            }
        )
        return

    from rich.columns import Columns
    from rich.markup import escape

    if where:
        head = f"region of {escape(str(image))} centred on x={where['at']['x']}, y={where['at']['y']}"
        head += " (luma)" if gray else f" (channel {channel})"
        head += f", border mode {mode}"
    else:
        head = "region given with --region"
    out_console.print(f"{head}; kernel [bold]{escape(item.name)}[/]")
    scale_caption = f"scale {item.scale}" if item.scale is not None else None
    out_console.print(
        Columns(
            [
                _grid("region", result.region),
                _grid("kernel", result.matrix, caption=scale_caption),
                _grid("products", result.products),
            ],
            padding=(0, 2),
        )
    )
    out_console.print(f"[bold]{_sum_line(result)}[/]")

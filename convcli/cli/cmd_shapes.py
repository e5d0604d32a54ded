"""`convcli shapes`: the lecture's arithmetic for one CONV or POOL layer.

Imports only pure-Python core modules (no numpy, scipy or Pillow) so it starts fast.
"""

from __future__ import annotations

import typer

from convcli.cli._app import app, examples, out_console, print_json


def _padding(value: str) -> int | str:
    text = value.strip().lower()
    if text in ("same", "valid"):
        return text
    try:
        return int(text)
    except ValueError:
        return value  # the core refuses it with the allowed values


@app.command(
    "shapes",
    # the lecture writes --W, --F, ...; any case works (--w, --WIDTH)
    context_settings={"token_normalize_func": str.lower},
    epilog=examples(
        "convcli shapes --width 227 --kernel-size 11 --stride 4 --filters 96",
        "convcli shapes --W 227 --F 11 --S 4 --K 96",
        "convcli shapes --width 224 --kernel-size 2 --stride 2 --depth 64 --pool",
        "convcli shapes --width 32 --kernel-size 5 --padding same --json",
    ),
)
def shapes_command(
    width: int = typer.Option(..., "--width", "--W", metavar="W", help="Input width."),
    height: int | None = typer.Option(None, "--height", "--H", metavar="H", help="Input height (default: W)."),
    kernel: int = typer.Option(
        ..., "--kernel-size", "--F", metavar="F", help="Filter (receptive field) or pool size."
    ),
    stride: int = typer.Option(1, "--stride", "--S", "-s", metavar="S", help="Stride."),
    padding: str = typer.Option(
        "0", "--padding", "--P", "-p", metavar="P|same|valid",
        help="Zero padding per side: an integer, same (Keras) or valid.",
    ),
    depth: int = typer.Option(3, "--depth", "--D", metavar="D", help="Input depth (channels)."),
    filters: int = typer.Option(
        1, "--filters", "--K", metavar="K", help="Number of filters (output depth of a CONV layer)."
    ),
    dilation: int = typer.Option(1, "--dilation", metavar="N", help="Dilation rate (1 = none)."),
    pool: bool = typer.Option(False, "--pool", help="A POOL layer: output depth D, no parameters."),
    json_output: bool = typer.Option(False, "--json", help="Print one JSON document."),
) -> None:
    """Output size, neurons, parameters and MACs of one CONV or POOL layer, worked out.

    Sizes print as H x W x D (height, width, depth), as summary and run print them.
    """
    from rich.markup import escape

    from convcli.cli._tables import print_pairs
    from convcli.summary import layer_arithmetic

    a = layer_arithmetic(
        width, height, kernel=kernel, stride=stride, padding=_padding(padding), depth=depth,
        filters=filters, dilation=dilation, pool=pool,
    )
    if json_output:
        print_json(a.to_json())
        return

    h, w, d = a.input_shape
    oh, ow, od = a.output_shape
    k_eff = a.width.kernel
    pad_text = str(a.padding)
    if pool:
        head = f"POOL layer: input {h}x{w}x{d}, window {kernel}x{kernel}, stride {stride}, padding {pad_text}"
    else:
        head = (
            f"CONV layer: input {h}x{w}x{d}, K = {filters} filter{'s' if filters != 1 else ''} of {kernel}x{kernel}x{d}, "
            f"stride {stride}, padding {pad_text}"
            + (f", dilation {dilation} (covers {k_eff}x{k_eff})" if dilation != 1 else "")
        )
    out_console.print(f"[bold]{escape(head)}[/]")
    rows: list[tuple[str, str]] = [
        ("output height", f"{a.height.formula} = {a.height.substituted}"),
        ("output width", f"{a.width.formula} = {a.width.substituted}"),
        ("output volume", f"{oh} x {ow} x {od}"
         + ("  (depth D: pooling keeps the depth)" if pool else f"  (depth K = {filters})")),
        ("neurons", f"{oh} * {ow} * {od} = {a.neurons:,}"),
    ]
    if pool:
        rows += [
            ("parameters", "0 (pooling has no weights)"),
            ("window size", f"{kernel} * {kernel} = {kernel * kernel} values per output (max or average)"),
        ]
    else:
        n_fd = a.weights_per_filter
        rows += [
            ("weights per filter", f"F * F * D = {kernel} * {kernel} * {d} = {n_fd:,} (+1 bias)"),
            ("parameters, shared", f"K * F * F * D + K = {filters} * {n_fd:,} + {filters} = {a.params_shared:,}"),
            ("parameters, unshared",
             f"neurons * (F * F * D + 1) = {a.neurons:,} * {n_fd + 1:,} = {a.params_unshared:,}  (locally connected)"),
            ("multiply-accumulates",
             f"neurons * F * F * D = {a.neurons:,} * {n_fd:,} = {a.macs:,}  ({2 * a.macs:,} FLOPs)"),
        ]
    print_pairs(rows, out_console)

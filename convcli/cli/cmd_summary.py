"""`convcli summary`: a Keras-style table of a model's per-layer arithmetic.

Imports only pure-Python core modules (no numpy, scipy or Pillow).
"""

from __future__ import annotations

import typer

from convcli.cli._app import app, fail, out_console, print_json


def readable_size(n_bytes: int) -> str:
    """Bytes as Keras' summary prints them (1024-based, two decimals): ``527.79 MB``, ``0.00 B``."""
    size = float(n_bytes)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if size < 1024:
            return f"{size:.2f} {unit}"
        size /= 1024
    return f"{size:.2f} PB"


def readable_count(n: int) -> str:
    """A large count with an SI suffix: ``15.47 G``."""
    for value, suffix in ((10**12, "T"), (10**9, "G"), (10**6, "M"), (10**3, "K")):
        if n >= value:
            return f"{n / value:.2f} {suffix}"
    return str(n)


def _shape(shape: tuple[int, ...]) -> str:
    return str(tuple(shape))


@app.command("summary")
def summary_command(
    model_source: str = typer.Argument(
        ...,
        metavar="MODEL",
        help='Arrow notation ("INPUT(32,32,1) => CONV(6,5) => ..."), a .toml file or a Keras .json file.',
    ),
    json_output: bool = typer.Option(False, "--json", help="Print one JSON document."),
    csv_output: bool = typer.Option(False, "--csv", help="Print the per-layer table as CSV."),
    dot_output: bool = typer.Option(
        False, "--dot", help="Print the graph in Graphviz DOT (draw it with: | dot -Tsvg > model.svg)."
    ),
    input_shape: str | None = typer.Option(
        None, "--input-shape", metavar="H,W,D", help="The input size a Keras model leaves open (None).",
        show_default=False,
    ),
) -> None:
    """Per-layer output shapes, parameters, MACs, receptive fields and memory of a model."""
    from rich.markup import escape
    from rich.measure import Measurement
    from rich.table import Table

    from convcli.spec import load_model, parse_input_shape
    from convcli.summary import BYTES_PER_FLOAT32, summarize

    if json_output + csv_output + dot_output > 1:
        fail("choose one of --json, --csv and --dot")
    shape = parse_input_shape(input_shape) if input_shape is not None else None
    summary = summarize(load_model(model_source, shape))

    if dot_output:
        out_console.file.write(summary.to_dot() + "\n")
        return
    if json_output:
        print_json(summary.to_json())
        return
    if csv_output:
        import csv
        import sys

        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerows(summary.csv_rows())
        return

    table = Table(title=f'Model: "{escape(summary.name)}"', title_justify="left", title_style="bold")
    table.add_column("Layer (type)", no_wrap=True)
    table.add_column("Output Shape", no_wrap=True)
    table.add_column("Param #", justify="right", no_wrap=True)
    table.add_column("Unshared #", justify="right", no_wrap=True)
    table.add_column("MACs", justify="right", no_wrap=True)
    table.add_column("RF (jump)", justify="right", no_wrap=True)
    table.add_column("Memory", justify="right", no_wrap=True)
    for row in summary.rows:
        if row.receptive_field is None:
            rf = "all"
        else:
            rh, rw, jh, jw = row.receptive_field
            rf = f"{rh} ({jh})" if (rh, jh) == (rw, jw) else f"{rh}x{rw} ({jh}x{jw})"
        table.add_row(
            f"{escape(row.name)} ({row.type}"
            + (f": {row.activation})" if row.type == "Activation" else f" + {row.activation})" if row.activation else ")"),
            _shape(row.output_shape),
            f"{row.params:,}",
            "" if row.params_unshared is None else f"{row.params_unshared:,}",
            f"{row.macs:,}" if row.macs else "0",
            rf,
            readable_size(row.activation_bytes),
        )
    # never squeeze the numbers: the table takes the width it needs
    width = Measurement.get(out_console, out_console.options.update_width(1000), table).maximum
    saved = out_console.width
    out_console.width = max(width, saved)
    try:
        out_console.print(table)
    finally:
        out_console.width = saved
    out_console.print(
        f"[bold] Total params:[/] {summary.total_params:,} ({readable_size(summary.params_bytes)})"
    )
    out_console.print(
        f"[bold] Trainable params:[/] {summary.trainable_params:,} "
        f"({readable_size(summary.trainable_params * BYTES_PER_FLOAT32)})"
    )
    out_console.print(
        f"[bold] Non-trainable params:[/] {summary.non_trainable_params:,} "
        f"({readable_size(summary.non_trainable_params * BYTES_PER_FLOAT32)})"
    )
    out_console.print(
        f"[bold] MACs:[/] {summary.total_macs:,} ({readable_count(summary.total_macs)}); "
        f"FLOPs = 2 x MACs: {summary.total_flops:,} ({readable_count(summary.total_flops)})"
    )
    out_console.print(
        f"[bold] Peak activation memory:[/] {readable_size(summary.peak_activation_bytes)} "
        "(largest input + output of one layer, float32, batch of 1)"
    )
    floored = [row for row in summary.rows if row.note]
    if floored:
        out_console.print(" Sizes floored as Keras does (the windows do not fit exactly):")
        for row in floored:
            out_console.print(f"   {escape(row.name)}: {row.note}")

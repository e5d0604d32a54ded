"""`convcli loss`: the command-line layer over :mod:`convcli.losses`."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import typer

from convcli.cli._app import app, examples, fail, out_console, print_json

if TYPE_CHECKING:
    import numpy as np

# Per-sample values are listed for humans up to this many samples (all of them in --json).
_MAX_ROWS_SHOWN = 10


@app.command(
    "loss",
    epilog=examples(
        'convcli loss mse --true "1 2 3" --pred "1 2 4"',
        'convcli loss categorical-crossentropy --true "0 1 0; 1 0 0" --pred "0.1 0.8 0.1; 0.7 0.2 0.1"',
        'convcli loss mae --true "0 1; 1 0" --pred "0.1 0.9; 0.8 0.2" --json',
    ),
)
def loss_command(
    name: str = typer.Argument(
        ...,
        metavar="[mse|mae|mape|msle|binary-crossentropy|categorical-crossentropy]",
        help="mse, mae, mape, msle, binary-crossentropy or categorical-crossentropy "
        "(Keras' long names work too).",
    ),
    true: str = typer.Option(
        ...,
        "--true",
        "-y",
        metavar="Y",
        help='Targets: inline numbers ("1 0 0; 0 1 0", rows by ";"), a .npy or .csv file, or - for stdin.',
    ),
    pred: str = typer.Option(
        ...,
        "--pred",
        metavar="P",
        help="Predictions, same forms and same shape as --true.",
    ),
    json_output: bool = typer.Option(False, "--json", help="Print one JSON document."),
) -> None:
    """Compute a loss (MSE, MAE, MAPE, MSLE, cross-entropy) with Keras' semantics."""
    from rich.markup import escape

    from convcli import losses

    canonical = losses.resolve_name(name)
    if true == "-" and pred == "-":
        fail("only one of --true and --pred can read stdin (-)")

    def load(source: str, label: str) -> np.ndarray:
        if source == "-":
            return losses.values_from_bytes(sys.stdin.buffer.read(), label=f"{label} (stdin)")
        return losses.read_values(source, label=label)

    y_true = load(true, "--true")
    y_pred = load(pred, "--pred")
    y_true, y_pred = losses.prepare(y_true, y_pred)
    values = losses.LOSSES[canonical](y_true, y_pred)  # the arrays are checked once, just above
    value = float(values.mean())
    info = losses.LOSS_INFO[canonical]

    if json_output:
        print_json(
            {
                "name": canonical,
                "value": value,
                "per_sample": values.tolist() if values.ndim else [float(values)],
                "samples": int(values.size),
                "shape": list(y_true.shape),
                "formula": info.formula,
                "keras": info.keras,
            }
        )
        return

    out_console.print(f"[bold]{canonical}[/] = [bold cyan]{value:.6g}[/]")
    out_console.print(f"formula: {escape(info.formula)}")
    out_console.print(f"Keras:   {info.keras}")
    shape = losses.format_shape(tuple(y_true.shape))
    width = y_true.shape[-1]
    out_console.print(
        f"samples: {values.size} (shape {shape}: the last axis holds each sample's "
        f"{width} value{'s' if width != 1 else ''})"
    )
    flat = values.reshape(-1)
    if 1 < flat.size <= _MAX_ROWS_SHOWN:
        for index, sample_value in enumerate(flat):
            out_console.print(f"  sample {index}: {sample_value:.6g}")

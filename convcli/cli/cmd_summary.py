"""`convcli summary`: a Keras-style table of a model's per-layer arithmetic.

Imports only pure-Python core modules (no numpy, scipy or Pillow).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer

from convcli.cli._app import app, examples, fail, out_console, print_json
from convcli.summary import BYTES_PER_FLOAT32

if TYPE_CHECKING:  # pragma: no cover
    from convcli.cli._tables import TableSpec
    from convcli.summary import Row, Summary


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


def shape_text(shape: tuple[int, ...]) -> str:
    """A shape as H×W×D (``224x224x64``), as every convcli command prints it."""
    return "x".join(str(n) for n in shape)


def _layer_label(row: Row) -> str:
    """``name (type)``; the type keeps to one line (NBSP) when the cell wraps."""
    from convcli.cli._tables import NBSP

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
    count, memory, receptive field and MACs give way, in that order, to a narrow width."""
    from convcli.cli._tables import Column, TableSpec

    spec = TableSpec(
        title=f'Model: "{summary.name}"',
        narrow_first=False,
        columns=[
            Column("Layer (type)", wrap=True),
            Column("Output Shape"),
            Column("Param #", justify="right"),
            Column("Unshared #", justify="right", drop=4),
            Column("MACs", justify="right", drop=1),
            Column("RF (jump)", justify="right", drop=2),
            Column("Memory", justify="right", drop=3),
        ],
    )
    for row in summary.rows:
        spec.add_row(
            _layer_label(row),
            shape_text(row.output_shape),
            f"{row.params:,}",
            "" if row.params_unshared is None else f"{row.params_unshared:,}",
            f"{row.macs:,}",
            _receptive_field(row),
            readable_size(row.activation_bytes),
        )
    return spec


def summary_totals(summary: Summary) -> list[tuple[str, str]]:
    """The totals under the table, as label/value pairs."""
    return [
        ("Total params:", f"{summary.total_params:,} ({readable_size(summary.params_bytes)})"),
        ("Trainable params:", f"{summary.trainable_params:,} "
         f"({readable_size(summary.trainable_params * BYTES_PER_FLOAT32)})"),
        ("Non-trainable params:", f"{summary.non_trainable_params:,} "
         f"({readable_size(summary.non_trainable_params * BYTES_PER_FLOAT32)})"),
        ("MACs:", f"{summary.total_macs:,} ({readable_count(summary.total_macs)}); "
         f"FLOPs = 2 x MACs: {summary.total_flops:,} ({readable_count(summary.total_flops)})"),
        ("Peak activation memory:", f"{readable_size(summary.peak_activation_bytes)} "
         "(largest input + output of one layer, float32, batch of 1)"),
    ]


@app.command(
    "summary",
    epilog=examples(
        "convcli summary samples/vgg16.toml",
        'convcli summary "INPUT(227,227,3) => CONV(96,11,stride=4) => RELU => POOL(3,stride=2)"',
        "convcli summary samples/lenet5.toml --json",
        "cat samples/alexnet.toml | convcli summary -",
    ),
)
def summary_command(
    model_source: str = typer.Argument(
        ...,
        metavar="MODEL",
        help='Arrow notation ("INPUT(32,32,1) => CONV(6,5) => ..."), a .toml file, a Keras .json file, '
        "or - to read one of them from stdin.",
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
    from convcli.cli._models import read_model
    from convcli.cli._tables import print_pairs, print_table
    from convcli.spec import parse_input_shape
    from convcli.summary import summarize

    if json_output + csv_output + dot_output > 1:
        fail("choose one of --json, --csv and --dot")
    shape = parse_input_shape(input_shape) if input_shape is not None else None
    summary = summarize(read_model(model_source, shape))

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

    print_table(summary_table(summary), out_console, hint="--json or --csv")
    print_pairs(summary_totals(summary), out_console, label_style="bold", align=False)
    floored = [row for row in summary.rows if row.note]
    if floored:
        out_console.print("Sizes floored as Keras does (the windows do not fit exactly):", highlight=False)
        print_pairs([(f"  {row.name}:", row.note) for row in floored], out_console, label_style="", align=False)

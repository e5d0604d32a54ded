"""`convcli summary`: a Keras-style table of a model's per-layer arithmetic.

Imports only pure-Python core modules (no numpy, scipy or Pillow).
"""

from __future__ import annotations

import typer

from convcli.cli._app import app, examples, fail, out_console, print_json
from convcli.tables import summary_table, summary_totals


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
        print_pairs([(f"  {row.name}:", str(row.note)) for row in floored], out_console, label_style="", align=False)

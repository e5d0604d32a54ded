"""`convcli run`: the forward pass of a model on images or arrays (the command-line layer).

The work is done by :mod:`convcli.spec` (the model), :mod:`convcli.forward` (weights,
inputs, the pass itself, statistics, feature-map pictures) and :mod:`convcli.ops`. They
and numpy are imported inside the command so ``convcli --help`` starts fast.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from convcli.cli._app import app, err_console, examples, note, out_console, print_json, quiet_option
from convcli.errors import InputError

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

    from convcli.forward import LayerStats
    from convcli.layers import Model

TOP_ROWS = 20
"""Inputs listed in the top-5 table; --json and -o always carry every input."""


def _number(value: float) -> str:
    if math.isnan(value):
        return "-"
    if value == 0:
        return "0"
    if abs(value) >= 1e4 or abs(value) < 1e-3:
        return f"{value:.2g}"
    return f"{value:.4g}"


def _milliseconds(seconds: float) -> str:
    ms = seconds * 1e3
    return f"{ms:.2f}" if ms < 10 else f"{ms:.1f}"


def _probability(p: float, digits: int = 4) -> str:
    return f"{p:.{digits}f}" if p >= 10**-digits or p == 0 else f"{p:.1e}"


_SHORT_TYPES = {
    "MaxPooling2D": "MaxPool", "AveragePooling2D": "AvgPool", "GlobalAveragePooling2D": "GAP",
    "GlobalMaxPooling2D": "GMP", "LocallyConnected2D": "Local", "BatchNormalization": "BatchNorm",
    "ZeroPadding2D": "ZeroPad",
}


def _short_type(layer: Any) -> str:
    """A compact type for the table: the activation's name, or Conv2D+relu for a fused one."""
    function = getattr(layer, "function", None)
    if function is not None:
        return function
    fused = getattr(layer, "activation", None)
    base = _SHORT_TYPES.get(layer.type, layer.type)
    return f"{base}+{fused}" if fused else base


def _shape(shape: tuple[int, ...]) -> str:
    return "x".join(str(n) for n in shape)


def _check_output(path: Path | None, suffix: str, option: str) -> None:
    from convcli import fileio

    if path is None:
        return
    if path.suffix.lower() != suffix:
        raise InputError(f"{option} writes a {suffix} file; give a name ending in {suffix}. Received: {path}")
    fileio.check_writable(path, option)


def _save_maps(folder: Path, maps: list[tuple[str, str, Any]], colormap: str, map_range: str) -> list[Path]:
    """One PNG per entry (stem, title, maps (H, W, D)) into ``folder`` (made if missing)."""
    from convcli import fileio, pictures

    fileio.make_folder(folder, "--save-maps")
    written = []
    for stem, title, array in maps:
        if stem == "00-input":
            picture = pictures.input_picture(array, title)
        else:
            picture = pictures.feature_map_grid(array, title, colormap=colormap, value_range=map_range)
        path = folder / f"{stem}.png"
        pictures.save_png(picture, str(path), "--save-maps")
        written.append(path)
    return written


def _save_filters(model: Model, params: dict[str, Any], path: Path) -> None:
    """Draw the first layer that has a 4-D kernel (F, F, D, K): the first conv layer."""
    from convcli import pictures

    for layer in model.layers:
        kernel = params.get(f"{layer.name}.kernel")
        if kernel is not None and kernel.ndim == 4:
            f1, f2, d, k = kernel.shape
            title = f"{layer.name}: {k} filters of {f1}x{f2}x{d}"
            pictures.save_png(pictures.filter_grid(kernel, title), str(path), "--save-filters")
            note(f"wrote {path} ({title})")
            return
    raise InputError("--save-filters: the model has no conv layer with a (F, F, D, K) kernel to draw")


def _display_path(path: Path) -> str:
    """A path relative to the working folder when it lies inside it (model files store
    their weights path absolute)."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _print_table(
    model: Model, stats: list[LayerStats], labels: list[str], weights_note: str, wall: float
) -> None:
    from convcli.cli._tables import Column, TableSpec, print_pairs, print_table

    n = len(labels)
    total = sum(s.seconds for s in stats)
    relu = any(s.relu for s in stats)
    columns = [
        Column("Layer"), Column("Type", drop=2), Column("Output"),
        Column("ms", justify="right", drop=3), Column("Min", justify="right", drop=5),
        Column("Mean", justify="right", drop=1), Column("Max", justify="right", drop=4),
    ]
    if relu:  # a ReLU output: the fraction of zeros it makes
        columns.append(Column("Zeros", justify="right", drop=6))
    table = TableSpec(
        columns=columns,
        title=f"{model.name}: {n} input{'s' if n != 1 else ''} {_shape(tuple(model.input_shape))}, {weights_note}",
        footer=[["total", "", "", _milliseconds(total), "", "", ""] + ([""] if relu else [])],
    )
    for s in stats:
        row = [
            s.layer.name, _short_type(s.layer), _shape(s.output_shape),
            "-" if s.folded_into else _milliseconds(s.seconds),
            _number(s.minimum), _number(s.mean), _number(s.maximum),
        ]
        if relu:
            row.append("" if s.zero_fraction is None else f"{s.zero_fraction:.1%}")
        table.add_row(*row)
    print_table(table, out_console, hint="--json")
    pairs = [("forward pass", f"{total * 1e3:.1f} ms; wall time {wall * 1e3:.0f} ms with start-up and reading inputs")]
    if any(s.folded_into for s in stats):
        pairs.append(("-", "a batch norm folded into the layer above it; its time is in that row"))
    print_pairs(pairs, out_console, label_style="", align=False)


def _print_top(top: list[list[tuple[int, str, float]]], labels: list[str]) -> None:
    from convcli.cli._tables import Column, TableSpec, print_table

    out_console.print()
    if len(labels) == 1:
        table = TableSpec(
            columns=[Column("Rank", justify="right"), Column("Class"), Column("Probability", justify="right")],
            title=f"Top {len(top[0])}: {labels[0]}",
        )
        for rank, (_, name, p) in enumerate(top[0], 1):
            table.add_row(str(rank), name, _probability(p))
        print_table(table, out_console)
        return
    shown = min(len(labels), TOP_ROWS)
    ranks = len(top[0])
    table = TableSpec(
        # ranks beyond the first give way to a narrow width, the last first
        columns=[Column("Input")] + [Column(f"#{r}", justify="right", drop=r - 1) for r in range(1, ranks + 1)],
        title=f"Top {ranks} classes (probability)",
    )
    for label, row in zip(labels[:shown], top[:shown]):
        table.add_row(label, *(f"{name} {_probability(p, 3)}" for _, name, p in row))
    print_table(table, out_console)
    if shown < len(labels):
        note(f"first {shown} of {len(labels)} inputs; -o OUT.npy or --json give them all")


@app.command(
    "run",
    epilog=examples(
        "convcli run samples/digits.toml samples/digit-7.png",
        "convcli run samples/digits.toml samples/digit-*.png --json",
        "convcli run samples/lenet5.toml samples/digit-3.png --save-maps maps/",
        "cat samples/digits.toml | convcli run - samples/digit-0.png",
    ),
)
def run_command(
    model_source: str = typer.Argument(
        ..., metavar="MODEL",
        help='Arrow notation ("INPUT(28,28,1) => CONV(8,3) => RELU => ..."), a .toml file, a Keras .json file, '
        "or - to read one of them from stdin.",
        show_default=False,
    ),
    inputs: list[str] = typer.Argument(
        ..., metavar="INPUT...",
        help="Images (read as float32 in [0, 1], never resized; gray/RGB converted to the model's depth) "
        "or .npy arrays (H,W,D) or (N,H,W,D), used as they are; - reads one image from stdin.",
        show_default=False,
    ),
    weights: Path | None = typer.Option(
        None, "--weights", "-w", metavar="W.npz",
        help="Weights: keys <layer>.<param> in Keras layouts. Default: the file a TOML model names "
        '(weights = "x.npz"), else random (He normal) from --seed.',
        show_default=False,
    ),
    seed: int = typer.Option(0, "--seed", metavar="N", help="Seed of the random weights and of --train-dropout."),
    save_weights: Path | None = typer.Option(
        None, "--save-weights", metavar="W.npz", help="Write the parameters used (.npz).", show_default=False
    ),
    output: Path | None = typer.Option(
        None, "--output", "-o", metavar="OUT.npy", help="Write the final output (N, ...) as float32 .npy.",
        show_default=False,
    ),
    json_output: bool = typer.Option(False, "--json", help="Print one JSON document (output_shape, output, layers, top)."),
    train_dropout: bool = typer.Option(
        False, "--train-dropout", help="Apply inverted dropout (probability p, seeded by --seed) instead of the identity."
    ),
    save_maps: Path | None = typer.Option(
        None, "--save-maps", metavar="DIR",
        help="Write per layer one PNG grid of the feature maps of the first input into DIR (made if missing).",
        show_default=False,
    ),
    colormap: str = typer.Option(
        "gray", "--colormap", metavar="[gray|viridis|magma|coolwarm]", help="Colours of the --save-maps pictures."
    ),
    map_range: str = typer.Option(
        "per-map", "--map-range", metavar="[per-map|shared]",
        help="--save-maps: each map on its own min..max, or every map of a layer on one range.",
    ),
    save_filters: Path | None = typer.Option(
        None, "--save-filters", metavar="FILE.png",
        help="Draw the first conv layer's kernels as a grid (RGB for 3 input channels).", show_default=False,
    ),
    batch_size: int = typer.Option(64, "--batch-size", metavar="N", help="Inputs per forward batch (bounds memory)."),
    input_shape: str | None = typer.Option(
        None, "--input-shape", metavar="H,W,D", help="The input size a Keras model leaves open (None).",
        show_default=False,
    ),
    quiet: bool = quiet_option(),
) -> None:
    """Run a model forward on images or arrays: per-layer shapes, timings, statistics, top classes."""
    started = time.perf_counter()

    from convcli import forward
    from convcli.cli._models import read_model
    from convcli.spec import parse_input_shape

    if model_source == "-" and "-" in inputs:
        raise InputError("stdin can hold the model (MODEL -) or an input (INPUT -), not both")
    model = read_model(model_source, parse_input_shape(input_shape) if input_shape is not None else None)
    model.shapes()
    _check_output(output, ".npy", "-o")
    _check_output(save_weights, ".npz", "--save-weights")
    _check_output(save_filters, ".png", "--save-filters")
    if save_maps is not None or save_filters is not None:
        from convcli import pictures

        pictures.colormap_lut(colormap)  # refuse an unknown name before any work
        pictures.check_map_range(map_range)
    if save_maps is not None:
        from convcli import fileio

        fileio.check_output_folder(save_maps, "--save-maps")
    if seed < 0:
        raise InputError(f"--seed must be a non-negative integer. Received: {seed}")
    if batch_size < 1:
        raise InputError(f"--batch-size must be a positive integer. Received: {batch_size}")

    x, labels = forward.load_inputs(inputs, tuple(model.input_shape))

    # --weights wins; else the weights a TOML model names; else random from --seed
    weights_path = weights if weights is not None else model.weights_path
    if weights_path is not None:
        params = forward.load_weights(model, weights_path)
        weights_note = f"weights {_display_path(weights_path)}" + (" (named by the model file)" if weights is None else "")
    else:
        params = forward.init_params(model, seed=seed)
        weights_note = f"random weights (He normal, seed {seed})"

    stats = forward.layer_stats(model)
    # feature maps of the first input: the input itself, then every layer with a 3-D output
    # (every layer computed on its own, so that each output exists)
    maps: dict[str, tuple[str, str, Any]] = {}
    on_layer = None
    if save_maps is not None:
        if len(model.input_shape) == 3:
            maps["input"] = ("00-input", f"input {_shape(tuple(model.input_shape))}", x[0])
        position = {layer.name: index for index, layer in enumerate(model.layers, 1)}

        def on_layer(layer: Any, out: np.ndarray, seconds: float) -> None:
            stats[layer.name].add(out, seconds)
            if out.ndim == 4 and layer.name not in maps:
                maps[layer.name] = (f"{position[layer.name]:02d}-{layer.name}",
                                    f"{layer.name} ({layer.type}) {_shape(out.shape[1:])}", out[0].copy())

    progress = None
    on_batch = None
    if len(x) > batch_size and err_console.is_terminal:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )

        progress = Progress(TextColumn("forward"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                            console=err_console, transient=True)
        task = progress.add_task("forward", total=len(x))

        def on_batch(done: int) -> None:
            progress.advance(task, done)

        progress.start()
    try:
        result = forward.run_batches(model, x, params, batch_size=batch_size, train_dropout=train_dropout,
                                     seed=seed, on_layer=on_layer, on_batch=on_batch,
                                     stats=None if on_layer is not None else stats)
    finally:
        if progress is not None:
            progress.stop()

    if output is not None:
        forward.save_array(result, output)
    if save_weights is not None:
        forward.save_weights(params, save_weights)
    # a missing folder is made, as filter --out-dir makes its folder
    written = _save_maps(save_maps, list(maps.values()), colormap, map_range) if save_maps is not None else []
    if save_filters is not None:
        _save_filters(model, params, save_filters)

    top = forward.top_k(result, 5, model.class_names) if forward.is_softmax_output(model) else None
    if json_output:
        document: dict[str, object] = {
            "model": model.name,
            "inputs": labels,
            "weights": str(weights_path) if weights_path is not None else None,
            "seed": seed,
            "output_shape": list(result.shape),
            "output": result.tolist(),
            "layers": [s.to_json() for s in stats.values()],
        }
        if top is not None:
            document["top"] = [
                [{"index": i, "class": name, "probability": p} for i, name, p in row] for row in top
            ]
        if save_maps is not None:
            document["maps"] = [str(p) for p in written]
        print_json(document)
        return
    _print_table(model, list(stats.values()), labels, weights_note, time.perf_counter() - started)
    if top is not None:
        _print_top(top, labels)
    if output is not None:
        note(f"wrote {output} (float32 {_shape(result.shape)})")
    if save_weights is not None:
        note(f"wrote {save_weights} ({len(params)} arrays)")
    if written:
        note(f"wrote {len(written)} feature-map grids into {save_maps}")

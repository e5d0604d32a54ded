"""`convcli train`: mini-batch training with the backward pass of every layer (the
command-line layer over :mod:`convcli.train`)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import typer

from convcli.cli._app import app, err_console, examples, note, out_console, print_json, quiet_option
from convcli.errors import InputError


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _epoch_line(stats: Any, epochs: int) -> str:
    line = f"epoch {stats.epoch}/{epochs}: loss {_number(stats.loss)}, accuracy {_number(stats.accuracy)}"
    if stats.val_loss is not None:
        line += f", val_loss {_number(stats.val_loss)}, val_accuracy {_number(stats.val_accuracy)}"
    return line + f", {stats.seconds:.2f} s"


def _validation(value: str | None, data: str, x: Any, y: Any, model: Any) -> tuple[Any, Any, Any]:
    """(x, y, validation or None): DATA's own held-out split (a ``heldout`` array), or
    --validation: a fraction, or a data file."""
    from convcli import train

    mask = train.heldout_mask(data, len(x))
    if mask is not None:
        if value is not None:
            raise InputError(
                f"{data} holds its own held-out split (the 'heldout' array), which is the validation set; "
                f"drop --validation {value}"
            )
        return x[~mask], y[~mask], (x[mask], y[mask])
    if value is None:
        return x, y, None
    try:
        fraction = float(value)
    except ValueError:
        fraction = math.nan
    if not math.isnan(fraction) and not Path(value).exists():
        x, y, xv, yv = train.split_validation(x, y, fraction)
        return x, y, (xv, yv)
    xv, yv, _ = train.load_data(value, tuple(model.input_shape))
    return x, y, (xv, yv)


def _plot(history: list[Any], path: Path) -> None:
    """Loss and accuracy per epoch (training, and validation when there is one) as a PNG."""
    from PIL import Image, ImageDraw

    width, height, margin = 640, 300, 40
    image = Image.new("RGB", (2 * width, height), "white")
    draw = ImageDraw.Draw(image)
    epochs = [s.epoch for s in history]
    for panel, (title, keys) in enumerate((("loss", ("loss", "val_loss")), ("accuracy", ("accuracy", "val_accuracy")))):
        left = panel * width
        series = {k: [getattr(s, k) for s in history] for k in keys if all(getattr(s, k) is not None for s in history)}
        values = [v for vs in series.values() for v in vs]
        low, high = (min(values), max(values)) if values else (0.0, 1.0)
        if high - low < 1e-12:
            low, high = low - 0.5, high + 0.5
        draw.rectangle([left + margin, margin, left + width - margin // 2, height - margin], outline="black")
        draw.text((left + margin, 10), f"{title} per epoch (blue: training, orange: validation)", fill="black")
        draw.text((left + 4, margin), f"{high:.3g}", fill="black")
        draw.text((left + 4, height - margin - 10), f"{low:.3g}", fill="black")
        draw.text((left + margin, height - margin + 6), "1", fill="black")
        draw.text((left + width - margin, height - margin + 6), str(epochs[-1]), fill="black")
        span = max(len(epochs) - 1, 1)
        for key, colour in zip(keys, ((31, 119, 180), (255, 127, 14))):
            if key not in series:
                continue
            points = [
                (left + margin + (width - 1.5 * margin) * i / span,
                 height - margin - (height - 2 * margin) * (v - low) / (high - low))
                for i, v in enumerate(series[key])
            ]
            if len(points) > 1:
                draw.line(points, fill=colour, width=2)
            for px, py in points:
                draw.ellipse([px - 2, py - 2, px + 2, py + 2], fill=colour)
    from convcli import pictures

    pictures.save_png(image, str(path), "--plot")


def _check_gradients(model: Any, weights: Path | None, seed: int, json_output: bool) -> None:
    from convcli import forward, train

    params = forward.load_weights(model, weights) if weights is not None else forward.init_params(model, seed=seed)
    checks = train.check_gradients(model, params, seed=seed)
    if json_output:
        print_json({"model": model.name, "layers": [c.to_json() for c in checks]})
        return
    from convcli.cli._tables import Column, TableSpec, print_table

    table = TableSpec(
        columns=[Column("Layer"), Column("Type"), Column("Checked", justify="right"),
                 Column("Worst relative error", justify="right")],
        title=f"{model.name}: analytic gradients against central finite differences (float64)",
    )
    for c in checks:
        table.add_row(c.layer, c.type, str(c.checked), f"{c.worst:.1e}")
    print_table(table, out_console)


@app.command(
    "train",
    epilog=examples(
        "convcli train samples/digits.toml samples/digits-all.npz --loss categorical-crossentropy "
        "--epochs 12 --batch-size 32 --lr 0.003 --optimizer adam --seed 0 --save-weights w.npz",
        "convcli train \"INPUT(2) => FC(1)\" data.npz --loss mse --epochs 1 --batch-size 4 --lr 0.1 "
        "--optimizer sgd --no-shuffle --save-weights w.npz --json",
        "convcli train --check-gradients samples/lenet5.toml",
    ),
)
def train_command(
    model_source: str = typer.Argument(
        ..., metavar="MODEL", help="Arrow notation, a .toml file, a Keras file, or - to read one from stdin.",
        show_default=False,
    ),
    data: str | None = typer.Argument(
        None, metavar="DATA",
        help=".npz with x (N,H,W,D) and y (N,) integer labels or (N, classes) targets, or a folder of "
        "class subfolders of images.",
        show_default=False,
    ),
    loss: str | None = typer.Option(None, "--loss", metavar="NAME", help="One of the six losses of convcli loss.",
                             show_default=False),
    epochs: int | None = typer.Option(None, "--epochs", metavar="N", help="Passes over DATA.", show_default=False),
    batch_size: int | None = typer.Option(None, "--batch-size", metavar="B", help="Samples per step.", show_default=False),
    lr: float | None = typer.Option(None, "--lr", metavar="LR", help="Learning rate.", show_default=False),
    optimizer: str | None = typer.Option(None, "--optimizer", metavar="[sgd|momentum|adam]",
                                  help="Keras' SGD, SGD(momentum=0.9) or Adam.", show_default=False),
    save_weights: Path | None = typer.Option(None, "--save-weights", metavar="OUT.npz",
                                      help="Write the trained weights (.npz, atomic).", show_default=False),
    weights: Path | None = typer.Option(None, "--weights", "-w", metavar="W",
                                        help="Start from these weights (else random from --seed).",
                                        show_default=False),
    seed: int = typer.Option(0, "--seed", metavar="S", help="Seed of the initial weights, shuffling and dropout."),
    validation: str | None = typer.Option(
        None, "--validation", metavar="FRACTION|FILE",
        help="Hold out the last FRACTION of DATA (Keras' validation_split), or validate on a data file "
        "(a DATA .npz with a boolean 'heldout' array validates on those samples without this option).",
        show_default=False,
    ),
    no_shuffle: bool = typer.Option(False, "--no-shuffle", help="Keep DATA's order in every epoch."),
    json_output: bool = typer.Option(False, "--json", help="Print the history as JSON."),
    plot: Path | None = typer.Option(None, "--plot", metavar="CURVES.png",
                                     help="Draw loss and accuracy per epoch.", show_default=False),
    check_gradients: bool = typer.Option(
        False, "--check-gradients",
        help="Compare every layer's backward with central finite differences and print the worst "
        "relative error per layer (MODEL alone; --weights and --seed apply).",
    ),
    quiet: bool = quiet_option(),
) -> None:
    """Train a model on DATA with the backward pass of every layer; write the weights."""
    from convcli import fileio, forward, losses, optim, train
    from convcli.cli._models import read_model

    model = read_model(model_source)
    model.nodes()
    train.check_trainable(model)
    if check_gradients:
        _check_gradients(model, weights, seed, json_output)
        return
    given = {"DATA": data, "--loss": loss, "--epochs": epochs, "--batch-size": batch_size, "--lr": lr,
             "--optimizer": optimizer, "--save-weights": save_weights}
    missing = [name for name, value in given.items() if value is None]
    if missing:
        raise InputError(f"train needs {', '.join(missing)} (or --check-gradients MODEL alone)")
    assert data is not None and loss is not None and epochs is not None and batch_size is not None
    assert optimizer is not None and save_weights is not None
    loss_name = losses.resolve_name(loss)
    opt = optim.make_optimizer(optimizer, lr)
    if epochs < 1:
        raise InputError(f"--epochs must be a positive integer. Received: {epochs}")
    if batch_size < 1:
        raise InputError(f"--batch-size must be a positive integer. Received: {batch_size}")
    if seed < 0:
        raise InputError(f"--seed must be a non-negative integer. Received: {seed}")
    if save_weights.suffix.lower() != ".npz":
        raise InputError(f"--save-weights writes a .npz file; give a name ending in .npz. Received: {save_weights}")
    fileio.check_writable(save_weights, "--save-weights")
    if plot is not None:
        if plot.suffix.lower() != ".png":
            raise InputError(f"--plot writes a .png file; give a name ending in .png. Received: {plot}")
        fileio.check_writable(plot, "--plot")

    x, y, _ = train.load_data(data, tuple(model.input_shape))
    x, y, held = _validation(validation, data, x, y, model)
    output_shape = model.output_shape()
    y = train.encode_targets(y, output_shape)
    if held is not None:
        held = (held[0], train.encode_targets(held[1], output_shape))
    params = forward.load_weights(model, weights) if weights is not None else forward.init_params(model, seed=seed)

    last: dict[str, Any] = {}
    progress = None
    on_batch = None
    if err_console.is_terminal and not json_output:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TimeRemainingColumn(), console=err_console, transient=True)
        task = progress.add_task(f"epoch 1/{epochs}", total=math.ceil(len(x) / batch_size))

        def on_batch(done: int, total: int) -> None:
            progress.update(task, completed=done)

        progress.start()

    def on_epoch(stats: Any, current: dict[str, Any]) -> None:
        last.clear()
        last.update({key: value.copy() for key, value in current.items()})
        if progress is not None:
            progress.update(task, description=f"epoch {min(stats.epoch + 1, epochs)}/{epochs}", completed=0)
        if not json_output:
            out_console.print(_epoch_line(stats, epochs), highlight=False, soft_wrap=True)

    try:
        history = train.fit(model, params, x, y, loss=loss_name, epochs=epochs, batch_size=batch_size,
                            optimizer=opt, seed=seed, shuffle=not no_shuffle, validation=held,
                            on_batch=on_batch, on_epoch=on_epoch)
    except KeyboardInterrupt:
        if progress is not None:
            progress.stop()
        if last:
            forward.save_weights(last, save_weights)
            note(f"interrupted: wrote {save_weights} (the weights after the last finished epoch)")
        raise
    finally:
        if progress is not None:
            progress.stop()
    forward.save_weights(params, save_weights)
    if plot is not None:
        _plot(history, plot)
    if json_output:
        print_json({
            "model": model.name, "loss": loss_name, "optimizer": opt.name, "learning_rate": opt.learning_rate,
            "epochs": epochs, "batch_size": batch_size, "samples": len(x),
            "validation_samples": 0 if held is None else len(held[0]),
            "history": [s.to_json() for s in history], "weights": str(save_weights),
        })
        return
    note(f"wrote {save_weights} ({len(params)} arrays)")
    if plot is not None:
        note(f"wrote {plot}")

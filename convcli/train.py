"""Training: the lecture's learning loop, with the backward pass of every layer.

A training step runs the model forward keeping what each layer's backward needs (its
inputs, its output and what its :meth:`~convcli.layers.Layer.forward_train` saved: a fused
activation's input, dropout's mask, batch norm's batch statistics), measures the loss on
the batch (the batch mean of :func:`convcli.losses.compute`, Keras' semantics), sends the
loss's gradient back through the graph in reverse order (each layer's
:meth:`~convcli.layers.Layer.backward`, which calls :mod:`convcli.grad`), and lets an
optimizer of :mod:`convcli.optim` move every trainable weight. Batch norm's moving
averages are set from the batch (Keras' momentum 0.99); they are not trained.

Nothing here is folded or fused as the inference :func:`convcli.forward.run` does: batch
norm uses the batch's statistics, so it cannot be folded into the conv before it.

>>> from convcli.spec import parse_arrow
>>> model = parse_arrow("INPUT(2) => FC(1)")
>>> params = {"fc1.kernel": np.array([[1.0], [2.0]], np.float32), "fc1.bias": np.zeros(1, np.float32)}
>>> x = np.array([[1.0, 1.0]], np.float32); y = np.array([[0.0]], np.float32)
>>> loss, grads = loss_and_gradients(model, params, x, y, "mse")
>>> loss, grads["fc1.kernel"].ravel().tolist(), grads["fc1.bias"].tolist()
(9.0, [6.0, 6.0], [6.0])
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from convcli import layers as L
from convcli import losses, optim, threads
from convcli.errors import InputError, ModelError, WeightsError
from convcli.layers.base import Context
from convcli.threads import blas_threads

__all__ = [
    "EpochStats",
    "LayerCheck",
    "check_gradients",
    "check_trainable",
    "encode_targets",
    "evaluate",
    "fit",
    "forward_train",
    "heldout_mask",
    "load_data",
    "loss_and_gradients",
    "split_validation",
    "trainable_keys",
]

Params = dict[str, np.ndarray]


def check_trainable(model: L.Model) -> None:
    """Refuse a model with a layer that has no backward pass, naming every such layer.

    Raises:
        ModelError: ``layer 'x' (Type)`` for each layer type without a backward.
    """
    missing = [f"'{node.layer.name}' ({node.layer.type})" for node in model.nodes() if not node.layer.has_backward]
    if missing:
        raise ModelError(
            "these layers have no backward pass, so the model cannot be trained yet: " + ", ".join(missing)
        )


def trainable_keys(model: L.Model) -> list[str]:
    """The parameter keys an optimizer updates (every one but batch norm's moving statistics)."""
    keys: list[str] = []
    for node in model.nodes():
        layer = node.layer
        if layer.shares is not None:
            continue
        frozen = layer.frozen_params()
        keys.extend(f"{layer.name}.{p}" for p in layer.param_shapes(*node.input_shapes) if p not in frozen)
    return keys


def _weights(params: Mapping[str, np.ndarray], layer: L.Layer) -> dict[str, np.ndarray]:
    owner = layer.shares or layer.name
    prefix = owner + "."
    return {key[len(prefix):]: value for key, value in params.items() if key.startswith(prefix)}


@dataclass
class _Record:
    """What one layer's forward kept for its backward."""

    node: L.Node
    inputs: list[np.ndarray]
    output: np.ndarray
    saved: Any


@dataclass
class Tape:
    """The training forward's records, in the graph's order, and the model's output."""

    records: list[_Record] = field(default_factory=list)
    output: np.ndarray | None = None
    updates: dict[str, np.ndarray] = field(default_factory=dict)
    """Non-trainable parameters the batch sets (batch norm's moving averages)."""


def forward_train(model: L.Model, params: Mapping[str, np.ndarray], x: np.ndarray,
                  rng: np.random.Generator | None = None) -> Tape:
    """The training forward of ``model`` on the batch ``x``: batch norm on batch statistics,
    dropout masks drawn from ``rng`` (None: dropout is the identity)."""
    ctx = Context(train_dropout=rng is not None, rng=rng)
    values: dict[str, np.ndarray] = {model.input_name: x}
    tape = Tape()
    for node in model.nodes():
        layer = node.layer
        xs = [values[name] for name in node.inputs]
        out, saved = layer.forward_train(_weights(params, layer), xs, ctx)
        values[layer.name] = out
        tape.records.append(_Record(node, xs, out, saved))
        owner = layer.shares or layer.name
        for param, value in layer.train_updates(saved).items():
            tape.updates[f"{owner}.{param}"] = value
    tape.output = values[model.output_name]
    return tape


def backward(model: L.Model, params: Mapping[str, np.ndarray], tape: Tape, grad: np.ndarray) -> Params:
    """Gradients of every trainable parameter, from ``grad``, the loss's gradient with
    respect to the model's output. Layers feeding nothing that reaches the output get none
    (their parameters' gradients are zeros)."""
    flowing: dict[str, np.ndarray] = {model.output_name: grad}
    found: Params = {}
    while tape.records:
        record = tape.records.pop()
        layer = record.node.layer
        g = flowing.pop(layer.name, None)
        if g is None:
            continue
        need = [name != model.input_name for name in record.node.inputs]
        result = layer.backward(_weights(params, layer), record.inputs, record.output, record.saved,
                                np.asarray(g, record.output.dtype), need_input=any(need))
        owner = layer.shares or layer.name
        for param, value in result.params.items():
            key = f"{owner}.{param}"
            found[key] = found[key] + value if key in found else value
        for name, dx, needed in zip(record.node.inputs, result.inputs, need):
            if needed and dx is not None:
                flowing[name] = flowing[name] + dx if name in flowing else dx
    for key in trainable_keys(model):
        if key not in found:
            found[key] = np.zeros_like(params[key])
    return found


def encode_targets(y: np.ndarray, output_shape: tuple[int, ...]) -> np.ndarray:
    """Targets in the model output's shape: integer labels (N,) become one-hot rows for an
    output of several classes, or a column for a single output unit.

    Raises:
        InputError: labels outside the classes, or targets whose shape fits neither.
    """
    y = np.asarray(y)
    width = output_shape[-1] if output_shape else 1
    if y.ndim == 1 and len(output_shape) == 1:
        if width == 1:
            return y.astype(np.float32).reshape(-1, 1)
        if y.dtype.kind not in "iu" and not np.all(np.equal(np.mod(y, 1), 0)):
            raise InputError(f"integer class labels are needed for an output of {width} classes; y holds fractions")
        labels = y.astype(np.int64)
        if labels.size and (labels.min() < 0 or labels.max() >= width):
            raise InputError(
                f"class labels must be in 0..{width - 1} for an output of {width} units. "
                f"Received: labels from {labels.min()} to {labels.max()}"
            )
        return np.eye(width, dtype=np.float32)[labels]
    if tuple(y.shape[1:]) != tuple(output_shape):
        raise InputError(
            f"the targets y have shape {tuple(y.shape)}; the model's output is (N, {', '.join(map(str, output_shape))})"
        )
    return y.astype(np.float32)


def _correct(y: np.ndarray, p: np.ndarray) -> int:
    """Samples classified right: the arg max for several classes, p > 0.5 for one unit."""
    if p.shape[-1] == 1:
        return int(np.sum((p.reshape(len(p), -1)[:, 0] > 0.5) == (y.reshape(len(y), -1)[:, 0] > 0.5)))
    return int(np.sum(p.reshape(-1, p.shape[-1]).argmax(-1) == y.reshape(-1, y.shape[-1]).argmax(-1)))


def loss_and_gradients(model: L.Model, params: Mapping[str, np.ndarray], x: np.ndarray, y: np.ndarray,
                       loss: str, rng: np.random.Generator | None = None) -> tuple[float, Params]:
    """The loss on one batch (mean over its samples) and the gradient of every trainable
    parameter; targets ``y`` in the output's shape (see :func:`encode_targets`)."""
    loss_value, grads, _, _ = _step(model, params, x, y, loss, rng)
    return loss_value, grads


def _step(model: L.Model, params: Mapping[str, np.ndarray], x: np.ndarray, y: np.ndarray, loss: str,
          rng: np.random.Generator | None) -> tuple[float, Params, dict[str, np.ndarray], np.ndarray]:
    tape = forward_train(model, params, x, rng)
    assert tape.output is not None
    p = tape.output
    value = losses.compute(loss, y, p)
    if not math.isfinite(value):
        raise InputError(f"the loss became {value}: lower the learning rate")
    g = grad_module().loss_gradient(loss, y, p).astype(p.dtype)
    return value, backward(model, params, tape, g), tape.updates, p


def grad_module() -> Any:
    """:mod:`convcli.grad` (imported when a step runs)."""
    from convcli import grad

    return grad


def evaluate(model: L.Model, params: Mapping[str, np.ndarray], x: np.ndarray, y: np.ndarray, loss: str,
             batch_size: int = 256) -> tuple[float, float]:
    """(mean loss, accuracy) of the inference forward on ``x``; ``y`` in the output's shape."""
    from convcli import forward

    total, correct = 0.0, 0
    for start in range(0, len(x), batch_size):
        p = forward.run(model, x[start:start + batch_size], dict(params))
        yb = y[start:start + batch_size]
        total += losses.compute(loss, yb, p) * len(yb)
        correct += _correct(yb, p)
    return total / max(len(x), 1), correct / max(len(x), 1)


@dataclass
class EpochStats:
    """One epoch of the history (Keras' ``History.history`` per epoch)."""

    epoch: int
    loss: float
    accuracy: float
    val_loss: float | None
    val_accuracy: float | None
    seconds: float

    def to_json(self) -> dict[str, Any]:
        """The epoch as plain data."""
        return {"epoch": self.epoch, "loss": self.loss, "accuracy": self.accuracy,
                "val_loss": self.val_loss, "val_accuracy": self.val_accuracy, "seconds": self.seconds}


def fit(
    model: L.Model,
    params: Params,
    x: np.ndarray,
    y: np.ndarray,
    *,
    loss: str,
    epochs: int,
    batch_size: int,
    optimizer: optim.Optimizer,
    seed: int = 0,
    shuffle: bool = True,
    validation: tuple[np.ndarray, np.ndarray] | None = None,
    on_batch: Callable[[int, int], None] | None = None,
    on_epoch: Callable[[EpochStats, Params], None] | None = None,
) -> list[EpochStats]:
    """Train ``params`` in place: ``epochs`` passes over ``x`` in mini-batches of
    ``batch_size`` (the order shuffled each epoch from ``seed`` unless ``shuffle`` is False),
    one optimizer step per batch. ``y`` is in the output's shape (:func:`encode_targets`).

    ``on_batch(done, total)`` is called after each batch, ``on_epoch(stats, params)`` after
    each epoch (the weights at that point). Returns the history.

    Raises:
        ModelError: a layer without a backward pass. InputError: bad sizes, or a loss
            that is no longer finite.
    """
    check_trainable(model)
    if epochs < 1 or batch_size < 1:
        raise InputError(f"--epochs and --batch-size must be positive. Received: epochs={epochs}, batch_size={batch_size}")
    if len(x) == 0:
        raise InputError("the training data is empty")
    keys = trainable_keys(model)
    for key in model.param_shapes():
        if key not in params:
            raise WeightsError(f"missing parameter '{key}'")
    order_rng = np.random.default_rng([seed, 1])
    dropout_rng = np.random.default_rng([seed, 2])
    n = len(x)
    history: list[EpochStats] = []
    # one BLAS thread: measured faster for every model tried, small and CIFAR-sized (see
    # blas_threads); the second core takes half of each large batch (see _step_halves)
    with blas_threads(1), ThreadPoolExecutor(max_workers=1) as pool:
        halves = _halves_worth_it(model, min(batch_size, n))
        for epoch in range(1, epochs + 1):
            history.append(_epoch(model, params, x, y, loss, batch_size, optimizer, keys, epoch,
                                  order_rng.permutation(n) if shuffle else np.arange(n), dropout_rng,
                                  validation, on_batch, pool if halves else None))
            if on_epoch is not None:
                on_epoch(history[-1], params)
    return history


def _halves_worth_it(model: L.Model, batch_size: int) -> bool:
    """True when a training batch is computed as two halves on two threads: two cores, a
    half batch big enough (:data:`convcli.forward.SPLIT_MACS`), and no layer whose training
    forward couples the samples (batch norm's batch statistics) or draws random numbers
    (dropout's masks, which must not depend on the machine's cores)."""
    from convcli.forward import SPLIT_MACS

    nodes = model.nodes()
    if threads.cores() < 2 or any(isinstance(node.layer, (L.BatchNormalization, L.Dropout)) for node in nodes):
        return False
    return sum(node.layer.macs(*node.input_shapes) for node in nodes) * (batch_size // 2) >= SPLIT_MACS


def _step_halves(model: L.Model, params: Mapping[str, np.ndarray], x: np.ndarray, y: np.ndarray, loss: str,
                 pool: ThreadPoolExecutor) -> tuple[float, Params, dict[str, np.ndarray], np.ndarray]:
    """:func:`_step` on the two halves of the batch at once (the second on ``pool``'s
    thread): the loss is a mean over samples, so the batch's loss and gradients are the
    halves' weighted by their sizes."""
    half = len(x) // 2
    other = pool.submit(_step, model, params, x[half:], y[half:], loss, None)
    value_1, grads_1, _, p_1 = _step(model, params, x[:half], y[:half], loss, None)
    value_2, grads_2, _, p_2 = other.result()
    w_1, w_2 = half / len(x), (len(x) - half) / len(x)
    grads = {key: grads_1[key] * grads_1[key].dtype.type(w_1) + grads_2[key] * grads_2[key].dtype.type(w_2)
             for key in grads_1}
    return value_1 * w_1 + value_2 * w_2, grads, {}, np.concatenate([p_1, p_2])


def _epoch(model: L.Model, params: Params, x: np.ndarray, y: np.ndarray, loss: str, batch_size: int,
           optimizer: optim.Optimizer, keys: list[str], epoch: int, order: np.ndarray,
           dropout_rng: np.random.Generator, validation: tuple[np.ndarray, np.ndarray] | None,
           on_batch: Callable[[int, int], None] | None, pool: ThreadPoolExecutor | None = None) -> EpochStats:
    """One pass over ``x`` in the given order, one optimizer step per batch (each batch of
    two or more samples in two halves on ``pool`` and here when one is given)."""
    n = len(x)
    batches = math.ceil(n / batch_size)
    started = time.perf_counter()
    total, correct = 0.0, 0
    for b in range(batches):
        index = order[b * batch_size:(b + 1) * batch_size]
        xb, yb = x[index], y[index]
        if pool is not None and len(index) >= 2:
            value, grads, updates, p = _step_halves(model, params, xb, yb, loss, pool)
        else:
            value, grads, updates, p = _step(model, params, xb, yb, loss, dropout_rng)
        trainable = {key: params[key] for key in keys}
        optimizer.step(trainable, grads)
        for key, array in updates.items():
            params[key] = np.asarray(array, params[key].dtype)
        total += value * len(index)
        correct += _correct(yb, p)
        if on_batch is not None:
            on_batch(b + 1, batches)
    val_loss = val_accuracy = None
    if validation is not None and len(validation[0]):
        val_loss, val_accuracy = evaluate(model, params, validation[0], validation[1], loss)
    return EpochStats(epoch, total / n, correct / n, val_loss, val_accuracy, time.perf_counter() - started)


def load_data(source: str | Path, input_shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray, tuple[str, ...] | None]:
    """Training data: an ``.npz`` with ``x`` (N, *input_shape) and ``y`` (N,) labels or
    (N, ...) targets, or a folder with one subfolder of images per class (Keras'
    ``image_dataset_from_directory``: classes in sorted order, labels their index; images
    read as ``convcli run`` reads them, never resized).

    Returns:
        (x as float32, y, the class names of a folder or None).

    Raises:
        InputError: a missing or unreadable source, missing arrays, sizes that differ.
    """
    from convcli import fileio, forward

    path = Path(source)
    if path.is_dir():
        classes = sorted(p.name for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
        if not classes:
            raise InputError(f"data folder {path} has no class subfolders (one folder of images per class)")
        xs, ys = [], []
        for index, name in enumerate(classes):
            files = sorted(str(f) for f in (path / name).iterdir() if f.is_file() and not f.name.startswith("."))
            if not files:
                continue
            x, _ = forward.load_inputs(files, input_shape)
            xs.append(x)
            ys.append(np.full(len(x), index, np.int64))
        if not xs:
            raise InputError(f"data folder {path}: its class subfolders hold no images")
        return np.concatenate(xs), np.concatenate(ys), tuple(classes)
    with fileio.open_npz(path, what="data file") as archive:
        missing = [key for key in ("x", "y") if key not in archive.members]
        if missing:
            raise InputError(
                f"data file {path} needs arrays 'x' (N, {', '.join(map(str, input_shape))}) and 'y' (N,) labels; "
                f"missing: {', '.join(missing)} (found: {', '.join(archive.members) or 'none'})"
            )
        for key in ("x", "y"):
            if archive.members[key][1].kind not in "biuf":
                raise InputError(f"data file {path}: array '{key}' has dtype {archive.members[key][1]}, expected numbers")
        x_shape = archive.members["x"][0]
        if tuple(x_shape[1:]) != tuple(input_shape):
            raise InputError(
                f"data file {path}: 'x' has shape {tuple(x_shape)}; the model expects (N, {', '.join(map(str, input_shape))})"
            )
        y_shape = archive.members["y"][0]
        if not y_shape or y_shape[0] != x_shape[0]:
            raise InputError(f"data file {path}: 'y' has shape {tuple(y_shape)}; 'x' holds {x_shape[0]} samples")
        x = np.ascontiguousarray(archive.read("x"), dtype=np.float32)
        y = archive.read("y")
    if not np.all(np.isfinite(x)) or (y.dtype.kind == "f" and not np.all(np.isfinite(y))):
        raise InputError(f"data file {path} holds values that are not finite (nan or inf)")
    return x, y, None


def heldout_mask(source: str | Path, samples: int) -> np.ndarray | None:
    """The fixed held-out split that a data ``.npz`` may carry: a boolean array ``heldout``
    (N,), True for the samples that are never trained on (``convcli train`` validates on
    them). None for a folder or an archive without one.

    Raises:
        InputError: a ``heldout`` array that is not N booleans, or that leaves no sample
            on one side.
    """
    from convcli import fileio

    path = Path(source)
    if path.is_dir():
        return None
    with fileio.open_npz(path, what="data file") as archive:
        if "heldout" not in archive.members:
            return None
        shape, dtype = archive.members["heldout"][:2]
        if dtype.kind != "b" or tuple(shape) != (samples,):
            raise InputError(
                f"data file {path}: 'heldout' must be {samples} booleans (True: held out); "
                f"it has shape {tuple(shape)} and dtype {dtype}"
            )
        mask = np.asarray(archive.read("heldout"), dtype=bool)
    if mask.all() or not mask.any():
        raise InputError(f"data file {path}: 'heldout' leaves no sample to train or to validate on")
    return mask


def split_validation(x: np.ndarray, y: np.ndarray, fraction: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x, y, x_val, y_val): the last ``fraction`` of the samples held out, before any
    shuffling (Keras' ``validation_split``).

    Raises:
        InputError: a fraction outside (0, 1) or one that leaves no sample on a side.
    """
    if not 0.0 < fraction < 1.0:
        raise InputError(f"--validation takes a fraction in (0, 1) or a .npz file. Received: {fraction}")
    split = int(len(x) * (1.0 - fraction))
    if split < 1 or split >= len(x):
        raise InputError(f"--validation {fraction} of {len(x)} samples leaves no sample to train or to validate on")
    return x[:split], y[:split], x[split:], y[split:]


@dataclass
class LayerCheck:
    """The gradient check of one layer: the worst relative error between its analytic
    gradients (parameters and input) and central finite differences."""

    layer: str
    type: str
    worst: float
    checked: int

    def to_json(self) -> dict[str, Any]:
        """The check as plain data."""
        return {"layer": self.layer, "type": self.type, "worst_relative_error": self.worst, "checked": self.checked}


KINK_RETRY = 1e-7
"""A gradient check's entry whose error exceeds this is measured again with a step 1000 times
smaller (see :func:`check_gradients`)."""


def check_gradients(model: L.Model, params: Mapping[str, np.ndarray] | None = None, *, seed: int = 0,
                    batch: int = 2, entries: int = 6, step: float = 1e-3) -> list[LayerCheck]:
    """Compare every layer's backward with central finite differences of its own forward,
    on the inputs it receives when the model runs on a random batch of ``batch`` samples.

    Everything runs in float64 (the weights are converted; the layers' forwards and
    backwards keep float64 arrays in float64), so a correct backward agrees to about
    1e-8 and a wrong one shows as errors near 1. The scalar checked is
    ``sum(output * R)`` for a fixed random ``R``; for each parameter and each input,
    ``entries`` random entries are moved by ``±step`` and ``±2 step``, and the difference
    quotient, Richardson-extrapolated (``(4 D(step) - D(2 step)) / 3``: the step's
    square-order error cancels, so the step can be large enough for rounding not to
    matter), is compared with the analytic gradient: ``|a - n| / max(|a|, |n|, 1e-3)``.
    At a kink (ReLU at exactly 0, as after a zero bias on zero inputs; a tie in max
    pooling) the two sides differ and a backward rightly returns one of them, so an
    entry's error is its smallest against the central, forward and backward quotients:
    where the layer is smooth the central one is by far the closest, and a wrong backward
    misses all three. An entry that still disagrees by more than :data:`KINK_RETRY` is
    measured again with a step 1000 times smaller (plain quotients, rounding near 1e-6),
    in case a kink lies within the large step (a pre-activation near 0, two maxima of a
    pooling window nearly equal). Dropout runs as the identity (its mask is random).

    Raises:
        ModelError: a layer without a backward pass.
    """
    check_trainable(model)
    rng = np.random.default_rng([seed, 3])
    source = params if params is not None else _init(model, seed)
    weights_all = {key: np.array(value, np.float64) for key, value in source.items()}
    x = rng.standard_normal((batch, *model.input_shape))
    tape = forward_train(model, weights_all, x)
    ctx = Context()
    results = []
    for record in tape.records:
        layer = record.node.layer
        weights = {k: v.copy() for k, v in _weights(weights_all, layer).items()}
        inputs = [np.array(a, np.float64, copy=True) for a in record.inputs]
        r = rng.standard_normal(record.output.shape)

        out, saved = layer.forward_train(weights, inputs, ctx)
        result = layer.backward(weights, inputs, out, saved, r.copy(), need_input=True)

        def change(w: dict[str, np.ndarray], xs: list[np.ndarray], layer: L.Layer = layer,
                   r: np.ndarray = r, base: np.ndarray = out.copy()) -> float:
            # sum(moved * R) - sum(out * R) summed as one sum of differences: the untouched
            # outputs cancel exactly instead of rounding a large total (224x224 batches).
            # ``base`` is a copy: a flatten's or an identity's output is a view of its input.
            moved, _ = layer.forward_train(w, xs, ctx)
            return float(np.sum((moved - base) * r))
        targets: list[tuple[np.ndarray, np.ndarray]] = [
            (weights[p], np.asarray(g)) for p, g in result.params.items()
        ]
        targets += [(a, np.asarray(g)) for a, g in zip(inputs, result.inputs) if g is not None]
        worst, checked = 0.0, 0
        for array, analytic in targets:
            flat, grad_flat = array.reshape(-1), analytic.reshape(-1)
            for i in rng.choice(flat.size, size=min(entries, flat.size), replace=False):
                a = float(grad_flat[i])

                def moves(*offsets: float, flat: np.ndarray = flat, i: int = i,
                          weights: dict[str, np.ndarray] = weights, inputs: list[np.ndarray] = inputs) -> list[float]:
                    saved_value = flat[i]
                    found = []
                    for offset in offsets:
                        flat[i] = saved_value + offset
                        found.append(change(weights, inputs))
                    flat[i] = saved_value
                    return found

                up, down, up2, down2 = moves(step, -step, 2 * step, -2 * step)
                quotients = [
                    (8 * (up - down) - (up2 - down2)) / (12 * step),  # central, Richardson
                    (4 * up - up2) / (2 * step),  # forward, one-sided Richardson
                    (down2 - 4 * down) / (2 * step),  # backward
                ]
                error = min(abs(a - q) / max(abs(a), abs(q), 1e-3) for q in quotients)
                if error > KINK_RETRY:
                    # a kink within 2 steps of the point (a ReLU input, a near-tie of max
                    # pooling): the tiny step sees one linear piece on at least one side
                    tiny = step * 1e-3
                    up, down = moves(tiny, -tiny)
                    quotients = [(up - down) / (2 * tiny), up / tiny, -down / tiny]
                    error = min(error, *(abs(a - q) / max(abs(a), abs(q), 1e-3) for q in quotients))
                worst = max(worst, error)
                checked += 1
        results.append(LayerCheck(layer.name, layer.type, worst, checked))
    return results


def _init(model: L.Model, seed: int) -> Params:
    from convcli import forward

    return forward.init_params(model, seed=seed)

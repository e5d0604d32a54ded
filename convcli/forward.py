"""The forward pass of a :class:`~convcli.layers.Model`: parameters in, activations out.

Parameters live in a flat dict keyed ``"<layer>.<param>"`` (``conv1.kernel``,
``conv1.bias``, ``bn1.moving_mean``, ...) holding float32 arrays in Keras layouts — the
same keys and shapes as ``Model.param_shapes()`` and as the ``.npz`` weights files.

>>> from convcli.spec import parse_arrow
>>> model = parse_arrow("INPUT(8,8,1) => CONV(4,3,pad=same) => RELU => POOL(2) => FC(3) => SOFTMAX")
>>> params = init_params(model, seed=0)
>>> sorted(params)
['conv1.bias', 'conv1.kernel', 'fc1.bias', 'fc1.kernel']
>>> probs = run(model, np.zeros((2, 8, 8, 1), np.float32), params)
>>> probs.shape, bool(np.allclose(probs.sum(axis=1), 1))
((2, 3), True)
"""

from __future__ import annotations

import math
import time
import zlib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from convcli import layers as L
from convcli import threads
from convcli.errors import InputError, ModelError, ShapeError, WeightsError

__all__ = [
    "LayerStats",
    "check_memory",
    "feature_map_grid",
    "init_params",
    "is_relu_output",
    "is_softmax_output",
    "layer_stats",
    "load_inputs",
    "load_weights",
    "params_from_keras",
    "run",
    "run_batches",
    "save_array",
    "save_feature_maps",
    "save_weights",
    "scale_maps",
    "top_k",
]

Params = dict[str, np.ndarray]
LayerCallback = Callable[[L.Layer, np.ndarray, float], None]



def _shape_text(shape: tuple[int, ...]) -> str:
    return "(" + ", ".join(str(n) for n in shape) + ")"


def _available_bytes() -> int | None:
    """Memory the system can still give (MemAvailable), None where it cannot be read."""
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def check_memory(model: L.Model, batch: int = 1) -> None:
    """Refuse, before allocating anything, a model whose float32 parameters plus one batch's
    largest activations would not fit in the memory available.

    Raises:
        ModelError: saying how much it would need and how much there is.
    """
    need = model.param_bytes() + 4 * batch * max(
        (sum(math.prod(s) for s in node.input_shapes) + math.prod(node.output_shape) for node in model.nodes()),
        default=0,
    )
    available = _available_bytes()
    if available is not None and need > available:
        raise ModelError(
            f"the model needs {need / 2**30:.1f} GiB for its parameters and one batch of activations; "
            f"{available / 2**30:.1f} GiB of memory is available"
        )


def init_params(model: L.Model, seed: int = 0) -> Params:
    """Random parameters for ``model``, reproducible from ``seed``.

    Kernels (``kernel``, ``depthwise_kernel``, ``pointwise_kernel``): He normal,
    N(0, 2 / fan_in) (He et al. 2015, the initialisation made for ReLU networks; PyTorch's
    ``kaiming_normal_``). Biases 0; batch norm gamma 1, beta 0, moving mean 0, moving
    variance 1; a layer may set its own constant (LayerScale). Each array has its own
    generator seeded from ``seed`` and its key, so adding a layer leaves the other layers'
    weights unchanged.

    Raises:
        ModelError: the parameters would not fit in the available memory.
    """
    check_memory(model)
    params: Params = {}
    for node in model.nodes():
        layer = node.layer
        if layer.shares is not None:
            continue
        for param, shape in layer.param_shapes(*node.input_shapes).items():
            key = f"{layer.name}.{param}"
            constant = layer.init_value(param)
            if constant is not None:
                array = np.full(shape, constant, np.float32)
            elif param.endswith("kernel"):
                rng = np.random.default_rng([seed, zlib.crc32(key.encode())])
                std = math.sqrt(2.0 / layer.fan_in(param, shape))
                array = rng.standard_normal(shape, dtype=np.float32)
                array *= np.float32(std)
            elif param in ("gamma", "moving_variance", "variance"):
                array = np.ones(shape, np.float32)
            else:  # bias, beta, moving_mean, mean, count
                array = np.zeros(shape, np.float32)
            params[key] = array
    return params


def params_from_keras(model: L.Model, weights: Mapping[str, list[np.ndarray]], source: str) -> Params:
    """Keras' per-layer weight lists (in each layer's variable order) as ``"<layer>.<param>"``
    arrays for ``model``.

    Raises:
        WeightsError: a layer's weights are missing, too many, or of the wrong shape (naming
            the layer, the parameter and both shapes).
    """
    params: Params = {}
    problems: list[str] = []
    known = {node.layer.name for node in model.nodes()}
    for node in model.nodes():
        layer = node.layer
        expected = layer.param_shapes(*node.input_shapes)
        arrays = list(weights.get(layer.name, []))
        if not expected or layer.shares is not None:
            continue
        if len(arrays) != len(expected):
            problems.append(
                f"layer '{layer.name}' ({layer.type}) has {len(arrays)} weight array(s), expected "
                f"{len(expected)} ({', '.join(expected)})"
            )
            continue
        for (param, shape), array in zip(expected.items(), arrays):
            if tuple(array.shape) != shape:
                problems.append(
                    f"layer '{layer.name}' ({layer.type}) {param} has shape {_shape_text(array.shape)}, "
                    f"expected {_shape_text(shape)}"
                )
            params[f"{layer.name}.{param}"] = np.ascontiguousarray(array, dtype=np.float32)
    extra = [name for name, arrays in weights.items() if name not in known and len(arrays)]
    if extra:
        problems.append(f"weights for layers the model does not have: {', '.join(extra[:5])}")
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise WeightsError(f"weights in {source}: " + "; ".join(problems[:3]) + more)
    return params


def load_weights(model: L.Model, path: str | Path) -> Params:
    """Read and check a weights file for ``model``: ``.npz`` (keys ``<layer>.<param>``), or a
    Keras ``.weights.h5``, ``.keras`` or ``.h5`` file (each layer's variables in Keras' order).

    Raises:
        WeightsError: the file is missing or not a .npz archive; an array is missing,
            extra, not numeric, or has the wrong shape (the message names the key, the
            expected and the found shape).
    """
    from convcli import fileio

    path = Path(path)
    if path.name.lower().endswith((".h5", ".hdf5", ".keras")):
        from convcli.keras_files import read_keras_weights

        return params_from_keras(model, read_keras_weights(path, model.keras_config), path.name)
    expected = model.param_shapes()
    with fileio.open_npz(path, what="weights file", error=WeightsError) as archive:
        # names, shapes and dtypes come from the members' headers: nothing is inflated
        # before the archive is known to match the model
        found = {key: shape for key, (shape, _dtype) in archive.members.items()}
        problems: list[str] = []
        for key, shape in expected.items():
            if key not in found:
                problems.append(f"missing array '{key}' (expected shape {_shape_text(shape)})")
            elif found[key] != shape:
                problems.append(
                    f"array '{key}' has shape {_shape_text(found[key])}, expected {_shape_text(shape)}"
                )
            elif archive.members[key][1].kind not in "biuf":
                problems.append(f"array '{key}' has dtype {archive.members[key][1]}, expected numbers")
        for key, shape in found.items():
            if key not in expected:
                problems.append(
                    f"unexpected array '{key}' (shape {_shape_text(shape)}): the model has no such parameter"
                )
        if problems:
            more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
            raise WeightsError(f"weights file {path}: " + "; ".join(problems[:3]) + more)
        arrays = {key: archive.read(key) for key in expected}
    return {key: np.ascontiguousarray(arrays[key], dtype=np.float32) for key in expected}


def save_weights(params: Mapping[str, np.ndarray], path: str | Path) -> None:
    """Write ``params`` as a ``.npz`` archive, atomically (temporary file + rename): an
    existing file is replaced only once the new one is complete."""
    arrays = {key: np.asarray(value, np.float32) for key, value in params.items()}
    _atomic_write(Path(path), lambda stream: np.savez(stream, **arrays), "--save-weights")  # type: ignore[arg-type]


def _layer_weights(params: Mapping[str, np.ndarray], node: L.Node) -> dict[str, np.ndarray]:
    weights = {}
    owner = node.layer.shares or node.layer.name
    for param in node.layer.param_shapes(*node.input_shapes):
        key = f"{owner}.{param}"
        try:
            weights[param] = params[key]
        except KeyError:
            raise WeightsError(
                f"missing parameter '{key}' for layer '{node.layer.name}' ({node.layer.type})"
            ) from None
    return weights


_FUSABLE = (L.Conv2D, L.DepthwiseConv2D, L.SeparableConv2D, L.Conv2DTranspose, L.LocallyConnected2D, L.Dense)
"""Layers that apply an activation to each output chunk while it is in cache (``activation=``),
and into whose weights a following batch norm folds."""


class _Step(NamedTuple):
    """One computation of the pass: a layer, the batch norm folded into its weights, the
    activation fused into it, and the name its result goes by (the last layer it stands for)."""

    node: L.Node
    batch_norm: L.Node | None
    activation: L.Activation | None
    output: str

    def weights(self, params: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The layer's weights, the batch norm folded in (made when the step runs, so only
        one layer's folded copy exists at a time)."""
        weights = _layer_weights(params, self.node)
        if self.batch_norm is None:
            return weights
        bn = self.batch_norm.layer
        assert isinstance(bn, L.BatchNormalization)
        return _fold_batch_norm(self.node.layer, weights, bn, _layer_weights(params, self.batch_norm))


def _bn_affine(bn: L.Layer, bn_weights: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Inference-mode batch norm as y * scale + shift per channel (float64):
    scale = gamma / sqrt(var + eps), shift = beta - mean * scale."""
    assert isinstance(bn, L.BatchNormalization)
    var = bn_weights["moving_variance"].astype(np.float64)
    scale = 1.0 / np.sqrt(var + bn.epsilon)
    if "gamma" in bn_weights:
        scale = scale * bn_weights["gamma"]
    shift = -bn_weights["moving_mean"] * scale
    if "beta" in bn_weights:
        shift = shift + bn_weights["beta"]
    return scale, shift


def _fold_batch_norm(layer: L.Layer, weights: dict[str, np.ndarray], bn: L.BatchNormalization,
                     bn_weights: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The weights of ``layer`` followed by inference-mode batch norm, as one layer:
    y = (x*W + b - mean) * s + beta with s = gamma / sqrt(var + eps) is x*(W s) + (b - mean) s + beta."""
    scale, shift = _bn_affine(bn, bn_weights)
    folded = dict(weights)
    if isinstance(layer, L.DepthwiseConv2D):
        kernel = weights["depthwise_kernel"]
        folded["depthwise_kernel"] = kernel * scale.reshape(kernel.shape[2], kernel.shape[3])
    elif isinstance(layer, L.SeparableConv2D):
        folded["pointwise_kernel"] = weights["pointwise_kernel"] * scale
    elif isinstance(layer, L.Conv2DTranspose):
        folded["kernel"] = weights["kernel"] * scale[:, None]
    else:
        folded["kernel"] = weights["kernel"] * scale
    bias = weights.get("bias")
    folded["bias"] = shift if bias is None else bias * scale + shift
    return {key: np.ascontiguousarray(value, dtype=np.float32) for key, value in folded.items()}


def _plan(model: L.Model, fuse: bool, can_fold: Callable[[L.Node], bool] = lambda node: True) -> list[_Step]:
    """The steps of the pass. With ``fuse``, a batch norm whose input is a conv or dense
    layer's output (its only reader) is folded into that layer's weights (when
    ``can_fold(its node)``), and an Activation reading only that result is applied on each
    output chunk (not glu: it changes the shape)."""
    nodes = model.nodes()
    readers: dict[str, list[L.Node]] = {}
    for node in nodes:
        for source in node.inputs:
            readers.setdefault(source, []).append(node)

    def only_reader(name: str) -> L.Node | None:
        found = readers.get(name, [])
        return found[0] if len(found) == 1 and name != model.output_name else None

    steps: list[_Step] = []
    absorbed: set[str] = set()
    for node in nodes:
        layer = node.layer
        if layer.name in absorbed:
            continue
        batch_norm: L.Node | None = None
        activation: L.Activation | None = None
        output = layer.name
        if fuse and isinstance(layer, _FUSABLE) and layer.activation is None:
            following = only_reader(output)
            if (following is not None and isinstance(following.layer, L.BatchNormalization)
                    and can_fold(following)):
                batch_norm = following
                absorbed.add(following.layer.name)
                output = following.layer.name
                following = only_reader(output)
            if (following is not None and isinstance(following.layer, L.Activation)
                    and following.layer.function not in ("glu", "linear")):
                activation = following.layer
                absorbed.add(activation.name)
                output = activation.name
        steps.append(_Step(node, batch_norm, activation, output))
    return steps


def run(
    model: L.Model,
    x: np.ndarray,
    params: Mapping[str, np.ndarray],
    *,
    train_dropout: bool = False,
    seed: int = 0,
    on_layer: LayerCallback | None = None,
    rng: np.random.Generator | None = None,
    stats: Mapping[str, LayerStats] | None = None,
) -> np.ndarray:
    """Run ``model`` on the batch ``x`` (N, *model.input_shape) and return its output.

    The layers run in graph order; each output is released as soon as its last reader has
    run. Without ``on_layer``, a batch norm after a conv or dense layer is folded into its
    weights, an Activation after it is applied on each output chunk while it is in cache,
    and other element-wise activations overwrite arrays no later layer needs; ``stats``
    (from :func:`layer_stats`) then gathers every layer's time and statistics on the way,
    those of a conv or dense step from each output block while it is in cache.

    Args:
        params: ``"<layer>.<param>"`` -> array (from :func:`init_params` or :func:`load_weights`).
        train_dropout: apply inverted dropout (probability ``rate``) instead of the identity.
        seed: seeds the dropout masks (ignored when ``rng`` is given).
        on_layer: called as ``on_layer(layer, output, seconds)`` after every layer, each
            computed on its own (no folding or fusing: every layer's output exists).
        rng: a generator to draw dropout masks from (to continue one stream across batches).

    Raises:
        ShapeError: ``x`` does not match the model's input shape, or a layer does not fit.
        WeightsError: a parameter is missing from ``params``.
    """
    nodes = model.nodes()  # every layer must fit before any work is done
    x = np.ascontiguousarray(x, dtype=np.float32)
    expected = tuple(model.input_shape)
    if x.ndim != len(expected) + 1 or tuple(x.shape[1:]) != expected:
        raise ShapeError(
            f"the model expects inputs of shape {_shape_text(expected)} (a batch: (N, "
            f"{', '.join(str(n) for n in expected)})). Received: an array of shape {_shape_text(x.shape)}"
        )
    for node in nodes:  # every parameter must be there before any work is done
        _layer_weights(params, node)
    generator = rng if rng is not None else np.random.default_rng(seed)
    output = model.output_name
    readers: dict[str, int] = {output: 1}
    for node in nodes:
        for source in node.inputs:
            readers[source] = readers.get(source, 0) + 1
    values: dict[str, np.ndarray] = {model.input_name: x}
    owned: set[str] = set()  # arrays made here, which an in-place activation may overwrite
    def can_fold(bn: L.Node) -> bool:  # statistics undo the batch norm: no zero scale
        return stats is None or bool(np.all(_bn_affine(bn.layer, _layer_weights(params, bn))[0] != 0))

    for step in _plan(model, fuse=on_layer is None, can_fold=can_fold):
        node, layer = step.node, step.node.layer
        xs = [values[source] for source in node.inputs]
        inplace = (
            on_layer is None and len(node.inputs) == 1 and node.inputs[0] in owned
            and readers[node.inputs[0]] == 1
        )
        observer = _StepObserver(step, stats) if stats is not None and isinstance(layer, _FUSABLE) else None
        ctx = L.Context(
            train_dropout=train_dropout, rng=generator, inplace=inplace,
            activation=step.activation.function if step.activation else None,
            alpha=step.activation.alpha if step.activation else None,
            observe=observer,
        )
        start = time.perf_counter()
        out = layer.forward(step.weights(params), xs, ctx)
        seconds = time.perf_counter() - start
        if on_layer is not None:
            on_layer(layer, out, seconds)
        if observer is not None:
            observer.close(seconds, params)
        elif stats is not None:
            stats[step.output].add(out, seconds)
        values[step.output] = out
        if out is not x and not any(np.may_share_memory(out, v) for v in xs):
            owned.add(step.output)
        for source in node.inputs:
            readers[source] -= 1
            if readers[source] == 0:
                del values[source]
    return values[output]


# --------------------------------------------------------------------------------------
# Batches, inputs and statistics for `convcli run`
# --------------------------------------------------------------------------------------


def run_batches(
    model: L.Model,
    x: np.ndarray,
    params: Mapping[str, np.ndarray],
    *,
    batch_size: int = 64,
    train_dropout: bool = False,
    seed: int = 0,
    on_layer: LayerCallback | None = None,
    on_batch: Callable[[int], None] | None = None,
    stats: Mapping[str, LayerStats] | None = None,
) -> np.ndarray:
    """:func:`run` on ``x`` in batches of ``batch_size`` (bounded activation memory).

    One dropout generator (from ``seed``) runs through all batches; ``on_batch(n)`` is
    called with the number of samples after each batch (for a progress bar). On a machine
    with two or more cores, a batch big enough (:data:`SPLIT_MACS`) runs as two halves on
    two threads (not with ``on_layer`` or ``train_dropout``, whose order is sequential).
    """
    if batch_size < 1:
        raise InputError(f"the batch size must be a positive integer. Received: batch_size={batch_size}")
    check_memory(model, min(batch_size, max(len(x), 1)))
    generator = np.random.default_rng(seed)
    out: np.ndarray | None = None
    n = len(x)
    split = on_layer is None and not train_dropout and threads.cores() >= 2
    macs = sum(node.layer.macs(*node.input_shapes) for node in model.nodes()) if split else 0
    for start in range(0, n, batch_size):
        batch = x[start : start + batch_size]
        half = len(batch) // 2
        if split and half and half * macs >= SPLIT_MACS:
            parts = _run_halves(model, batch[:half], batch[half:], params, stats)
        else:
            parts = [run(model, batch, params, train_dropout=train_dropout, on_layer=on_layer, rng=generator,
                         stats=stats)]
        if out is None:
            out = np.empty((n, *parts[0].shape[1:]), np.float32)
        done = start
        for part in parts:
            out[done : done + len(part)] = part
            done += len(part)
        if on_batch is not None:
            on_batch(len(batch))
    assert out is not None
    return out


SPLIT_MACS = 20_000_000
"""Multiply-accumulates (half a batch through the model) from which :func:`run_batches` runs
the two halves of a batch on two threads, each product on one BLAS thread: every step of
the pass (copies, pooling, activations, statistics) then uses both cores, not only the
products, and no BLAS thread waits for a core another process holds."""


def _run_halves(model: L.Model, first: np.ndarray, second: np.ndarray, params: Mapping[str, np.ndarray],
                stats: Mapping[str, LayerStats] | None) -> list[np.ndarray]:
    """:func:`run` on ``first`` here and on ``second`` on another thread at the same time;
    their statistics are joined into ``stats``."""
    from concurrent.futures import ThreadPoolExecutor

    halves = (layer_stats(model), layer_stats(model)) if stats is not None else (None, None)
    with threads.blas_threads(1), ThreadPoolExecutor(max_workers=1) as pool:
        other = pool.submit(run, model, second, params, stats=halves[1])
        results = [run(model, first, params, stats=halves[0]), other.result()]
    if stats is not None:
        assert halves[0] is not None and halves[1] is not None
        for name, joined in stats.items():
            joined.join(halves[0][name], halves[1][name])
    return results


def is_relu_output(layer: L.Layer) -> bool:
    """True when the layer's output went through a ReLU (a RELU layer or a fused relu)."""
    return L.output_activation(layer) == "relu"


def is_softmax_output(model: L.Model) -> bool:
    """True when the model ends in a softmax over a flat output (class probabilities)."""
    if not model.layers or len(model.output_shape()) != 1:
        return False
    last = next(layer for layer in model.layers if layer.name == model.output_name)
    return L.output_activation(last) == "softmax"


class _Running:
    """Running minimum, maximum, sum and count of arrays seen in blocks of rows (positions,
    channels): over everything, or per channel (to undo a folded batch norm afterwards);
    with ``zeros``, the number of exact zeros too."""

    def __init__(self, per_channel: bool = False, zeros: bool = False):
        self.per_channel = per_channel
        self.zeros: int | None = 0 if zeros else None
        self.minimum: Any = math.inf
        self.maximum: Any = -math.inf
        self.total: Any = 0.0
        self.count = 0

    def add(self, rows: np.ndarray) -> None:
        """Fold in ``rows`` (any shape overall; (positions, channels) per channel)."""
        if not rows.size:
            return
        if self.per_channel:
            self.minimum = np.minimum(self.minimum, rows.min(axis=0))
            self.maximum = np.maximum(self.maximum, rows.max(axis=0))
            self.total = self.total + rows.sum(axis=0, dtype=np.float64)
            self.count += len(rows)
        else:
            self.minimum = min(self.minimum, float(rows.min()))
            self.maximum = max(self.maximum, float(rows.max()))
            self.total += float(rows.sum(dtype=np.float64))
            self.count += rows.size
        if self.zeros is not None:
            self.zeros += rows.size - int(np.count_nonzero(rows))

    def overall(self) -> tuple[float, float, float, int]:
        """(minimum, maximum, sum, count) over every value seen."""
        if not self.per_channel:
            return self.minimum, self.maximum, self.total, self.count
        if not self.count:
            return math.inf, -math.inf, 0.0, 0
        channels = len(self.total)
        return float(self.minimum.min()), float(self.maximum.max()), float(self.total.sum()), self.count * channels

    def undo(self, scale: np.ndarray, shift: np.ndarray) -> tuple[float, float, float, int]:
        """:meth:`overall` of the values y that were seen as y * scale + shift per channel
        (scale never 0): a layer's output from that of the batch norm folded into it."""
        assert self.per_channel
        if not self.count:
            return math.inf, -math.inf, 0.0, 0
        low = (self.minimum - shift) / scale
        high = (self.maximum - shift) / scale
        total = (self.total - self.count * shift) / scale
        return (float(np.minimum(low, high).min()), float(np.maximum(low, high).max()), float(total.sum()),
                self.count * len(total))


class LayerStats:
    """Output statistics of one layer, accumulated over batches: time, min, mean, max and,
    after a ReLU, the fraction of exact zeros (dead or inactive units). A batch norm folded
    into the layer before it has no time of its own (``folded_into`` names that layer)."""

    def __init__(self, layer: L.Layer, output_shape: tuple[int, ...]):
        self.layer = layer
        self.output_shape = output_shape
        self.seconds = 0.0
        self.minimum = math.inf
        self.maximum = -math.inf
        self.total = 0.0
        self.count = 0
        self.zeros = 0
        self.relu = is_relu_output(layer)
        self.folded_into: str | None = None

    def add(self, output: np.ndarray, seconds: float) -> None:
        """Fold in one batch's output."""
        running = _Running(zeros=self.relu)
        running.add(output)
        self.merge(running.overall(), seconds, running.zeros)

    def merge(self, summary: tuple[float, float, float, int], seconds: float, zeros: int | None = None) -> None:
        """Fold in (minimum, maximum, sum, count) of one batch's output, and its zeros."""
        minimum, maximum, total, count = summary
        self.seconds += seconds
        if count:
            self.minimum = min(self.minimum, minimum)
            self.maximum = max(self.maximum, maximum)
            self.total += total
            self.count += count
            self.zeros += zeros or 0

    def join(self, *parts: LayerStats) -> None:
        """Fold in the statistics of parts of one batch computed at the same time on
        different threads: they took as long as the longest of them."""
        self.seconds += max(part.seconds for part in parts)
        for part in parts:
            self.merge((part.minimum, part.maximum, part.total, part.count), 0.0, part.zeros)
            self.folded_into = self.folded_into or part.folded_into

    @property
    def mean(self) -> float:
        return self.total / self.count if self.count else math.nan

    @property
    def zero_fraction(self) -> float | None:
        """Fraction of zeros for a ReLU output, None for other layers."""
        return self.zeros / self.count if self.relu and self.count else None

    def to_json(self) -> dict[str, object]:
        """Plain data for ``--json`` (non-finite statistics become null: JSON has no NaN)."""

        def finite(value: float) -> float | None:
            return value if math.isfinite(value) else None

        document: dict[str, object] = {
            "name": self.layer.name,
            "type": self.layer.type,
            "output_shape": list(self.output_shape),
            "seconds": self.seconds,
            "min": finite(self.minimum),
            "mean": finite(self.mean),
            "max": finite(self.maximum),
            "zero_fraction": self.zero_fraction,
        }
        if self.folded_into is not None:
            document["folded_into"] = self.folded_into
        return document


class _StepObserver:
    """The statistics of one fused step — its layer, the batch norm folded into it, the
    activation applied on each block — taken from each output block while it is in cache
    (a :class:`convcli.ops.BlockObserver`), then handed to their :class:`LayerStats`."""

    def __init__(self, step: _Step, stats: Mapping[str, LayerStats]):
        self.step = step
        self.stats = stats
        activated = step.activation is not None
        per_channel = step.batch_norm is not None
        out_row = step.output if activated else step.node.layer.name
        # before the activation: the layer's (or folded batch norm's) output
        self.before = _Running(per_channel) if activated else None
        self.after = _Running(per_channel and not activated, zeros=stats[out_row].relu)
        self.activation_seconds = 0.0
        self._activation_start = 0.0

    def before_activation(self, block: np.ndarray) -> None:
        if self.before is not None:
            self.before.add(block)
            self._activation_start = time.perf_counter()

    def finished(self, block: np.ndarray) -> None:
        if self.before is not None:
            self.activation_seconds += time.perf_counter() - self._activation_start
        self.after.add(block)

    def close(self, seconds: float, params: Mapping[str, np.ndarray]) -> None:
        """Hand the batch's statistics to the step's layers (``seconds``: the whole step)."""
        step = self.step
        layer_out = self.before if self.before is not None else self.after
        if step.activation is not None:
            self.stats[step.activation.name].merge(self.after.overall(), self.activation_seconds, self.after.zeros)
        if step.batch_norm is not None:
            bn = self.stats[step.batch_norm.layer.name]
            bn.folded_into = step.node.layer.name
            bn.merge(layer_out.overall(), 0.0)
            scale, shift = _bn_affine(step.batch_norm.layer, _layer_weights(params, step.batch_norm))
            summary = layer_out.undo(scale, shift)
        else:
            summary = layer_out.overall()
        own_zeros = self.after.zeros if layer_out is self.after else None
        self.stats[step.node.layer.name].merge(summary, seconds - self.activation_seconds, own_zeros)


def layer_stats(model: L.Model) -> dict[str, LayerStats]:
    """One :class:`LayerStats` per layer, by name in the model's order, for :func:`run`'s ``stats``."""
    return {layer.name: LayerStats(layer, out_shape) for layer, _, out_shape in model.shapes()}


def top_k(probs: np.ndarray, k: int = 5, class_names: tuple[str, ...] | None = None) -> list[list[tuple[int, str, float]]]:
    """Per sample, the ``k`` most probable classes as (index, name, probability), best first.

    Class names are used when there is one per output unit, else the indices are the names.

    >>> top_k(np.array([[0.1, 0.7, 0.2]]), 2, ("cat", "dog", "owl"))
    [[(1, 'dog', 0.7), (2, 'owl', 0.2)]]
    """
    units = probs.shape[1]
    names = class_names if class_names is not None and len(class_names) == units else None
    order = np.argsort(-probs, axis=1, kind="stable")[:, : min(k, units)]
    return [
        [(int(i), names[i] if names else str(int(i)), float(row[i])) for i in idx]
        for row, idx in zip(probs, order)
    ]


def _convert_depth(image: np.ndarray, depth: int) -> np.ndarray | None:
    """Gray <-> RGB to the model's depth (luma 0.299 R + 0.587 G + 0.114 B, as Pillow's
    "L"; gray to RGB repeats the channel). None when no conversion applies."""
    from convcli.images import LUMA_WEIGHTS

    channels = image.shape[2]
    if channels == depth:
        return image
    if depth == 1 and channels == 3:
        return np.ascontiguousarray(image @ np.asarray(LUMA_WEIGHTS, np.float32))[:, :, None]
    if depth == 3 and channels == 1:
        return np.repeat(image, 3, axis=2)
    return None


def load_inputs(sources: list[str], input_shape: tuple[int, ...]) -> tuple[np.ndarray, list[str]]:
    """Read ``convcli run`` inputs into one float32 batch (N, *input_shape) and a label per sample.

    Images become float32 in [0, 1] (8-bit / 255, 16-bit / 65535, alpha dropped); a gray
    image for an RGB model is repeated on 3 channels and an RGB image for a 1-channel
    model becomes luma. Images are never resized: a size that differs from the model's
    input is an error naming both. ``.npy`` files hold one input (H, W, D) or a batch
    (N, H, W, D) (or (units,) / (N, units) for a flat model), used as they are.

    Raises:
        InputError: unreadable file, wrong size or depth.
    """
    if not sources:
        raise InputError("give at least one INPUT (an image or a .npy array)")
    expected = tuple(input_shape)
    arrays: list[np.ndarray] = []
    labels: list[str] = []
    for source in sources:
        if source.lower().endswith(".npy"):
            array = _load_npy(source)
            single = tuple(array.shape) == expected
            if single:
                array = array[None]
            if array.ndim != len(expected) + 1 or tuple(array.shape[1:]) != expected:
                raise InputError(
                    f"{source} holds an array of shape {_shape_text(array.shape)}; the model expects "
                    f"{_shape_text(expected)} or a batch (N, {', '.join(map(str, expected))})"
                )
            arrays.append(array)
            labels.extend([source] if single else [f"{source}[{i}]" for i in range(len(array))])
            continue
        if len(expected) != 3:
            raise InputError(
                f"{source}: the model takes flat inputs of shape {_shape_text(expected)}; give a .npy array, not an image"
            )
        from convcli.images import to_unit_float

        image = to_unit_float(source)
        converted = _convert_depth(image, expected[2])
        if image.shape[:2] != expected[:2] or converted is None:
            raise InputError(
                f"image {source} is {'x'.join(map(str, image.shape))} (height x width x channels) but the "
                f"model expects {'x'.join(map(str, expected))}; convcli run does not resize images"
            )
        arrays.append(converted[None])
        labels.append(source)
    return np.ascontiguousarray(np.concatenate(arrays), dtype=np.float32), labels


def _load_npy(source: str) -> np.ndarray:
    from convcli import fileio

    array = fileio.load_npy(source, what="input")
    if array.dtype.kind not in "biuf":
        raise InputError(f"input {source} does not hold a numeric array")
    return array.astype(np.float32, copy=False)


def save_array(array: np.ndarray, path: str | Path) -> None:
    """Write ``array`` as ``.npy`` atomically (temporary file in the same folder + rename)."""
    path = Path(path)
    _atomic_write(path, lambda stream: np.save(stream, array, allow_pickle=False), "-o")


def _atomic_write(path: Path, write: Callable[[Any], None], what: str = "output") -> None:
    from convcli import fileio

    fileio.write_file(path, write, what=what)


# --------------------------------------------------------------------------------------
# Pictures of feature maps (--save-maps)
# --------------------------------------------------------------------------------------

_MAX_GRID_SIDE = 4096
_MIN_TILE = 48


def scale_maps(maps: np.ndarray) -> np.ndarray:
    """Each map (the last axis indexes maps) scaled on its own from its min..max onto 0..255
    (uint8); a constant map becomes 0.

    >>> scale_maps(np.array([[[0.0, 5.0], [2.0, 5.0]]])).tolist()
    [[[0, 0], [255, 0]]]
    """
    maps = maps.astype(np.float64)
    low = maps.min(axis=(0, 1), keepdims=True)
    span = maps.max(axis=(0, 1), keepdims=True) - low
    scaled = np.divide(maps - low, span, out=np.zeros_like(maps), where=span > 0)
    return np.rint(scaled * 255).astype(np.uint8)


def feature_map_grid(maps: np.ndarray, title: str) -> object:
    """A labelled grid picture (Pillow image, mode "L") of the feature maps (H, W, D).

    Maps are laid out in a near-square grid, each scaled to 0..255 on its own, enlarged
    (nearest neighbour) to at least 48 pixels when small, subsampled when the grid would
    exceed 4096 pixels; each tile is labelled with its map index, the grid with ``title``.
    """
    from PIL import Image, ImageDraw

    h, w, d = maps.shape
    cols = math.ceil(math.sqrt(d))
    rows = math.ceil(d / cols)
    step = max(1, math.ceil(cols * w / _MAX_GRID_SIDE), math.ceil(rows * h / _MAX_GRID_SIDE))
    tiles = scale_maps(maps)[::step, ::step]
    zoom = max(1, _MIN_TILE // max(tiles.shape[0], tiles.shape[1]))
    if zoom > 1:
        tiles = tiles.repeat(zoom, axis=0).repeat(zoom, axis=1)
    th, tw = tiles.shape[:2]
    gap, label_h, title_h = 4, 12, 16
    cell_w, cell_h = max(tw, 24) + gap, th + label_h + gap
    canvas = Image.new("L", (max(cols * cell_w + gap, 8 * len(title) + 2 * gap), title_h + rows * cell_h + gap), 40)
    draw = ImageDraw.Draw(canvas)
    draw.text((gap, 2), title, fill=255)
    for index in range(d):
        r, c = divmod(index, cols)
        x0, y0 = gap + c * cell_w, title_h + r * cell_h
        draw.text((x0, y0), str(index), fill=200)
        canvas.paste(Image.fromarray(np.ascontiguousarray(tiles[:, :, index])), (x0, y0 + label_h))
    return canvas


def save_feature_maps(
    folder: str | Path, maps: list[tuple[str, str, np.ndarray]]
) -> list[Path]:
    """Write one PNG grid per entry ``(file stem, title, maps (H, W, D))`` into ``folder``
    (created if needed), each atomically. Returns the paths written."""
    from convcli import fileio

    folder = fileio.make_folder(folder, "--save-maps")
    written = []
    for stem, title, array in maps:
        image = feature_map_grid(array, title)
        path = folder / f"{stem}.png"
        _atomic_write(path, lambda stream, image=image: image.save(stream, format="PNG"), "--save-maps")  # type: ignore[attr-defined, misc]
        written.append(path)
    return written

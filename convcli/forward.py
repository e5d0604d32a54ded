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
import os
import tempfile
import time
import zipfile
import zlib
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

from convcli import layers as L
from convcli import ops
from convcli.errors import InputError, ModelError, ShapeError, WeightsError

__all__ = ["FUSED_LEAKY_RELU_ALPHA", "init_params", "load_weights", "save_weights", "run", "fan_in"]

Params = dict[str, np.ndarray]
LayerCallback = Callable[[L.Layer, np.ndarray, float], None]

FUSED_LEAKY_RELU_ALPHA = 0.2
"""Negative slope of a fused ``activation="leaky_relu"`` (Keras' ``activations.leaky_relu``
default). A separate LRELU/LeakyReLU layer carries its own alpha (Keras' layer: 0.3)."""


def _shape_text(shape: tuple[int, ...]) -> str:
    return "(" + ", ".join(str(n) for n in shape) + ")"


def fan_in(layer: L.Layer, key: str, shape: tuple[int, ...]) -> int:
    """Inputs feeding one output neuron: F_h*F_w*D for conv and local kernels, ``in`` for dense."""
    if isinstance(layer, L.LocallyConnected2D):
        return shape[1]
    if isinstance(layer, L.Conv2D):
        return math.prod(shape[:-1])
    return shape[0]


def init_params(model: L.Model, seed: int = 0) -> Params:
    """Random parameters for ``model``, reproducible from ``seed``.

    Kernels of Conv2D, LocallyConnected2D and Dense: He normal, N(0, 2 / fan_in) (He et
    al. 2015, the initialisation made for ReLU networks; PyTorch's ``kaiming_normal_``).
    Biases 0; batch norm gamma 1, beta 0, moving mean 0, moving variance 1. Each array has
    its own generator seeded from ``seed`` and its key, so adding a layer leaves the other
    layers' weights unchanged.
    """
    params: Params = {}
    for layer, in_shape, _ in model.shapes():
        for param, shape in layer.param_shapes(in_shape).items():
            key = f"{layer.name}.{param}"
            if param == "kernel":
                rng = np.random.default_rng([seed, zlib.crc32(key.encode())])
                std = math.sqrt(2.0 / fan_in(layer, key, shape))
                array = rng.standard_normal(shape, dtype=np.float32)
                array *= np.float32(std)
            elif param in ("gamma", "moving_variance"):
                array = np.ones(shape, np.float32)
            else:  # bias, beta, moving_mean
                array = np.zeros(shape, np.float32)
            params[key] = array
    return params


def load_weights(model: L.Model, path: str | Path) -> Params:
    """Read and check a ``.npz`` weights file for ``model`` (keys ``<layer>.<param>``).

    Raises:
        WeightsError: the file is missing or not a .npz archive; an array is missing,
            extra, not numeric, or has the wrong shape (the message names the key, the
            expected and the found shape).
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file {path} does not exist")
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise WeightsError(f"weights file {path} is not a readable .npz archive ({exc})") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise WeightsError(f"weights file {path} is a single array, not a .npz archive of named arrays")
    expected = model.param_shapes()
    with archive:
        found = {key: archive[key] for key in archive.files}
    problems: list[str] = []
    for key, shape in expected.items():
        if key not in found:
            problems.append(f"missing array '{key}' (expected shape {_shape_text(shape)})")
        elif found[key].shape != shape:
            problems.append(
                f"array '{key}' has shape {_shape_text(found[key].shape)}, expected {_shape_text(shape)}"
            )
        elif not (np.issubdtype(found[key].dtype, np.floating) or np.issubdtype(found[key].dtype, np.integer)):
            problems.append(f"array '{key}' has dtype {found[key].dtype}, expected numbers")
    for key in found:
        if key not in expected:
            problems.append(
                f"unexpected array '{key}' (shape {_shape_text(found[key].shape)}): the model has no such parameter"
            )
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise WeightsError(f"weights file {path}: " + "; ".join(problems[:3]) + more)
    return {key: np.ascontiguousarray(found[key], dtype=np.float32) for key in expected}


def save_weights(params: Mapping[str, np.ndarray], path: str | Path) -> None:
    """Write ``params`` as a ``.npz`` archive, atomically (temporary file + rename): an
    existing file is replaced only once the new one is complete."""
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise InputError(f"cannot write {path}: folder {folder} does not exist")
    handle, temp = tempfile.mkstemp(dir=folder, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as stream:
            np.savez(stream, **{key: np.asarray(value, np.float32) for key, value in params.items()})
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def _get(params: Mapping[str, np.ndarray], layer: L.Layer, param: str) -> np.ndarray:
    key = f"{layer.name}.{param}"
    try:
        return params[key]
    except KeyError:
        raise WeightsError(f"missing parameter '{key}' for layer '{layer.name}' ({layer.type})") from None


def _forward_layer(
    layer: L.Layer, x: np.ndarray, params: Mapping[str, np.ndarray], *, train_dropout: bool,
    rng: np.random.Generator,
) -> np.ndarray:
    """One layer's computation on a batch (dispatch on the layer's class)."""
    if isinstance(layer, L.Conv2D):
        return ops.conv2d(
            x, _get(params, layer, "kernel"), _get(params, layer, "bias") if layer.use_bias else None,
            strides=layer.strides, padding=layer.padding, dilation=layer.dilation,
            activation=layer.activation, alpha=_fused_alpha(layer.activation),
        )
    if isinstance(layer, L.LocallyConnected2D):
        return ops.locally_connected2d(
            x, _get(params, layer, "kernel"), _get(params, layer, "bias") if layer.use_bias else None,
            kernel_size=layer.kernel_size, strides=layer.strides,
            activation=layer.activation, alpha=_fused_alpha(layer.activation),
        )
    if isinstance(layer, L.Dense):
        return ops.dense(
            x, _get(params, layer, "kernel"), _get(params, layer, "bias") if layer.use_bias else None,
            activation=layer.activation, alpha=_fused_alpha(layer.activation),
        )
    if isinstance(layer, L.Activation):
        return ops.activate(x, layer.function, layer.alpha)
    if isinstance(layer, L.MaxPooling2D):
        return ops.max_pool2d(x, layer.pool_size, layer.strides, layer.padding)
    if isinstance(layer, L.AveragePooling2D):
        return ops.avg_pool2d(x, layer.pool_size, layer.strides, layer.padding)
    if isinstance(layer, L.GlobalMaxPooling2D):  # before its base class GlobalAveragePooling2D
        return ops.global_max_pool2d(x)
    if isinstance(layer, L.GlobalAveragePooling2D):
        return ops.global_avg_pool2d(x)
    if isinstance(layer, L.Flatten):
        return ops.flatten(x)
    if isinstance(layer, L.ZeroPadding2D):
        return ops.zero_pad2d(x, layer.padding)
    if isinstance(layer, L.BatchNormalization):
        return ops.batch_norm(
            x, _get(params, layer, "gamma"), _get(params, layer, "beta"),
            _get(params, layer, "moving_mean"), _get(params, layer, "moving_variance"), layer.epsilon,
        )
    if isinstance(layer, L.Dropout):
        return ops.dropout(x, layer.rate, training=train_dropout, rng=rng)
    raise ModelError(f"layer '{layer.name}': no forward computation for layer type {layer.type}")


def _fused_alpha(activation: str | None) -> float | None:
    return FUSED_LEAKY_RELU_ALPHA if activation == "leaky_relu" else None


def run(
    model: L.Model,
    x: np.ndarray,
    params: Mapping[str, np.ndarray],
    *,
    train_dropout: bool = False,
    seed: int = 0,
    on_layer: LayerCallback | None = None,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """Run ``model`` on the batch ``x`` (N, *model.input_shape) and return the last output.

    Args:
        params: ``"<layer>.<param>"`` -> array (from :func:`init_params` or :func:`load_weights`).
        train_dropout: apply inverted dropout (probability ``rate``) instead of the identity.
        seed: seeds the dropout masks (ignored when ``rng`` is given).
        on_layer: called as ``on_layer(layer, output, seconds)`` after every layer.
        rng: a generator to draw dropout masks from (to continue one stream across batches).

    Raises:
        ShapeError: ``x`` does not match the model's input shape, or a layer does not fit.
        WeightsError: a parameter is missing from ``params``.
    """
    model.shapes()  # every layer must fit before any work is done
    x = np.ascontiguousarray(x, dtype=np.float32)
    expected = tuple(model.input_shape)
    if x.ndim != len(expected) + 1 or tuple(x.shape[1:]) != expected:
        raise ShapeError(
            f"the model expects inputs of shape {_shape_text(expected)} (a batch: (N, "
            f"{', '.join(str(n) for n in expected)})). Received: an array of shape {_shape_text(x.shape)}"
        )
    generator = rng if rng is not None else np.random.default_rng(seed)
    for layer in model.layers:
        start = time.perf_counter()
        x = _forward_layer(layer, x, params, train_dropout=train_dropout, rng=generator)
        if on_layer is not None:
            on_layer(layer, x, time.perf_counter() - start)
    return x

"""Every op of convcli.ops beside the Keras layer it implements, on random data.

    KERAS_BACKEND=torch python benchmarks/ops_keras_parity.py

Not a test (the suite never imports Keras): a check to run in an environment that has
Keras 3 and a backend (made with Keras 3.15.1 and PyTorch 2.13 CPU). Each row builds the
Keras layer with random weights, runs it, runs the convcli op with the same weights, and
prints the largest difference relative to the largest output value. Keras' sparsemax
(3.15 and older) is known to be wrong whenever more than one value survives
(keras-team/keras issue 23425), so it is compared on rows with one dominant value only.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("KERAS_BACKEND", "torch")

import keras
from keras import layers

from convcli import ops

RNG = np.random.default_rng(0)


def rand(*shape: int, scale: float = 1.0) -> np.ndarray:
    return (RNG.standard_normal(shape) * scale).astype(np.float32)


def run(layer: Any, *inputs: np.ndarray) -> np.ndarray:
    result = layer(list(inputs)) if len(inputs) > 1 else layer(inputs[0])
    return np.asarray(keras.ops.convert_to_numpy(result))


def weights(layer: Any) -> list[np.ndarray]:
    return [np.asarray(w) for w in layer.get_weights()]


ROWS: list[tuple[str, Callable[[], tuple[np.ndarray, np.ndarray]]]] = []


def row(name: str) -> Callable[[Callable[[], tuple[np.ndarray, np.ndarray]]], Callable[[], Any]]:
    def add(fn: Callable[[], tuple[np.ndarray, np.ndarray]]) -> Callable[[], Any]:
        ROWS.append((name, fn))
        return fn
    return add


for _name in ops.ACTIVATIONS:
    def _activation(name: str = _name) -> tuple[np.ndarray, np.ndarray]:
        if name == "sparsemax":
            z = rand(4, 10)
            z[:, 0] += 10  # one dominant value per row (see the module docstring)
        else:
            z = np.concatenate([np.linspace(-90, 90, 1001), np.linspace(-4, 4, 401)]).astype(np.float32)[None]
        if name == "threshold":  # keras.activations.threshold has no defaults
            return keras.ops.convert_to_numpy(keras.activations.threshold(z, 0.0, 0.0)), ops.activate(z, name)
        return run(layers.Activation(name), z), ops.activate(z, name)
    ROWS.append((f"Activation({_name})", _activation))

for _args in [{"max_value": 6.0}, {"negative_slope": 0.3}, {"threshold": 1.0},
              {"max_value": 6.0, "negative_slope": 0.1, "threshold": 0.5}]:
    def _relu(args: dict[str, float] = _args) -> tuple[np.ndarray, np.ndarray]:
        z = rand(2, 50, scale=5)
        return run(layers.ReLU(**args), z), ops.relu(z, **args)
    ROWS.append((f"ReLU({', '.join(f'{k}={v}' for k, v in _args.items())})", _relu))


@row("Conv2D(groups=3, same)")
def _grouped() -> tuple[np.ndarray, np.ndarray]:
    x, layer = rand(2, 9, 10, 6), layers.Conv2D(9, 3, padding="same", groups=3)
    y = run(layer, x)
    return y, ops.conv2d(x, *weights(layer), padding="same", groups=3)


@row("Conv2D(dilation=2, same)")
def _dilated() -> tuple[np.ndarray, np.ndarray]:
    x, layer = rand(2, 11, 10, 3), layers.Conv2D(4, 3, padding="same", dilation_rate=2)
    y = run(layer, x)
    return y, ops.conv2d(x, *weights(layer), padding="same", dilation=2)


@row("Conv2D(groups=C, 7x7, same)")
def _convnext_depthwise() -> tuple[np.ndarray, np.ndarray]:
    x, layer = rand(2, 9, 9, 8), layers.Conv2D(8, 7, padding="same", groups=8)
    y = run(layer, x)
    return y, ops.conv2d(x, *weights(layer), padding="same", groups=8)


for _s, _p, _m in [(1, "same", 1), (2, "same", 1), (2, "valid", 2), (1, "valid", 3)]:
    def _depthwise(s: int = _s, p: str = _p, m: int = _m) -> tuple[np.ndarray, np.ndarray]:
        x, layer = rand(2, 10, 9, 4), layers.DepthwiseConv2D(3, strides=s, padding=p, depth_multiplier=m)
        y = run(layer, x)
        return y, ops.depthwise_conv2d(x, *weights(layer), strides=s, padding=p)
    ROWS.append((f"DepthwiseConv2D(strides={_s}, {_p}, multiplier={_m})", _depthwise))


@row("SeparableConv2D(strides=2, same, multiplier=2)")
def _separable() -> tuple[np.ndarray, np.ndarray]:
    x, layer = rand(2, 10, 9, 3), layers.SeparableConv2D(5, 3, strides=2, padding="same", depth_multiplier=2)
    y = run(layer, x)
    return y, ops.separable_conv2d(x, *weights(layer), strides=2, padding="same")


for _f, _s, _p, _op in [(3, 2, "same", None), (3, 2, "valid", None), (3, 2, "same", 1), (4, 3, "valid", 2),
                        (2, 2, "same", None), (5, 2, "same", 0)]:
    def _transpose(f: int = _f, s: int = _s, p: str = _p, op: int | None = _op) -> tuple[np.ndarray, np.ndarray]:
        x, layer = rand(2, 5, 6, 3), layers.Conv2DTranspose(4, f, strides=s, padding=p, output_padding=op)
        y = run(layer, x)
        return y, ops.conv2d_transpose(x, *weights(layer), strides=s, padding=p, output_padding=op)
    ROWS.append((f"Conv2DTranspose({_f}, strides={_s}, {_p}, output_padding={_op})", _transpose))

for _size, _interp in [((2, 2), "nearest"), ((3, 2), "nearest"), ((2, 2), "bilinear"), ((3, 2), "bilinear")]:
    def _upsampling(size: tuple[int, int] = _size, interp: str = _interp) -> tuple[np.ndarray, np.ndarray]:
        x = rand(2, 5, 7, 3)
        return run(layers.UpSampling2D(size, interpolation=interp), x), ops.upsampling2d(x, size, interp)
    ROWS.append((f"UpSampling2D({_size}, {_interp})", _upsampling))


@row("Cropping2D(((1, 2), (0, 3)))")
def _cropping() -> tuple[np.ndarray, np.ndarray]:
    x = rand(2, 6, 7, 3)
    return run(layers.Cropping2D(((1, 2), (0, 3))), x), ops.cropping2d(x, (1, 2, 0, 3))


@row("Permute((3, 1, 2)), Reshape((-1, 6))")
def _rearrange() -> tuple[np.ndarray, np.ndarray]:
    x = rand(2, 3, 4, 6)
    theirs = run(layers.Reshape((-1, 6)), run(layers.Permute((3, 1, 2)), x))
    return theirs, ops.reshape(ops.permute(x, (3, 1, 2)), (-1, 6))


@row("Rescaling(1/127.5, -1)")
def _rescaling() -> tuple[np.ndarray, np.ndarray]:
    x = RNG.uniform(0, 255, (2, 4, 4, 3)).astype(np.float32)
    return run(layers.Rescaling(1 / 127.5, -1), x), ops.rescaling(x, 1 / 127.5, -1)


@row("Normalization(mean, variance with a 0), invert too")
def _normalization() -> tuple[np.ndarray, np.ndarray]:
    x, mean, var = rand(2, 4, 4, 3), [0.5, -1.0, 2.0], [4.0, 0.0, 0.25]
    theirs = np.concatenate([run(layers.Normalization(mean=mean, variance=var), x),
                             run(layers.Normalization(mean=mean, variance=var, invert=True), x)])
    ours = np.concatenate([ops.normalization(x, np.float32(mean), np.float32(var)),
                           ops.normalization(x, np.float32(mean), np.float32(var), invert=True)])
    return theirs, ours


for _axis, _eps, _center, _scale in [(-1, 1e-6, True, True), ([1, 2, 3], 1e-3, False, True), (-1, 1e-3, True, False)]:
    def _layer_norm(axis: Any = _axis, eps: float = _eps, center: bool = _center,
                    scale: bool = _scale) -> tuple[np.ndarray, np.ndarray]:
        x = rand(2, 4, 5, 6, scale=3) + np.float32(5)
        layer = layers.LayerNormalization(axis=axis, epsilon=eps, center=center, scale=scale)
        layer.build(x.shape)
        params = [rand(*w.shape) for w in weights(layer)]
        layer.set_weights(params)
        gamma = params[0] if scale else None
        beta = params[-1] if center else None
        axes = axis if isinstance(axis, int) else tuple(axis)
        return run(layer, x), ops.layer_norm(x, gamma, beta, epsilon=eps, axis=axes)
    ROWS.append((f"LayerNormalization(axis={_axis}, eps={_eps}, center={_center}, scale={_scale})", _layer_norm))

for _center, _scale in [(True, True), (False, True), (True, False), (False, False)]:
    def _batch_norm(center: bool = _center, scale: bool = _scale) -> tuple[np.ndarray, np.ndarray]:
        x = rand(2, 4, 4, 5)
        layer = layers.BatchNormalization(center=center, scale=scale)
        layer.build(x.shape)
        params = [rand(*w.shape) for w in weights(layer)]
        params[-1] = np.abs(params[-1]) + np.float32(0.1)  # moving variance
        layer.set_weights(params)
        named = dict(zip([w.path.split("/")[-1] for w in layer.weights], params))
        ours = ops.batch_norm(x, named.get("gamma"), named.get("beta"), named["moving_mean"],
                              named["moving_variance"], 1e-3)
        return np.asarray(keras.ops.convert_to_numpy(layer(x, training=False))), ours
    ROWS.append((f"BatchNormalization(center={_center}, scale={_scale})", _batch_norm))

_MERGES = {"add": layers.Add, "subtract": layers.Subtract, "multiply": layers.Multiply, "average": layers.Average,
           "maximum": layers.Maximum, "minimum": layers.Minimum, "concatenate": layers.Concatenate}
for _kind, _cls in _MERGES.items():
    def _merge(kind: str = _kind, cls: Any = _cls) -> tuple[np.ndarray, np.ndarray]:
        a, b = rand(2, 3, 4, 5), rand(2, 3, 4, 5 if kind != "concatenate" else 2)
        if kind in ("multiply", "add"):
            b = rand(2, 1, 1, 5)  # squeeze-and-excitation's broadcast
        return run(cls(), a, b), ops.merge(kind, [a, b])
    ROWS.append((f"{_cls.__name__}", _merge))


def main() -> None:
    print(f"Keras {keras.__version__}, backend {keras.backend.backend()}")
    width = max(len(name) for name, _ in ROWS)
    print(f"{'layer':{width}}  max |diff| / max |keras|")
    worst = 0.0
    for name, fn in ROWS:
        theirs, ours = fn()
        if theirs.shape != ours.shape:
            print(f"{name:{width}}  SHAPE {ours.shape} != Keras {theirs.shape}")
            worst = np.inf
            continue
        finite = np.isfinite(theirs)
        same_inf = bool(np.array_equal(np.isinf(theirs), np.isinf(ours)))
        scale = float(np.abs(theirs[finite]).max()) or 1.0
        diff = float(np.abs(ours[finite] - theirs[finite]).max()) / scale
        worst = max(worst, diff if same_inf else np.inf)
        print(f"{name:{width}}  {diff:.1e}" + ("" if same_inf else "  (infinities differ)"))
    print(f"worst: {worst:.1e}")


if __name__ == "__main__":
    main()

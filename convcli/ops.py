"""The forward computations of every layer: pure numpy on float32, channels-last batches.

float32 is the precision of ``run`` and ``train``; a float64 batch stays float64 (weights
are converted to the batch's precision), so that the gradient checks of
:func:`convcli.train.check_gradients` differentiate the same code in float64.

Images are batches ``(N, H, W, C)``, flat activations ``(N, units)``. Parameters come in
Keras layouts: a conv kernel is ``(F_h, F_w, C, K)`` (``(F_h, F_w, C / groups, K)``
grouped), a depthwise kernel ``(F_h, F_w, C, multiplier)``, a transposed-conv kernel
``(F_h, F_w, K, C)``, a dense kernel ``(in, out)``, a locally connected kernel
``(out_h * out_w, F_h * F_w * C, K)``. Semantics follow Keras 3 (the layer classes of
keras/src/layers and the torch backend's keras/src/backend/torch/nn.py);
benchmarks/ops_keras_parity.py compares every op with its Keras layer.

Convolution is the lecture's "lay the filter on the image, multiply, sum" done for every
output neuron at once: the windows of the zero-padded batch are copied into one matrix
(im2col, one row per output neuron, columns in the kernel's ``(f_h, f_w, c)`` order) and
multiplied by the ``(F_h * F_w * C, K)`` kernel matrix in one BLAS call; the bias rides in
that product (a column of ones against a bias row) and the activation is applied in place
while the result is still in cache. Large batches are
processed in chunks so the im2col buffer never exceeds :data:`IM2COL_BUDGET_BYTES`,
whatever the batch size. Depthwise convolution, which has no matrix product, is one
``einsum`` over a strided view of the shifted windows; a transposed convolution is one
matrix product scattered back over the kernel offsets. No Python loop runs over output
positions: the only loops are over chunks, groups and the few offsets inside one window.

>>> x = np.arange(16, dtype=np.float32).reshape(1, 4, 4, 1)
>>> conv2d(x, np.ones((3, 3, 1, 1), np.float32))[0, :, :, 0]
array([[45., 54.],
       [81., 90.]], dtype=float32)
>>> max_pool2d(x, (2, 2))[0, :, :, 0]
array([[ 5.,  7.],
       [13., 15.]], dtype=float32)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from typing import Literal, Protocol

import numpy as np
from numpy.lib.stride_tricks import as_strided, sliding_window_view

from convcli import geometry
from convcli.errors import ModelError, ShapeError

__all__ = [
    "ACTIVATIONS",
    "ALPHA_DEFAULTS",
    "CHUNK_BYTES",
    "DEPTHWISE_CHUNK_BYTES",
    "IM2COL_BUDGET_BYTES",
    "MERGES",
    "NORMALIZATION_EPSILON",
    "SELU_ALPHA",
    "SELU_SCALE",
    "UPSAMPLING_INTERPOLATIONS",
    "activate",
    "avg_pool2d",
    "batch_norm",
    "conv2d",
    "conv2d_transpose",
    "cropping2d",
    "dense",
    "depthwise_conv2d",
    "dropout",
    "elu",
    "flatten",
    "global_avg_pool2d",
    "global_max_pool2d",
    "glu",
    "layer_norm",
    "leaky_relu",
    "locally_connected2d",
    "log_softmax",
    "max_pool2d",
    "merge",
    "normalization",
    "permute",
    "relu",
    "rescaling",
    "reshape",
    "resolve_padding",
    "separable_conv2d",
    "sigmoid",
    "softmax",
    "sparsemax",
    "tanh",
    "upsampling2d",
    "zero_pad2d",
]

IM2COL_BUDGET_BYTES = 256 * 2**20
"""Hard upper bound on the im2col buffer of one layer call (256 MiB), whatever the batch."""

CHUNK_BYTES = 8 * 2**20
"""The im2col chunk used by default (8 MiB). Measured on the benchmark layers
(benchmarks/forward.py): VGG16's 224x224x64 3x3 conv takes 150 ms in 2-8 MiB chunks
against 230 ms in one 110 MiB piece (one thread; the chunk stays in cache between the
copy and the product), and the peak memory stays near input + output."""

MIN_CHUNK_ROWS = 2048
"""...but at least this many im2col rows per product (AlexNet's conv2 has 2400-float rows:
one 27x27 sample per chunk left BLAS 25% slower)."""

Padding = Literal["valid", "same"] | int | tuple[int, int, int, int]
Pair = tuple[int, int]

_F32 = np.float32


def _work(x: object) -> type[np.floating]:
    """The precision a computation on ``x`` runs in: float64 for a float64 array (the
    gradient checks), float32 for anything else (the default of run and train)."""
    return np.float64 if isinstance(x, np.ndarray) and x.dtype == np.float64 else _F32


# --------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------


def _batch(x: np.ndarray, ndim: int, what: str) -> np.ndarray:
    """``x`` as a C-contiguous float32 array with ``ndim`` dimensions (no copy when it is one;
    a float64 array stays float64)."""
    arr = np.ascontiguousarray(x, dtype=_work(x))
    if arr.ndim != ndim:
        layout = "(N, H, W, C)" if ndim == 4 else "(N, units)"
        raise ShapeError(
            f"{what} needs a batch of shape {layout}. Received: an array of shape {arr.shape}"
        )
    return arr


def _pair(value: int | Sequence[int] | None, default: Pair, what: str) -> Pair:
    if value is None:
        return default
    if isinstance(value, (int, np.integer)):
        pair = (int(value), int(value))
    else:
        pair = (int(value[0]), int(value[1]))
    if pair[0] < 1 or pair[1] < 1:
        raise ShapeError(f"`{what}` must be positive integers. Received: {what}={value!r}")
    return pair


def resolve_padding(
    size: Pair, kernel: Pair, strides: Pair, padding: Padding, dilation: Pair = (1, 1)
) -> tuple[int, int, int, int]:
    """Padding ``(top, bottom, left, right)`` for ``"valid"``, ``"same"`` (Keras: the extra
    row/column at the bottom/right), one integer P (P on every side) or four integers.

    >>> resolve_padding((224, 224), (11, 11), (4, 4), "same")
    (3, 4, 3, 4)
    """
    if isinstance(padding, tuple):
        if len(padding) != 4 or any(int(p) < 0 for p in padding):
            raise ShapeError(
                "Unknown value for `padding`. Allowed values are: valid, same, a non-negative "
                f"integer, (top, bottom, left, right). Received: padding={padding!r}"
            )
        top, bottom, left, right = (int(p) for p in padding)
        return top, bottom, left, right
    top, bottom = geometry.padding_amounts(size[0], kernel[0], strides[0], padding, dilation[0])
    left, right = geometry.padding_amounts(size[1], kernel[1], strides[1], padding, dilation[1])
    return top, bottom, left, right


def _out_length(n: int, kernel: int, stride: int, what: str) -> int:
    """Windows of ``kernel`` at ``stride`` inside the (padded) length ``n``; the last partial
    window is dropped, as in Keras and PyTorch (the arithmetic is geometry's)."""
    try:
        return geometry.conv_output_length(n, kernel, stride, 0, floor=True)
    except ShapeError as exc:
        raise ShapeError(f"{what}: {exc}") from None


def _chunks(
    n_samples: int, out_rows: int, row_bytes: int, chunk_bytes: int
) -> tuple[int, int]:
    """(samples per chunk, output rows per chunk) so one chunk's im2col fits ``chunk_bytes``.

    Whole samples when one sample fits, else blocks of output rows of one sample (at least
    one row: a single output row wider than the budget is processed on its own).
    """
    per_sample = max(out_rows * row_bytes, 1)
    if per_sample <= chunk_bytes:
        return max(1, min(n_samples, chunk_bytes // per_sample)), out_rows
    return 1, max(1, min(out_rows, chunk_bytes // max(row_bytes, 1)))


def _chunk_budget(chunk_bytes: int | None, cols_per_row: int = 0, itemsize: int = 4) -> int:
    """Bytes of im2col per chunk: ``chunk_bytes`` if given, else :data:`CHUNK_BYTES` but
    enough for :data:`MIN_CHUNK_ROWS` rows; never above :data:`IM2COL_BUDGET_BYTES`."""
    if chunk_bytes is None:
        return min(max(CHUNK_BYTES, MIN_CHUNK_ROWS * cols_per_row * itemsize), IM2COL_BUDGET_BYTES)
    if chunk_bytes < 1:
        raise ShapeError(f"`chunk_bytes` must be positive. Received: chunk_bytes={chunk_bytes}")
    return min(int(chunk_bytes), IM2COL_BUDGET_BYTES)


class _PaddedGroups:
    """Zero-padded copies of consecutive sample groups, reusing one buffer.

    The border of the buffer is written once (zeros, or ``fill``) and never touched again;
    each group only overwrites the interior. Without padding the groups are views of ``x``.
    """

    def __init__(self, x: np.ndarray, pads: tuple[int, int, int, int], group: int, fill: float = 0.0):
        self.x = x
        self.pads = pads
        n, h, w, c = x.shape
        top, bottom, left, right = pads
        self.padded = any(pads)
        if self.padded:
            self.buffer = np.full((min(group, n), h + top + bottom, w + left + right, c), fill, x.dtype)

    def get(self, n0: int, n1: int) -> np.ndarray:
        if not self.padded:
            return self.x[n0:n1]
        top, _, left, _ = self.pads
        _, h, w, _ = self.x.shape
        buf = self.buffer[: n1 - n0]
        buf[:, top : top + h, left : left + w, :] = self.x[n0:n1]
        return buf


# --------------------------------------------------------------------------------------
# Activations (in place when asked: the fused `activation=` of Conv2D/Dense/Local)
# --------------------------------------------------------------------------------------


def _into(result: np.ndarray, out: np.ndarray | None, dtype: type[np.floating] = _F32) -> np.ndarray:
    """``result`` as ``dtype`` (float32 unless the input was float64), written into ``out``
    when one is given."""
    if out is None:
        return np.asarray(result, dtype=dtype)
    out[...] = result
    return out


def relu(
    x: np.ndarray,
    *,
    max_value: float | None = None,
    negative_slope: float = 0.0,
    threshold: float = 0.0,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """max(0, z), the lecture's ReLU; with the options of Keras' ``ReLU`` layer:
    ``min(z, max_value)`` for z > ``threshold``, ``negative_slope * (z - threshold)``
    otherwise.

    >>> relu(np.array([-2.0, 1.0, 3.0, 8.0], np.float32), max_value=6, negative_slope=0.5, threshold=2)
    array([-2. , -0.5,  3. ,  6. ], dtype=float32)
    """
    dt = _work(x)
    if max_value is None and negative_slope == 0.0 and threshold == 0.0:
        return np.maximum(x, dt(0), out=out)
    for key, value in (("max_value", max_value), ("negative_slope", negative_slope), ("threshold", threshold)):
        if value is not None and not value >= 0:
            raise ModelError(f"relu: `{key}` must be a non-negative number. Received: {key}={value}")
    if negative_slope == 0.0 and threshold == 0.0:
        return np.clip(x, dt(0), dt(max_value), out=out)  # relu6 and friends: one pass
    x = np.asarray(x, dtype=dt)
    t = dt(threshold)
    positive = x if max_value is None else np.minimum(x, dt(max_value))
    negative = np.subtract(x, t) * dt(negative_slope) if negative_slope else dt(0)
    return _into(np.where(x > t, positive, negative), out, dt)


def leaky_relu(x: np.ndarray, alpha: float = 0.2, *, out: np.ndarray | None = None) -> np.ndarray:
    """z for z > 0, alpha*z otherwise (Keras' ``activations.leaky_relu`` defaults to 0.2,
    its ``LeakyReLU`` layer to 0.3; the lecture's example uses alpha = 0.005)."""
    a = _work(x)(alpha)
    negative = np.multiply(x, a)
    if 0.0 <= alpha <= 1.0:
        return np.maximum(x, negative, out=out)  # max(z, a*z) is leaky ReLU for 0 <= a <= 1
    return _into(np.where(x > 0, x, negative), out, _work(x))


def sigmoid(x: np.ndarray, *, out: np.ndarray | None = None) -> np.ndarray:
    """1 / (1 + e^-z), computed without overflow (scipy.special.expit)."""
    from scipy.special import expit

    return expit(x, out=out) if out is not None else expit(np.asarray(x, dtype=_work(x)))


def tanh(x: np.ndarray, *, out: np.ndarray | None = None) -> np.ndarray:
    """The hyperbolic tangent."""
    return np.tanh(x, out=out)


def elu(x: np.ndarray, alpha: float = 1.0, *, out: np.ndarray | None = None) -> np.ndarray:
    """z for z > 0, alpha*(e^z - 1) otherwise (Keras ELU, alpha 1.0 by default)."""
    dt = _work(x)
    negative = np.expm1(np.minimum(x, dt(0)))
    negative *= dt(alpha)
    result = np.maximum(x, dt(0), out=out)
    result += negative
    return result


def softmax(x: np.ndarray, *, out: np.ndarray | None = None) -> np.ndarray:
    """Softmax over the last axis, numerically stable (the row maximum is subtracted first,
    so logits of 1e4 or -1e4 give exact probabilities instead of inf/nan)."""
    with np.errstate(over="ignore"):  # z - max can only overflow to -inf, whose exp is 0
        result = np.subtract(x, x.max(axis=-1, keepdims=True), out=out)
    np.exp(result, out=result)
    result /= result.sum(axis=-1, keepdims=True)
    return result


def log_softmax(x: np.ndarray, *, out: np.ndarray | None = None) -> np.ndarray:
    """log(softmax(z)) over the last axis as z - max - log(sum(e^(z - max))): finite for
    logits where the softmax itself underflows to 0."""
    with np.errstate(over="ignore"):
        shifted = np.subtract(x, x.max(axis=-1, keepdims=True), dtype=_work(x))
    total = np.exp(shifted).sum(axis=-1, keepdims=True, dtype=np.float64)
    shifted -= np.log(total).astype(shifted.dtype)
    return _into(shifted, out, shifted.dtype.type)


def sparsemax(x: np.ndarray, *, out: np.ndarray | None = None) -> np.ndarray:
    """The Euclidean projection of each row (last axis) onto the probability simplex
    (Martins & Astudillo, 2016): max(z - tau, 0) with tau = (sum of the k largest - 1) / k
    over the support. Sorting and cumulative sums are vectorised over all rows.

    Keras up to 3.15 sums all the support's cumulative sums instead (keras-team/keras
    issue 23425, fixed by pull request 23469), so its rows do not sum to 1 when more than
    one value survives; this follows the paper, as the fixed Keras does.
    """
    z = np.asarray(x, dtype=np.float64)
    ordered = -np.sort(-z, axis=-1)
    cumulative = np.cumsum(ordered, axis=-1)
    k = np.arange(1, z.shape[-1] + 1, dtype=np.float64)
    support = 1 + k * ordered > cumulative
    k_max = support.sum(axis=-1, keepdims=True)
    tau = (np.take_along_axis(cumulative, k_max - 1, axis=-1) - 1) / k_max
    return _into(np.maximum(z - tau, 0.0), out, _work(x))


def glu(x: np.ndarray) -> np.ndarray:
    """Gated linear unit (Keras ``glu``, axis -1): the last axis is split into halves a, b
    and the result is a * sigmoid(b), HALF as many channels as the input."""
    x = np.asarray(x, dtype=_work(x))
    if x.shape[-1] % 2:
        raise ModelError(f"glu: the last axis must have an even size. Received: shape {x.shape}")
    half = x.shape[-1] // 2
    gate = sigmoid(x[..., half:])
    gate *= x[..., :half]
    return gate


SELU_ALPHA = 1.6732632423543772848170429916717
SELU_SCALE = 1.0507009873554804934193349852946
"""SELU's constants, Klambauer et al. (2017), "Self-Normalizing Neural Networks", eq. (14)
(the values Keras and PyTorch use)."""

_INV_SQRT2 = 0.7071067811865476

_Unary = Callable[[np.ndarray, float | None, np.ndarray | None], np.ndarray]


def _param(alpha: float | None, default: float) -> float:
    return default if alpha is None else float(alpha)


def _selu(x: np.ndarray, alpha: float | None, out: np.ndarray | None) -> np.ndarray:
    result = elu(x, SELU_ALPHA, out=out)
    result *= _work(x)(SELU_SCALE)
    return result


def _celu(x: np.ndarray, alpha: float | None, out: np.ndarray | None) -> np.ndarray:
    dt = _work(x)
    a = dt(_param(alpha, 1.0))
    negative = np.expm1(np.minimum(x, dt(0)) / a) * a
    result = np.maximum(x, dt(0), out=out)
    result += negative
    return result


def _gelu(x: np.ndarray, alpha: float | None, out: np.ndarray | None) -> np.ndarray:
    # 0.5 z (1 + erf(z / sqrt 2)) written with erfc(-z / sqrt 2) = 1 + erf(z / sqrt 2),
    # which keeps its relative precision in the far negative tail instead of cancelling.
    from scipy.special import erfc

    dt = _work(x)
    x = np.asarray(x, dtype=dt)
    result = erfc(x * dt(-_INV_SQRT2))
    result *= dt(0.5)
    result *= x
    return _into(result, out, dt)


def _silu(x: np.ndarray, alpha: float | None, out: np.ndarray | None) -> np.ndarray:
    x = np.asarray(x, dtype=_work(x))
    return _into(x * sigmoid(x), out, x.dtype.type)


def _hard_sigmoid_array(x: np.ndarray) -> np.ndarray:
    dt = _work(x)
    result = np.multiply(x, dt(1 / 6), dtype=dt)
    result += dt(0.5)
    return np.clip(result, dt(0), dt(1), out=result)


def _hard_sigmoid(x: np.ndarray, alpha: float | None, out: np.ndarray | None) -> np.ndarray:
    return _into(_hard_sigmoid_array(x), out, _work(x))


def _hard_silu(x: np.ndarray, alpha: float | None, out: np.ndarray | None) -> np.ndarray:
    result = _hard_sigmoid_array(x)
    result *= x
    return _into(result, out, _work(x))


def _softplus_array(x: np.ndarray) -> np.ndarray:
    # log(1 + e^z) = logaddexp(z, 0): no overflow for large z, full precision for very negative z.
    dt = _work(x)
    return np.logaddexp(np.asarray(x, dtype=dt), dt(0))


def _softplus(x: np.ndarray, alpha: float | None, out: np.ndarray | None) -> np.ndarray:
    return _into(_softplus_array(x), out, _work(x))


def _log_sigmoid(x: np.ndarray, alpha: float | None, out: np.ndarray | None) -> np.ndarray:
    dt = _work(x)
    return _into(-np.logaddexp(np.negative(x, dtype=dt), dt(0)), out, dt)


def _mish(x: np.ndarray, alpha: float | None, out: np.ndarray | None) -> np.ndarray:
    result = np.tanh(_softplus_array(x))
    result *= x
    return _into(result, out, _work(x))


def _softsign(x: np.ndarray, alpha: float | None, out: np.ndarray | None) -> np.ndarray:
    dt = _work(x)
    x = np.asarray(x, dtype=dt)
    return _into(x / (np.abs(x) + dt(1)), out, dt)


def _squareplus(x: np.ndarray, alpha: float | None, out: np.ndarray | None) -> np.ndarray:
    # (z + sqrt(z^2 + b)) / 2; for z < 0 the same value as b / (2 (sqrt(z^2 + b) - z)), which
    # does not cancel. hypot avoids overflowing z^2.
    b = _param(alpha, 4.0)
    dt = _work(x)
    x = np.asarray(x, dtype=dt)
    root = np.hypot(x, dt(math.sqrt(b)))
    half = dt(0.5)
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):  # masked out below, or b/inf = 0
        negative = dt(b / 2) / (root - x)
    return _into(np.where(x >= 0, x * half + root * half, negative), out, dt)


def _sparse_plus(x: np.ndarray, alpha: float | None, out: np.ndarray | None) -> np.ndarray:
    dt = _work(x)
    x = np.asarray(x, dtype=dt)
    middle = np.square(x + dt(1)) * dt(0.25)
    return _into(np.where(x <= -1, dt(0), np.where(x < 1, middle, x)), out, dt)


def _sparse_sigmoid(x: np.ndarray, alpha: float | None, out: np.ndarray | None) -> np.ndarray:
    dt = _work(x)
    result = np.add(x, dt(1), dtype=dt)
    result *= dt(0.5)
    return _into(np.clip(result, dt(0), dt(1), out=result), out, dt)


def _hard_tanh(x: np.ndarray, alpha: float | None, out: np.ndarray | None) -> np.ndarray:
    return np.clip(x, _work(x)(-1), _work(x)(1), out=out)


def _tanh_shrink(x: np.ndarray, alpha: float | None, out: np.ndarray | None) -> np.ndarray:
    # z - tanh(z) cancels for small z; float64 keeps the float32 result exact to rounding.
    z = np.asarray(x, dtype=np.float64)
    return _into(z - np.tanh(z), out, _work(x))


def _exponential(x: np.ndarray, alpha: float | None, out: np.ndarray | None) -> np.ndarray:
    with np.errstate(over="ignore"):  # e^z beyond float32 is inf, as in Keras
        return np.exp(x, out=out) if out is not None else np.exp(np.asarray(x, dtype=_work(x)))


def _soft_shrink(x: np.ndarray, alpha: float | None, out: np.ndarray | None) -> np.ndarray:
    dt = _work(x)
    t = dt(_param(alpha, 0.5))
    x = np.asarray(x, dtype=dt)
    return _into(np.where(x > t, x - t, np.where(x < -t, x + t, dt(0))), out, dt)


def _hard_shrink(x: np.ndarray, alpha: float | None, out: np.ndarray | None) -> np.ndarray:
    dt = _work(x)
    t = dt(_param(alpha, 0.5))
    x = np.asarray(x, dtype=dt)
    return _into(np.where(np.abs(x) > t, x, dt(0)), out, dt)


def _threshold(x: np.ndarray, alpha: float | None, out: np.ndarray | None) -> np.ndarray:
    dt = _work(x)
    t = dt(_param(alpha, 0.0))
    x = np.asarray(x, dtype=dt)
    return _into(np.where(x > t, x, dt(0)), out, dt)


_FUNCTIONS: dict[str, _Unary] = {
    "relu": lambda x, a, out: relu(x, out=out),
    "relu6": lambda x, a, out: relu(x, max_value=6.0, out=out),
    "leaky_relu": lambda x, a, out: leaky_relu(x, _param(a, 0.2), out=out),
    "elu": lambda x, a, out: elu(x, _param(a, 1.0), out=out),
    "selu": _selu,
    "celu": _celu,
    "gelu": _gelu,
    "silu": _silu,
    "swish": _silu,
    "hard_silu": _hard_silu,
    "hard_swish": _hard_silu,
    "mish": _mish,
    "sigmoid": lambda x, a, out: sigmoid(x, out=out),
    "hard_sigmoid": _hard_sigmoid,
    "sparse_sigmoid": _sparse_sigmoid,
    "log_sigmoid": _log_sigmoid,
    "tanh": lambda x, a, out: tanh(x, out=out),
    "hard_tanh": _hard_tanh,
    "tanh_shrink": _tanh_shrink,
    "softplus": _softplus,
    "softsign": _softsign,
    "squareplus": _squareplus,
    "sparse_plus": _sparse_plus,
    "exponential": _exponential,
    "soft_shrink": _soft_shrink,
    "hard_shrink": _hard_shrink,
    "threshold": _threshold,
    "softmax": lambda x, a, out: softmax(x, out=out),
    "log_softmax": lambda x, a, out: log_softmax(x, out=out),
    "sparsemax": lambda x, a, out: sparsemax(x, out=out),
}

ACTIVATIONS: tuple[str, ...] = ("linear", *_FUNCTIONS, "glu")
"""Every activation name :func:`activate` accepts (``None`` is the same as ``linear``):
the functions of Keras 3.15's ``keras.activations`` and the aliases ``swish`` and
``hard_swish``. All keep the input's shape except ``glu``, which halves the last axis."""

ALPHA_DEFAULTS = {
    "leaky_relu": 0.2, "elu": 1.0, "celu": 1.0, "squareplus": 4.0, "soft_shrink": 0.5,
    "hard_shrink": 0.5, "threshold": 0.0,
}
"""The one parameter ``alpha`` sets, per activation name, and its Keras default: the
negative slope, ELU/CELU's alpha, squareplus' b, the shrink thresholds, threshold's
threshold (values at or below it become 0)."""


def activate(
    x: np.ndarray, name: str | None, alpha: float | None = None, inplace: bool = False
) -> np.ndarray:
    """Apply the Keras activation ``name`` (``None``/``"linear"``: identity) in float32;
    in place if asked (``glu`` never is: it halves the last axis).

    ``alpha`` is the parameter listed in :data:`ALPHA_DEFAULTS` (ignored by the others).
    Softmax, log_softmax, sparsemax and glu work over the last axis. Raises ModelError for
    an unknown name.

    >>> activate(np.array([-4.0, 0.0, 1.5, 3.0], np.float32), "hard_sigmoid")
    array([0.  , 0.5 , 0.75, 1.  ], dtype=float32)
    """
    if name is None or name == "linear":
        return x
    if name == "glu":
        return glu(x)
    function = _FUNCTIONS.get(name)
    if function is None:
        raise ModelError(
            f"Unknown value for `activation`. Allowed values are: {', '.join(ACTIVATIONS)}. "
            f"Received: activation={name}"
        )
    return function(x, alpha, x if inplace else None)


class BlockObserver(Protocol):
    """Watches a layer's output block by block while each block is in cache (statistics
    for ``convcli run``'s table without another pass over the whole output). Blocks come
    as (positions, channels) arrays and must not be modified."""

    def before_activation(self, block: np.ndarray) -> None:
        """The block with its bias, before the fused activation (called only when one is applied)."""

    def finished(self, block: np.ndarray) -> None:
        """The block as it is written to the output."""


def _finish(
    block: np.ndarray, bias: np.ndarray | None, activation: str | None, alpha: float | None,
    channels: int | None = None, observe: BlockObserver | None = None,
) -> None:
    """Bias and activation, in place, on a freshly computed output block (rows of
    ``channels`` values for softmax when a row holds several positions), shown to
    ``observe`` before and after the activation."""
    if bias is not None:
        block += bias
    width = channels or block.shape[-1]  # the observer sees one row per position
    if activation is not None and activation != "linear":
        if activation == "glu":
            raise ModelError("glu halves the channels, so it cannot be fused into a layer: apply it on its own")
        if observe is not None:
            observe.before_activation(block.reshape(-1, width))
        target = block if channels is None else block.reshape(-1, channels)
        activate(target, activation, alpha, inplace=True)
    if observe is not None:
        observe.finished(block.reshape(-1, width))


# --------------------------------------------------------------------------------------
# Convolution and locally connected layers
# --------------------------------------------------------------------------------------


def _windows(
    xp: np.ndarray, kernel: Pair, strides: Pair, dilation: Pair, out_hw: Pair, *,
    channel_last: bool = True, group: int = 1,
) -> np.ndarray:
    """A read-only strided view of every window of the padded batch ``xp``.

    ``channel_last`` True: shape ``(n, OH, OW / group, F_h, W_win * C)`` when the width is
    not dilated (each window row is one contiguous run of W_win*C floats, the fastest
    layout to copy; W_win = (group - 1) * S_w + F_w: ``group`` neighbouring windows side
    by side), else ``(n, OH, OW, F_h, F_w, C)`` (group must be 1). Both flatten to the
    ``(f_h, f_w, c)`` column order of the kernel matrix. ``channel_last`` False (single
    channel, group 1): ``(F_h, F_w, n, OH, OW)``, the transposed im2col.
    """
    n, hp, wp, c = xp.shape
    fh, fw = kernel
    sh, sw = strides
    dh, dw = dilation
    oh, ow = out_hw
    eh, ew = geometry.effective_kernel(fh, dh), geometry.effective_kernel(fw, dw)
    if channel_last and dw == 1:
        width = (group - 1) * sw + fw
        flat = xp.reshape(n, hp, wp * c)
        view = sliding_window_view(flat, (eh, width * c), axis=(1, 2))
        step = group * sw * c
        return view[:, : (oh - 1) * sh + 1 : sh, : (ow - group) * sw * c + 1 : step, ::dh, :]
    view = sliding_window_view(xp, (eh, ew), axis=(1, 2))  # (n, ., ., C, eh, ew)
    view = view[:, : (oh - 1) * sh + 1 : sh, : (ow - 1) * sw + 1 : sw, :, ::dh, ::dw]
    if channel_last:
        return view.transpose(0, 1, 2, 4, 5, 3)
    return view[:, :, :, 0].transpose(3, 4, 0, 1, 2)


def _column_group(out_w: int, filters: int, kernel_w: int, stride_w: int, dilation_w: int) -> int:
    """How many horizontally neighbouring output positions one im2col row computes.

    With few filters (LeNet's 6 or 16) the (M, F*F*C) @ (F*F*C, K) product is too thin
    for BLAS and the copy of the overlapping windows dominates. Laying G neighbouring
    windows side by side in one row (width (G-1)*S + F) against a block-banded kernel
    matrix (G*K columns) copies fewer floats and gives BLAS a wider product, at the cost
    of ((G-1)*S + F) / F more multiplications. Measured on LeNet-5 (benchmarks/forward.py):
    conv1 (K=6) 1.8x and conv2 (K=16) 1.7x faster. G divides OW, so the output needs no
    cropping; G*K <= 96 and at most 2.5x the multiplications.
    """
    if filters >= 48 or dilation_w != 1:
        return 1
    best = 1
    for g in range(2, 17):
        if out_w % g == 0 and g * filters <= 96 and (g - 1) * stride_w + kernel_w <= 2.5 * kernel_w:
            best = g
    return best


def _grouped_kernel(kernel: np.ndarray, group: int, stride_w: int) -> np.ndarray:
    """The (F_h * W_win * C, G * K) block-banded matrix for ``group`` neighbouring windows:
    window g sees columns g*S .. g*S + F_w - 1 of the wide window."""
    fh, fw, c, k = kernel.shape
    width = (group - 1) * stride_w + fw
    wide = np.zeros((fh, width, c, group, k), kernel.dtype)
    for g in range(group):
        wide[:, g * stride_w : g * stride_w + fw, :, g, :] = kernel
    return wide.reshape(fh * width * c, group * k)


def _conv_geometry(
    x: np.ndarray, kernel_hw: Pair, strides: Pair, padding: Padding, dilation: Pair, what: str
) -> tuple[tuple[int, int, int, int], int, int]:
    _, h, w, _ = x.shape
    pads = resolve_padding((h, w), kernel_hw, strides, padding, dilation)
    top, bottom, left, right = pads
    oh = _out_length(h + top + bottom, geometry.effective_kernel(kernel_hw[0], dilation[0]), strides[0], what + " height")
    ow = _out_length(w + left + right, geometry.effective_kernel(kernel_hw[1], dilation[1]), strides[1], what + " width")
    return pads, oh, ow


def conv2d(
    x: np.ndarray,
    kernel: np.ndarray,
    bias: np.ndarray | None = None,
    *,
    strides: int | Pair = 1,
    padding: Padding = "valid",
    dilation: int | Pair = 1,
    activation: str | None = None,
    alpha: float | None = None,
    observe: BlockObserver | None = None,
    chunk_bytes: int | None = None,
    groups: int = 1,
) -> np.ndarray:
    """2-D convolution (cross-correlation, as Keras and the lecture: no kernel flip).

    Args:
        x: batch (N, H, W, C), float32.
        kernel: (F_h, F_w, C / groups, K), Keras layout.
        bias: (K,) or None.
        groups: Keras' ``groups``: group g convolves input channels
            g*C/groups .. (g+1)*C/groups - 1 into output channels g*K/groups ..
            (g+1)*K/groups - 1. ``groups == C`` is a depthwise convolution (ConvNeXt
            writes its depthwise layers this way) and runs as :func:`depthwise_conv2d`.
        strides, dilation: one integer or (vertical, horizontal).
        padding: "valid", "same" (Keras: extra row/column at the bottom/right), an
            integer P (zeros on every side, the lecture's P) or (top, bottom, left, right).
        activation, alpha: fused activation (Keras' ``activation=``), see :func:`activate`.
        observe: shown each output block before and after the activation (:class:`BlockObserver`).
        chunk_bytes: im2col buffer size per chunk (default :data:`CHUNK_BYTES`, never
            more than :data:`IM2COL_BUDGET_BYTES`).

    Returns:
        float32 (N, OH, OW, K), OH = floor((H + top + bottom - eff_F) / S) + 1.

    Raises:
        ShapeError: kernel depth differs from the input depth, or the window does not fit.

    >>> x = np.zeros((1, 5, 5, 1), np.float32); x[0, 2, 2, 0] = 1
    >>> conv2d(x, np.ones((3, 3, 1, 2), np.float32), np.array([0, 10], np.float32),
    ...        padding="same").shape
    (1, 5, 5, 2)
    """
    x = _batch(x, 4, "conv2d")
    kernel = np.ascontiguousarray(kernel, dtype=x.dtype)
    if groups != 1:
        return _grouped_conv2d(x, kernel, bias, strides, padding, dilation, activation, alpha, chunk_bytes, groups,
                               observe)
    if kernel.ndim != 4 or kernel.shape[2] != x.shape[3]:
        raise ShapeError(
            f"conv2d: the kernel must be (F_h, F_w, {x.shape[3]}, K) for an input of depth "
            f"{x.shape[3]}. Received: kernel shape {kernel.shape}"
        )
    fh, fw, c, k = kernel.shape
    strides_ = _pair(strides, (1, 1), "strides")
    dilation_ = _pair(dilation, (1, 1), "dilation")
    bias_ = _bias(bias, (k,), "conv2d", x.dtype)
    pads, oh, ow = _conv_geometry(x, (fh, fw), strides_, padding, dilation_, "conv2d")
    n = x.shape[0]
    out = np.empty((n, oh, ow, k), x.dtype)
    weights = kernel.reshape(fh * fw * c, k)

    if fh == fw == 1 and strides_ == (1, 1) and not any(pads):
        # 1x1 convolution: the input already is the im2col matrix.
        flat_out = out.reshape(-1, k)
        np.matmul(x.reshape(-1, c), weights, out=flat_out)
        _finish(flat_out, bias_, activation, alpha, observe=observe)
        return out

    group = _column_group(ow, k, fw, strides_[1], dilation_[1])
    if group > 1:
        weights = _grouped_kernel(kernel, group, strides_[1])
        bias_ = np.tile(bias_, group) if bias_ is not None else None
        cols_per_row = fh * ((group - 1) * strides_[1] + fw) * c
    else:
        cols_per_row = fh * fw * c
    # The bias rides in the product: a column of ones in the im2col matrix against a bias
    # row under the kernel matrix, instead of a separate pass over the output.
    total = cols_per_row
    if bias_ is not None:
        weights = np.concatenate([weights, bias_[None, :]])
        total += 1
    # A single input channel (and no grouping): copy the transposed im2col (F_h*F_w, M),
    # whose rows are long contiguous runs of the image, and let BLAS read it transposed;
    # channels-last rows would be only F_w floats long, 3x slower to copy.
    transposed = c == 1 and group == 1
    row_positions = ow // group  # im2col rows per output row
    out_matrix = out.reshape(n * oh * row_positions, group * k)  # a view: one row per im2col row
    item = x.itemsize
    samples, rows = _chunks(n, oh, row_positions * total * item, _chunk_budget(chunk_bytes, total, item))
    buffer = np.empty(samples * rows * row_positions * total, x.dtype)
    if bias_ is not None and not transposed:
        buffer.reshape(-1, total)[:, cols_per_row] = 1  # never overwritten by the copies
    padded = _PaddedGroups(x, pads, samples)
    for n0 in range(0, n, samples):
        n1 = min(n, n0 + samples)
        view = _windows(padded.get(n0, n1), (fh, fw), strides_, dilation_, (oh, ow),
                        channel_last=not transposed, group=group)
        for r0 in range(0, oh, rows):
            r1 = min(oh, r0 + rows)
            m = (n1 - n0) * (r1 - r0) * row_positions
            if transposed:
                part = view[:, :, :, r0:r1]
                cols = buffer[: m * total].reshape(total, m)
                np.copyto(cols[:cols_per_row].reshape(part.shape), part)
                if bias_ is not None:
                    cols[cols_per_row] = 1
                matrix = cols.T
            else:
                part = view[:, r0:r1]
                matrix = buffer[: m * total].reshape(m, total)
                np.copyto(_leading_columns(matrix, part.shape), part)
            start = (n0 * oh + r0) * row_positions  # whole samples, or rows of one sample
            block = out_matrix[start : start + m]
            np.matmul(matrix, weights, out=block)
            _finish(block, None, activation, alpha, k, observe)
    return out


def _group_depth(x: np.ndarray, kernel: np.ndarray, groups: int, what: str) -> int:
    """The input depth of each group of a grouped convolution (of its forward and backward).

    Raises:
        ShapeError: ``groups`` does not divide the input depth, or the kernel does not fit it.
    """
    c = x.shape[3]
    if not isinstance(groups, (int, np.integer)) or groups < 1 or c % groups:
        raise ShapeError(
            f"{what}: `groups` must be a positive divisor of the input depth {c}. Received: groups={groups}"
        )
    cg = c // groups
    if kernel.ndim != 4 or kernel.shape[2] != cg or kernel.shape[3] % groups:
        raise ShapeError(
            f"{what}: with groups={groups} the kernel must be (F_h, F_w, {cg}, K) with K a multiple of "
            f"{groups}. Received: kernel shape {kernel.shape}"
        )
    return cg


def _grouped_conv2d(
    x: np.ndarray, kernel: np.ndarray, bias: np.ndarray | None, strides: int | Pair, padding: Padding,
    dilation: int | Pair, activation: str | None, alpha: float | None, chunk_bytes: int | None, groups: int,
    observe: BlockObserver | None = None,
) -> np.ndarray:
    """:func:`conv2d` with ``groups`` > 1: one im2col product per group (a Python loop
    over the groups, never over positions), or the depthwise kernel when each group has
    one input channel."""
    cg = _group_depth(x, kernel, groups, "conv2d")
    fh, fw, _, k = kernel.shape
    if cg == 1:
        # Output channel c*m + j of group c is the depthwise layout (F_h, F_w, C, m).
        depthwise = kernel.reshape(fh, fw, groups, k // groups)
        return depthwise_conv2d(x, depthwise, bias, strides=strides, padding=padding, dilation=dilation,
                                activation=activation, alpha=alpha, observe=observe)
    bias_ = _bias(bias, (k,), "conv2d", x.dtype)
    kg = k // groups
    parts = [
        conv2d(x[..., g * cg : (g + 1) * cg], kernel[..., g * kg : (g + 1) * kg],
               None if bias_ is None else bias_[g * kg : (g + 1) * kg],
               strides=strides, padding=padding, dilation=dilation, chunk_bytes=chunk_bytes)
        for g in range(groups)
    ]
    out = np.concatenate(parts, axis=3)
    _finish(out, None, activation, alpha, k, observe)  # after the groups: softmax spans all channels
    return out


DEPTHWISE_CHUNK_BYTES = 2**20
"""Output bytes per :func:`depthwise_conv2d` step (whole samples, at least one), so that a
step's padded input, output and bias pass stay in cache: several samples of a small late
layer (7x7x960: 188 KB each) per step, one sample of a large early one."""


def depthwise_conv2d(
    x: np.ndarray,
    kernel: np.ndarray,
    bias: np.ndarray | None = None,
    *,
    strides: int | Pair = 1,
    padding: Padding = "valid",
    dilation: int | Pair = 1,
    activation: str | None = None,
    alpha: float | None = None,
    observe: BlockObserver | None = None,
) -> np.ndarray:
    """Depthwise convolution (Keras ``DepthwiseConv2D``): each input channel is filtered
    on its own by ``m`` filters of its own.

    Args:
        x: batch (N, H, W, C).
        kernel: (F_h, F_w, C, m), Keras layout; output channel c*m + j is input channel c
            under kernel[:, :, c, j].
        bias: (C*m,) or None.
        strides, padding, dilation, activation, alpha: as :func:`conv2d` (Keras' "same"
            pads for the dilated kernel extent).

    Returns:
        float32 (N, OH, OW, C*m).

    There is no matrix product to hand to BLAS, so the convolution is a sum of F_h*F_w
    shifted multiply-adds: for each kernel offset (u, v), the input shifted by
    (u*D_h, v*D_w) times kernel[u, v] (one weight per channel). All the shifted windows
    are one strided view of the padded input, (n, OH, F_h, F_w, OW*C) with stride 1 (an
    output row and each of its shifted input rows are contiguous runs of OW*C floats,
    against the kernel row tiled OW times), and one ``einsum`` sums the products into
    the output without temporaries: 2-3x faster than nine separate multiply and add
    passes over row strips on MobileNetV2's layers, and near PyTorch's grouped conv2d
    (benchmarks/ops_depthwise.py).

    >>> x = np.arange(8, dtype=np.float32).reshape(1, 2, 2, 2)
    >>> depthwise_conv2d(x, np.ones((2, 2, 2, 1), np.float32))[0, 0, 0]
    array([12., 16.], dtype=float32)
    """
    x = _batch(x, 4, "depthwise_conv2d")
    kernel = np.ascontiguousarray(kernel, dtype=x.dtype)
    n, _, _, c = x.shape
    if kernel.ndim != 4 or kernel.shape[2] != c:
        raise ShapeError(
            f"depthwise_conv2d: the kernel must be (F_h, F_w, {c}, multiplier) for an input of depth {c}. "
            f"Received: kernel shape {kernel.shape}"
        )
    fh, fw, _, m = kernel.shape
    strides_ = _pair(strides, (1, 1), "strides")
    dilation_ = _pair(dilation, (1, 1), "dilation")
    pads, oh, ow = _conv_geometry(x, (fh, fw), strides_, padding, dilation_, "depthwise_conv2d")
    cm = c * m
    bias_ = _bias(bias, (cm,), "depthwise_conv2d", x.dtype)
    (sh, sw), (dh, dw) = strides_, dilation_
    out = np.empty((n, oh, ow, cm), x.dtype)
    flat_rows = m == 1 and sw == 1
    weights = np.tile(kernel.reshape(fh, fw, c), (1, 1, ow)) if flat_rows else kernel
    samples = max(1, min(n, DEPTHWISE_CHUNK_BYTES // max(oh * ow * cm * x.itemsize, 1)))
    padded = _PaddedGroups(x, pads, samples)
    for n0 in range(0, n, samples):
        n1 = min(n, n0 + samples)
        xp = padded.get(n0, n1)
        sn, sr, sc, se = xp.strides  # sample, row, column, channel (bytes)
        block = out[n0:n1]
        if flat_rows:
            view = as_strided(xp, shape=(n1 - n0, oh, fh, fw, ow * c), strides=(sn, sr * sh, sr * dh, sc * dw, se))
            np.einsum("nrfgl,fgl->nrl", view, weights, out=block.reshape(n1 - n0, oh, ow * c))
        else:
            view = as_strided(xp, shape=(n1 - n0, oh, fh, fw, ow, c),
                              strides=(sn, sr * sh, sr * dh, sc * dw, sc * sw, se))
            np.einsum("nrfgoc,fgcm->nrocm", view, weights, out=block.reshape(n1 - n0, oh, ow, c, m))
        _finish(block, bias_, activation, alpha, cm, observe)
    return out


def separable_conv2d(
    x: np.ndarray,
    depthwise_kernel: np.ndarray,
    pointwise_kernel: np.ndarray,
    bias: np.ndarray | None = None,
    *,
    strides: int | Pair = 1,
    padding: Padding = "valid",
    dilation: int | Pair = 1,
    activation: str | None = None,
    alpha: float | None = None,
    observe: BlockObserver | None = None,
) -> np.ndarray:
    """Depthwise-separable convolution (Keras ``SeparableConv2D``): :func:`depthwise_conv2d`
    without bias, then the 1x1 convolution ``pointwise_kernel`` (1, 1, C*m, K) with the
    bias (K,) and the activation.

    >>> x = np.ones((1, 3, 3, 2), np.float32)
    >>> separable_conv2d(x, np.ones((3, 3, 2, 1), np.float32), np.ones((1, 1, 2, 1), np.float32))[0, 0, 0]
    array([18.], dtype=float32)
    """
    x = _batch(x, 4, "separable_conv2d")
    pointwise = np.asarray(pointwise_kernel, dtype=x.dtype)
    dk = np.asarray(depthwise_kernel)
    depth = x.shape[3] * (dk.shape[3] if dk.ndim == 4 else 1)
    if pointwise.ndim != 4 or pointwise.shape[:3] != (1, 1, depth):
        raise ShapeError(
            f"separable_conv2d: the pointwise kernel must be (1, 1, {depth}, K) after a depthwise step "
            f"of {depth} channels. Received: pointwise kernel shape {pointwise.shape}"
        )
    middle = depthwise_conv2d(x, depthwise_kernel, None, strides=strides, padding=padding, dilation=dilation)
    return conv2d(middle, pointwise, bias, activation=activation, alpha=alpha, observe=observe)


def _conv_transpose_crop(kernel: int, stride: int, padding: str, output_padding: int | None, dilation: int) -> int:
    """Positions of the full scatter output ((n - 1) * stride + eff long) that lie before
    Keras' first output: eff - 1 minus the left padding of the equivalent dilated
    convolution (keras/src/backend/common/backend_utils.py,
    ``_convert_conv_transpose_padding_args_from_keras_to_jax``, which Keras' torch
    backend also follows)."""
    eff = geometry.effective_kernel(kernel, dilation)
    if padding == "valid":
        return 0
    total = stride + eff - 2 if output_padding is None else eff + eff % 2 - 2 + output_padding
    return eff - 1 - min(total // 2 + total % 2, eff - 1)


def conv2d_transpose(
    x: np.ndarray,
    kernel: np.ndarray,
    bias: np.ndarray | None = None,
    *,
    strides: int | Pair = 1,
    padding: Literal["valid", "same"] = "valid",
    output_padding: int | Pair | None = None,
    dilation: int | Pair = 1,
    activation: str | None = None,
    alpha: float | None = None,
    observe: BlockObserver | None = None,
) -> np.ndarray:
    """Transposed convolution (Keras ``Conv2DTranspose``): each input pixel spreads its
    values over a F_h x F_w patch of the output, patches S apart.

    Args:
        x: batch (N, H, W, C).
        kernel: (F_h, F_w, K, C), Keras layout (output channels before input channels).
        bias: (K,) or None.
        padding: "valid" or "same"; output_padding: None or per-axis integers smaller
            than the stride (Keras' rule); the output size is
            :func:`convcli.geometry.conv_transpose_output_length`.

    Returns:
        float32 (N, OH, OW, K).

    One matrix product, (N*H*W, C) @ (C, F_h*F_w*K), gives every pixel's patch; the F_h*F_w
    kernel offsets are then added into the full output at their shifted, strided places
    (a loop over kernel offsets, never positions), and Keras' window of it is cropped.
    Large batches go in chunks of samples so the patch matrix stays near
    :data:`CHUNK_BYTES`.

    >>> x = np.ones((1, 2, 2, 1), np.float32)
    >>> conv2d_transpose(x, np.ones((3, 3, 1, 1), np.float32), strides=2)[0, :, :, 0]
    array([[1., 1., 2., 1., 1.],
           [1., 1., 2., 1., 1.],
           [2., 2., 4., 2., 2.],
           [1., 1., 2., 1., 1.],
           [1., 1., 2., 1., 1.]], dtype=float32)
    """
    x = _batch(x, 4, "conv2d_transpose")
    kernel = np.ascontiguousarray(kernel, dtype=x.dtype)
    n, h, w, c = x.shape
    if kernel.ndim != 4 or kernel.shape[3] != c:
        raise ShapeError(
            f"conv2d_transpose: the kernel must be (F_h, F_w, K, {c}) for an input of depth {c}. "
            f"Received: kernel shape {kernel.shape}"
        )
    if padding not in ("valid", "same"):
        raise ShapeError(
            f"Unknown value for `padding`. Allowed values are: valid, same. Received: padding={padding!r}"
        )
    fh, fw, k, _ = kernel.shape
    (sh, sw) = _pair(strides, (1, 1), "strides")
    (dh, dw) = _pair(dilation, (1, 1), "dilation")
    if output_padding is None:
        oph: int | None = None
        opw: int | None = None
    else:
        oph, opw = (int(output_padding),) * 2 if isinstance(output_padding, (int, np.integer)) else (
            int(output_padding[0]), int(output_padding[1]))
        if not (0 <= oph < sh and 0 <= opw < sw):
            raise ShapeError(
                "conv2d_transpose: `output_padding` must be non-negative and strictly less than the strides. "
                f"Received: output_padding={output_padding!r}, strides={(sh, sw)}"
            )
    bias_ = _bias(bias, (k,), "conv2d_transpose", x.dtype)
    oh = geometry.conv_transpose_output_length(h, fh, sh, padding, oph, dh)  # type: ignore[arg-type]
    ow = geometry.conv_transpose_output_length(w, fw, sw, padding, opw, dw)  # type: ignore[arg-type]
    top = _conv_transpose_crop(fh, sh, padding, oph, dh)
    left = _conv_transpose_crop(fw, sw, padding, opw, dw)
    full_h = max((h - 1) * sh + geometry.effective_kernel(fh, dh), top + oh)
    full_w = max((w - 1) * sw + geometry.effective_kernel(fw, dw), left + ow)
    weights = kernel.transpose(3, 0, 1, 2).reshape(c, fh * fw * k)  # (C, F_h*F_w*K)
    out = np.empty((n, oh, ow, k), x.dtype)
    per_sample = (h * w * fh * fw * k + full_h * full_w * k) * x.itemsize
    samples = max(1, min(n, CHUNK_BYTES // max(per_sample, 1)))
    full = np.empty((samples, full_h, full_w, k), x.dtype)
    for n0 in range(0, n, samples):
        n1 = min(n, n0 + samples)
        g = n1 - n0
        patches = np.matmul(x[n0:n1].reshape(g * h * w, c), weights).reshape(g, h, w, fh, fw, k)
        canvas = full[:g]
        canvas.fill(0)
        for u in range(fh):
            for v in range(fw):
                canvas[:, u * dh : u * dh + (h - 1) * sh + 1 : sh, v * dw : v * dw + (w - 1) * sw + 1 : sw] += \
                    patches[:, :, :, u, v]
        block = out[n0:n1]
        block[...] = canvas[:, top : top + oh, left : left + ow]
        _finish(block, bias_, activation, alpha, k, observe)
    return out


# --------------------------------------------------------------------------------------
# Resizing and rearranging
# --------------------------------------------------------------------------------------


UPSAMPLING_INTERPOLATIONS = ("nearest", "bilinear")
"""The ``interpolation`` values :func:`upsampling2d` accepts."""


def _bilinear_axis(x: np.ndarray, axis: int, factor: int) -> np.ndarray:
    """Bilinear enlargement by ``factor`` along one axis: half-pixel centres (output pixel
    i samples input coordinate (i + 0.5) / factor - 0.5), clamped to the first and last
    pixel, no antialiasing (TensorFlow's and PyTorch's align_corners=False). Two gathers
    and one weighted sum: O(output), whatever the image size."""
    n = x.shape[axis]
    source = np.clip((np.arange(n * factor, dtype=np.float64) + 0.5) / factor - 0.5, 0, n - 1)
    low = np.floor(source).astype(np.intp)
    high = np.minimum(low + 1, n - 1)
    shape = [1] * x.ndim
    shape[axis] = n * factor
    frac = (source - low).astype(x.dtype).reshape(shape)
    below = np.take(x, low, axis=axis)
    result = np.take(x, high, axis=axis)
    result -= below
    result *= frac
    result += below
    return result


def upsampling2d(
    x: np.ndarray, size: int | Pair = (2, 2), interpolation: str = "nearest"
) -> np.ndarray:
    """Keras ``UpSampling2D``: every image ``size`` times larger.

    ``"nearest"`` repeats each row and column (Keras: ``ops.repeat``); ``"bilinear"`` is
    Keras' ``ops.image.resize`` bilinear without antialiasing: half-pixel centres, edges
    clamped, one axis after the other.

    >>> upsampling2d(np.array([[[[0.0], [4.0]]]], np.float32), (1, 4), "bilinear")[0, 0, :, 0]
    array([0. , 0. , 0.5, 1.5, 2.5, 3.5, 4. , 4. ], dtype=float32)
    """
    x = _batch(x, 4, "upsampling2d")
    fh, fw = _pair(size, (2, 2), "size")
    if interpolation not in UPSAMPLING_INTERPOLATIONS:
        raise ModelError(
            "Unknown value for `interpolation`. Allowed values are: "
            f"{', '.join(UPSAMPLING_INTERPOLATIONS)}. Received: interpolation={interpolation}"
        )
    n, h, w, c = x.shape
    if interpolation == "nearest":
        view = np.broadcast_to(x[:, :, None, :, None, :], (n, h, fh, w, fw, c))
        return np.ascontiguousarray(view).reshape(n, h * fh, w * fw, c)
    return _bilinear_axis(_bilinear_axis(x, 1, fh), 2, fw)


def cropping2d(x: np.ndarray, cropping: tuple[int, int, int, int]) -> np.ndarray:
    """Keras ``Cropping2D``: drop ``cropping`` = (top, bottom, left, right) rows and columns.

    >>> cropping2d(np.zeros((1, 5, 6, 2), np.float32), (1, 2, 0, 3)).shape
    (1, 2, 3, 2)
    """
    x = _batch(x, 4, "cropping2d")
    top, bottom, left, right = (int(v) for v in cropping)
    _, h, w, _ = x.shape
    if min(top, bottom, left, right) < 0 or top + bottom >= h or left + right >= w:
        raise ShapeError(
            f"cropping2d: cropping (top, bottom, left, right) = {(top, bottom, left, right)} must be "
            f"non-negative and leave at least one row and column of the {h}x{w} input"
        )
    return np.ascontiguousarray(x[:, top : h - bottom, left : w - right])


def reshape(x: np.ndarray, target_shape: tuple[int, ...]) -> np.ndarray:
    """Keras ``Reshape``: every sample to ``target_shape`` (the batch axis is kept; one
    entry may be -1, inferred), in C order.

    >>> reshape(np.zeros((2, 3, 4), np.float32), (-1, 2)).shape
    (2, 6, 2)
    """
    arr = np.ascontiguousarray(x, dtype=_work(x))
    target = tuple(int(v) for v in target_shape)
    size = math.prod(arr.shape[1:])
    known = math.prod(v for v in target if v != -1)
    unknown = sum(v == -1 for v in target)
    if unknown > 1 or any(v < -1 or v == 0 for v in target) or (
        size != known if not unknown else known == 0 or size % known
    ):
        raise ShapeError(
            f"reshape: a sample of shape {arr.shape[1:]} ({size} values) cannot become "
            f"{target}. Received: target_shape={target}"
        )
    return arr.reshape((arr.shape[0], *target))


def permute(x: np.ndarray, dims: tuple[int, ...]) -> np.ndarray:
    """Keras ``Permute``: reorder the axes of every sample; ``dims`` counts them from 1
    (the batch axis stays first). The result is a contiguous copy.

    >>> permute(np.zeros((1, 2, 3, 4), np.float32), (3, 1, 2)).shape
    (1, 4, 2, 3)
    """
    arr = np.asarray(x, dtype=_work(x))
    order = tuple(int(d) for d in dims)
    if sorted(order) != list(range(1, arr.ndim)):
        raise ShapeError(
            f"permute: `dims` must order the axes 1..{arr.ndim - 1} of a sample of shape "
            f"{arr.shape[1:]}, each once. Received: dims={order}"
        )
    return np.ascontiguousarray(arr.transpose((0, *order)))


# --------------------------------------------------------------------------------------
# Scaling and normalisation
# --------------------------------------------------------------------------------------


def rescaling(x: np.ndarray, scale: float | np.ndarray = 1.0, offset: float | np.ndarray = 0.0) -> np.ndarray:
    """Keras ``Rescaling``: x * scale + offset (scalars, or per-channel arrays that
    broadcast against the last axis).

    >>> rescaling(np.array([0.0, 255.0], np.float32), 1 / 127.5, -1)
    array([-1.,  1.], dtype=float32)
    """
    dt = _work(x)
    arr = np.asarray(x, dtype=dt)
    out = arr * np.asarray(scale, dtype=dt)
    out += np.asarray(offset, dtype=dt)
    return out.astype(dt, copy=False)


NORMALIZATION_EPSILON = 1e-7
"""``keras.backend.epsilon()``: the smallest standard deviation Keras' ``Normalization``
divides by."""


def normalization(
    x: np.ndarray, mean: float | np.ndarray, variance: float | np.ndarray, *, invert: bool = False
) -> np.ndarray:
    """Keras 3 ``Normalization``: (x - mean) / max(sqrt(variance), 1e-7), or with ``invert``
    mean + x * max(sqrt(variance), 1e-7). ``mean``/``variance`` broadcast against x
    (per-channel (C,) or Keras' stored (1, 1, 1, C)).

    >>> normalization(np.array([3.0, 5.0], np.float32), 1.0, 4.0)
    array([1., 2.], dtype=float32)
    """
    dt = _work(x)
    arr = np.asarray(x, dtype=dt)
    mean_ = np.asarray(mean, dtype=dt)
    std = np.maximum(np.sqrt(np.asarray(variance, dtype=dt)), dt(NORMALIZATION_EPSILON))
    try:
        if invert:
            return (arr * std + mean_).astype(dt, copy=False)
        return ((arr - mean_) / std).astype(dt, copy=False)
    except ValueError:
        raise ShapeError(
            f"normalization: mean {mean_.shape} and variance {std.shape} do not broadcast against "
            f"the input {arr.shape}"
        ) from None


def layer_norm(
    x: np.ndarray,
    gamma: np.ndarray | None = None,
    beta: np.ndarray | None = None,
    *,
    epsilon: float = 1e-3,
    axis: int | tuple[int, ...] = -1,
) -> np.ndarray:
    """Keras ``LayerNormalization``: per sample, the mean and the biased variance over
    ``axis`` (the last by default), then (x - mean) / sqrt(var + epsilon) * gamma + beta.
    ``gamma``/``beta`` None for ``scale``/``center`` off; their shape is that of the
    normalised axes. ConvNeXt uses epsilon 1e-6; Keras' default is 1e-3.

    Sums accumulate in float64 (the result stays float32), so a large mean does not eat
    the variance.

    >>> layer_norm(np.array([[1.0, 3.0]], np.float32), epsilon=0.0)
    array([[-1.,  1.]], dtype=float32)
    """
    dt = _work(x)
    arr = np.asarray(x, dtype=dt)
    axes = (axis,) if isinstance(axis, (int, np.integer)) else tuple(axis)
    if not axes or any(not -arr.ndim < a < arr.ndim for a in axes) or any(a % arr.ndim == 0 for a in axes):
        raise ShapeError(
            f"layer_norm: `axis` must name axes of a sample (not the batch axis 0) of an input of "
            f"shape {arr.shape}. Received: axis={axis}"
        )
    axes = tuple(sorted({a % arr.ndim for a in axes}))
    shape = [1] * arr.ndim
    for a in axes:
        shape[a] = arr.shape[a]
    normalised = tuple(arr.shape[a] for a in axes)
    mean = arr.mean(axis=axes, keepdims=True, dtype=np.float64).astype(dt)
    centred = arr - mean
    var = np.square(centred).mean(axis=axes, keepdims=True, dtype=np.float64)
    centred *= (1.0 / np.sqrt(var + epsilon)).astype(dt)
    for key, param in (("gamma", gamma), ("beta", beta)):
        if param is None:
            continue
        p = np.asarray(param, dtype=dt)
        if p.size != math.prod(normalised):
            raise ShapeError(f"layer_norm: `{key}` must have shape {normalised}. Received: shape {p.shape}")
        if key == "gamma":
            centred *= p.reshape(shape)
        else:
            centred += p.reshape(shape)
    return centred


def _leading_columns(matrix: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """A writable view of the first prod(shape[3:]) columns of the C-contiguous (m, total)
    ``matrix``, shaped ``(a, b, c, *tail)`` with a*b*c = m (the window view's shape)."""
    item, total = matrix.itemsize, matrix.shape[1]
    lead, tail = shape[:3], shape[3:]
    tail_strides: list[int] = []
    step = item
    for size in reversed(tail):
        tail_strides.insert(0, step)
        step *= size
    lead_strides = (lead[1] * lead[2] * total * item, lead[2] * total * item, total * item)
    return as_strided(matrix, shape=shape, strides=lead_strides + tuple(tail_strides))


def _bias(bias: np.ndarray | None, shape: tuple[int, ...], what: str,
          dtype: np.dtype[np.floating] | type[np.floating] = _F32) -> np.ndarray | None:
    if bias is None:
        return None
    arr = np.ascontiguousarray(bias, dtype=dtype)
    if arr.shape != shape:
        raise ShapeError(f"{what}: the bias must have shape {shape}. Received: bias shape {arr.shape}")
    return arr


def locally_connected2d(
    x: np.ndarray,
    kernel: np.ndarray,
    bias: np.ndarray | None = None,
    *,
    kernel_size: int | Pair,
    strides: int | Pair = 1,
    activation: str | None = None,
    alpha: float | None = None,
    observe: BlockObserver | None = None,
    chunk_bytes: int | None = None,
) -> np.ndarray:
    """Locally connected layer (Keras ``LocallyConnected2D``, valid padding): a convolution
    whose every output position has its own weights, the lecture's unshared variant.

    Args:
        x: batch (N, H, W, C).
        kernel: (OH * OW, F_h * F_w * C, K), positions in row-major order, each position's
            weights in (f_h, f_w, c) order (Keras' layout).
        bias: (OH, OW, K) or None.

    Returns:
        float32 (N, OH, OW, K).

    The windows are gathered as for :func:`conv2d`; one batched matmul (one small GEMM per
    output position, over the whole chunk of samples) applies the unshared weights.
    """
    x = _batch(x, 4, "locally_connected2d")
    fh, fw = _pair(kernel_size, (1, 1), "kernel_size")
    strides_ = _pair(strides, (1, 1), "strides")
    n, h, w, c = x.shape
    _, oh, ow = _conv_geometry(x, (fh, fw), strides_, "valid", (1, 1), "locally_connected2d")
    kernel = np.ascontiguousarray(kernel, dtype=x.dtype)
    if kernel.ndim != 3 or kernel.shape[:2] != (oh * ow, fh * fw * c):
        raise ShapeError(
            f"locally_connected2d: the kernel must be ({oh * ow}, {fh * fw * c}, K) for input "
            f"{h}x{w}x{c}. Received: kernel shape {kernel.shape}"
        )
    k = kernel.shape[2]
    bias_ = _bias(bias, (oh, ow, k), "locally_connected2d", x.dtype)
    cols_per_row = fh * fw * c
    samples, rows = _chunks(n, oh, ow * cols_per_row * x.itemsize, _chunk_budget(chunk_bytes, 0, x.itemsize))
    buffer = np.empty(samples * rows * ow * cols_per_row, x.dtype)
    out = np.empty((n, oh, ow, k), x.dtype)
    positions = kernel.reshape(oh, ow, cols_per_row, k)
    for n0 in range(0, n, samples):
        n1 = min(n, n0 + samples)
        view = _windows(x[n0:n1], (fh, fw), strides_, (1, 1), (oh, ow))
        for r0 in range(0, oh, rows):
            r1 = min(oh, r0 + rows)
            g, p = n1 - n0, (r1 - r0) * ow
            part = view[:, r0:r1]
            cols = buffer[: g * p * cols_per_row].reshape(g, p, cols_per_row)
            np.copyto(cols.reshape(part.shape), part)
            # (p, g, FFC) @ (p, FFC, K) -> (p, g, K): one product per output position.
            result = np.matmul(cols.transpose(1, 0, 2), positions[r0:r1].reshape(p, cols_per_row, k))
            block = out[n0:n1, r0:r1]
            block[...] = result.reshape(r1 - r0, ow, g, k).transpose(2, 0, 1, 3)
            _finish(block, None if bias_ is None else bias_[r0:r1], activation, alpha, observe=observe)
    return out


# --------------------------------------------------------------------------------------
# Pooling
# --------------------------------------------------------------------------------------


def _pool_geometry(
    x: np.ndarray, pool_size: Pair, strides: Pair, padding: Literal["valid", "same"], what: str
) -> tuple[tuple[int, int, int, int], int, int]:
    if padding not in ("valid", "same"):
        raise ShapeError(
            f"Unknown value for `padding`. Allowed values are: valid, same. Received: padding={padding!r}"
        )
    _, h, w, _ = x.shape
    if padding == "same":
        top, bottom = geometry.same_padding(h, pool_size[0], strides[0])
        left, right = geometry.same_padding(w, pool_size[1], strides[1])
        oh = geometry.conv_output_length(h, pool_size[0], strides[0], "same")
        return (top, bottom, left, right), oh, geometry.conv_output_length(w, pool_size[1], strides[1], "same")
    oh = _out_length(h, pool_size[0], strides[0], what + " height")
    ow = _out_length(w, pool_size[1], strides[1], what + " width")
    return (0, 0, 0, 0), oh, ow


def _offsets(xp: np.ndarray, pool_size: Pair, strides: Pair, out_hw: Pair) -> Iterator[np.ndarray]:
    """The strided slice of ``xp`` seen by each offset (i, j) inside the window: combining
    these F_h*F_w slices element-wise pools every output position at once."""
    (ph, pw), (sh, sw), (oh, ow) = pool_size, strides, out_hw
    for i in range(ph):
        for j in range(pw):
            yield xp[:, i : i + (oh - 1) * sh + 1 : sh, j : j + (ow - 1) * sw + 1 : sw, :]


def _pool_args(x: np.ndarray, pool_size: int | Pair, strides: int | Pair | None, what: str) -> tuple[np.ndarray, Pair, Pair]:
    x = _batch(x, 4, what)
    size = _pair(pool_size, (2, 2), "pool_size")
    return x, size, _pair(strides, size, "strides")


def max_pool2d(
    x: np.ndarray,
    pool_size: int | Pair = 2,
    strides: int | Pair | None = None,
    padding: Literal["valid", "same"] = "valid",
) -> np.ndarray:
    """Max pooling (the lecture's POOL): each output is the maximum of its window; strides
    default to the pool size (Keras). "same" pads with -inf, so padding never wins.

    >>> max_pool2d(np.arange(9, dtype=np.float32).reshape(1, 3, 3, 1), 2, 2, "same")[0, ..., 0]
    array([[4., 5.],
           [7., 8.]], dtype=float32)
    """
    x, size, strides_ = _pool_args(x, pool_size, strides, "max_pool2d")
    pads, oh, ow = _pool_geometry(x, size, strides_, padding, "max_pool2d")
    (ph, pw), (sh, sw) = size, strides_
    n = x.shape[0]
    out = np.empty((n, oh, ow, x.shape[3]), x.dtype)

    def pool(n0: int, n1: int) -> None:
        # a window's maximum is the maximum over its rows of the maximum over its columns:
        # F_h + F_w - 2 element-wise passes instead of F_h * F_w - 1
        xp = _PaddedGroups(x[n0:n1], pads, n1 - n0, fill=-np.inf).get(0, n1 - n0)
        columns = [xp[:, :, j : j + (ow - 1) * sw + 1 : sw] for j in range(pw)]
        across = np.array(columns[0], copy=True) if pw == 1 else np.maximum(columns[0], columns[1])
        for part in columns[2:]:
            np.maximum(across, part, out=across)
        rows = [across[:, i : i + (oh - 1) * sh + 1 : sh] for i in range(ph)]
        target = out[n0:n1]
        if ph == 1:
            target[...] = rows[0]
        else:
            np.maximum(rows[0], rows[1], out=target)
        for part in rows[2:]:
            np.maximum(target, part, out=target)

    _on_both_cores(pool, n, x.nbytes)
    return out


POOL_SPLIT_BYTES = 8 * 2**20
"""Inputs of at least this size (and two samples) are pooled in two halves on two threads
(numpy's element-wise loops release the GIL; smaller ones cost more to hand over than to do)."""


def _on_both_cores(work: Callable[[int, int], None], n: int, nbytes: int) -> None:
    """``work(n0, n1)`` over samples 0..n: in two halves on two threads for a large batch."""
    if n < 2 or nbytes < POOL_SPLIT_BYTES:
        work(0, n)
        return
    from concurrent.futures import ThreadPoolExecutor

    half = n // 2
    with ThreadPoolExecutor(max_workers=1) as pool:
        other = pool.submit(work, half, n)
        work(0, half)
        other.result()


def avg_pool2d(
    x: np.ndarray,
    pool_size: int | Pair = 2,
    strides: int | Pair | None = None,
    padding: Literal["valid", "same"] = "valid",
) -> np.ndarray:
    """Average pooling; strides default to the pool size. With "same", each output is the
    mean of the REAL pixels under its window (Keras/TensorFlow: padding is not counted).

    >>> avg_pool2d(np.arange(9, dtype=np.float32).reshape(1, 3, 3, 1), 2, 2, "same")[0, ..., 0]
    array([[2. , 3.5],
           [6.5, 8. ]], dtype=float32)
    """
    x, size, strides_ = _pool_args(x, pool_size, strides, "avg_pool2d")
    pads, oh, ow = _pool_geometry(x, size, strides_, padding, "avg_pool2d")
    _, h, w, c = x.shape
    if c <= 32 and strides_ == size and not any(pads) and h == oh * size[0] and w == ow * size[1]:
        return _avg_pool_tiles(x, size)
    xp = _PaddedGroups(x, pads, x.shape[0]).get(0, x.shape[0])
    slices = _offsets(xp, size, strides_, (oh, ow))
    out = np.array(next(slices), dtype=x.dtype, copy=True, order="C")
    for part in slices:
        out += part
    if any(pads):
        counts = np.outer(
            _real_counts(h, size[0], strides_[0], pads[0], oh),
            _real_counts(w, size[1], strides_[1], pads[2], ow),
        ).astype(x.dtype)
        out /= counts[None, :, :, None]
    else:
        out *= x.dtype.type(1.0 / (size[0] * size[1]))
    return out


def _avg_pool_tiles(x: np.ndarray, size: Pair) -> np.ndarray:
    """Non-overlapping average pooling that tiles the image exactly, for few channels:
    the F_h rows of each tile are added as whole contiguous image rows, then each group of
    F_w neighbouring pixels is averaged by one small matrix product. Element-wise numpy
    over C-float runs is slow when C is small (LeNet's 6 channels: 2x faster this way)."""
    n, h, w, c = x.shape
    ph, pw = size
    rows = x.reshape(n * (h // ph), ph, w * c)
    summed = np.array(rows[:, 0], dtype=x.dtype, copy=True)
    for i in range(1, ph):
        summed += rows[:, i]
    averaging = np.zeros((pw, c, c), x.dtype)
    averaging[:, np.arange(c), np.arange(c)] = x.dtype.type(1.0 / (ph * pw))
    out = np.matmul(summed.reshape(-1, pw * c), averaging.reshape(pw * c, c))
    return out.reshape(n, h // ph, w // pw, c)


def _real_counts(n: int, size: int, stride: int, before: int, out: int) -> np.ndarray:
    """Per output index, how many real (not padded) input positions its window covers."""
    start = np.arange(out) * stride - before
    return np.minimum(start + size, n) - np.maximum(start, 0)


def global_avg_pool2d(x: np.ndarray) -> np.ndarray:
    """Mean over height and width: (N, H, W, C) -> (N, C)."""
    x = _batch(x, 4, "global_avg_pool2d")
    return x.mean(axis=(1, 2), dtype=x.dtype)


def global_max_pool2d(x: np.ndarray) -> np.ndarray:
    """Maximum over height and width: (N, H, W, C) -> (N, C)."""
    x = _batch(x, 4, "global_max_pool2d")
    return x.max(axis=(1, 2))


def zero_pad2d(x: np.ndarray, padding: tuple[int, int, int, int]) -> np.ndarray:
    """Zeros around every image: ``padding`` is (top, bottom, left, right)."""
    x = _batch(x, 4, "zero_pad2d")
    return _PaddedGroups(x, tuple(int(p) for p in padding), x.shape[0]).get(0, x.shape[0])  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------
# Flat layers
# --------------------------------------------------------------------------------------


def flatten(x: np.ndarray) -> np.ndarray:
    """(N, H, W, C) -> (N, H*W*C) in channels-last order (Keras' Flatten); a view."""
    x = np.ascontiguousarray(x, dtype=_work(x))
    return x.reshape(x.shape[0], -1)


def dense(
    x: np.ndarray,
    kernel: np.ndarray,
    bias: np.ndarray | None = None,
    *,
    activation: str | None = None,
    alpha: float | None = None,
    observe: BlockObserver | None = None,
) -> np.ndarray:
    """Fully connected layer: x @ kernel + bias, then the fused activation.

    Args:
        x: (N, in). kernel: (in, out). bias: (out,) or None.
    """
    x = _batch(x, 2, "dense")
    kernel = np.ascontiguousarray(kernel, dtype=x.dtype)
    if kernel.ndim != 2 or kernel.shape[0] != x.shape[1]:
        raise ShapeError(
            f"dense: the kernel must be ({x.shape[1]}, units) for {x.shape[1]} inputs. "
            f"Received: kernel shape {kernel.shape}"
        )
    out = np.matmul(x, kernel)
    _finish(out, _bias(bias, (kernel.shape[1],), "dense", x.dtype), activation, alpha, observe=observe)
    return out


def batch_norm(
    x: np.ndarray,
    gamma: np.ndarray | None,
    beta: np.ndarray | None,
    moving_mean: np.ndarray,
    moving_variance: np.ndarray,
    epsilon: float = 1e-3,
) -> np.ndarray:
    """Batch normalisation at inference (Keras): gamma * (x - mean) / sqrt(var + eps) + beta
    over the last axis, folded into one scale and one shift. ``gamma`` None is
    ``scale=False`` (1), ``beta`` None is ``center=False`` (0)."""
    x = np.ascontiguousarray(x, dtype=_work(x))
    d = x.shape[-1]
    values = {"gamma": gamma, "beta": beta, "moving_mean": moving_mean, "moving_variance": moving_variance}
    params: dict[str, np.ndarray] = {}
    for key, value in values.items():
        if value is None:
            continue
        p = np.asarray(value, dtype=np.float64)
        if p.shape != (d,):
            raise ShapeError(f"batch_norm: `{key}` must have shape ({d},). Received: shape {p.shape}")
        params[key] = p
    scale = 1.0 / np.sqrt(params["moving_variance"] + epsilon)
    if "gamma" in params:
        scale = scale * params["gamma"]
    shift = -params["moving_mean"] * scale
    if "beta" in params:
        shift = shift + params["beta"]
    out = x * scale.astype(x.dtype)
    out += shift.astype(x.dtype)
    return out


def dropout(
    x: np.ndarray, rate: float, *, training: bool = False, rng: np.random.Generator | None = None
) -> np.ndarray:
    """Dropout: the identity at inference. With ``training``, each unit is dropped (set to
    0) with probability ``rate`` and the survivors are scaled by 1 / (1 - rate) (inverted
    dropout, so the expected activation is unchanged)."""
    if not 0.0 <= rate < 1.0:
        raise ShapeError(f"dropout: `rate` must be in [0, 1). Received: rate={rate}")
    if not training or rate == 0.0:
        return x
    generator = rng if rng is not None else np.random.default_rng()
    keep = generator.random(x.shape, dtype=_F32) >= _F32(rate)
    dt = _work(x)
    return np.multiply(x, keep, dtype=dt) * dt(1.0 / (1.0 - rate))


# --------------------------------------------------------------------------------------
# Merges
# --------------------------------------------------------------------------------------


MERGES = ("add", "subtract", "multiply", "average", "maximum", "minimum", "concatenate")
"""The ``kind`` values :func:`merge` accepts (Keras' merge layers, lower case)."""


def _merge_broadcast(kind: str, arrays: list[np.ndarray]) -> list[np.ndarray]:
    """Keras' merge broadcasting: inputs with fewer axes get new axes right after the
    batch axis, then the sample shapes broadcast as numpy's do (a 1 stretches)."""
    if len({a.shape[0] for a in arrays}) > 1:
        raise ShapeError(
            f"merge {kind}: the inputs have different batch sizes. Received shapes "
            f"{', '.join(str(a.shape) for a in arrays)}"
        )
    ndim = max(a.ndim for a in arrays)
    expanded = [a.reshape(a.shape[:1] + (1,) * (ndim - a.ndim) + a.shape[1:]) for a in arrays]
    try:
        np.broadcast_shapes(*(a.shape for a in expanded))
    except ValueError:
        raise ShapeError(
            f"merge {kind}: the input shapes do not broadcast. Received shapes "
            f"{', '.join(str(a.shape) for a in arrays)}"
        ) from None
    return expanded


def merge(kind: str, xs: Sequence[np.ndarray], *, axis: int = -1) -> np.ndarray:
    """Combine the outputs of several layers as Keras' merge layers do.

    ``add``, ``multiply``, ``average``, ``maximum``, ``minimum`` (any number of inputs,
    at least one) and ``subtract`` (exactly two) are element-wise with Keras'
    broadcasting (:func:`_merge_broadcast`); ``concatenate`` joins along ``axis``
    (default -1, the channels; the other axes must agree).

    >>> a, b = np.ones((1, 2, 2, 3), np.float32), np.full((1, 3), 2, np.float32)
    >>> merge("multiply", [a, b])[0, 0, 0]
    array([2., 2., 2.], dtype=float32)
    """
    dt: type[np.floating] = np.float64 if any(_work(x) is np.float64 for x in xs) else _F32
    arrays = [np.asarray(x, dtype=dt) for x in xs]
    if kind not in MERGES:
        raise ModelError(
            f"Unknown value for `kind`. Allowed values are: {', '.join(MERGES)}. Received: kind={kind}"
        )
    if not arrays:
        raise ShapeError(f"merge {kind}: needs at least one input. Received: none")
    if kind == "subtract" and len(arrays) != 2:
        raise ShapeError(f"merge subtract: needs exactly 2 inputs. Received: {len(arrays)} inputs")
    if kind == "concatenate":
        shapes = [a.shape for a in arrays]
        ndim = arrays[0].ndim
        if any(a.ndim != ndim for a in arrays) or not -ndim < axis < ndim or axis % ndim == 0:
            raise ShapeError(
                f"merge concatenate: the inputs must have the same number of axes and `axis` must be one of "
                f"their sample axes. Received shapes {', '.join(map(str, shapes))} and axis={axis}"
            )
        a_ = axis % ndim
        if len({s[:a_] + s[a_ + 1 :] for s in shapes}) > 1:
            raise ShapeError(
                f"merge concatenate: the inputs must agree on every axis but {axis}. Received shapes "
                f"{', '.join(map(str, shapes))}"
            )
        return np.concatenate(arrays, axis=a_)
    arrays = _merge_broadcast(kind, arrays)
    out = np.array(np.broadcast_to(arrays[0], np.broadcast_shapes(*(a.shape for a in arrays))), dtype=dt)
    if kind == "subtract":
        out -= arrays[1]
        return out
    combine = {"add": np.add, "average": np.add, "multiply": np.multiply,
               "maximum": np.maximum, "minimum": np.minimum}[kind]
    for other in arrays[1:]:
        combine(out, other, out=out)
    if kind == "average":
        out /= dt(len(arrays))
    return out

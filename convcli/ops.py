"""The forward computations of every layer: pure numpy on float32, channels-last batches.

Images are batches ``(N, H, W, C)``, flat activations ``(N, units)``. Parameters come in
Keras layouts: a conv kernel is ``(F_h, F_w, C, K)``, a dense kernel ``(in, out)``, a
locally connected kernel ``(out_h * out_w, F_h * F_w * C, K)``.

Convolution is the lecture's "lay the filter on the image, multiply, sum" done for every
output neuron at once: the windows of the zero-padded batch are copied into one matrix
(im2col, one row per output neuron, columns in the kernel's ``(f_h, f_w, c)`` order) and
multiplied by the ``(F_h * F_w * C, K)`` kernel matrix in one BLAS call; the bias rides in
that product (a column of ones against a bias row) and the activation is applied in place
while the result is still in cache. Large batches are
processed in chunks so the im2col buffer never exceeds :data:`IM2COL_BUDGET_BYTES`,
whatever the batch size. No Python loop runs over output positions: the only loops are
over chunks and, for pooling, over the few offsets inside one window.

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
from collections.abc import Callable, Iterator
from typing import Literal

import numpy as np
from numpy.lib.stride_tricks import as_strided, sliding_window_view

from convcli import geometry
from convcli.errors import ModelError, ShapeError

__all__ = [
    "ACTIVATIONS",
    "ALPHA_DEFAULTS",
    "CHUNK_BYTES",
    "IM2COL_BUDGET_BYTES",
    "activate",
    "avg_pool2d",
    "batch_norm",
    "conv2d",
    "dense",
    "dropout",
    "elu",
    "flatten",
    "global_avg_pool2d",
    "global_max_pool2d",
    "glu",
    "leaky_relu",
    "locally_connected2d",
    "log_softmax",
    "max_pool2d",
    "relu",
    "resolve_padding",
    "sigmoid",
    "softmax",
    "sparsemax",
    "tanh",
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


# --------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------


def _batch(x: np.ndarray, ndim: int, what: str) -> np.ndarray:
    """``x`` as a C-contiguous float32 array with ``ndim`` dimensions (no copy when it is one)."""
    arr = np.ascontiguousarray(x, dtype=_F32)
    if arr.ndim != ndim:
        layout = "(N, H, W, C)" if ndim == 4 else "(N, units)"
        raise ShapeError(
            f"{what} needs a batch of shape {layout}. Received: an array of shape {arr.shape}"
        )
    return arr


def _pair(value: int | tuple[int, int] | None, default: Pair, what: str) -> Pair:
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
    """Windows of ``kernel`` at ``stride`` inside ``n`` (the last partial window is dropped,
    as in Keras and PyTorch)."""
    if n < kernel:
        raise ShapeError(f"{what}: the window of size {kernel} is larger than the (padded) input of size {n}")
    return (n - kernel) // stride + 1


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


def _chunk_budget(chunk_bytes: int | None, cols_per_row: int = 0) -> int:
    """Bytes of im2col per chunk: ``chunk_bytes`` if given, else :data:`CHUNK_BYTES` but
    enough for :data:`MIN_CHUNK_ROWS` rows; never above :data:`IM2COL_BUDGET_BYTES`."""
    if chunk_bytes is None:
        return min(max(CHUNK_BYTES, MIN_CHUNK_ROWS * cols_per_row * 4), IM2COL_BUDGET_BYTES)
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
            self.buffer = np.full((min(group, n), h + top + bottom, w + left + right, c), fill, _F32)

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


def _into(result: np.ndarray, out: np.ndarray | None) -> np.ndarray:
    """``result`` as float32, written into ``out`` when one is given."""
    if out is None:
        return np.asarray(result, dtype=_F32)
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
    if max_value is None and negative_slope == 0.0 and threshold == 0.0:
        return np.maximum(x, _F32(0), out=out)
    for key, value in (("max_value", max_value), ("negative_slope", negative_slope), ("threshold", threshold)):
        if value is not None and not value >= 0:
            raise ModelError(f"relu: `{key}` must be a non-negative number. Received: {key}={value}")
    if negative_slope == 0.0 and threshold == 0.0:
        return np.clip(x, _F32(0), _F32(max_value), out=out)  # relu6 and friends: one pass
    x = np.asarray(x, dtype=_F32)
    t = _F32(threshold)
    positive = x if max_value is None else np.minimum(x, _F32(max_value))
    negative = np.subtract(x, t) * _F32(negative_slope) if negative_slope else _F32(0)
    return _into(np.where(x > t, positive, negative), out)


def leaky_relu(x: np.ndarray, alpha: float = 0.2, *, out: np.ndarray | None = None) -> np.ndarray:
    """z for z > 0, alpha*z otherwise (Keras' ``activations.leaky_relu`` defaults to 0.2,
    its ``LeakyReLU`` layer to 0.3; the lecture's example uses alpha = 0.005)."""
    a = _F32(alpha)
    negative = np.multiply(x, a)
    if 0.0 <= alpha <= 1.0:
        return np.maximum(x, negative, out=out)  # max(z, a*z) is leaky ReLU for 0 <= a <= 1
    return _into(np.where(x > 0, x, negative), out)


def sigmoid(x: np.ndarray, *, out: np.ndarray | None = None) -> np.ndarray:
    """1 / (1 + e^-z), computed without overflow (scipy.special.expit)."""
    from scipy.special import expit

    return expit(x, out=out) if out is not None else expit(np.asarray(x, dtype=_F32))


def tanh(x: np.ndarray, *, out: np.ndarray | None = None) -> np.ndarray:
    """The hyperbolic tangent."""
    return np.tanh(x, out=out)


def elu(x: np.ndarray, alpha: float = 1.0, *, out: np.ndarray | None = None) -> np.ndarray:
    """z for z > 0, alpha*(e^z - 1) otherwise (Keras ELU, alpha 1.0 by default)."""
    negative = np.expm1(np.minimum(x, _F32(0)))
    negative *= _F32(alpha)
    result = np.maximum(x, _F32(0), out=out)
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
        shifted = np.subtract(x, x.max(axis=-1, keepdims=True), dtype=_F32)
    total = np.exp(shifted).sum(axis=-1, keepdims=True, dtype=np.float64)
    shifted -= np.log(total).astype(_F32)
    return _into(shifted, out)


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
    return _into(np.maximum(z - tau, 0.0), out)


def glu(x: np.ndarray) -> np.ndarray:
    """Gated linear unit (Keras ``glu``, axis -1): the last axis is split into halves a, b
    and the result is a * sigmoid(b), HALF as many channels as the input."""
    x = np.asarray(x, dtype=_F32)
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
    result *= _F32(SELU_SCALE)
    return result


def _celu(x: np.ndarray, alpha: float | None, out: np.ndarray | None) -> np.ndarray:
    a = _F32(_param(alpha, 1.0))
    negative = np.expm1(np.minimum(x, _F32(0)) / a) * a
    result = np.maximum(x, _F32(0), out=out)
    result += negative
    return result


def _gelu(x: np.ndarray, alpha: float | None, out: np.ndarray | None) -> np.ndarray:
    # 0.5 z (1 + erf(z / sqrt 2)) written with erfc(-z / sqrt 2) = 1 + erf(z / sqrt 2),
    # which keeps its relative precision in the far negative tail instead of cancelling.
    from scipy.special import erfc

    x = np.asarray(x, dtype=_F32)
    result = erfc(x * _F32(-_INV_SQRT2))
    result *= _F32(0.5)
    result *= x
    return _into(result, out)


def _silu(x: np.ndarray, alpha: float | None, out: np.ndarray | None) -> np.ndarray:
    x = np.asarray(x, dtype=_F32)
    return _into(x * sigmoid(x), out)


def _hard_sigmoid_array(x: np.ndarray) -> np.ndarray:
    result = np.multiply(x, _F32(1 / 6), dtype=_F32)
    result += _F32(0.5)
    return np.clip(result, _F32(0), _F32(1), out=result)


def _hard_sigmoid(x: np.ndarray, alpha: float | None, out: np.ndarray | None) -> np.ndarray:
    return _into(_hard_sigmoid_array(x), out)


def _hard_silu(x: np.ndarray, alpha: float | None, out: np.ndarray | None) -> np.ndarray:
    result = _hard_sigmoid_array(x)
    result *= x
    return _into(result, out)


def _softplus_array(x: np.ndarray) -> np.ndarray:
    # log(1 + e^z) = logaddexp(z, 0): no overflow for large z, full precision for very negative z.
    return np.logaddexp(np.asarray(x, dtype=_F32), _F32(0))


def _softplus(x: np.ndarray, alpha: float | None, out: np.ndarray | None) -> np.ndarray:
    return _into(_softplus_array(x), out)


def _log_sigmoid(x: np.ndarray, alpha: float | None, out: np.ndarray | None) -> np.ndarray:
    return _into(-np.logaddexp(np.negative(x, dtype=_F32), _F32(0)), out)


def _mish(x: np.ndarray, alpha: float | None, out: np.ndarray | None) -> np.ndarray:
    result = np.tanh(_softplus_array(x))
    result *= x
    return _into(result, out)


def _softsign(x: np.ndarray, alpha: float | None, out: np.ndarray | None) -> np.ndarray:
    x = np.asarray(x, dtype=_F32)
    return _into(x / (np.abs(x) + _F32(1)), out)


def _squareplus(x: np.ndarray, alpha: float | None, out: np.ndarray | None) -> np.ndarray:
    # (z + sqrt(z^2 + b)) / 2; for z < 0 the same value as b / (2 (sqrt(z^2 + b) - z)), which
    # does not cancel. hypot avoids overflowing z^2.
    b = _param(alpha, 4.0)
    x = np.asarray(x, dtype=_F32)
    root = np.hypot(x, _F32(math.sqrt(b)))
    half = _F32(0.5)
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):  # masked out below, or b/inf = 0
        negative = _F32(b / 2) / (root - x)
    return _into(np.where(x >= 0, x * half + root * half, negative), out)


def _sparse_plus(x: np.ndarray, alpha: float | None, out: np.ndarray | None) -> np.ndarray:
    x = np.asarray(x, dtype=_F32)
    middle = np.square(x + _F32(1)) * _F32(0.25)
    return _into(np.where(x <= -1, _F32(0), np.where(x < 1, middle, x)), out)


def _sparse_sigmoid(x: np.ndarray, alpha: float | None, out: np.ndarray | None) -> np.ndarray:
    result = np.add(x, _F32(1), dtype=_F32)
    result *= _F32(0.5)
    return _into(np.clip(result, _F32(0), _F32(1), out=result), out)


def _hard_tanh(x: np.ndarray, alpha: float | None, out: np.ndarray | None) -> np.ndarray:
    return np.clip(x, _F32(-1), _F32(1), out=out)


def _tanh_shrink(x: np.ndarray, alpha: float | None, out: np.ndarray | None) -> np.ndarray:
    # z - tanh(z) cancels for small z; float64 keeps the float32 result exact to rounding.
    z = np.asarray(x, dtype=np.float64)
    return _into(z - np.tanh(z), out)


def _exponential(x: np.ndarray, alpha: float | None, out: np.ndarray | None) -> np.ndarray:
    with np.errstate(over="ignore"):  # e^z beyond float32 is inf, as in Keras
        return np.exp(x, out=out) if out is not None else np.exp(np.asarray(x, dtype=_F32))


def _soft_shrink(x: np.ndarray, alpha: float | None, out: np.ndarray | None) -> np.ndarray:
    t = _F32(_param(alpha, 0.5))
    x = np.asarray(x, dtype=_F32)
    return _into(np.where(x > t, x - t, np.where(x < -t, x + t, _F32(0))), out)


def _hard_shrink(x: np.ndarray, alpha: float | None, out: np.ndarray | None) -> np.ndarray:
    t = _F32(_param(alpha, 0.5))
    x = np.asarray(x, dtype=_F32)
    return _into(np.where(np.abs(x) > t, x, _F32(0)), out)


def _threshold(x: np.ndarray, alpha: float | None, out: np.ndarray | None) -> np.ndarray:
    t = _F32(_param(alpha, 0.0))
    x = np.asarray(x, dtype=_F32)
    return _into(np.where(x > t, x, _F32(0)), out)


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


def _finish(
    block: np.ndarray, bias: np.ndarray | None, activation: str | None, alpha: float | None,
    channels: int | None = None,
) -> None:
    """Bias and activation, in place, on a freshly computed output block (rows of
    ``channels`` values for softmax when a row holds several positions)."""
    if bias is not None:
        block += bias
    if activation is not None and activation != "linear":
        if activation == "glu":
            raise ModelError("glu halves the channels, so it cannot be fused into a layer: apply it on its own")
        target = block if channels is None else block.reshape(-1, channels)
        activate(target, activation, alpha, inplace=True)


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
    wide = np.zeros((fh, width, c, group, k), _F32)
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
    chunk_bytes: int | None = None,
) -> np.ndarray:
    """2-D convolution (cross-correlation, as Keras and the lecture: no kernel flip).

    Args:
        x: batch (N, H, W, C), float32.
        kernel: (F_h, F_w, C, K), Keras layout.
        bias: (K,) or None.
        strides, dilation: one integer or (vertical, horizontal).
        padding: "valid", "same" (Keras: extra row/column at the bottom/right), an
            integer P (zeros on every side, the lecture's P) or (top, bottom, left, right).
        activation, alpha: fused activation (Keras' ``activation=``), see :func:`activate`.
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
    kernel = np.ascontiguousarray(kernel, dtype=_F32)
    if kernel.ndim != 4 or kernel.shape[2] != x.shape[3]:
        raise ShapeError(
            f"conv2d: the kernel must be (F_h, F_w, {x.shape[3]}, K) for an input of depth "
            f"{x.shape[3]}. Received: kernel shape {kernel.shape}"
        )
    fh, fw, c, k = kernel.shape
    strides_ = _pair(strides, (1, 1), "strides")
    dilation_ = _pair(dilation, (1, 1), "dilation")
    bias_ = _bias(bias, (k,), "conv2d")
    pads, oh, ow = _conv_geometry(x, (fh, fw), strides_, padding, dilation_, "conv2d")
    n = x.shape[0]
    out = np.empty((n, oh, ow, k), _F32)
    weights = kernel.reshape(fh * fw * c, k)

    if fh == fw == 1 and strides_ == (1, 1) and not any(pads):
        # 1x1 convolution: the input already is the im2col matrix.
        flat_out = out.reshape(-1, k)
        np.matmul(x.reshape(-1, c), weights, out=flat_out)
        _finish(flat_out, bias_, activation, alpha)
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
    samples, rows = _chunks(n, oh, row_positions * total * 4, _chunk_budget(chunk_bytes, total))
    buffer = np.empty(samples * rows * row_positions * total, _F32)
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
            _finish(block, None, activation, alpha, k)
    return out


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


def _bias(bias: np.ndarray | None, shape: tuple[int, ...], what: str) -> np.ndarray | None:
    if bias is None:
        return None
    arr = np.ascontiguousarray(bias, dtype=_F32)
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
    kernel = np.ascontiguousarray(kernel, dtype=_F32)
    if kernel.ndim != 3 or kernel.shape[:2] != (oh * ow, fh * fw * c):
        raise ShapeError(
            f"locally_connected2d: the kernel must be ({oh * ow}, {fh * fw * c}, K) for input "
            f"{h}x{w}x{c}. Received: kernel shape {kernel.shape}"
        )
    k = kernel.shape[2]
    bias_ = _bias(bias, (oh, ow, k), "locally_connected2d")
    cols_per_row = fh * fw * c
    samples, rows = _chunks(n, oh, ow * cols_per_row * 4, _chunk_budget(chunk_bytes))
    buffer = np.empty(samples * rows * ow * cols_per_row, _F32)
    out = np.empty((n, oh, ow, k), _F32)
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
            _finish(block, None if bias_ is None else bias_[r0:r1], activation, alpha)
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
        return (top, bottom, left, right), -(-h // strides[0]), -(-w // strides[1])
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
    xp = _PaddedGroups(x, pads, x.shape[0], fill=-np.inf).get(0, x.shape[0])
    slices = _offsets(xp, size, strides_, (oh, ow))
    out = np.array(next(slices), dtype=_F32, copy=True, order="C")
    for part in slices:
        np.maximum(out, part, out=out)
    return out


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
    out = np.array(next(slices), dtype=_F32, copy=True, order="C")
    for part in slices:
        out += part
    if any(pads):
        counts = np.outer(
            _real_counts(h, size[0], strides_[0], pads[0], oh),
            _real_counts(w, size[1], strides_[1], pads[2], ow),
        ).astype(_F32)
        out /= counts[None, :, :, None]
    else:
        out *= _F32(1.0 / (size[0] * size[1]))
    return out


def _avg_pool_tiles(x: np.ndarray, size: Pair) -> np.ndarray:
    """Non-overlapping average pooling that tiles the image exactly, for few channels:
    the F_h rows of each tile are added as whole contiguous image rows, then each group of
    F_w neighbouring pixels is averaged by one small matrix product. Element-wise numpy
    over C-float runs is slow when C is small (LeNet's 6 channels: 2x faster this way)."""
    n, h, w, c = x.shape
    ph, pw = size
    rows = x.reshape(n * (h // ph), ph, w * c)
    summed = np.array(rows[:, 0], dtype=_F32, copy=True)
    for i in range(1, ph):
        summed += rows[:, i]
    averaging = np.zeros((pw, c, c), _F32)
    averaging[:, np.arange(c), np.arange(c)] = _F32(1.0 / (ph * pw))
    out = np.matmul(summed.reshape(-1, pw * c), averaging.reshape(pw * c, c))
    return out.reshape(n, h // ph, w // pw, c)


def _real_counts(n: int, size: int, stride: int, before: int, out: int) -> np.ndarray:
    """Per output index, how many real (not padded) input positions its window covers."""
    start = np.arange(out) * stride - before
    return np.minimum(start + size, n) - np.maximum(start, 0)


def global_avg_pool2d(x: np.ndarray) -> np.ndarray:
    """Mean over height and width: (N, H, W, C) -> (N, C)."""
    x = _batch(x, 4, "global_avg_pool2d")
    return x.mean(axis=(1, 2), dtype=_F32)


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
    x = np.ascontiguousarray(x, dtype=_F32)
    return x.reshape(x.shape[0], -1)


def dense(
    x: np.ndarray,
    kernel: np.ndarray,
    bias: np.ndarray | None = None,
    *,
    activation: str | None = None,
    alpha: float | None = None,
) -> np.ndarray:
    """Fully connected layer: x @ kernel + bias, then the fused activation.

    Args:
        x: (N, in). kernel: (in, out). bias: (out,) or None.
    """
    x = _batch(x, 2, "dense")
    kernel = np.ascontiguousarray(kernel, dtype=_F32)
    if kernel.ndim != 2 or kernel.shape[0] != x.shape[1]:
        raise ShapeError(
            f"dense: the kernel must be ({x.shape[1]}, units) for {x.shape[1]} inputs. "
            f"Received: kernel shape {kernel.shape}"
        )
    out = np.matmul(x, kernel)
    _finish(out, _bias(bias, (kernel.shape[1],), "dense"), activation, alpha)
    return out


def batch_norm(
    x: np.ndarray,
    gamma: np.ndarray,
    beta: np.ndarray,
    moving_mean: np.ndarray,
    moving_variance: np.ndarray,
    epsilon: float = 1e-3,
) -> np.ndarray:
    """Batch normalisation at inference (Keras): gamma * (x - mean) / sqrt(var + eps) + beta
    over the last axis, folded into one scale and one shift."""
    x = np.ascontiguousarray(x, dtype=_F32)
    d = x.shape[-1]
    params = [np.asarray(p, dtype=np.float64) for p in (gamma, beta, moving_mean, moving_variance)]
    for key, p in zip(("gamma", "beta", "moving_mean", "moving_variance"), params):
        if p.shape != (d,):
            raise ShapeError(f"batch_norm: `{key}` must have shape ({d},). Received: shape {p.shape}")
    g, b, mean, var = params
    scale = g / np.sqrt(var + epsilon)
    shift = b - mean * scale
    out = x * scale.astype(_F32)
    out += shift.astype(_F32)
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
    return np.multiply(x, keep, dtype=_F32) * _F32(1.0 / (1.0 - rate))

"""The backward passes: for every forward of :mod:`convcli.ops`, the gradients of a loss
with respect to the forward's inputs and parameters, given the gradient of its output.

This is the lecture's backpropagation: the error at a layer's output is sent back through
the derivative of its computation, one layer at a time, and each weight moves by its share.
Every function here is pure: it receives the forward's inputs (and what the forward saved,
such as an activation's output or dropout's mask) and the output gradient, and returns
new arrays. Arrays keep their precision: float32 in, float32 out; float64 anywhere in,
float64 out (the gradient checks run in float64).

Convolution, as in the forward, goes through im2col: the windows of the padded batch are
copied into a matrix ``X`` (one row per output position, columns in the kernel's
``(f_h, f_w, c)`` order) and with ``G`` the output gradient as an ``(M, K)`` matrix,

- the kernel gradient is ``X^T @ G``, one matrix product (summed over chunks);
- the input gradient is the transposed correlation: ``G @ W^T`` gives, for every window,
  what each of its pixels receives, and those rows are added back onto the image (col2im),
  one strided slice per kernel offset. With stride 1 (in float32) the same sum is a plain
  correlation of the padded ``G`` with the kernel turned by 180 degrees, which the
  forward's own :func:`convcli.ops.conv2d` computes twice as fast as the scatter;
- the bias gradient is the sum of ``G`` over the positions.

Large batches are processed in chunks whose im2col matrix stays under the same budget as
the forward's (:data:`convcli.ops.CHUNK_BYTES`). No Python loop runs over output positions:
the loops are over chunks and over the few offsets inside one window.

Ties follow PyTorch (which Keras' torch backend calls): max pooling sends the gradient to
the first maximum of each window in row-major order; global max pooling splits it evenly
between equal maxima (``torch.amax``); the derivative of ReLU at 0 is 0.

>>> x = np.array([[1.0, 2.0]]); kernel = np.array([[3.0], [4.0]])
>>> dx, dkernel, dbias = dense_backward(x, kernel, np.array([[1.0]]))
>>> dx.tolist(), dkernel.ravel().tolist(), dbias.tolist()
([[3.0, 4.0]], [1.0, 2.0], [1.0])
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from convcli import geometry, losses, ops
from convcli.errors import InputError, ModelError, ShapeError

__all__ = [
    "FROM_OUTPUT",
    "BatchNormState",
    "activation_backward",
    "add_backward",
    "avg_pool2d_backward",
    "batch_norm_backward",
    "batch_norm_train",
    "concatenate_backward",
    "conv2d_backward",
    "conv2d_transpose_backward",
    "cropping2d_backward",
    "dense_backward",
    "depthwise_conv2d_backward",
    "dropout_backward",
    "dropout_mask",
    "flatten_backward",
    "global_avg_pool2d_backward",
    "global_max_pool2d_backward",
    "grouped_conv2d_backward",
    "layer_norm_backward",
    "layer_scale_backward",
    "locally_connected2d_backward",
    "loss_gradient",
    "max_pool2d_backward",
    "merge_backward",
    "normalization_backward",
    "permute_backward",
    "relu_layer_backward",
    "rescaling_backward",
    "reshape_backward",
    "separable_conv2d_backward",
    "upsampling2d_backward",
    "zero_pad2d_backward",
]

Pair = tuple[int, int]
PoolPadding = Literal["valid", "same"]


# --------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------


def _dtype(*arrays: object) -> np.dtype[np.floating]:
    """float64 when any argument is float64, else float32 (the forward's precision)."""
    for a in arrays:
        if a is not None and np.asarray(a).dtype == np.float64:
            return np.dtype(np.float64)
    return np.dtype(np.float32)


def _array(a: object, dtype: np.dtype[np.floating], ndim: int | None, what: str) -> np.ndarray:
    arr = np.ascontiguousarray(a, dtype=dtype)
    if ndim is not None and arr.ndim != ndim:
        layout = "(N, H, W, C)" if ndim == 4 else "(N, units)"
        raise ShapeError(f"{what} needs a batch of shape {layout}. Received: an array of shape {arr.shape}")
    return arr


_pair = ops._pair  # one reader of (height, width) pairs, shared with the forward ops


def _check_grad(grad: np.ndarray, shape: tuple[int, ...], what: str) -> None:
    if grad.shape != shape:
        raise ShapeError(
            f"{what}: the output gradient must have the forward's output shape {shape}. "
            f"Received: shape {grad.shape}"
        )


def _chunk_plan(n: int, out_rows: int, row_bytes: int, budget: int) -> tuple[int, int]:
    """(samples per chunk, output rows per chunk) so that one chunk's im2col fits ``budget``:
    whole samples when one sample fits, else blocks of output rows of one sample."""
    per_sample = max(out_rows * row_bytes, 1)
    if per_sample <= budget:
        return max(1, min(n, budget // per_sample)), out_rows
    return 1, max(1, min(out_rows, budget // max(row_bytes, 1)))


def _budget(chunk_bytes: int | None, cols_per_row: int, itemsize: int) -> int:
    """The forward's rule: :data:`ops.CHUNK_BYTES`, but room for 2048 rows, never above
    :data:`ops.IM2COL_BUDGET_BYTES`."""
    if chunk_bytes is None:
        return min(max(ops.CHUNK_BYTES, 2048 * cols_per_row * itemsize), ops.IM2COL_BUDGET_BYTES)
    if chunk_bytes < 1:
        raise ShapeError(f"`chunk_bytes` must be positive. Received: chunk_bytes={chunk_bytes}")
    return min(int(chunk_bytes), ops.IM2COL_BUDGET_BYTES)


def _window_view(xp: np.ndarray, kernel: Pair, strides: Pair, dilation: Pair, out_hw: Pair) -> np.ndarray:
    """Read-only view ``(n, OH, OW, F_h, F_w, C)`` of every window of the padded batch."""
    (fh, fw), (sh, sw), (dh, dw), (oh, ow) = kernel, strides, dilation, out_hw
    eh, ew = geometry.effective_kernel(fh, dh), geometry.effective_kernel(fw, dw)
    view = sliding_window_view(xp, (eh, ew), axis=(1, 2))  # (n, ., ., C, eh, ew)
    view = view[:, : (oh - 1) * sh + 1 : sh, : (ow - 1) * sw + 1 : sw, :, ::dh, ::dw]
    return view.transpose(0, 1, 2, 4, 5, 3)


def _col2im_add(
    target: np.ndarray, cols: np.ndarray, row0: int, strides: Pair, dilation: Pair
) -> None:
    """Add the window rows ``cols`` (g, R, OW, F_h, F_w, C), for output rows starting at
    ``row0``, back onto the padded batch ``target`` (g, Hp, Wp, C): one strided slice per
    kernel offset, so overlapping windows accumulate."""
    _, rows, ow, fh, fw, _ = cols.shape
    (sh, sw), (dh, dw) = strides, dilation
    for i in range(fh):
        top = row0 * sh + i * dh
        for j in range(fw):
            left = j * dw
            target[:, top : top + (rows - 1) * sh + 1 : sh, left : left + (ow - 1) * sw + 1 : sw, :] += cols[
                :, :, :, i, j, :
            ]


def _crop(padded: np.ndarray, pads: tuple[int, int, int, int], hw: Pair) -> np.ndarray:
    top, _, left, _ = pads
    return np.ascontiguousarray(padded[:, top : top + hw[0], left : left + hw[1], :])


# --------------------------------------------------------------------------------------
# Activations
# --------------------------------------------------------------------------------------


FROM_OUTPUT = frozenset({
    "linear", "relu", "relu6", "leaky_relu", "elu", "selu", "celu", "sigmoid", "hard_sigmoid",
    "sparse_sigmoid", "log_sigmoid", "tanh", "hard_tanh", "softplus", "softsign", "exponential",
    "softmax", "log_softmax", "sparsemax",
})
"""Activations whose derivative :func:`activation_backward` can read from the OUTPUT alone
(a fused ``activation=`` of conv/dense keeps only its output). The others (gelu, silu/swish,
hard_silu/hard_swish, mish, tanh_shrink, squareplus, sparse_plus, the shrinks, threshold,
glu) need the activation's input."""


def _sigmoid(z: np.ndarray) -> np.ndarray:
    from scipy.special import expit

    return np.asarray(expit(z), dtype=z.dtype)


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return np.asarray(e / e.sum(axis=-1, keepdims=True), dtype=z.dtype)


def _sparsemax_support_mean(g: np.ndarray, support: np.ndarray) -> np.ndarray:
    """Sparsemax's Jacobian (Martins & Astudillo, 2016, eq. 11): on the support, ``g`` minus
    its mean over the support; 0 elsewhere."""
    count = np.maximum(support.sum(axis=-1, keepdims=True), 1)
    mean = np.where(support, g, 0).sum(axis=-1, keepdims=True) / count
    return np.where(support, g - mean, 0).astype(g.dtype)


def _two_slopes(condition: np.ndarray, inside: np.floating, outside: np.floating) -> np.ndarray:
    """``inside`` where ``condition`` holds, else ``outside``, by arithmetic on the mask
    (np.where with two scalars runs several times slower on large batches)."""
    slopes = condition.astype(type(inside))
    slopes *= inside - outside
    slopes += outside
    return slopes


def _from_output(name: str, y: np.ndarray, g: np.ndarray, a: float) -> np.ndarray:
    t = y.dtype.type
    zero, one = t(0), t(1)
    if name == "linear":
        return g.copy()
    if name == "relu":
        return g * (y > zero)
    if name == "relu6":
        return g * ((y > zero) & (y < t(6)))
    if name == "leaky_relu":
        return g * _two_slopes(y > zero, one, t(a))
    if name == "elu":
        return np.where(y > zero, g, g * (y + t(a)))  # a e^z = out + a
    if name == "selu":
        scale, alpha = t(ops.SELU_SCALE), t(ops.SELU_ALPHA)
        return np.where(y > zero, g * scale, g * (y + scale * alpha))
    if name == "celu":
        return np.where(y > zero, g, g * (y / t(a) + one))  # e^(z / a) = out / a + 1
    if name == "sigmoid":
        return g * y * (one - y)
    if name == "hard_sigmoid":
        return g * ((y > zero) & (y < one)) * t(1 / 6)
    if name == "sparse_sigmoid":
        return g * ((y > zero) & (y < one)) * t(0.5)
    if name == "log_sigmoid":
        return g * -np.expm1(y)  # 1 - sigmoid(z) = 1 - e^out
    if name == "tanh":
        return g * (one - y * y)
    if name == "hard_tanh":
        return g * ((y > -one) & (y < one))
    if name == "softplus":
        return g * -np.expm1(-y)  # sigmoid(z) = 1 - e^-out
    if name == "softsign":
        return g * np.square(one - np.abs(y))  # 1 / (1 + |z|)^2 = (1 - |out|)^2
    if name == "exponential":
        return g * y
    if name == "softmax":
        return y * (g - np.sum(g * y, axis=-1, keepdims=True))
    if name == "log_softmax":
        return g - np.exp(y) * np.sum(g, axis=-1, keepdims=True)
    # sparsemax
    return _sparsemax_support_mean(g, y > zero)


def _from_input(name: str, z: np.ndarray, g: np.ndarray, a: float) -> np.ndarray:
    t = z.dtype.type
    zero, one = t(0), t(1)
    if name in ("relu", "relu6", "hard_tanh", "leaky_relu", "threshold", "soft_shrink", "hard_shrink",
                "hard_sigmoid", "sparse_sigmoid"):
        passes = {
            "relu": z > zero,
            "relu6": (z > zero) & (z < t(6)),
            "hard_tanh": (z > -one) & (z < one),
            "leaky_relu": z > zero,
            "threshold": z > t(a),
            "soft_shrink": np.abs(z) > t(a),
            "hard_shrink": np.abs(z) > t(a),
            "hard_sigmoid": (z > t(-3)) & (z < t(3)),
            "sparse_sigmoid": (z > -one) & (z < one),
        }[name]
        slope = {"leaky_relu": t(a), "hard_sigmoid": t(1 / 6), "sparse_sigmoid": t(0.5)}
        if name == "leaky_relu":
            return g * _two_slopes(passes, one, slope[name])
        return g * passes * slope.get(name, one)
    if name == "linear":
        return g.copy()
    if name == "elu":
        return np.where(z > zero, g, g * t(a) * np.exp(np.minimum(z, zero)))
    if name == "selu":
        return g * t(ops.SELU_SCALE) * np.where(z > zero, one, t(ops.SELU_ALPHA) * np.exp(np.minimum(z, zero)))
    if name == "celu":
        return np.where(z > zero, g, g * np.exp(np.minimum(z, zero) / t(a)))
    if name == "gelu":
        from scipy.special import erfc

        cdf = t(0.5) * erfc(-z * t(1 / np.sqrt(2)))
        return g * (cdf + z * np.exp(t(-0.5) * z * z) * t(1 / np.sqrt(2 * np.pi)))
    if name in ("silu", "swish"):
        s = _sigmoid(z)
        return g * (s + z * s * (one - s))
    if name in ("hard_silu", "hard_swish"):
        return g * np.where(z <= t(-3), zero, np.where(z < t(3), z / t(3) + t(0.5), one))
    if name == "mish":
        th = np.tanh(np.logaddexp(z, zero))
        return g * (th + z * (one - th * th) * _sigmoid(z))
    if name == "sigmoid":
        s = _sigmoid(z)
        return g * s * (one - s)
    if name == "log_sigmoid":
        return g * _sigmoid(-z)
    if name == "tanh":
        th = np.tanh(z)
        return g * (one - th * th)
    if name == "tanh_shrink":
        th = np.tanh(z)
        return g * th * th
    if name == "softplus":
        return g * _sigmoid(z)
    if name == "softsign":
        return g / np.square(one + np.abs(z))
    if name == "squareplus":
        return g * t(0.5) * (one + z / np.sqrt(z * z + t(a)))
    if name == "sparse_plus":
        return g * np.where(z <= -one, zero, np.where(z < one, (z + one) * t(0.5), one))
    if name == "exponential":
        return g * np.exp(z)
    if name == "softmax":
        s = _softmax(z)
        return s * (g - np.sum(g * s, axis=-1, keepdims=True))
    if name == "log_softmax":
        return g - _softmax(z) * np.sum(g, axis=-1, keepdims=True)
    if name == "sparsemax":
        return _sparsemax_support_mean(g, ops.sparsemax(z) > 0)
    # glu: z = [a, b], out = a * sigmoid(b)
    half = z.shape[-1] // 2
    s = _sigmoid(z[..., half:])
    return np.concatenate([g * s, g * z[..., :half] * s * (one - s)], axis=-1)


def activation_backward(
    name: str | None,
    grad: np.ndarray,
    *,
    x: np.ndarray | None = None,
    output: np.ndarray | None = None,
    alpha: float | None = None,
) -> np.ndarray:
    """Gradient with respect to an activation's input, given its output gradient and either
    its input ``x`` (every activation of :data:`convcli.ops.ACTIVATIONS`) or its ``output``
    (those in :data:`FROM_OUTPUT`; the input wins when both are given).

    ``alpha`` is the parameter of :data:`convcli.ops.ALPHA_DEFAULTS` (Keras' default when
    None). Kinks follow PyTorch, which Keras' torch backend calls: ReLU's derivative at 0 is
    0; relu6, hard_tanh, hard_sigmoid and the clips pass only strictly inside their range.
    For ``glu`` the result has the input's shape (twice the output's last axis).

    >>> activation_backward("tanh", np.array([2.0]), output=np.array([0.5])).tolist()
    [1.5]
    >>> activation_backward("relu", np.array([1.0, 1.0]), x=np.array([-1.0, 2.0])).tolist()
    [0.0, 1.0]

    Raises:
        ModelError: an unknown activation, only the output for one that needs its input,
            or a leaky_relu slope / elu or celu alpha that breaks reading the output.
    """
    key = "linear" if name is None else name
    if key not in ops.ACTIVATIONS:
        raise ModelError(
            f"Unknown value for `activation`. Allowed values are: {', '.join(ops.ACTIVATIONS)}. "
            f"Received: activation={name}"
        )
    a = float(ops.ALPHA_DEFAULTS.get(key, 0.0) if alpha is None else alpha)
    if x is not None:
        dtype = _dtype(x, grad)
        z = np.asarray(x, dtype=dtype)
        g = np.asarray(grad, dtype=dtype)
        expected = (*z.shape[:-1], z.shape[-1] // 2) if key == "glu" else z.shape
        _check_grad(g, expected, f"activation {key}")
        return np.asarray(_from_input(key, z, g, a), dtype=dtype)
    if output is None:
        raise ModelError(f"activation {key}: the backward needs the activation's input or output")
    if key not in FROM_OUTPUT:
        raise ModelError(f"activation {key}: its derivative cannot be read from its output; pass its input (x=...)")
    if (key == "leaky_relu" and a < 0) or (key in ("elu", "celu") and a <= 0):
        raise ModelError(
            f"activation {key}: the input's sign cannot be read from the output with alpha={a}; pass its input (x=...)"
        )
    dtype = _dtype(output, grad)
    y = np.asarray(output, dtype=dtype)
    g = np.asarray(grad, dtype=dtype)
    _check_grad(g, y.shape, f"activation {key}")
    return np.asarray(_from_output(key, y, g, a), dtype=dtype)


def relu_layer_backward(
    x: np.ndarray,
    grad: np.ndarray,
    *,
    max_value: float | None = None,
    negative_slope: float = 0.0,
    threshold: float = 0.0,
) -> np.ndarray:
    """Gradient of :func:`convcli.ops.relu` with the options of Keras' ``ReLU`` layer:
    1 where ``threshold < z < max_value``, ``negative_slope`` where z <= threshold, 0 above
    max_value."""
    dtype = _dtype(x, grad)
    z = np.asarray(x, dtype=dtype)
    g = np.asarray(grad, dtype=dtype)
    _check_grad(g, z.shape, "relu_layer_backward")
    t = dtype.type
    above = z > t(threshold)
    passes = above if max_value is None else above & (z < t(max_value))
    return np.where(passes, g, np.where(above, t(0), g * t(negative_slope)))


# --------------------------------------------------------------------------------------
# Convolution and locally connected layers
# --------------------------------------------------------------------------------------


def conv2d_backward(
    x: np.ndarray,
    kernel: np.ndarray,
    grad: np.ndarray,
    *,
    strides: int | Pair = 1,
    padding: ops.Padding = "valid",
    dilation: int | Pair = 1,
    use_bias: bool = True,
    input_gradient: bool = True,
    chunk_bytes: int | None = None,
) -> tuple[np.ndarray | None, np.ndarray, np.ndarray | None]:
    """Gradients of :func:`convcli.ops.conv2d` (before its activation: apply
    :func:`activation_backward` first for a fused one).

    Args:
        x: the forward's input (N, H, W, C). kernel: (F_h, F_w, C, K).
        grad: gradient of the loss with respect to the output (N, OH, OW, K).
        strides, padding, dilation: as given to the forward.
        use_bias: whether the layer has a bias (else the third result is None).
        input_gradient: False skips dx (None): a first layer's input is data, not learned,
            and its gradient is the costliest part when the input has few channels.
        chunk_bytes: im2col budget per chunk (default as the forward).

    Returns:
        (dx (N, H, W, C) or None, dkernel (F_h, F_w, C, K), dbias (K,) or None).

    >>> dx, dk, db = conv2d_backward(np.ones((1, 3, 3, 1)), np.ones((2, 2, 1, 1)), np.ones((1, 2, 2, 1)))
    >>> dx[0, :, :, 0].tolist(), dk.ravel().tolist(), db.tolist()
    ([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]], [4.0, 4.0, 4.0, 4.0], [4.0])
    """
    dtype = _dtype(x, kernel, grad)
    x = _array(x, dtype, 4, "conv2d_backward")
    kernel = _array(kernel, dtype, None, "conv2d_backward")
    if kernel.ndim != 4 or kernel.shape[2] != x.shape[3]:
        raise ShapeError(
            f"conv2d_backward: the kernel must be (F_h, F_w, {x.shape[3]}, K) for an input of depth "
            f"{x.shape[3]}. Received: kernel shape {kernel.shape}"
        )
    n, h, w, c = x.shape
    fh, fw, _, k = kernel.shape
    strides_ = _pair(strides, (1, 1), "strides")
    dilation_ = _pair(dilation, (1, 1), "dilation")
    pads = ops.resolve_padding((h, w), (fh, fw), strides_, padding, dilation_)
    top, bottom, left, right = pads
    hp, wp = h + top + bottom, w + left + right
    eh, ew = geometry.effective_kernel(fh, dilation_[0]), geometry.effective_kernel(fw, dilation_[1])
    if hp < eh or wp < ew:
        raise ShapeError(f"conv2d_backward: the kernel {eh}x{ew} is larger than the padded input {hp}x{wp}")
    oh, ow = (hp - eh) // strides_[0] + 1, (wp - ew) // strides_[1] + 1
    g = _array(grad, dtype, 4, "conv2d_backward")
    _check_grad(g, (n, oh, ow, k), "conv2d_backward")

    cols_per_row = fh * fw * c
    weights = kernel.reshape(cols_per_row, k)
    dweights = np.zeros((cols_per_row, k), dtype)
    xp = np.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0))) if any(pads) else x
    # With stride 1 the transposed correlation is itself a correlation: the output gradient,
    # padded by (F - 1 - padding), against the kernel turned by 180 degrees with its input
    # and output channels swapped. In float32 the forward's own conv2d computes it (its
    # chunked im2col and one GEMM), instead of scattering the window gradients back.
    before_after = (eh - 1 - top, eh - 1 - bottom, ew - 1 - left, ew - 1 - right)
    through_forward = dtype == np.float32 and strides_ == (1, 1) and min(before_after) >= 0
    scatter = input_gradient and not through_forward
    dxp = np.zeros((n, hp, wp, c), dtype) if scatter else None
    view = _window_view(xp, (fh, fw), strides_, dilation_, (oh, ow))
    budget = _budget(chunk_bytes, cols_per_row, dtype.itemsize)
    samples, rows = _chunk_plan(n, oh, ow * cols_per_row * dtype.itemsize, budget)
    buffer = np.empty(samples * rows * ow * cols_per_row, dtype)
    for n0 in range(0, n, samples):
        n1 = min(n, n0 + samples)
        for r0 in range(0, oh, rows):
            r1 = min(oh, r0 + rows)
            part = view[n0:n1, r0:r1]
            m = (n1 - n0) * (r1 - r0) * ow
            cols = buffer[: m * cols_per_row].reshape(m, cols_per_row)
            np.copyto(cols.reshape(part.shape), part)
            g_block = g[n0:n1, r0:r1].reshape(m, k)
            dweights += cols.T @ g_block
            if dxp is not None:
                np.matmul(g_block, weights.T, out=cols)  # the buffer now holds the window gradients
                _col2im_add(dxp[n0:n1], cols.reshape(part.shape), r0, strides_, dilation_)
    dbias = g.sum(axis=(0, 1, 2)) if use_bias else None
    dx: np.ndarray | None = None
    if dxp is not None:
        dx = _crop(dxp, pads, (h, w))
    elif input_gradient:
        turned = np.ascontiguousarray(kernel[::-1, ::-1].transpose(0, 1, 3, 2))
        dx = ops.conv2d(g, turned, padding=before_after, dilation=dilation_, chunk_bytes=chunk_bytes)
    return dx, dweights.reshape(fh, fw, c, k), dbias


def locally_connected2d_backward(
    x: np.ndarray,
    kernel: np.ndarray,
    grad: np.ndarray,
    *,
    kernel_size: int | Pair,
    strides: int | Pair = 1,
    use_bias: bool = True,
    input_gradient: bool = True,
    chunk_bytes: int | None = None,
) -> tuple[np.ndarray | None, np.ndarray, np.ndarray | None]:
    """Gradients of :func:`convcli.ops.locally_connected2d` (valid padding, before its
    activation).

    Args:
        x: (N, H, W, C). kernel: (OH * OW, F_h * F_w * C, K), Keras' layout.
        grad: (N, OH, OW, K).

    Returns:
        (dx (N, H, W, C) or None when ``input_gradient`` is False, dkernel like ``kernel``,
        dbias (OH, OW, K) or None).

    Each output position has its own weights, so the kernel gradient is one small product
    per position (``X_p^T @ G_p`` over the samples), all in one batched matmul.
    """
    dtype = _dtype(x, kernel, grad)
    x = _array(x, dtype, 4, "locally_connected2d_backward")
    fh, fw = _pair(kernel_size, (1, 1), "kernel_size")
    strides_ = _pair(strides, (1, 1), "strides")
    n, h, w, c = x.shape
    if h < fh or w < fw:
        raise ShapeError(f"locally_connected2d_backward: the window {fh}x{fw} is larger than the input {h}x{w}")
    oh, ow = (h - fh) // strides_[0] + 1, (w - fw) // strides_[1] + 1
    cols_per_row = fh * fw * c
    kernel = _array(kernel, dtype, None, "locally_connected2d_backward")
    if kernel.ndim != 3 or kernel.shape[:2] != (oh * ow, cols_per_row):
        raise ShapeError(
            f"locally_connected2d_backward: the kernel must be ({oh * ow}, {cols_per_row}, K) for input "
            f"{h}x{w}x{c}. Received: kernel shape {kernel.shape}"
        )
    k = kernel.shape[2]
    g = _array(grad, dtype, 4, "locally_connected2d_backward")
    _check_grad(g, (n, oh, ow, k), "locally_connected2d_backward")
    positions = kernel.reshape(oh, ow, cols_per_row, k)
    dkernel = np.zeros((oh, ow, cols_per_row, k), dtype)
    dx = np.zeros_like(x) if input_gradient else x
    view = _window_view(x, (fh, fw), strides_, (1, 1), (oh, ow))
    budget = _budget(chunk_bytes, cols_per_row, dtype.itemsize)
    samples, rows = _chunk_plan(n, oh, ow * cols_per_row * dtype.itemsize, budget)
    for n0 in range(0, n, samples):
        n1 = min(n, n0 + samples)
        for r0 in range(0, oh, rows):
            r1 = min(oh, r0 + rows)
            part = view[n0:n1, r0:r1]
            b, p = n1 - n0, (r1 - r0) * ow
            cols = np.ascontiguousarray(part).reshape(b, p, cols_per_row).transpose(1, 0, 2)  # (p, b, FFC)
            g_block = g[n0:n1, r0:r1].reshape(b, p, k).transpose(1, 0, 2)  # (p, b, K)
            w_block = positions[r0:r1].reshape(p, cols_per_row, k)
            dkernel[r0:r1] += np.matmul(cols.transpose(0, 2, 1), g_block).reshape(r1 - r0, ow, cols_per_row, k)
            if input_gradient:
                dcols = np.matmul(g_block, w_block.transpose(0, 2, 1))  # (p, b, FFC)
                _col2im_add(dx[n0:n1], dcols.transpose(1, 0, 2).reshape(part.shape), r0, strides_, (1, 1))
    dbias = g.sum(axis=0) if use_bias else None
    return (dx if input_gradient else None), dkernel.reshape(kernel.shape), dbias


# --------------------------------------------------------------------------------------
# Pooling and reshaping
# --------------------------------------------------------------------------------------


def _pool_geometry(
    h: int, w: int, size: Pair, strides: Pair, padding: PoolPadding
) -> tuple[tuple[int, int, int, int], int, int]:
    """Pads and output size exactly as :func:`convcli.ops.max_pool2d` computes them."""
    if padding == "same":
        top, bottom = geometry.same_padding(h, size[0], strides[0])
        left, right = geometry.same_padding(w, size[1], strides[1])
        return (top, bottom, left, right), -(-h // strides[0]), -(-w // strides[1])
    if padding != "valid":
        raise ShapeError(
            f"Unknown value for `padding`. Allowed values are: valid, same. Received: padding={padding!r}"
        )
    if h < size[0] or w < size[1]:
        raise ShapeError(f"pooling: the window {size[0]}x{size[1]} is larger than the input {h}x{w}")
    return (0, 0, 0, 0), (h - size[0]) // strides[0] + 1, (w - size[1]) // strides[1] + 1


def _offset_slice(i: int, j: int, strides: Pair, out_hw: Pair) -> tuple[slice, slice, slice, slice]:
    """The slice of the padded batch seen by offset (i, j) of every window."""
    (sh, sw), (oh, ow) = strides, out_hw
    return slice(None), slice(i, i + (oh - 1) * sh + 1, sh), slice(j, j + (ow - 1) * sw + 1, sw), slice(None)


def max_pool2d_backward(
    x: np.ndarray,
    grad: np.ndarray,
    pool_size: int | Pair = 2,
    strides: int | Pair | None = None,
    padding: PoolPadding = "valid",
) -> np.ndarray:
    """Gradient of :func:`convcli.ops.max_pool2d` with respect to its input: each window's
    gradient goes to the position of its maximum (the first one in row-major order when
    several are equal, as PyTorch's max_pool2d); overlapping windows add up.

    The maxima are recomputed from ``x`` (the forward keeps no argmax), one comparison per
    offset inside the window.

    >>> x = np.array([[1.0, 3.0], [3.0, 2.0]]).reshape(1, 2, 2, 1)
    >>> max_pool2d_backward(x, np.ones((1, 1, 1, 1)))[0, :, :, 0].tolist()
    [[0.0, 1.0], [0.0, 0.0]]
    """
    dtype = _dtype(x, grad)
    x = _array(x, dtype, 4, "max_pool2d_backward")
    size = _pair(pool_size, (2, 2), "pool_size")
    strides_ = _pair(strides, size, "strides")
    n, h, w, c = x.shape
    pads, oh, ow = _pool_geometry(h, w, size, strides_, padding)
    g = _array(grad, dtype, 4, "max_pool2d_backward")
    _check_grad(g, (n, oh, ow, c), "max_pool2d_backward")
    top, bottom, left, right = pads
    xp = np.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)), constant_values=-np.inf) if any(pads) else x
    offsets = [_offset_slice(i, j, strides_, (oh, ow)) for i in range(size[0]) for j in range(size[1])]
    out = np.array(xp[offsets[0]], copy=True)
    for where in offsets[1:]:
        np.maximum(out, xp[where], out=out)
    dxp = np.zeros(xp.shape, dtype)
    taken = np.zeros(out.shape, bool)
    overlapping = strides_[0] < size[0] or strides_[1] < size[1]
    for where in offsets:
        first = xp[where] == out
        first &= ~taken
        if overlapping:
            dxp[where] += first * g
        else:  # each pixel is in one window at most: write, do not add
            np.multiply(first, g, out=dxp[where])
        taken |= first
    return _crop(dxp, pads, (h, w))


def avg_pool2d_backward(
    x_shape: tuple[int, ...],
    grad: np.ndarray,
    pool_size: int | Pair = 2,
    strides: int | Pair | None = None,
    padding: PoolPadding = "valid",
) -> np.ndarray:
    """Gradient of :func:`convcli.ops.avg_pool2d` with respect to its input (of shape
    ``x_shape``): each window's gradient is shared equally by the pixels it averaged
    (with "same", only its real pixels: the padding is not counted, as in Keras).

    >>> avg_pool2d_backward((1, 2, 2, 1), np.full((1, 1, 1, 1), 4.0))[0, :, :, 0].tolist()
    [[1.0, 1.0], [1.0, 1.0]]
    """
    n, h, w, c = (int(s) for s in x_shape)
    size = _pair(pool_size, (2, 2), "pool_size")
    strides_ = _pair(strides, size, "strides")
    pads, oh, ow = _pool_geometry(h, w, size, strides_, padding)
    dtype = _dtype(grad)
    g = _array(grad, dtype, 4, "avg_pool2d_backward")
    _check_grad(g, (n, oh, ow, c), "avg_pool2d_backward")
    if any(pads):
        counts_h = np.minimum(np.arange(oh) * strides_[0] - pads[0] + size[0], h) - np.maximum(
            np.arange(oh) * strides_[0] - pads[0], 0
        )
        counts_w = np.minimum(np.arange(ow) * strides_[1] - pads[2] + size[1], w) - np.maximum(
            np.arange(ow) * strides_[1] - pads[2], 0
        )
        share = g / np.outer(counts_h, counts_w).astype(dtype)[None, :, :, None]
    else:
        share = g * dtype.type(1.0 / (size[0] * size[1]))
    dxp = np.zeros((n, h + pads[0] + pads[1], w + pads[2] + pads[3], c), dtype)
    for i in range(size[0]):
        for j in range(size[1]):
            dxp[_offset_slice(i, j, strides_, (oh, ow))] += share
    return _crop(dxp, pads, (h, w))


def global_avg_pool2d_backward(x_shape: tuple[int, ...], grad: np.ndarray) -> np.ndarray:
    """Gradient of the mean over height and width: ``grad / (H * W)`` at every pixel."""
    n, h, w, c = (int(s) for s in x_shape)
    dtype = _dtype(grad)
    g = _array(grad, dtype, 2, "global_avg_pool2d_backward")
    _check_grad(g, (n, c), "global_avg_pool2d_backward")
    return np.ascontiguousarray(np.broadcast_to((g * dtype.type(1.0 / (h * w)))[:, None, None, :], (n, h, w, c)))


def global_max_pool2d_backward(x: np.ndarray, grad: np.ndarray) -> np.ndarray:
    """Gradient of the maximum over height and width: split evenly between the pixels equal
    to the maximum (``torch.amax``, which Keras' GlobalMaxPooling2D calls on torch)."""
    dtype = _dtype(x, grad)
    x = _array(x, dtype, 4, "global_max_pool2d_backward")
    g = _array(grad, dtype, 2, "global_max_pool2d_backward")
    _check_grad(g, (x.shape[0], x.shape[3]), "global_max_pool2d_backward")
    is_max = x == x.max(axis=(1, 2), keepdims=True)
    count = is_max.sum(axis=(1, 2), keepdims=True)
    return np.where(is_max, g[:, None, None, :] / count.astype(dtype), dtype.type(0))


def flatten_backward(x_shape: tuple[int, ...], grad: np.ndarray) -> np.ndarray:
    """Gradient of :func:`convcli.ops.flatten`: the output gradient back in the input's shape."""
    g = np.asarray(grad, dtype=_dtype(grad))
    if g.size != int(np.prod(x_shape)):
        raise ShapeError(f"flatten_backward: a gradient of shape {g.shape} cannot take the shape {tuple(x_shape)}")
    return np.ascontiguousarray(g).reshape(x_shape)


def zero_pad2d_backward(grad: np.ndarray, padding: tuple[int, int, int, int]) -> np.ndarray:
    """Gradient of :func:`convcli.ops.zero_pad2d`: the padding's gradient is dropped."""
    g = _array(grad, _dtype(grad), 4, "zero_pad2d_backward")
    top, bottom, left, right = (int(p) for p in padding)
    _, hp, wp, _ = g.shape
    return _crop(g, (top, bottom, left, right), (hp - top - bottom, wp - left - right))


# --------------------------------------------------------------------------------------
# Flat layers, batch normalisation, dropout, merges
# --------------------------------------------------------------------------------------


def dense_backward(
    x: np.ndarray, kernel: np.ndarray, grad: np.ndarray, *, use_bias: bool = True, input_gradient: bool = True
) -> tuple[np.ndarray | None, np.ndarray, np.ndarray | None]:
    """Gradients of :func:`convcli.ops.dense` (before its activation): ``dx = G @ W^T``
    (None when ``input_gradient`` is False), ``dW = x^T @ G``, ``db = sum of G over the batch``."""
    dtype = _dtype(x, kernel, grad)
    x = _array(x, dtype, 2, "dense_backward")
    kernel = _array(kernel, dtype, 2, "dense_backward")
    if kernel.shape[0] != x.shape[1]:
        raise ShapeError(
            f"dense_backward: the kernel must be ({x.shape[1]}, units). Received: kernel shape {kernel.shape}"
        )
    g = _array(grad, dtype, 2, "dense_backward")
    _check_grad(g, (x.shape[0], kernel.shape[1]), "dense_backward")
    return (g @ kernel.T if input_gradient else None), x.T @ g, (g.sum(axis=0) if use_bias else None)


@dataclass(frozen=True)
class BatchNormState:
    """What :func:`batch_norm_train` saves for the backward, and the updated moving averages."""

    normalized: np.ndarray
    """(x - batch mean) / sqrt(batch variance + epsilon), the input's shape."""
    inverse_std: np.ndarray
    """1 / sqrt(batch variance + epsilon), one per channel."""
    gamma: np.ndarray
    moving_mean: np.ndarray
    """Keras' update: moving_mean * momentum + batch mean * (1 - momentum)."""
    moving_variance: np.ndarray
    """Likewise with the batch's biased variance (divided by the count, as Keras)."""


def batch_norm_train(
    x: np.ndarray,
    gamma: np.ndarray,
    beta: np.ndarray,
    moving_mean: np.ndarray,
    moving_variance: np.ndarray,
    *,
    momentum: float = 0.99,
    epsilon: float = 1e-3,
) -> tuple[np.ndarray, BatchNormState]:
    """Batch normalisation in training mode (Keras ``BatchNormalization``, training=True):
    normalise with the batch's own mean and biased variance over every axis but the last,
    scale and shift, and update the moving averages (momentum 0.99, epsilon 1e-3 by default).

    Returns:
        (the output, the state for :func:`batch_norm_backward` with the new moving averages).

    >>> out, state = batch_norm_train(np.array([[0.0], [2.0]]), np.ones(1), np.zeros(1),
    ...                               np.zeros(1), np.ones(1), epsilon=0.0)
    >>> out.ravel().tolist(), state.moving_mean.round(6).tolist(), state.moving_variance.tolist()
    ([-1.0, 1.0], [0.01], [1.0])
    """
    dtype = _dtype(x, gamma, beta)
    x = np.asarray(x, dtype=dtype)
    d = x.shape[-1]
    params = [np.asarray(p, dtype=dtype) for p in (gamma, beta, moving_mean, moving_variance)]
    for key, p in zip(("gamma", "beta", "moving_mean", "moving_variance"), params):
        if p.shape != (d,):
            raise ShapeError(f"batch_norm_train: `{key}` must have shape ({d},). Received: shape {p.shape}")
    gamma_, beta_, mean0, var0 = params
    axes = tuple(range(x.ndim - 1))
    mean = x.mean(axis=axes, dtype=np.float64)
    centred = x - mean.astype(dtype)
    variance = np.mean(np.square(centred, dtype=np.float64), axis=axes)
    inverse_std = (1.0 / np.sqrt(variance + epsilon)).astype(dtype)
    normalized = centred * inverse_std
    out = normalized * gamma_ + beta_
    m = dtype.type(momentum)
    state = BatchNormState(
        normalized=normalized,
        inverse_std=inverse_std,
        gamma=gamma_,
        moving_mean=mean0 * m + mean.astype(dtype) * (dtype.type(1) - m),
        moving_variance=var0 * m + variance.astype(dtype) * (dtype.type(1) - m),
    )
    return out, state


def batch_norm_backward(
    grad: np.ndarray, state: BatchNormState
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gradients of :func:`batch_norm_train`: (dx, dgamma, dbeta). The batch statistics
    depend on every sample, so ``dx = gamma / std * (g - mean(g) - x_hat * mean(g * x_hat))``
    (means over every axis but the last)."""
    xhat = state.normalized
    dtype = xhat.dtype
    g = np.asarray(grad, dtype=dtype)
    _check_grad(g, xhat.shape, "batch_norm_backward")
    axes = tuple(range(g.ndim - 1))
    dbeta = g.sum(axis=axes)
    dgamma = (g * xhat).sum(axis=axes)
    count = dtype.type(g.size // g.shape[-1])
    dx = (state.gamma * state.inverse_std) * (g - dbeta / count - xhat * (dgamma / count))
    return dx, dgamma, dbeta


def dropout_mask(shape: tuple[int, ...], rate: float, rng: np.random.Generator) -> np.ndarray:
    """The units :func:`convcli.ops.dropout` keeps in training, drawn the same way: with the
    same generator state, ``ops.dropout(x, rate, training=True, rng=...)`` equals
    ``x * mask / (1 - rate)``. True means kept."""
    if not 0.0 <= rate < 1.0:
        raise ShapeError(f"dropout: `rate` must be in [0, 1). Received: rate={rate}")
    if rate == 0.0:
        return np.ones(shape, bool)
    return rng.random(shape, dtype=np.float32) >= np.float32(rate)


def dropout_backward(grad: np.ndarray, mask: np.ndarray, rate: float) -> np.ndarray:
    """Gradient of inverted dropout: the kept units pass ``grad / (1 - rate)``, the dropped
    ones pass nothing (the lecture's disconnected units do not learn from this batch)."""
    dtype = _dtype(grad)
    g = np.asarray(grad, dtype=dtype)
    _check_grad(g, np.shape(mask), "dropout_backward")
    if rate == 0.0:
        return g.copy()
    scale = dtype.type(np.float32(1.0 / (1.0 - rate)))  # the forward's float32 factor
    return g * mask * scale


def add_backward(grad: np.ndarray, count: int) -> list[np.ndarray]:
    """Gradient of an element-wise sum of ``count`` inputs: each receives ``grad``."""
    g = np.asarray(grad)
    return [g.copy() for _ in range(count)]


def concatenate_backward(grad: np.ndarray, sizes: Sequence[int], axis: int = -1) -> list[np.ndarray]:
    """Gradient of a concatenation along ``axis`` of inputs ``sizes`` wide on that axis:
    the output gradient cut back into the inputs' pieces."""
    g = np.asarray(grad)
    if sum(sizes) != g.shape[axis]:
        raise ShapeError(
            f"concatenate_backward: the inputs' sizes {list(sizes)} do not add up to the gradient's "
            f"{g.shape[axis]} on axis {axis}"
        )
    return [np.ascontiguousarray(p) for p in np.split(g, np.cumsum(sizes)[:-1], axis=axis)]


# --------------------------------------------------------------------------------------
# Depthwise, separable and transposed convolutions
# --------------------------------------------------------------------------------------


def _conv_setup(
    x: np.ndarray, kernel_hw: Pair, strides: int | Pair, padding: ops.Padding, dilation: int | Pair, what: str
) -> tuple[np.ndarray, tuple[int, int, int, int], Pair, Pair, int, int]:
    """(padded x, pads, strides, dilation, OH, OW) as the forward computes them."""
    _, h, w, _ = x.shape
    strides_ = _pair(strides, (1, 1), "strides")
    dilation_ = _pair(dilation, (1, 1), "dilation")
    pads = ops.resolve_padding((h, w), kernel_hw, strides_, padding, dilation_)
    top, bottom, left, right = pads
    eh = geometry.effective_kernel(kernel_hw[0], dilation_[0])
    ew = geometry.effective_kernel(kernel_hw[1], dilation_[1])
    hp, wp = h + top + bottom, w + left + right
    if hp < eh or wp < ew:
        raise ShapeError(f"{what}: the kernel {eh}x{ew} is larger than the padded input {hp}x{wp}")
    xp = np.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0))) if any(pads) else x
    return xp, pads, strides_, dilation_, (hp - eh) // strides_[0] + 1, (wp - ew) // strides_[1] + 1


def _depthwise_forward(xp: np.ndarray, kernel: np.ndarray, strides: Pair, dilation: Pair, out_hw: Pair) -> np.ndarray:
    """Depthwise convolution of the padded batch in its own precision, (n, OH, OW, C, m):
    one multiply-add per kernel offset."""
    fh, fw, c, m = kernel.shape
    out = np.zeros((xp.shape[0], *out_hw, c, m), xp.dtype)
    for u in range(fh):
        for v in range(fw):
            part = xp[_offset_slice(u * dilation[0], v * dilation[1], strides, out_hw)]
            out += part[..., None] * kernel[u, v]
    return out


def depthwise_conv2d_backward(
    x: np.ndarray,
    kernel: np.ndarray,
    grad: np.ndarray,
    *,
    strides: int | Pair = 1,
    padding: ops.Padding = "valid",
    dilation: int | Pair = 1,
    use_bias: bool = True,
    input_gradient: bool = True,
) -> tuple[np.ndarray | None, np.ndarray, np.ndarray | None]:
    """Gradients of :func:`convcli.ops.depthwise_conv2d` (before its activation).

    Args:
        x: (N, H, W, C). kernel: (F_h, F_w, C, m). grad: (N, OH, OW, C*m).

    Returns:
        (dx or None, dkernel (F_h, F_w, C, m), dbias (C*m,) or None). Each kernel offset
        contributes one product over the whole batch to the kernel gradient and one
        strided slice to the input gradient.
    """
    dtype = _dtype(x, kernel, grad)
    x = _array(x, dtype, 4, "depthwise_conv2d_backward")
    kernel = _array(kernel, dtype, None, "depthwise_conv2d_backward")
    n, h, w, c = x.shape
    if kernel.ndim != 4 or kernel.shape[2] != c:
        raise ShapeError(
            f"depthwise_conv2d_backward: the kernel must be (F_h, F_w, {c}, multiplier). "
            f"Received: kernel shape {kernel.shape}"
        )
    fh, fw, _, m = kernel.shape
    xp, pads, strides_, dilation_, oh, ow = _conv_setup(x, (fh, fw), strides, padding, dilation,
                                                         "depthwise_conv2d_backward")
    g = _array(grad, dtype, 4, "depthwise_conv2d_backward")
    _check_grad(g, (n, oh, ow, c * m), "depthwise_conv2d_backward")
    g5 = g.reshape(n, oh, ow, c, m)
    dkernel = np.empty_like(kernel)
    dxp = np.zeros(xp.shape, dtype) if input_gradient else None
    for u in range(fh):
        for v in range(fw):
            where = _offset_slice(u * dilation_[0], v * dilation_[1], strides_, (oh, ow))
            dkernel[u, v] = np.einsum("nrwc,nrwcm->cm", xp[where], g5)
            if dxp is not None:
                dxp[where] += np.einsum("nrwcm,cm->nrwc", g5, kernel[u, v])
    dx = _crop(dxp, pads, (h, w)) if dxp is not None else None
    return dx, dkernel, (g.sum(axis=(0, 1, 2)) if use_bias else None)


def grouped_conv2d_backward(
    x: np.ndarray,
    kernel: np.ndarray,
    grad: np.ndarray,
    *,
    groups: int,
    strides: int | Pair = 1,
    padding: ops.Padding = "valid",
    dilation: int | Pair = 1,
    use_bias: bool = True,
    input_gradient: bool = True,
) -> tuple[np.ndarray | None, np.ndarray, np.ndarray | None]:
    """Gradients of :func:`convcli.ops.conv2d` with ``groups`` > 1 (before its activation).

    As the forward, each group is its own convolution: :func:`conv2d_backward` on the
    group's input channels, kernel columns and output-gradient channels (a loop over the
    groups, never over positions); with one input channel per group the forward is a
    depthwise convolution, and so is the backward (:func:`depthwise_conv2d_backward`).

    Args:
        x: (N, H, W, C). kernel: (F_h, F_w, C / groups, K). grad: (N, OH, OW, K).

    Returns:
        (dx (N, H, W, C) or None, dkernel (F_h, F_w, C / groups, K), dbias (K,) or None).

    >>> x = np.arange(8.0).reshape(1, 2, 2, 2)
    >>> dx, dk, db = grouped_conv2d_backward(x, np.ones((2, 2, 1, 2)), np.ones((1, 1, 1, 2)), groups=2)
    >>> dk[:, :, 0].tolist(), db.tolist()
    ([[[0.0, 1.0], [2.0, 3.0]], [[4.0, 5.0], [6.0, 7.0]]], [1.0, 1.0])
    """
    dtype = _dtype(x, kernel, grad)
    x = _array(x, dtype, 4, "grouped_conv2d_backward")
    kernel = _array(kernel, dtype, None, "grouped_conv2d_backward")
    cg = ops._group_depth(x, kernel, groups, "grouped_conv2d_backward")
    fh, fw, _, k = kernel.shape
    kg = k // groups
    if cg == 1:
        dx, dk, dbias = depthwise_conv2d_backward(
            x, kernel.reshape(fh, fw, groups, kg), grad, strides=strides, padding=padding, dilation=dilation,
            use_bias=use_bias, input_gradient=input_gradient)
        return dx, dk.reshape(fh, fw, 1, k), dbias
    g = _array(grad, dtype, 4, "grouped_conv2d_backward")
    dxs: list[np.ndarray] = []
    dks: list[np.ndarray] = []
    for i in range(groups):
        dx_i, dk_i, _ = conv2d_backward(
            x[..., i * cg : (i + 1) * cg], kernel[..., i * kg : (i + 1) * kg], g[..., i * kg : (i + 1) * kg],
            strides=strides, padding=padding, dilation=dilation, use_bias=False, input_gradient=input_gradient)
        dks.append(dk_i)
        if dx_i is not None:
            dxs.append(dx_i)
    dx_all = np.concatenate(dxs, axis=3) if input_gradient else None
    return dx_all, np.concatenate(dks, axis=3), (g.sum(axis=(0, 1, 2)) if use_bias else None)


def layer_scale_backward(x: np.ndarray, gamma: np.ndarray, grad: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Gradients of ConvNeXt's LayerScale ``x * gamma`` (gamma per channel, the last axis):
    (dx = g * gamma, dgamma = the sum of g * x over every other axis).

    >>> dx, dgamma = layer_scale_backward(np.array([[1.0, 2.0]]), np.array([3.0, 4.0]), np.array([[1.0, 1.0]]))
    >>> dx.tolist(), dgamma.tolist()
    ([[3.0, 4.0]], [1.0, 2.0])
    """
    dtype = _dtype(x, gamma, grad)
    x_ = np.asarray(x, dtype=dtype)
    g = np.asarray(grad, dtype=dtype)
    _check_grad(g, x_.shape, "layer_scale_backward")
    gamma_ = np.asarray(gamma, dtype=dtype)
    if gamma_.shape != x_.shape[-1:]:
        raise ShapeError(f"layer_scale_backward: `gamma` must have shape {x_.shape[-1:]}. Received: shape {gamma_.shape}")
    return g * gamma_, (g * x_).reshape(-1, x_.shape[-1]).sum(axis=0)


def separable_conv2d_backward(
    x: np.ndarray,
    depthwise_kernel: np.ndarray,
    pointwise_kernel: np.ndarray,
    grad: np.ndarray,
    *,
    strides: int | Pair = 1,
    padding: ops.Padding = "valid",
    dilation: int | Pair = 1,
    use_bias: bool = True,
    input_gradient: bool = True,
) -> tuple[np.ndarray | None, np.ndarray, np.ndarray, np.ndarray | None]:
    """Gradients of :func:`convcli.ops.separable_conv2d` (before its activation): the
    1x1 convolution's backward, then the depthwise one's.

    Returns:
        (dx or None, d depthwise kernel, d pointwise kernel, dbias or None).
    """
    dtype = _dtype(x, depthwise_kernel, pointwise_kernel, grad)
    x = _array(x, dtype, 4, "separable_conv2d_backward")
    dk = _array(depthwise_kernel, dtype, 4, "separable_conv2d_backward")
    fh, fw = dk.shape[:2]
    xp, _, strides_, dilation_, oh, ow = _conv_setup(x, (fh, fw), strides, padding, dilation,
                                                      "separable_conv2d_backward")
    if dk.shape[2] != x.shape[3]:
        raise ShapeError(
            f"separable_conv2d_backward: the depthwise kernel must be (F_h, F_w, {x.shape[3]}, multiplier). "
            f"Received: shape {dk.shape}"
        )
    middle = _depthwise_forward(xp, dk, strides_, dilation_, (oh, ow)).reshape(x.shape[0], oh, ow, -1)
    d_middle, d_pointwise, dbias = conv2d_backward(middle, pointwise_kernel, grad, use_bias=use_bias)
    assert d_middle is not None  # input_gradient is on
    dx, d_depthwise, _ = depthwise_conv2d_backward(
        x, dk, d_middle, strides=strides_, padding=padding, dilation=dilation_, use_bias=False,
        input_gradient=input_gradient,
    )
    return dx, d_depthwise, d_pointwise, dbias


def _correlate(xp: np.ndarray, kernel: np.ndarray, strides: Pair, dilation: Pair, out_hw: Pair) -> np.ndarray:
    """Valid correlation of a padded batch in its own precision (chunked im2col + GEMM)."""
    n = xp.shape[0]
    fh, fw, c, k = kernel.shape
    oh, ow = out_hw
    cols_per_row = fh * fw * c
    weights = kernel.reshape(cols_per_row, k)
    out = np.empty((n, oh, ow, k), xp.dtype)
    view = _window_view(xp, (fh, fw), strides, dilation, out_hw)
    budget = _budget(None, cols_per_row, xp.dtype.itemsize)
    samples, rows = _chunk_plan(n, oh, ow * cols_per_row * xp.dtype.itemsize, budget)
    for n0 in range(0, n, samples):
        n1 = min(n, n0 + samples)
        for r0 in range(0, oh, rows):
            r1 = min(oh, r0 + rows)
            cols = np.ascontiguousarray(view[n0:n1, r0:r1]).reshape(-1, cols_per_row)
            out[n0:n1, r0:r1] = (cols @ weights).reshape(n1 - n0, r1 - r0, ow, k)
    return out


def conv2d_transpose_backward(
    x: np.ndarray,
    kernel: np.ndarray,
    grad: np.ndarray,
    *,
    strides: int | Pair = 1,
    padding: PoolPadding = "valid",
    output_padding: int | Pair | None = None,
    dilation: int | Pair = 1,
    use_bias: bool = True,
    input_gradient: bool = True,
) -> tuple[np.ndarray | None, np.ndarray, np.ndarray | None]:
    """Gradients of :func:`convcli.ops.conv2d_transpose` (before its activation).

    The transposed convolution scatters every input pixel over a kernel-sized patch of a
    full canvas and keeps Keras' window of it; its backward puts the output gradient back
    on that canvas (zeros outside the window) and gathers: the input gradient is the plain
    strided, dilated correlation of the canvas with the same kernel, and the kernel
    gradient is that correlation's weight gradient against the input.

    Args:
        x: (N, H, W, C). kernel: (F_h, F_w, K, C), Keras' layout. grad: (N, OH, OW, K).

    Returns:
        (dx or None, dkernel (F_h, F_w, K, C), dbias (K,) or None).
    """
    dtype = _dtype(x, kernel, grad)
    x = _array(x, dtype, 4, "conv2d_transpose_backward")
    kernel = _array(kernel, dtype, None, "conv2d_transpose_backward")
    n, h, w, c = x.shape
    if kernel.ndim != 4 or kernel.shape[3] != c:
        raise ShapeError(
            f"conv2d_transpose_backward: the kernel must be (F_h, F_w, K, {c}). Received: kernel shape {kernel.shape}"
        )
    fh, fw, k, _ = kernel.shape
    sh, sw = _pair(strides, (1, 1), "strides")
    dh, dw = _pair(dilation, (1, 1), "dilation")
    oph, opw = (None, None) if output_padding is None else _pair_any(output_padding)
    # Keras' output size and crop, exactly as the forward computes them
    oh = geometry.conv_transpose_output_length(h, fh, sh, padding, oph, dh)
    ow = geometry.conv_transpose_output_length(w, fw, sw, padding, opw, dw)
    top = ops._conv_transpose_crop(fh, sh, padding, oph, dh)
    left = ops._conv_transpose_crop(fw, sw, padding, opw, dw)
    g = _array(grad, dtype, 4, "conv2d_transpose_backward")
    _check_grad(g, (n, oh, ow, k), "conv2d_transpose_backward")
    full_h = (h - 1) * sh + geometry.effective_kernel(fh, dh)
    full_w = (w - 1) * sw + geometry.effective_kernel(fw, dw)
    canvas = np.zeros((n, max(full_h, top + oh), max(full_w, left + ow), k), dtype)
    canvas[:, top : top + oh, left : left + ow] = g
    canvas = canvas[:, :full_h, :full_w]
    dx = _correlate(canvas, kernel, (sh, sw), (dh, dw), (h, w)) if input_gradient else None
    _, dkernel, _ = conv2d_backward(canvas, kernel, x, strides=(sh, sw), dilation=(dh, dw), use_bias=False,
                                    input_gradient=False)
    return dx, dkernel, (g.sum(axis=(0, 1, 2)) if use_bias else None)


def _pair_any(value: int | Sequence[int]) -> Pair:
    if isinstance(value, (int, np.integer)):
        return int(value), int(value)
    return int(value[0]), int(value[1])


# --------------------------------------------------------------------------------------
# Resizing, rearranging, scaling and normalisation
# --------------------------------------------------------------------------------------


def _bilinear_weights(n: int, factor: int) -> np.ndarray:
    """(n * factor, n) weights of half-pixel-centred bilinear upsampling along one axis,
    edges clamped (TensorFlow's and PyTorch's align_corners=False), in float64."""
    source = np.clip((np.arange(n * factor) + 0.5) / factor - 0.5, 0, n - 1)
    low = np.floor(source).astype(np.intp)
    high = np.minimum(low + 1, n - 1)
    frac = source - low
    matrix = np.zeros((n * factor, n))
    rows = np.arange(n * factor)
    np.add.at(matrix, (rows, low), 1 - frac)
    np.add.at(matrix, (rows, high), frac)
    return matrix


def upsampling2d_backward(
    x_shape: tuple[int, ...], grad: np.ndarray, size: int | Pair = (2, 2), interpolation: str = "nearest"
) -> np.ndarray:
    """Gradient of :func:`convcli.ops.upsampling2d`: nearest sums each ``size`` block back
    onto its pixel; bilinear applies the transposed interpolation matrices."""
    n, h, w, c = (int(v) for v in x_shape)
    fh, fw = _pair(size, (2, 2), "size")
    dtype = _dtype(grad)
    g = _array(grad, dtype, 4, "upsampling2d_backward")
    _check_grad(g, (n, h * fh, w * fw, c), "upsampling2d_backward")
    if interpolation == "nearest":
        return g.reshape(n, h, fh, w, fw, c).sum(axis=(2, 4))
    if interpolation != "bilinear":
        raise ModelError(
            "Unknown value for `interpolation`. Allowed values are: nearest, bilinear. "
            f"Received: interpolation={interpolation}"
        )
    rows = _bilinear_weights(h, fh).astype(dtype)
    cols = _bilinear_weights(w, fw).astype(dtype)
    wide = np.matmul(rows.T, g.reshape(n, h * fh, w * fw * c))  # (n, H, W*fw*C)
    return np.matmul(cols.T, wide.reshape(n * h, w * fw, c)).reshape(n, h, w, c)


def cropping2d_backward(grad: np.ndarray, cropping: tuple[int, int, int, int]) -> np.ndarray:
    """Gradient of :func:`convcli.ops.cropping2d`: zeros where the rows and columns were cut."""
    g = _array(grad, _dtype(grad), 4, "cropping2d_backward")
    top, bottom, left, right = (int(v) for v in cropping)
    return np.pad(g, ((0, 0), (top, bottom), (left, right), (0, 0)))


def reshape_backward(x_shape: tuple[int, ...], grad: np.ndarray) -> np.ndarray:
    """Gradient of :func:`convcli.ops.reshape` (and of flatten): back to the input's shape."""
    return flatten_backward(x_shape, grad)


def permute_backward(grad: np.ndarray, dims: tuple[int, ...]) -> np.ndarray:
    """Gradient of :func:`convcli.ops.permute`: the inverse permutation of the sample axes."""
    g = np.asarray(grad, dtype=_dtype(grad))
    order = (0, *(int(d) for d in dims))
    if sorted(order) != list(range(g.ndim)):
        raise ShapeError(f"permute_backward: dims {tuple(dims)} do not order the sample axes of a gradient {g.shape}")
    return np.ascontiguousarray(g.transpose(np.argsort(order)))


def rescaling_backward(grad: np.ndarray, scale: float | np.ndarray = 1.0) -> np.ndarray:
    """Gradient of :func:`convcli.ops.rescaling` with respect to its input (the scale and
    offset are constants, as in Keras)."""
    dtype = _dtype(grad)
    g = np.asarray(grad, dtype=dtype)
    return np.asarray(g * np.asarray(scale, dtype=dtype), dtype=dtype)


def normalization_backward(grad: np.ndarray, variance: float | np.ndarray, *, invert: bool = False) -> np.ndarray:
    """Gradient of :func:`convcli.ops.normalization` with respect to its input: divided
    (or, inverted, multiplied) by max(sqrt(variance), 1e-7); mean and variance are constants."""
    dtype = _dtype(grad)
    g = np.asarray(grad, dtype=dtype)
    std = np.maximum(np.sqrt(np.asarray(variance, dtype=dtype)), dtype.type(ops.NORMALIZATION_EPSILON))
    return np.asarray(g * std if invert else g / std, dtype=dtype)


def layer_norm_backward(
    x: np.ndarray,
    grad: np.ndarray,
    gamma: np.ndarray | None = None,
    *,
    epsilon: float = 1e-3,
    axis: int | tuple[int, ...] = -1,
    use_beta: bool = True,
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Gradients of :func:`convcli.ops.layer_norm`: (dx, dgamma or None, dbeta or None).

    As batch normalisation's, over the normalised ``axes`` of each sample instead of the
    batch: ``dx = (g * gamma - mean(g * gamma) - x_hat * mean(g * gamma * x_hat)) / std``.
    """
    dtype = _dtype(x, grad, gamma)
    x = np.asarray(x, dtype=dtype)
    g = np.asarray(grad, dtype=dtype)
    _check_grad(g, x.shape, "layer_norm_backward")
    axes_ = (axis,) if isinstance(axis, (int, np.integer)) else tuple(axis)
    if not axes_ or any(not -x.ndim < a < x.ndim or a % x.ndim == 0 for a in axes_):
        raise ShapeError(
            f"layer_norm_backward: `axis` must name sample axes of an input of shape {x.shape}. Received: axis={axis}"
        )
    axes = tuple(sorted({int(a) % x.ndim for a in axes_}))
    shape = [1] * x.ndim
    for a in axes:
        shape[a] = x.shape[a]
    normalised = tuple(x.shape[a] for a in axes)
    others = tuple(a for a in range(x.ndim) if a not in axes)
    mean = x.mean(axis=axes, keepdims=True, dtype=np.float64).astype(dtype)
    centred = x - mean
    inverse_std = (1.0 / np.sqrt(np.square(centred, dtype=np.float64).mean(axis=axes, keepdims=True) + epsilon))
    xhat = centred * inverse_std.astype(dtype)
    dgamma = dbeta = None
    dxhat = g
    if gamma is not None:
        gamma_ = np.asarray(gamma, dtype=dtype)
        if gamma_.size != math.prod(normalised):
            raise ShapeError(f"layer_norm_backward: `gamma` must have shape {normalised}. Received: shape {gamma_.shape}")
        dgamma = (g * xhat).sum(axis=others).reshape(gamma_.shape)
        dxhat = g * gamma_.reshape(shape)
    if use_beta:
        dbeta = g.sum(axis=others).reshape(normalised)
    dx = inverse_std.astype(dtype) * (
        dxhat - dxhat.mean(axis=axes, keepdims=True) - xhat * (dxhat * xhat).mean(axis=axes, keepdims=True)
    )
    return dx, dgamma, dbeta


def merge_backward(kind: str, xs: Sequence[np.ndarray], grad: np.ndarray, *, axis: int = -1) -> list[np.ndarray]:
    """Gradients of :func:`convcli.ops.merge` for each input, in the inputs' own shapes
    (what Keras' broadcasting stretched is summed back).

    add: ``g``; subtract: ``g`` and ``-g``; average: ``g / n``; multiply: ``g`` times the
    other inputs; maximum/minimum: Keras folds ``ops.maximum`` over the inputs in order and
    torch splits a tie evenly between its two sides, so the gradient follows that chain;
    concatenate: the pieces of ``g``.
    """
    if kind == "concatenate":
        sizes = [np.shape(x)[axis] for x in xs]
        return concatenate_backward(grad, sizes, axis=axis)
    if kind not in ops.MERGES:
        raise ModelError(f"Unknown value for `kind`. Allowed values are: {', '.join(ops.MERGES)}. Received: kind={kind}")
    dtype = _dtype(grad, *xs)
    arrays = [np.asarray(x, dtype=dtype) for x in xs]
    g = np.asarray(grad, dtype=dtype)
    ndim = max(a.ndim for a in arrays)
    expanded = [a.reshape(a.shape[:1] + (1,) * (ndim - a.ndim) + a.shape[1:]) for a in arrays]
    count = len(arrays)
    if kind == "add":
        full = [g] * count
    elif kind == "subtract":
        full = [g, -g]
    elif kind == "average":
        full = [g / dtype.type(count)] * count
    elif kind == "multiply":
        full = []
        for i in range(count):
            product = g
            for j, other in enumerate(expanded):
                if j != i:
                    product = product * other
            full.append(product)
    else:  # maximum, minimum
        wins = np.greater if kind == "maximum" else np.less
        chain = [np.broadcast_to(expanded[0], g.shape)]
        for other in expanded[1:]:
            chain.append((np.maximum if kind == "maximum" else np.minimum)(chain[-1], other))
        full = [g] * count
        flowing = g
        half = dtype.type(0.5)
        for i in range(count - 1, 0, -1):
            share = wins(expanded[i], chain[i - 1]) + half * (expanded[i] == chain[i - 1])
            full[i] = flowing * share
            flowing = flowing * (dtype.type(1) - share)
        full[0] = flowing
    result = []
    for piece, e, original in zip(full, expanded, arrays):
        piece = np.broadcast_to(piece, g.shape)
        stretched = tuple(a for a in range(g.ndim) if e.shape[a] == 1 and g.shape[a] != 1)
        summed = piece.sum(axis=stretched, keepdims=True) if stretched else piece
        result.append(np.ascontiguousarray(summed, dtype=dtype).reshape(original.shape))
    return result


# --------------------------------------------------------------------------------------
# Losses
# --------------------------------------------------------------------------------------


def loss_gradient(name: str, y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    """Gradient of :func:`convcli.losses.compute` (the loss averaged over the samples, Keras'
    default reduction) with respect to ``y_pred``, in float64, shaped like ``y_pred``.

    Clipping follows Keras on its torch backend: where a prediction is clipped (cross-entropy's
    [1e-7, 1 - 1e-7], msle's floor at 1e-7) its gradient is 0; exactly at a bound it passes
    (torch.clamp), and msle's max(p, 1e-7) passes half at equality (torch.maximum). The
    derivative of |y - p| at y = p is 0.

    >>> loss_gradient("mse", [[1.0, 0.0]], [[0.5, 0.5]]).tolist()
    [[-0.5, 0.5]]

    Raises:
        InputError: an unknown loss, shapes that differ, non-finite values, or (categorical
            cross-entropy) a row of predictions whose sum is not positive.
    """
    key = losses.resolve_name(name)
    y, p = losses.prepare(y_true, y_pred)
    if key == "categorical-crossentropy":
        losses.categorical_crossentropy(y, p)  # its checks: two classes, positive row sums
    width = p.shape[-1]
    scale = 1.0 / (p.size // width)  # the mean over samples
    eps = losses.EPSILON
    if key == "mse":
        d = 2.0 * (p - y) / width
    elif key == "mae":
        d = np.sign(p - y) / width
    elif key == "mape":
        d = 100.0 * np.sign(p - y) / np.maximum(np.abs(y), eps) / width
    elif key == "msle":
        floored = np.maximum(p, eps)
        passes = np.where(p > eps, 1.0, np.where(p == eps, 0.5, 0.0))
        d = 2.0 * (np.log1p(floored) - np.log1p(np.maximum(y, eps))) / (1.0 + floored) * passes / width
    elif key == "binary-crossentropy":
        c = np.clip(p, eps, 1.0 - eps)
        inside = (p >= eps) & (p <= 1.0 - eps)
        d = np.where(inside, (c - y) / (c * (1.0 - c)), 0.0) / width
    elif key == "categorical-crossentropy":
        sums = p.sum(axis=-1, keepdims=True)
        q = p / sums
        inside = (q >= eps) & (q <= 1.0 - eps)
        dq = np.where(inside, -y / np.clip(q, eps, 1.0 - eps), 0.0)  # d loss / d q
        d = (dq - np.sum(dq * q, axis=-1, keepdims=True)) / sums  # through q = p / sum(p)
    else:  # pragma: no cover - resolve_name admits only the six
        raise InputError(f"no gradient for loss {key}")
    return (d * scale).reshape(np.shape(y_pred))

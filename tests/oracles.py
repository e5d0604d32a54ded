"""Naive reference implementations of every layer computation in convcli.ops.

Each oracle is written from the layer's definition, independently of convcli's code: plain
Python loops over output positions (or a reference function from scipy/numpy where one
exists), in float64. They are slow on purpose; the tests compare the fast float32 ops
against them (numpy-ml keeps ``conv2D_naive`` beside its im2col ``conv2D`` for the same
reason). Shapes are channels-last, parameters in Keras layouts.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

Pads = tuple[int, int, int, int]

# --------------------------------------------------------------------------- padding


def keras_same(n: int, k: int, s: int, d: int = 1) -> tuple[int, int]:
    """TensorFlow's SAME padding (before, after), written out independently: the output has
    ceil(n / s) positions, the dilated kernel spans (k - 1) * d + 1 inputs, and an odd total
    puts the extra row/column after."""
    eff = (k - 1) * d + 1
    out = math.ceil(n / s)
    total = max((out - 1) * s + eff - n, 0)
    return total // 2, total - total // 2


def resolved_pads(
    h: int, w: int, fh: int, fw: int, strides: tuple[int, int], padding: object, dilation: tuple[int, int]
) -> Pads:
    """(top, bottom, left, right) for "same", "valid", an integer P or an explicit 4-tuple."""
    if padding == "same":
        return (*keras_same(h, fh, strides[0], dilation[0]), *keras_same(w, fw, strides[1], dilation[1]))
    if padding == "valid":
        return (0, 0, 0, 0)
    if isinstance(padding, int):
        return (padding,) * 4
    assert isinstance(padding, tuple) and len(padding) == 4
    return padding  # type: ignore[return-value]


def _padded(x: np.ndarray, pads: Pads) -> np.ndarray:
    n, h, w, c = x.shape
    top, bottom, left, right = pads
    xp = np.zeros((n, h + top + bottom, w + left + right, c))
    xp[:, top : top + h, left : left + w] = x
    return xp


# --------------------------------------------------------------------------- convolutions


def conv2d_naive(x, kernel, bias=None, strides=(1, 1), pads=(0, 0, 0, 0), dilation=(1, 1), groups=1):
    """One output neuron at a time: lay the (dilated) filter on the padded input, multiply,
    sum. With ``groups``, output channel f only sees the input channels of its group
    (kernel (F_h, F_w, C / groups, K); group g makes outputs g*K/groups .. and reads inputs
    g*C/groups ..)."""
    x = np.asarray(x, np.float64)
    kernel = np.asarray(kernel, np.float64)
    n, _h, _w, c = x.shape
    fh, fw, cg, k = kernel.shape
    assert cg * groups == c and k % groups == 0
    kg = k // groups
    xp = _padded(x, pads)
    eh, ew = (fh - 1) * dilation[0] + 1, (fw - 1) * dilation[1] + 1
    oh = (xp.shape[1] - eh) // strides[0] + 1
    ow = (xp.shape[2] - ew) // strides[1] + 1
    out = np.zeros((n, oh, ow, k))
    for b in range(n):
        for i in range(oh):
            for j in range(ow):
                for f in range(k):
                    g = f // kg
                    total = 0.0
                    for u in range(fh):
                        for v in range(fw):
                            pixel = xp[b, i * strides[0] + u * dilation[0], j * strides[1] + v * dilation[1]]
                            total += float(np.dot(pixel[g * cg : (g + 1) * cg], kernel[u, v, :, f]))
                    out[b, i, j, f] = total + (0.0 if bias is None else bias[f])
    return out


def depthwise_naive(x, kernel, bias=None, strides=(1, 1), pads=(0, 0, 0, 0), dilation=(1, 1)):
    """Depthwise convolution from its definition (Keras DepthwiseConv2D): kernel
    (F_h, F_w, C, m); output channel c*m + j is input channel c alone, filtered by
    kernel[:, :, c, j]."""
    x = np.asarray(x, np.float64)
    kernel = np.asarray(kernel, np.float64)
    n, _h, _w, c = x.shape
    fh, fw, _, m = kernel.shape
    xp = _padded(x, pads)
    eh, ew = (fh - 1) * dilation[0] + 1, (fw - 1) * dilation[1] + 1
    oh = (xp.shape[1] - eh) // strides[0] + 1
    ow = (xp.shape[2] - ew) // strides[1] + 1
    out = np.zeros((n, oh, ow, c * m))
    for b in range(n):
        for i in range(oh):
            for j in range(ow):
                for ch in range(c):
                    for mult in range(m):
                        total = 0.0
                        for u in range(fh):
                            for v in range(fw):
                                total += xp[b, i * strides[0] + u * dilation[0], j * strides[1] + v * dilation[1], ch] \
                                    * kernel[u, v, ch, mult]
                        out[b, i, j, ch * m + mult] = total + (0.0 if bias is None else bias[ch * m + mult])
    return out


def conv_transpose_length_naive(n: int, f: int, s: int, padding: str, output_padding: int | None, d: int = 1) -> int:
    """Keras 3's transposed-convolution output length (``compute_conv_transpose_output_shape``
    in keras/src/backend/common/backend_utils.py), restated: with the dilated kernel
    eff = (f - 1) * d + 1, valid gives (n - 1) * s + max(eff, s) (or (n - 1) * s + eff + op
    with an output_padding op), same gives n * s (or (n - 1) * s + eff % 2 + op)."""
    eff = (f - 1) * d + 1
    if padding == "valid":
        return (n - 1) * s + (max(eff, s) if output_padding is None else eff + output_padding)
    return n * s if output_padding is None else (n - 1) * s + eff % 2 + output_padding


def _transpose_left_pad(f: int, s: int, padding: str, output_padding: int | None, d: int) -> int:
    """How many positions of the full 'scatter' output lie before Keras' first output (the
    JAX-style padding that Keras' torch backend reproduces): eff - 1 - left_pad."""
    eff = (f - 1) * d + 1
    if padding == "valid":
        return 0
    pad_len = s + eff - 2 if output_padding is None else eff + eff % 2 - 2 + output_padding
    left_pad = min(pad_len // 2 + pad_len % 2, eff - 1)
    return eff - 1 - left_pad


def conv2d_transpose_naive(x, kernel, bias=None, strides=(1, 1), padding="valid", output_padding=None,
                           dilation=(1, 1)):
    """Transposed convolution as the scatter it is: every input pixel (i, j) adds
    x[i, j, :] @ kernel[u, v].T to output position (i*S + u*D, j*S + v*D) of the full
    output; Keras' output is the window of that full output that starts after the crop of
    :func:`_transpose_left_pad` and has :func:`conv_transpose_length_naive` positions
    (positions past the full output are zeros). Kernel (F_h, F_w, K, C) (Keras layout)."""
    x = np.asarray(x, np.float64)
    kernel = np.asarray(kernel, np.float64)
    n, h, w, _c = x.shape
    fh, fw, k, _ = kernel.shape
    op = (None, None) if output_padding is None else output_padding
    oh = conv_transpose_length_naive(h, fh, strides[0], padding, op[0], dilation[0])
    ow = conv_transpose_length_naive(w, fw, strides[1], padding, op[1], dilation[1])
    top = _transpose_left_pad(fh, strides[0], padding, op[0], dilation[0])
    left = _transpose_left_pad(fw, strides[1], padding, op[1], dilation[1])
    full_h = max((h - 1) * strides[0] + (fh - 1) * dilation[0] + 1, top + oh)
    full_w = max((w - 1) * strides[1] + (fw - 1) * dilation[1] + 1, left + ow)
    full = np.zeros((n, full_h, full_w, k))
    for b in range(n):
        for i in range(h):
            for j in range(w):
                for u in range(fh):
                    for v in range(fw):
                        full[b, i * strides[0] + u * dilation[0], j * strides[1] + v * dilation[1]] += \
                            kernel[u, v] @ x[b, i, j]
    out = full[:, top : top + oh, left : left + ow]
    return out + (0.0 if bias is None else np.asarray(bias, np.float64))


def local_naive(x, kernel, bias, kernel_size, strides):
    """Locally connected: every output position (i, j) has its own weights kernel[i*OW + j]."""
    x = np.asarray(x, np.float64)
    n, h, w, _ = x.shape
    fh, fw = kernel_size
    oh = (h - fh) // strides[0] + 1
    ow = (w - fw) // strides[1] + 1
    out = np.zeros((n, oh, ow, kernel.shape[2]))
    for b in range(n):
        for i in range(oh):
            for j in range(ow):
                patch = x[b, i * strides[0] : i * strides[0] + fh, j * strides[1] : j * strides[1] + fw, :]
                out[b, i, j] = patch.reshape(-1) @ kernel[i * ow + j]
                if bias is not None:
                    out[b, i, j] += bias[i, j]
    return out


# --------------------------------------------------------------------------- pooling, resizing


def pool_naive(x, size, strides, padding, reduce):
    """Pool over the REAL pixels under each window (padding never takes part)."""
    n, h, w, c = x.shape
    if padding == "same":
        oh, ow = math.ceil(h / strides[0]), math.ceil(w / strides[1])
        top, left = keras_same(h, size[0], strides[0])[0], keras_same(w, size[1], strides[1])[0]
    else:
        oh, ow = (h - size[0]) // strides[0] + 1, (w - size[1]) // strides[1] + 1
        top = left = 0
    out = np.zeros((n, oh, ow, c))
    for i in range(oh):
        for j in range(ow):
            r0, c0 = i * strides[0] - top, j * strides[1] - left
            window = x[:, max(r0, 0) : min(r0 + size[0], h), max(c0, 0) : min(c0 + size[1], w), :]
            out[:, i, j] = reduce(window.astype(np.float64), axis=(1, 2))
    return out


def upsample_nearest_naive(x, size):
    """Output pixel (i, j) copies input pixel (i // size_h, j // size_w)."""
    n, h, w, c = x.shape
    out = np.zeros((n, h * size[0], w * size[1], c))
    for i in range(h * size[0]):
        for j in range(w * size[1]):
            out[:, i, j] = x[:, i // size[0], j // size[1]]
    return out


def _bilinear_source(dst: int, scale: int, n: int) -> tuple[int, int, float]:
    # Half-pixel centres (align_corners=False): output centre dst + 0.5 maps to input
    # coordinate (dst + 0.5) / scale - 0.5, clamped at the first and last pixel.
    src = min(max((dst + 0.5) / scale - 0.5, 0.0), n - 1)
    i0 = math.floor(src)
    i1 = min(i0 + 1, n - 1)
    return i0, i1, src - i0


def upsample_bilinear_naive(x, size):
    """Bilinear resize by whole factors with half-pixel centres and clamped edges (the
    TensorFlow/PyTorch ``align_corners=False`` convention, no antialiasing), one output
    pixel at a time."""
    x = np.asarray(x, np.float64)
    n, h, w, c = x.shape
    out = np.zeros((n, h * size[0], w * size[1], c))
    for i in range(h * size[0]):
        a0, a1, ta = _bilinear_source(i, size[0], h)
        for j in range(w * size[1]):
            b0, b1, tb = _bilinear_source(j, size[1], w)
            top = (1 - tb) * x[:, a0, b0] + tb * x[:, a0, b1]
            bottom = (1 - tb) * x[:, a1, b0] + tb * x[:, a1, b1]
            out[:, i, j] = (1 - ta) * top + ta * bottom
    return out


# --------------------------------------------------------------------------- normalisation


def layer_norm_naive(x, gamma, beta, epsilon, axes: Sequence[int]):
    """Per sample (and per position outside ``axes``): the mean and the biased variance
    (divided by the count, not count - 1) over ``axes``, then
    (x - mean) / sqrt(var + eps) * gamma + beta, all in float64."""
    x = np.asarray(x, np.float64)
    axes = tuple(sorted(a % x.ndim for a in axes))
    count = math.prod(x.shape[a] for a in axes)
    mean = x.sum(axis=axes, keepdims=True) / count
    var = ((x - mean) ** 2).sum(axis=axes, keepdims=True) / count
    out = (x - mean) / np.sqrt(var + epsilon)
    shape = [1] * x.ndim
    for a in axes:
        shape[a] = x.shape[a]
    if gamma is not None:
        out = out * np.asarray(gamma, np.float64).reshape(shape)
    if beta is not None:
        out = out + np.asarray(beta, np.float64).reshape(shape)
    return out


# --------------------------------------------------------------------------- activations


def _softplus(z: float) -> float:
    return max(z, 0.0) + math.log1p(math.exp(-abs(z)))


def _sigmoid(z: float) -> float:
    return 1 / (1 + math.exp(-z)) if z >= 0 else math.exp(z) / (1 + math.exp(z))


SELU_ALPHA = 1.6732632423543772848170429916717
SELU_SCALE = 1.0507009873554804934193349852946
"""Klambauer et al. (2017), "Self-Normalizing Neural Networks", eq. (14)."""


def _elementwise(function: Callable[[float], float]) -> Callable[[np.ndarray], np.ndarray]:
    def apply(z: np.ndarray) -> np.ndarray:
        flat = [function(float(v)) for v in np.asarray(z, np.float64).reshape(-1)]
        return np.array(flat, np.float64).reshape(np.shape(z))
    return apply


def _softmax_rows(z: np.ndarray) -> np.ndarray:
    z = np.asarray(z, np.float64)
    out = np.empty_like(z)
    for index in np.ndindex(z.shape[:-1]):
        row = [float(v) for v in z[index]]
        top = max(row)
        e = [math.exp(v - top) for v in row]
        out[index] = [v / sum(e) for v in e]
    return out


def _log_softmax_rows(z: np.ndarray) -> np.ndarray:
    z = np.asarray(z, np.float64)
    out = np.empty_like(z)
    for index in np.ndindex(z.shape[:-1]):
        row = [float(v) for v in z[index]]
        top = max(row)
        lse = top + math.log(sum(math.exp(v - top) for v in row))
        out[index] = [v - lse for v in row]
    return out


def _sparsemax_rows(z: np.ndarray) -> np.ndarray:
    """Martins & Astudillo (2016), Algorithm 1: the Euclidean projection onto the simplex."""
    z = np.asarray(z, np.float64)
    out = np.empty_like(z)
    for index in np.ndindex(z.shape[:-1]):
        row = sorted((float(v) for v in z[index]), reverse=True)
        cumulative, k_max, tau_sum = 0.0, 0, 0.0
        for k, value in enumerate(row, start=1):
            cumulative += value
            if 1 + k * value > cumulative:
                k_max, tau_sum = k, cumulative
        tau = (tau_sum - 1) / k_max
        out[index] = [max(float(v) - tau, 0.0) for v in z[index]]
    return out


def _glu_rows(z: np.ndarray) -> np.ndarray:
    z = np.asarray(z, np.float64)
    half = z.shape[-1] // 2
    a, b = z[..., :half], z[..., half:]
    return a * _elementwise(_sigmoid)(b)


def activation_oracles(alpha: float | None = None) -> dict[str, Callable[[np.ndarray], np.ndarray]]:
    """Every Keras 3 activation from its published formula, in float64, one value at a time
    (math.erf for the exact GELU). ``alpha`` replaces the parameter the name takes (leaky
    slope, ELU/CELU alpha, shrink threshold, squareplus b, threshold)."""

    def a(default: float) -> float:
        return default if alpha is None else alpha

    def gelu(z: float) -> float:
        return 0.5 * z * (1 + math.erf(z / math.sqrt(2)))

    def hard_sigmoid(z: float) -> float:
        return min(max(z / 6 + 0.5, 0.0), 1.0)

    def squareplus(z: float) -> float:
        return (z + math.sqrt(z * z + a(4.0))) / 2

    def celu(z: float) -> float:
        return max(z, 0.0) + min(0.0, a(1.0) * math.expm1(z / a(1.0)))

    table: dict[str, Callable[[float], float]] = {
        "linear": lambda z: z,
        "relu": lambda z: max(z, 0.0),
        "relu6": lambda z: min(max(z, 0.0), 6.0),
        "leaky_relu": lambda z: z if z > 0 else a(0.2) * z,
        "sigmoid": _sigmoid,
        "hard_sigmoid": hard_sigmoid,
        "sparse_sigmoid": lambda z: 0.0 if z <= -1 else (1.0 if z >= 1 else 0.5 * (z + 1)),
        "log_sigmoid": lambda z: -_softplus(-z),
        "tanh": math.tanh,
        "hard_tanh": lambda z: min(max(z, -1.0), 1.0),
        "tanh_shrink": lambda z: z - math.tanh(z),
        "elu": lambda z: z if z > 0 else a(1.0) * math.expm1(z),
        "selu": lambda z: SELU_SCALE * (z if z > 0 else SELU_ALPHA * math.expm1(z)),
        "celu": celu,
        "gelu": gelu,
        "silu": lambda z: z * _sigmoid(z),
        "swish": lambda z: z * _sigmoid(z),
        "hard_silu": lambda z: z * hard_sigmoid(z),
        "hard_swish": lambda z: z * hard_sigmoid(z),
        "mish": lambda z: z * math.tanh(_softplus(z)),
        "softplus": _softplus,
        "softsign": lambda z: z / (1 + abs(z)),
        "squareplus": squareplus,
        "sparse_plus": lambda z: 0.0 if z <= -1 else (0.25 * (z + 1) ** 2 if z < 1 else z),
        "exponential": lambda z: math.exp(z) if z < 709 else math.inf,
        "soft_shrink": lambda z: z - a(0.5) if z > a(0.5) else (z + a(0.5) if z < -a(0.5) else 0.0),
        "hard_shrink": lambda z: z if abs(z) > a(0.5) else 0.0,
        "threshold": lambda z: z if z > a(0.0) else 0.0,
    }
    oracles = {name: _elementwise(f) for name, f in table.items()}
    oracles.update(softmax=_softmax_rows, log_softmax=_log_softmax_rows, sparsemax=_sparsemax_rows, glu=_glu_rows)
    return oracles


def relu_layer_naive(z: float, max_value: float | None, negative_slope: float, threshold: float) -> float:
    """Keras' ReLU layer, from its documentation: f(x) = max_value for x >= max_value,
    x for threshold < x < max_value, negative_slope * (x - threshold) otherwise."""
    if z > threshold:
        return z if max_value is None else min(z, max_value)
    return negative_slope * (z - threshold)
